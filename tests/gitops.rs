//! GitOps through the binary: branch discovery and `envctl prune`, in real git repositories with a
//! bare `origin` in a temp dir, against the shared test PostgreSQL server (local provider).

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use predicates::prelude::*;
use support::git::{clone_of, file_url, git, git_dated, git_ok, unix_time};
use support::process::on_terminal_after;
use support::{
    TestRepo, admin_sql, applied_ten_minutes_ago, database_count, envctl_in, set_comment,
    set_metadata,
};

/// Live environments by branch → cluster id.
fn ids(repo: &TestRepo) -> BTreeMap<String, String> {
    repo.status()["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["branch"].as_str().unwrap().to_owned(),
                e["cluster_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Makes every live environment of the repository look applied ten minutes ago
/// (`support::applied_ten_minutes_ago`).
fn age_all(repo: &TestRepo) {
    for id in ids(repo).values() {
        applied_ten_minutes_ago(id);
    }
}

/// Makes every environment look applied ten minutes ago, fetches as CI does, then deletes
/// `branch` on origin (and here): prune has a trusted reason to delete its environment.
fn gone_after_a_ci_fetch(repo: &TestRepo, branch: &str) {
    age_all(repo);
    repo.fetch_as_ci();
    repo.delete_branch(branch);
}

/// Makes a live environment look last applied long ago (its ttl has passed).
fn make_old(id: &str) {
    set_metadata(id, "{tags,envctl:last-applied}", "\"2026-01-01T00:00:00Z\"");
}

/// The spec for `keep/*`: protected.
const KEPT_SPEC: &str = "version: 1
name: kept
branches: [\"keep/*\"]
cluster:
  engine: aurora-postgresql
  express: true
  scaling: { minAcu: 0, maxAcu: 2 }
database:
  name: postgres
  user: postgres
  schemaVersion: latest
lifecycle:
  protect: true
";

/// `prune` with `args`, in the repository, with the default branch from `origin/HEAD`.
fn prune(repo: &TestRepo, args: &[&str]) -> assert_cmd::assert::Assert {
    repo.envctl()
        .arg("prune")
        .args(args)
        .env_remove("ENVCTL_DEFAULT_BRANCH")
        .assert()
}

/// `prune --dry-run --json` in the clone at `dir`, with `main` as the default branch: the plan.
fn prune_plan_in(dir: &std::path::Path, repo: &TestRepo) -> serde_json::Value {
    json_of(
        &envctl_in(dir, &repo.repo)
            .args(["prune", "--dry-run", "--json"])
            .env("ENVCTL_DEFAULT_BRANCH", "main")
            .assert()
            .success(),
    )
}

fn json_of(assert: &assert_cmd::assert::Assert) -> serde_json::Value {
    serde_json::from_slice(&assert.get_output().stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&assert.get_output().stdout),
            String::from_utf8_lossy(&assert.get_output().stderr)
        )
    })
}

/// Two text fields of each object of a JSON list.
fn pairs(list: &serde_json::Value, a: &str, b: &str) -> Vec<(String, String)> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|item| {
            let text = |key: &str| item[key].as_str().unwrap_or_default().to_owned();
            (text(a), text(b))
        })
        .collect()
}

/// `(branch, reason)` of each deletion in a prune's JSON.
fn deletions(plan: &serde_json::Value) -> Vec<(String, String)> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["type"], "delete", "{a}");
            (
                a["branch"].as_str().unwrap().to_owned(),
                a["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn prune_deletes_exactly_the_environments_git_says_are_done_each_with_its_reason() {
    let repo = TestRepo::new("prune-all");
    repo.write("environments/kept.yaml", KEPT_SPEC);
    repo.commit("a protected class");
    let _origin = repo.with_origin();
    repo.apply("main");

    repo.branch("feature/deleted", 1, true);
    repo.branch("feature/merged", 2, true);
    repo.branch("feature/squashed", 1, true);
    repo.branch("feature/expired", 1, true);
    repo.branch("feature/active", 1, true);
    repo.branch("feature/fresh", 0, true);
    repo.branch("feature/local-only", 1, false);
    repo.branch("keep/this", 1, true);
    repo.branch("fix/dropped", 1, true);
    for b in [
        "feature/deleted",
        "feature/merged",
        "feature/squashed",
        "feature/expired",
        "feature/active",
        "feature/fresh",
        "feature/local-only",
        "keep/this",
        "fix/dropped",
    ] {
        repo.apply(b);
    }
    let before = ids(&repo);
    assert_eq!(before.len(), 10, "{before:?}");
    age_all(&repo);
    repo.fetch_as_ci();

    // What happens to each branch after its environment was made.
    repo.delete_branch("feature/deleted");
    repo.git(&["merge", "-q", "--no-ff", "-m", "merge", "feature/merged"]);
    repo.git(&["merge", "-q", "--squash", "feature/squashed"]);
    repo.commit("squashed feature/squashed");
    repo.git(&["push", "-q", "origin", "main"]);
    repo.delete_branch("feature/squashed");
    make_old(&before["feature/expired"]);
    repo.delete_branch("keep/this");
    // fix/dropped's own tree no longer covers it.
    repo.git(&["checkout", "-q", "fix/dropped"]);
    repo.replace_in(
        "environments/preview.yaml",
        "[\"feature/*\", \"fix/*\"]",
        "[\"feature/*\"]",
    );
    repo.commit("fix/* gets no database any more");
    repo.git(&["push", "-q", "origin", "fix/dropped"]);
    repo.git(&["checkout", "-q", "main"]);
    // The default branch's environment: past a ttl and unprotected, still never pruned.
    make_old(&before["main"]);
    set_metadata(&before["main"], "{tags,envctl:ttl}", "\"60\"");
    set_metadata(&before["main"], "{tags,envctl:protect}", "\"false\"");
    set_metadata(&before["main"], "{deletion_protection}", "false");
    // A leftover of an interrupted create, untagged (killed between CREATE and COMMENT), with
    // the id of a branch git knows.
    let leftover = format!("{}-creating", before["feature/active"]);
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{leftover}\""));
    admin_sql(&format!(
        "CREATE DATABASE \"{leftover}\" CONNECTION LIMIT 7177"
    ));

    let expected: Vec<(String, String)> = [
        ("feature/active", "leftover of an interrupted create"),
        (
            "feature/deleted",
            "branch deleted: neither on origin nor a local branch",
        ),
        (
            "feature/expired",
            "ttl expired: 7d since the last apply at 2026-01-01T00:00:00Z",
        ),
        ("feature/merged", "branch merged into main"),
        (
            "feature/squashed",
            "branch deleted: neither on origin nor a local branch",
        ),
        ("fix/dropped", "no spec covers the branch"),
    ]
    .iter()
    .map(|(b, r)| (b.to_string(), r.to_string()))
    .collect();

    // A dry run says so, exits 2, and deletes nothing.
    let dry = prune(
        &repo,
        &[
            "--dry-run",
            "--json",
            "--detailed-exitcode",
            "--max-deletions",
            "6",
        ],
    )
    .code(2);
    let plan = json_of(&dry);
    assert_eq!(deletions(&plan), expected);
    let kept: Vec<(String, String)> = pairs(&plan["kept"], "branch", "kept_because");
    assert_eq!(
        kept,
        [
            (
                "keep/this".to_owned(),
                "it is protected (`lifecycle.protect`); `envctl destroy --branch keep/this --force` deletes it"
                    .to_owned()
            ),
            (
                "main".to_owned(),
                "it is the default branch's environment, which prune never deletes".to_owned()
            ),
        ]
    );
    assert_eq!(ids(&repo), before);
    let text = prune(&repo, &["--dry-run", "--max-deletions", "6"]).success();
    let out = String::from_utf8_lossy(&text.get_output().stdout).into_owned();
    assert!(out.contains("Prune: 6 to delete, 2 kept."), "{out}");
    assert!(
        out.contains("branch merged into main"),
        "the text says why: {out}"
    );

    // A dry run over the limit shows the plan and fails as the real run would.
    prune(&repo, &["--dry-run"])
        .code(1)
        .stdout(predicate::str::contains("Prune: 6 to delete, 2 kept."))
        .stderr(predicate::str::contains("more than `--max-deletions` 5"));

    // Over the limit: nothing goes, all are listed.
    let refused = prune(&repo, &["--yes"]).code(1);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(err.contains("more than `--max-deletions` 5"), "{err}");
    for (branch, _) in &expected {
        assert!(err.contains(branch.as_str()), "{branch} listed: {err}");
    }
    assert_eq!(ids(&repo), before);

    let run = prune(&repo, &["--yes", "--json", "--max-deletions", "6"]).success();
    let report = json_of(&run);
    let statuses: Vec<(String, String)> = pairs(&report["results"], "branch", "status");
    assert!(
        statuses.iter().all(|(_, s)| s == "deleted"),
        "{statuses:?}\n{report:#}"
    );
    assert_eq!(statuses.len(), 6);
    let after: Vec<String> = ids(&repo).into_keys().collect();
    assert_eq!(
        after,
        [
            "feature/active",
            "feature/fresh",
            "feature/local-only",
            "keep/this",
            "main"
        ]
    );
    assert_eq!(database_count(&leftover), "0");

    // Nothing left to do: exit 0 even with --detailed-exitcode.
    prune(&repo, &["--yes", "--detailed-exitcode"])
        .success()
        .stderr(predicate::str::contains("Prune: 0 to delete, 2 kept."));
}

