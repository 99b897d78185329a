//! Renders a [`Plan`] three ways: text for a terminal or CI log (colour only when asked), the
//! product's plan JSON, and Markdown for a pull-request comment or `$GITHUB_STEP_SUMMARY`.
//! Pure: every function returns a `String`.

use crate::model::{Action, ActionKind, LintFinding, Plan, Summary};
use crate::plan::prune::{Kept, PruneReport};

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
        ActionKind::Update { .. } => ("~", "33"),
        ActionKind::Replace { .. } => ("-/+", "31"),
        ActionKind::Migrate { .. } => (">", "36"),
        ActionKind::Seed { .. } => (">", "36"),
        ActionKind::Reset { .. } => ("!", "31"),
        ActionKind::Delete { .. } => ("-", "31"),
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
        ActionKind::Reset { reason, .. }
        | ActionKind::Delete { reason }
        | ActionKind::Blocked { reason, .. } => reason.clone(),
    }
}

/// The spec's own name for a changed field.
pub fn field_name(field: &str) -> &str {
    match field {
        "scaling" => "cluster.scaling",
        "tags" => "cluster.tags",
        "deletion_protection" => "cluster.deletionProtection",
        "protect" => "lifecycle.protect",
        "ttl" => "lifecycle.ttl",
        "env" => "name",
        other => other,
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
    let name = field_name(&change.field);
    match change.field.as_str() {
        "scaling" => {
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
        "tags" => {
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
    let mut line = format!(
        "Plan: {} to create, {} to update, {} to replace, {} to migrate, {} to seed, {} to reset, {} to delete",
        summary.create,
        summary.update,
        summary.replace,
        summary.migrate,
        summary.seed,
        summary.reset,
        summary.delete
    );
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

/// Text for a Markdown table cell: no HTML, no column breaks.
pub fn cell(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .replace('\n', " ")
}

/// A code span that holds any text (git allows backticks in branch names).
pub fn code(text: &str) -> String {
    let text = text.replace('|', "\\|").replace('\n', " ");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
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
                cell(&action.branch),
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
                        |r| match r.status {
                            "deleted" => "deleted".to_owned(),
                            status => {
                                let why = r.error.as_ref().or(r.reason.as_ref());
                                match why {
                                    Some(why) => format!("{status}: {why}"),
                                    None => status.to_owned(),
                                }
                            }
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
            let count = |status: &str| results.iter().filter(|r| r.status == status).count();
            format!(
                "Prune: {} deleted, {} kept after looking again, {} already gone, {} failed, {} not started; {} kept.",
                count("deleted"),
                count("kept"),
                count("gone"),
                count("failed"),
                count("not_started"),
                report.kept.len()
            )
        }
        _ => prune_summary(report.actions.len(), report.kept.len()),
    };
    out.push_str(&format!("**{closing}**\n"));
    out
}
