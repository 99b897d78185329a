//! What must hold before anything changes: `--max-deletions` (deletes, replaces and resets all
//! lose data, so all count), `--max-environments`, and confirmation of destructive actions (asked
//! on a terminal; without one, `--yes` is required). Ctrl-C at the prompt stops with nothing
//! changed.

use std::io::{BufRead, Write};

use crate::cancel::Cancel;
use crate::model::{ObservedEnv, Plan};
use crate::report::{Exit, Reporter, UserError};

use super::plural;

/// The limits a command runs under.
pub(super) struct Limits {
    pub max_deletions: usize,
    pub max_environments: usize,
}

impl Limits {
    pub fn none() -> Limits {
        Limits {
            max_deletions: usize::MAX,
            max_environments: usize::MAX,
        }
    }
}

/// Policy checks before anything changes. `Some(exit)` stops the command. `destroys` says what
/// the plan's destructive actions do, for the question and the refusal (`deletes or empties
/// data`; prune only `deletes`).
pub(super) async fn check(
    plan: &Plan,
    observed: &[ObservedEnv],
    limits: &Limits,
    yes: bool,
    reporter: &Reporter,
    cancel: &Cancel,
    destroys: &str,
) -> anyhow::Result<Option<Exit>> {
    let destructive: Vec<String> = plan
        .destructive_actions()
        .map(|a| format!("{} {} ({})", a.kind.name(), a.branch, a.cluster_id))
        .collect();
    if destructive.len() > limits.max_deletions {
        return Err(UserError::with_hint(
            format!(
                "the plan deletes or empties {} environment{} ({}), more than `--max-deletions` {}; nothing was changed",
                destructive.len(),
                plural(destructive.len()),
                destructive.join(", "),
                limits.max_deletions
            ),
            format!(
                "review the plan, then pass `--max-deletions {}` if it is right",
                destructive.len()
            ),
        )
        .into());
    }
    let creates = plan.summary.create;
    if creates > 0 && observed.len() + creates > limits.max_environments {
        return Err(UserError::with_hint(
            format!(
                "creating {creates} environment{} would make {} live environments for this repository, more than `--max-environments` {}; nothing was changed",
                plural(creates),
                observed.len() + creates,
                limits.max_environments
            ),
            "destroy unused environments, or raise `--max-environments` (ENVCTL_MAX_ENVIRONMENTS)",
        )
        .into());
    }
    if destructive.is_empty() {
        return Ok(None);
    }
    consent(&destructive.join(", "), destroys, yes, reporter, cancel).await
}

/// Consent to what `destroys` (`what`, in words): given by `--yes`, else asked on a terminal;
/// without one, refused. `Ok(Some(exit))`: stop with it (answered no, or a signal came).
pub(super) async fn consent(
    what: &str,
    destroys: &str,
    yes: bool,
    reporter: &Reporter,
    cancel: &Cancel,
) -> anyhow::Result<Option<Exit>> {
    if yes {
        return Ok(None);
    }
    if !reporter.interactive {
        return Err(UserError::with_hint(
            format!(
                "the plan {destroys} ({what}), and there is no terminal to confirm it; nothing was changed"
            ),
            "pass `--yes` to go ahead without asking",
        )
        .into());
    }
    let question = format!("This {destroys}: {what}. Continue?");
    match confirm(&question, cancel).await {
        Some(true) => Ok(None),
        Some(false) => {
            reporter.note("nothing was changed");
            Ok(Some(Exit::Failed))
        }
        None => {
            say!();
            reporter.note("nothing was changed");
            Ok(Some(Exit::Interrupted(cancel.requested().unwrap_or(130))))
        }
    }
}

/// Asks on the terminal: `Some(true)` only for `y` or `yes`; `None` when a signal came first.
async fn confirm(question: &str, cancel: &Cancel) -> Option<bool> {
    {
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), "{question} [y/N] ");
    }
    let _ = std::io::stderr().flush();
    let read = tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        let read = std::io::stdin().lock().read_line(&mut answer).ok()?;
        if read == 0 {
            // End of input: the answer line was never typed, so end the question's line.
            say!();
        }
        Some(answer)
    });
    tokio::select! {
        answer = read => {
            let answer = answer.ok().flatten().unwrap_or_default();
            Some(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
        }
        _ = cancel.requested_wait() => None,
    }
}
