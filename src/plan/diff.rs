//! The schema diff: two [`Schema`]s (read by `db::catalog`) → a [`SchemaDiff`], and its three
//! renderings: a unified text diff grouped by object (`+`/`-`/`~`), the diff JSON, and Markdown
//! for a pull-request comment. Objects and parts are matched by kind and name; output is sorted.
//! Pure: every function returns a value.

use std::collections::BTreeSet;

use similar::TextDiff;

use crate::model::schema::{
    Change, DIFF_FORMAT_VERSION, DiffSide, DiffSummary, ObjectDiff, PartDiff, Properties,
    PropertyChange, Schema,
};
use crate::plan::render::visible;

/// The difference of `branch`'s schema from `against`'s.
pub fn diff(
    against: (&DiffSide, &Schema),
    branch: (&DiffSide, &Schema),
) -> crate::model::schema::SchemaDiff {
    let (before, after) = (against.1, branch.1);
    let keys: BTreeSet<_> = before.objects.keys().chain(after.objects.keys()).collect();
    let mut changes = Vec::new();
    let mut summary = DiffSummary::default();
    for key in keys {
        let (kind, name) = key;
        let (old, new) = (before.objects.get(key), after.objects.get(key));
        let change = match (old, new) {
            (None, Some(_)) => Change::Added,
            (Some(_), None) => Change::Removed,
            (Some(old), Some(new)) if old != new => Change::Changed,
            _ => continue,
        };
        let empty = Default::default();
        let old = old.unwrap_or(&empty);
        let new = new.unwrap_or(&empty);
        let part_keys: BTreeSet<_> = old.parts.keys().chain(new.parts.keys()).collect();
        let parts = part_keys
            .into_iter()
            .filter_map(|part| {
                let (a, b) = (old.parts.get(part), new.parts.get(part));
                let change = match (a, b) {
                    (None, Some(_)) => Change::Added,
                    (Some(_), None) => Change::Removed,
                    (Some(a), Some(b)) if a != b => Change::Changed,
                    _ => return None,
                };
                Some(PartDiff {
                    change,
                    kind: part.0,
                    name: part.1.clone(),
                    properties: property_changes(a, b),
                })
            })
            .collect();
        match change {
            Change::Added => summary.added += 1,
            Change::Removed => summary.removed += 1,
            Change::Changed => summary.changed += 1,
        }
        changes.push(ObjectDiff {
            change,
            kind: *kind,
            name: name.clone(),
            properties: property_changes(
                before.objects.get(key).map(|o| &o.properties),
                after.objects.get(key).map(|o| &o.properties),
            ),
            parts,
        });
    }
    crate::model::schema::SchemaDiff {
        format_version: DIFF_FORMAT_VERSION,
        branch: branch.0.clone(),
        against: against.0.clone(),
        changes,
        summary,
    }
}

/// Every property of a side that is alone; the differing ones when both are there.
fn property_changes(
    before: Option<&Properties>,
    after: Option<&Properties>,
) -> Vec<PropertyChange> {
    let empty = Properties::new();
    let (a, b) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|name| a.get(*name) != b.get(*name))
        .map(|name| PropertyChange {
            property: name.clone(),
            before: a.get(name).cloned(),
            after: b.get(name).cloned(),
        })
        .collect()
}

/// A property's value on one line, or `None` when it spans lines (rendered as a diff).
fn one_line(value: &str) -> Option<String> {
    (!value.contains('\n')).then(|| visible(value).into_owned())
}

/// The lines of one property change, indented by `indent`: `~ name: a → b`, a line diff of a
/// value over several lines, or `+`/`-` with the one value there is.
fn property_lines(p: &PropertyChange, indent: &str, out: &mut Vec<String>) {
    let (mark, value) = match (p.before.as_deref(), p.after.as_deref()) {
        (Some(a), Some(b)) => {
            if let (Some(a), Some(b)) = (one_line(a), one_line(b)) {
                out.push(format!("~ {indent}{}: {a} → {b}", p.property));
                return;
            }
            out.push(format!("~ {indent}{}:", p.property));
            for op in TextDiff::from_lines(a, b).iter_all_changes() {
                let mark = match op.tag() {
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                    similar::ChangeTag::Equal => ' ',
                };
                let line = op.value().trim_end_matches('\n');
                out.push(format!("{mark} {indent}  {}", visible(line)));
            }
            return;
        }
        (None, Some(b)) => ('+', b),
        (Some(a), None) => ('-', a),
        (None, None) => return,
    };
    match one_line(value) {
        Some(v) => out.push(format!("{mark} {indent}{}: {v}", p.property)),
        None => {
            out.push(format!("{mark} {indent}{}:", p.property));
            for line in value.lines() {
                out.push(format!("{mark} {indent}  {}", visible(line)));
            }
        }
    }
}

