//! `prune`: delete what git says no longer needs an environment.
//!
//! Observe, read git once (off the runtime's workers: git2 blocks), decide per environment with
//! the pure [`crate::plan::prune::verdict`], show the plan, check `--max-deletions` and
//! confirmation, then per deletion: observe and read git again and decide again, and delete only
//! if a reason still holds, with the tags it was decided on required unchanged on the live
//! resource (an apply since then refreshes `envctl:last-applied`).
//!
//! Fails closed: when git cannot be trusted to say which branches are gone or merged (no `origin`
//! branches, no default branch, a shallow clone where ancestry is needed), nothing is deleted and
//! the command exits 1 saying why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures_util::StreamExt;

use super::{open_provider, plural, print_stdout};
use crate::cancel::Cancel;
use crate::cli::{Cli, PruneArgs};
use crate::git::Git;
use crate::model::{
    Action, ActionKind, ClusterId, DeleteReason, ObservedEnv, Owner, Plan, Summary, Wanted, tags,
};
use crate::plan::prune::{
    BranchState, Fetched, GitView, Kept, PruneReport, PruneResult, PruneSummary, Refused, Verdict,
    verdict,
};
use crate::plan::render::{self, Style};
use crate::plan::{self as planner, PlanInput, PlanOptions};
use crate::provider::{AnyProvider, DeleteOptions, Leftover, Provider, ProviderError};
use crate::report::error_chain;
use crate::report::{Exit, Progress, Reporter, UserError};
use crate::settings::{Settings, default_branch};
use crate::spec;

/// How many deletes run at once (each waits until its environment is gone).
const CONCURRENCY: usize = 4;

/// The tags a deletion is decided on: they must be unchanged on the live resource when it goes.
const DECIDED_ON: [&str; 5] = [
    tags::BRANCH,
    tags::LAST_APPLIED,
    tags::BASE,
    tags::TTL,
    tags::PROTECT,
];

/// Why git cannot be trusted for this prune: nothing is deleted.
struct Closed {
    message: String,
    hint: String,
}