#[test]
fn prune_fails_closed_when_git_cannot_be_trusted() {
    let repo = TestRepo::new("prune-closed");
    // An `origin` remote this clone never fetched from: every branch would look deleted.
    let origin = tempfile::tempdir().unwrap();
    git_ok(origin.path(), &["init", "-q", "--bare"]);
    repo.git(&["remote", "add", "origin", origin.path().to_str().unwrap()]);
    repo.branch("feature/a", 1, false);
    repo.apply("feature/a");
    let id = ids(&repo)["feature/a"].clone();
    make_old(&id);
    prune(&repo, &["--yes"])
        .code(1)
        .stderr(predicate::str::contains(
            "`origin` has no branches in this clone",
        ))
        .stderr(predicate::str::contains("nothing was deleted"));

    repo.git(&["push", "-q", "origin", "main"]);
    repo.git(&["fetch", "-q", "origin"]);
    // No origin/HEAD and no ENVCTL_DEFAULT_BRANCH.
    prune(&repo, &["--yes"])
        .code(1)
        .stderr(predicate::str::contains("cannot tell the default branch"))
        .stderr(predicate::str::contains("ENVCTL_DEFAULT_BRANCH"));
    // A default branch that is nowhere.
    repo.envctl()
        .args(["prune", "--yes"])
        .env("ENVCTL_DEFAULT_BRANCH", "trunk")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "the default branch `trunk` is neither on `origin` nor a local branch",
        ));
    assert!(ids(&repo).contains_key("feature/a"));

    // A shallow clone of the same repository.
    repo.git(&["push", "-q", "origin", "feature/a"]);
    let (_shallow, clone) = clone_of(origin.path(), &["--depth", "1", "--no-single-branch"]);
    envctl_in(&clone, &repo.repo)
        .args(["prune", "--yes"])
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("this clone is shallow"))
        .stderr(predicate::str::contains("fetch-depth: 0"));
    assert!(ids(&repo).contains_key("feature/a"));
    // Its summary for the run's page says it refused, not that there was nothing to prune.
    envctl_in(&clone, &repo.repo)
        .args(["prune", "--yes", "--markdown"])
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "> **Refused:** this clone is shallow",
        ))
        .stdout(predicate::str::contains("**Prune refused: nothing deleted"))
        .stdout(predicate::str::contains("Nothing to prune").not());

    // The same with the full history deletes the expired one.
    repo.envctl()
        .args(["prune", "--yes"])
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .assert()
        .success()
        .stderr(predicate::str::contains("ok      feature/a ("))
        .stderr(predicate::str::contains("): deleted (ttl expired"));
    assert!(ids(&repo).is_empty());
}

#[test]
fn prune_without_origin_needs_local_branches_and_a_named_default() {
    let repo = TestRepo::new("prune-no-origin");
    repo.branch("feature/b", 1, false);
    repo.apply("feature/b");
    repo.git(&["branch", "-q", "-D", "feature/b"]);
    repo.envctl()
        .args(["prune", "--dry-run", "--json"])
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .assert()
        .success()
        .stderr(predicate::str::contains("there is no `origin` remote"))
        .stdout(predicate::str::contains(
            "branch deleted: neither on origin nor a local branch",
        ));
}

#[test]
fn a_branch_re_pushed_or_applied_between_plan_and_delete_survives() {
    let repo = TestRepo::new("prune-race");
    let _origin = repo.with_origin();
    repo.branch("feature/back", 1, true);
    repo.branch("feature/busy", 1, true);
    repo.branch("feature/gone", 1, true);
    for b in ["feature/back", "feature/busy", "feature/gone"] {
        repo.apply(b);
    }
    age_all(&repo);
    repo.fetch_as_ci();
    let before = ids(&repo);
    let tip = repo.git(&["rev-parse", "feature/back"]).trim().to_owned();
    repo.delete_branch("feature/back");
    repo.delete_branch("feature/gone");
    make_old(&before["feature/busy"]);
    // Applied long before this clone's fetch below (one applied just before a fetch is kept: its
    // branch may be newer than what the clone knows).
    make_old(&before["feature/gone"]);

    let run = on_terminal_after(
        &repo,
        "prune",
        "Continue?",
        || {
            // Someone pushes feature/back again, and this clone fetches it.
            repo.git(&[
                "push",
                "-q",
                "origin",
                &format!("{tip}:refs/heads/feature/back"),
            ]);
            repo.git(&["fetch", "-q", "origin"]);
            // A push to feature/busy applies it: its last-applied is now.
            repo.apply("feature/busy");
        },
        "y\n",
    );
    let (out, code) = (run.output, run.code);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("This deletes: delete feature/back"), "{out}");
    assert!(out.contains("kept    feature/back"), "{out}");
    assert!(out.contains("kept    feature/busy"), "{out}");
    assert!(out.contains("ok      feature/gone"), "{out}");
    assert!(
        out.contains("no reason holds any more: its branch is live"),
        "{out}"
    );
    let after: Vec<String> = ids(&repo).into_keys().collect();
    assert_eq!(after, ["feature/back", "feature/busy"]);
}

