//! The full loop on a real PostgreSQL through the `envctl` binary: plan, apply, migrations, seeds,
//! resets, saved plans, concurrency, hostile branch names and ownership.

mod support;

use predicates::prelude::*;
use support::private::PrivateRepo;
use support::process::{on_terminal, signal_when_said, spawn};
use support::{TestRepo, admin_sql, comment_of, database_count, set_comment, tags_of};

#[test]
fn full_lifecycle_create_converge_and_destroy() {
    let repo = TestRepo::new("lifecycle");
    repo.git(&["checkout", "-q", "-b", "feature/login"]);

    let plan = repo.plan_json("feature/login");
    assert_eq!(plan["format_version"], 1);
    assert_eq!(plan["provider"], "local");
    assert_eq!(plan["repo"], "tests/lifecycle");
    assert_eq!(plan["scope"], serde_json::json!(["feature/login"]));
    assert_eq!(plan["summary"]["create"], 1);
    assert_eq!(
        plan["actions"][1]["migrations"],
        serde_json::json!([
            "0001_create_dummy",
            "0002_add_created_at",
            "0003_index_dummy_name"
        ])
    );
    assert_eq!(
        plan["actions"][2]["files"],
        serde_json::json!(["schemas/seeds/dummy.sql"])
    );
    let id = plan["actions"][0]["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The current branch is the default scope; changes exit 2 under --detailed-exitcode.
    repo.envctl()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("+ create   feature/login"))
        .stdout(predicate::str::contains(
            "feature/login: read from the working tree (uncommitted changes included)",
        ));

    repo.envctl()
        .arg("apply")
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "ok      feature/login ({id}): created; migrated 0001_create_dummy, 0002_add_created_at, 0003_index_dummy_name; seeded schemas/seeds/dummy.sql"
        )));
    assert_eq!(repo.database_names(), vec![id.clone()]);

    repo.envctl()
        .args(["plan", "--detailed-exitcode"])
        .assert()
        .code(0)
        .stdout("feature/login: read from the working tree (uncommitted changes included)\nNo changes: the live environments match the desired state.\n");
    assert_eq!(repo.dummy_names("feature/login"), "alpha,beta,gamma");
    assert_eq!(repo.applied_versions("feature/login"), "1,2,3");

    let status: serde_json::Value = repo.status();
    let env = &status["environments"][0];
    assert_eq!(env["branch"], "feature/login");
    assert_eq!(env["env"], "preview");
    assert_eq!(env["cluster_id"], id.as_str());
    assert_eq!(env["state"], "available");
    assert_eq!(env["min_acu"], 0);
    assert_eq!(env["max_acu"], 4);
    assert_eq!(env["schema_version"], 3);
    assert!(
        env["expires_at"].as_str().is_some(),
        "preview has a 7d ttl: {env}"
    );

    // A no-op apply refreshes last-applied, and still changes nothing else.
    let before = env["last_applied"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    repo.envctl()
        .arg("apply")
        .assert()
        .success()
        .stderr(predicate::str::contains("up to date"));
    let status: serde_json::Value = repo.status();
    assert_ne!(
        status["environments"][0]["last_applied"].as_str().unwrap(),
        before
    );

    // url prints a working connection string.
    let url = String::from_utf8(repo.envctl().arg("url").output().unwrap().stdout).unwrap();
    assert!(
        url.starts_with("postgres://postgres:") && url.trim_end().ends_with(&format!("/{id}")),
        "{url}"
    );

    // destroy needs --yes without a terminal, then deletes.
    repo.envctl()
        .args(["destroy", "--branch", "feature/login"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("pass `--yes`"));
    assert_eq!(repo.database_names(), vec![id.clone()]);
    repo.envctl()
        .args(["destroy", "--branch", "feature/login", "--yes"])
        .assert()
        .success();
    assert!(repo.database_names().is_empty());
    repo.envctl()
        .args(["status"])
        .assert()
        .success()
        .stdout("")
        .stderr("no live environments for `tests/lifecycle` under prefix `envctl`\n");
}

#[test]
fn edited_migration_plans_a_reset_with_a_diff() {
    let repo = TestRepo::new("reset");
    repo.apply("feature/x");
    repo.sql(
        "feature/x",
        "INSERT INTO dummy.dummy_table (id, name) VALUES (99, 'left over')",
    );
    repo.write(
        "schemas/migrations/0002_add_created_at.sql",
        "-- Evolve the table: every row records when it was made.\nALTER TABLE dummy.dummy_table\n    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();\nALTER TABLE dummy.dummy_table ADD COLUMN note text;\n",
    );
    repo.envctl()
        .args(["plan", "--branch", "feature/x"])
        .assert()
        .success()
        .stdout(predicate::str::contains("! reset    feature/x"))
        .stdout(predicate::str::contains(
            "migration 0002_add_created_at edited after it was applied",
        ))
        .stdout(predicate::str::contains(
            "+++ schemas/migrations/0002_add_created_at.sql",
        ))
        .stdout(predicate::str::contains(
            "+ALTER TABLE dummy.dummy_table ADD COLUMN note text;",
        ));

    // --no-reset blocks: apply exits 1 and changes nothing.
    repo.envctl()
        .args(["apply", "--branch", "feature/x", "--no-reset", "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("blocked: migration 0002_add_created_at edited after it was applied: a reset is needed but `--no-reset` was given"));
    assert_eq!(repo.dummy_rows("feature/x"), "4");

    // Without a terminal a reset needs --yes.
    repo.envctl()
        .args(["apply", "--branch", "feature/x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "there is no terminal to confirm it; nothing was changed",
        ));

    repo.envctl()
        .args(["apply", "--branch", "feature/x", "--yes"])
        .assert()
        .success();
    assert_eq!(
        repo.dummy_rows("feature/x"),
        "3",
        "the left-over row is gone"
    );
    assert_eq!(
        repo.sql("feature/x", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'dummy_table' AND column_name = 'note'"),
        "1"
    );
    assert!(repo.plan_types("feature/x").is_empty());
}

#[test]
fn protected_environment_blocks_a_reset() {
    let repo = TestRepo::new("protected");
    repo.apply("main");
    repo.edit_first_migration();
    assert_eq!(repo.plan_types("main"), ["blocked"]);
    repo.envctl()
        .args(["apply", "--branch", "main", "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "the environment is protected (`lifecycle.protect`)",
        ));
    assert_eq!(repo.dummy_rows("main"), "3");
    // destroy of a protected environment needs --force.
    repo.envctl()
        .args(["destroy", "--branch", "main", "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "error: `main` was not destroyed: the environment is protected (`lifecycle.protect`); nothing was changed\n\
             hint: `envctl destroy --branch main --force` deletes it anyway\n",
        ));
    repo.envctl()
        .args(["destroy", "--branch", "main", "--yes", "--force"])
        .assert()
        .success();
    assert!(repo.database_names().is_empty());
}

#[test]
fn changed_seed_new_migration_and_schema_version() {
    let repo = TestRepo::new("incremental");
    // schemaVersion: 1 stops at 1.
    let preview = repo.read("environments/preview.yaml");
    repo.write(
        "environments/preview.yaml",
        &preview.replace("schemaVersion: latest", "schemaVersion: 1"),
    );
    repo.write(
        "schemas/seeds/dummy.sql",
        "INSERT INTO dummy.dummy_table (id, name) VALUES (1, 'one');\n",
    );
    repo.apply("feature/y");
    assert_eq!(
        repo.sql(
            "feature/y",
            "SELECT string_agg(version::text, ',') FROM envctl.migrations"
        ),
        "1"
    );

    // Back to latest: only 0002 and 0003 run, the unchanged seed does not.
    repo.write("environments/preview.yaml", &preview);
    let plan = repo.plan_json("feature/y");
    assert_eq!(plan["actions"].as_array().unwrap().len(), 1, "{plan}");
    assert_eq!(plan["actions"][0]["type"], "migrate");
    assert_eq!(plan["actions"][0]["from"], 1);
    assert_eq!(
        plan["actions"][0]["migrations"],
        serde_json::json!(["0002_add_created_at", "0003_index_dummy_name"])
    );
    repo.apply("feature/y");
    assert_eq!(
        repo.sql("feature/y", "SELECT count(*) FROM envctl.seeds"),
        "1"
    );

    // The no-transaction migration made its index.
    assert_eq!(
        repo.sql(
            "feature/y",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'dummy_table_name_idx'"
        ),
        "1"
    );

    // A changed seed runs again, alone.
    repo.write(
        "schemas/seeds/dummy.sql",
        "INSERT INTO dummy.dummy_table (id, name) VALUES (2, 'two');\n",
    );
    assert_eq!(repo.plan_types("feature/y"), ["seed"]);
    repo.apply("feature/y");
    assert_eq!(repo.dummy_names("feature/y"), "one,two");
    assert_eq!(
        repo.sql("feature/y", "SELECT count(*) FROM envctl.seeds"),
        "2"
    );

    // A new migration runs alone.
    repo.write(
        "schemas/migrations/0004_add_orders.sql",
        "CREATE TABLE dummy.orders (id int);\n",
    );
    assert_eq!(repo.plan_types("feature/y"), ["migrate"]);
    repo.apply("feature/y");
    assert_eq!(repo.applied_versions("feature/y"), "1,2,3,4");
    assert!(repo.plan_types("feature/y").is_empty());
}

#[test]
fn failing_migration_names_file_and_line_and_leaves_nothing_behind() {
    let repo = TestRepo::new("failing");
    repo.write(
        "schemas/migrations/0004_broken.sql",
        "CREATE TABLE dummy.half (id int);\n\nSELEC oops;\n",
    );
    repo.envctl()
        .args(["apply", "--branch", "feature/z"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "migration `schemas/migrations/0004_broken.sql` failed at line 3: syntax error at or near \"SELEC\"",
        ));
    assert_eq!(repo.applied_versions("feature/z"), "1,2,3");
    assert_eq!(
        repo.sql("feature/z", "SELECT to_regclass('dummy.half') IS NULL"),
        "t",
        "nothing of the migration stays"
    );
    // The seed after the failed migration did not run.
    assert_eq!(
        repo.sql("feature/z", "SELECT count(*) FROM envctl.seeds"),
        "0"
    );

    repo.write(
        "schemas/migrations/0004_broken.sql",
        "CREATE TABLE dummy.half (id int);\n",
    );
    assert_eq!(repo.plan_types("feature/z"), ["migrate", "seed"]);
    repo.apply("feature/z");
    assert!(repo.plan_types("feature/z").is_empty());
}

#[test]
fn two_applies_at_once_apply_each_migration_once() {
    let repo = TestRepo::new("concurrent");
    // A slow migration before 0003's CREATE INDEX CONCURRENTLY: the second apply is surely
    // waiting for the lock when the first reaches it. (Waiting inside `pg_advisory_lock` kept a
    // transaction open that CREATE INDEX CONCURRENTLY waits for: a deadlock.)
    let slow = std::fs::read_to_string(
        repo.path()
            .join("schemas/migrations/0002_add_created_at.sql"),
    )
    .unwrap();
    repo.write(
        "schemas/migrations/0002_add_created_at.sql",
        &format!("{slow}SELECT pg_sleep(0.5);\n"),
    );
    repo.write(
        "schemas/migrations/0004_count.sql",
        "CREATE TABLE dummy.runs (n int);\nINSERT INTO dummy.runs VALUES (1);\nSELECT pg_sleep(0.5);\n",
    );
    let apply = ["apply", "--branch", "feature/race"];
    let first = spawn(&repo, &apply);
    let second = spawn(&repo, &apply);
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // One of them really waited for the other's lock (not merely ran after it).
    let waited = [&first, &second]
        .iter()
        .filter(|o| {
            String::from_utf8_lossy(&o.stderr)
                .contains("waiting for another envctl that is migrating this database")
        })
        .count();
    assert_eq!(waited, 1, "exactly one apply waited for the lock");
    assert_eq!(
        repo.sql("feature/race", "SELECT count(*) FROM dummy.runs"),
        "1"
    );
    assert_eq!(
        repo.sql("feature/race", "SELECT count(*) FROM envctl.migrations"),
        "4"
    );
    assert_eq!(repo.dummy_names("feature/race"), "alpha,beta,gamma");
    assert_eq!(repo.database_names().len(), 1);
}

#[test]
fn hostile_branch_names_work_and_other_databases_are_never_touched() {
    let repo = TestRepo::new("hostile");
    // A bystander: a database of nobody's, and an environment of another repository.
    admin_sql("DROP DATABASE IF EXISTS bystander WITH (FORCE)");
    admin_sql("CREATE DATABASE bystander");
    admin_sql("COMMENT ON DATABASE bystander IS 'not envctl''s'");
    let other = TestRepo::new("hostile-other");
    other.apply("feature/other");

    let branches = [
        "feature/it's\";drop-table$(x)",
        "feature/日本語-ünïcode",
        &format!("feature/{}", "long-".repeat(39)),
    ];
    for branch in branches {
        repo.apply(branch);
        assert_eq!(repo.dummy_rows(branch), "3", "{branch}");
    }
    let names = repo.database_names();
    assert_eq!(names.len(), 3);
    for name in &names {
        assert!(
            envctl::model::is_valid_rds_identifier(name) && name.len() <= 52,
            "{name}"
        );
    }
    let status = repo.status();
    let listed: Vec<&str> = status["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["branch"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = branches.to_vec();
    expected.sort();
    assert_eq!(
        listed, expected,
        "status lists only this repository's environments"
    );

    for branch in branches {
        repo.envctl()
            .args(["destroy", "--yes", "--branch", branch])
            .assert()
            .success();
    }
    assert!(repo.database_names().is_empty());
    assert_eq!(
        admin_sql("SELECT count(*) FROM pg_database WHERE datname = 'bystander'").trim(),
        "1"
    );
    assert_eq!(
        other.database_names().len(),
        1,
        "another repository's environment is untouched"
    );
    // Destroying a branch of ours that has no environment does not reach the other repository's.
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/other"])
        .assert()
        .success()
        .stderr(predicate::str::contains("has no environment"));
    assert_eq!(other.database_names().len(), 1);
    admin_sql("DROP DATABASE bystander");
}

#[test]
fn saved_plan_applies_and_a_stale_one_is_refused() {
    let repo = TestRepo::new("saved-plan");
    let plan_file = repo.path().join("plan.json");
    repo.envctl()
        .args(["plan", "--branch", "feature/p", "--out"])
        .arg(&plan_file)
        .assert()
        .success();
    repo.envctl()
        .arg("apply")
        .arg(&plan_file)
        .assert()
        .success();
    assert_eq!(repo.database_names().len(), 1);

    // Only the live state changes: the saved plan's actions would be the same, the fingerprint
    // is what refuses it.
    let write_seed = |id: u32| {
        repo.write(
            "schemas/seeds/dummy.sql",
            &format!("INSERT INTO dummy.dummy_table (id, name) VALUES ({id}, 'row {id}');\n"),
        )
    };
    let save_plan = || {
        repo.envctl()
            .args(["plan", "--branch", "feature/p", "--out"])
            .arg(&plan_file)
            .assert()
            .success();
    };
    let refused = || {
        repo.envctl()
            .arg("apply")
            .arg(&plan_file)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("stale plan"));
    };
    write_seed(7);
    save_plan();
    // Another envctl touched the environment's tags (its ledger is unchanged).
    let id = repo.database_names().remove(0);
    let mut metadata: serde_json::Value = serde_json::from_str(comment_of(&id).trim()).unwrap();
    metadata["tags"]["envctl:ledger-digest"] = "touched".into();
    set_comment(&id, &metadata.to_string());
    refused();
    repo.apply("feature/p");
    repo.sql("feature/p", "CREATE TABLE public.untracked (id int)");

    // Only the desired state changes (the seed's content, not which seeds run): same actions,
    // another fingerprint.
    write_seed(8);
    save_plan();
    write_seed(9);
    refused();
    assert_eq!(
        repo.sql(
            "feature/p",
            "SELECT count(*) FROM dummy.dummy_table WHERE id IN (8, 9)"
        ),
        "0"
    );

    // A plan made with --reset carries the flag: applying it needs no flags repeated, and a
    // contradicting flag is refused.
    repo.envctl()
        .args(["plan", "--branch", "feature/p", "--reset", "--out"])
        .arg(&plan_file)
        .assert()
        .success()
        .stdout(predicate::str::contains("! reset    feature/p"));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    assert_eq!(
        saved["options"],
        serde_json::json!({"reset": true, "no_reset": false})
    );
    repo.envctl()
        .args(["apply", "--yes", "--no-reset"])
        .arg(&plan_file)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "other `--reset`/`--no-reset` flags",
        ));
    repo.envctl()
        .args(["apply", "--yes"])
        .arg(&plan_file)
        .assert()
        .success();
    assert_eq!(
        repo.sql(
            "feature/p",
            "SELECT to_regclass('public.untracked') IS NULL"
        ),
        "t"
    );

    repo.envctl()
        .arg("apply")
        .arg(repo.path().join("environments/preview.yaml"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not an envctl plan"));
}

#[test]
fn a_saved_plan_with_an_empty_scope_is_not_taken_for_all() {
    let repo = TestRepo::new("saved-empty");
    repo.git(&["checkout", "-q", "-b", "docs/readme"]);
    repo.git(&["branch", "-D", "main"]);
    let plan_file = repo.path().join("empty.json");
    repo.envctl()
        .args(["plan", "--all", "--out"])
        .arg(&plan_file)
        .assert()
        .success();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    assert_eq!(saved["scope"], serde_json::json!([]));
    // Now `--all` would create an environment; the saved plan must not.
    repo.git(&["branch", "feature/new"]);
    repo.envctl()
        .args(["apply", "--yes"])
        .arg(&plan_file)
        .assert()
        .success();
    assert!(
        repo.database_names().is_empty(),
        "{:?}",
        repo.database_names()
    );
}

#[test]
fn branches_read_their_own_tree_through_git() {
    let repo = TestRepo::new("git-trees");
    repo.git(&["checkout", "-q", "-b", "feature/committed"]);
    repo.write(
        "schemas/migrations/0004_only_on_branch.sql",
        "CREATE TABLE dummy.branch_only (id int);\n",
    );
    repo.commit("a migration of the branch's own");
    let commit = repo.git(&["rev-parse", "HEAD"]).trim().to_owned();
    repo.git(&["checkout", "-q", "main"]);
    // The working tree (main) lacks the migration; the branch's plan still has it.
    repo.envctl()
        .args(["plan", "--branch", "feature/committed"])
        .assert()
        .success()
        .stdout(predicate::str::contains("0004_only_on_branch"))
        .stdout(predicate::str::contains(format!(
            "feature/committed: read from commit {}",
            &commit[..12]
        )));
    // A branch git does not know reads the working tree, and says so.
    repo.envctl()
        .args(["plan", "--branch", "feature/unpushed"])
        .assert()
        .success()
        .stdout(predicate::str::contains("0004_only_on_branch").not())
        .stderr(predicate::str::contains(
            "git does not know branch `feature/unpushed` yet",
        ));
}

#[test]
fn deletions_are_bounded_and_only_for_uncovered_branches() {
    let repo = TestRepo::new("deletions");
    repo.git(&["checkout", "-q", "-b", "feature/d"]);
    repo.envctl().arg("apply").assert().success();
    // The branch's own tree no longer has a spec that covers it.
    repo.remove("environments/preview.yaml");
    repo.commit("drop the preview spec");
    assert_eq!(repo.plan_types("feature/d"), ["delete"]);
    repo.envctl()
        .args(["reset", "--yes", "--branch", "feature/d"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "no spec covers branch `feature/d`",
        ));
    repo.envctl()
        .args(["apply", "--yes", "--max-deletions", "0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "more than `--max-deletions` 0; nothing was changed",
        ));
    assert_eq!(repo.database_names().len(), 1);
    repo.envctl().args(["apply", "--yes"]).assert().success();
    assert!(repo.database_names().is_empty());
}

#[test]
fn max_environments_refuses_to_create_past_the_limit() {
    let repo = TestRepo::new("max-envs");
    repo.apply("feature/one");
    repo.envctl()
        .args([
            "apply",
            "--branch",
            "feature/two",
            "--max-environments",
            "1",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("more than `--max-environments` 1"));
    assert_eq!(repo.database_names().len(), 1);
}

#[test]
fn invalid_specs_stop_plan_and_apply() {
    let repo = TestRepo::new("invalid");
    repo.write("environments/broken.yaml", "version: 1\nname: broken\nbranches: [\"x/*\"]\ncluster:\n  scaling: { minAcu: 0, maxAcus: 4 }\n");
    repo.envctl()
        .args(["apply", "--branch", "feature/i"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "environments/broken.yaml:5:25: unknown key `maxAcus`",
        ));
    assert!(repo.database_names().is_empty());
}

#[test]
fn reset_command_empties_and_rebuilds_on_demand() {
    let repo = TestRepo::new("reset-command");
    repo.apply("feature/r");
    repo.sql(
        "feature/r",
        "CREATE SCHEMA scratch; CREATE TABLE public.junk (id int)",
    );
    repo.envctl()
        .args(["reset", "--branch", "feature/r", "--yes"])
        .assert()
        .success();
    assert_eq!(
        repo.sql(
            "feature/r",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'scratch'"
        ),
        "0"
    );
    assert_eq!(
        repo.sql("feature/r", "SELECT to_regclass('public.junk') IS NULL"),
        "t"
    );
    assert_eq!(repo.dummy_rows("feature/r"), "3");
}

#[test]
fn apply_json_and_github_outputs_carry_no_secret() {
    let repo = TestRepo::new("outputs");
    let outputs = repo.path().join("github-output");
    let assert = repo
        .envctl()
        .args(["apply", "--branch", "feature/o", "--json"])
        .env("GITHUB_OUTPUT", &outputs)
        .assert()
        .success();
    let stdout = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let env = &json["environments"][0];
    assert_eq!(env["status"], "ok");
    assert_eq!(env["endpoint"]["host"], "127.0.0.1");
    assert_eq!(env["endpoint"]["user"], "postgres");
    assert_eq!(env["endpoint"]["database"], env["cluster_id"]);
    let password = url::Url::parse(support::server_url())
        .unwrap()
        .password()
        .unwrap()
        .to_owned();
    let outputs = std::fs::read_to_string(outputs).unwrap();
    assert!(
        outputs.contains(&format!(
            "cluster_id={}\n",
            env["cluster_id"].as_str().unwrap()
        )),
        "{outputs}"
    );
    assert!(outputs.contains("host=127.0.0.1\n"), "{outputs}");
    for text in [
        &stdout,
        &outputs,
        &String::from_utf8(assert.get_output().stderr.clone()).unwrap(),
    ] {
        assert!(
            !text.contains(&password),
            "the server password leaked: {text}"
        );
    }
}

#[test]
fn a_signal_finishes_the_step_in_flight_exits_130_or_143_and_the_next_apply_converges() {
    use nix::sys::signal::Signal;
    let repo = TestRepo::new("signals");
    repo.write(
        "schemas/migrations/0004_slow.sql",
        "CREATE TABLE dummy.slow (id int);\nSELECT pg_sleep(2);\n",
    );
    repo.write(
        "schemas/migrations/0005_after.sql",
        "CREATE TABLE dummy.after (id int);\n",
    );
    for (signal, code, branch) in [
        (Signal::SIGINT, 130, "feature/sigint"),
        (Signal::SIGTERM, 143, "feature/sigterm"),
    ] {
        let (rest, status) = signal_when_said(
            &repo,
            &["apply", "--branch", branch],
            "migrating 0004_slow",
            signal,
        );
        assert_eq!(status.code(), Some(code), "{rest}");
        assert!(rest.contains("stopping: no new steps start"), "{rest}");
        assert!(
            rest.contains(
                "migrated 0001_create_dummy, 0002_add_created_at, 0003_index_dummy_name, 0004_slow"
            ),
            "the report says how far it got: {rest}"
        );
        let status = repo.status();
        let env = status["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["branch"] == branch)
            .unwrap()
            .clone();
        assert_eq!(env["schema_version"], 4, "{env}");
        assert_eq!(
            repo.applied_versions(branch),
            "1,2,3,4",
            "the migration in flight finished; the next one did not start"
        );
        assert_eq!(repo.plan_types(branch), ["migrate", "seed"]);
        repo.apply(branch);
        assert!(repo.plan_types(branch).is_empty());
    }
}

#[test]
fn a_crash_during_create_leaves_nothing_that_blocks_the_next_apply() {
    let repo = TestRepo::new("crash");
    let id = repo.plan_json("feature/c")["actions"][0]["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // What a crash between CREATE DATABASE and the rename leaves: our tags, the temporary name.
    // (A hand-made one an earlier run that failed left goes first.)
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{id}-creating\""));
    admin_sql(&format!("CREATE DATABASE \"{id}-creating\""));
    set_comment(
        &format!("{id}-creating"),
        "{\"envctl\":1,\"tags\":{\"envctl:managed\":\"true\",\"envctl:repo\":\"tests/crash\",\"envctl:prefix\":\"envctl\"},\"min_acu\":0,\"max_acu\":4,\"deletion_protection\":false,\"user\":\"postgres\",\"created_at\":\"\"}",
    );
    // Observe ignores it: the branch still has no environment.
    assert_eq!(repo.plan_types("feature/c"), ["create", "migrate", "seed"]);
    repo.apply("feature/c");
    assert_eq!(repo.database_names(), vec![id.clone()]);
    assert_eq!(database_count(&format!("{id}-creating")), "0");

    // Killed during CREATE DATABASE itself: no comment yet, only the connection-limit marker.
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/c"])
        .assert()
        .success();
    admin_sql(&format!(
        "CREATE DATABASE \"{id}-creating\" CONNECTION LIMIT 7177"
    ));
    repo.apply("feature/c");
    assert_eq!(repo.database_names(), vec![id.clone()]);
    assert_eq!(
        admin_sql(&format!(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '{id}%'"
        ))
        .trim(),
        "1"
    );
    assert_eq!(
        admin_sql(&format!(
            "SELECT datconnlimit FROM pg_database WHERE datname = '{id}'"
        ))
        .trim(),
        "-1",
        "the marker is gone once the database is tagged"
    );

    // A database with the temporary name that envctl did not make is refused, never dropped.
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/c"])
        .assert()
        .success();
    admin_sql(&format!("CREATE DATABASE \"{id}-creating\""));
    repo.envctl()
        .args(["apply", "--branch", "feature/c"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "a database `{id}-creating` exists that this repository and prefix did not make"
        )));
    // Nor does it keep the environment from being destroyed: made before it, the environment
    // goes and it stays.
    admin_sql(&format!("DROP DATABASE \"{id}-creating\""));
    repo.apply("feature/c");
    admin_sql(&format!("CREATE DATABASE \"{id}-creating\""));
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/c"])
        .assert()
        .success();
    assert_eq!(database_count(&id), "0");
    assert_eq!(database_count(&format!("{id}-creating")), "1");
    admin_sql(&format!("DROP DATABASE \"{id}-creating\""));
}

#[test]
fn destroy_while_an_apply_creates_the_environment_says_to_wait_and_deletes_nothing() {
    let repo = TestRepo::new("destroy-at-work");
    let id = repo.plan_json("feature/w")["actions"][0]["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // What a create at work looks like: its temporary database, its id's lock held.
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{id}-creating\""));
    admin_sql(&format!(
        "CREATE DATABASE \"{id}-creating\" CONNECTION LIMIT 7177"
    ));
    let mut creator = support::process::psql_in_background(
        support::server_url(),
        &format!("SELECT pg_advisory_lock(hashtext('{id}')); SELECT pg_sleep(60)"),
    );
    let held = || {
        admin_sql(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objid::bigint = (hashtext('{id}')::bigint & 4294967295)"
        ))
        .trim()
            == "1"
    };
    let started = std::time::Instant::now();
    while !held() {
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/w"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "an apply is creating `feature/w`'s environment now (`{id}-creating`); nothing was deleted"
        )))
        .stderr(predicate::str::contains("again once that apply has ended"));
    assert_eq!(database_count(&format!("{id}-creating")), "1");
    // Nor does `status` call it interrupted meanwhile.
    repo.envctl()
        .args(["status"])
        .assert()
        .success()
        .stderr(predicate::str::contains("-creating").not());
    // The create ends (its session goes, and its lock with it).
    admin_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND objid::bigint = (hashtext('{id}')::bigint & 4294967295)"
    ));
    creator.wait().unwrap();
    while held() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Once nothing works on it, it is a leftover, and destroy deletes it.
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/w"])
        .assert()
        .success();
    assert_eq!(database_count(&format!("{id}-creating")), "0");
}

