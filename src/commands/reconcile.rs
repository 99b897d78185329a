//! `plan`, `apply`, `destroy` and `reset`: observe, load what the branches in scope want, read the
//! ledgers the plan needs, call the planner, render, and (except `plan`) check policy and execute
//! through `apply`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use super::outputs::{finish, show_plan};
use super::policy::{self, Limits};
use super::{DEFAULT_WAIT, open_provider, plural, print_stdout, saved_plan};
use crate::apply::{ApplyOptions, Executor};
use crate::cancel::Cancel;
use crate::cli::{ApplyArgs, Cli, DestroyArgs, PlanArgs, ResetArgs, ScopeArgs};
use crate::model::{
    ActionKind, DeleteReason, Field, ObservedEnv, Plan, PlanFlags, SourceKind, Wanted, tags,
};
use crate::plan::render::{self, Style};
use crate::plan::{self as planner, PlanInput, PlanOptions};
use crate::provider::{AnyProvider, Provider};
use crate::report::error_chain;
use crate::report::{Exit, Progress, Reporter, UserError};
use crate::settings::{InvalidSpecs, Scope, ScopeError, Settings};

/// What apply's destructive actions do, as its confirmation says.
const DESTROYS: &str = "deletes or empties data";

/// Everything a plan was made from.
pub(super) struct Planned {
    pub(super) settings: Settings,
    pub(super) provider: AnyProvider,
    pub(super) observed: Vec<ObservedEnv>,
    pub(super) scope: Scope,
    pub(super) plan: Plan,
    /// The branches were named (or current): a push of them, whose recorded base moves to their
    /// tip when they have no commits of their own now.
    named: bool,
    /// The commit each branch was read at, read once: the plan is guarded by it and apply
    /// records it (`envctl:commit`).
    commits: BTreeMap<String, git2::Oid>,
}

/// Which branches are in scope.
pub(super) enum Branches {
    Current,
    Named(Vec<String>),
    /// Every branch git knows that wants or has an environment.
    All,
    /// The branches a saved plan names, exactly (even none).
    Saved(Vec<String>),
}

impl Branches {
    fn of(args: &ScopeArgs) -> Branches {
        match (&args.branch, args.all) {
            (_, true) => Branches::All,
            (Some(b), false) => Branches::Named(vec![b.clone()]),
            (None, false) => Branches::Current,
        }
    }
}