#[test]
fn prune_without_a_terminal_needs_yes_and_markdown_tells_what_happened() {
    let repo = TestRepo::new("prune-yes");
    let _origin = repo.with_origin_and_applied("feature/old");
    gone_after_a_ci_fetch(&repo, "feature/old");
    prune(&repo, &[])
        .code(1)
        .stderr(predicate::str::contains("pass `--yes`"));
    assert_eq!(ids(&repo).len(), 1);
    let done = prune(&repo, &["--yes", "--markdown", "--detailed-exitcode"]).code(2);
    let markdown = String::from_utf8_lossy(&done.get_output().stdout).into_owned();
    assert!(
        markdown.starts_with("### envctl prune for `tests/prune-yes` (local)"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| `feature/old` | preview |"),
        "{markdown}"
    );
    assert!(markdown.contains("| deleted |"), "{markdown}");
    assert!(ids(&repo).is_empty());
}

/// A tagged `{id}-creating` database of this repository, as a create leaves it once tagged.
fn tagged_leftover(repo: &TestRepo, branch: &str, created_at: &str) -> String {
    let id = repo.cluster_id(branch);
    tagged_leftover_named(repo, branch, created_at, &format!("{id}-creating"))
}

/// The same under any name.
fn tagged_leftover_named(repo: &TestRepo, branch: &str, created_at: &str, name: &str) -> String {
    let name = name.to_owned();
    let metadata = serde_json::json!({
        "envctl": 1,
        "tags": {
            "envctl:managed": "true",
            "envctl:repo": repo.repo,
            "envctl:prefix": "envctl",
            "envctl:branch": envctl::model::encode_branch_tag(branch).unwrap(),
        },
        "min_acu": 0.0, "max_acu": 4.0, "deletion_protection": false,
        "user": "postgres", "created_at": created_at,
    });
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{name}\""));
    admin_sql(&format!("CREATE DATABASE \"{name}\""));
    set_comment(&name, &metadata.to_string());
    name
}