/// The diff as lines of text: a header naming both sides, then per object `+ kind name` (added),
/// `- kind name` (removed) or `~ kind name` (changed), its properties and parts indented below.
pub fn text_lines(diff: &crate::model::schema::SchemaDiff) -> Vec<String> {
    let mut out = vec![
        format!(
            "--- {} ({})",
            visible(&diff.against.branch),
            diff.against.cluster_id
        ),
        format!(
            "+++ {} ({})",
            visible(&diff.branch.branch),
            diff.branch.cluster_id
        ),
    ];
    for object in object_chunks(diff) {
        out.extend(object);
    }
    out
}

/// The lines of each object that differs, one group per object.
pub fn object_chunks(diff: &crate::model::schema::SchemaDiff) -> Vec<Vec<String>> {
    let mut chunks = Vec::new();
    for object in &diff.changes {
        let mut out = Vec::new();
        out.push(format!(
            "{} {} {}",
            object.change.marker(),
            object.kind.label(),
            visible(&object.name)
        ));
        for p in &object.properties {
            property_lines(p, "    ", &mut out);
        }
        for part in &object.parts {
            out.push(format!(
                "{}     {} {}",
                part.change.marker(),
                part.kind.label(),
                visible(&part.name)
            ));
            for p in &part.properties {
                property_lines(p, "        ", &mut out);
            }
        }
        chunks.push(out);
    }
    chunks
}

/// The closing line: `Diff: 1 added, 2 removed, 3 changed.` or that the schemas are the same.
pub fn summary_line(diff: &crate::model::schema::SchemaDiff) -> String {
    if diff.is_empty() {
        return "No differences: the schemas are the same.".to_owned();
    }
    format!(
        "Diff: {} added, {} removed, {} changed.",
        diff.summary.added, diff.summary.removed, diff.summary.changed
    )
}

/// Text for a terminal or CI log, with colour only when asked.
pub fn text(diff: &crate::model::schema::SchemaDiff, color: bool) -> String {
    let mut out = String::new();
    for line in text_lines(diff) {
        let code = match line.chars().next() {
            _ if line.starts_with("---") || line.starts_with("+++") => None,
            Some('+') => Some("32"),
            Some('-') => Some("31"),
            Some('~') => Some("33"),
            _ => None,
        };
        match code {
            Some(code) if color => out.push_str(&format!("\x1b[{code}m{line}\x1b[0m\n")),
            _ => {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out.push('\n');
    out.push_str(&summary_line(diff));
    out.push('\n');
    out
}

/// The diff JSON, pretty-printed with a trailing newline.
pub fn json(diff: &crate::model::schema::SchemaDiff) -> String {
    let mut text = serde_json::to_string_pretty(diff).expect("a diff serializes");
    text.push('\n');
    text
}

/// A fenced code block that no line of `body` can close early.
pub fn fenced(language: &str, body: &str) -> String {
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    let body = body.trim_end_matches('\n');
    format!("{fence}{language}\n{body}\n{fence}\n")
}

/// Lines of diff beyond which the Markdown folds it into `<details>`.
pub const FOLD_LINES: usize = 40;

/// Markdown: the summary line, then the diff in a ```` ```diff ```` block (folded into
/// `<details>` past [`FOLD_LINES`] lines).
pub fn markdown(diff: &crate::model::schema::SchemaDiff) -> String {
    let mut out = format!(
        "**{}** `{}` ({}) against `{}` ({}).\n",
        summary_line(diff),
        diff.branch.branch.replace('`', "'"),
        diff.branch.cluster_id,
        diff.against.branch.replace('`', "'"),
        diff.against.cluster_id
    );
    if diff.is_empty() {
        return out;
    }
    let lines = text_lines(diff);
    let block = fenced("diff", &lines[2..].join("\n"));
    out.push('\n');
    if lines.len() - 2 > FOLD_LINES {
        out.push_str(&format!(
            "<details><summary>The diff ({} lines)</summary>\n\n{block}\n</details>\n",
            lines.len() - 2
        ));
    } else {
        out.push_str(&block);
    }
    out
}
