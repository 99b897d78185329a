//! Renders what users read: a [`Plan`] three ways (text for a terminal or CI log, colour only
//! when asked; the product's plan JSON; Markdown for a pull-request comment or
//! `$GITHUB_STEP_SUMMARY`), a prune's plan and report, what apply did per environment, and the
//! `status` table. Pure: every function returns a value; the time is an argument.

use std::time::{Duration, SystemTime};

use crate::model::{
    Action, ActionKind, Check, CheckOutcome, CloneSource, EnvOutcome, Field, LintFinding,
    ObservedEnv, OutcomeStatus, Plan, Summary, tags,
};
use crate::plan::prune::{Kept, PruneReport, PruneResult, PruneStatus};

/// How many terminal columns `text` takes (a wide character two, a combining mark none).
fn columns(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// `text` padded with spaces to `width` columns.
fn pad(text: &str, width: usize) -> String {
    format!("{text}{}", " ".repeat(width.saturating_sub(columns(text))))
}

/// Text from a repository or a server, made safe to print on one line: control characters become
/// escapes (`\n`), so a file name or a YAML key cannot start a line of its own (a GitHub Actions
/// workflow command such as `::warning::` among them) or move the cursor.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// ANSI styles, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

fn marker(kind: &ActionKind) -> (&'static str, &'static str) {
    match kind {
        ActionKind::Create { .. } => ("+", "32"),
        ActionKind::Clone { .. } => ("+", "32"),
        ActionKind::Update { .. } => ("~", "33"),
        ActionKind::Replace { .. } => ("-/+", "31"),
        ActionKind::Migrate { .. } => (">", "36"),
        ActionKind::Seed { .. } => (">", "36"),
        ActionKind::Reset { .. } => ("!", "31"),
        ActionKind::Delete { .. } => ("-", "31"),
        ActionKind::Repair { .. } => ("*", "33"),
        ActionKind::Blocked { .. } => ("x", "1;31"),
    }
}

/// One line describing what an action does, without branch and id.
pub fn detail(action: &Action) -> String {
    match &action.kind {
        ActionKind::Create { reason } | ActionKind::Replace { reason } => reason.clone(),
        ActionKind::Update { changes } => changes
            .iter()
            .map(change_text)
            .collect::<Vec<_>>()
            .join("; "),
        ActionKind::Migrate {
            from,
            to,
            migrations,
            ..
        } => format!("{from} → {to}: {}", migrations.join(", ")),
        ActionKind::Seed { files } => files.join(", "),
        ActionKind::Clone { reason, source } => format!(
            "{reason}: a copy of {}, {}",
            source_name(source),
            masking(source)
        ),
        ActionKind::Reset {
            reason,
            reclone: Some(source),
            ..
        } => format!(
            "{reason}; copies {} again, {}",
            source_name(source),
            masking(source)
        ),
        ActionKind::Reset { reason, .. }
        | ActionKind::Delete { reason }
        | ActionKind::Repair { reason }
        | ActionKind::Blocked { reason, .. } => reason.clone(),
    }
}

/// A clone's source for people: `main`'s (`envctl-main-…`), or cluster `staging`.
fn source_name(source: &CloneSource) -> String {
    match &source.branch {
        Some(branch) => format!("`{branch}`'s environment ({})", source.cluster_id),
        None => format!("cluster `{}`", source.cluster_id),
    }
}

/// The most masking rules a plan's line lists; past them it counts the rest (the JSON plan has
/// them all).
const RULES_LISTED: usize = 10;

/// What a clone's masking does: its rules and files.
fn masking(source: &CloneSource) -> String {
    let mut parts = Vec::new();
    match source.mask.len() {
        0 => {}
        n if n <= RULES_LISTED => parts.push(format!("masking {}", source.mask.join(", "))),
        n => parts.push(format!(
            "masking {n} columns: {} and {} more (the JSON plan lists them all)",
            source.mask[..RULES_LISTED].join(", "),
            n - RULES_LISTED
        )),
    }
    if !source.mask_sql.is_empty() {
        parts.push(format!("running {}", source.mask_sql.join(", ")));
    }
    if parts.is_empty() {
        "with no masking rules (the copy keeps the source's data as it is)".to_owned()
    } else {
        parts.join(", then ")
    }
}

/// A plain value: text without quotes, nothing as `none`.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "none".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// One changed field in the spec's terms: `cluster.scaling 0–4 → 0–8 ACU`,
/// `cluster.tags +cost=x, -team, env web → data`.
fn change_text(change: &crate::model::FieldChange) -> String {
    let name = change.field.spec_name();
    match change.field {
        Field::Scaling => {
            let range = |v: &serde_json::Value| match v {
                serde_json::Value::Null => "unknown".to_owned(),
                v => format!("{}–{}", v["min_acu"], v["max_acu"]),
            };
            format!(
                "{name} {} → {} ACU",
                range(&change.before),
                range(&change.after)
            )
        }
        Field::Tags => {
            let empty = serde_json::Map::new();
            let before = change.before.as_object().unwrap_or(&empty);
            let after = change.after.as_object().unwrap_or(&empty);
            let mut parts = Vec::new();
            for (key, value) in after {
                match before.get(key) {
                    None => parts.push(format!("+{key}={}", plain(value))),
                    Some(old) if old != value => {
                        parts.push(format!("{key} {} → {}", plain(old), plain(value)))
                    }
                    Some(_) => {}
                }
            }
            for key in before.keys().filter(|k| !after.contains_key(*k)) {
                parts.push(format!("-{key}"));
            }
            format!("{name} {}", parts.join(", "))
        }
        // Not a setting: a copy whose masking has not committed (cut off, or failed), which
        // nothing may connect to until this apply masks it.
        Field::Masking => format!(
            "{name} {} → {} (its masking has not committed: it masks again, and until then `url`, `exec`, `token` and `proxy` refuse it)",
            plain(&change.before),
            plain(&change.after)
        ),
        _ => format!(
            "{name} {} → {}",
            plain(&change.before),
            plain(&change.after)
        ),
    }
}

/// Where a branch's specs were read from, for people: `plan.sources` holds a commit or
/// `working-tree`.
fn source_text(source: &str) -> String {
    if source == "working-tree" {
        "the working tree (uncommitted changes included)".to_owned()
    } else {
        format!("commit {}", source.get(..12).unwrap_or(source))
    }
}

/// The closing `Plan: …` line.
pub fn summary_line(summary: &Summary) -> String {
    let clones = match summary.clone {
        0 => String::new(),
        n => format!("{n} to clone, "),
    };
    let mut line = format!(
        "Plan: {} to create, {clones}{} to update, {} to replace, {} to migrate, {} to seed, {} to reset, {} to delete",
        summary.create,
        summary.update,
        summary.replace,
        summary.migrate,
        summary.seed,
        summary.reset,
        summary.delete
    );
    if summary.repair > 0 {
        line.push_str(&format!(", {} to repair", summary.repair));
    }
    if summary.blocked > 0 {
        line.push_str(&format!(", {} blocked", summary.blocked));
    }
    line.push('.');
    line
}

/// What the plan says of a branch that no spec covers and that has no environment.
const UNCOVERED: &str = "no spec in `environments/` covers this branch, so it gets no database (add it to a spec's `branches`)";

/// Text: one line per action with a marker, a reset's diff indented below it, and the summary.
pub fn text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    for (branch, source) in &plan.sources {
        out.push_str(&format!("{branch}: read from {}\n", source_text(source)));
    }
    for branch in &plan.uncovered {
        out.push_str(&format!("{branch}: {UNCOVERED}\n"));
    }
    if plan.is_empty() {
        out.push_str("No changes: the live environments match the desired state.\n");
        return out;
    }
    let width = |f: fn(&Action) -> usize| plan.actions.iter().map(f).max().unwrap_or(0);
    let branch_width = width(|a| columns(&visible(&a.branch)));
    let id_width = width(|a| a.cluster_id.as_str().len());
    for action in &plan.actions {
        let (mark, color) = marker(&action.kind);
        let head = format!("{mark:>3} {:<8}", action.kind.name());
        out.push_str(&format!(
            "{} {}  {:<id_width$}  {}\n",
            style.paint(color, &head),
            pad(&visible(&action.branch), branch_width),
            action.cluster_id.as_str(),
            visible(&detail(action)),
        ));
        if let ActionKind::Reset {
            diff: Some(diff), ..
        }
        | ActionKind::Blocked {
            diff: Some(diff), ..
        } = &action.kind
        {
            for line in diff.lines() {
                let line = &*visible(line);
                let painted = match line.chars().next() {
                    Some('+') if !line.starts_with("+++") => style.paint("32", line),
                    Some('-') if !line.starts_with("---") => style.paint("31", line),
                    _ => line.to_owned(),
                };
                out.push_str(&format!("      {painted}\n"));
            }
        }
        out.push_str(&lint_text(&action.kind, style));
    }
    out.push('\n');
    out.push_str(&summary_line(&plan.summary));
    out.push('\n');
    out
}

