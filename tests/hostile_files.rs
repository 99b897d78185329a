//! One file, one content, whatever the source: specs, migrations and seeds read from the working
//! tree and from a branch's git tree are the same bytes or the same refusal. Symbolic links are
//! followed only to regular files inside the repository; links that leave it, dangle, loop or
//! name a directory, FIFOs and devices are diagnostics that name the file, never a hang, an
//! unbounded read or an IO error that hides every other problem.

mod support;

use std::path::Path;
use std::process::Command as Process;
use std::time::Duration;

use assert_cmd::Command;
use envctl::spec::{self, RepoFiles};

const SPEC: &str = "\
version: 1
name: preview
branches: [\"feature/*\"]
cluster:
  scaling: { minAcu: 0, maxAcu: 4 }
";

/// A throwaway repository on `main` with one spec and one migration, and a branch `other` made
/// by `commit`.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.write("environments/preview.yaml", SPEC);
        repo.write(
            "schemas/migrations/0001_create.sql",
            "CREATE TABLE t (id int);\n",
        );
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) {
        support::git::git_ok(self.path(), args);
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn link(&self, path: &str, target: &str) {
        let path = self.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    /// Commits everything and points branch `other` at it.
    fn commit(&self) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "files"]);
        self.git(&["branch", "-f", "other"]);
    }

    fn working_tree(&self) -> RepoFiles {
        envctl::source::read_working_tree(self.path()).unwrap()
    }

    fn branch_tree(&self) -> RepoFiles {
        envctl::git::Git::open(self.path())
            .unwrap()
            .branch_tree("other")
            .unwrap()
            .expect("branch `other` exists")
            .files
    }

    /// `envctl validate`, killed (and failed) if it takes more than 30 seconds.
    fn validate(&self) -> (Option<i32>, String) {
        let output = Command::cargo_bin("envctl")
            .unwrap()
            .arg("-C")
            .arg(self.path())
            .arg("validate")
            .env_remove("GITHUB_ACTIONS")
            .env("NO_COLOR", "1")
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn diagnostics(files: &RepoFiles) -> Vec<String> {
    match spec::load(files) {
        Ok(_) => Vec::new(),
        Err(found) => found
            .iter()
            .map(|d| format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message))
            .collect(),
    }
}

#[test]
fn a_symlinked_migration_reads_the_same_from_the_working_tree_and_from_git() {
    let repo = Repo::new();
    repo.write(
        "schemas/shared/orders.sql",
        "CREATE TABLE orders (id int);\n",
    );
    repo.write(
        "schemas/shared/more/items.sql",
        "CREATE TABLE items (id int);\n",
    );
    repo.link("schemas/migrations/0002_orders.sql", "../shared/orders.sql");
    // A link to a link, and a link through a linked directory.
    repo.link("schemas/migrations/0003_again.sql", "0002_orders.sql");
    repo.link("schemas/more", "shared/more");
    repo.link("schemas/migrations/0004_items.sql", "../more/items.sql");
    repo.link("schemas/seeds/orders.sql", "../shared/orders.sql");
    repo.commit();

    let working_tree = repo.working_tree();
    let branch_tree = repo.branch_tree();
    assert_eq!(working_tree, branch_tree);
    let from_disk = spec::load(&working_tree).unwrap();
    let from_git = spec::load(&branch_tree).unwrap();
    assert_eq!(from_disk.migrations, from_git.migrations);
    assert_eq!(from_disk.seeds, from_git.seeds);
    assert_eq!(
        from_git.migrations[1].sql,
        "CREATE TABLE orders (id int);\n"
    );
    assert_eq!(from_git.migrations[3].sql, "CREATE TABLE items (id int);\n");
}