#[test]
fn apply_all_goes_on_when_one_environment_fails() {
    let repo = TestRepo::new("all");
    repo.git(&["checkout", "-q", "-b", "feature/bad"]);
    repo.write("schemas/migrations/0004_bad.sql", "SELEC 1;\n");
    repo.commit("a broken migration");
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["branch", "feature/good"]);
    repo.git(&["branch", "unrelated/branch"]);
    let assert = repo
        .envctl()
        .args(["apply", "--all", "--concurrency", "2"])
        .assert()
        .code(1);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("failed  feature/bad"), "{stderr}");
    assert!(stderr.contains("ok      feature/good"), "{stderr}");
    assert!(stderr.contains("ok      main"), "{stderr}");
    assert!(
        stderr.contains("Apply: 2 environments done, 1 failed."),
        "{stderr}"
    );
    assert_eq!(repo.dummy_rows("feature/good"), "3");
    assert_eq!(
        repo.database_names().len(),
        3,
        "no environment for the uncovered branch"
    );
}

#[test]
fn private_server_starts_on_demand_and_local_stop_stops_it() {
    // The server runs as `postgres` when tests run as root: the directory must be reachable.
    let private = PrivateRepo::new("tests/private");
    let envctl = || private.envctl();
    envctl()
        .args(["apply", "--branch", "feature/private"])
        .assert()
        .success();
    assert!(
        private
            .path()
            .join(".envctl/postgres/data/PG_VERSION")
            .is_file()
    );
    let url = private.url("feature/private");
    assert!(url.starts_with("postgres://postgres:"), "{url}");
    // Reused by the next command: same port.
    let again = private.url("feature/private");
    assert_eq!(url, again);
    support::private::stop(envctl());
    envctl()
        .args(["local", "stop"])
        .assert()
        .success()
        .stderr(predicate::str::contains("is not running"));
    // Started again on demand; the data survived.
    envctl()
        .args(["plan", "--branch", "feature/private", "--detailed-exitcode"])
        .assert()
        .code(0);
    envctl().args(["local", "stop"]).assert().success();
}