/// The product's plan JSON, pretty-printed with a trailing newline.
pub fn json(plan: &Plan) -> String {
    let mut text = serde_json::to_string_pretty(plan).expect("a plan serializes");
    text.push('\n');
    text
}

/// [`json`], written as it is made (a plan of 100 000 branches is never held as text whole).
pub fn json_to(plan: &Plan, out: &mut impl std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, plan)?;
    out.write_all(b"\n")
}

/// A `migrate` action's lint findings as text, below its line: `! file:line:column rule: what`,
/// then the safer way. Nothing for other actions.
pub fn lint_text(kind: &ActionKind, style: Style) -> String {
    let ActionKind::Migrate { lint, .. } = kind else {
        return String::new();
    };
    let mut out = String::new();
    for finding in lint {
        let head = format!(
            "! {}:{}:{} {}:",
            finding.file, finding.line, finding.column, finding.rule
        );
        out.push_str(&format!(
            "      {} {}\n        {}\n",
            style.paint("33", &visible(&head)),
            visible(&finding.message),
            visible(&finding.help)
        ));
    }
    out
}

/// The header of the lint table.
pub const LINT_TABLE_HEADER: &str =
    "| migration | line | rule | what | safer |\n|---|---|---|---|---|\n";

/// One finding as a row of the lint table (migration, line, rule, what, the safer way).
pub fn lint_row(f: &LintFinding) -> String {
    format!(
        "| {} | {} | `{}` | {} | {} |",
        code(&f.migration),
        f.line,
        f.rule,
        cell(&f.message),
        cell(&f.help)
    )
}

