//! `envctl validate` and `envctl schema` through the binary.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

fn envctl(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("envctl").unwrap();
    cmd.arg("-C")
        .arg(dir)
        .env_remove("GITHUB_ACTIONS")
        .env("NO_COLOR", "1");
    cmd
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_example_repository_validates() {
    envctl(repo_root())
        .arg("validate")
        .assert()
        .success()
        .stderr("ok: 2 environment files, 3 migrations, 1 seed file\n");
}

#[test]
fn invalid_specs_exit_1_with_every_error_and_annotations_in_github_actions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    std::fs::write(
        dir.path().join("environments/a.yaml"),
        "version: 1\nname: a\nbranches: [main]\ncluster:\n  scaling: { minAcu: 0, maxAcus: 4 }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("environments/b.yaml"),
        "version: 1\nname: b\nbranches: [dev]\ncluster:\n  scaling: { minAcu: 9, maxAcu: 4 }\n",
    )
    .unwrap();
    envctl(dir.path())
        .arg("validate")
        .env("GITHUB_ACTIONS", "true")
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "error: environments/a.yaml:5:25: unknown key `maxAcus` in `cluster.scaling`\n  hint: did you mean `maxAcu`?\n",
        ))
        .stderr(predicate::str::contains(
            "error: environments/b.yaml:5:22: `minAcu` 9 is greater than `maxAcu` 4\n",
        ))
        .stderr(predicate::str::contains(
            "::error file=environments/a.yaml,line=5,col=25::unknown key `maxAcus` in `cluster.scaling` (hint: did you mean `maxAcu`?)\n",
        ))
        .stderr(predicate::str::contains("2 errors found\n"));
}

#[test]
fn no_annotations_outside_github_actions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    std::fs::write(dir.path().join("environments/a.yaml"), "version: 1\n").unwrap();
    envctl(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("::error").not())
        .stderr(predicate::str::contains(
            "environments/a.yaml:1:1: the file is missing the required key `name`",
        ));
}

#[test]
fn committed_schema_is_up_to_date() {
    let committed =
        std::fs::read_to_string(repo_root().join("schemas/environment.schema.json")).unwrap();
    let output = envctl(repo_root())
        .arg("schema")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8(output).unwrap(),
        committed,
        "schemas/environment.schema.json is stale: run `cargo run -- schema > schemas/environment.schema.json`"
    );
}

#[test]
fn example_specs_validate_against_the_schema_and_bad_ones_do_not() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schemas/environment.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for entry in std::fs::read_dir(repo_root().join("environments")).unwrap() {
        let path = entry.unwrap().path();
        let spec: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&spec)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
    let bad: serde_json::Value = serde_norway::from_str(
        "version: 1\nname: x\nbranches: [main]\ncluster:\n  scaling: { minAcu: 0, maxAcus: 4 }\n",
    )
    .unwrap();
    assert!(!validator.is_valid(&bad));
}

#[test]
fn iam_policy_is_for_this_repository_prefix_and_users() {
    let output = envctl(repo_root())
        .args(["--repo", "acme/shop", "iam-policy", "--json"])
        .env("ENVCTL_PREFIX", "alice")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "--json is one line");
    let policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let create = statements
        .iter()
        .find(|s| s["Sid"] == "CreateOwnTaggedClusters")
        .unwrap();
    assert_eq!(
        create["Condition"]["StringEquals"],
        serde_json::json!({
            "aws:RequestTag/envctl:managed": "true",
            "aws:RequestTag/envctl:repo": "acme/shop",
            "aws:RequestTag/envctl:prefix": "alice",
            "rds:DatabaseEngine": "aurora-postgresql",
        })
    );
    assert_eq!(create["Resource"][0], "arn:aws:rds:*:*:cluster:alice-*");
    let connect = statements
        .iter()
        .find(|s| s["Sid"] == "ConnectAsTheSpecsUsers")
        .unwrap();
    assert_eq!(
        connect["Resource"],
        serde_json::json!([
            "arn:aws:rds-db:*:*:dbuser:*/envctl_reader",
            "arn:aws:rds-db:*:*:dbuser:*/postgres"
        ])
    );
}

#[test]
fn help_reads_well() {
    envctl(repo_root())
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Per-branch PostgreSQL databases, declared in git.",
        ))
        .stdout(predicate::str::contains("validate"))
        .stdout(predicate::str::contains("--provider <PROVIDER>"));
    envctl(repo_root())
        .args(["plan", "--branch", "a", "--all"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot be used with"));
}

#[test]
fn validate_refuses_a_directory_without_environments() {
    let dir = tempfile::tempdir().unwrap();
    envctl(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "there is no `environments/` directory in",
        ));
    envctl(&dir.path().join("missing"))
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not a directory"));
}

#[test]
fn dotfiles_are_skipped_and_a_broken_link_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    std::os::unix::fs::symlink("nowhere", dir.path().join("environments/.#preview.yaml")).unwrap();
    envctl(dir.path()).arg("validate").assert().success();
    std::os::unix::fs::symlink("nowhere", dir.path().join("environments/broken.yaml")).unwrap();
    envctl(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "error: environments/broken.yaml:1:1: the file is a symbolic link to `nowhere`, which does not exist\n  hint: create the file it points to, or remove the link\n",
        ));
}

