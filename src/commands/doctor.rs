//! `doctor`: read-only checks, in order, of what a first run needs: git, the specs, the
//! provider, and the provider's own checks (`provider::doctor`). Prints one line each and exits 1
//! when any failed. Creates, changes and deletes nothing, and connects to no database.

use std::time::SystemTime;

use super::print_stdout;
use crate::cli::{Cli, DoctorArgs};
use crate::git::Git;
use crate::model::{Check, SpecAsk};
use crate::plan::render::{self, Style};
use crate::provider::{DoctorInput, doctor as provider_doctor};
use crate::report::{Exit, Reporter};
use crate::settings::{Settings, default_branch, read_working_tree, repository_root};
use crate::spec;

pub async fn doctor(cli: &Cli, args: &DoctorArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let (root, git) = repository_root(&cli.directory)?;
    let settings = Settings::resolve(cli).ok();
    let owner = settings.as_ref().map(Settings::owner);
    let mut checks = git_checks(&root, git.as_ref(), settings.as_ref(), cli);
    let specs = spec_checks(&root, &mut checks);
    checks.push(Check::ok(
        "provider",
        format!("{} (--provider, ENVCTL_PROVIDER)", cli.provider.name()),
    ));
    let input = DoctorInput {
        root: &root,
        git: git.as_ref(),
        owner: owner.as_ref(),
        specs: &specs,
    };
    checks.extend(provider_doctor(cli.provider, &input).await);
    let failed = checks.iter().any(Check::is_failed);
    if args.json {
        let report = serde_json::json!({ "format_version": 1, "ok": !failed, "checks": checks });
        let text = serde_json::to_string_pretty(&report).expect("json");
        print_stdout(&format!("{text}\n"))?;
    } else {
        let style = Style {
            color: reporter.stdout_color(cli.color),
        };
        print_stdout(&render::doctor(&checks, style))?;
    }
    Ok(if failed { Exit::Failed } else { Exit::Success })
}

