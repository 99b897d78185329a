//! Test support for tests that need PostgreSQL: one private server shared by every test (started
//! with envctl's own local-server code under the system temp dir, reused across runs), throwaway
//! git repositories holding a copy of the example `environments/` and `schemas/`, and the setup
//! steps the tests share (a branch applied and queried, a spec edited, a database's tags read or
//! backdated). Nothing is mocked: tests run the `envctl` binary against the real server.
//!
//! - `git`: git in other directories than a `TestRepo` (clones, worktrees), as the tests' committer.
//! - `private`: copies of the example repository whose envctl starts its own private server.
//! - `process`: envctl spawned and signalled, or run on a pseudo-terminal.
//! - `provider`: the local provider in-process, for tests that call it directly.
//! - `peer`: the offline AWS API peer; `reliability`: counts, seeds and fuzz runs.

#![allow(dead_code)]

pub mod certs;
pub mod git;
pub mod iam_ldap;
pub mod peer;
pub mod private;
pub mod process;
pub mod provider;
pub mod proxy;
pub mod reliability;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::OnceLock;

use assert_cmd::Command;

/// The shared test server's admin URL (holds its password).
pub fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = std::env::temp_dir().join("envctl-test-postgres");
        match envctl::provider::local_server::ensure_running(&dir) {
            Ok(info) => info.url(),
            Err(e) => panic!(
                "cannot start the test PostgreSQL server under {}: {e:?}\n\
                 install PostgreSQL's server binaries (Debian: `apt-get install postgresql`)",
                dir.display()
            ),
        }
    })
}

/// A PostgreSQL server of one test's own (envctl's private-server code), in a new temp dir the
/// server's user can reach; stopped when dropped. For a test whose server state would disturb
/// the others (a full lock table, settings that take a restart).
pub struct OwnServer {
    /// The server's directory, for `local_server::stop` and `ensure_running`.
    pub dir: PathBuf,
    /// Its admin URL (holds its password).
    pub url: String,
    _root: tempfile::TempDir,
}

