//! `plan`, `apply`, `destroy` and `reset`: observe, load the desired state of the branches in scope,
//! read the ledgers the plan needs, call the planner, render, and (except `plan`) check policy and
//! execute through `apply`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use serde_json::json;

use super::{confirm, local_provider, plural, print_stdout, require_local};
use crate::apply::{ApplyOptions, EnvOutcome, Executor, OutcomeStatus};
use crate::cli::{ApplyArgs, Cli, DestroyArgs, PlanArgs, ResetArgs, ScopeArgs};
use crate::db::{self, Cancel};
use crate::model::{DeleteReason, ObservedEnv, Plan, SourceKind, tags};
use crate::plan::render::{self, Style};
use crate::plan::{self as planner, PlanInput, PlanOptions};
use crate::provider::Provider;
use crate::provider::local::LocalProvider;
use crate::report::{Exit, Progress, Reporter, UserError};
use crate::settings::{Scope, ScopeError, Settings};

/// Everything a plan was made from.
struct Planned {
    settings: Settings,
    provider: LocalProvider,
    observed: Vec<ObservedEnv>,
    scope: Scope,
    plan: Plan,
}

/// Which branches are in scope.
enum Branches {
    Current,
    Named(Vec<String>),
    All,
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

async fn make_plan(
    cli: &Cli,
    branches: Branches,
    options: &PlanOptions,
    reporter: &Reporter,
) -> anyhow::Result<Result<Planned, Exit>> {
    require_local(cli)?;
    let settings = Settings::resolve(cli)?;
    let branches = match branches {
        Branches::Current => vec![settings.branch_or_current(None)?],
        Branches::Named(names) => {
            for name in &names {
                settings.branch_or_current(Some(name))?;
            }
            names
        }
        Branches::All => Vec::new(),
    };
    let provider = local_provider(&settings).await?;
    let mut observed = super::observe(&provider, &settings).await?;
    reporter.detail(&format!(
        "observed {} live environment{} of {} on the {} provider",
        observed.len(),
        plural(observed.len()),
        settings.repo,
        provider.name()
    ));
    let all = branches.is_empty();
    let branches = if all {
        all_branches(&settings, &observed, reporter)?
    } else {
        branches
    };
    let mut scope = match settings.load_scope(&branches) {
        Ok(scope) => scope,
        Err(ScopeError::Invalid(diagnostics)) => {
            reporter.diagnostics(&diagnostics);
            return Ok(Err(Exit::Failed));
        }
        Err(ScopeError::Other(e)) => return Err(e),
    };
    if all {
        // Keep branches that want an environment or have one.
        scope.desired.retain(|branch, desired| {
            desired.is_some()
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
    read_needed_ledgers(&provider, &scope, &mut observed, reporter).await?;
    let plan = planner::plan(
        &PlanInput {
            provider: provider.name(),
            repo: &settings.repo,
            prefix: &settings.prefix,
            scope: &scope.desired,
            observed: &observed,
        },
        options,
    )
    .map_err(|e| UserError::new(e.to_string()))?;
    let mut plan = plan;
    plan.sources = scope
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
        .collect();
    Ok(Ok(Planned {
        settings,
        provider,
        observed,
        scope,
        plan,
    }))
}

/// `--all`: every branch git knows, plus live environments' branches that git still knows.
fn all_branches(
    settings: &Settings,
    observed: &[ObservedEnv],
    reporter: &Reporter,
) -> anyhow::Result<Vec<String>> {
    let Some(git) = &settings.git else {
        return Err(UserError::with_hint(
            "`--all` needs a git repository",
            "pass `--branch BRANCH`",
        )
        .into());
    };
    let known = git.branches()?;
    for o in observed {
        if let Some(branch) = o.branch()
            && !known.contains(&branch)
        {
            reporter.note(&format!(
                "note: `{branch}` ({}) has an environment but git no longer knows the branch; `envctl destroy --branch {branch}` deletes it",
                o.cluster_id
            ));
        }
    }
    Ok(known)
}

/// Reads the ledger of every live environment in scope whose digest differs from the desired one.
async fn read_needed_ledgers<P: Provider>(
    provider: &P,
    scope: &Scope,
    observed: &mut [ObservedEnv],
    reporter: &Reporter,
) -> anyhow::Result<()> {
    for o in observed.iter_mut() {
        let Some(branch) = o.branch() else { continue };
        let Some(Some(desired)) = scope.desired.get(&branch) else {
            continue;
        };
        if desired.cluster_id != o.cluster_id || !planner::needs_ledger(desired, o) {
            continue;
        }
        reporter.detail(&format!(
            "reading the ledger of `{}`: its ledger digest differs from the desired one",
            o.cluster_id
        ));
        let connection = provider
            .connection(&o.cluster_id, &desired.database)
            .await?;
        let mut conn = db::connect(&connection)
            .await
            .with_context(|| format!("cannot read the ledger of `{}`", o.cluster_id))?;
        o.ledger = Some(
            db::read_ledger(&mut conn)
                .await
                .with_context(|| format!("cannot read the ledger of `{}`", o.cluster_id))?,
        );
        let _ = sqlx::Connection::close(conn).await;
    }
    Ok(())
}

pub async fn plan(
    cli: &Cli,
    args: &PlanArgs,
    reporter: &Reporter,
    _cancel: Cancel,
) -> anyhow::Result<Exit> {
    let options = PlanOptions {
        no_reset: args.no_reset,
        force_reset: args.reset,
        ..PlanOptions::default()
    };
    let planned = match make_plan(cli, Branches::of(&args.scope), &options, reporter).await? {
        Ok(planned) => planned,
        Err(exit) => return Ok(exit),
    };
    let plan = &planned.plan;
    if let Some(path) = &args.out {
        std::fs::write(path, render::json(plan))
            .with_context(|| format!("cannot write the plan to `{}`", path.display()))?;
        reporter.note(&format!(
            "saved the plan to `{}`; apply it with `envctl apply {}`",
            path.display(),
            path.display()
        ));
    }
    let text = if args.json {
        render::json(plan)
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
    print_stdout(&text)?;
    Ok(if args.detailed_exitcode && !plan.is_empty() {
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
    let options = PlanOptions {
        no_reset: args.no_reset,
        force_reset: args.reset,
        ..PlanOptions::default()
    };
    let saved = match &args.plan_file {
        Some(path) => Some(read_saved_plan(path)?),
        None => None,
    };
    let branches = match &saved {
        Some(saved) => Branches::Named(saved.scope.clone()),
        None => Branches::of(&args.scope),
    };
    let planned = match make_plan(cli, branches, &options, reporter).await? {
        Ok(planned) => planned,
        Err(exit) => return Ok(exit),
    };
    if let Some(saved) = &saved {
        check_saved_plan(saved, &planned.plan)?;
    }
    let plan = &planned.plan;
    if !plan.is_empty() && !args.json {
        show_plan(plan, reporter);
    }
    if let Some(exit) = check_policy(
        plan,
        &planned.observed,
        args.max_deletions,
        args.max_environments,
        args.yes,
        reporter,
    )? {
        return Ok(exit);
    }
    // `envctl:base` for environments that are created now or have none yet.
    let needs_base: Vec<&String> = planned
        .scope
        .desired
        .iter()
        .filter(|(_, desired)| desired.is_some())
        .map(|(branch, _)| branch)
        .filter(|branch| {
            live_env(&planned.observed, branch).is_none_or(|o| o.tag(tags::BASE).is_none())
        })
        .collect();
    if !needs_base.is_empty()
        && let Some(git) = &planned.settings.git
        && crate::settings::default_branch(git).is_none()
    {
        reporter.warn(
            "cannot tell the default branch, so `envctl:base` is not recorded (prune needs it to tell merged branches); set ENVCTL_DEFAULT_BRANCH or run `git remote set-head origin --auto`",
        );
    }
    let bases: BTreeMap<String, String> = needs_base
        .into_iter()
        .filter_map(|branch| {
            planned
                .settings
                .base_commit(branch)
                .map(|base| (branch.clone(), base))
        })
        .collect();
    let executor = Executor {
        provider: &planned.provider,
        repo: &planned.settings.repo,
        bases: &bases,
        options: &ApplyOptions {
            concurrency: usize::from(args.concurrency),
            wait_timeout: args.wait_timeout,
        },
        progress: &Progress::new(reporter),
        cancel: &cancel,
    };
    let outcomes = executor
        .apply(plan, &planned.scope.desired, &planned.observed)
        .await;
    finish(&planned, &outcomes, args.json, "Apply", reporter).await
}

/// The fields of a saved plan that apply checks.
struct SavedPlan {
    provider: String,
    repo: String,
    scope: Vec<String>,
    fingerprint: String,
    actions: serde_json::Value,
}

fn read_saved_plan(path: &std::path::Path) -> anyhow::Result<SavedPlan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the plan `{}`", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        UserError::with_hint(
            format!("`{}` is not a plan file: {e}", path.display()),
            "make one with `envctl plan --out FILE`",
        )
    })?;
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let bad = || {
        UserError::with_hint(
            format!(
                "`{}` is not an envctl plan (format_version 1)",
                path.display()
            ),
            "make one with `envctl plan --out FILE`",
        )
    };
    if value.get("format_version").and_then(|v| v.as_u64()) != Some(1) {
        return Err(bad().into());
    }
    Ok(SavedPlan {
        provider: field("provider").ok_or_else(bad)?,
        repo: field("repo").ok_or_else(bad)?,
        scope: value
            .get("scope")
            .and_then(|s| s.as_array())
            .ok_or_else(bad)?
            .iter()
            .filter_map(|b| b.as_str().map(str::to_owned))
            .collect(),
        fingerprint: field("observed_fingerprint").ok_or_else(bad)?,
        actions: value.get("actions").cloned().ok_or_else(bad)?,
    })
}

fn check_saved_plan(saved: &SavedPlan, now: &Plan) -> anyhow::Result<()> {
    if saved.provider != now.provider || saved.repo != now.repo.as_str() {
        return Err(UserError::new(format!(
            "the plan was made for {} on the {} provider, not {} on {}",
            saved.repo, saved.provider, now.repo, now.provider
        ))
        .into());
    }
    if saved.fingerprint != now.observed_fingerprint {
        return Err(UserError::with_hint(
            "stale plan: the live state or the desired state changed since the plan was made; nothing was applied",
            "make a new plan with `envctl plan --out FILE` and review it",
        )
        .into());
    }
    let actions = serde_json::to_value(&now.actions).expect("actions serialize");
    if actions != saved.actions {
        return Err(UserError::with_hint(
            "the saved plan's actions differ from what apply would do now; nothing was applied",
            "pass `apply` the same `--reset`/`--no-reset` flags as `plan`, or make a new plan",
        )
        .into());
    }
    Ok(())
}

/// Policy checks before anything changes. `Some(exit)` stops the command.
fn check_policy(
    plan: &Plan,
    observed: &[ObservedEnv],
    max_deletions: usize,
    max_environments: usize,
    yes: bool,
    reporter: &Reporter,
) -> anyhow::Result<Option<Exit>> {
    let deletions = plan.summary.delete;
    if deletions > max_deletions {
        return Err(UserError::with_hint(
            format!("the plan deletes {deletions} environments, more than `--max-deletions` {max_deletions}; nothing was changed"),
            format!("review the plan, then pass `--max-deletions {deletions}` if it is right"),
        )
        .into());
    }
    let creates = plan.summary.create;
    if creates > 0 && observed.len() + creates > max_environments {
        return Err(UserError::with_hint(
            format!(
                "creating {creates} environment{} would make {} live environments for this repository, more than `--max-environments` {max_environments}; nothing was changed",
                plural(creates),
                observed.len() + creates
            ),
            "destroy unused environments, or raise `--max-environments` (ENVCTL_MAX_ENVIRONMENTS)",
        )
        .into());
    }
    let destructive: Vec<String> = plan
        .destructive_actions()
        .map(|a| format!("{} {} ({})", a.kind.name(), a.branch, a.cluster_id))
        .collect();
    if !destructive.is_empty() && !yes {
        if reporter.interactive {
            let question = format!(
                "This deletes or empties data: {}. Continue?",
                destructive.join(", ")
            );
            if !confirm(&question) {
                reporter.note("nothing was changed");
                return Ok(Some(Exit::Failed));
            }
        } else {
            return Err(UserError::with_hint(
                format!("the plan deletes or empties data ({}), and there is no terminal to confirm it; nothing was changed", destructive.join(", ")),
                "pass `--yes` to apply it without asking",
            )
            .into());
        }
    }
    Ok(None)
}

/// The plan, on stderr, before apply or destroy acts on it (not with `--quiet`).
fn show_plan(plan: &Plan, reporter: &Reporter) {
    if reporter.quiet {
        return;
    }
    let style = Style {
        color: reporter.color,
    };
    let _ = std::io::stderr().write_all(render::text(plan, style).as_bytes());
}

/// Prints the report (and JSON, and GitHub outputs) and decides the exit code. `verb` names the
/// command in the closing line.
async fn finish(
    planned: &Planned,
    outcomes: &[EnvOutcome],
    json: bool,
    verb: &str,
    reporter: &Reporter,
) -> anyhow::Result<Exit> {
    let mut failed = 0;
    let mut records = Vec::new();
    for outcome in outcomes {
        let mut record = json!({
            "branch": outcome.branch,
            "env": outcome.env,
            "cluster_id": outcome.cluster_id,
            "done": outcome.done,
        });
        match &outcome.status {
            OutcomeStatus::Ok => {
                record["status"] = "ok".into();
                reporter.note(&format!(
                    "ok      {} ({}): {}",
                    outcome.branch,
                    outcome.cluster_id,
                    outcome.done.join("; ")
                ));
            }
            OutcomeStatus::Failed(message) => {
                failed += 1;
                record["status"] = "failed".into();
                record["error"] = message.clone().into();
                let done = if outcome.done.is_empty() {
                    String::new()
                } else {
                    format!(" (done before: {})", outcome.done.join("; "))
                };
                eprintln!(
                    "failed  {} ({}): {message}{done}",
                    outcome.branch, outcome.cluster_id
                );
            }
            OutcomeStatus::NotStarted => {
                failed += 1;
                record["status"] = "not started".into();
                eprintln!(
                    "skipped {} ({}): interrupted before it started",
                    outcome.branch, outcome.cluster_id
                );
            }
        }
        if outcome.exists
            && let Some(Some(desired)) = planned.scope.desired.get(&outcome.branch)
            && let Ok(connection) = planned
                .provider
                .connection(&outcome.cluster_id, &desired.database)
                .await
        {
            record["endpoint"] = json!({
                "host": connection.host,
                "port": connection.port,
                "database": connection.database,
                "user": connection.user,
            });
        }
        records.push(record);
    }
    let ok = outcomes.len() - failed;
    reporter.note(&format!(
        "{verb}: {ok} environment{} done, {failed} failed.",
        plural(ok)
    ));
    if json {
        let text = serde_json::to_string_pretty(&json!({ "environments": records })).expect("json");
        print_stdout(&format!("{text}\n"))?;
    }
    write_github_outputs(&records)?;
    Ok(if failed > 0 {
        Exit::Failed
    } else {
        Exit::Success
    })
}

/// In GitHub Actions, `$GITHUB_OUTPUT` gets `environments` (JSON) and, for one environment, its
/// `cluster_id`, `host`, `port`, `database` and `user`. Never a secret.
fn write_github_outputs(records: &[serde_json::Value]) -> anyhow::Result<()> {
    let Ok(path) = std::env::var("GITHUB_OUTPUT") else {
        return Ok(());
    };
    if path.is_empty() {
        return Ok(());
    }
    let mut text = format!(
        "environments={}\n",
        serde_json::to_string(records).expect("json")
    );
    if let [record] = records {
        text.push_str(&format!(
            "cluster_id={}\n",
            record["cluster_id"].as_str().unwrap_or("")
        ));
        if let Some(endpoint) = record.get("endpoint") {
            for key in ["host", "port", "database", "user"] {
                let value = match &endpoint[key] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                text.push_str(&format!("{key}={value}\n"));
            }
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write GITHUB_OUTPUT `{path}`"))?;
    file.write_all(text.as_bytes())?;
    Ok(())
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
    } = super::observe_live(cli).await?;
    // Every environment of the branch (after an interrupted prefix change there can be two).
    let targets: BTreeMap<_, _> = observed
        .iter()
        .filter(|o| o.branch().as_deref() == Some(args.branch.as_str()))
        .map(|o| (o.cluster_id.clone(), DeleteReason::Requested))
        .collect();
    if targets.is_empty() {
        reporter.note(&format!(
            "branch `{}` has no environment; nothing to destroy",
            args.branch
        ));
        return Ok(Exit::Success);
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
            repo: &settings.repo,
            prefix: &settings.prefix,
            scope: &scope,
            observed: &observed,
        },
        &options,
    )
    .map_err(|e| UserError::new(e.to_string()))?;
    if plan.has_blocked() {
        return Err(UserError::with_hint(
            format!(
                "the environment of `{}` is protected (`lifecycle.protect`); nothing was changed",
                args.branch
            ),
            "pass `--force` to delete it anyway",
        )
        .into());
    }
    show_plan(&plan, reporter);
    if let Some(exit) = check_policy(&plan, &observed, usize::MAX, usize::MAX, args.yes, reporter)?
    {
        return Ok(exit);
    }
    let executor = Executor {
        provider: &provider,
        repo: &settings.repo,
        bases: &BTreeMap::new(),
        options: &ApplyOptions {
            concurrency: 1,
            wait_timeout: std::time::Duration::from_secs(900),
        },
        progress: &Progress::new(reporter),
        cancel: &cancel,
    };
    let outcomes = executor.apply(&plan, &scope, &observed).await;
    let planned = Planned {
        settings,
        provider,
        observed,
        scope: Scope {
            desired: scope,
            sources: BTreeMap::new(),
            unknown_to_git: Vec::new(),
        },
        plan,
    };
    finish(&planned, &outcomes, false, "Destroy", reporter).await
}

pub async fn reset(
    cli: &Cli,
    args: &ResetArgs,
    reporter: &Reporter,
    cancel: Cancel,
) -> anyhow::Result<Exit> {
    // Reset empties a database; it never creates one.
    let live = super::observe_live(cli).await?;
    if live_env(&live.observed, &args.branch).is_none() {
        return Err(UserError::with_hint(
            format!("branch `{}` has no environment to reset", args.branch),
            format!("create it with `envctl apply --branch {}`", args.branch),
        )
        .into());
    }
    let covered = match live.settings.load_scope(std::slice::from_ref(&args.branch)) {
        Ok(scope) => scope.desired.get(&args.branch).is_some_and(Option::is_some),
        Err(ScopeError::Invalid(diagnostics)) => {
            reporter.diagnostics(&diagnostics);
            return Ok(Exit::Failed);
        }
        Err(ScopeError::Other(e)) => return Err(e),
    };
    if !covered {
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
        max_deletions: 0,
        max_environments: usize::MAX,
        wait_timeout: std::time::Duration::from_secs(900),
        json: false,
    };
    apply(cli, &apply_args, reporter, cancel).await
}

/// The cluster id a branch's live environment has, if any.
pub(crate) fn live_env<'a>(observed: &'a [ObservedEnv], branch: &str) -> Option<&'a ObservedEnv> {
    observed
        .iter()
        .find(|o| o.branch().as_deref() == Some(branch))
}