#[test]
fn scaling_changes_update_in_place_and_a_new_user_replaces() {
    let repo = TestRepo::new("spec-changes");
    repo.apply("feature/u");
    let preview = repo.read("environments/preview.yaml");

    let scaled = preview
        .replace("maxAcu: 4", "maxAcu: 8")
        .replace("team: web", "team: data");
    repo.write("environments/preview.yaml", &scaled);
    repo.envctl()
        .args(["plan", "--branch", "feature/u"])
        .assert()
        .success()
        .stdout(predicate::str::contains("~ update   feature/u"))
        .stdout(predicate::str::contains(
            "cluster.scaling 0–4 → 0–8 ACU; cluster.tags team web → data",
        ));
    repo.apply("feature/u");
    let status: serde_json::Value = repo.status();
    assert_eq!(status["environments"][0]["max_acu"], 8);
    assert!(repo.plan_types("feature/u").is_empty());
    assert_eq!(
        repo.dummy_rows("feature/u"),
        "3",
        "an update keeps the data"
    );

    // Another database user cannot change in place: the environment is replaced.
    repo.write(
        "environments/preview.yaml",
        &scaled.replace("user: postgres", "user: app_user"),
    );
    assert_eq!(repo.plan_types("feature/u"), ["replace", "migrate", "seed"]);
    repo.envctl()
        .args(["apply", "--branch", "feature/u", "--yes"])
        .assert()
        .success();
    assert_eq!(repo.sql("feature/u", "SELECT current_user"), "app_user");
    assert_eq!(
        repo.sql(
            "feature/u",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'dummy_table'"
        ),
        "app_user",
        "migrations ran as the spec's user"
    );
    assert!(repo.plan_types("feature/u").is_empty());
}

