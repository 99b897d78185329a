//! `init`: scaffold a repository: the GitHub workflow, Dependabot's config for its actions, a
//! starter spec, a first migration, a seed, and the JSON Schema of the environment file. Nothing
//! is overwritten without `--force` (a Dependabot config of the repository's own never), and
//! nothing is written through a symbolic link or outside the repository.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::{Cli, InitArgs};
use crate::report::{Exit, Reporter, UserError};
use crate::settings::repository_root;
use crate::spec;

/// envctl's own workflow, which installs envctl with this repository's action (`uses: ./`).
const OWN_WORKFLOW: &str = include_str!("../../.github/workflows/envctl.yml");
/// The one line of it that differs in a user's repository.
const OWN_INSTALL_LINE: &str = "        uses: ./";
const USER_INSTALL_LINE: &str = "        uses: envctl/envctl@v1";
/// envctl's own Dependabot config, which `init` writes as it is: weekly updates of the pinned
/// actions.
const DEPENDABOT: &str = include_str!("../../.github/dependabot.yml");
/// Where Dependabot reads its config; `init` keeps one the repository already has.
const DEPENDABOT_PATHS: [&str; 2] = [".github/dependabot.yml", ".github/dependabot.yaml"];
/// How much of a kept Dependabot config `init` reads to tell whether it updates actions.
const DEPENDABOT_READ_LIMIT: u64 = 64 * 1024;

const PREVIEW_SPEC: &str = r#"# yaml-language-server: $schema=../schemas/environment.schema.json
# Every branch gets a small PostgreSQL database that pauses when idle: an Aurora cluster with
# express configuration on AWS, a database on a local server with the local provider.
# `envctl schema` describes every key; `envctl validate` checks this file.
version: 1
name: preview
# Git branch globs: `*` stays within one `/` segment, `**` crosses them; `!` excludes. Narrow it,
# e.g. ["feature/*", "fix/**"], and give the default branch a file of its own (with
# `protect: true`). Dependabot's and Renovate's branches get no database; to give them one, remove
# their `!` patterns and set the repository variable ENVCTL_BOT_BRANCHES to true (the workflow
# skips them too).
branches: ["**", "!dependabot/**", "!renovate/**"]
cluster:
  engine: aurora-postgresql
  express: true
  scaling: { minAcu: 0, maxAcu: 4 }
  deletionProtection: false
database:
  name: postgres
  user: postgres
  schemaVersion: latest
  seeds: [schemas/seeds/dev.sql]
lifecycle:
  # `envctl prune` deletes it once no apply has touched it for this long, and when its branch is
  # merged or deleted. It never deletes the default branch's database.
  ttl: 7d
  protect: false
"#;

const FIRST_MIGRATION: &str =
    "-- envctl applies schemas/migrations/NNNN_name.sql in version order, each in its own
-- transaction, and records each in the `envctl` schema of the database. Never edit a migration
-- that was applied: add the next number instead (an edited one makes the plan reset the database).
CREATE TABLE items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
";

const SEED: &str = "-- Seed data, applied after the migrations, in the order the spec lists the files. It runs again
-- whenever this file changes, so write it to be safe to run twice.
INSERT INTO items (name) VALUES ('first item'), ('second item')
ON CONFLICT (name) DO NOTHING;
";

/// The workflow as `init` writes it: installed from the released action, and without the header
/// paragraph about this repository's own copy.
pub fn user_workflow() -> anyhow::Result<String> {
    let lines: Vec<&str> = OWN_WORKFLOW.lines().collect();
    let installs = lines.iter().filter(|l| **l == OWN_INSTALL_LINE).count();
    anyhow::ensure!(
        installs == 1,
        "internal error: the workflow has {installs} lines `{OWN_INSTALL_LINE}`, not one"
    );
    let start = lines
        .iter()
        .position(|l| l.starts_with("# This file is envctl's own workflow"));
    let end = lines
        .iter()
        .position(|l| l.starts_with('#') && l.ends_with("(tests/workflows.rs checks)."));
    let mut out = String::with_capacity(OWN_WORKFLOW.len());
    for (i, line) in lines.iter().enumerate() {
        let in_paragraph = match (start, end) {
            // The paragraph and the `#` line before it.
            (Some(start), Some(end)) => i + 1 >= start && i <= end,
            _ => false,
        };
        if in_paragraph {
            continue;
        }
        out.push_str(if *line == OWN_INSTALL_LINE {
            USER_INSTALL_LINE
        } else {
            line
        });
        out.push('\n');
    }
    Ok(out)
}

