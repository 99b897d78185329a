//! `prune`: delete what git says no longer needs an environment.
//!
//! Observe, read git once (off the runtime's workers: git2 blocks), let the pure
//! [`crate::plan::prune::decide`] say what goes and what is kept, and let the planner make the
//! plan from those decisions. Show it, check `--max-deletions` and confirmation, then per
//! deletion: observe and read git again, decide again with [`verdict`], and delete only if a
//! reason still holds, with the tags it was decided on required unchanged on the live resource
//! (an apply since then refreshes `envctl:last-applied`).
//!
//! Fails closed: when git cannot be trusted to say which branches are gone or merged (no `origin`
//! branches, no default branch, a shallow clone where ancestry is needed), nothing is deleted and
//! the command exits 1 saying why.

mod facts;
mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use anyhow::Context;
use futures_util::StreamExt;

use super::{open_provider, plural, print_stdout};
use crate::cancel::Cancel;
use crate::cli::{Cli, PruneArgs};
use crate::model::{ObservedEnv, Owner, Plan};
use crate::plan::prune::{
    Kept, PruneInput, PruneReport, PruneResult, PruneStatus, PruneSummary, Refused, decide,
};
use crate::plan::render::{self, Style};
use crate::plan::{self as planner, PlanInput, PlanOptions};
use crate::provider::{AnyProvider, Provider};
use crate::report::{Exit, Progress, Reporter, UserError};
use crate::settings::Settings;
use facts::{Untrusted, read_git};
use run::{CONCURRENCY, Deleter, leftover_targets};

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
    let local_branches_count = provider.serves_local_branches();
    let owner = settings.owner();
    let observed = super::observe(&provider, &settings).await?;
    let mut leftovers = provider
        .leftovers(&owner)
        .await
        .context("cannot list the leftovers of interrupted creates")?;
    // What a create is at work on was left by nobody.
    leftovers.retain(|l| !l.at_work);
    let branches: BTreeSet<String> = observed.iter().filter_map(ObservedEnv::branch).collect();
    let facts = match tokio::task::block_in_place(|| {
        read_git(&settings, &branches, local_branches_count)
    }) {
        Ok(facts) => facts,
        Err(why) => return refuse(&provider, &owner, args, why),
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
    let decisions = decide(&PruneInput {
        owner: &owner,
        observed: &observed,
        leftovers: &leftovers,
        git: &facts.view,
        now: SystemTime::now(),
        leftover_min_age: args.wait_timeout,
    });
    for line in &decisions.stays {
        reporter.detail(line);
    }
    let plan = planner::plan(
        &PlanInput {
            provider: provider.name(),
            owner: &owner,
            scope: &BTreeMap::new(),
            observed: &observed,
            engines: &Default::default(),
            default_branch: None,
            sources: &Default::default(),
            occupied: &Default::default(),
        },
        &PlanOptions {
            extra_deletions: decisions.deletions.clone(),
            leftover_deletions: decisions.leftover_deletions.clone(),
            ..PlanOptions::default()
        },
    )?;
    let output = Output {
        plan: &plan,
        kept: &decisions.kept,
        default_branch: Some(&facts.view.default_branch),
        dry_run: args.dry_run,
        json: args.json,
        markdown: args.markdown,
    };
    if let Some(exit) = show(&output, &observed, args, cli, reporter, &cancel).await? {
        return Ok(exit);
    }
    let deleter = Deleter {
        settings: &settings,
        owner: &owner,
        provider: &provider,
        local_branches_count,
        wait_timeout: args.wait_timeout,
        progress: &Progress::new(reporter),
        cancel: &cancel,
        leftovers: leftover_targets(&leftovers, &decisions),
    };
    let results: Vec<PruneResult> = futures_util::stream::iter(plan.actions.iter())
        .map(|action| deleter.delete(action))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    report_results(&results, reporter);
    output.print(Some(&results), None)?;
    let count = |status| results.iter().filter(|r| r.status == status).count();
    let failed = count(PruneStatus::Failed) + count(PruneStatus::NotStarted);
    Ok(if failed > 0 {
        Exit::Failed
    } else if args.detailed_exitcode && count(PruneStatus::Deleted) > 0 {
        Exit::Changes
    } else {
        Exit::Success
    })
}

/// Git cannot be trusted: nothing was planned, and the report says why, with no actions.
fn refuse(
    provider: &AnyProvider,
    owner: &Owner,
    args: &PruneArgs,
    why: Untrusted,
) -> anyhow::Result<Exit> {
    let refused = UserError::with_hint(why.message, why.hint);
    let empty = Plan {
        format_version: planner::FORMAT_VERSION,
        provider: provider.name().to_owned(),
        repo: owner.repo.clone(),
        prefix: owner.prefix.as_str().to_owned(),
        scope: Vec::new(),
        options: Default::default(),
        observed_fingerprint: String::new(),
        actions: Vec::new(),
        summary: Default::default(),
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
    Err(refused.into())
}

/// Shows the plan and checks `--max-deletions` and confirmation. `Some(exit)` when the command
/// ends here (a dry run, nothing to do, a refusal).
async fn show(
    output: &Output<'_>,
    observed: &[ObservedEnv],
    args: &PruneArgs,
    cli: &Cli,
    reporter: &Reporter,
    cancel: &Cancel,
) -> anyhow::Result<Option<Exit>> {
    let plan = output.plan;
    let over_limit =
        (plan.actions.len() > args.max_deletions).then(|| limit_error(plan, args.max_deletions));
    if args.dry_run {
        if !args.json && !args.markdown {
            let style = Style {
                color: reporter.stdout_color(cli.color),
            };
            emit(&render::prune_text(plan, output.kept, style))?;
        } else {
            output.print(None, over_limit.as_ref())?;
        }
        if let Some(refused) = over_limit {
            return Err(refused.into());
        }
        let changes = args.detailed_exitcode && !plan.is_empty();
        return Ok(Some(if changes {
            Exit::Changes
        } else {
            Exit::Success
        }));
    }
    if !args.json && !args.markdown && !reporter.quiet {
        let style = Style {
            color: reporter.color,
        };
        say!(
            "{}",
            render::prune_text(plan, output.kept, style).trim_end()
        );
    }
    if let Some(refused) = over_limit {
        output.print(None, Some(&refused))?;
        return Err(refused.into());
    }
    if plan.is_empty() {
        output.print(Some(&[]), None)?;
        return Ok(Some(Exit::Success));
    }
    let limits = super::policy::Limits {
        max_deletions: args.max_deletions,
        max_environments: usize::MAX,
    };
    let checked = super::policy::check(
        plan, observed, &limits, args.yes, reporter, cancel, "deletes",
    )
    .await;
    match checked {
        Ok(None) => Ok(None),
        Ok(Some(exit)) => {
            let refused = UserError::new("the deletions were not confirmed");
            output.print(None, Some(&refused))?;
            Ok(Some(exit))
        }
        Err(e) => {
            if let Some(refused) = e.downcast_ref::<UserError>() {
                output.print(None, Some(refused))?;
            }
            Err(e)
        }
    }
}

/// One line per deletion (`failed` and `skipped` even with `--quiet`), then the counts.
fn report_results(results: &[PruneResult], reporter: &Reporter) {
    for result in results {
        let line = render::prune_result(result);
        match result.status {
            PruneStatus::Failed | PruneStatus::NotStarted => say!("{line}"),
            _ => reporter.note(&line),
        }
    }
    reporter.note(&render::prune_results_summary(results));
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
