//! The engine keeps its promises in what a shared server, a busy CI and real clients produce:
//! ownership with the prefix, ledger tags that say only what the ledger says, one environment's
//! problem blocking only that environment, bounded waits, URLs real clients accept, interrupts,
//! role secrets. Everything runs against the real PostgreSQL test server; nothing is mocked.

mod support;

use std::process::Command as Process;
use std::time::{Duration, Instant};

use envctl::apply::{ApplyOptions, Executor};
use envctl::cancel::Cancel;
use envctl::cli::ColorChoice;
use envctl::model::{ClusterId, Prefix, RepoName, TagUpdate, Wanted, encode_branch_tag, tags};
use envctl::plan::{PlanInput, PlanOptions};
use envctl::provider::{DeleteOptions, Provider, ProviderError};
use envctl::report::{Progress, Reporter};
use nix::sys::signal::Signal;
use predicates::prelude::*;
use support::private::{PrivateRepo, envctl_private, reachable_dir};
use support::process::{
    on_terminal_after, psql_in_background, signal_an_exec, signal_when_said, spawn,
};
use support::provider::{local_provider, owner, runtime};
use support::{TestRepo, admin_sql, comment_of, set_comment, tags_of, url_of, wait_at_most};

/// The desired state of `branch` as the repository's working tree says.
fn desired_of(repo: &TestRepo, branch: &str) -> envctl::model::DesiredEnv {
    let files = envctl::source::read_working_tree(repo.path()).unwrap();
    let catalog = envctl::spec::load(&files).unwrap();
    catalog
        .desired_for(
            branch,
            &RepoName::parse(&repo.repo).unwrap(),
            &Prefix::default(),
        )
        .unwrap()
        .unwrap()
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn two_prefixes_on_one_server_are_two_namespaces() {
    let repo = TestRepo::new("prefixes");
    repo.apply("feature/p");
    let alice = || {
        let mut cmd = repo.envctl();
        cmd.env("ENVCTL_PREFIX", "alice");
        cmd
    };
    // Alice's run does not see envctl's environment: it creates its own, deletes nothing.
    let plan = alice()
        .args(["plan", "--json", "--branch", "feature/p"])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["prefix"], "alice");
    assert_eq!(plan["summary"]["create"], 1);
    assert_eq!(plan["summary"]["delete"], 0);
    // Every count is there, zero or not: a consumer reads one shape.
    assert_eq!(plan["summary"]["clone"], 0);
    assert_eq!(plan["summary"]["repair"], 0);
    alice()
        .args(["apply", "--yes", "--branch", "feature/p"])
        .assert()
        .success();
    let names = repo.database_names();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("alice-feature-p-")));
    assert!(names.iter().any(|n| n.starts_with("envctl-feature-p-")));
    let alice_id = names.iter().find(|n| n.starts_with("alice-")).unwrap();
    assert_eq!(tags_of(alice_id)[tags::PREFIX], "alice");
    // Each sees only its own.
    assert_eq!(repo.status()["environments"].as_array().unwrap().len(), 1);
    let status = alice().args(["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["environments"][0]["cluster_id"], alice_id.as_str());
    // Destroyed independently: envctl's keeps its data.
    repo.sql(
        "feature/p",
        "INSERT INTO dummy.dummy_table VALUES (42, 'mine')",
    );
    alice()
        .args(["destroy", "--yes", "--branch", "feature/p"])
        .assert()
        .success();
    assert_eq!(repo.database_names().len(), 1);
    assert_eq!(
        repo.sql(
            "feature/p",
            "SELECT name FROM dummy.dummy_table WHERE id = 42"
        ),
        "mine"
    );
    alice()
        .args(["destroy", "--yes", "--branch", "feature/p"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "has no environment under prefix `alice`",
        ));
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/p"])
        .assert()
        .success();
    assert!(repo.database_names().is_empty());
}

#[test]
fn the_provider_takes_ownership_from_arguments_and_rechecks_the_live_resource() {
    let repo = TestRepo::new("ownership");
    repo.apply("feature/o");
    let desired = desired_of(&repo, "feature/o");
    let id = desired.cluster_id.clone();
    let ours = owner(&repo.repo, "envctl");
    let theirs = owner(&repo.repo, "other");
    runtime().block_on(async {
        let provider = local_provider().await;
        // Another prefix may neither change nor delete it.
        let touch = TagUpdate::set("team", "theirs");
        assert!(matches!(
            provider.update_tags(&theirs, &id, &touch).await,
            Err(ProviderError::NotOurs { .. })
        ));
        let err = provider
            .delete(&theirs, &id, DeleteOptions::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("it belongs to prefix `envctl`"),
            "{err}"
        );
        // Tags that name another owner are not written under this one.
        let mut other = desired.clone();
        other.cluster_id = ClusterId::from_live(format!("{id}x"));
        let foreign = envctl::apply::initial_tags(&other, &theirs, None).unwrap();
        assert!(provider.create(&ours, &other, &foreign).await.is_err());
        // Protected since the plan was made (an apply raced us): the delete re-reads it.
        provider
            .update_tags(&ours, &id, &TagUpdate::set(tags::PROTECT, "true"))
            .await
            .unwrap();
        assert!(matches!(
            provider.delete(&ours, &id, DeleteOptions::default()).await,
            Err(ProviderError::Protected(_))
        ));
        let force = DeleteOptions {
            force: true,
            ..DeleteOptions::default()
        };
        provider.delete(&ours, &id, force).await.unwrap();
    });
    assert!(repo.database_names().is_empty());
}

#[test]
fn a_delete_decided_on_tags_refuses_once_they_changed() {
    let repo = TestRepo::new("unchanged");
    repo.apply("feature/u");
    let id = desired_of(&repo, "feature/u").cluster_id;
    let ours = owner(&repo.repo, "envctl");
    runtime().block_on(async {
        let provider = local_provider().await;
        let live = provider.observe(&ours).await.unwrap();
        let decided = live[0].tag(tags::LAST_APPLIED).map(str::to_owned);
        let decided_on = |value: Option<String>| DeleteOptions {
            unchanged: [
                (tags::LAST_APPLIED.to_owned(), value),
                (tags::BASE.to_owned(), None),
            ]
            .into_iter()
            .collect(),
            ..DeleteOptions::default()
        };
        // An apply since the decision refreshed last-applied: the delete is refused.
        provider
            .update_tags(
                &ours,
                &id,
                &TagUpdate::set(tags::LAST_APPLIED, "2099-01-01T00:00:00Z"),
            )
            .await
            .unwrap();
        let err = provider
            .delete(&ours, &id, decided_on(decided))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("envctl:last-applied"), "{err}");
        // A tag that was missing must still be missing.
        provider
            .update_tags(&ours, &id, &TagUpdate::set(tags::BASE, "abc"))
            .await
            .unwrap();
        let now = Some("2099-01-01T00:00:00Z".to_owned());
        assert!(matches!(
            provider.delete(&ours, &id, decided_on(now.clone())).await,
            Err(ProviderError::Changed { .. })
        ));
        provider
            .update_tags(
                &ours,
                &id,
                &TagUpdate {
                    remove: [tags::BASE.to_owned()].into(),
                    ..TagUpdate::default()
                },
            )
            .await
            .unwrap();
        provider
            .delete(&ours, &id, decided_on(now.clone()))
            .await
            .unwrap();
        // Someone deleted it first: a delete decided on its tags says so.
        assert!(matches!(
            provider.delete(&ours, &id, decided_on(now)).await,
            Err(ProviderError::NotFound(_))
        ));
        provider
            .delete(&ours, &id, DeleteOptions::default())
            .await
            .unwrap();
    });
    assert!(repo.database_names().is_empty());
}