/// The files `init` writes, by path inside the repository: the starter spec, migration and seed
/// only with `starter` (a repository without specs and migrations of its own), Dependabot's config
/// only with `dependabot` (a repository without one).
fn files(starter: bool, dependabot: bool) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut files = vec![(".github/workflows/envctl.yml", user_workflow()?)];
    if dependabot {
        files.push((DEPENDABOT_PATHS[0], DEPENDABOT.to_owned()));
    }
    if starter {
        files.extend([
            ("environments/preview.yaml", PREVIEW_SPEC.to_owned()),
            (
                "schemas/migrations/0001_init.sql",
                FIRST_MIGRATION.to_owned(),
            ),
            ("schemas/seeds/dev.sql", SEED.to_owned()),
        ]);
    }
    files.push(("schemas/environment.schema.json", spec::raw::json_schema()));
    Ok(files)
}

/// Specs and migrations the repository already has (other than the starter's own, unchanged): a
/// starter spec or a `0001` migration beside them would clash with them, and one of the starter's
/// names edited since is the user's now.
fn own_specs_and_migrations(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (dir, extensions, starter, starter_text) in [
        (
            "environments",
            &["yaml", "yml"][..],
            "preview.yaml",
            PREVIEW_SPEC,
        ),
        (
            "schemas/migrations",
            &["sql"][..],
            "0001_init.sql",
            FIRST_MIGRATION,
        ),
    ] {
        // A link or an unreadable directory is not looked into (the writes refuse links).
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                Path::new(n)
                    .extension()
                    .is_some_and(|e| extensions.iter().any(|x| e == *x))
            })
            .filter(|n| {
                // Unchanged starter files are init's own; anything else (a link included, which
                // is not followed) is the repository's.
                let path = root.join(dir).join(n);
                let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
                n != starter
                    || !regular
                    || std::fs::read(&path).map_or(true, |bytes| bytes != starter_text.as_bytes())
            })
            .map(|n| format!("{dir}/{n}"))
            .collect();
        names.sort();
        found.extend(names);
    }
    found
}

/// The repository's own Dependabot config, if it has one (anything at either path, a link too,
/// but not init's own, unchanged), and whether it updates GitHub Actions already: `init` keeps it,
/// and says what to add.
fn own_dependabot(root: &Path) -> Option<(&'static str, bool)> {
    use std::io::Read as _;
    let path = DEPENDABOT_PATHS
        .into_iter()
        .find(|p| std::fs::symlink_metadata(root.join(p)).is_ok())?;
    let regular = std::fs::symlink_metadata(root.join(path)).is_ok_and(|m| m.is_file());
    let mut text = String::new();
    if regular && let Ok(file) = std::fs::File::open(root.join(path)) {
        // Bounded: the file is the repository's, of any size; what is not text says nothing.
        let _ = file.take(DEPENDABOT_READ_LIMIT).read_to_string(&mut text);
    }
    if path == DEPENDABOT_PATHS[0] && text == DEPENDABOT {
        return None;
    }
    Some((path, text.contains("github-actions")))
}

/// What is at a path `init` would write.
enum Existing {
    Nothing,
    File,
}

/// Checks that `relative` can be written under `root` without following a link: every existing
/// directory on the way is a real directory, and the file is a regular file or absent.
fn check_path(root: &Path, relative: &str) -> Result<Existing, String> {
    let mut path = root.to_path_buf();
    let parts: Vec<&str> = relative.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let shown = parts[..=i].join("/");
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
            Err(e) => return Err(format!("`{shown}` cannot be read: {e}")),
        };
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(format!(
                "`{shown}` is a symbolic link; envctl init writes only regular files inside the repository"
            ));
        }
        if !last && !meta.is_dir() {
            return Err(format!("`{shown}` is not a directory"));
        }
        if last && !meta.is_file() {
            return Err(format!("`{shown}` exists and is not a regular file"));
        }
    }
    Ok(Existing::File)
}