/// Lint findings under a `Migration lint` heading as a Markdown table, or nothing when there are
/// none.
pub fn lint_markdown<'a>(findings: impl IntoIterator<Item = &'a LintFinding>) -> String {
    let rows: Vec<String> = findings.into_iter().map(lint_row).collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n#### Migration lint\n\n{LINT_TABLE_HEADER}{}\n",
        rows.join("\n")
    )
}

/// Text for a Markdown table cell: no HTML, no column breaks, and the code spans in it (names
/// are written in them, [`crate::model::code`]) shown as written: only `|` is escaped inside
/// them, where an entity would show as typed.
pub fn cell(text: &str) -> String {
    let text = text.replace(['\n', '\r'], " ");
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text.as_str();
    while let Some(open) = rest.find('`') {
        out.push_str(&plain_cell(&rest[..open]));
        let after = &rest[open..];
        let run = after.len() - after.trim_start_matches('`').len();
        let fence = &after[..run];
        match closing_fence(&after[run..], run) {
            Some(end) => {
                let span = &after[..run + end + run];
                out.push_str(&span.replace('|', "\\|"));
                rest = &after[run + end + run..];
            }
            None => {
                // No span: the backticks are text.
                out.push_str(&"\\`".repeat(fence.len()));
                rest = &after[run..];
            }
        }
    }
    out.push_str(&plain_cell(rest));
    out
}

/// Where a run of exactly `run` backticks starts in `text` (CommonMark closes a code span only
/// with a run of the same length).
fn closing_fence(text: &str, run: usize) -> Option<usize> {
    let mut at = 0;
    while let Some(found) = text[at..].find('`') {
        let start = at + found;
        let length = text[start..].len() - text[start..].trim_start_matches('`').len();
        if length == run {
            return Some(start);
        }
        at = start + length;
    }
    None
}

/// Text outside code spans in a table cell: no HTML, no column breaks.
fn plain_cell(text: &str) -> String {
    html(text).replace('|', "\\|")
}

/// Text inside HTML.
fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A code span that holds any text (git allows backticks in branch names) in a table cell.
pub fn code(text: &str) -> String {
    crate::model::code(&text.replace(['\n', '\r'], " ")).replace('|', "\\|")
}

