//! Copies of the example repository run the way a new user runs envctl: no `ENVCTL_LOCAL_URL`,
//! so envctl starts its own private PostgreSQL server under the copy's `.envctl/postgres/`. When
//! the tests run as root that server runs as `postgres`, so the copy lives in a directory that
//! user can reach.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;

/// A copy of the example `environments/` and `schemas/` (not a git repository) in a new temp dir
/// the `postgres` user can reach, owned by `repo` (`--repo`).
pub struct PrivateRepo {
    pub dir: tempfile::TempDir,
    pub repo: String,
}

impl PrivateRepo {
    pub fn new(repo: &str) -> PrivateRepo {
        PrivateRepo {
            dir: reachable_dir("envctl-private-"),
            repo: repo.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `envctl -C <copy> --repo <repo>` with its own private server.
    pub fn envctl(&self) -> Command {
        envctl_private(self.path(), &self.repo)
    }
}

/// A new temp dir (mode 755) holding a copy of the example repository's specs and schemas.
pub fn reachable_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .unwrap();
    super::copy_example(dir.path());
    dir
}

/// `envctl -C <dir> --repo <repo>` with no server given: it starts (or finds) the private one.
pub fn envctl_private(dir: &Path, repo: &str) -> Command {
    let mut cmd = super::envctl_at(dir);
    cmd.args(["--repo", repo]);
    Command::from_std(cmd)
}

impl PrivateRepo {
    /// What `envctl url --branch B` prints on stdout.
    pub fn url(&self, branch: &str) -> String {
        super::url_of(self.envctl(), branch)
    }
}

/// `envctl local stop` with `cmd`, which must succeed and say it stopped the private server.
pub fn stop(mut cmd: Command) {
    cmd.args(["local", "stop"])
        .assert()
        .success()
        .stderr(predicates::str::contains(
            "stopped the private PostgreSQL server",
        ));
}