#[test]
fn leftovers_of_interrupted_creates_go_once_older_than_the_wait_timeout() {
    let repo = TestRepo::new("prune-leftovers");
    let _origin = repo.with_origin();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let young = tagged_leftover(&repo, "feature/young", &now);
    let old = tagged_leftover(&repo, "feature/old", "2026-01-01T00:00:00Z");
    // Tagged for a branch, but not named after its id: kept, and said why.
    let stray = tagged_leftover_named(
        &repo,
        "feature/stray",
        "2026-01-01T00:00:00Z",
        "envctl-zzz-00000000-creating",
    );
    let plan = json_of(&prune(&repo, &["--dry-run", "--json"]).success());
    assert_eq!(
        deletions(&plan),
        [(
            "feature/old".to_owned(),
            "leftover of an interrupted create".to_owned()
        )]
    );
    assert_eq!(plan["actions"][0]["cluster_id"], old.as_str());
    let kept_because = |id: &str| {
        plan["kept"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["cluster_id"] == id)
            .map(|k| k["kept_because"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{id} kept: {plan:#}"))
    };
    assert!(
        kept_because(&stray).contains("its name is not the id envctl derives for `feature/stray`")
    );
    let why = kept_because(&young);
    assert!(
        why.contains("less than --wait-timeout 15m: a create may still be at work"),
        "{why}"
    );
    prune(&repo, &["--yes"]).success();
    let left = admin_sql(&format!(
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname IN ('{young}', '{old}')"
    ));
    assert_eq!(left.trim(), young);
    // A shorter wait timeout lets it go too.
    std::thread::sleep(Duration::from_secs(2));
    prune(&repo, &["--yes", "--wait-timeout", "1s"]).success();
    assert_eq!(
        database_count(&young),
        "0",
        "gone once older than the wait timeout"
    );
    admin_sql(&format!("DROP DATABASE \"{stray}\""));
}

/// envctl in `repo` without `--repo`: the repository name comes from the environment or git.
fn envctl_without_repo(repo: &TestRepo) -> assert_cmd::Command {
    let mut cmd = support::envctl_at(repo.path());
    cmd.env("ENVCTL_LOCAL_URL", support::server_url());
    assert_cmd::Command::from_std(cmd)
}

#[test]
fn the_branch_and_the_repository_are_found_as_checkouts_and_github_leave_them() {
    let repo = TestRepo::new("discovery");
    let plan_of = |cmd: &mut assert_cmd::Command| -> serde_json::Value {
        let out = cmd.args(["plan", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // A normal checkout: the working tree's branch.
    repo.git(&["checkout", "-q", "-b", "feature/normal"]);
    assert_eq!(plan_of(&mut repo.envctl())["scope"][0], "feature/normal");
    // actions/checkout of a pull request: detached at the merge commit, the branch in
    // GITHUB_HEAD_REF (GITHUB_REF_NAME is `12/merge`).
    repo.git(&["checkout", "-q", "--detach"]);
    let pull_request = plan_of(
        repo.envctl()
            .env("GITHUB_HEAD_REF", "feature/pr")
            .env("GITHUB_REF_NAME", "12/merge")
            .env("GITHUB_REF", "refs/pull/12/merge"),
    );
    assert_eq!(pull_request["scope"][0], "feature/pr");
    // A branch push: detached, GITHUB_HEAD_REF empty, GITHUB_REF_NAME the branch.
    let push = plan_of(
        repo.envctl()
            .env("GITHUB_HEAD_REF", "")
            .env("GITHUB_REF_NAME", "feature/push")
            .env("GITHUB_REF", "refs/heads/feature/push")
            .env("GITHUB_REF_TYPE", "branch"),
    );
    assert_eq!(push["scope"][0], "feature/push");

    // The repository from `origin`'s URL, in every form a clone can have.
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["remote", "add", "origin", "git@github.com:Acme/Shop.git"]);
    for url in [
        "git@github.com:Acme/Shop.git",
        "git@github.com:Acme/Shop",
        "https://github.com/Acme/Shop.git",
        "https://github.com/Acme/Shop",
        "https://x-access-token:ghs_secret@github.com/Acme/Shop.git",
        "ssh://git@github.com/Acme/Shop.git",
        "ssh://git@github.com:22/Acme/Shop",
    ] {
        repo.git(&["remote", "set-url", "origin", url]);
        let plan = plan_of(&mut envctl_without_repo(&repo));
        assert_eq!(plan["repo"], "acme/shop", "{url}");
    }
    // GITHUB_REPOSITORY wins over the remote in GitHub Actions.
    let plan = plan_of(envctl_without_repo(&repo).env("GITHUB_REPOSITORY", "Acme/Other"));
    assert_eq!(plan["repo"], "acme/other");
}

const INIT_FILES: [&str; 6] = [
    ".github/workflows/envctl.yml",
    ".github/dependabot.yml",
    "environments/preview.yaml",
    "schemas/migrations/0001_init.sql",
    "schemas/seeds/dev.sql",
    "schemas/environment.schema.json",
];

#[test]
fn init_scaffolds_a_repository_that_validates_plans_and_applies() {
    let dir = tempfile::tempdir().unwrap();
    git_ok(dir.path(), &["init", "-q", "-b", "main"]);
    git_ok(
        dir.path(),
        &[
            "remote",
            "add",
            "origin",
            "git@github.com:Acme/Init-Demo.git",
        ],
    );
    let repo = "tests/init-demo";
    support::drop_environments_of(repo);
    let made = envctl_in(dir.path(), repo).arg("init").assert().success();
    let err = String::from_utf8_lossy(&made.get_output().stderr).into_owned();
    for file in INIT_FILES {
        assert!(dir.path().join(file).is_file(), "{file}");
        assert!(err.contains(file), "listed: {file}\n{err}");
    }
    // The next steps: try it here, the OIDC provider, two roles each trusted for its own events
    // of this repository as GitHub spells it, their permissions, the variables, doctor.
    for step in [
        "envctl validate && envctl plan && envctl apply",
        "aws iam create-open-id-connect-provider",
        "`sub` \"repo:tests/init-demo:pull_request\"",
        "`sub` \"repo:tests/init-demo:ref:refs/heads/*\"",
        "envctl iam-policy --role plan --trust --account ACCOUNT_ID > plan-trust.json",
        "envctl iam-policy --role apply --trust --account ACCOUNT_ID > apply-trust.json",
        "envctl iam-policy --role plan --account ACCOUNT_ID --region us-east-1 > plan.json",
        "envctl iam-policy --role apply --account ACCOUNT_ID --region us-east-1 > apply.json",
        "aws iam put-role-policy --role-name envctl-plan --policy-name envctl --policy-document file://plan.json",
        "aws iam put-role-policy --role-name envctl-apply --policy-name envctl --policy-document file://apply.json",
        "gh variable set ENVCTL_AWS_PLAN_ROLE_ARN --body arn:aws:iam::ACCOUNT_ID:role/envctl-plan",
        "gh variable set ENVCTL_AWS_ROLE_ARN --body arn:aws:iam::ACCOUNT_ID:role/envctl-apply",
        "envctl doctor --provider aws",
    ] {
        assert!(err.contains(step), "{step}\n{err}");
    }
    // The trust policies the steps print are for those `sub` values.
    for (role, sub) in [
        ("plan", "repo:tests/init-demo:pull_request"),
        ("apply", "repo:tests/init-demo:ref:refs/heads/*"),
    ] {
        let trust = envctl_in(dir.path(), repo)
            .args([
                "iam-policy",
                "--role",
                role,
                "--trust",
                "--account",
                "123456789012",
            ])
            .assert()
            .success();
        let trust = json_of(&trust);
        let condition = &trust["Statement"][0]["Condition"];
        let operator = if role == "plan" {
            "StringEquals"
        } else {
            "StringLike"
        };
        assert_eq!(
            condition[operator]["token.actions.githubusercontent.com:sub"], sub,
            "{trust}"
        );
    }
    // Dependabot keeps the workflow's pinned actions current; the starter spec leaves bot
    // branches without a database.
    let dependabot = std::fs::read_to_string(dir.path().join(".github/dependabot.yml")).unwrap();
    assert_eq!(
        dependabot,
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/dependabot.yml")
        )
        .unwrap()
    );
    let config: serde_json::Value = serde_norway::from_str(&dependabot).unwrap();
    assert_eq!(config["version"], 2);
    assert_eq!(config["updates"][0]["package-ecosystem"], "github-actions");
    assert_eq!(config["updates"][0]["directory"], "/");
    let spec = std::fs::read_to_string(dir.path().join("environments/preview.yaml")).unwrap();
    assert!(
        spec.contains("branches: [\"**\", \"!dependabot/**\", \"!renovate/**\"]"),
        "{spec}"
    );
    for (branch, covered) in [
        ("feature/login", true),
        ("dependabot/github_actions/actions/checkout-4.3.0", false),
        ("renovate/tokio-1.x", false),
    ] {
        let plan = envctl_in(dir.path(), repo)
            .args(["plan", "--json", "--branch", branch])
            .assert()
            .success();
        let actions = json_of(&plan)["actions"].as_array().unwrap().len();
        assert_eq!(actions > 0, covered, "{branch}");
    }
    envctl_in(dir.path(), repo)
        .arg("validate")
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "ok: 1 environment file, 1 migration, 1 seed file",
        ));
    let plan = envctl_in(dir.path(), repo)
        .args(["plan", "--json"])
        .assert()
        .success();
    let plan = json_of(&plan);
    let types: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["create", "migrate", "seed"]);
    envctl_in(dir.path(), repo)
        .args(["apply"])
        .assert()
        .success();
    let rows = envctl_in(dir.path(), repo)
        .args([
            "exec",
            "--",
            "psql",
            "-Atc",
            "SELECT name FROM items ORDER BY id",
        ])
        .assert()
        .success();
    assert_eq!(
        String::from_utf8_lossy(&rows.get_output().stdout),
        "first item\nsecond item\n"
    );
    // The JSON Schema it wrote is the one envctl prints.
    let schema = envctl_in(dir.path(), repo).arg("schema").assert().success();
    assert_eq!(
        std::fs::read(dir.path().join("schemas/environment.schema.json")).unwrap(),
        schema.get_output().stdout
    );

    // Again: nothing is overwritten, nothing is written.
    std::fs::remove_file(dir.path().join("schemas/seeds/dev.sql")).unwrap();
    envctl_in(dir.path(), repo)
        .arg("init")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("`environments/preview.yaml`"))
        .stderr(predicate::str::contains("already exist"))
        .stderr(predicate::str::contains("nothing was written"))
        .stderr(predicate::str::contains("--force"));
    assert!(!dir.path().join("schemas/seeds/dev.sql").exists());
    // --force writes them all.
    envctl_in(dir.path(), repo)
        .args(["init", "--force"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "environments/preview.yaml (replaced)",
        ));
    assert!(dir.path().join("schemas/seeds/dev.sql").is_file());
    // A starter file edited since is the repository's own: even --force leaves it, and writes
    // no starter beside it.
    std::fs::write(dir.path().join("environments/preview.yaml"), "# mine\n").unwrap();
    envctl_in(dir.path(), repo)
        .args(["init", "--force"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "kept the specs and migrations already here (environments/preview.yaml)",
        ));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("environments/preview.yaml")).unwrap(),
        "# mine\n"
    );
    std::fs::write(dir.path().join("environments/preview.yaml"), "").unwrap();
    std::fs::remove_file(dir.path().join("environments/preview.yaml")).unwrap();
    envctl_in(dir.path(), repo)
        .args(["init", "--force"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            ".github/dependabot.yml (replaced)",
        ));
    // A Dependabot config of the repository's own is never replaced, not even by --force; init
    // says what to add when it does not update actions.
    for (path, text, said) in [
        (
            ".github/dependabot.yml",
            "version: 2\nupdates:\n  - package-ecosystem: cargo\n    directory: /\n    schedule: { interval: daily }\n",
            "and kept `.github/dependabot.yml`: add the workflow's pinned actions to its `updates` (`- package-ecosystem: github-actions`",
        ),
        (
            ".github/dependabot.yml",
            "version: 2\nupdates:\n  - package-ecosystem: github-actions\n    directory: /\n    schedule: { interval: monthly }\n",
            "and kept `.github/dependabot.yml`, which updates the workflow's pinned actions already",
        ),
        (
            ".github/dependabot.yaml",
            "version: 2\nupdates: []\n",
            "and kept `.github/dependabot.yaml`: add",
        ),
    ] {
        let _ = std::fs::remove_file(dir.path().join(".github/dependabot.yml"));
        std::fs::write(dir.path().join(path), text).unwrap();
        let made = envctl_in(dir.path(), repo)
            .args(["init", "--force"])
            .assert()
            .success();
        let err = String::from_utf8_lossy(&made.get_output().stderr).into_owned();
        assert!(err.contains(said), "{path}: {err}");
        assert!(
            !err.contains("  .github/dependabot.yml"),
            "not written: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(path)).unwrap(),
            text
        );
        std::fs::remove_file(dir.path().join(path)).unwrap();
    }
    assert!(!dir.path().join(".github/dependabot.yml").exists());
    envctl_in(dir.path(), repo)
        .args(["destroy", "--branch", "main", "--yes"])
        .assert()
        .success();
}

#[test]
fn init_refuses_a_bare_repository_and_keeps_specs_already_there() {
    let bare = tempfile::tempdir().unwrap();
    git_ok(bare.path(), &["init", "-q", "--bare"]);
    envctl_in(bare.path(), "tests/init-bare")
        .arg("init")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is a bare git repository"));
    assert!(!bare.path().join("environments").exists());

    // A repository with specs and migrations of its own gets the workflow and the schema only.
    let repo = TestRepo::new("init-existing");
    envctl_in(repo.path(), &repo.repo)
        .args(["init", "--force"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "kept the specs and migrations already here (environments/main.yaml and 4 more)",
        ));
    assert!(repo.path().join(".github/workflows/envctl.yml").is_file());
    assert!(
        !repo
            .path()
            .join("schemas/migrations/0001_init.sql")
            .exists()
    );
    assert!(!repo.path().join("schemas/seeds/dev.sql").exists());
    envctl_in(repo.path(), &repo.repo)
        .arg("validate")
        .assert()
        .success();
}