/// Markdown for a pull-request comment or `$GITHUB_STEP_SUMMARY`.
pub fn markdown(plan: &Plan) -> String {
    let mut out = format!(
        "### envctl plan for `{}` ({})\n\n",
        plan.repo, plan.provider
    );
    for (branch, source) in &plan.sources {
        out.push_str(&format!(
            "- {} read from {}\n",
            code(branch),
            source_text(source)
        ));
    }
    for branch in &plan.uncovered {
        out.push_str(&format!("- {}: {UNCOVERED}\n", code(branch)));
    }
    if !plan.sources.is_empty() || !plan.uncovered.is_empty() {
        out.push('\n');
    }
    if plan.is_empty() {
        out.push_str("No changes: the live environments match the desired state.\n");
        return out;
    }
    out.push_str("| | action | branch | environment | cluster | details |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for action in &plan.actions {
        let (mark, _) = marker(&action.kind);
        out.push_str(&format!(
            "| `{mark}` | {} | {} | {} | `{}` | {} |\n",
            action.kind.name(),
            code(&action.branch),
            cell(&action.env),
            action.cluster_id,
            cell(&detail(action)),
        ));
    }
    out.push_str(&format!("\n**{}**\n", summary_line(&plan.summary)));
    out.push_str(&lint_markdown(plan.actions.iter().flat_map(
        |a| match &a.kind {
            ActionKind::Migrate { lint, .. } => lint.as_slice(),
            _ => &[],
        },
    )));
    for action in &plan.actions {
        if let ActionKind::Reset {
            diff: Some(diff), ..
        }
        | ActionKind::Blocked {
            diff: Some(diff), ..
        } = &action.kind
        {
            // A fence longer than any run of backticks in the diff: no line of it can close the
            // block early (and let the rest render as Markdown in a pull-request comment).
            let longest = diff.split(|c| c != '`').map(str::len).max().unwrap_or(0);
            let fence = "`".repeat((longest + 1).max(3));
            out.push_str(&format!(
                "\n<details><summary>Reset diff for <code>{}</code></summary>\n\n{fence}diff\n{}{fence}\n\n</details>\n",
                html(&action.branch),
                diff
            ));
        }
    }
    out
}

/// A prune's plan as text: one line per deletion with its reason, one per environment a reason
/// holds for but that is kept, and a closing count.
pub fn prune_text(plan: &Plan, kept: &[Kept], style: Style) -> String {
    let mut out = String::new();
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let rows: Vec<(&str, &str, String, String, String)> = plan
        .actions
        .iter()
        .map(|a| {
            (
                "-",
                "delete",
                a.branch.clone(),
                a.cluster_id.as_str().to_owned(),
                detail(a),
            )
        })
        .chain(kept.iter().map(|k| {
            (
                "=",
                "keep",
                dash(&k.branch),
                k.cluster_id.as_str().to_owned(),
                format!("{}, but {}", k.reason, k.kept_because),
            )
        }))
        .collect();
    let branch_width = rows
        .iter()
        .map(|r| columns(&visible(&r.2)))
        .max()
        .unwrap_or(0);
    let id_width = rows.iter().map(|r| r.3.len()).max().unwrap_or(0);
    for (mark, name, branch, id, detail) in &rows {
        let head = format!("{mark:>3} {name:<8}");
        let color = if *name == "delete" { "31" } else { "33" };
        out.push_str(&format!(
            "{} {}  {:<id_width$}  {}\n",
            style.paint(color, &head),
            pad(&visible(branch), branch_width),
            id,
            visible(detail),
        ));
    }
    if !rows.is_empty() {
        out.push('\n');
    }
    out.push_str(&prune_summary(plan.actions.len(), kept.len()));
    out.push('\n');
    out
}

/// `Prune: 2 to delete, 1 kept.`, or that there is nothing to prune.
fn prune_summary(delete: usize, kept: usize) -> String {
    match (delete, kept) {
        (0, 0) => "Nothing to prune: every environment's branch is live and covered, and none is past its ttl.".to_owned(),
        (delete, kept) => format!("Prune: {delete} to delete, {kept} kept."),
    }
}