pub(super) async fn make_plan(
    cli: &Cli,
    branches: Branches,
    options: &PlanOptions,
    timeout: Duration,
    reporter: &Reporter,
) -> anyhow::Result<Result<Planned, Exit>> {
    let settings = Settings::resolve(cli)?;
    let explicit = match &branches {
        Branches::Current => Some(vec![settings.branch_or_current(None)?]),
        Branches::Named(names) => {
            for name in names {
                settings.branch_or_current(Some(name))?;
            }
            Some(names.clone())
        }
        Branches::Saved(names) => Some(names.clone()),
        Branches::All => None,
    };
    let provider = open_provider(cli, &settings, timeout, reporter).await?;
    let mut observed = super::observe(&provider, &settings).await?;
    reporter.detail(&format!(
        "observed {} live environment{} of {} under prefix `{}` on the {} provider",
        observed.len(),
        plural(observed.len()),
        settings.repo,
        settings.prefix.as_str(),
        provider.name()
    ));
    // Invalid specs in the tree of one branch among many block that branch only.
    let invalid = match branches {
        Branches::All | Branches::Saved(_) => InvalidSpecs::Block,
        Branches::Current | Branches::Named(_) => InvalidSpecs::Refuse,
    };
    let all = explicit.is_none();
    let named = matches!(branches, Branches::Current | Branches::Named(_));
    let names = match explicit {
        Some(names) => names,
        None => all_branches(&settings, &observed, reporter)?,
    };
    let mut scope = match settings.load_scope(&names, invalid) {
        Ok(scope) => scope,
        Err(ScopeError::Invalid(diagnostics)) => {
            reporter.diagnostics(&diagnostics, true);
            return Ok(Err(Exit::Failed));
        }
        Err(ScopeError::Other(e)) => return Err(e),
    };
    if all {
        // Keep branches that want an environment or have one.
        scope.desired.retain(|branch, wanted| {
            !matches!(wanted, Wanted::Nothing)
                || observed
                    .iter()
                    .any(|o| o.branch().as_deref() == Some(branch.as_str()))
        });
    }
    for branch in &scope.unknown_to_git {
        reporter.note(&format!(
            "note: git does not know branch `{branch}` yet; its specs are read from the working tree"
        ));
    }
    super::ledgers::read_needed(&provider, &scope, &mut observed, timeout, reporter).await;
    let default_branch = settings
        .git
        .as_ref()
        .and_then(crate::settings::default_branch);
    let sources = super::ledgers::sources(
        &provider,
        &scope,
        &observed,
        default_branch.as_deref(),
        options.flags.reset,
        timeout,
        reporter,
    )
    .await;
    let owner = settings.owner();
    let mut input = PlanInput {
        provider: provider.name(),
        owner: &owner,
        scope: &scope.desired,
        observed: &observed,
        engines: &Default::default(),
        default_branch: default_branch.as_deref(),
        sources: &sources,
        occupied: &Default::default(),
    };
    let mut plan = planner::plan(&input, options)?;
    // What holds the ids the plan would create is read only when it creates, and the plan made
    // again with it: a create over someone else's cluster is blocked, never tried.
    let occupied = occupants(&provider, &owner, &plan, reporter).await;
    if !occupied.is_empty() {
        input.occupied = &occupied;
        plan = planner::plan(&input, options)?;
    }
    // What the account offers is read only for what creates a cluster or changes its scaling,
    // once per version, and the plan made again with it.
    let engines = engines_in_play(&provider, &plan, &scope, &observed, reporter).await;
    if !engines.is_empty() {
        input.engines = &engines;
        plan = planner::plan(&input, options)?;
    }
    plan.sources = plan_sources(&scope);
    let commits = guard_stale(&settings, &mut plan, &observed, &scope, options);
    Ok(Ok(Planned {
        settings,
        provider,
        observed,
        scope,
        plan,
        named,
        commits,
    }))
}

/// Blocks `plan`'s resets, replaces and deletes from an older commit of a branch than its
/// environment was last applied from (a re-run of an older workflow, a clone that has not
/// fetched: `stale`). The commit each branch was read at.
fn guard_stale(
    settings: &Settings,
    plan: &mut Plan,
    observed: &[ObservedEnv],
    scope: &Scope,
    options: &PlanOptions,
) -> BTreeMap<String, git2::Oid> {
    let Some(git) = settings.git.as_ref() else {
        return BTreeMap::new();
    };
    let commits = super::stale::read_commits(git, scope);
    let asked = options.flags.reset;
    super::stale::guard(plan, observed, &scope.desired, git, &commits, asked);
    commits
}

/// What the provider offers for the engine versions `plan` creates clusters with or changes the
/// scaling of (nothing read when there are none; a warning when it cannot be read).
async fn engines_in_play(
    provider: &AnyProvider,
    plan: &Plan,
    scope: &Scope,
    observed: &[ObservedEnv],
    reporter: &Reporter,
) -> crate::model::EngineSupportMap {
    let versions = engine_versions_in_play(plan, scope, observed);
    if versions.is_empty() {
        return Default::default();
    }
    provider.engine_support(&versions).await.unwrap_or_else(|e| {
        reporter.warn(&format!(
            "cannot read which engine versions the provider offers ({}); scaling is not checked against them",
            error_chain(&e)
        ));
        Default::default()
    })
}

/// Where each planned branch's specs were read from, as the plan JSON says it.
fn plan_sources(scope: &Scope) -> std::collections::BTreeMap<String, String> {
    scope
        .sources
        .iter()
        .filter(|(branch, _)| scope.desired.contains_key(*branch))
        .map(|(branch, source)| {
            let text = match source {
                SourceKind::WorkingTree => "working-tree".to_owned(),
                SourceKind::Commit(commit) => commit.clone(),
            };
            (branch.clone(), text)
        })
        .collect()
}

