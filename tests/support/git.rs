//! git in any directory, as the tests' committer: the throwaway repositories, bare origins,
//! clones of them (shallow, single-branch, dated), worktrees and submodules. Each command is the
//! real `git`; a helper that must succeed says which command failed and what git printed.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};

/// `git <args>` in `dir`, committing as the tests' author (local `file://` submodules allowed).
pub fn git_command(dir: &Path, args: &[&str]) -> Process {
    let mut git = Process::new("git");
    git.current_dir(dir)
        .args([
            "-c",
            "user.name=envctl tests",
            "-c",
            "user.email=tests@example.com",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args);
    git
}

/// Runs git in `dir`; its output, whatever its exit status.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    git_command(dir, args).output().expect("git runs")
}

/// Runs git in `dir` with its committer and author date set to `unix_seconds` (what reflogs
/// record for a fetch or a clone); its output, whatever its exit status.
pub fn git_dated(dir: &Path, args: &[&str], unix_seconds: u64) -> Output {
    git_command(dir, args)
        .env("GIT_COMMITTER_DATE", format!("{unix_seconds} +0000"))
        .output()
        .expect("git runs")
}

/// Runs git in `dir`, which must succeed; its stdout.
pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let output = git(dir, args);
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Makes a bare repository at `dir` (an `origin`) whose default branch is `branch`.
pub fn init_bare(dir: &Path, branch: &str) {
    git_ok(
        Path::new("/"),
        &["init", "-q", "--bare", "-b", branch, dir.to_str().unwrap()],
    );
}

/// The `file://` URL of a local repository, as a clone names its `origin`.
pub fn file_url(repository: &Path) -> String {
    format!("file://{}", repository.display())
}

/// Clones `origin` with `flags` (e.g. `--depth 1`) into a new temp dir; the dir (keep it alive)
/// and the clone in it.
pub fn clone_of(origin: &Path, flags: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("r");
    let url = file_url(origin);
    let mut args = vec!["clone", "-q"];
    args.extend_from_slice(flags);
    args.extend([url.as_str(), clone.to_str().unwrap()]);
    git_ok(dir.path(), &args);
    (dir, clone)
}

/// Seconds since the Unix epoch, `offset` seconds from now (negative: in the past).
pub fn unix_time(offset: i64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now.checked_add_signed(offset).unwrap()
}