/// A prune as Markdown (for `$GITHUB_STEP_SUMMARY`): what it deletes and why, what it keeps, and
/// once it ran, what happened to each; or why it deleted nothing.
pub fn prune_markdown(report: &PruneReport) -> String {
    let mut out = format!(
        "### envctl prune for `{}` ({})\n\n",
        report.repo, report.provider
    );
    if let Some(refused) = &report.refused {
        out.push_str(&format!("> **Refused:** {}\n", cell(&refused.message)));
        if let Some(hint) = &refused.hint {
            out.push_str(&format!(">\n> {}\n", cell(hint)));
        }
        out.push('\n');
    }
    if !report.actions.is_empty() {
        out.push_str("| branch | environment | cluster | reason | result |\n");
        out.push_str("|---|---|---|---|---|\n");
        for action in report.actions {
            let result = match (report.results, &report.refused) {
                (_, Some(_)) => "not deleted".to_owned(),
                (None, None) => "would delete".to_owned(),
                (Some(results), None) => results
                    .iter()
                    .find(|r| r.cluster_id == action.cluster_id)
                    .map_or_else(
                        || "not run".to_owned(),
                        |r| match (r.status, &r.error, &r.reason) {
                            (PruneStatus::Deleted, _, _) => "deleted".to_owned(),
                            (status, Some(error), _) => {
                                format!("{}: {}", status.as_str(), error.one_line())
                            }
                            (status, None, Some(why)) => format!("{}: {why}", status.as_str()),
                            (status, None, None) => status.as_str().to_owned(),
                        },
                    ),
            };
            out.push_str(&format!(
                "| {} | {} | `{}` | {} | {} |\n",
                code(&action.branch),
                cell(&action.env),
                action.cluster_id,
                cell(&detail(action)),
                cell(&result),
            ));
        }
        out.push('\n');
    }
    if !report.kept.is_empty() {
        out.push_str("Kept:\n\n");
        for k in report.kept {
            let branch = k.branch.as_deref().map_or_else(|| "-".to_owned(), code);
            out.push_str(&format!(
                "- {branch} (`{}`): {}, but {}\n",
                k.cluster_id,
                cell(&k.reason),
                cell(&k.kept_because)
            ));
        }
        out.push('\n');
    }
    let closing = match report.results {
        Some(results) if report.refused.is_none() => {
            let [deleted, kept, gone, failed, not_started] = result_counts(results);
            format!(
                "Prune: {deleted} deleted, {kept} kept after looking again, {gone} already gone, {failed} failed, {not_started} not started; {} kept.",
                report.kept.len()
            )
        }
        // Refused: nothing was looked at closely enough to say there is nothing to prune.
        _ if report.refused.is_some() => format!(
            "Prune refused: nothing deleted ({} would have been, {} kept).",
            report.actions.len(),
            report.kept.len()
        ),
        _ => prune_summary(report.actions.len(), report.kept.len()),
    };
    out.push_str(&format!("**{closing}**\n"));
    out
}

/// What happened to one deletion of a prune: `ok`, `kept` with why, `failed` with its error and
/// each cause on a line of its own, or `skipped`.
pub fn prune_result(result: &PruneResult) -> String {
    let (head, text) = match (result.status, &result.reason, &result.error) {
        (PruneStatus::Deleted, Some(reason), _) => ("ok", format!("deleted ({reason})")),
        (PruneStatus::Deleted, None, _) => ("ok", "deleted".to_owned()),
        (PruneStatus::Gone, _, _) => ("ok", "already gone".to_owned()),
        (PruneStatus::Kept, Some(why), _) => ("kept", why.clone()),
        (PruneStatus::Kept, None, _) => ("kept", String::new()),
        (PruneStatus::NotStarted, _, _) => ("skipped", "interrupted before it started".to_owned()),
        (PruneStatus::Failed, _, error) => (
            "failed",
            error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
        ),
    };
    let mut line = format!(
        "{head:<8}{} ({}): {}",
        visible(&result.branch),
        result.cluster_id,
        visible(&text)
    );
    if let (PruneStatus::Failed, Some(error)) = (result.status, &result.error) {
        for cause in &error.causes {
            line.push_str(&format!("\n  caused by: {}", visible(cause)));
        }
    }
    line
}

/// The closing line of a prune that ran.
pub fn prune_results_summary(results: &[PruneResult]) -> String {
    let [deleted, kept, gone, failed, not_started] = result_counts(results);
    let not_started = match not_started {
        0 => String::new(),
        n => format!(", {n} not started"),
    };
    format!(
        "Prune: {deleted} deleted, {kept} kept after looking again, {gone} already gone, {failed} failed{not_started}."
    )
}

/// How many deletions were deleted, kept, gone, failed and not started.
fn result_counts(results: &[PruneResult]) -> [usize; 5] {
    [
        PruneStatus::Deleted,
        PruneStatus::Kept,
        PruneStatus::Gone,
        PruneStatus::Failed,
        PruneStatus::NotStarted,
    ]
    .map(|status| results.iter().filter(|r| r.status == status).count())
}