/// Writes every file beside its final place first, then renames them all there: a failure
/// (a directory that cannot be made, a full disk) leaves nothing behind, not some of the files.
fn write_all(root: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    let mut made_dirs: Vec<PathBuf> = Vec::new();
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for (relative, text) in files {
            let path: PathBuf = root.join(relative);
            let dir = path.parent().expect("a file in a directory");
            // The directories made here, outermost first, to remove again on failure.
            let mut missing: Vec<PathBuf> = dir
                .ancestors()
                .take_while(|d| d.starts_with(root) && *d != root && !d.exists())
                .map(Path::to_path_buf)
                .collect();
            missing.reverse();
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
            made_dirs.extend(missing);
            let name = path.file_name().expect("a file name").to_string_lossy();
            let temporary = dir.join(format!(".{name}.envctl-init-{}", std::process::id()));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temporary)
                .with_context(|| format!("cannot write `{relative}`"))?;
            staged.push((temporary, path));
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write `{relative}`"))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (temporary, _) in &staged {
            let _ = std::fs::remove_file(temporary);
        }
        for dir in made_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        return Err(e.context(UserError::new("nothing was written")));
    }
    for (temporary, path) in &staged {
        std::fs::rename(temporary, path)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    Ok(())
}

pub fn init(cli: &Cli, args: &InitArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let (root, git) = repository_root(&cli.directory)?;
    if let Some(git) = &git
        && git.workdir().is_none()
    {
        return Err(UserError::with_hint(
            format!(
                "`{}` is a bare git repository: there is no working tree to write the files into",
                root.display()
            ),
            "run `envctl init` in a clone of the repository",
        )
        .into());
    }
    // Without the trailing `/` git gives a working tree.
    let root: PathBuf = root.components().collect();
    let own = own_specs_and_migrations(&root);
    let own_dependabot = own_dependabot(&root);
    let files = files(own.is_empty(), own_dependabot.is_none())?;
    let mut existing = Vec::new();
    let mut refused = Vec::new();
    for (relative, _) in &files {
        match check_path(&root, relative) {
            Ok(Existing::Nothing) => {}
            Ok(Existing::File) => existing.push(*relative),
            Err(why) => refused.push(why),
        }
    }
    refused.dedup();
    if !refused.is_empty() {
        return Err(UserError::with_hint(
            format!("{}; nothing was written", refused.join("; ")),
            "remove or move it, then run `envctl init` again",
        )
        .into());
    }
    if !existing.is_empty() && !args.force {
        return Err(UserError::with_hint(
            format!(
                "{} already exist{} in `{}`; nothing was written",
                existing
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if existing.len() == 1 { "s" } else { "" },
                root.display()
            ),
            if existing.len() == files.len() {
                "pass `--force` to overwrite them".to_owned()
            } else {
                "pass `--force` to overwrite them (the others are written too)".to_owned()
            },
        )
        .into());
    }
    write_all(&root, &files)?;
    let mut lines = vec![format!("envctl init wrote, in `{}`:", root.display())];
    for (relative, _) in &files {
        let replaced = if existing.contains(relative) {
            " (replaced)"
        } else {
            ""
        };
        lines.push(format!("  {relative}{replaced}"));
    }
    if let Some(first) = own.first() {
        lines.push(format!(
            "and kept the specs and migrations already here ({first}{}): no starter spec, migration or seed beside them",
            match own.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            }
        ));
    }
    match own_dependabot {
        Some((path, true)) => lines.push(format!(
            "and kept `{path}`, which updates the workflow's pinned actions already (github-actions)"
        )),
        Some((path, false)) => lines.push(format!(
            "and kept `{path}`: add the workflow's pinned actions to its `updates` (`- package-ecosystem: github-actions` with `directory: /` and a `schedule`), so that they are kept current"
        )),
        None => {}
    }
    reporter.note(&lines.join("\n"));
    // As GitHub spells it: the trust policy's `sub` condition is case-sensitive.
    let repo = cli
        .repo
        .clone()
        .or_else(|| std::env::var("GITHUB_REPOSITORY").ok())
        .filter(|r| !r.trim().is_empty())
        .or_else(|| git.as_ref().and_then(crate::git::Git::origin_repo_name))
        .filter(|r| crate::model::RepoName::parse(r).is_ok());
    reporter.note(&next_steps(git.is_some(), repo.as_deref()));
    Ok(Exit::Success)
}