impl OwnServer {
    pub fn start(prefix: &str) -> OwnServer {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        // The server's user passes through it.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = root.path().join("server");
        let url = envctl::provider::local_server::ensure_running(&dir)
            .unwrap_or_else(|e| panic!("cannot start a server of the test's own: {e:?}"))
            .url();
        OwnServer {
            dir,
            url,
            _root: root,
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = envctl::provider::local_server::stop(&self.dir);
    }
}

/// Runs SQL on the test server's `postgres` database as the admin; returns psql's `-At` output.
pub fn admin_sql(sql: &str) -> String {
    psql_at(server_url(), sql)
}

/// Runs SQL with psql on the database `url` names, stopping at the first error, which fails the
/// test; returns psql's `-At` output.
pub fn psql_at(url: &str, sql: &str) -> String {
    let output = Process::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .output()
        .expect("psql runs (install postgresql-client)");
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

// ---- envctl's command line ------------------------------------------------------------------------

/// What the caller's environment may hold that would change what envctl does: every test says
/// what it wants instead (the tests themselves may run in GitHub Actions, or beside a user's
/// settings).
const CALLER_VARIABLES: [&str; 14] = [
    "ENVCTL_PREFIX",
    "ENVCTL_PROVIDER",
    "ENVCTL_REPO",
    "ENVCTL_LOCAL_URL",
    "ENVCTL_DEFAULT_BRANCH",
    "GITHUB_ACTIONS",
    "GITHUB_OUTPUT",
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "GITHUB_REF",
    "GITHUB_REF_TYPE",
    "GITHUB_REPOSITORY",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
];

/// The `envctl` binary run in `dir` (`-C`), with none of the caller's envctl, GitHub or AWS
/// settings and no colour: a `std::process::Command`, for tests that spawn it.
pub fn envctl_at(dir: &Path) -> Process {
    let mut cmd = Process::new(assert_cmd::cargo::cargo_bin("envctl"));
    cmd.arg("-C").arg(dir).env("NO_COLOR", "1");
    for key in CALLER_VARIABLES {
        cmd.env_remove(key);
    }
    cmd
}

/// `envctl -C <dir> --repo <repo>` against the shared server, as CI would run it.
pub fn envctl_in(dir: &Path, repo: &str) -> Command {
    let mut cmd = envctl_at(dir);
    cmd.args(["--repo", repo])
        .env("ENVCTL_LOCAL_URL", server_url());
    Command::from_std(cmd)
}

/// The arguments of `envctl exec --branch <branch> -- psql … -Atc <sql>`: SQL in a branch's
/// database as the spec's user, stopping at the first error.
pub fn exec_psql<'a>(branch: &'a str, sql: &'a str) -> [&'a str; 9] {
    [
        "exec",
        "--branch",
        branch,
        "--",
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-Atc",
        sql,
    ]
}

/// What `<envctl> url --branch B` prints on stdout (empty when it fails).
pub fn url_of(mut envctl: Command, branch: &str) -> String {
    let output = envctl.args(["url", "--branch", branch]).output().unwrap();
    String::from_utf8(output.stdout).unwrap()
}

/// The applied migration versions in a ledger, e.g. `1,2,3`.
pub const APPLIED_VERSIONS: &str =
    "SELECT string_agg(version::text, ',' ORDER BY version) FROM envctl.migrations";

/// The rows the example seed leaves (3 when seeded, and nothing else wrote there).
pub const DUMMY_ROWS: &str = "SELECT count(*) FROM dummy.dummy_table";

/// The example's first migration changed after it was applied: the next plan resets.
pub const EDITED_FIRST_MIGRATION: &str = "CREATE SCHEMA dummy;\nCREATE TABLE dummy.dummy_table (id bigint PRIMARY KEY, name text NOT NULL);\n";

/// The id envctl derives for `branch` of `repo` under `prefix`.
pub fn cluster_id(prefix: &str, repo: &str, branch: &str) -> envctl::model::ClusterId {
    envctl::model::ClusterId::derive(
        &envctl::model::Prefix::parse(prefix).unwrap(),
        &envctl::model::RepoName::parse(repo).unwrap(),
        branch,
    )
}

// ---- Throwaway repositories ----------------------------------------------------------------------

/// A throwaway repository with the example specs, migrations and seeds, on branch `main`, owned by
/// `tests/{name}` (its environments are dropped first, so reruns start clean).
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: String,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Copies this repository's example `environments/` and `schemas/` into `dir`.
pub fn copy_example(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["environments", "schemas"] {
        copy_dir(&root.join(sub), &dir.join(sub));
    }
}

impl TestRepo {
    pub fn new(name: &str) -> TestRepo {
        let repo = format!("tests/{name}");
        drop_environments_of(&repo);
        let dir = tempfile::Builder::new()
            .prefix("envctl-test-")
            .tempdir()
            .unwrap();
        copy_example(dir.path());
        let test = TestRepo { dir, repo };
        test.git(&["init", "-q", "-b", "main"]);
        test.commit("example repository");
        test
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// git in the repository, which must succeed; its stdout.
    pub fn git(&self, args: &[&str]) -> String {
        git::git_ok(self.path(), args)
    }

    pub fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    pub fn write(&self, path: &str, text: &str) {
        let path: PathBuf = self.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.path().join(path)).unwrap()
    }

    /// Rewrites a file of the working tree with `from` replaced by `to`.
    pub fn replace_in(&self, path: &str, from: &str, to: &str) {
        self.write(path, &self.read(path).replace(from, to));
    }

    /// The preview spec's `database.user` becomes `user` (from `postgres`): a role of its own.
    pub fn set_preview_user(&self, user: &str) {
        self.replace_in(
            "environments/preview.yaml",
            "user: postgres",
            &format!("user: {user}"),
        );
    }