/// What happened to one environment, as apply reports it: `ok` with what was done, `failed` with
/// its error and each cause on a line of its own, or `skipped`.
pub fn outcome(outcome: &EnvOutcome) -> String {
    let head = format!(
        "{} ({})",
        visible(&outcome.branch),
        outcome.cluster_id.as_str()
    );
    match &outcome.status {
        OutcomeStatus::Ok => format!("ok      {head}: {}", outcome.done.join("; ")),
        OutcomeStatus::Failed(failure) => {
            let done = if outcome.done.is_empty() {
                String::new()
            } else {
                format!(" (done before: {})", outcome.done.join("; "))
            };
            let mut text = format!("failed  {head}: {}{done}", visible(&failure.message));
            for cause in &failure.causes {
                text.push_str(&format!("\n  caused by: {}", visible(cause)));
            }
            text
        }
        OutcomeStatus::NotStarted => format!("skipped {head}: interrupted before it started"),
    }
}

/// The closing line of apply, destroy and reset: `Apply: 2 environments done, 0 failed.`
pub fn outcome_summary(verb: &str, outcomes: &[EnvOutcome]) -> String {
    let failed = outcomes
        .iter()
        .filter(|o| o.status != OutcomeStatus::Ok)
        .count();
    let ok = outcomes.len() - failed;
    format!(
        "{verb}: {ok} environment{} done, {failed} failed.",
        if ok == 1 { "" } else { "s" }
    )
}

/// `last-applied` + ttl, RFC 3339: when prune may delete it for its ttl; never while it is
/// protected, nor the default branch's (prune never deletes it). `None` when either tag is
/// missing or makes no sense (tags can be edited by hand: a huge ttl must not crash `status`).
fn expires_at(o: &ObservedEnv, default_branch: Option<&str>) -> Option<String> {
    if o.protected() || is_default(o, default_branch) {
        return None;
    }
    o.expires_at()
        .map(|at| humantime::format_rfc3339_seconds(at).to_string())
}

/// Whether `o` is the default branch's environment.
fn is_default(o: &ObservedEnv, default_branch: Option<&str>) -> bool {
    default_branch.is_some_and(|d| o.branch().as_deref() == Some(d))
}

fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The state column: the provider's status, and what it hides (no writer; not envctl's to touch).
fn state_text(o: &ObservedEnv) -> String {
    let mut text = visible(&o.status).into_owned();
    if o.missing_writer() {
        text.push_str(" (no writer)");
    }
    if o.refused.is_some() {
        text.push_str(" (not envctl's: outside the prefix)");
    }
    text
}

/// `status --json`: `{"environments": [...]}`, one object per live environment, in the order
/// given. `default_branch`'s environment never expires (prune never deletes it).
pub fn status_json(observed: &[ObservedEnv], default_branch: Option<&str>) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = observed
        .iter()
        .map(|o| {
            serde_json::json!({
                "branch": o.branch(),
                "env": o.tag(tags::ENV),
                "cluster_id": o.cluster_id,
                "state": o.status,
                "min_acu": o.scaling.map(|s| s.min_acu),
                "max_acu": o.scaling.map(|s| s.max_acu),
                "schema_version": o.schema_version(),
                "last_applied": o.tag(tags::LAST_APPLIED),
                "expires_at": expires_at(o, default_branch),
                "endpoint": o.endpoint,
                "source": o.tag(tags::SOURCE),
                // A copy whose tag says neither is pending: it is not known to be masked.
                "masked": if o.masking_pending() { Some("pending") } else { o.tag(tags::MASKED) },
                "missing_writer": o.missing_writer(),
                "refused": o.refused,
            })
        })
        .collect();
    serde_json::json!({ "environments": rows })
}