/// The ids `plan` creates that something not `owner`'s holds already, with whose it is.
async fn occupants(
    provider: &AnyProvider,
    owner: &crate::model::Owner,
    plan: &Plan,
    reporter: &Reporter,
) -> BTreeMap<crate::model::ClusterId, String> {
    let creates: Vec<_> = plan
        .actions
        .iter()
        .filter(|a| matches!(a.kind, ActionKind::Create { .. }))
        .map(|a| a.cluster_id.clone())
        .collect();
    if creates.is_empty() {
        return BTreeMap::new();
    }
    provider
        .occupants(owner, &creates)
        .await
        .unwrap_or_else(|e| {
            reporter.warn(&format!(
                "cannot read whether the ids to create are free ({}); apply refuses any that is taken",
                error_chain(&e)
            ));
            BTreeMap::new()
        })
}

/// The engine versions whose limits decide this plan: the spec's (`None`: the default) for what
/// it creates or replaces, the live cluster's for a scaling change.
fn engine_versions_in_play(
    plan: &Plan,
    scope: &Scope,
    observed: &[ObservedEnv],
) -> std::collections::BTreeSet<Option<String>> {
    let desired = |branch: &str| scope.desired.get(branch).and_then(Wanted::desired);
    plan.actions
        .iter()
        .filter_map(|action| match &action.kind {
            ActionKind::Create { .. } | ActionKind::Replace { .. } => {
                Some(desired(&action.branch)?.cluster.engine_version.clone())
            }
            ActionKind::Update { changes } if changes.iter().any(|c| c.field == Field::Scaling) => {
                let live = observed
                    .iter()
                    .find(|o| o.cluster_id == action.cluster_id)?;
                Some(Some(live.engine_version.clone()?))
            }
            _ => None,
        })
        .collect()
}

/// `--all`: every branch git knows, plus live environments' branches that git still knows.
fn all_branches(
    settings: &Settings,
    observed: &[ObservedEnv],
    reporter: &Reporter,
) -> anyhow::Result<Vec<String>> {
    if settings.git.is_none() {
        return Err(UserError::with_hint(
            "`--all` needs a git repository",
            "pass `--branch BRANCH`",
        )
        .into());
    }
    let known = settings.branch_names()?;
    for o in observed {
        if let Some(branch) = o.branch()
            && known.binary_search(&branch).is_err()
        {
            reporter.note(&format!(
                "note: `{branch}` ({}) has an environment but git no longer knows the branch; `envctl prune` deletes the environments of deleted branches (`envctl destroy --branch {branch}` this one alone)",
                o.cluster_id
            ));
        }
    }
    Ok(known)
}

fn plan_options(reset: bool, no_reset: bool) -> PlanOptions {
    PlanOptions {
        flags: PlanFlags { reset, no_reset },
        ..PlanOptions::default()
    }
}

pub async fn plan(
    cli: &Cli,
    args: &PlanArgs,
    reporter: &Reporter,
    _cancel: Cancel,
) -> anyhow::Result<Exit> {
    let options = plan_options(args.reset, args.no_reset);
    let branches = Branches::of(&args.scope);
    let planned = match make_plan(cli, branches, &options, DEFAULT_WAIT, reporter).await? {
        Ok(planned) => planned,
        Err(exit) => return Ok(exit),
    };
    let plan = &planned.plan;
    if let Some(path) = &args.out {
        let written = std::fs::File::create(path).and_then(|file| {
            let mut out = std::io::BufWriter::new(file);
            render::json_to(plan, &mut out)?;
            std::io::Write::flush(&mut out)
        });
        written.with_context(|| format!("cannot write the plan to `{}`", path.display()))?;
        reporter.note(&format!(
            "saved the plan to `{}`; apply it with `envctl apply {}`",
            path.display(),
            path.display()
        ));
    }
    let text = if args.json {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        render::json_to(plan, &mut out)?;
        std::io::Write::flush(&mut out)?;
        String::new()
    } else if args.markdown {
        render::markdown(plan)
    } else {
        render::text(
            plan,
            Style {
                color: reporter.stdout_color(cli.color),
            },
        )
    };
    if !text.is_empty() {
        print_stdout(&text)?;
    }
    Ok(if plan.has_blocked() {
        Exit::Failed
    } else if args.detailed_exitcode && !plan.is_empty() {
        Exit::Changes
    } else {
        Exit::Success
    })
}

