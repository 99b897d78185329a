//! Test support for tests that need PostgreSQL: one private server shared by every test (started
//! with envctl's own local-server code under the system temp dir, reused across runs), and
//! throwaway git repositories holding a copy of the example `environments/` and `schemas/`.
//! Nothing is mocked: tests run the `envctl` binary against the real server.

#![allow(dead_code)]

pub mod iam_ldap;
pub mod peer;
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

/// Runs SQL on the test server's `postgres` database as the admin; returns psql's `-At` output.
pub fn admin_sql(sql: &str) -> String {
    let output = Process::new("psql")
        .arg(server_url())
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

impl TestRepo {
    pub fn new(name: &str) -> TestRepo {
        let repo = format!("tests/{name}");
        drop_environments_of(&repo);
        let dir = tempfile::Builder::new()
            .prefix("envctl-test-")
            .tempdir()
            .unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        copy_dir(&root.join("environments"), &dir.path().join("environments"));
        copy_dir(&root.join("schemas"), &dir.path().join("schemas"));
        let test = TestRepo { dir, repo };
        test.git(&["init", "-q", "-b", "main"]);
        test.commit("example repository");
        test
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        let output = Process::new("git")
            .current_dir(self.path())
            .args([
                "-c",
                "user.name=envctl tests",
                "-c",
                "user.email=tests@example.com",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
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

    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.path().join(path)).unwrap();
    }

    /// `envctl -C <repo> --repo tests/<name>` against the shared server, as CI would run it.
    pub fn envctl(&self) -> Command {
        let mut cmd = Command::cargo_bin("envctl").unwrap();
        cmd.arg("-C")
            .arg(self.path())
            .args(["--repo", &self.repo])
            .env("ENVCTL_LOCAL_URL", server_url())
            .env("NO_COLOR", "1")
            .env_remove("ENVCTL_PREFIX")
            .env_remove("ENVCTL_PROVIDER")
            .env_remove("ENVCTL_REPO")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITHUB_OUTPUT")
            .env_remove("GITHUB_HEAD_REF")
            .env_remove("GITHUB_REF_NAME")
            .env_remove("GITHUB_REPOSITORY");
        cmd
    }

    /// The same command line as [`TestRepo::envctl`], as a process to spawn (a proxy, a child
    /// that must be signalled).
    pub fn process(&self) -> Process {
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_envctl"));
        cmd.arg("-C")
            .arg(self.path())
            .args(["--repo", &self.repo])
            .env("ENVCTL_LOCAL_URL", server_url())
            .env("NO_COLOR", "1");
        for key in [
            "ENVCTL_PREFIX",
            "ENVCTL_PROVIDER",
            "ENVCTL_REPO",
            "GITHUB_ACTIONS",
            "GITHUB_OUTPUT",
            "GITHUB_HEAD_REF",
            "GITHUB_REF_NAME",
            "GITHUB_REPOSITORY",
        ] {
            cmd.env_remove(key);
        }
        cmd
    }

    /// Runs SQL in a branch's database through `envctl exec -- psql`; returns `-At` output.
    pub fn sql(&self, branch: &str, sql: &str) -> String {
        let output = self
            .envctl()
            .args([
                "exec",
                "--branch",
                branch,
                "--",
                "psql",
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ])
            .output()
            .unwrap();
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
        self.sql(
            branch,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM envctl.migrations",
        )
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
        let out = Process::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(origin.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        self.git(&["remote", "add", "origin", origin.path().to_str().unwrap()]);
        self.git(&["push", "-q", "-u", "origin", "main"]);
        self.git(&["remote", "set-head", "origin", "main"]);
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
}

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

fn drop_environments_of(repo: &str) {
    for name in databases_of(repo) {
        admin_sql(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"));
    }
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