    /// The example's first migration edited after it was applied: the next plan resets.
    pub fn edit_first_migration(&self) {
        self.write(
            "schemas/migrations/0001_create_dummy.sql",
            EDITED_FIRST_MIGRATION,
        );
    }

    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.path().join(path)).unwrap();
    }

    /// `envctl -C <repo> --repo tests/<name>` against the shared server, as CI would run it.
    pub fn envctl(&self) -> Command {
        envctl_in(self.path(), &self.repo)
    }

    /// The same, with `args`, as a `std::process::Command` to spawn.
    pub fn process(&self, args: &[&str]) -> Process {
        let mut cmd = envctl_at(self.path());
        cmd.args(["--repo", &self.repo])
            .env("ENVCTL_LOCAL_URL", server_url())
            .args(args);
        cmd
    }

    /// `envctl exec --branch <branch> -- <command…>`.
    pub fn exec(&self, branch: &str, command: &[&str]) -> Command {
        let mut cmd = self.envctl();
        cmd.args(["exec", "--branch", branch, "--"]).args(command);
        cmd
    }

    /// Runs SQL in a branch's database through `envctl exec -- psql`; returns `-At` output.
    pub fn sql(&self, branch: &str, sql: &str) -> String {
        let output = self.envctl().args(exec_psql(branch, sql)).output().unwrap();
        assert!(
            output.status.success(),
            "exec psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .trim_end()
            .to_owned()
    }

    /// `envctl apply --branch B`, which must succeed.
    pub fn apply(&self, branch: &str) {
        self.envctl()
            .args(["apply", "--branch", branch])
            .assert()
            .success();
    }

    /// Applied migration versions in a branch's ledger, e.g. `1,2,3`.
    pub fn applied_versions(&self, branch: &str) -> String {
        self.sql(branch, APPLIED_VERSIONS)
    }

    /// How many rows `dummy.dummy_table` holds in a branch's database (the seed makes 3).
    pub fn dummy_rows(&self, branch: &str) -> String {
        self.sql(branch, DUMMY_ROWS)
    }

    /// The names in `dummy.dummy_table` by id, comma-separated (`alpha,beta,gamma` when seeded).
    pub fn dummy_names(&self, branch: &str) -> String {
        self.sql(
            branch,
            "SELECT string_agg(name, ',' ORDER BY id) FROM dummy.dummy_table",
        )
    }

    /// What `envctl url --branch B` prints on stdout (empty when it fails).
    pub fn url(&self, branch: &str) -> String {
        url_of(self.envctl(), branch)
    }

    /// `envctl status --json`.
    pub fn status(&self) -> serde_json::Value {
        let output = self.envctl().args(["status", "--json"]).output().unwrap();
        assert!(
            output.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The plan JSON for a branch. A plan with blocked actions exits 1 after printing itself.
    pub fn plan_json(&self, branch: &str) -> serde_json::Value {
        let output = self
            .envctl()
            .args(["plan", "--json", "--branch", branch])
            .output()
            .unwrap();
        let plan: Option<serde_json::Value> = serde_json::from_slice(&output.stdout).ok();
        let blocked = plan
            .as_ref()
            .and_then(|p| p["summary"]["blocked"].as_u64())
            .unwrap_or(0);
        assert!(
            output.status.success() || (output.status.code() == Some(1) && blocked > 0),
            "plan failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        plan.expect("the plan is JSON")
    }

    /// Action types of a branch's plan, in order.
    pub fn plan_types(&self, branch: &str) -> Vec<String> {
        self.plan_json(branch)["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["type"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Adds a bare `origin` in a temp dir, pushes `main` to it and sets `origin/HEAD`. Keep the
    /// returned directory alive as long as the repository.
    pub fn with_origin(&self) -> tempfile::TempDir {
        let origin = tempfile::Builder::new()
            .prefix("envctl-origin-")
            .tempdir()
            .unwrap();
        git::init_bare(origin.path(), "main");
        self.git(&["remote", "add", "origin", origin.path().to_str().unwrap()]);
        self.git(&["push", "-q", "-u", "origin", "main"]);
        self.git(&["remote", "set-head", "origin", "main"]);
        origin
    }

    /// Adds an `origin` (as `with_origin`) and a branch `branch` with one commit of its own, pushed
    /// there, and applies it: a live environment whose branch git knows on both sides.
    pub fn with_origin_and_applied(&self, branch: &str) -> tempfile::TempDir {
        let origin = self.with_origin();
        self.branch(branch, 1, true);
        self.apply(branch);
        origin
    }

    /// Fetches every branch of `origin` as a fresh CI checkout does: every remote-tracking ref is
    /// new, so the fetch is recorded in their reflogs. Prune dates its view of origin by that; a
    /// push, or a fetch that changes no ref, records none.
    pub fn fetch_as_ci(&self) {
        let refs = self.git(&[
            "for-each-ref",
            "--format=%(refname)",
            "refs/remotes/origin/",
        ]);
        for name in refs.lines().filter(|r| *r != "refs/remotes/origin/HEAD") {
            self.git(&["update-ref", "-d", name]);
        }
        self.git(&["fetch", "-q", "--prune", "origin"]);
    }

    /// Makes branch `name` from `main` with `commits` commits of its own (outside
    /// `environments/` and `schemas/`), pushes it when asked, and goes back to `main`.
    pub fn branch(&self, name: &str, commits: usize, push: bool) {
        self.git(&["checkout", "-q", "-b", name, "main"]);
        for i in 0..commits {
            self.write(
                &format!("notes/{}-{i}.txt", name.replace('/', "-")),
                "work\n",
            );
            self.commit(&format!("work on {name} ({i})"));
        }
        if push {
            self.git(&["push", "-q", "-u", "origin", name]);
        }
        self.git(&["checkout", "-q", "main"]);
    }

    /// Deletes a branch on `origin` and locally.
    pub fn delete_branch(&self, name: &str) {
        self.git(&["push", "-q", "origin", "--delete", name]);
        self.git(&["branch", "-q", "-D", name]);
    }

    pub fn database_names(&self) -> Vec<String> {
        databases_of(&self.repo)
    }

    /// The id envctl derives for `branch` of this repository under the default prefix.
    pub fn cluster_id(&self, branch: &str) -> envctl::model::ClusterId {
        cluster_id("envctl", &self.repo, branch)
    }
}

// ---- Databases on the test server ----------------------------------------------------------------

/// Databases on the test server whose comment names this repository.
pub fn databases_of(repo: &str) -> Vec<String> {
    let pattern = format!("%\"envctl:repo\":\"{repo}\"%");
    admin_sql(&format!(
        "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE '{}' ORDER BY 1",
        pattern.replace('\'', "''")
    ))
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Drops every database of this repository (a test's own, from an earlier run).
pub fn drop_environments_of(repo: &str) {
    for name in databases_of(repo) {
        admin_sql(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"));
    }
}

/// How many databases are named exactly `name` (`0` or `1`).
pub fn database_count(name: &str) -> String {
    admin_sql(&format!(
        "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
    ))
    .trim()
    .to_owned()
}

/// A local environment's comment as it is stored: its metadata, tags included, in JSON.
pub fn comment_of(id: &str) -> String {
    admin_sql(&format!(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{id}'"
    ))
}

/// The tags of a local environment, from its comment.
pub fn tags_of(id: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(comment_of(id).trim()).unwrap()["tags"].clone()
}

/// Sets a database's comment (where the local provider keeps an environment's metadata).
pub fn set_comment(name: &str, text: &str) {
    admin_sql(&format!(
        "COMMENT ON DATABASE \"{name}\" IS '{}'",
        text.replace('\'', "''")
    ));
}

/// Sets one key of a local environment's metadata (its comment), e.g. a tag.
pub fn set_metadata(id: &str, path: &str, value: &str) {
    admin_sql(&format!(
        "DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE %I IS %L', '{id}', \
         jsonb_set(shobj_description((SELECT oid FROM pg_database WHERE datname = '{id}'), 'pg_database')::jsonb, \
         '{path}', '{value}')::text); END $$"
    ));
}

/// Ten minutes ago, as envctl writes times in tags.
pub fn ten_minutes_ago() -> String {
    humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - std::time::Duration::from_secs(600),
    )
    .to_string()
}

/// Makes a local environment look last applied ten minutes ago: well within its ttl, and before
/// anything git did in the test (prune does not trust git's reasons for what was applied after
/// the clone last learned origin's branches, which in a test is seconds).
pub fn applied_ten_minutes_ago(id: &str) {
    set_metadata(
        id,
        "{tags,envctl:last-applied}",
        &format!("\"{}\"", ten_minutes_ago()),
    );
}

/// Waits for a child at most `limit`, killing it if it takes longer: a hang fails the test
/// (naming `what`), it never blocks the suite.
pub fn wait_at_most(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::Output {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