#[test]
fn init_never_writes_through_a_symbolic_link() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim.yaml");
    std::fs::write(&target, "untouched\n").unwrap();
    std::fs::create_dir(dir.path().join("environments")).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("environments/preview.yaml")).unwrap();
    // A linked spec is the repository's own: init leaves it and writes no starter beside it.
    envctl_in(dir.path(), "tests/init-link")
        .arg("init")
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "kept the specs and migrations already here (environments/preview.yaml)",
        ));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched\n");
    // Where init writes, a link is refused, with --force too.
    std::fs::remove_dir_all(dir.path().join(".github")).unwrap();
    std::fs::remove_file(dir.path().join("schemas/environment.schema.json")).unwrap();
    std::fs::create_dir(dir.path().join(".github")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join(".github/workflows")).unwrap();
    for args in [&["init"][..], &["init", "--force"][..]] {
        envctl_in(dir.path(), "tests/init-link")
            .args(args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains(
                "`.github/workflows` is a symbolic link",
            ))
            .stderr(predicate::str::contains("nothing was written"));
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    assert!(!dir.path().join("schemas/environment.schema.json").exists());
    std::fs::remove_file(dir.path().join(".github/workflows")).unwrap();
    // A linked directory on the way is refused as well.
    std::fs::remove_file(dir.path().join("environments/preview.yaml")).unwrap();
    std::fs::remove_dir(dir.path().join("environments")).unwrap();
    std::fs::remove_dir_all(dir.path().join("schemas")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("schemas")).unwrap();
    envctl_in(dir.path(), "tests/init-link")
        .args(["init", "--force"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("`schemas` is a symbolic link"));
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
}

#[test]
fn prune_fails_closed_on_clones_that_cannot_see_every_branch_or_are_of_another_repository() {
    let repo = TestRepo::new("prune-clones");
    let origin = repo.with_origin_and_applied("feature/c");
    let in_clone = |flags: &[&str]| {
        let (_dir, clone) = clone_of(origin.path(), flags);
        let assert = envctl_in(&clone, &repo.repo)
            .args(["prune", "--yes"])
            .env("ENVCTL_DEFAULT_BRANCH", "main")
            .assert();
        let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        (assert.get_output().status.code(), err)
    };
    // What a default checkout makes: shallow, the one branch. Its environment's branch is not
    // there, so no ancestry is needed, and still nothing goes.
    let (code, err) = in_clone(&["--depth", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("this clone is shallow"), "{err}");
    // Single-branch, full history: a missing branch proves nothing either.
    let (code, err) = in_clone(&["--single-branch"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("does not fetch every branch of `origin`"),
        "{err}"
    );
    assert!(ids(&repo).contains_key("feature/c"));

    // A clone whose origin is another repository (a fork holding only main).
    repo.git(&[
        "remote",
        "set-url",
        "origin",
        "https://github.com/someone/fork.git",
    ]);
    prune(&repo, &["--yes"])
        .code(1)
        .stderr(predicate::str::contains(
            "`origin` is `someone/fork`, but the environments are `tests/prune-clones`'s",
        ));
    // The same behind a mirror (`insteadOf` rewrites the URL git fetches from), with two URLs
    // (the one libgit2 reports last is ours), through a one-letter ssh alias, or one that names
    // no OWNER/NAME.
    let mirror = format!("url.{}.insteadOf", origin.path().display());
    repo.git(&["config", &mirror, "https://github.com/someone/fork.git"]);
    prune(&repo, &["--yes"])
        .code(1)
        .stderr(predicate::str::contains("`origin` is `someone/fork`"));
    repo.git(&["config", "--unset", &mirror]);
    repo.git(&[
        "config",
        "--add",
        "remote.origin.url",
        "https://github.com/tests/prune-clones.git",
    ]);
    prune(&repo, &["--yes"])
        .code(1)
        .stderr(predicate::str::contains("`origin` is `someone/fork`"));
    for url in ["g:someone/fork", "git@example.com:fork.git"] {
        repo.git(&["config", "--unset-all", "remote.origin.url"]);
        repo.git(&["config", "remote.origin.url", url]);
        let assert = prune(&repo, &["--yes", "--json"]).code(1);
        let report = json_of(&assert);
        assert!(
            report["refused"]["message"]
                .as_str()
                .unwrap()
                .contains("`origin`"),
            "{url}: {report:#}"
        );
        assert_eq!(report["default_branch"], serde_json::Value::Null);
    }
    // Ours as written, but `insteadOf` sends the fetches to a fork: what is fetched counts too.
    repo.git(&["config", "--unset-all", "remote.origin.url"]);
    repo.git(&[
        "config",
        "remote.origin.url",
        "https://github.com/tests/prune-clones.git",
    ]);
    repo.git(&[
        "config",
        "url.https://github.com/someone/fork.git.insteadOf",
        "https://github.com/tests/prune-clones.git",
    ]);
    prune(&repo, &["--yes"])
        .code(1)
        .stderr(predicate::str::contains("`origin` is `someone/fork`"));
    assert!(ids(&repo).contains_key("feature/c"));
}

#[test]
fn prune_fails_closed_in_a_worktree_of_a_shallow_clone_and_with_negative_refspecs() {
    let repo = TestRepo::new("prune-refspecs");
    let origin = repo.with_origin_and_applied("feature/x");
    age_all(&repo);
    let url = file_url(origin.path());
    let dir = tempfile::tempdir().unwrap();
    // A shallow clone, and a worktree of it: the `shallow` file is the main repository's.
    git_ok(dir.path(), &["clone", "-q", "--depth", "1", &url, "c"]);
    git_ok(
        &dir.path().join("c"),
        &["worktree", "add", "-q", "../wt", "-b", "wt"],
    );
    envctl_in(&dir.path().join("wt"), &repo.repo)
        .args(["prune", "--yes"])
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("this clone is shallow"));
    // Every branch fetched, but some left out by a negative refspec.
    git_ok(
        dir.path(),
        &[
            "clone",
            "-q",
            "-c",
            "remote.origin.fetch=^refs/heads/feature/*",
            &url,
            "n",
        ],
    );
    envctl_in(&dir.path().join("n"), &repo.repo)
        .args(["prune", "--yes"])
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "does not fetch every branch of `origin`",
        ));
    assert!(ids(&repo).contains_key("feature/x"));
}