/// The repository, `origin`, the default branch, the history, and prune's view of the branches.
fn git_checks(
    root: &std::path::Path,
    git: Option<&Git>,
    settings: Option<&Settings>,
    cli: &Cli,
) -> Vec<Check> {
    let Some(git) = git else {
        return vec![Check::failed(
            "git repository",
            format!("`{}` is not in a git repository", root.display()),
            "run envctl in a clone of the repository (plans of branches, prune and the workflow need git)",
        )];
    };
    let mut checks = vec![Check::ok("git repository", root.display().to_string())];
    let repo = settings.map(|s| s.repo.as_str().to_owned());
    match (git.origin_repo_name(), &repo) {
        (Some(origin), Some(repo)) if origin.eq_ignore_ascii_case(repo) => {
            checks.push(Check::ok("git origin", origin))
        }
        (Some(origin), Some(repo)) => checks.push(Check::failed(
            "git origin",
            format!("`origin` is `{origin}`, but the environments are `{repo}`'s"),
            "run envctl in a clone of that repository, or check --repo, ENVCTL_REPO and GITHUB_REPOSITORY",
        )),
        (Some(origin), None) => checks.push(Check::ok("git origin", origin)),
        (None, _) if !cli.provider.signs_iam_tokens() => checks.push(Check::skipped(
            "git origin",
            "no `origin` remote: local branches alone say which branches are live",
        )),
        (None, Some(_)) => checks.push(Check::skipped(
            "git origin",
            "no `origin` remote: plans and applies go by --repo, but prune needs a clone of the repository",
        )),
        (None, None) => checks.push(Check::failed(
            "git origin",
            "there is no `origin` remote naming OWNER/NAME",
            "`git remote add origin URL && git fetch origin`, or pass --repo",
        )),
    }
    if repo.is_none() {
        checks.push(Check::failed(
            "repository",
            "cannot tell which repository owns the environments",
            "pass `--repo OWNER/NAME`, set ENVCTL_REPO, or add an `origin` remote",
        ));
    }
    match default_branch(git) {
        // A name git does not know (a typo in ENVCTL_DEFAULT_BRANCH, `refs/heads/main`) would
        // make every data branch's source and every "merged" wrong.
        Some(branch) if git.branch_tip(&branch).is_none() && git.head_commit().is_some() => {
            checks.push(Check::failed(
                "default branch",
                format!("`{branch}` is neither on `origin` nor a local branch"),
                "set ENVCTL_DEFAULT_BRANCH to a branch's short name (e.g. `main`), or unset it and run `git remote set-head origin --auto`",
            ))
        }
        Some(branch) => checks.push(Check::ok("default branch", branch)),
        None => checks.push(Check::failed(
            "default branch",
            "cannot tell the default branch (no ENVCTL_DEFAULT_BRANCH, no `origin/HEAD`)",
            "set ENVCTL_DEFAULT_BRANCH (e.g. `main`), or run `git remote set-head origin --auto`",
        )),
    }
    if git.is_shallow() {
        checks.push(Check::failed(
            "git history",
            "this clone is shallow: prune cannot tell merged branches, nor all deleted ones",
            "`git fetch --unshallow origin` (in GitHub Actions, check out with `fetch-depth: 0`)",
        ));
        return checks;
    }
    checks.push(Check::ok("git history", "full"));
    if !git.has_origin() {
        return checks;
    }
    let view = match (
        git.fetches_every_branch(),
        repo.as_deref()
            .and_then(|r| git.fetched_at(r, SystemTime::now())),
    ) {
        (false, _) => Check::failed(
            "prune's view",
            "this clone does not fetch every branch of `origin` (a single-branch clone?)",
            "`git config remote.origin.fetch '+refs/heads/*:refs/remotes/origin/*' && git fetch origin`",
        ),
        (true, None) => Check::failed(
            "prune's view",
            "nothing says when this clone last fetched every branch from `origin`, so prune trusts no git reason here (only ttls)",
            "prune from a fresh clone (the scheduled workflow does), or `git fetch origin` once it brings a change: a fetch that updates no branch leaves no record of when it ran",
        ),
        (true, Some(at)) => Check::ok(
            "prune's view",
            format!(
                "every branch of `origin`, fetched at {}",
                humantime::format_rfc3339_seconds(at)
            ),
        ),
    };
    checks.push(view);
    checks
}

/// The specs, migrations and seeds of the working tree; what the valid specs ask.
fn spec_checks(root: &std::path::Path, checks: &mut Vec<Check>) -> Vec<SpecAsk> {
    let files = match read_working_tree(root) {
        Ok(files) => files,
        Err(e) => {
            let hint = e
                .downcast_ref::<crate::report::UserError>()
                .and_then(|u| u.hint.clone())
                .unwrap_or_else(|| "`envctl validate` says more".into());
            checks.push(Check::failed("specs", format!("{e:#}"), hint));
            return Vec::new();
        }
    };
    match spec::load(&files) {
        Ok(catalog) => {
            checks.push(Check::ok(
                "specs",
                format!(
                    "{} environment file{}, {} migration{}, {} seed file{}",
                    catalog.specs.len(),
                    super::plural(catalog.specs.len()),
                    catalog.migrations.len(),
                    super::plural(catalog.migrations.len()),
                    catalog.seeds.len(),
                    super::plural(catalog.seeds.len()),
                ),
            ));
            catalog
                .specs
                .iter()
                .map(|s| SpecAsk {
                    name: s.name.clone(),
                    engine_version: s.cluster.engine_version.clone(),
                    scaling: s.cluster.scaling,
                })
                .collect()
        }
        Err(diagnostics) => {
            let first = diagnostics
                .first()
                .map(|d| format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message))
                .unwrap_or_default();
            checks.push(Check::failed(
                "specs",
                format!(
                    "{} error{}, the first: {first}",
                    diagnostics.len(),
                    super::plural(diagnostics.len())
                ),
                "`envctl validate` shows every error",
            ));
            Vec::new()
        }
    }
}