impl Closed {
    fn new(message: impl Into<String>, hint: impl Into<String>) -> Closed {
        Closed {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// What git says, read once.
struct Facts {
    view: GitView,
    /// The id derived for every branch git knows, for telling whose an untagged leftover is.
    ids: BTreeMap<ClusterId, String>,
    notes: Vec<String>,
}

/// Where a branch's wants are read from.
struct Reading<'a> {
    root: &'a Path,
    owner: &'a Owner,
    /// Local branches count as live (the local provider): the current branch even before its
    /// first commit, with its wants read from the working tree as apply reads them.
    local_too: bool,
}

/// Reads what prune needs from git about `branches`, or says why it cannot be trusted.
fn read_git(reading: &Reading, branches: &BTreeSet<String>) -> Result<Facts, Closed> {
    let Reading {
        root,
        owner,
        local_too,
    } = *reading;
    let nothing = "; nothing was deleted";
    let git = Git::open(root).map_err(|e| {
        Closed::new(
            format!("{}{nothing}", error_chain(&e)),
            "run prune in a clone of the repository",
        )
    })?;
    let refs = git
        .check_loose_refs()
        .and_then(|()| git.refs())
        .map_err(|e| {
            Closed::new(
                format!("{}{nothing}", error_chain(&e)),
                "check the repository with `git fsck`",
            )
        })?;
    let fetch_all = "in GitHub Actions, check out with `fetch-depth: 0`";
    let mut notes = Vec::new();
    // A shallow clone cannot answer ancestry, and one made by a default checkout holds only the
    // branch it checked out: whatever it lacks would look deleted.
    if git.is_shallow() {
        return Err(Closed::new(
            format!(
                "this clone is shallow: it may lack branches, and cannot tell which were merged{nothing}"
            ),
            format!(
                "fetch the whole history and every branch (`git fetch --unshallow origin`; {fetch_all})"
            ),
        ));
    }
    if !git.has_origin() {
        if !local_too {
            return Err(Closed::new(
                format!(
                    "there is no `origin` remote, so prune cannot tell which branches were deleted{nothing}"
                ),
                "run prune in a clone of the repository (`git remote add origin URL && git fetch origin`)",
            ));
        }
        notes.push(
            "note: there is no `origin` remote: local branches alone say which branches are live"
                .to_owned(),
        );
    } else {
        // Every URL origin is configured with, as written, and the one fetches go to after
        // `insteadOf`: each must name the repository.
        for url in git.origin_urls() {
            if !crate::git::is_hosted_url(&url) {
                continue;
            }
            let hint = format!(
                "run prune in a clone of `{}`, or check --repo, ENVCTL_REPO and GITHUB_REPOSITORY",
                owner.repo
            );
            match crate::git::repo_name_from_url(&url) {
                Some(name) if name.eq_ignore_ascii_case(owner.repo.as_str()) => {}
                Some(name) => {
                    return Err(Closed::new(
                        format!(
                            "`origin` is `{name}`, but the environments are `{}`'s: a clone of another repository (a fork?) cannot say which of its branches are gone{nothing}",
                            owner.repo
                        ),
                        hint,
                    ));
                }
                None => {
                    return Err(Closed::new(
                        format!(
                            "`origin`'s URL `{}` names no OWNER/NAME, so prune cannot tell it is `{}`{nothing}",
                            if url.contains("://") {
                                crate::report::redact_url(&url)
                            } else {
                                url.clone()
                            },
                            owner.repo
                        ),
                        hint,
                    ));
                }
            }
        }
        if !git.fetches_every_branch() {
            return Err(Closed::new(
                format!(
                    "this clone does not fetch every branch of `origin` (a single-branch clone?), so a branch it lacks would look deleted{nothing}"
                ),
                format!(
                    "`git config remote.origin.fetch '+refs/heads/*:refs/remotes/origin/*' && git fetch origin` ({fetch_all})"
                ),
            ));
        }
        if refs.remote.is_empty() {
            return Err(Closed::new(
                format!(
                    "`origin` has no branches in this clone, so every environment's branch would look deleted{nothing}"
                ),
                format!("fetch them first (`git fetch origin`; {fetch_all})"),
            ));
        }
    }
    let Some(default) = default_branch(&git) else {
        return Err(Closed::new(
            format!(
                "cannot tell the default branch, which prune never deletes and measures \"merged\" against{nothing}"
            ),
            "set ENVCTL_DEFAULT_BRANCH (e.g. `main`), or run `git remote set-head origin --auto`",
        ));
    };
    let tips_of = |branch: &str| {
        let mut tips: Vec<git2::Oid> = refs.remote.get(branch).copied().into_iter().collect();
        if local_too
            && let Some(local) = refs.local.get(branch)
            && !tips.contains(local)
        {
            tips.push(*local);
        }
        tips
    };
    let default_tips = tips_of(&default);
    if default_tips.is_empty() {
        let place = if local_too {
            "neither on `origin` nor a local branch"
        } else {
            "not on `origin`"
        };
        return Err(Closed::new(
            format!("the default branch `{default}` is {place}{nothing}"),
            format!(
                "check ENVCTL_DEFAULT_BRANCH and `origin/HEAD`, or fetch `{default}` ({fetch_all})"
            ),
        ));
    }
    // The working tree's branch, for the local provider: live even before its first commit.
    let current = local_too.then(|| git.current_branch().ok()).flatten();
    let mut by_commit: BTreeMap<git2::Oid, Wanted> = BTreeMap::new();
    let mut working_tree: Option<Wanted> = None;
    let mut states = BTreeMap::new();
    for branch in branches {
        let tips = tips_of(branch);
        let is_current = current.as_deref() == Some(branch.as_str());
        if tips.is_empty() && !is_current {
            // `origin/a` and `origin/a/b` cannot both be stored: a fetch that met `a/b` on
            // origin while `a` was still here failed for that one ref (and wrote the others).
            let inside = |path: &str, dir: &str| {
                path.strip_prefix(dir)
                    .is_some_and(|rest| rest.starts_with('/'))
            };
            let blocked_by = refs
                .remote
                .keys()
                .find(|other| inside(branch, other) || inside(other, branch));
            let state = match blocked_by {
                Some(other) => BranchState::Unseen(format!(
                    "its branch is not under `refs/remotes/origin`, but `origin/{other}` there would keep a fetch from storing it, so it may still be on origin; `git fetch --prune origin`, then prune again"
                )),
                None => BranchState::Gone,
            };
            states.insert(branch.clone(), state);
            continue;
        }
        let mut in_default = !tips.is_empty();
        for tip in &tips {
            let mut merged = false;
            for default_tip in &default_tips {
                merged |= git.is_ancestor(*tip, *default_tip).map_err(|e| {
                    Closed::new(
                        format!("{}{nothing}", error_chain(&e)),
                        format!("check the repository with `git fsck`, and fetch the whole history ({fetch_all})"),
                    )
                })?;
            }
            in_default &= merged;
        }
        // What the branch wants: covered by any of its trees (the working tree for the current
        // branch of a local run) is covered.
        let mut wants = Vec::new();
        if is_current {
            let wanted =
                working_tree.get_or_insert_with(|| {
                    match crate::settings::read_working_tree(root) {
                        Ok(files) => wanted_of(&files, branch, owner, "the working tree"),
                        Err(e) => Wanted::Unknown {
                            reason: format!("{e:#}"),
                        },
                    }
                });
            wants.push(wanted.clone());
        }
        for tip in &tips {
            if !by_commit.contains_key(tip) {
                let wanted = match git.tree_at(*tip, branch) {
                    Ok(tree) => wanted_of(
                        &tree.files,
                        branch,
                        owner,
                        &format!("commit {}", &tree.commit[..12.min(tree.commit.len())]),
                    ),
                    Err(e) => Wanted::Unknown {
                        reason: error_chain(&e),
                    },
                };
                by_commit.insert(*tip, wanted);
            }
            wants.push(by_commit[tip].clone());
        }
        let wanted = if wants.iter().any(|w| matches!(w, Wanted::Env(_))) {
            wants.into_iter().find(|w| matches!(w, Wanted::Env(_)))
        } else if let Some(unknown) = wants.iter().find(|w| matches!(w, Wanted::Unknown { .. })) {
            Some(unknown.clone())
        } else {
            wants.into_iter().next()
        };
        states.insert(
            branch.clone(),
            BranchState::Live {
                tips: tips.iter().map(git2::Oid::to_string).collect(),
                in_default,
                wanted,
            },
        );
    }
    let ids = refs
        .remote
        .keys()
        .chain(refs.local.keys())
        .map(|b| (ClusterId::derive(&owner.prefix, &owner.repo, b), b.clone()))
        .collect();
    Ok(Facts {
        view: GitView {
            default_branch: default,
            local_too,
            branches: states,
            fetched: match (
                git.has_origin(),
                git.fetched_at(owner.repo.as_str(), SystemTime::now()),
            ) {
                (false, _) => Fetched::NoOrigin,
                (true, Some(at)) => Fetched::At(at),
                (true, None) => Fetched::Unknown,
            },
        },
        ids,
        notes,
    })
}

/// What a tree's specs want for `branch`: an invalid tree cannot say.
fn wanted_of(files: &spec::RepoFiles, branch: &str, owner: &Owner, place: &str) -> Wanted {
    match spec::load(files) {
        Ok(catalog) => match catalog.desired_for(branch, &owner.repo, &owner.prefix) {
            Ok(None) => Wanted::Nothing,
            Ok(Some(desired)) => Wanted::Env(Box::new(desired)),
            Err(reason) => Wanted::Unknown { reason },
        },
        Err(found) => Wanted::Unknown {
            reason: format!(
                "its specs in {place} have {} error{}",
                found.len(),
                plural(found.len())
            ),
        },
    }
}

/// One deletion: an environment, or a leftover of an interrupted create.
enum Target {
    Env { branch: String },
    Leftover(Leftover),
}

pub async fn prune(
    cli: &Cli,
    args: &PruneArgs,
    reporter: &Reporter,
    cancel: Cancel,
) -> anyhow::Result<Exit> {
    let settings = Settings::resolve(cli)?;
    if settings.git.is_none() {
        return Err(UserError::with_hint(
            format!(
                "`{}` is not a git repository; prune deletes by what git says of branches",
                settings.root.display()
            ),
            "run prune in a clone of the repository, or `envctl destroy --branch B` for one environment",
        )
        .into());
    }
    let provider = open_provider(cli, &settings, args.wait_timeout, reporter).await?;
    let local_too = provider.serves_local_branches();
    let owner = settings.owner();
    let observed = super::observe(&provider, &settings).await?;
    let leftovers = provider
        .leftovers(&owner)
        .await
        .context("cannot list the leftovers of interrupted creates")?;
    let branches: BTreeSet<String> = observed.iter().filter_map(ObservedEnv::branch).collect();
    let reading = Reading {
        root: &settings.root,
        owner: &owner,
        local_too,
    };
    let facts = match tokio::task::block_in_place(|| read_git(&reading, &branches)) {
        Ok(facts) => facts,
        Err(closed) => {
            let refused = UserError::with_hint(closed.message, closed.hint);
            // Nothing was planned: the report says why, with no actions.
            let empty = Plan {
                format_version: planner::FORMAT_VERSION,
                provider: provider.name().to_owned(),
                repo: owner.repo.clone(),
                prefix: owner.prefix.as_str().to_owned(),
                scope: Vec::new(),
                options: Default::default(),
                observed_fingerprint: String::new(),
                actions: Vec::new(),
                summary: Summary::default(),
                sources: BTreeMap::new(),
                uncovered: Vec::new(),
            };
            let output = Output {
                plan: &empty,
                kept: &[],
                default_branch: None,
                dry_run: args.dry_run,
                json: args.json,
                markdown: args.markdown,
            };
            output.print(None, Some(&refused))?;
            return Err(refused.into());
        }
    };
    for note in &facts.notes {
        reporter.note(note);
    }
    reporter.detail(&format!(
        "observed {} live environment{} of {} under prefix `{}`; default branch `{}`",
        observed.len(),
        plural(observed.len()),
        settings.repo,
        settings.prefix.as_str(),
        facts.view.default_branch
    ));

    // Decide.
    let now = SystemTime::now();
    let mut deletions = BTreeMap::new();
    let mut kept = Vec::new();
    let mut targets: BTreeMap<ClusterId, Target> = BTreeMap::new();
    for env in &observed {
        let branch = env.branch();
        match verdict(env, &facts.view, now) {
            Verdict::Delete(reason) => {
                deletions.insert(env.cluster_id.clone(), reason);
                targets.insert(
                    env.cluster_id.clone(),
                    Target::Env {
                        branch: branch.unwrap_or_default(),
                    },
                );
            }
            Verdict::Kept { reason, why } => kept.push(Kept::new(
                branch,
                Some(env.env_name()),
                env.cluster_id.clone(),
                reason.to_string(),
                why,
            )),
            Verdict::Stays(why) => {
                reporter.detail(&format!(
                    "keeps {} ({}): {why}",
                    branch.as_deref().unwrap_or("-"),
                    env.cluster_id
                ));
            }
        }
    }
    let mut leftover_actions = Vec::new();
    for mut leftover in leftovers {
        if leftover.branch.is_none() {
            leftover.branch = facts.ids.get(&leftover.cluster_id).cloned();
        }
        let id = ClusterId::from_live(leftover.name.clone());
        let reason = DeleteReason::Leftover.to_string();
        let age = leftover
            .created_at
            .and_then(|created| now.duration_since(created).ok());
        let young = leftover.created_at.is_some() && age.is_none_or(|a| a < args.wait_timeout);
        let keep = |branch: Option<String>, why: String| {
            Kept::new(branch, None, id.clone(), reason.clone(), why)
        };
        match &leftover.branch {
            // Under this prefix, but nothing says whose: possibly another repository's sharing
            // the server. Not ours to delete or to list.
            None => reporter.detail(&format!(
                "leaves `{id}`: an untagged leftover of an interrupted create whose name is not the id of any branch git knows (another repository's?); drop it by hand if it is yours"
            )),
            // Its name must be the id of the branch its tags name (as the delete checks again).
            Some(branch)
                if ClusterId::derive(&owner.prefix, &owner.repo, branch) != leftover.cluster_id =>
            {
                kept.push(keep(
                    Some(branch.clone()),
                    format!("its name is not the id envctl derives for `{branch}`; drop it by hand if it is yours"),
                ))
            }
            Some(branch) if young => kept.push(keep(
                Some(branch.clone()),
                format!(
                    "it was made {} ago, less than --wait-timeout {}: a create may still be at work",
                    humantime::format_duration(Duration::from_secs(
                        age.unwrap_or_default().as_secs()
                    )),
                    humantime::format_duration(args.wait_timeout)
                ),
            )),
            Some(branch) => {
                leftover_actions.push(Action {
                    kind: ActionKind::Delete {
                        reason: reason.clone(),
                    },
                    branch: branch.clone(),
                    env: "-".into(),
                    cluster_id: id.clone(),
                });
                targets.insert(id.clone(), Target::Leftover(leftover));
            }
        }
    }
    let scope = BTreeMap::new();
    let mut plan = planner::plan(
        &PlanInput {
            provider: provider.name(),
            owner: &owner,
            scope: &scope,
            observed: &observed,
        },
        &PlanOptions {
            extra_deletions: deletions,
            ..PlanOptions::default()
        },
    )
    .map_err(|e| UserError::new(e.to_string()))?;
    plan.actions.extend(leftover_actions);
    plan.actions.sort_by(|a, b| a.branch.cmp(&b.branch));
    plan.summary = Summary::of(&plan.actions);

    let output = Output {
        plan: &plan,
        kept: &kept,
        default_branch: Some(&facts.view.default_branch),
        dry_run: args.dry_run,
        json: args.json,
        markdown: args.markdown,
    };
    let over_limit =
        (plan.actions.len() > args.max_deletions).then(|| limit_error(&plan, args.max_deletions));
    if args.dry_run {
        if !args.json && !args.markdown {
            let style = Style {
                color: reporter.stdout_color(cli.color),
            };
            emit(&render::prune_text(&plan, &kept, style))?;
        } else {
            output.print(None, over_limit.as_ref())?;
        }
        if let Some(refused) = over_limit {
            return Err(refused.into());
        }
        return Ok(if args.detailed_exitcode && !plan.is_empty() {
            Exit::Changes
        } else {
            Exit::Success
        });
    }
    if !args.json && !args.markdown && !reporter.quiet {
        let style = Style {
            color: reporter.color,
        };
        say!("{}", render::prune_text(&plan, &kept, style).trim_end());
    }
    if let Some(refused) = over_limit {
        output.print(None, Some(&refused))?;
        return Err(refused.into());
    }
    if plan.is_empty() {
        output.print(Some(&[]), None)?;
        return Ok(Exit::Success);
    }
    let limits = super::policy::Limits {
        max_deletions: args.max_deletions,
        max_environments: usize::MAX,
    };
    let checked = super::policy::check_saying(
        &plan, &observed, &limits, args.yes, reporter, &cancel, "deletes",
    )
    .await;
    match checked {
        Ok(None) => {}
        Ok(Some(exit)) => {
            let refused = UserError::new("the deletions were not confirmed");
            output.print(None, Some(&refused))?;
            return Ok(exit);
        }
        Err(e) => {
            if let Some(refused) = e.downcast_ref::<UserError>() {
                output.print(None, Some(refused))?;
            }
            return Err(e);
        }
    }

    // Delete, each after deciding again on fresh facts.
    let progress = Progress::new(reporter);
    let run = Run {
        root: &settings.root,
        owner: &owner,
        provider: &provider,
        local_too,
        wait_timeout: args.wait_timeout,
        progress: &progress,
        cancel: &cancel,
    };
    let results: Vec<PruneResult> = futures_util::stream::iter(plan.actions.iter())
        .map(|action| run.one(action, &targets))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let count = |status: &str| results.iter().filter(|r| r.status == status).count();
    for result in &results {
        let (head, text) = match (result.status, &result.reason, &result.error) {
            ("deleted", Some(reason), _) => ("ok", format!("deleted ({reason})")),
            ("gone", _, _) => ("ok", "already gone".to_owned()),
            ("kept", Some(why), _) => ("kept", why.clone()),
            ("not_started", _, _) => ("skipped", "interrupted before it started".to_owned()),
            (_, _, Some(error)) => ("failed", error.clone()),
            (status, _, _) => (status, String::new()),
        };
        let line = format!(
            "{head:<8}{} ({}): {}",
            crate::report::visible(&result.branch),
            result.cluster_id,
            crate::report::visible(&text)
        );
        match head {
            "failed" | "skipped" => say!("{line}"),
            _ => reporter.note(&line),
        }
    }
    let (deleted, failed) = (count("deleted"), count("failed") + count("not_started"));
    let not_started = match count("not_started") {
        0 => String::new(),
        n => format!(", {n} not started"),
    };
    reporter.note(&format!(
        "Prune: {deleted} deleted, {} kept after looking again, {} already gone, {} failed{not_started}.",
        count("kept"),
        count("gone"),
        count("failed"),
    ));
    output.print(Some(&results), None)?;
    Ok(if failed > 0 {
        Exit::Failed
    } else if args.detailed_exitcode && deleted > 0 {
        Exit::Changes
    } else {
        Exit::Success
    })
}

/// What `--json` and `--markdown` print, whatever the outcome: the plan, what is kept, and what
/// happened or why nothing was deleted.
struct Output<'a> {
    plan: &'a Plan,
    kept: &'a [Kept],
    default_branch: Option<&'a str>,
    dry_run: bool,
    json: bool,
    markdown: bool,
}

impl Output<'_> {
    fn print(
        &self,
        results: Option<&[PruneResult]>,
        refused: Option<&UserError>,
    ) -> anyhow::Result<()> {
        if !self.json && !self.markdown {
            return Ok(());
        }
        let report = PruneReport {
            format_version: planner::FORMAT_VERSION,
            provider: &self.plan.provider,
            repo: &self.plan.repo,
            prefix: &self.plan.prefix,
            default_branch: self.default_branch,
            dry_run: self.dry_run,
            actions: &self.plan.actions,
            summary: PruneSummary {
                delete: self.plan.actions.len(),
                kept: self.kept.len(),
            },
            kept: self.kept,
            results,
            refused: refused.map(|e| Refused {
                message: e.message.clone(),
                hint: e.hint.clone(),
            }),
        };
        if self.json {
            let text = serde_json::to_string_pretty(&report).expect("a report serializes");
            emit(&format!("{text}\n"))
        } else {
            emit(&render::prune_markdown(&report))
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) does not change how prune ends: its exit
/// code still says whether it deleted, refused or failed.
fn emit(text: &str) -> anyhow::Result<()> {
    match print_stdout(text) {
        Err(e) if crate::is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// More would go than `--max-deletions` allows: they are listed, nothing is deleted.
fn limit_error(plan: &Plan, max: usize) -> UserError {
    let listed = plan
        .actions
        .iter()
        .map(|a| format!("{} ({})", a.branch, a.cluster_id))
        .collect::<Vec<_>>()
        .join(", ");
    UserError::with_hint(
        format!(
            "prune would delete {} environment{} ({listed}), more than `--max-deletions` {max}; nothing was deleted",
            plan.actions.len(),
            plural(plan.actions.len())
        ),
        format!(
            "review them, then pass `--max-deletions {}` if they should all go",
            plan.actions.len()
        ),
    )
}

/// What every deletion shares.
struct Run<'a> {
    root: &'a Path,
    owner: &'a Owner,
    provider: &'a AnyProvider,
    local_too: bool,
    wait_timeout: Duration,
    progress: &'a Progress,
    cancel: &'a Cancel,
}

impl Run<'_> {
    async fn one(&self, action: &Action, targets: &BTreeMap<ClusterId, Target>) -> PruneResult {
        let result =
            |status: &'static str, reason: Option<String>, error: Option<String>| PruneResult {
                branch: action.branch.clone(),
                env: action.env.clone(),
                cluster_id: action.cluster_id.clone(),
                status,
                reason,
                error,
            };
        if self.cancel.is_requested() {
            return result(
                "not_started",
                None,
                Some("interrupted before it started".into()),
            );
        }
        let outcome = match targets.get(&action.cluster_id) {
            Some(Target::Leftover(leftover)) => self.leftover(action, leftover).await,
            Some(Target::Env { branch }) => self.env(action, branch).await,
            None => Err("internal error: no target for this action".to_owned()),
        };
        self.progress.finish(&action.branch);
        match outcome {
            Ok(Done::Deleted(reason)) => result("deleted", Some(reason), None),
            Ok(Done::Gone) => result("gone", None, None),
            Ok(Done::Kept(why)) => result("kept", Some(why), None),
            Err(message) => result("failed", None, Some(message)),
        }
    }

    async fn leftover(&self, action: &Action, leftover: &Leftover) -> Result<Done, String> {
        self.progress
            .step(&action.branch, &format!("deleting {}", leftover.name));
        match self
            .provider
            .delete_leftover(self.owner, leftover, self.wait_timeout)
            .await
        {
            Ok(true) => Ok(Done::Deleted(DeleteReason::Leftover.to_string())),
            Ok(false) => Ok(Done::Kept(
                "no longer a leftover of ours old enough to delete, or a create is at work on it"
                    .into(),
            )),
            Err(e) => Err(error_chain(&e)),
        }
    }

    async fn env(&self, action: &Action, branch: &str) -> Result<Done, String> {
        let id = &action.cluster_id;
        self.progress.step(branch, "checking again");
        // Decide again on what is live and what git says now.
        let observed = self
            .provider
            .observe(self.owner)
            .await
            .map_err(|e| error_chain(&e))?;
        let Some(live) = observed.iter().find(|o| &o.cluster_id == id) else {
            return Ok(Done::Gone);
        };
        if live.branch().as_deref() != Some(branch) {
            return Ok(Done::Kept(
                "its `envctl:branch` tag changed since the plan".into(),
            ));
        }
        let branches = BTreeSet::from([branch.to_owned()]);
        let reading = Reading {
            root: self.root,
            owner: self.owner,
            local_too: self.local_too,
        };
        let facts = match tokio::task::block_in_place(|| read_git(&reading, &branches)) {
            Ok(facts) => facts,
            // Git cannot be trusted now: nothing is deleted, and the run fails.
            Err(closed) => return Err(format!("{} (hint: {})", closed.message, closed.hint)),
        };
        let reason = match verdict(live, &facts.view, SystemTime::now()) {
            Verdict::Delete(reason) => reason,
            Verdict::Kept { why, .. } => return Ok(Done::Kept(why)),
            Verdict::Stays(why) => {
                return Ok(Done::Kept(format!("no reason holds any more: {why}")));
            }
        };
        let unchanged = DECIDED_ON
            .iter()
            .map(|key| (key.to_string(), live.tag(key).map(str::to_owned)))
            .collect();
        self.progress.step(branch, &format!("deleting {id}"));
        let options = DeleteOptions {
            force: false,
            wait_timeout: self.wait_timeout,
            unchanged,
        };
        match self.provider.delete(self.owner, id, options).await {
            Ok(()) => Ok(Done::Deleted(reason.to_string())),
            Err(ProviderError::Changed { what, .. }) => Ok(Done::Kept(what)),
            Err(ProviderError::NotFound(_)) => Ok(Done::Gone),
            Err(e @ (ProviderError::Protected(_) | ProviderError::DeletionProtected(_))) => {
                Ok(Done::Kept(e.to_string()))
            }
            Err(e) => Err(error_chain(&e)),
        }
    }
}

/// How one deletion ended, short of failing.
enum Done {
    Deleted(String),
    Gone,
    Kept(String),
}