#[test]
fn on_a_terminal_a_reset_asks_first() {
    let repo = TestRepo::new("terminal");
    repo.apply("feature/t");
    repo.sql(
        "feature/t",
        "INSERT INTO dummy.dummy_table (id, name) VALUES (42, 'kept')",
    );

    let declined = on_terminal(&repo, "reset --branch feature/t", "n\n");
    let text = declined.output;
    assert_eq!(declined.code, Some(1), "{text}");
    assert!(
        text.contains("This deletes or empties data: reset feature/t"),
        "{text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(repo.dummy_rows("feature/t"), "4");

    let accepted = on_terminal(&repo, "reset --branch feature/t", "y\n");
    let text = accepted.output;
    assert_eq!(accepted.code, Some(0), "{text}");
    assert_eq!(repo.dummy_rows("feature/t"), "3");
}

#[test]
fn a_migration_that_fails_after_an_update_is_retried_by_the_next_apply() {
    let repo = TestRepo::new("update-then-fail");
    repo.apply("feature/uf");
    repo.replace_in("environments/preview.yaml", "maxAcu: 4", "maxAcu: 8");
    repo.write(
        "schemas/migrations/0004_needs.sql",
        "INSERT INTO dummy.missing VALUES (1);\n",
    );
    assert_eq!(repo.plan_types("feature/uf"), ["update", "migrate"]);
    repo.envctl()
        .args(["apply", "--branch", "feature/uf"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("done before: updated"));
    // The update went through, the migration did not: the plan still says so.
    assert_eq!(repo.plan_types("feature/uf"), ["migrate"]);
    let status: serde_json::Value = repo.status();
    assert_eq!(status["environments"][0]["schema_version"], 3);
    repo.write(
        "schemas/migrations/0004_needs.sql",
        "CREATE TABLE dummy.missing (id int);\n",
    );
    repo.apply("feature/uf");
    assert_eq!(repo.applied_versions("feature/uf"), "1,2,3,4");
}

#[test]
fn many_environments_at_high_concurrency() {
    let repo = TestRepo::new("many");
    for n in 0..12 {
        repo.git(&["branch", &format!("feature/many-{n:02}")]);
    }
    repo.envctl()
        .args([
            "apply",
            "--all",
            "--concurrency",
            "12",
            "--wait-timeout",
            "60s",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "Apply: 13 environments done, 0 failed.",
        ));
    assert_eq!(repo.database_names().len(), 13);
    for n in 0..12 {
        repo.envctl()
            .args([
                "destroy",
                "--yes",
                "--branch",
                &format!("feature/many-{n:02}"),
            ])
            .assert()
            .success();
    }
}

#[test]
fn a_role_envctl_did_not_make_is_refused_at_once_and_never_changed() {
    let repo = TestRepo::new("login");
    admin_sql(
        "DO $$ BEGIN CREATE ROLE envctl_boss LOGIN SUPERUSER PASSWORD 'boss-password'; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    let server = url::Url::parse(support::server_url()).unwrap();
    let boss_url = format!(
        "postgres://envctl_boss:boss-password@{}:{}/postgres",
        server.host_str().unwrap(),
        server.port().unwrap()
    );
    // The spec's user is `postgres`, a role envctl did not make: its password is not envctl's
    // to set, so the apply stops at once (no 10-minute wait) and changes nothing.
    let before = admin_sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'");
    let started = std::time::Instant::now();
    repo.envctl()
        .env("ENVCTL_LOCAL_URL", &boss_url)
        .args(["apply", "--branch", "feature/l", "--wait-timeout", "10m"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "role `postgres` exists on the server and envctl did not make it",
        ))
        .stderr(predicate::str::contains("boss-password").not());
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(
        admin_sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"),
        before
    );
    repo.envctl()
        .env("ENVCTL_LOCAL_URL", &boss_url)
        .args(["destroy", "--yes", "--branch", "feature/l"])
        .assert()
        .success();
}

#[test]
fn reset_never_creates() {
    let repo = TestRepo::new("reset-nothing");
    repo.envctl()
        .args(["reset", "--yes", "--branch", "feature/none"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "branch `feature/none` has no environment to reset",
        ));
    assert!(repo.database_names().is_empty());
}

#[test]
fn run_from_a_subdirectory_it_works_on_the_whole_repository() {
    let repo = TestRepo::new("subdirectory");
    let output = support::envctl_in(&repo.path().join("schemas/migrations"), &repo.repo)
        .args(["plan", "--json", "--branch", "feature/sub"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["actions"][0]["type"], "create", "{plan}");
    assert!(!repo.path().join("schemas/migrations/.envctl").exists());
}

#[test]
fn exec_sets_the_connection_variables_and_passes_the_exit_code_on() {
    let repo = TestRepo::new("exec");
    repo.apply("feature/e");
    let id = repo.database_names().remove(0);
    let output = repo
        .exec("feature/e", &[
            "sh",
            "-c",
            "echo \"$PGHOST|$PGPORT|$PGUSER|$PGDATABASE|$PGSSLMODE\"; test -n \"$PGPASSWORD\" && psql -Atc 'SELECT count(*) FROM dummy.dummy_table' \"$DATABASE_URL\"; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let server = url::Url::parse(support::server_url()).unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("127.0.0.1|{}|postgres|{id}|\n3\n", server.port().unwrap())
    );
}

#[test]
fn markdown_plan_and_connecting_to_a_branch_without_environment() {
    let repo = TestRepo::new("markdown");
    repo.envctl()
        .args(["plan", "--markdown", "--branch", "feature/md"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with(
            "### envctl plan for `tests/markdown` (local)\n",
        ))
        .stdout(predicate::str::contains(
            "- `feature/md` read from the working tree",
        ))
        .stdout(predicate::str::contains(
            "| `+` | create | `feature/md` | preview |",
        ));
    repo.envctl()
        .args(["url", "--branch", "feature/md"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "branch `feature/md` has no environment",
        ))
        .stderr(predicate::str::contains("envctl apply --branch feature/md"));
}

#[test]
fn a_failed_concurrent_index_is_rebuilt_not_recorded_invalid() {
    let repo = TestRepo::new("invalid-index");
    repo.apply("feature/i");
    repo.sql(
        "feature/i",
        "INSERT INTO dummy.dummy_table (id, name) VALUES (10, 'alpha')",
    );
    repo.write(
        "schemas/migrations/0004_unique_name.sql",
        "-- envctl:no-transaction\n-- one name per row\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS dummy_name_unique ON dummy.dummy_table (name);\n",
    );
    repo.envctl()
        .args(["apply", "--branch", "feature/i"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "migration `schemas/migrations/0004_unique_name.sql` failed at line 3: could not create unique index",
        ));
    assert_eq!(repo.applied_versions("feature/i"), "1,2,3");
    // Fixed data, same migration: the INVALID index is rebuilt, and then it is recorded.
    repo.sql("feature/i", "DELETE FROM dummy.dummy_table WHERE id = 10");
    repo.apply("feature/i");
    assert_eq!(repo.applied_versions("feature/i"), "1,2,3,4");
    assert_eq!(
        repo.sql(
            "feature/i",
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'dummy.dummy_name_unique'::regclass"
        ),
        "t"
    );
}

#[test]
fn a_retried_concurrent_index_drops_only_the_invalid_index_it_names() {
    let repo = TestRepo::new("invalid-index-other");
    repo.apply("feature/j");
    // Someone else's failed concurrent build left an INVALID index, named in our file's comment.
    repo.sql(
        "feature/j",
        "CREATE TABLE dummy.dups (v int); INSERT INTO dummy.dups VALUES (1), (1)",
    );
    let failed = repo
        .exec(
            "feature/j",
            &[
                "psql",
                "-c",
                "CREATE UNIQUE INDEX CONCURRENTLY dummy_other_idx ON dummy.dups (v)",
            ],
        )
        .output()
        .unwrap();
    assert!(!failed.status.success());
    repo.write(
        "schemas/migrations/0004_name_index.sql",
        "-- envctl:no-transaction\n-- not to be confused with dummy_other_idx\nCREATE INDEX CONCURRENTLY IF NOT EXISTS dummy_name_idx ON dummy.dummy_table (name);\n",
    );
    repo.apply("feature/j");
    assert_eq!(repo.applied_versions("feature/j"), "1,2,3,4");
    assert_eq!(
        repo.sql(
            "feature/j",
            "SELECT string_agg(c.relname || ':' || i.indisvalid, ',' ORDER BY c.relname) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname IN ('dummy_other_idx', 'dummy_name_idx')"
        ),
        "dummy_name_idx:true,dummy_other_idx:false"
    );
}

#[test]
fn the_base_commit_is_recorded_and_kept_through_a_replace() {
    let repo = TestRepo::new("base");
    let main_tip = repo.git(&["rev-parse", "HEAD"]).trim().to_owned();
    repo.git(&["checkout", "-q", "-b", "feature/b"]);
    repo.write(
        "schemas/migrations/0004_b.sql",
        "CREATE TABLE dummy.b (id int);\n",
    );
    repo.commit("work on the branch");
    // Without a default branch envctl says it cannot record the base.
    repo.envctl()
        .arg("apply")
        .assert()
        .success()
        .stderr(predicate::str::contains("cannot tell the default branch"));
    let id = repo.database_names().remove(0);
    assert_eq!(tags_of(&id).get("envctl:base"), None);
    // With one (as `origin/main` too), the next apply records where the branch started.
    repo.envctl()
        .env("ENVCTL_DEFAULT_BRANCH", "origin/main")
        .arg("apply")
        .assert()
        .success();
    assert_eq!(tags_of(&id)["envctl:base"], main_tip.as_str());
    // A replace keeps it, even though main moves on.
    repo.git(&["checkout", "-q", "main"]);
    repo.commit("main moves on");
    repo.git(&["checkout", "-q", "feature/b"]);
    repo.set_preview_user("base_user");
    repo.envctl()
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .args(["apply", "--yes"])
        .assert()
        .success()
        .stderr(predicate::str::contains("replaced"));
    assert_eq!(tags_of(&id)["envctl:base"], main_tip.as_str());
}

#[test]
fn in_github_actions_a_tag_push_has_no_branch() {
    let repo = TestRepo::new("tag-push");
    repo.git(&["checkout", "-q", "--detach"]);
    repo.envctl()
        .arg("plan")
        .env("GITHUB_REF_NAME", "v1.0")
        .env("GITHUB_REF_TYPE", "tag")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("a tag push has no branch"));
    repo.envctl()
        .args(["plan", "--json"])
        .env("GITHUB_REF_NAME", "feature/pushed")
        .env("GITHUB_REF_TYPE", "branch")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "\"scope\": [\n    \"feature/pushed\"\n  ]",
        ));
}

#[test]
fn an_uncovered_branch_too_long_for_a_tag_does_not_block_all() {
    let repo = TestRepo::new("long-uncovered");
    repo.git(&["branch", &format!("docs/{}", "é".repeat(50))]);
    repo.git(&["branch", "feature/short"]);
    let plan: serde_json::Value = serde_json::from_slice(
        &repo
            .envctl()
            .args(["plan", "--all", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(plan["scope"], serde_json::json!(["feature/short", "main"]));
}

#[test]
fn a_private_server_a_superuser_set_to_archive_still_starts() {
    // `wal_level = minimal` refuses archiving, and `ALTER SYSTEM` is a superuser's (the
    // previews' user is one): the settings envctl gives at every start win over it.
    use envctl::provider::local_server;
    let server = support::OwnServer::start("envctl-archive-");
    let dir = server.dir.clone();
    support::psql_at(&server.url, "ALTER SYSTEM SET archive_mode = on");
    support::psql_at(&server.url, "ALTER SYSTEM SET wal_level = replica");
    local_server::stop(&dir).unwrap();
    let started = local_server::ensure_running(&dir);
    let shown = started.as_ref().map(|info| {
        support::psql_at(
            &info.url(),
            "SELECT current_setting('archive_mode') || ' ' || current_setting('wal_level')",
        )
    });
    let _ = local_server::stop(&dir);
    assert_eq!(shown.expect("the server starts").trim(), "off minimal");
}

#[test]
fn a_migration_cannot_run_its_code_as_the_admin_that_reads_its_ledger_or_schema() {
    let repo = TestRepo::new("ledger-trap");
    let user = "ledger_trap_user";
    // What the migration's code writes when a superuser runs it: a file on the server's machine
    // (`COPY … TO` a file, which a read-only transaction allows too).
    let marker = format!("/tmp/envctl-ledger-trap-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let ran_as_admin = || std::path::Path::new(&marker).exists();
    repo.replace_in(
        "environments/preview.yaml",
        "user: postgres",
        &format!("user: {user}"),
    );
    // Planted where envctl's admin reads: the ledger's table swapped for a view that calls it,
    // and (through the database's own search_path) a `format` and a `to_regclass` that win over
    // pg_catalog's.
    repo.write(
        "schemas/migrations/0004_trap.sql",
        &format!(
            "CREATE FUNCTION public.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'COPY (SELECT current_user) TO ''{marker}''';
  END IF;
  RETURN true;
END $$;
ALTER TABLE envctl.migrations RENAME TO migrations_kept;
CREATE VIEW envctl.migrations AS SELECT * FROM envctl.migrations_kept WHERE public.escalate();
CREATE FUNCTION public.format(text, name, name) RETURNS text LANGUAGE sql
  AS 'SELECT CASE WHEN public.escalate() THEN pg_catalog.format($1, $2, $3) END';
CREATE FUNCTION public.to_regclass(text) RETURNS regclass LANGUAGE sql
  AS 'SELECT CASE WHEN public.escalate() THEN pg_catalog.to_regclass($1) END';
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = public, pg_catalog', current_database()); END $$;
"
        ),
    );
    repo.commit("a migration that lays traps for the admin");
    repo.git(&["checkout", "-q", "-b", "feature/trap"]);
    repo.envctl()
        .args(["apply", "--branch", "feature/trap"])
        .assert()
        .success();
    assert!(
        !ran_as_admin(),
        "apply ran the migration's code as the admin"
    );
    // Everything that reads the environment as the admin: plan (its ledger, read once the
    // branch has a migration its digest lacks), diff (the catalogs).
    repo.write(
        "schemas/migrations/0005_next.sql",
        "CREATE TABLE public.next (id integer);\n",
    );
    let plan = repo
        .envctl()
        .args(["plan", "--branch", "feature/trap"])
        .output()
        .unwrap();
    assert!(
        !ran_as_admin(),
        "plan ran the migration's code as the admin"
    );
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains(
            "envctl.migrations is not a table (pg_class.relkind `v`): the ledger was altered"
        ),
        "{plan:?}"
    );
    repo.envctl()
        .args(["apply", "--branch", "main"])
        .assert()
        .success();
    let diff = repo
        .envctl()
        .args(["diff", "--branch", "feature/trap", "--against", "main"])
        .output()
        .unwrap();
    assert!(
        !ran_as_admin(),
        "diff ran the migration's code as the admin"
    );
    assert!(
        diff.status.success() && String::from_utf8_lossy(&diff.stdout).contains("No differences"),
        "{diff:?}"
    );
}

#[test]
fn a_database_its_owner_marked_a_template_is_still_destroyed() {
    let repo = TestRepo::new("template-mark");
    repo.git(&["checkout", "-q", "-b", "feature/t"]);
    repo.apply("feature/t");
    let id = repo.cluster_id("feature/t").to_string();
    // As its owner may: PostgreSQL refuses to drop a template database.
    admin_sql(&format!("ALTER DATABASE \"{id}\" IS_TEMPLATE true"));
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/t"])
        .assert()
        .success();
    assert_eq!(database_count(&id), "0");
}