pub async fn apply(
    cli: &Cli,
    args: &ApplyArgs,
    reporter: &Reporter,
    cancel: Cancel,
) -> anyhow::Result<Exit> {
    apply_as(cli, args, reporter, cancel, "Apply").await
}

/// Apply, closing with `verb` (`reset` is an apply of one branch with `--reset`).
async fn apply_as(
    cli: &Cli,
    args: &ApplyArgs,
    reporter: &Reporter,
    cancel: Cancel,
    verb: &str,
) -> anyhow::Result<Exit> {
    let saved = match &args.plan_file {
        Some(path) => Some(saved_plan::read(path)?),
        None => None,
    };
    let (branches, flags) = match &saved {
        Some(saved) => {
            let given = PlanFlags {
                reset: args.reset,
                no_reset: args.no_reset,
            };
            if (args.reset || args.no_reset) && given != saved.options {
                return Err(UserError::with_hint(
                    "the saved plan was made with other `--reset`/`--no-reset` flags; nothing was applied",
                    "apply a saved plan without those flags: it carries its own",
                )
                .into());
            }
            (Branches::Saved(saved.scope.clone()), saved.options)
        }
        None => (
            Branches::of(&args.scope),
            PlanFlags {
                reset: args.reset,
                no_reset: args.no_reset,
            },
        ),
    };
    let options = PlanOptions {
        flags,
        ..PlanOptions::default()
    };
    let planned = match make_plan(cli, branches, &options, args.wait_timeout, reporter).await? {
        Ok(planned) => planned,
        Err(exit) => return Ok(exit),
    };
    if let Some(saved) = &saved {
        saved_plan::check(saved, &planned.plan)?;
    }
    let limits = Limits {
        max_deletions: args.max_deletions,
        max_environments: args.max_environments,
    };
    let apply_options = ApplyOptions {
        concurrency: usize::from(args.concurrency),
        wait_timeout: args.wait_timeout,
        force_delete: false,
    };
    execute(
        &planned,
        &limits,
        args.yes,
        &apply_options,
        args.json,
        verb,
        reporter,
        &cancel,
    )
    .await
}

/// Shows the plan, checks policy, runs it and reports.
#[allow(clippy::too_many_arguments)]
async fn execute(
    planned: &Planned,
    limits: &Limits,
    yes: bool,
    options: &ApplyOptions,
    json: bool,
    verb: &str,
    reporter: &Reporter,
    cancel: &Cancel,
) -> anyhow::Result<Exit> {
    let plan = &planned.plan;
    if !plan.is_empty() && !json {
        show_plan(plan, reporter);
    }
    if let Some(exit) = policy::check(
        plan,
        &planned.observed,
        limits,
        yes,
        reporter,
        cancel,
        DESTROYS,
    )
    .await?
    {
        return Ok(exit);
    }
    let bases = bases(planned, reporter);
    let commits = match planned.settings.git.as_ref() {
        Some(git) => super::stale::stamps(
            git,
            &planned.commits,
            &planned.observed,
            planned.plan.options.reset,
        ),
        None => BTreeMap::new(),
    };
    let owner = planned.settings.owner();
    let executor = Executor {
        provider: &planned.provider,
        owner: &owner,
        bases: &bases,
        commits: &commits,
        options,
        progress: &Progress::new(reporter),
        cancel,
    };
    let outcomes = executor
        .apply(plan, &planned.scope.desired, &planned.observed)
        .await;
    finish(
        &planned.provider,
        &planned.scope.desired,
        &outcomes,
        json,
        verb,
        reporter,
    )
    .await
}