#[test]
fn what_was_applied_after_this_clone_last_fetched_is_kept() {
    let repo = TestRepo::new("prune-stale");
    let origin = repo.with_origin();
    // A colleague's clone, fetched now.
    let (_stale, clone) = clone_of(origin.path(), &[]);
    git_ok(&clone, &["fetch", "-q", "origin"]);
    std::thread::sleep(Duration::from_millis(1100));
    // Later, a new branch is pushed and applied; the stale clone has never seen it.
    repo.branch("feature/new", 1, true);
    repo.apply("feature/new");
    let plan = prune_plan_in(&clone, &repo);
    assert_eq!(deletions(&plan), []);
    let why = plan["kept"][0]["kept_because"].as_str().unwrap();
    assert!(why.contains("prune from a fresh clone"), "{plan:#}");
    // A fetch that failed, or one of another remote, teaches the clone nothing.
    let good_url = file_url(origin.path());
    git_ok(
        &clone,
        &["remote", "set-url", "origin", "/nonexistent/origin.git"],
    );
    let failed = git(&clone, &["fetch", "-q", "origin"]);
    assert!(!failed.status.success());
    git_ok(&clone, &["remote", "set-url", "origin", &good_url]);
    let plan = prune_plan_in(&clone, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");
    // Once it fetched, the branch is live.
    git_ok(&clone, &["fetch", "-q", "origin"]);
    let plan = prune_plan_in(&clone, &repo);
    assert_eq!(deletions(&plan), []);
    assert_eq!(plan["kept"], serde_json::json!([]));
}

/// A push, or a fetch of one branch, moves a ref under `refs/remotes/origin` too, but teaches the
/// clone nothing of the other branches: only a clone or a fetch of every branch says when the
/// clone last learned origin's branches.
#[test]
fn a_push_or_a_fetch_of_one_branch_is_not_a_fetch_of_every_branch() {
    let repo = TestRepo::new("prune-fetch-kind");
    let origin = repo.with_origin();
    let url = file_url(origin.path());
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("r");
    // The clone learned origin's branches an hour ago.
    let cloned = git_dated(dir.path(), &["clone", "-q", &url, "r"], unix_time(-3600));
    assert!(cloned.status.success(), "{cloned:?}");
    // A colleague pushes a branch and CI applies it ten minutes ago.
    repo.branch("feature/new", 1, true);
    repo.apply("feature/new");
    age_all(&repo);
    // Now the clone pushes a branch of its own: `update by push`, not a fetch.
    git_ok(&clone, &["checkout", "-q", "-b", "mine"]);
    git_ok(&clone, &["commit", "-q", "--allow-empty", "-m", "mine"]);
    git_ok(&clone, &["push", "-q", "origin", "mine"]);
    let plan = prune_plan_in(&clone, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");
    assert_eq!(
        pairs(&plan["kept"], "branch", "type"),
        [("feature/new".to_owned(), "keep".to_owned())]
    );
    // A fetch of one branch is not one of every branch either.
    repo.git(&["commit", "-q", "--allow-empty", "-m", "more"]);
    repo.git(&["push", "-q", "origin", "main"]);
    git_ok(&clone, &["fetch", "-q", "origin", "main"]);
    let plan = prune_plan_in(&clone, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");
    // Once the branch is deleted and the clone fetches every branch, it goes. (A fetch that
    // changes no ref writes no reflog entry: something moves on origin here, as in a fresh
    // checkout every ref is new.)
    repo.delete_branch("feature/new");
    repo.git(&["commit", "-q", "--allow-empty", "-m", "more still"]);
    repo.git(&["push", "-q", "origin", "main"]);
    git_ok(&clone, &["fetch", "-q", "--prune", "origin"]);
    let plan = prune_plan_in(&clone, &repo);
    assert_eq!(
        deletions(&plan),
        [(
            "feature/new".to_owned(),
            "branch deleted: neither on origin nor a local branch".to_owned()
        )],
        "{plan:#}"
    );
}

/// What the reflogs cannot vouch for deletes nothing: a branch a fetch could not store (a stale
/// `origin/fix` keeps `fix/x` out), a fetch dated in the future, a clone of another repository
/// whose `origin` was pointed here afterwards.
#[test]
fn prune_trusts_no_fetch_the_clone_cannot_vouch_for() {
    let repo = TestRepo::new("prune-vouch");
    let origin = repo.with_origin();
    let url = file_url(origin.path());
    repo.branch("feature/a", 1, true);
    repo.branch("fix", 1, true);
    repo.apply("feature/a");
    let dir = tempfile::tempdir().unwrap();
    let (c1, c2) = (dir.path().join("c1"), dir.path().join("c2"));
    assert!(
        git(dir.path(), &["clone", "-q", &url, "c1"])
            .status
            .success()
    );
    let move_main = || {
        repo.git(&["commit", "-q", "--allow-empty", "-m", "move"]);
        repo.git(&["push", "-q", "origin", "main"]);
    };
    // `fix` goes and `fix/x` comes; the clone's stale `origin/fix` makes its fetch fail for it.
    repo.delete_branch("fix");
    repo.branch("fix/x", 1, true);
    repo.apply("fix/x");
    age_all(&repo);
    move_main();
    let fetch = git(&c1, &["fetch", "-q", "origin"]);
    assert!(!fetch.status.success(), "{fetch:?}");
    let plan = prune_plan_in(&c1, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");

    // A fetch dated an hour ahead says nothing of a branch applied and deleted since.
    assert!(
        git(&c1, &["update-ref", "-d", "refs/remotes/origin/fix"])
            .status
            .success()
    );
    move_main();
    assert!(
        git_dated(&c1, &["fetch", "-q", "origin"], unix_time(3600))
            .status
            .success()
    );
    repo.branch("feature/late", 1, true);
    repo.apply("feature/late");
    repo.delete_branch("feature/late");
    let plan = prune_plan_in(&c1, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");

    // A clone of a fork without `feature/a`, pointed at origin afterwards.
    let fork = dir.path().join("fork.git");
    assert!(
        git(dir.path(), &["clone", "-q", "--bare", &url, "fork.git"])
            .status
            .success()
    );
    assert!(git(&fork, &["branch", "-D", "feature/a"]).status.success());
    assert!(
        git(dir.path(), &["clone", "-q", fork.to_str().unwrap(), "c2"])
            .status
            .success()
    );
    assert!(
        git(&c2, &["remote", "set-url", "origin", &url])
            .status
            .success()
    );
    // (A minute after the clone, as a person would.)
    let config = dir.path().join("c2/.git/config");
    let later = std::time::SystemTime::now() + Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&config)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let plan = prune_plan_in(&c2, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");
    assert!(ids(&repo).contains_key("feature/a"));
}

#[test]
fn branches_without_commits_of_their_own_are_never_taken_for_merged() {
    let repo = TestRepo::new("prune-bases");
    let _origin = repo.with_origin();
    // A long-lived branch moved along main, applied after each move (a push of it).
    repo.branch("feature/staging", 0, true);
    repo.apply("feature/staging");
    repo.write("notes/main-1.txt", "main moves\n");
    repo.commit("main moves");
    repo.git(&["push", "-q", "origin", "main"]);
    repo.git(&["checkout", "-q", "feature/staging"]);
    repo.git(&["merge", "-q", "--ff-only", "main"]);
    repo.git(&["push", "-q", "origin", "feature/staging"]);
    repo.git(&["checkout", "-q", "main"]);
    repo.apply("feature/staging");
    // Main ahead of origin/main here (an unpushed commit); a branch cut from it on a laptop.
    repo.write("notes/main-2.txt", "local work\n");
    repo.commit("local work on main");
    repo.git(&["checkout", "-q", "-b", "feature/cut"]);
    repo.envctl().args(["apply", "--yes"]).assert().success();
    repo.git(&["checkout", "-q", "main"]);
    // A branch that was checked out, applied, and has no first commit yet.
    repo.git(&["checkout", "-q", "--orphan", "feature/orphan"]);
    repo.envctl().args(["apply", "--yes"]).assert().success();
    let plan = json_of(&prune(&repo, &["--dry-run", "--json", "--detailed-exitcode"]).success());
    assert_eq!(deletions(&plan), [], "{plan:#}");
    assert_eq!(ids(&repo).len(), 3);
}

#[test]
fn an_apply_at_work_is_never_pruned_for_an_old_ttl() {
    let repo = TestRepo::new("prune-apply-race");
    let _origin = repo.with_origin_and_applied("feature/slow");
    let id = ids(&repo)["feature/slow"].clone();
    make_old(&id);
    // The next push brings a slow migration.
    repo.git(&["checkout", "-q", "feature/slow"]);
    repo.write(
        "schemas/migrations/0004_slow.sql",
        "SELECT pg_sleep(4);\nCREATE TABLE dummy.slow (id int);\n",
    );
    repo.commit("a slow migration");
    repo.git(&["push", "-q", "origin", "feature/slow"]);
    repo.git(&["checkout", "-q", "main"]);
    let apply = repo
        .process(&["apply", "--branch", "feature/slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it migrates, then prune: the ttl counts from this apply now.
    let start = Instant::now();
    while admin_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{id}' AND query LIKE '%pg_sleep%' AND state = 'active'"
    ))
    .trim()
        == "0"
    {
        assert!(start.elapsed() < Duration::from_secs(30), "the migration never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let plan = json_of(&prune(&repo, &["--yes", "--json"]).success());
    assert_eq!(deletions(&plan), [], "{plan:#}");
    let out = apply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(repo.applied_versions("feature/slow"), "1,2,3,4");
}

#[test]
fn a_refused_prune_still_tells_its_plan_in_json_markdown_and_github_annotations() {
    let repo = TestRepo::new("prune-refused");
    let _origin = repo.with_origin_and_applied("feature/r1");
    gone_after_a_ci_fetch(&repo, "feature/r1");
    let markdown = prune(&repo, &["--yes", "--markdown", "--max-deletions", "0"])
        .code(1)
        .get_output()
        .stdout
        .clone();
    let markdown = String::from_utf8(markdown).unwrap();
    assert!(
        markdown.contains("> **Refused:** prune would delete 1 environment"),
        "{markdown}"
    );
    assert!(markdown.contains("| `feature/r1` |"), "{markdown}");
    assert!(markdown.contains("| not deleted |"), "{markdown}");
    assert!(
        markdown.contains("**Prune refused: nothing deleted (1 would have been, 0 kept).**"),
        "{markdown}"
    );
    let json = json_of(
        &repo
            .envctl()
            .args(["prune", "--yes", "--json", "--max-deletions", "0"])
            .env("GITHUB_ACTIONS", "true")
            .assert()
            .code(1)
            .stderr(predicate::str::contains(
                "::error title=envctl::prune would delete 1 environment",
            )),
    );
    assert_eq!(json["dry_run"], false);
    assert_eq!(json["summary"]["delete"], 1);
    assert!(
        json["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("more than `--max-deletions` 0"),
        "{json:#}"
    );
    // Without a terminal and without --yes: the same, saying how to go on.
    let json = json_of(&prune(&repo, &["--json"]).code(1));
    assert!(
        json["refused"]["hint"].as_str().unwrap().contains("--yes"),
        "{json:#}"
    );
    assert_eq!(ids(&repo).len(), 1);
}

#[test]
fn prune_fails_closed_on_a_broken_ref_and_keeps_its_exit_code_when_stdout_closes() {
    let repo = TestRepo::new("prune-broken-ref");
    let _origin = repo.with_origin_and_applied("feature/a");
    // Truncated by a crash: git's own listing skips it with a warning.
    let r#ref = repo.path().join(".git/refs/remotes/origin/feature/a");
    let saved = std::fs::read(&r#ref).unwrap();
    std::fs::write(&r#ref, "").unwrap();
    prune(&repo, &["--yes"])
        .code(1)
        .stderr(predicate::str::contains("refs/remotes/origin/feature/a"))
        .stderr(predicate::str::contains("nothing was deleted"));
    assert!(ids(&repo).contains_key("feature/a"));
    std::fs::write(&r#ref, saved).unwrap();

    // Over the limit with stdout's reader gone: still exit 1.
    gone_after_a_ci_fetch(&repo, "feature/a");
    let mut child = repo
        .process(&["prune", "--dry-run", "--json", "--max-deletions", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(ids(&repo).contains_key("feature/a"));
}

#[test]
fn a_submodule_for_environments_is_refused_from_disk_and_from_git_alike() {
    let repo = TestRepo::new("prune-submodule");
    let origin = repo.with_origin_and_applied("feature/s");
    // The specs move into a submodule.
    let specs = tempfile::tempdir().unwrap();
    git_ok(specs.path(), &["init", "-q", "-b", "main"]);
    std::fs::copy(
        repo.path().join("environments/preview.yaml"),
        specs.path().join("preview.yaml"),
    )
    .unwrap();
    std::fs::copy(
        repo.path().join("environments/main.yaml"),
        specs.path().join("main.yaml"),
    )
    .unwrap();
    git_ok(specs.path(), &["add", "-A"]);
    git_ok(specs.path(), &["commit", "-qm", "specs"]);
    repo.git(&["checkout", "-q", "feature/s"]);
    repo.git(&["rm", "-rq", "environments"]);
    repo.git(&[
        "submodule",
        "add",
        "-q",
        specs.path().to_str().unwrap(),
        "environments",
    ]);
    repo.git(&["commit", "-qm", "specs in a submodule"]);
    repo.git(&["push", "-q", "origin", "feature/s"]);
    repo.envctl()
        .arg("validate")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "environments:1:1: the directory is a git submodule",
        ));
    // Applied ten minutes ago: well within its ttl, and before the clone below fetched.
    applied_ten_minutes_ago(&ids(&repo)["feature/s"]);
    // A clone reads the branch from git: its tree holds a commit where the specs were, and
    // cannot say what it wants. Kept, not "no spec covers the branch".
    let (_dir, clone) = clone_of(origin.path(), &[]);
    let plan = json_of(
        &envctl_in(&clone, &repo.repo)
            .args(["prune", "--dry-run", "--json"])
            .assert()
            .success(),
    );
    assert_eq!(deletions(&plan), [], "{plan:#}");
}

/// Commits everything in `dir` with its committer date `offset` seconds from now.
fn commit_dated(dir: &std::path::Path, message: &str, offset: i64) {
    git_ok(dir, &["add", "-A"]);
    let out = git_dated(dir, &["commit", "-q", "-m", message], unix_time(offset));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_apply_from_an_older_view_of_a_branch_never_takes_its_environment_back() {
    let repo = TestRepo::new("stale-view");
    let _origin = repo.with_origin();
    let work = repo.path();
    // `feature/late` at 0004, pushed; a clone made then sees it there for good.
    repo.git(&["checkout", "-q", "-b", "feature/late", "main"]);
    repo.write(
        "schemas/migrations/0004_t4.sql",
        "CREATE TABLE dummy.t4 (n int);\n",
    );
    commit_dated(work, "t4", -300);
    let t4 = repo.git(&["rev-parse", "HEAD"]).trim().to_owned();
    repo.git(&["push", "-q", "-u", "origin", "feature/late"]);
    // `feature/spec` whose first commit drops the previews' spec; a later one brings it back.
    repo.git(&["checkout", "-q", "-b", "feature/spec", "main"]);
    repo.remove("environments/preview.yaml");
    commit_dated(work, "no previews", -300);
    repo.git(&["push", "-q", "-u", "origin", "feature/spec"]);
    let origin_path = repo.git(&["remote", "get-url", "origin"]);
    let (_dir, stale) = clone_of(std::path::Path::new(origin_path.trim()), &[]);
    // Then both move on, are pushed, and are applied from the newer commits.
    repo.git(&["checkout", "-q", "feature/late"]);
    repo.write(
        "schemas/migrations/0005_t5.sql",
        "CREATE TABLE dummy.t5 (n int);\n",
    );
    commit_dated(work, "t5", -120);
    repo.git(&["push", "-q", "origin", "feature/late"]);
    repo.git(&["checkout", "-q", "feature/spec"]);
    repo.git(&["checkout", "main", "--", "environments/preview.yaml"]);
    commit_dated(work, "previews again", -120);
    repo.git(&["push", "-q", "origin", "feature/spec"]);
    repo.git(&["checkout", "-q", "main"]);
    repo.apply("feature/late");
    repo.apply("feature/spec");
    repo.sql("feature/late", "INSERT INTO dummy.t5 VALUES (12345)");
    let late = repo.cluster_id("feature/late");
    let newer = repo.git(&["rev-parse", "feature/late"]);
    let recorded = support::tags_of(late.as_str())["envctl:commit"].clone();
    assert!(
        recorded
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{}@", newer.trim()))),
        "{recorded}"
    );
    // The stale clone's apply would reset `feature/late` to 0004 and delete `feature/spec`'s
    // environment: both are blocked, with the two commits.
    let applied = support::envctl_in(&stale, &repo.repo)
        .args(["apply", "--all", "--yes"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(applied.status.code(), Some(1), "{said}");
    assert!(said.contains("would reset it from an older view"), "{said}");
    assert!(
        said.contains("would delete it from an older view"),
        "{said}"
    );
    assert!(said.contains(&newer.trim()[..12]), "{said}");
    assert_eq!(repo.sql("feature/late", "SELECT n FROM dummy.t5"), "12345");
    assert!(
        repo.database_names()
            .contains(&repo.cluster_id("feature/spec").to_string())
    );
    // A blocked environment's plan holds nothing else (no migrations or seeds after a reset that
    // does not run); a reset asked for by name is not held to the newer commit.
    let stale_plan = |extra: &[&str]| {
        let out = support::envctl_in(&stale, &repo.repo)
            .args(["plan", "--branch", "feature/late", "--json"])
            .args(extra)
            .output()
            .unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["type"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(stale_plan(&[]), ["blocked"]);
    assert_eq!(stale_plan(&["--reset"]), ["reset", "migrate", "seed"]);
    // The record stays the newer commit's, so the stale view is told apart again.
    assert_eq!(
        support::tags_of(late.as_str())["envctl:commit"],
        recorded,
        "{said}"
    );
    // Once it has fetched, the same clone plans nothing of the sort.
    git_ok(&stale, &["fetch", "-q", "origin"]);
    support::envctl_in(&stale, &repo.repo)
        .args(["plan", "--all", "--detailed-exitcode"])
        .assert()
        .code(0);
    // A commit of one's own, made now, on top of the older state (ahead of one, behind the
    // other): it does not contain what `origin`'s branch has, and is blocked too.
    git_ok(&stale, &["checkout", "-q", "-B", "feature/late", &t4]);
    std::fs::write(stale.join("notes.txt"), "mine\n").unwrap();
    commit_dated(&stale, "a commit of my own", 0);
    let out = support::envctl_in(&stale, &repo.repo)
        .args(["plan", "--branch", "feature/late"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("would reset it from an older view"), "{said}");
    assert!(said.contains("and `origin`'s branch has"), "{said}");
    git_ok(&stale, &["checkout", "-q", "main"]);
    // A branch rewritten (a rebase, newer commits the environment's commit is not in) resets
    // as before.
    repo.git(&["checkout", "-q", "feature/late"]);
    repo.git(&["reset", "-q", "--hard", "main"]);
    repo.write(
        "schemas/migrations/0004_other.sql",
        "CREATE TABLE dummy.other (n int);\n",
    );
    commit_dated(work, "other", 0);
    repo.git(&["push", "-q", "--force", "origin", "feature/late"]);
    repo.git(&["checkout", "-q", "main"]);
    repo.envctl()
        .args(["apply", "--branch", "feature/late", "--yes"])
        .assert()
        .success()
        .stderr(predicate::str::contains("! reset    feature/late"));
}

/// Sets the modification time of a clone's `.git/config` a minute ahead, as a `git config` run
/// a minute after the clone would.
fn config_changed_later(clone: &std::path::Path) {
    let later = std::time::SystemTime::now() + Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(clone.join(".git/config"))
        .unwrap()
        .set_modified(later)
        .unwrap();
}

#[test]
fn a_full_clone_stays_trusted_after_everyday_git_commands_rewrite_its_configuration() {
    let repo = TestRepo::new("prune-config-later");
    let origin = repo.with_origin();
    repo.branch("feature/a", 1, true);
    repo.branch("feature/b", 1, true);
    repo.apply("feature/b");
    age_all(&repo);
    repo.delete_branch("feature/b");
    // A full clone, then `git config user.name` (or `git branch -D`, `git push -u`) later.
    let (_dir, clone) = clone_of(origin.path(), &[]);
    git_ok(&clone, &["config", "user.name", "someone"]);
    config_changed_later(&clone);
    let plan = prune_plan_in(&clone, &repo);
    assert_eq!(
        deletions(&plan)
            .iter()
            .map(|(b, _)| b.as_str())
            .collect::<Vec<_>>(),
        ["feature/b"],
        "{plan:#}"
    );
    // A single-branch clone widened later wrote one branch: what it fetched then was not every
    // branch, and it stays untrusted.
    let (_dir2, narrow) = clone_of(origin.path(), &["--single-branch"]);
    git_ok(
        &narrow,
        &[
            "config",
            "remote.origin.fetch",
            "+refs/heads/*:refs/remotes/origin/*",
        ],
    );
    config_changed_later(&narrow);
    let plan = prune_plan_in(&narrow, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");
    // Widened at once (within the second of the clone, as a script would): the same.
    let (_dir3, quick) = clone_of(origin.path(), &["--single-branch"]);
    git_ok(&quick, &["remote", "set-branches", "origin", "*"]);
    let plan = prune_plan_in(&quick, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");
    // Pulled while it fetched one branch, then widened: the pull's entry names no refspec,
    // and what it fetched was main alone.
    repo.write("notes/main-moves.txt", "moves\n");
    repo.commit("main moves");
    repo.git(&["push", "-q", "origin", "main"]);
    let (_dir4, pulled) = clone_of(origin.path(), &["--single-branch"]);
    repo.write("notes/main-moves-again.txt", "again\n");
    repo.commit("main moves again");
    repo.git(&["push", "-q", "origin", "main"]);
    git_ok(&pulled, &["pull", "-q", "--ff-only"]);
    git_ok(&pulled, &["remote", "set-branches", "origin", "*"]);
    let plan = prune_plan_in(&pulled, &repo);
    assert_eq!(deletions(&plan), [], "{plan:#}");
}

#[test]
fn a_reset_refused_under_the_lock_records_nothing_of_its_older_commit() {
    let repo = TestRepo::new("stale-refused-reset");
    let _origin = repo.with_origin();
    let work = repo.path();
    repo.git(&["checkout", "-q", "-b", "feature/q"]);
    repo.write("notes/q.txt", "q\n");
    commit_dated(work, "q", -300);
    repo.apply("feature/q");
    // An edited migration: this apply plans a reset from that commit, and waits at its prompt.
    repo.edit_first_migration();
    commit_dated(work, "edited", -200);
    let id = repo.cluster_id("feature/q");
    let mut newer = String::new();
    let run = on_terminal_after(
        &repo,
        "apply --branch feature/q",
        "Continue? [y/N]",
        || {
            // Meanwhile a newer commit is applied (it resets and migrates too).
            repo.write(
                "schemas/migrations/0004_more.sql",
                "CREATE TABLE dummy.more (n int);\n",
            );
            commit_dated(work, "more", -100);
            newer = repo.git(&["rev-parse", "HEAD"]).trim().to_owned();
            repo.envctl()
                .args(["apply", "--branch", "feature/q", "--yes"])
                .assert()
                .success();
        },
        "y\n",
    );
    assert_eq!(run.code, Some(1), "{}", run.after_answer);
    assert!(
        run.after_answer
            .contains("the ledger changed since the reset was planned"),
        "{}",
        run.after_answer
    );
    // The record is still the newer commit's: the refused reset wrote nothing of its own.
    let recorded = support::tags_of(id.as_str())["envctl:commit"].clone();
    assert!(
        recorded
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{newer}@"))),
        "{recorded}"
    );
    assert_eq!(repo.applied_versions("feature/q"), "1,2,3,4");
}