/// What to do after `init`: try it locally, push, connect AWS with two roles, check it.
fn next_steps(is_git: bool, repo: Option<&str>) -> String {
    let repo_name = repo.unwrap_or("OWNER/NAME");
    let git = match (is_git, repo) {
        (false, _) => {
            "  0. This directory is not a git repository yet: `git init`, and add your GitHub repository as `origin` (`git remote add origin git@github.com:OWNER/NAME.git`).\n"
        }
        (true, None) => {
            "  0. envctl names environments after the repository, from `origin`: add it (`git remote add origin git@github.com:OWNER/NAME.git`), or `export ENVCTL_REPO=OWNER/NAME`.\n"
        }
        (true, Some(_)) => "",
    };
    format!(
        r#"
Next steps:
{git}  1. Try it here, on a private PostgreSQL server under `.envctl/` (no AWS needed):
       envctl validate && envctl plan && envctl apply
       envctl exec -- psql -c 'SELECT * FROM items'
  2. Commit the files and push. Until AWS is connected, the workflow's AWS jobs are skipped
     with a notice, so the repository stays green. Dependabot keeps the workflow's pinned actions
     current; its branches and Renovate's get no database (the starter spec's `!` patterns).
  3. Connect AWS, once, with two roles, so that a pull request cannot change what a push owns:
     - add GitHub's OIDC provider to the account (skip this if `aws iam list-open-id-connect-providers`
       already lists token.actions.githubusercontent.com):
       aws iam create-open-id-connect-provider --url https://token.actions.githubusercontent.com --client-id-list sts.amazonaws.com --thumbprint-list 6938fd4d98bab03faadb97b34396831e3780aea1
     - the plan role, for pull requests: read-only, trusted only for `sub` "repo:{repo_name}:pull_request":
       envctl iam-policy --role plan --trust --account ACCOUNT_ID > plan-trust.json
       envctl iam-policy --role plan --account ACCOUNT_ID --region us-east-1 > plan.json
       aws iam create-role --role-name envctl-plan --assume-role-policy-document file://plan-trust.json
       aws iam put-role-policy --role-name envctl-plan --policy-name envctl --policy-document file://plan.json
     - the apply role, for pushes, branch deletes and prune: this repository's environments only,
       trusted only for `sub` "repo:{repo_name}:ref:refs/heads/*":
       envctl iam-policy --role apply --trust --account ACCOUNT_ID > apply-trust.json
       envctl iam-policy --role apply --account ACCOUNT_ID --region us-east-1 > apply.json
       aws iam create-role --role-name envctl-apply --assume-role-policy-document file://apply-trust.json
       aws iam put-role-policy --role-name envctl-apply --policy-name envctl --policy-document file://apply.json
     - turn the workflow on with three repository variables:
       gh variable set ENVCTL_AWS_PLAN_ROLE_ARN --body arn:aws:iam::ACCOUNT_ID:role/envctl-plan
       gh variable set ENVCTL_AWS_ROLE_ARN --body arn:aws:iam::ACCOUNT_ID:role/envctl-apply
       gh variable set AWS_REGION --body us-east-1   (the Region the policies above name)
     - check the account, the Region and the role before anything is created (read-only):
       envctl doctor --provider aws
  Each step is explained at https://github.com/envctl/envctl#github-actions"#
    )
}