/// The `envctl:base` to record per branch: for environments that are created now or have none
/// yet, where the branch started; for a named branch (a push of it) that has no commits of its
/// own now, its tip (a branch moved along the default branch, or rebased before work started, is
/// not merged).
fn bases(planned: &Planned, reporter: &Reporter) -> BTreeMap<String, String> {
    let needs_base: Vec<&String> = planned
        .scope
        .desired
        .iter()
        .filter(|(_, wanted)| wanted.desired().is_some())
        .map(|(branch, _)| branch)
        .filter(|branch| {
            live_env(&planned.observed, branch).is_none_or(|o| o.tag(tags::BASE).is_none())
                || (planned.named && planned.settings.has_no_commits_of_its_own(branch))
        })
        .collect();
    // Said once, when an environment is made now: that is when its base would be recorded.
    let creating = planned
        .plan
        .actions
        .iter()
        .any(|a| matches!(a.kind, crate::model::ActionKind::Create { .. }));
    if creating
        && let Some(git) = &planned.settings.git
        && crate::settings::default_branch(git).is_none()
    {
        let how = if git.origin_repo_name().is_some() {
            "set ENVCTL_DEFAULT_BRANCH (e.g. `main`) or run `git remote set-head origin --auto`"
        } else {
            "set ENVCTL_DEFAULT_BRANCH (e.g. `main`)"
        };
        reporter.note(&format!(
            "note: cannot tell the default branch, so new environments do not record where their branch started (`envctl:base`, which prune uses to tell merged branches); {how}"
        ));
    }
    needs_base
        .into_iter()
        .filter_map(|branch| {
            planned
                .settings
                .base_commit(branch)
                .map(|base| (branch.clone(), base))
        })
        .collect()
}

pub async fn destroy(
    cli: &Cli,
    args: &DestroyArgs,
    reporter: &Reporter,
    cancel: Cancel,
) -> anyhow::Result<Exit> {
    let super::Live {
        settings,
        provider,
        observed,
    } = super::observe_live(cli, args.wait_timeout, reporter).await?;
    // Every environment of the branch (there can be more than one; each is blocked in a plan).
    let targets: BTreeMap<_, _> = observed
        .iter()
        .filter(|o| o.branch().as_deref() == Some(args.branch.as_str()))
        .map(|o| (o.cluster_id.clone(), DeleteReason::Requested))
        .collect();
    let owner = settings.owner();
    if targets.is_empty() {
        return destroy_leftovers_only(&provider, &settings, args, reporter, &cancel).await;
    }
    let options = PlanOptions {
        extra_deletions: targets,
        force_delete_protected: args.force,
        ..PlanOptions::default()
    };
    let scope = BTreeMap::new();
    let plan = planner::plan(
        &PlanInput {
            provider: provider.name(),
            owner: &owner,
            scope: &scope,
            observed: &observed,
            engines: &Default::default(),
            default_branch: None,
            sources: &Default::default(),
            occupied: &Default::default(),
        },
        &options,
    )?;
    if let Some(blocked) = plan
        .actions
        .iter()
        .find(|a| matches!(a.kind, crate::model::ActionKind::Blocked { .. }))
    {
        let why = match &blocked.kind {
            crate::model::ActionKind::Blocked { reason, .. } => reason.clone(),
            _ => String::new(),
        };
        let refused = observed
            .iter()
            .any(|o| o.cluster_id == blocked.cluster_id && o.refused.is_some());
        return Err(match refused {
            true => UserError::with_hint(
                format!(
                    "envctl will not delete `{}`; nothing was changed ({why})",
                    blocked.cluster_id
                ),
                "delete it by hand if it must go: envctl did not make it",
            ),
            false => protected_error(&args.branch, &why),
        }
        .into());
    }
    let planned = Planned {
        named: false,
        settings,
        provider,
        observed,
        scope: Scope {
            desired: scope,
            sources: BTreeMap::new(),
            unknown_to_git: Vec::new(),
        },
        plan,
        commits: BTreeMap::new(),
    };
    let options = ApplyOptions {
        concurrency: 1,
        wait_timeout: args.wait_timeout,
        force_delete: args.force,
    };
    let exit = execute(
        &planned,
        &Limits::none(),
        args.yes,
        &options,
        false,
        "Destroy",
        reporter,
        &cancel,
    )
    .await?;
    if !matches!(exit, Exit::Success | Exit::Changes) {
        return Ok(exit);
    }
    // Deleting the environment deletes its leftover too, where the provider keeps one beside it;
    // whatever is still there goes under the same consent.
    let leftovers = branch_leftovers(&planned.provider, &owner, &args.branch).await?;
    if leftovers.is_empty() {
        return Ok(exit);
    }
    match delete_leftovers(&planned.provider, &owner, &leftovers, reporter).await? {
        Exit::Success => Ok(exit),
        failed => Ok(failed),
    }
}