#[test]
fn a_wait_timeout_is_bounded_at_parse_time() {
    for (value, says) in [
        ("300000000000y", "longer than the longest wait, `7d`"),
        ("0s", "shorter than one second"),
        ("soon", "is not a duration"),
    ] {
        envctl(repo_root())
            .args(["apply", "--branch", "feature/x", "--wait-timeout", value])
            .assert()
            .code(1)
            .stderr(predicate::str::contains(says));
    }
}

#[test]
fn an_empty_variable_means_unset() {
    envctl(repo_root())
        .env("ENVCTL_PROVIDER", "")
        .env("ENVCTL_REPO", "")
        .env("ENVCTL_MAX_ENVIRONMENTS", "")
        .arg("schema")
        .assert()
        .success();
    envctl(repo_root())
        .args(["--repo", "../..", "iam-policy"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not a repository name"));
}

/// Migration lint in `validate`: warnings with the safer way (exit 0), errors with `--strict`
/// (exit 1), `::warning` annotations in GitHub Actions; a `-- squawk-ignore` comment silences its
/// statement alone.
#[test]
fn lint_findings_are_warnings_and_errors_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in [
        (
            "environments/a.yaml",
            "version: 1\nname: a\nbranches: [main]\ncluster:\n  scaling: { minAcu: 0, maxAcu: 4 }\n",
        ),
        (
            "schemas/migrations/0001_create.sql",
            "CREATE TABLE t (id bigint, c text);\n",
        ),
        (
            "schemas/migrations/0002_drop.sql",
            "-- squawk-ignore ban-drop-column\nALTER TABLE t DROP COLUMN c;\nCREATE INDEX t_id ON t (id);\n",
        ),
    ] {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let warning = "warning: schemas/migrations/0002_drop.sql:3:1: require-concurrent-index-creation: During normal index creation, table updates are blocked, but reads are still allowed.\n  hint: build it with `CREATE INDEX CONCURRENTLY … IF NOT EXISTS` in a migration of its own whose first line is `-- envctl:no-transaction`\n";
    envctl(dir.path())
        .arg("validate")
        .assert()
        .success()
        .stderr(format!(
            "{warning}1 migration lint finding\nok: 1 environment file, 2 migrations, 0 seed files\n"
        ));
    envctl(dir.path())
        .args(["validate", "--strict"])
        .env("GITHUB_ACTIONS", "true")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(warning.replacen("warning:", "error:", 1)))
        .stderr(predicate::str::contains(
            "::error file=schemas/migrations/0002_drop.sql,line=3,col=1::require-concurrent-index-creation: During normal index creation",
        ))
        .stderr(predicate::str::contains("1 migration lint finding (--strict)"));
    envctl(dir.path())
        .arg("validate")
        .env("GITHUB_ACTIONS", "true")
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "::warning file=schemas/migrations/0002_drop.sql,line=3,col=1::require-concurrent-index-creation",
        ))
        .stderr(predicate::str::contains("ban-drop-column").not());
}

#[test]
fn a_refused_value_from_a_variable_names_the_variable() {
    // clap names the flag; with the value from ENVCTL_PROVIDER, the flag is nowhere to be seen.
    envctl(repo_root())
        .arg("validate")
        .env("ENVCTL_PROVIDER", "bogus")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "error: invalid value 'bogus' for '--provider <PROVIDER>' (set by the environment variable ENVCTL_PROVIDER)\n",
        ))
        .stderr(predicate::str::contains("possible values: local, aws"));
    // Given on the command line, the flag is the one to name.
    envctl(repo_root())
        .args(["validate", "--provider", "bogus"])
        .env("ENVCTL_PROVIDER", "aws")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("ENVCTL_PROVIDER").not());
    envctl(repo_root())
        .args(["apply", "--branch", "main"])
        .env("ENVCTL_MAX_ENVIRONMENTS", "lots")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("ENVCTL_MAX_ENVIRONMENTS"));
}

#[test]
fn validate_warns_when_there_is_no_migrations_directory() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["environments", "schemas/seeds"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::copy(
        repo_root().join("environments/preview.yaml"),
        dir.path().join("environments/preview.yaml"),
    )
    .unwrap();
    std::fs::copy(
        repo_root().join("schemas/seeds/dummy.sql"),
        dir.path().join("schemas/seeds/dummy.sql"),
    )
    .unwrap();
    // Migrations kept where envctl does not read them.
    std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
    envctl(dir.path())
        .arg("validate")
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: there is no `schemas/migrations` directory, so environments get no migrations: envctl reads `schemas/migrations/NNNN_name.sql`",
        ))
        .stderr(predicate::str::contains("ok: 1 environment file, 0 migrations"));
    // An empty directory is a choice: no warning.
    std::fs::create_dir_all(dir.path().join("schemas/migrations")).unwrap();
    envctl(dir.path())
        .arg("validate")
        .assert()
        .success()
        .stderr(predicate::str::contains("warning").not());
}

#[test]
fn a_misspelled_envctl_variable_is_warned_about() {
    envctl(repo_root())
        .arg("validate")
        .env("ENVCTL_PROVDER", "aws")
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: `ENVCTL_PROVDER` is not a variable envctl reads (did you mean `ENVCTL_PROVIDER`?); it is ignored",
        ));
}