#[test]
fn a_leftover_goes_only_when_it_is_provably_ours_and_no_create_is_at_work() {
    let repo = TestRepo::new("leftover");
    let ours = owner(&repo.repo, "envctl");
    let id = ClusterId::derive(&ours.prefix, &ours.repo, "feature/l");
    let name = format!("{id}-creating");
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{name}\""));
    // What a create killed between CREATE DATABASE and its COMMENT leaves.
    admin_sql(&format!("CREATE DATABASE \"{name}\" CONNECTION LIMIT 7177"));
    runtime().block_on(async {
        use sqlx::Connection;
        let provider = local_provider().await;
        let found = provider.leftovers(&ours).await.unwrap();
        let mut leftover = found.into_iter().find(|l| l.name == name).expect("listed");
        assert_eq!(leftover.branch, None, "untagged: its branch is unknown");
        assert_eq!(leftover.cluster_id, id);
        // Another prefix does not even see it.
        let theirs = owner(&repo.repo, "other");
        assert!(
            provider
                .leftovers(&theirs)
                .await
                .unwrap()
                .iter()
                .all(|l| l.name != name)
        );
        // Untagged and claimed for a branch whose id it is not: not provably ours.
        leftover.branch = Some("feature/other".into());
        assert!(
            !provider
                .delete_leftover(&ours, &leftover, Duration::ZERO)
                .await
                .unwrap()
        );
        leftover.branch = Some("feature/l".into());
        // A create at work on the id holds its lock: the leftover stays.
        let mut creator = sqlx::PgConnection::connect(support::server_url())
            .await
            .unwrap();
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(id.as_str())
            .execute(&mut creator)
            .await
            .unwrap();
        assert!(
            !provider
                .delete_leftover(&ours, &leftover, Duration::ZERO)
                .await
                .unwrap()
        );
        // Nor is it listed as left by anyone (`status` would call it interrupted): it is
        // listed as at work.
        assert!(
            provider
                .leftovers(&ours)
                .await
                .unwrap()
                .iter()
                .filter(|l| l.name == name)
                .all(|l| l.at_work),
            "a create at work is listed as a leftover"
        );
        creator.close().await.unwrap();
        assert!(
            provider
                .delete_leftover(&ours, &leftover, Duration::ZERO)
                .await
                .unwrap()
        );
    });
    assert_eq!(
        admin_sql(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        ))
        .trim(),
        "0"
    );
}

#[test]
fn ledger_tags_say_what_the_ledger_says_when_an_older_run_races_a_migrating_one() {
    let repo = TestRepo::new("ledger-race");
    repo.apply("feature/r");
    // Run A plans from the older tree: nothing to do.
    let old = desired_of(&repo, "feature/r");
    let a_owner = owner(&repo.repo, "envctl");
    let (a_observed, a_plan) = runtime().block_on(async {
        let provider = local_provider().await;
        let observed = provider.observe(&a_owner).await.unwrap();
        let scope = [("feature/r".to_owned(), Wanted::Env(Box::new(old.clone())))]
            .into_iter()
            .collect();
        let plan = envctl::plan::plan(
            &PlanInput {
                provider: "local",
                owner: &a_owner,
                scope: &scope,
                observed: &observed,
                engines: &Default::default(),
                default_branch: None,
                sources: &Default::default(),
                occupied: &Default::default(),
            },
            &PlanOptions::default(),
        )
        .unwrap();
        (observed, plan)
    });
    assert!(a_plan.is_empty(), "{:?}", a_plan.actions);
    // Meanwhile run B, from a newer commit, migrates.
    repo.write(
        "schemas/migrations/0004_b.sql",
        "CREATE TABLE dummy.b (id int);\n",
    );
    repo.apply("feature/r");
    let b_tags = tags_of(old.cluster_id.as_str());
    assert_eq!(b_tags[tags::SCHEMA_VERSION], "4");
    // Run A applies its no-op plan: it may refresh last-applied, nothing else.
    runtime().block_on(async {
        let provider = local_provider().await;
        let scope = [("feature/r".to_owned(), Wanted::Env(Box::new(old.clone())))]
            .into_iter()
            .collect();
        let reporter = Reporter::new(ColorChoice::Never, true, 0);
        let executor = Executor {
            provider: &provider,
            owner: &a_owner,
            bases: &Default::default(),
            commits: &Default::default(),
            options: &ApplyOptions {
                concurrency: 1,
                wait_timeout: Duration::from_secs(60),
                force_delete: false,
            },
            progress: &Progress::new(&reporter),
            cancel: &Cancel::new(),
        };
        let outcomes = executor.apply(&a_plan, &scope, &a_observed).await;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].done, ["up to date"]);
    });
    let after = tags_of(old.cluster_id.as_str());
    for key in [tags::SCHEMA_VERSION, tags::LEDGER_DIGEST] {
        assert_eq!(
            after[key], b_tags[key],
            "{key} must still say what the ledger says"
        );
    }
    assert_eq!(repo.applied_versions("feature/r"), "1,2,3,4");
    // A plan from A's tree sees the truth: a migration it does not have was applied.
    repo.remove("schemas/migrations/0004_b.sql");
    let plan = repo.plan_json("feature/r");
    assert_eq!(plan["actions"][0]["type"], "reset", "{plan}");
    assert!(
        plan["actions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("migration 0004_b removed after it was applied"),
        "{plan}"
    );
}