#[test]
fn links_that_leave_the_repository_dangle_loop_or_name_a_directory_are_refused_by_both() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("evil.sql"), "DROP TABLE t;\n").unwrap();
    let absolute = outside.path().join("evil.sql").display().to_string();
    let repo = Repo::new();
    repo.link("schemas/migrations/0002_absolute.sql", &absolute);
    repo.link(
        "schemas/migrations/0003_relative.sql",
        "../../../../../../../../../../../../etc/passwd",
    );
    repo.link("schemas/migrations/0004_dangling.sql", "nowhere.sql");
    repo.link("schemas/migrations/0005_loop.sql", "0006_loop.sql");
    repo.link("schemas/migrations/0006_loop.sql", "0005_loop.sql");
    repo.link("schemas/migrations/0007_directory.sql", "..");
    repo.link("schemas/migrations/0008_git.sql", "../../.git/HEAD");
    repo.link(
        "schemas/migrations/0009_through.sql",
        "0001_create.sql/x.sql",
    );
    repo.link("environments/copy.yaml", "../environments");
    repo.commit();

    let working_tree = repo.working_tree();
    assert_eq!(working_tree, repo.branch_tree());
    let m = "schemas/migrations";
    assert_eq!(
        diagnostics(&working_tree),
        [
            "environments/copy.yaml:1:1: the file is a symbolic link to `../environments`, which is a directory".to_owned(),
            format!("{m}/0002_absolute.sql:1:1: the file is a symbolic link to `{absolute}`, outside the repository"),
            format!("{m}/0003_relative.sql:1:1: the file is a symbolic link to `../../../../../../../../../../../../etc/passwd`, outside the repository"),
            format!("{m}/0004_dangling.sql:1:1: the file is a symbolic link to `nowhere.sql`, which does not exist"),
            format!("{m}/0005_loop.sql:1:1: the file is a symbolic link to `0006_loop.sql`, which loops or goes through more than 8 links"),
            format!("{m}/0006_loop.sql:1:1: the file is a symbolic link to `0005_loop.sql`, which loops or goes through more than 8 links"),
            format!("{m}/0007_directory.sql:1:1: the file is a symbolic link to `..`, which is a directory"),
            format!("{m}/0008_git.sql:1:1: the file is a symbolic link to `../../.git/HEAD`, outside `environments/` and `schemas/`"),
            format!("{m}/0009_through.sql:1:1: the file is a symbolic link to `0001_create.sql/x.sql`, which does not exist"),
        ]
    );
}

#[test]
fn a_linked_schemas_directory_is_refused_by_both() {
    let repo = Repo::new();
    std::fs::rename(repo.path().join("schemas"), repo.path().join("elsewhere")).unwrap();
    repo.link("schemas", "elsewhere");
    repo.commit();
    let working_tree = repo.working_tree();
    assert_eq!(working_tree, repo.branch_tree());
    assert_eq!(
        diagnostics(&working_tree),
        [
            "schemas:1:1: the directory is a symbolic link to `elsewhere`; envctl reads only real directories here"
        ]
    );
}

#[test]
fn sql_files_over_one_mebibyte_are_refused_by_both() {
    let repo = Repo::new();
    let big = format!("SELECT 1;\n{}", "-".repeat(1 << 20));
    repo.write("schemas/migrations/0002_big.sql", &big);
    repo.commit();
    let working_tree = repo.working_tree();
    assert_eq!(working_tree, repo.branch_tree());
    assert_eq!(
        diagnostics(&working_tree),
        [format!(
            "schemas/migrations/0002_big.sql:1:1: the file is {} bytes; envctl reads files of at most 1048576 bytes here",
            big.len()
        )]
    );
}

#[test]
fn validate_refuses_a_fifo_without_blocking() {
    let repo = Repo::new();
    let fifo = repo.path().join("schemas/migrations/0002_pipe.sql");
    let made = Process::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    repo.link("schemas/seeds/pipe.sql", "../migrations/0002_pipe.sql");
    let (code, stderr) = repo.validate();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error: schemas/migrations/0002_pipe.sql:1:1: the file is a named pipe (FIFO), not a regular file\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: schemas/seeds/pipe.sql:1:1: the file is a symbolic link to `../migrations/0002_pipe.sql`, which is a named pipe (FIFO), not a regular file\n"),
        "{stderr}"
    );
}

#[test]
fn validate_refuses_a_link_to_dev_zero_without_reading_it() {
    let repo = Repo::new();
    repo.link("schemas/migrations/0002_zero.sql", "/dev/zero");
    let (code, stderr) = repo.validate();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error: schemas/migrations/0002_zero.sql:1:1: the file is a symbolic link to `/dev/zero`, outside the repository\n"),
        "{stderr}"
    );
}