/// `destroy` of a branch with no environment: what interrupted creates of it left, if anything,
/// with consent as for any destroy.
async fn destroy_leftovers_only(
    provider: &AnyProvider,
    settings: &Settings,
    args: &DestroyArgs,
    reporter: &Reporter,
    cancel: &Cancel,
) -> anyhow::Result<Exit> {
    let owner = settings.owner();
    let leftovers = branch_leftovers(provider, &owner, &args.branch).await?;
    if let Some(at_work) = leftovers.iter().find(|l| l.at_work) {
        return Err(UserError::with_hint(
            format!(
                "an apply is creating `{}`'s environment now (`{}`); nothing was deleted",
                args.branch, at_work.name
            ),
            format!(
                "run `envctl destroy --branch {}` again once that apply has ended",
                args.branch
            ),
        )
        .into());
    }
    // A create that renamed its database into place between the first look and the look for
    // leftovers was in neither: look once more.
    if leftovers.is_empty()
        && super::observe(provider, settings)
            .await?
            .iter()
            .any(|o| o.branch().as_deref() == Some(args.branch.as_str()))
    {
        return Err(UserError::with_hint(
            format!(
                "`{}`'s environment was created while destroy looked for it; nothing was deleted",
                args.branch
            ),
            format!("run `envctl destroy --branch {}` again", args.branch),
        )
        .into());
    }
    if leftovers.is_empty() {
        reporter.note(&format!(
            "branch `{}` has no environment under prefix `{}`; nothing to destroy",
            args.branch,
            settings.prefix.as_str()
        ));
        // A delete workflow passing a ref (`refs/heads/B`, `origin/B`) would leave B's for good.
        if let Some(short) = ["refs/heads/", "refs/remotes/origin/", "origin/"]
            .iter()
            .find_map(|p| args.branch.strip_prefix(p))
        {
            reporter.warn(&format!(
                "`{}` looks like a ref, not a branch name: environments go by the short name (`envctl destroy --branch {short}`)",
                args.branch
            ));
        }
        return Ok(Exit::Success);
    }
    let what: Vec<String> = leftovers
        .iter()
        .map(|l| format!("delete {}, left by an interrupted create", l.name))
        .collect();
    if let Some(exit) =
        policy::consent(&what.join(", "), "deletes", args.yes, reporter, cancel).await?
    {
        return Ok(exit);
    }
    delete_leftovers(provider, &owner, &leftovers, reporter).await
}

/// What interrupted creates of `branch` left (a copy cut off, say): tagged as its, or untagged
/// under the id derived for it.
async fn branch_leftovers(
    provider: &AnyProvider,
    owner: &crate::model::Owner,
    branch: &str,
) -> anyhow::Result<Vec<crate::model::Leftover>> {
    let id = crate::model::ClusterId::derive(&owner.prefix, &owner.repo, branch);
    let leftovers = provider
        .leftovers(owner)
        .await
        .context("cannot list the leftovers of interrupted creates")?;
    Ok(leftovers
        .into_iter()
        .filter(|l| l.cluster_id == id && l.branch.as_deref().is_none_or(|b| b == branch))
        .map(|mut l| {
            l.branch = Some(branch.to_owned());
            l
        })
        .collect())
}

/// Deletes a branch's leftovers (none is data anyone was handed: the create never finished),
/// each re-checked live; one a create is at work on stays.
async fn delete_leftovers(
    provider: &AnyProvider,
    owner: &crate::model::Owner,
    leftovers: &[crate::model::Leftover],
    reporter: &Reporter,
) -> anyhow::Result<Exit> {
    let mut exit = Exit::Success;
    for leftover in leftovers {
        let name = &leftover.name;
        match provider
            .delete_leftover(owner, leftover, Duration::ZERO)
            .await
        {
            Ok(true) => reporter.note(&format!(
                "deleted `{name}`, which an interrupted create of `{}` left",
                leftover.branch.as_deref().unwrap_or_default()
            )),
            Ok(false) => {
                reporter.error(&anyhow::anyhow!(
                    "kept `{name}`: an apply of `{}` is making it now (or it is no longer a leftover of ours); run destroy again once that apply ends",
                    leftover.branch.as_deref().unwrap_or_default()
                ));
                exit = Exit::Failed;
            }
            Err(e) => {
                reporter.error(&anyhow::Error::new(e).context(format!("cannot delete `{name}`")));
                exit = Exit::Failed;
            }
        }
    }
    Ok(exit)
}