#[test]
fn apply_all_blocks_each_broken_branch_and_applies_the_others() {
    let repo = TestRepo::new("blocked-all");
    // feature/invalid: its own tree has an invalid spec.
    repo.git(&["checkout", "-q", "-b", "feature/invalid"]);
    let preview = repo.read("environments/preview.yaml");
    repo.write(
        "environments/preview.yaml",
        &preview.replace("maxAcu: 4", "maxAcu: lots"),
    );
    repo.commit("a broken spec");
    // fix/tie: two specs cover it equally well.
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["checkout", "-q", "-b", "fix/tie"]);
    repo.write(
        "environments/fixes.yaml",
        &preview.replace("name: preview", "name: fixes").replace(
            "branches: [\"feature/*\", \"fix/*\"]",
            "branches: [\"fix/?*\"]",
        ),
    );
    repo.commit("a tie");
    // feature/ledger: applied, then a migration on the branch, and a ledger that cannot be read.
    repo.git(&["checkout", "-q", "main"]);
    repo.apply("feature/ledger");
    repo.sql(
        "feature/ledger",
        "ALTER TABLE envctl.migrations RENAME COLUMN sql TO sql_moved",
    );
    repo.git(&["checkout", "-q", "-b", "feature/ledger"]);
    repo.write("schemas/migrations/0004_more.sql", "SELECT 4;\n");
    repo.commit("more");
    repo.git(&["checkout", "-q", "main"]);
    // feature/twice: two live environments; feature/collide: its id taken by another branch.
    repo.git(&["branch", "feature/twice"]);
    repo.git(&["branch", "feature/collide"]);
    repo.git(&["branch", "feature/good"]);
    repo.apply("feature/twice");
    let comment = |branch: &str| {
        format!(
            "{{\"envctl\":1,\"tags\":{{\"envctl:managed\":\"true\",\"envctl:repo\":\"{}\",\"envctl:prefix\":\"envctl\",\"envctl:branch\":\"{}\",\"envctl:env\":\"preview\"}},\"min_acu\":0,\"max_acu\":4,\"deletion_protection\":false,\"user\":\"postgres\",\"created_at\":\"2026-11-25T00:00:00Z\"}}",
            repo.repo,
            encode_branch_tag(branch).unwrap()
        )
    };
    admin_sql("CREATE DATABASE \"envctl-feature-twice-00000000\"");
    set_comment("envctl-feature-twice-00000000", &comment("feature/twice"));
    let collide_id = repo.cluster_id("feature/collide");
    admin_sql(&format!("CREATE DATABASE \"{collide_id}\""));
    set_comment(collide_id.as_str(), &comment("feature/elsewhere"));
    // feature/taken: a database envctl did not make holds its id (issue 16, item 5).
    repo.git(&["branch", "feature/taken"]);
    let taken_id = repo.cluster_id("feature/taken");
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{taken_id}\""));
    admin_sql(&format!("CREATE DATABASE \"{taken_id}\""));

    let output = repo
        .envctl()
        .args(["plan", "--all", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let blocked = |branch: &str| -> Vec<String> {
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["branch"] == branch && a["type"] == "blocked")
            .map(|a| a["reason"].as_str().unwrap().to_owned())
            .collect()
    };
    let expect = [
        ("feature/invalid", "specs in commit"),
        ("fix/tie", "covered equally well"),
        ("feature/ledger", "cannot read the ledger (schema `envctl`)"),
        ("feature/twice", "has 2 live environments"),
        (
            "feature/collide",
            "`envctl:branch` tag says `feature/elsewhere`",
        ),
        (
            "feature/taken",
            "(it is a database without envctl's tags); envctl neither creates over it nor adopts it",
        ),
    ];
    for (branch, why) in expect {
        let reasons = blocked(branch);
        assert!(
            !reasons.is_empty() && reasons.iter().all(|r| r.contains(why)),
            "{branch}: {reasons:?}"
        );
    }
    assert_eq!(plan["summary"]["blocked"], 7, "{plan}");
    let markdown = repo
        .envctl()
        .args(["plan", "--all", "--markdown"])
        .output()
        .unwrap();
    let markdown = String::from_utf8(markdown.stdout).unwrap();
    assert!(markdown.contains("has 2 live environments"), "{markdown}");

    let output = repo
        .envctl()
        .args(["apply", "--all", "--yes"])
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for (branch, _) in expect {
        assert!(
            stderr.contains(&format!("failed  {branch} (")),
            "{branch}: {stderr}"
        );
    }
    assert!(stderr.contains("ok      feature/good"), "{stderr}");
    assert!(stderr.contains("ok      main"), "{stderr}");
    assert_eq!(repo.applied_versions("feature/good"), "1,2,3");
    // The blocked collision did not touch the other branch's environment.
    assert!(
        tags_of(collide_id.as_str())[tags::LAST_APPLIED].is_null(),
        "{}",
        tags_of(collide_id.as_str())
    );
    // Nothing of the blocked ones was deleted.
    let names = repo.database_names();
    assert!(names.contains(&"envctl-feature-twice-00000000".to_owned()));
    assert!(names.contains(&collide_id.to_string()));
    assert_eq!(support::database_count(taken_id.as_str()), "1");
    assert_eq!(comment_of(taken_id.as_str()).trim(), "", "left as it was");
    admin_sql("DROP DATABASE \"envctl-feature-twice-00000000\"");
    admin_sql(&format!("DROP DATABASE \"{collide_id}\""));
    admin_sql(&format!("DROP DATABASE \"{taken_id}\""));
}

#[test]
fn session_state_a_migration_sets_does_not_leak_into_the_next() {
    let repo = TestRepo::new("session-state");
    admin_sql(
        "DO $$ BEGIN CREATE ROLE envctl_leak_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    repo.write(
        "schemas/migrations/0004_sets.sql",
        "CREATE SCHEMA side;\n\
         GRANT USAGE ON SCHEMA envctl TO envctl_leak_role;\n\
         GRANT INSERT ON envctl.migrations TO envctl_leak_role;\n\
         SET search_path TO side;\n\
         SET TIME ZONE 'Pacific/Kiritimati';\n\
         SET ROLE envctl_leak_role;\n",
    );
    repo.write(
        "schemas/migrations/0005_records.sql",
        "CREATE TABLE seen AS SELECT current_setting('search_path') AS path, \
         current_setting('TimeZone') AS zone, current_user::text AS who;\n",
    );
    repo.apply("feature/s");
    let seen = repo.sql(
        "feature/s",
        "SELECT path || '|' || zone || '|' || who FROM public.seen",
    );
    let parts: Vec<&str> = seen.split('|').collect();
    assert_eq!(parts[0], "\"$user\", public", "{seen}");
    assert_ne!(parts[1], "Pacific/Kiritimati", "{seen}");
    assert_eq!(parts[2], "postgres", "{seen}");
}