#[test]
fn validate_names_a_link_outside_the_repository_and_a_dangling_one_together() {
    let repo = Repo::new();
    repo.link("schemas/seeds/passwd.sql", "/etc/passwd");
    repo.link("environments/gone.yaml", "gone/preview.yaml");
    let (code, stderr) = repo.validate();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error: schemas/seeds/passwd.sql:1:1: the file is a symbolic link to `/etc/passwd`, outside the repository\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: environments/gone.yaml:1:1: the file is a symbolic link to `gone/preview.yaml`, which does not exist\n"),
        "{stderr}"
    );
    assert!(stderr.contains("2 errors found"), "{stderr}");
}

#[test]
fn a_link_to_an_ignored_file_is_refused_by_both_and_never_printed() {
    let repo = Repo::new();
    // What a hostile pull request links to: the private server's password, git-ignored.
    repo.write(".envctl/postgres/password", "s3cret-admin-password\n");
    repo.write(".gitignore", ".envctl/\n");
    repo.link(
        "schemas/migrations/0002_leak.sql",
        "../../.envctl/postgres/password",
    );
    repo.link("schemas/seeds/leak.sql", "../../README.md");
    repo.write("README.md", "not a seed\n");
    repo.commit();
    let working_tree = repo.working_tree();
    assert_eq!(working_tree, repo.branch_tree(), "one file, one content");
    assert_eq!(
        diagnostics(&working_tree),
        [
            "schemas/migrations/0002_leak.sql:1:1: the file is a symbolic link to `../../.envctl/postgres/password`, outside `environments/` and `schemas/`",
            "schemas/seeds/leak.sql:1:1: the file is a symbolic link to `../../README.md`, outside `environments/` and `schemas/`",
        ]
    );
    let (code, stderr) = repo.validate();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("s3cret-admin-password"), "{stderr}");
}

#[test]
fn file_names_that_are_not_utf8_or_hold_line_breaks_are_named_not_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let repo = Repo::new();
    let dir = repo.path().join("environments");
    std::fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"pr\xe9view.yaml")),
        SPEC.replace("name: preview", "name: other"),
    )
    .unwrap();
    repo.write(
        "schemas/migrations/0002_x\n::warning file=README.md,line=1::injected.sql",
        "SELECT 1;\n",
    );
    repo.commit();
    let working_tree = repo.working_tree();
    assert_eq!(working_tree, repo.branch_tree());
    let found = diagnostics(&working_tree);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found
            .iter()
            .all(|d| d.ends_with("the file name is not valid UTF-8 or holds a control character")),
        "{found:?}"
    );
    let (code, stderr) = repo.validate();
    assert_eq!(code, Some(1));
    assert!(
        !stderr.lines().any(|line| line.starts_with("::warning")),
        "a file name printed a workflow command: {stderr}"
    );
}

#[test]
fn a_key_with_a_line_break_cannot_print_a_workflow_command() {
    let repo = Repo::new();
    repo.write(
        "environments/preview.yaml",
        &format!("{SPEC}\"x\\n::warning file=README.md,line=1::injected by a PR\\n\": 1\n"),
    );
    let (code, stderr) = repo.validate();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("unknown key `x\\n::warning"), "{stderr}");
    assert!(
        !stderr.lines().any(|line| line.starts_with("::")),
        "{stderr}"
    );
}

#[test]
fn a_closed_stderr_is_not_a_panic() {
    let repo = Repo::new();
    repo.write("environments/preview.yaml", "version: [\n");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("envctl"))
        .arg("-C")
        .arg(repo.path())
        .arg("validate")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before envctl writes: every write to stderr fails.
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "not 101 (a panic)");
}

#[test]
fn a_directory_named_like_a_spec_or_a_migration_is_refused_by_both() {
    // Before, both were skipped: `validate` said ok, and the migration was never run.
    let repo = Repo::new();
    repo.write("schemas/migrations/0002_dir.sql/inside.sql", "SELECT 1;\n");
    repo.write("environments/dir.yaml/inside.yaml", SPEC);
    // Seeds and masking files are read from subdirectories: a directory there is read.
    repo.write("schemas/seeds/nested.sql/s.sql", "SELECT 1;\n");
    repo.commit();
    let working_tree = repo.working_tree();
    assert_eq!(working_tree, repo.branch_tree(), "one file, one content");
    assert_eq!(
        diagnostics(&working_tree),
        [
            "environments/dir.yaml:1:1: the file is a directory, not a regular file",
            "schemas/migrations/0002_dir.sql:1:1: the file is a directory, not a regular file",
        ]
    );
}