pub async fn reset(
    cli: &Cli,
    args: &ResetArgs,
    reporter: &Reporter,
    cancel: Cancel,
) -> anyhow::Result<Exit> {
    // Reset empties a database; it never creates one.
    let live = super::observe_live(cli, args.wait_timeout, reporter).await?;
    if live_env(&live.observed, &args.branch).is_none() {
        return Err(UserError::with_hint(
            format!("branch `{}` has no environment to reset", args.branch),
            format!("create it with `envctl apply --branch {}`", args.branch),
        )
        .into());
    }
    let covered = match live
        .settings
        .load_scope(std::slice::from_ref(&args.branch), InvalidSpecs::Refuse)
    {
        Ok(scope) => scope
            .desired
            .get(&args.branch)
            .and_then(Wanted::desired)
            .cloned(),
        Err(ScopeError::Invalid(diagnostics)) => {
            reporter.diagnostics(&diagnostics, true);
            return Ok(Exit::Failed);
        }
        Err(ScopeError::Other(e)) => return Err(e),
    };
    if let Some(desired) = &covered
        && desired.protect
    {
        return Err(UserError::with_hint(
            format!(
                "the environment of `{}` is protected (`lifecycle.protect` in `{}`); envctl does not reset it",
                args.branch, desired.spec_file
            ),
            "set `lifecycle.protect: false` first if it must be emptied",
        )
        .into());
    }
    if covered.is_none() {
        return Err(UserError::with_hint(
            format!(
                "no spec covers branch `{}`, so there is nothing to reset it to",
                args.branch
            ),
            format!(
                "`envctl destroy --branch {}` deletes its environment",
                args.branch
            ),
        )
        .into());
    }
    drop(live);
    let apply_args = ApplyArgs {
        plan_file: None,
        scope: ScopeArgs {
            branch: Some(args.branch.clone()),
            all: false,
        },
        yes: args.yes,
        concurrency: 1,
        no_reset: false,
        reset: true,
        // The one reset asked for.
        max_deletions: 1,
        max_environments: usize::MAX,
        wait_timeout: args.wait_timeout,
        json: false,
    };
    apply_as(cli, &apply_args, reporter, cancel, "Reset").await
}

/// A branch's live environment, if any.
/// A branch's one live environment, or none; refused when it has several (which the plan shows
/// blocked): connecting to, comparing or copying whichever sorts first could be someone else's.
pub(crate) fn the_live_env<'a>(
    observed: &'a [ObservedEnv],
    branch: &str,
) -> Result<Option<&'a ObservedEnv>, UserError> {
    let live: Vec<&ObservedEnv> = observed
        .iter()
        .filter(|o| o.branch().as_deref() == Some(branch))
        .collect();
    if live.len() > 1 {
        let ids: Vec<String> = live.iter().map(|o| format!("`{}`", o.cluster_id)).collect();
        return Err(UserError::with_hint(
            format!(
                "branch `{branch}` has {} live environments ({}): envctl does not choose one",
                live.len(),
                ids.join(", ")
            ),
            format!("`envctl destroy --branch {branch}` deletes them all, then apply creates one"),
        ));
    }
    Ok(live.first().copied())
}

pub(crate) fn live_env<'a>(observed: &'a [ObservedEnv], branch: &str) -> Option<&'a ObservedEnv> {
    observed
        .iter()
        .find(|o| o.branch().as_deref() == Some(branch))
}

/// `destroy`'s refusal of a protected environment, from the plan's reason (`would delete (…) but
/// <which protection>; <the command that deletes it anyway>`): the protection in the message, the
/// command as the hint, each said once.
fn protected_error(branch: &str, why: &str) -> UserError {
    let said = why.split_once(" but ").map_or(why, |(_, rest)| rest);
    match said.split_once("; ") {
        Some((protection, command)) => UserError::with_hint(
            format!("`{branch}` was not destroyed: {protection}; nothing was changed"),
            format!("{command} anyway"),
        ),
        None => UserError::with_hint(
            format!("`{branch}` was not destroyed: {said}; nothing was changed"),
            "pass `--force` to delete it anyway",
        ),
    }
}