#[test]
fn waits_are_bounded_and_an_interrupted_wait_exits_143() {
    let repo = TestRepo::new("bounded-waits");
    repo.apply("feature/w");
    repo.write(
        "schemas/migrations/0004_w.sql",
        "CREATE TABLE dummy.w (id int);\n",
    );
    // Another session holds the migration lock.
    let mut holder = psql_in_background(
        &repo.url("feature/w"),
        &format!(
            "SELECT pg_advisory_lock({}); SELECT pg_sleep(60)",
            envctl::db::LOCK_KEY
        ),
    );
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let output = wait_at_most(
        spawn(
            &repo,
            &["apply", "--branch", "feature/w", "--wait-timeout", "2s"],
        ),
        Duration::from_secs(30),
        "apply",
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("another envctl has been migrating this database for over 2s"),
        "{}",
        stderr_of(&output)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // A signal during the wait: the error it ends with still exits 143.
    let (rest, status) = signal_when_said(
        &repo,
        &["apply", "--branch", "feature/w"],
        "waiting for another envctl",
        Signal::SIGTERM,
    );
    assert_eq!(status.code(), Some(143), "{rest}");
    assert!(rest.contains("failed  feature/w"), "{rest}");
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(repo.applied_versions("feature/w"), "1,2,3");
}

#[test]
fn a_missing_database_fails_wait_ready_at_once() {
    let repo = TestRepo::new("missing-db");
    let desired = desired_of(&repo, "feature/missing");
    runtime().block_on(async {
        let provider = local_provider().await;
        let started = Instant::now();
        let result = provider
            .wait_ready(
                &owner(&repo.repo, "envctl"),
                &desired,
                Duration::from_secs(120),
                &|_| {},
            )
            .await;
        assert!(
            matches!(result, Err(ProviderError::NotFound(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    });
}

#[test]
fn a_cancelled_create_leaves_no_lock_behind() {
    let repo = TestRepo::new("cancelled-create");
    let desired = desired_of(&repo, "feature/cancel");
    let id = desired.cluster_id.clone();
    let ours = owner(&repo.repo, "envctl");
    let tags = envctl::apply::initial_tags(&desired, &ours, None).unwrap();
    let held = || {
        admin_sql(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
             AND objid::bigint = (hashtext('{id}')::bigint & 4294967295)"
        ))
        .trim()
        .to_owned()
    };
    runtime().block_on(async {
        let provider = local_provider().await;
        let force = DeleteOptions {
            force: true,
            ..DeleteOptions::default()
        };
        for attempt in 0..30u64 {
            provider.delete(&ours, &id, force.clone()).await.unwrap();
            let budget = Duration::from_millis(attempt * 3 % 60);
            let _ = tokio::time::timeout(budget, provider.create(&ours, &desired, &tags)).await;
            // A dropped connection's lock goes when its server process notices the closed
            // socket; a connection returned to the pool would hold it for good.
            let released = Instant::now();
            while held() != "0" {
                assert!(
                    released.elapsed() < Duration::from_secs(5),
                    "attempt {attempt} left the id lock held"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        provider.create(&ours, &desired, &tags).await.unwrap();
        provider.delete(&ours, &id, force).await.unwrap();
    });
}

/// Where the test dependencies for JavaScript clients are (`npm ci --prefix tests/node`).
fn node_client() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/pg/package.json").is_file(),
        "node-postgres is not installed: run `scripts/test.sh --setup` (it runs `npm ci --prefix tests/node`)"
    );
    dir.join("connect.mjs")
}

#[test]
fn the_private_servers_url_works_unchanged_with_psql_node_postgres_and_sqlx() {
    let script = node_client();
    let private = PrivateRepo::new("tests/clients");
    let envctl = || {
        let mut cmd = private.envctl();
        cmd.env_remove("PGSSLMODE");
        cmd
    };
    envctl()
        .args(["apply", "--branch", "feature/js"])
        .assert()
        .success();
    let url = private.url("feature/js");
    let url = url.trim();
    assert!(url.ends_with("?sslmode=disable"), "{url}");
    // node-postgres, from DATABASE_URL and from the PG* variables.
    let node = envctl()
        .args(["exec", "--branch", "feature/js", "--", "node"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(node.status.success(), "{}", stderr_of(&node));
    let rows: serde_json::Value = serde_json::from_slice(&node.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    for row in rows.as_array().unwrap() {
        assert_eq!(row["two"], 2);
        assert!(
            row["database"]
                .as_str()
                .unwrap()
                .starts_with("envctl-feature-js-")
        );
    }
    // psql, from DATABASE_URL.
    envctl()
        .args(["exec", "--branch", "feature/js", "--", "sh", "-c"])
        .arg("psql \"$DATABASE_URL\" -Atc 'SELECT 40 + 2'")
        .assert()
        .success()
        .stdout("42\n");
    // sqlx, from the URL.
    runtime().block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let two: i32 = sqlx::query_scalar("SELECT 2")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(two, 2);
    });
    // Stopped and started again, it listens where it did: a URL pasted somewhere keeps working.
    envctl().args(["local", "stop"]).assert().success();
    assert_eq!(private.url("feature/js").trim(), url);
    envctl().args(["local", "stop"]).assert().success();
}

#[test]
fn a_server_url_keeps_its_own_sslmode_and_may_carry_the_password_as_a_parameter() {
    let repo = TestRepo::new("own-sslmode");
    let admin = url::Url::parse(support::server_url()).unwrap();
    let mut by_parameter = admin.clone();
    let password = admin.password().unwrap().to_owned();
    by_parameter.set_password(None).unwrap();
    by_parameter
        .query_pairs_mut()
        .append_pair("password", &password)
        .append_pair("sslmode", "disable");
    let with = |url: &str| {
        let mut cmd = repo.envctl();
        cmd.env("ENVCTL_LOCAL_URL", url);
        cmd
    };
    let output = with(by_parameter.as_str())
        .args(["apply", "--branch", "feature/q", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(!String::from_utf8_lossy(&output.stdout).contains(&password));
    assert!(!stderr_of(&output).contains(&password));
    assert!(url_of(with(by_parameter.as_str()), "feature/q").ends_with("?sslmode=disable\n"));
    // Without an sslmode, none: each client keeps its own default (node-postgres would read
    // `prefer` as `verify-full`).
    let url = url_of(with(support::server_url()), "feature/q");
    assert!(!url.contains("sslmode"), "{url}");
    let env = with(support::server_url())
        .args(["exec", "--branch", "feature/q", "--", "env"])
        .env_remove("PGSSLMODE")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8(env.stdout)
            .unwrap()
            .contains("PGSSLMODE=")
    );

    assert_eq!(repo.dummy_rows("feature/q"), "3");
}

#[test]
fn a_closed_port_fails_at_once_with_the_real_cause() {
    let repo = TestRepo::new("closed-port");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    repo.envctl()
        .env(
            "ENVCTL_LOCAL_URL",
            format!("postgres://someone:hunter2secret@127.0.0.1:{port}/postgres"),
        )
        .args(["plan", "--branch", "feature/x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "cannot connect to the local server at postgres://someone:***@127.0.0.1:{port}/postgres"
        )))
        .stderr(predicate::str::contains("Connection refused"))
        .stderr(predicate::str::contains("hint:"))
        .stderr(predicate::str::contains("hunter2secret").not());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_server_error_does_not_point_at_a_line_of_postgres_source() {
    let repo = TestRepo::new("wrong-password");
    let mut url = url::Url::parse(support::server_url()).unwrap();
    url.set_password(Some("not-the-password")).unwrap();
    repo.envctl()
        .env("ENVCTL_LOCAL_URL", url.as_str())
        .args(["plan", "--branch", "feature/x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("password authentication failed"))
        .stderr(predicate::str::contains("SQLSTATE 28P01"))
        .stderr(predicate::str::contains(" at line ").not());
}

#[test]
fn as_root_a_repository_the_postgres_user_cannot_reach_gets_its_server_elsewhere() {
    use std::os::unix::fs::PermissionsExt;
    let closed = tempfile::Builder::new()
        .prefix("envctl-closed-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap();
    let root = closed.path().join("work/app");
    support::copy_example(&root);
    let envctl = || envctl_private(&root, "tests/closed");
    let output = envctl()
        .args(["apply", "--branch", "feature/root"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let root_user = nix::unistd::geteuid().is_root();
    if root_user {
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains("the `postgres` user cannot reach"),
            "{stderr}"
        );
        let moved = stderr
            .split("keeps its data in `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .expect("says where");
        assert!(
            std::path::Path::new(moved)
                .join("data/PG_VERSION")
                .is_file(),
            "{moved}"
        );
        assert!(!root.join(".envctl/postgres/data").exists());
    } else {
        // Not root: the server runs as this user, right in the repository.
        assert!(root.join(".envctl/postgres/data/PG_VERSION").is_file());
    }
    envctl()
        .args(["exec", "--branch", "feature/root", "--"])
        .args(["psql", "-Atc", "SELECT 1"])
        .assert()
        .success()
        .stdout("1\n");
    support::private::stop(envctl());
}

#[test]
fn ctrl_c_at_the_confirmation_prompt_exits_130_and_changes_nothing() {
    let repo = TestRepo::new("prompt-interrupt");
    repo.apply("feature/c");
    repo.edit_first_migration();
    // Ctrl-C on the terminal at the prompt.
    let run = on_terminal_after(
        &repo,
        "apply --branch feature/c",
        "Continue? [y/N]",
        || {},
        "\x03",
    );
    let rest = run.after_answer;
    assert_eq!(run.code, Some(130), "{rest}");
    assert!(rest.contains("nothing was changed"), "{rest}");
    assert_eq!(repo.dummy_rows("feature/c"), "3");
}

#[test]
fn each_role_has_its_own_password_and_is_never_a_superuser() {
    let repo = TestRepo::new("own-role");
    repo.set_preview_user("envctl_own_role");
    repo.apply("feature/role");
    let url = url::Url::parse(repo.url("feature/role").trim()).unwrap();
    let admin_password = url::Url::parse(support::server_url())
        .unwrap()
        .password()
        .unwrap()
        .to_owned();
    assert_eq!(url.username(), "envctl_own_role");
    let password = url.password().expect("a password of its own");
    assert_ne!(password, admin_password);
    assert!(!password.contains(&admin_password));
    assert_eq!(
        repo.sql(
            "feature/role",
            "SELECT current_user || ' ' || rolsuper FROM pg_roles WHERE rolname = current_user"
        ),
        "envctl_own_role false"
    );
    assert_eq!(repo.dummy_rows("feature/role"), "3");
}

#[test]
fn max_deletions_counts_replaces_and_resets() {
    let repo = TestRepo::new("max-deletions");
    repo.apply("feature/m");
    repo.edit_first_migration();
    let refused = || {
        repo.envctl()
            .args(["apply", "--yes", "--branch", "feature/m"])
            .args(["--max-deletions", "0"])
            .assert()
            .code(1)
    };
    refused().stderr(predicate::str::contains(
        "the plan deletes or empties 1 environment (reset feature/m",
    ));
    repo.set_preview_user("envctl_other_role");
    refused().stderr(predicate::str::contains("replace feature/m"));
    assert_eq!(repo.dummy_rows("feature/m"), "3", "nothing was emptied");
}

#[test]
fn exec_behaves_like_the_tools_it_wraps() {
    let repo = TestRepo::new("exec-signals");
    repo.apply("feature/e");
    repo.exec("feature/e", &["envctl-no-such-command"])
        .assert()
        .code(127)
        .stderr(predicate::str::contains("command not found"));
    repo.exec("feature/e", &["/etc/hostname"])
        .assert()
        .code(126);
    // SIGTERM to envctl reaches the child; envctl waits for it and exits with its status.
    let (rest, output) = signal_an_exec(
        &repo,
        "feature/e",
        "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        Signal::SIGTERM,
    );
    assert_eq!(output.status.code(), Some(42), "{}", stderr_of(&output));
    assert!(rest.contains("got-term"), "{rest}");
}

#[test]
fn turning_protection_off_with_a_replace_in_one_change_converges() {
    let repo = TestRepo::new("unprotect-replace");
    let preview = repo.read("environments/preview.yaml");
    let protected = preview
        .replace("protect: false", "protect: true")
        .replace("deletionProtection: false", "deletionProtection: true");
    repo.write("environments/preview.yaml", &protected);
    repo.apply("feature/u");
    // One change: protection off, and a new user (a replace).
    repo.write(
        "environments/preview.yaml",
        &preview.replace("user: postgres", "user: envctl_unprotected"),
    );
    assert_eq!(repo.plan_types("feature/u"), ["replace", "migrate", "seed"]);
    repo.envctl()
        .args(["apply", "--yes", "--branch", "feature/u"])
        .assert()
        .success();
    assert_eq!(
        repo.sql("feature/u", "SELECT current_user"),
        "envctl_unprotected"
    );
    assert!(repo.plan_types("feature/u").is_empty());
}

#[test]
fn an_altered_ledger_blocks_its_environment_and_never_panics() {
    let repo = TestRepo::new("altered-ledger");
    repo.apply("feature/l");
    repo.apply("feature/k");
    repo.sql(
        "feature/l",
        "ALTER TABLE envctl.migrations ALTER COLUMN version TYPE integer",
    );
    repo.write("schemas/migrations/0004_more.sql", "SELECT 4;\n");
    let output = repo
        .envctl()
        .args(["apply", "--branch", "feature/l"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("blocked: cannot read the ledger"),
        "{}",
        stderr_of(&output)
    );
    repo.apply("feature/k");
    assert_eq!(repo.applied_versions("feature/k"), "1,2,3,4");
}

#[test]
fn a_role_whose_password_changed_is_read_and_repaired() {
    let repo = TestRepo::new("drifted-role");
    repo.set_preview_user("envctl_drift_role");
    repo.apply("feature/d");
    admin_sql("ALTER ROLE envctl_drift_role PASSWORD 'changed-by-someone'");
    repo.write(
        "schemas/migrations/0004_more.sql",
        "CREATE TABLE dummy.more (id int);\n",
    );
    assert_eq!(repo.plan_types("feature/d"), ["migrate"]);
    repo.apply("feature/d");
    assert_eq!(repo.applied_versions("feature/d"), "1,2,3,4");
    assert!(
        admin_sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'envctl_drift_role'")
            .starts_with("SCRAM-SHA-256$"),
        "the password is stored as a verifier"
    );
}

#[test]
fn a_migration_may_change_its_role_and_prepare_statements() {
    let repo = TestRepo::new("role-and-prepare");
    admin_sql(
        "DO $$ BEGIN CREATE ROLE envctl_powerless NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    repo.write(
        "schemas/migrations/0004_role.sql",
        "CREATE TABLE dummy.r (id int);\nSET ROLE envctl_powerless;\nPREPARE p AS SELECT 1;\n",
    );
    repo.write(
        "schemas/migrations/0005_again.sql",
        "PREPARE p AS SELECT 2;\nCREATE TABLE dummy.again AS SELECT current_user::text AS who;\n",
    );
    repo.apply("feature/r");
    assert_eq!(repo.applied_versions("feature/r"), "1,2,3,4,5");
    assert_eq!(
        repo.sql("feature/r", "SELECT who FROM dummy.again"),
        "postgres"
    );
}

#[test]
fn an_unreadable_branch_tree_blocks_that_branch_only() {
    let repo = TestRepo::new("missing-blob");
    repo.git(&["checkout", "-q", "-b", "feature/broken"]);
    repo.write("schemas/migrations/0004_lost.sql", "SELECT 'lost';\n");
    repo.commit("a migration whose blob goes missing");
    let blob = repo.git(&[
        "rev-parse",
        "feature/broken:schemas/migrations/0004_lost.sql",
    ]);
    let blob = blob.trim();
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["branch", "feature/fine"]);
    std::fs::remove_file(
        repo.path()
            .join(".git/objects")
            .join(&blob[..2])
            .join(&blob[2..]),
    )
    .unwrap();
    let output = repo.envctl().args(["apply", "--all"]).output().unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed  feature/broken"), "{stderr}");
    assert!(stderr.contains("its tree cannot be read"), "{stderr}");
    assert!(stderr.contains("ok      feature/fine"), "{stderr}");
}

#[test]
fn with_umask_077_the_private_server_still_starts_in_place() {
    let dir = reachable_dir("envctl-umask-");
    let output = Process::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077; exec {} -C {} --repo tests/umask apply --branch feature/u",
            assert_cmd::cargo::cargo_bin("envctl").display(),
            dir.path().display()
        ))
        .env_remove("ENVCTL_LOCAL_URL")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        !stderr_of(&output).contains("cannot reach"),
        "{}",
        stderr_of(&output)
    );
    assert!(
        dir.path()
            .join(".envctl/postgres/data/PG_VERSION")
            .is_file()
    );
    assert_cmd::Command::from_std(support::envctl_at(dir.path()))
        .args(["local", "stop"])
        .assert()
        .success();
}

#[test]
fn messages_a_new_user_meets_say_what_is_going_on() {
    let repo = TestRepo::new("first-contact");
    // A branch no spec covers: the plan says why nothing happens, and url says what to do.
    repo.envctl()
        .args(["plan", "--branch", "chore/docs"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "chore/docs: no spec in `environments/` covers this branch, so it gets no database",
        ));
    let plan = repo.plan_json("chore/docs");
    assert_eq!(plan["uncovered"], serde_json::json!(["chore/docs"]));
    repo.envctl()
        .args(["url", "--branch", "chore/docs"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "no spec covers branch `chore/docs`, so it has no database",
        ))
        .stderr(predicate::str::contains("a glob such as `chore/*`"));
    repo.envctl()
        .args(["url", "--branch", "feature/none"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "branch `feature/none` has no environment under prefix `envctl`, and git knows no such branch",
        ))
        .stderr(predicate::str::contains("`envctl status` lists the live environments"));
    // A ref where a branch name belongs: nothing to destroy, and a warning that says why.
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "refs/heads/feature/known"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: `refs/heads/feature/known` looks like a ref, not a branch name: environments go by the short name (`envctl destroy --branch feature/known`)",
        ));
    repo.envctl()
        .args(["url", "--branch", "origin/feature/known"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "`origin/feature/known` looks like a ref, not a branch name",
        ))
        .stderr(predicate::str::contains("`--branch feature/known`"));
    // A branch git knows, not applied yet: apply creates it.
    repo.git(&["branch", "feature/known"]);
    repo.envctl()
        .args(["url", "--branch", "feature/known"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "hint: create it with `envctl apply --branch feature/known`",
        ));
    // The default branch is unknown here (no origin): said when an environment is made, not on
    // every apply.
    let first = repo
        .envctl()
        .args(["apply", "--branch", "feature/n"])
        .output()
        .unwrap();
    assert!(
        stderr_of(&first).contains("cannot tell the default branch")
            && stderr_of(&first).contains("set ENVCTL_DEFAULT_BRANCH (e.g. `main`)")
            && !stderr_of(&first).contains("git remote set-head"),
        "{}",
        stderr_of(&first)
    );
    let again = repo
        .envctl()
        .args(["apply", "--branch", "feature/n"])
        .output()
        .unwrap();
    assert!(
        !stderr_of(&again).contains("cannot tell the default branch"),
        "{}",
        stderr_of(&again)
    );
    // A protected environment is not reset, and reset says so before doing anything.
    repo.apply("main");
    repo.envctl()
        .args(["reset", "--branch", "main", "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "the environment of `main` is protected (`lifecycle.protect` in `environments/main.yaml`); envctl does not reset it",
        ));
    // A malformed server URL is named as such.
    repo.envctl()
        .env("ENVCTL_LOCAL_URL", "localhost:5432")
        .args(["status"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "ENVCTL_LOCAL_URL is not a PostgreSQL URL",
        ))
        .stderr(predicate::str::contains(
            "postgres://USER:PASSWORD@HOST:PORT/DATABASE",
        ));
}

#[test]
fn the_private_server_says_when_it_starts_and_only_then() {
    let private = PrivateRepo::new("tests/start-note");
    let envctl = || private.envctl();
    let first = envctl().args(["status"]).output().unwrap();
    assert!(
        stderr_of(&first).contains("started the private PostgreSQL server in")
            && stderr_of(&first).contains("`envctl local stop` stops it"),
        "{}",
        stderr_of(&first)
    );
    let second = envctl().args(["status"]).output().unwrap();
    assert!(
        !stderr_of(&second).contains("started"),
        "{}",
        stderr_of(&second)
    );
    envctl().args(["local", "stop"]).assert().success();
}

#[test]
fn a_committed_envctl_link_is_refused_and_nothing_outside_is_touched() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("postgres/data")).unwrap();
    std::fs::write(outside.path().join("postgres/data/important.txt"), "keep").unwrap();
    let private = PrivateRepo::new("tests/envctl-link");
    std::os::unix::fs::symlink(outside.path(), private.path().join(".envctl")).unwrap();
    let output = private.envctl().arg("status").output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("is not a directory (a symbolic link?)"),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("postgres/data/important.txt")).unwrap(),
        "keep"
    );
    assert!(!outside.path().join(".gitignore").exists());
}

#[test]
fn links_and_committed_files_in_the_private_servers_directory_are_refused() {
    let status_in = |dir: &std::path::Path| {
        envctl_private(dir, "tests/envctl-inner-links")
            .arg("status")
            .output()
            .unwrap()
    };
    // A dangling `.envctl/.gitignore` link: envctl would create its target.
    let outside = tempfile::tempdir().unwrap();
    let dir = reachable_dir("envctl-links-");
    std::fs::create_dir_all(dir.path().join(".envctl/postgres")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("created-by-envctl"),
        dir.path().join(".envctl/.gitignore"),
    )
    .unwrap();
    let output = status_in(dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains(".gitignore") && stderr_of(&output).contains("symbolic link"),
        "{}",
        stderr_of(&output)
    );
    assert!(!outside.path().join("created-by-envctl").exists());
    // The server's log or data as links: another file appended to, another server started.
    std::fs::remove_file(dir.path().join(".envctl/.gitignore")).unwrap();
    std::fs::write(outside.path().join("victim.txt"), "someone's file\n").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("victim.txt"),
        dir.path().join(".envctl/postgres/server.log"),
    )
    .unwrap();
    let output = status_in(dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("server.log"),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim.txt")).unwrap(),
        "someone's file\n"
    );
    // Files a commit brought under `.envctl/` (a data directory whose settings run commands).
    let tracked = reachable_dir("envctl-tracked-");
    let git = |args: &[&str]| {
        support::git::git_ok(tracked.path(), args);
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(tracked.path().join(".envctl/postgres/data")).unwrap();
    std::fs::write(
        tracked.path().join(".envctl/postgres/data/postgresql.conf"),
        "archive_command = 'touch /tmp/pwned'\n",
    )
    .unwrap();
    git(&["add", "-f", ".envctl"]);
    let output = status_in(tracked.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("git tracks `.envctl/postgres/data/postgresql.conf`"),
        "{}",
        stderr_of(&output)
    );
    assert!(
        !tracked
            .path()
            .join(".envctl/postgres/data/PG_VERSION")
            .exists()
    );
    // `.envctl` itself in the index, as a submodule (a commit of someone else's repository).
    git(&["rm", "-rq", "--cached", ".envctl"]);
    git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        "160000,4b825dc642cb6eb9a060e54bf8d69288fbee4904,.envctl",
    ]);
    let output = status_in(tracked.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("git tracks `.envctl`"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn a_role_belongs_to_one_repository_and_prefix() {
    let a = TestRepo::new("role-owner-a");
    let b = TestRepo::new("role-owner-b");
    admin_sql("DROP ROLE IF EXISTS envctl_owned_role");
    for repo in [&a, &b] {
        repo.set_preview_user("envctl_owned_role");
    }
    a.apply("feature/r");
    b.envctl()
        .args(["apply", "--branch", "feature/r"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "role `envctl_owned_role` belongs to the environments of `tests/role-owner-a` under prefix `envctl` on this server",
        ));
    assert!(b.database_names().is_empty(), "nothing was created for b");
    a.envctl()
        .args(["destroy", "--yes", "--branch", "feature/r"])
        .assert()
        .success();
}

#[test]
fn many_environments_set_up_one_role_at_once() {
    let repo = TestRepo::new("role-concurrency");
    repo.set_preview_user("envctl_busy_role");
    repo.commit("a role for every branch");
    for i in 0..8 {
        repo.git(&["branch", &format!("feature/c{i}")]);
    }
    let output = repo
        .envctl()
        .args(["apply", "--all", "--concurrency", "8"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(repo.database_names().len(), 9, "eight branches and main");
}

#[test]
fn a_migration_waiting_on_a_lock_gives_up_with_the_wait_timeout() {
    let repo = TestRepo::new("lock-timeout");
    repo.apply("feature/l");
    let mut holder = psql_in_background(
        &repo.url("feature/l"),
        "BEGIN; LOCK TABLE dummy.dummy_table IN ACCESS SHARE MODE; SELECT pg_sleep(60); COMMIT;",
    );
    std::thread::sleep(Duration::from_millis(700));
    repo.write(
        "schemas/migrations/0004_alter.sql",
        "ALTER TABLE dummy.dummy_table ADD COLUMN extra text;\n",
    );
    let started = Instant::now();
    let output = wait_at_most(
        spawn(
            &repo,
            &["apply", "--branch", "feature/l", "--wait-timeout", "3s"],
        ),
        Duration::from_secs(40),
        "apply",
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("lock timeout"),
        "{}",
        stderr_of(&output)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    repo.apply("feature/l");
    assert_eq!(repo.applied_versions("feature/l"), "1,2,3,4");
}

#[test]
fn the_password_sqlx_reads_from_pgpassword_is_the_admins_too() {
    let repo = TestRepo::new("pgpassword");
    repo.set_preview_user("envctl_pgpassword_role");
    let mut url = url::Url::parse(support::server_url()).unwrap();
    let password = url.password().unwrap().to_owned();
    url.set_password(None).unwrap();
    let with = || {
        let mut cmd = repo.envctl();
        cmd.env("ENVCTL_LOCAL_URL", url.as_str())
            .env("PGPASSWORD", &password);
        cmd
    };
    with()
        .args(["apply", "--branch", "feature/p"])
        .assert()
        .success();
    let printed = url::Url::parse(url_of(with(), "feature/p").trim()).unwrap();
    assert_eq!(printed.username(), "envctl_pgpassword_role");
    assert!(printed.password().is_some_and(|p| p != password));
}

#[test]
fn an_unreadable_live_scaling_is_corrected() {
    let repo = TestRepo::new("bad-scaling");
    repo.apply("feature/s");
    let id = repo.database_names()[0].clone();
    let comment = comment_of(&id);
    let broken = comment
        .trim()
        .replace("\"min_acu\":0.0", "\"min_acu\":0.3")
        .replace("\"max_acu\":4.0", "\"max_acu\":999.0");
    assert_ne!(broken, comment.trim(), "{comment}");
    set_comment(&id, &broken);
    assert_eq!(repo.plan_types("feature/s"), ["update"]);
    repo.apply("feature/s");
    assert!(repo.plan_types("feature/s").is_empty());
}

#[test]
fn exec_passes_a_hangup_on() {
    let repo = TestRepo::new("exec-hangup");
    repo.apply("feature/h");
    let (rest, output) = signal_an_exec(
        &repo,
        "feature/h",
        "trap 'echo got-hup; exit 9' HUP; echo ready; while true; do sleep 0.1; done",
        Signal::SIGHUP,
    );
    assert_eq!(output.status.code(), Some(9), "{}", stderr_of(&output));
    assert!(rest.contains("got-hup"), "{rest}");
}

#[test]
fn outside_a_repository_no_private_server_is_started_and_the_hints_say_so() {
    // Before, `envctl --repo a/b status` in a directory that was no repository started a private
    // server in its `.envctl/` and left it running; without --repo the hint said to add an
    // `origin` remote to a repository that did not exist.
    let dir = tempfile::tempdir().unwrap();
    for args in [&["status"][..], &["local", "url"]] {
        envctl_private(dir.path(), "o/r")
            .args(args)
            .assert()
            .failure()
            .stderr(predicate::str::contains(
                "is not a repository (no git, no `environments/`)",
            ))
            .stderr(predicate::str::contains("pass `-C DIR`"));
    }
    assert!(!dir.path().join(".envctl").exists());
    assert_cmd::Command::from_std(support::envctl_at(dir.path()))
        .arg("status")
        .assert()
        .failure()
        .stderr(predicate::str::contains("is in no git repository"))
        .stderr(predicate::str::contains("origin").not());
}

#[test]
fn a_private_server_cut_off_while_it_is_made_is_made_again_with_its_settings() {
    // `status` stops at the first signal; the initdb it started runs on. Before, that left a
    // `data` directory with PG_VERSION and without envctl's settings, which every later run
    // took as made (a server on the default Unix socket, listening as initdb configured it).
    let private = PrivateRepo::new("tests/cut-init");
    let server = private.path().join(".envctl/postgres");
    let mut child = support::envctl_at(private.path())
        .args(["--repo", &private.repo, "status"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !server.join("data.making").exists() && !server.join("data").exists() {
        assert!(Instant::now() < until, "initdb did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    support::process::kill(&child, Signal::SIGTERM);
    let _ = child.wait();
    // Whatever the orphaned initdb does, it is done within seconds.
    std::thread::sleep(Duration::from_secs(3));
    let admin = private.envctl().args(["local", "url"]).output().unwrap();
    assert!(admin.status.success(), "{}", stderr_of(&admin));
    let admin = String::from_utf8(admin.stdout).unwrap();
    assert_eq!(
        support::psql_at(admin.trim(), "SHOW unix_socket_directories").trim(),
        ""
    );
    support::private::stop(private.envctl());
}

#[test]
fn a_wait_to_connect_ends_at_the_first_signal() {
    // A server that takes the connection and never answers: the first SIGINT said "waits end
    // now", and the connection's wait ran on to --wait-timeout all the same.
    let repo = TestRepo::new("connect-signal");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://postgres:x@{}/postgres?sslmode=disable",
        silent.local_addr().unwrap()
    );
    let child = repo
        .process(&[
            "apply",
            "--branch",
            "feature/x",
            "--yes",
            "--wait-timeout",
            "120s",
        ])
        .env("ENVCTL_LOCAL_URL", &url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    support::process::kill(&child, Signal::SIGINT);
    let output = wait_at_most(child, Duration::from_secs(20), "apply after SIGINT");
    assert_eq!(output.status.code(), Some(130), "{}", stderr_of(&output));
    drop(silent);
}

#[test]
fn a_reset_waiting_at_its_prompt_undoes_nothing_another_apply_did_meanwhile() {
    let repo = TestRepo::new("reset-race");
    repo.apply("feature/r");
    repo.edit_first_migration();
    // While this apply waits at its prompt, another resets and migrates the database, and a row
    // goes in: this one's reset was planned from a ledger that is no longer there.
    let run = on_terminal_after(
        &repo,
        "apply --branch feature/r",
        "Continue? [y/N]",
        || {
            repo.envctl()
                .args(["apply", "--branch", "feature/r", "--yes"])
                .assert()
                .success();
            repo.sql(
                "feature/r",
                "INSERT INTO dummy.dummy_table (id, name) VALUES (77, 'kept')",
            );
        },
        "y\n",
    );
    let rest = run.after_answer;
    assert_eq!(run.code, Some(1), "{rest}");
    assert!(
        rest.contains("the ledger changed since the reset was planned"),
        "{rest}"
    );
    assert_eq!(
        repo.sql(
            "feature/r",
            "SELECT name FROM dummy.dummy_table WHERE id = 77"
        ),
        "kept"
    );
}