/// The `status` table: a header and one row per live environment, in the order given, columns
/// padded by display width. Ages and expiries are counted from `now`; `default_branch`'s
/// environment never expires.
pub fn status_table(
    observed: &[ObservedEnv],
    default_branch: Option<&str>,
    now: SystemTime,
) -> String {
    let dash = || "-".to_owned();
    let mut table = vec![
        [
            "BRANCH",
            "ENV",
            "CLUSTER ID",
            "STATE",
            "SCALING",
            "SCHEMA",
            "AGE",
            "EXPIRES",
            "ENDPOINT",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    // Data branches add where each was copied from.
    let sources = observed.iter().any(|o| o.tag(tags::SOURCE).is_some());
    if sources {
        table[0].push("SOURCE".to_owned());
    }
    for o in observed {
        let age = o
            .created_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| now.duration_since(t).ok())
            .map_or_else(dash, short_duration);
        let expires = expires_at(o, default_branch)
            .and_then(|t| humantime::parse_rfc3339(&t).ok())
            .map(|t| match t.duration_since(now) {
                Ok(left) if left.as_secs() >= 86_400 => format!(
                    "in {}d{}h",
                    left.as_secs() / 86_400,
                    left.as_secs() % 86_400 / 3600
                ),
                Ok(left) => format!("in {}", short_duration(left)),
                Err(_) => "expired".into(),
            })
            .unwrap_or_else(|| {
                if o.protected() {
                    "never (protected)".into()
                } else if is_default(o, default_branch) {
                    "never (default branch)".into()
                } else {
                    dash()
                }
            });
        let mut row = vec![
            visible(&o.branch().unwrap_or_else(|| "?".into())).into_owned(),
            visible(&o.env_name()).into_owned(),
            o.cluster_id.to_string(),
            state_text(o),
            o.scaling.map_or_else(dash, |s| s.to_string()),
            // Not known until an apply converges it (`envctl:ledger-digest` `none`): a copy
            // cut off before its migrations carries its source's ledger, whatever the tag says.
            o.schema_version()
                .filter(|_| o.tag(tags::LEDGER_DIGEST) != Some("none"))
                .map_or_else(dash, |v| v.to_string()),
            age,
            expires,
            o.endpoint.clone().unwrap_or_else(dash),
        ];
        if sources {
            row.push(match (o.tag(tags::SOURCE), o.masking_pending()) {
                (Some(source), true) => format!("{} (masking pending)", visible(source)),
                (Some(source), false) => visible(source).into_owned(),
                (None, _) => dash(),
            });
        }
        table.push(row);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| table.iter().map(|row| columns(&row[i])).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| pad(cell, *width))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// `envctl doctor`'s report: a line per check (`✓`, `✗` with the fix below it, `-` skipped),
/// then a closing count.
pub fn doctor(checks: &[Check], style: Style) -> String {
    let width = checks.iter().map(|c| columns(&c.check)).max().unwrap_or(0);
    let mut out = String::new();
    for check in checks {
        let name = pad(&check.check, width);
        match &check.outcome {
            CheckOutcome::Ok { detail } => {
                out.push_str(&format!(
                    "{} {name}  {}\n",
                    style.paint("32", "✓"),
                    visible(detail)
                ));
            }
            CheckOutcome::Failed { detail, fix } => {
                out.push_str(&format!(
                    "{} {name}  {}\n",
                    style.paint("1;31", "✗"),
                    visible(detail)
                ));
                out.push_str(&format!("  {}  fix: {}\n", " ".repeat(width), visible(fix)));
            }
            CheckOutcome::Skipped { detail } => {
                out.push_str(&format!(
                    "{} {name}  skipped: {}\n",
                    style.paint("2", "-"),
                    visible(detail)
                ));
            }
        }
    }
    let failed = checks.iter().filter(|c| c.is_failed()).count();
    out.push('\n');
    out.push_str(&match failed {
        0 => "Doctor: every check passed or was skipped.\n".to_owned(),
        n => format!(
            "Doctor: {n} check{} failed.\n",
            if n == 1 { "" } else { "s" }
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_of_many_rules_lists_ten_and_counts_the_rest() {
        let source = |rules: usize| CloneSource {
            branch: Some("main".into()),
            cluster_id: crate::model::ClusterId::from_live("envctl-main-1".to_owned()),
            mask: (1..=rules)
                .map(|n| format!("app.t.c{n:02}: hash"))
                .collect(),
            mask_sql: vec!["schemas/mask/x.sql".into()],
        };
        assert_eq!(
            masking(&source(2)),
            "masking app.t.c01: hash, app.t.c02: hash, then running schemas/mask/x.sql"
        );
        let many = masking(&source(12));
        assert!(
            many.starts_with("masking 12 columns: app.t.c01: hash, ")
                && many.contains("app.t.c10: hash and 2 more (the JSON plan lists them all)")
                && !many.contains("c11")
                && many.ends_with(", then running schemas/mask/x.sql"),
            "{many}"
        );
    }
}
