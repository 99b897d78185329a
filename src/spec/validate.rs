//! One environment file: bytes → position index → typed decode → semantic checks → [`Spec`].
//!
//! Every problem becomes a [`Diagnostic`] at `file:line:column` with a hint. Unknown keys are found
//! on the position index (all of them, with a did-you-mean), removed, and the rest is decoded with
//! serde_norway through serde_path_to_error so a type error is placed by its key path. Pure: no IO.

use std::collections::{BTreeMap, BTreeSet};

use serde_path_to_error::Segment;

use crate::model::{
    Acu, ClusterSettings, ColumnPath, DatabaseSettings, MAX_TAG_VALUE_LEN, MaskRule, MaskStrategy,
    Scaling, SourceRef, check_branch_name, encode_tag_keys, is_valid_rds_identifier, sha256_hex,
    tags as model_tags,
};

use super::matching::BranchPattern;
use super::raw::{self, RawCluster, RawDatabase, RawFrom, RawLifecycle, RawSpec, SchemaVersion};
use super::yaml::{self, Index};
use super::{Diagnostic, Spec};

/// What a spec file is checked against beyond itself.
pub struct Context<'a> {
    pub highest_migration: u64,
    pub seed_paths: &'a BTreeSet<String>,
    /// The masking files under `schemas/mask/`.
    pub mask_paths: &'a BTreeSet<String>,
    /// Files under either that are there but could not be loaded (each has its own error).
    pub unusable: &'a BTreeSet<String>,
}

/// Checks one file. Returns the spec when it has no errors, and every diagnostic found.
/// What makes a spec file unique among the others: its name and branch patterns, known even when
/// the file has other errors (so one run reports every clash between files).
#[derive(Clone, Debug)]
pub struct Identity {
    pub file: String,
    pub name: String,
    pub name_pos: (usize, usize),
    /// Each pattern's text and position.
    pub patterns: Vec<(String, (usize, usize))>,
}

/// A file's result: the spec when it is valid, every diagnostic, and its identity when its name
/// and branches could be read.
pub type Checked = (Option<Spec>, Vec<Diagnostic>, Option<Identity>);

pub fn check_file(path: &str, text: &str, context: &Context) -> Checked {
    let mut diagnostics = Vec::new();
    // Editors on Windows may start a file with a byte-order mark; it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let index = match yaml::index(text) {
        Ok(index) => index,
        Err(e) => {
            diagnostics.push(Diagnostic {
                file: path.to_owned(),
                line: e.pos.line,
                column: e.pos.column,
                message: e.message,
                hint: None,
            });
            return (None, diagnostics, None);
        }
    };
    if index.empty {
        diagnostics.push(Diagnostic::at_start(
            path,
            "the file is empty".into(),
            Some("start from `envctl init`, or see `envctl schema` for the format".into()),
        ));
        return (None, diagnostics, None);
    }
    let at = |key_path: &str, message: String, hint: Option<String>| {
        let pos = index.value_pos(key_path);
        Diagnostic {
            file: path.to_owned(),
            line: pos.line,
            column: pos.column,
            message,
            hint,
        }
    };
    for (key_path, pos) in &index.duplicate_keys {
        diagnostics.push(Diagnostic {
            file: path.to_owned(),
            line: pos.line,
            column: pos.column,
            message: format!("`{key_path}` is set twice"),
            hint: Some("remove one of them".into()),
        });
    }

    if !diagnostics.is_empty() {
        // serde_norway would stop at the duplicate too, without a position.
        return (None, diagnostics, None);
    }
    let mut value = match parse_value(path, text) {
        Ok(value) => value,
        Err(diagnostic) => {
            diagnostics.push(diagnostic);
            return (None, diagnostics, None);
        }
    };
    if !value.is_mapping() {
        diagnostics.push(at(
            "",
            "an environment file must be a mapping of keys such as `version`, `name`, `branches`"
                .into(),
            Some("see `envctl schema` for the format".into()),
        ));
        return (None, diagnostics, None);
    }
    remove_unknown_keys(path, &index, "", &mut value, &mut diagnostics);
    // "did you mean `maxAcu`?" already says that `maxAcu` is missing.
    let suggested: Vec<String> = diagnostics
        .iter()
        .filter_map(|d| d.hint.as_deref()?.strip_prefix("did you mean "))
        .map(|s| s.trim_end_matches('?').to_owned())
        .collect();

    let (raw, patched) = decode_patching(value, &at, &suggested, &mut diagnostics);
    let Some(raw) = raw else {
        return (None, diagnostics, None);
    };
    let (spec, identity) = check_semantics(path, raw, &index, context, &patched, &mut diagnostics);
    if diagnostics.is_empty() {
        (spec, diagnostics, Some(identity))
    } else {
        (None, diagnostics, Some(identity))
    }
}

/// The file as a YAML value, or where and why serde_norway could not read it.
fn parse_value(path: &str, text: &str) -> Result<serde_norway::Value, Diagnostic> {
    serde_norway::from_str(text).map_err(|e| {
        let pos = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let message = strip_location(&e.to_string());
        let (message, hint) = match out_of_range_integer(&message) {
            Some((key_path, number)) => {
                let hint = if key_path == "database.schemaVersion" {
                    SCHEMA_VERSION_HINT
                } else {
                    "see `envctl schema` for the values it allows"
                };
                (
                    format!("`{key_path}` {number} is out of range"),
                    Some(hint.to_owned()),
                )
            }
            None => (message, None),
        };
        Diagnostic {
            file: path.to_owned(),
            line: pos.0,
            column: pos.1,
            message,
            hint,
        }
    })
}

/// Decodes the typed spec. On a type error, reports it, patches that value out (or in, for a
/// required key) and decodes again, so one typo does not hide the other errors of the file.
/// Returns the spec, if one could be decoded, and the key paths patched on the way.
fn decode_patching(
    mut value: serde_norway::Value,
    at: &impl Fn(&str, String, Option<String>) -> Diagnostic,
    suggested: &[String],
    diagnostics: &mut Vec<Diagnostic>,
) -> (Option<RawSpec>, Vec<String>) {
    let mut patched: Vec<String> = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, RawSpec>(value.clone()) {
            Ok(raw) => return (Some(raw), patched),
            Err(error) => error,
        };
        let mut segments: Vec<Segment> = error.path().iter().cloned().collect();
        let key_path = path_text(&segments);
        let message = strip_location(&error.inner().to_string());
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
            .map(str::to_owned);
        let target = match &missing {
            Some(field) => {
                segments.push(Segment::Map { key: field.clone() });
                path_text(&segments)
            }
            None => key_path.clone(),
        };
        // "did you mean `maxAcu`?" already says that `maxAcu` is missing.
        let announced = missing
            .as_ref()
            .is_some_and(|field| suggested.iter().any(|s| *s == format!("`{field}`")));
        if !announced {
            diagnostics.push(describe_decode_error(
                at,
                &key_path,
                &message,
                missing.as_deref(),
            ));
        }
        if patched.contains(&target) || patched.len() >= 32 || !patch(&mut value, &segments) {
            return (None, patched);
        }
        patched.push(target);
    }
}

/// `cluster.scaling.maxAcu`, `branches[1]`, `` for the root.
fn path_text(segments: &[Segment]) -> String {
    let mut text = String::new();
    for segment in segments {
        match segment {
            Segment::Map { key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Enum { variant } => text.push_str(&format!(".{variant}")),
            Segment::Unknown => text.push_str(".?"),
        }
    }
    text
}

/// Required keys get a neutral stand-in so decoding can go on; anything else is removed.
fn placeholder(segments: &[Segment]) -> Option<serde_norway::Value> {
    let keys: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let yaml = match keys.as_slice() {
        ["version"] => "1",
        ["name"] => "placeholder",
        ["branches"] => "[]",
        ["cluster"] => "{scaling: {minAcu: 0, maxAcu: 0}}",
        ["cluster", "scaling"] => "{minAcu: 0, maxAcu: 0}",
        ["cluster", "scaling", _] => "0",
        _ => return None,
    };
    serde_norway::from_str(yaml).ok()
}

/// Replaces or removes the value at `segments`. False when there is nothing to change.
fn patch(value: &mut serde_norway::Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        node = match (segment, node) {
            (Segment::Map { key }, serde_norway::Value::Mapping(map)) => {
                match map.get_mut(key.as_str()) {
                    Some(child) => child,
                    None => return false,
                }
            }
            (Segment::Seq { index }, serde_norway::Value::Sequence(seq)) => {
                match seq.get_mut(*index) {
                    Some(child) => child,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, serde_norway::Value::Mapping(map)) => match placeholder(segments) {
            Some(stand_in) => {
                map.insert(serde_norway::Value::String(key.clone()), stand_in);
                true
            }
            None => map.remove(key.as_str()).is_some(),
        },
        (Segment::Seq { index }, serde_norway::Value::Sequence(seq)) if *index < seq.len() => {
            seq.remove(*index);
            true
        }
        _ => false,
    }
}

/// A decode error in the user's terms, with a hint.
fn describe_decode_error(
    at: &impl Fn(&str, String, Option<String>) -> Diagnostic,
    key_path: &str,
    message: &str,
    missing: Option<&str>,
) -> Diagnostic {
    if let Some(field) = missing {
        let parent = if key_path.is_empty() {
            "the file".to_owned()
        } else {
            format!("`{key_path}`")
        };
        return at(
            key_path,
            format!("{parent} is missing the required key `{field}`"),
            Some("see `envctl schema` for the format".into()),
        );
    }
    let expected = message
        .rsplit_once(", expected ")
        .map(|(_, e)| e)
        .unwrap_or("");
    let found = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.split_once(", expected "))
        .map(|(found, _)| found.to_owned());
    let (want, hint) = match expected {
        "f64" => (
            "a number",
            "write a number without quotes, e.g. `4` or `0.5`",
        ),
        "u32" | "u64" => (
            "a whole number",
            "write a whole number without quotes, e.g. `1`",
        ),
        "a boolean" => (
            "`true` or `false`",
            "write `true` or `false` (YAML 1.2 reads `yes` and `on` as text)",
        ),
        "a string" => ("text", "quote it, e.g. `\"16.6\"`"),
        "a sequence" => ("a list", "write a list, e.g. `[\"feature/*\", main]`"),
        "a map" => ("a mapping", "write keys and values, e.g. `{ team: web }`"),
        other if other.starts_with("struct ") => {
            ("a mapping", "write the section's keys; see `envctl schema`")
        }
        _ => ("", ""),
    };
    let place = if key_path.is_empty() {
        String::new()
    } else {
        format!("`{key_path}`: ")
    };
    match (found, want.is_empty()) {
        (Some(found), false) => {
            // For text, suggest the same value quoted: `found` reads like "floating point `16.6`".
            let hint = match found.split('`').nth(1) {
                Some(literal) if expected == "a string" => format!("quote it: `\"{literal}\"`"),
                _ => hint.to_owned(),
            };
            let found = found
                .replace("floating point", "the number")
                .replace("integer", "the number")
                .replace("unit value", "nothing");
            at(
                key_path,
                format!("{place}expected {want}, found {found}"),
                Some(hint),
            )
        }
        _ => at(
            key_path,
            format!("{place}{message}"),
            (!hint.is_empty()).then(|| hint.into()),
        ),
    }
}

const SCHEMA_VERSION_HINT: &str =
    "use `latest` or a migration version from 1 to 9223372036854775807";

/// The key path and the number of serde_norway's error for an integer no YAML value holds
/// (`database.schemaVersion: invalid type: integer `99…9` as u128, expected any YAML value`).
fn out_of_range_integer(message: &str) -> Option<(&str, &str)> {
    let (key_path, rest) = match message.split_once(": invalid type: integer `") {
        Some(split) => split,
        None => ("", message.strip_prefix("invalid type: integer `")?),
    };
    let (number, rest) = rest.split_once('`')?;
    (rest.starts_with(" as u128") || rest.starts_with(" as i128")).then_some((key_path, number))
}

/// serde_norway appends " at line L column C"; we print the position ourselves.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

fn remove_unknown_keys(
    path: &str,
    index: &Index,
    key_path: &str,
    value: &mut serde_norway::Value,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let Some(known) = raw::known_keys(key_path) else {
        return;
    };
    let serde_norway::Value::Mapping(map) = value else {
        return;
    };
    let mut unknown = Vec::new();
    for (key, child) in map.iter_mut() {
        let Some(key) = key.as_str() else { continue };
        let child_path = if key_path.is_empty() {
            key.to_owned()
        } else {
            format!("{key_path}.{key}")
        };
        if known.contains(&key) {
            remove_unknown_keys(path, index, &child_path, child, diagnostics);
            continue;
        }
        unknown.push(key.to_owned());
        let pos = index.key_pos(&child_path);
        let section = if key_path.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in `{key_path}`")
        };
        if key == "<<" {
            let pos = index.key_pos(&child_path);
            diagnostics.push(Diagnostic {
                file: path.to_owned(),
                line: pos.line,
                column: pos.column,
                message: "YAML merge keys (`<<`) are not supported in environment files".into(),
                hint: Some("write the keys out in full".into()),
            });
            continue;
        }
        let hint = match did_you_mean(key, known) {
            Some(suggestion) => format!("did you mean `{suggestion}`?"),
            None => format!(
                "expected one of {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        diagnostics.push(Diagnostic {
            file: path.to_owned(),
            line: pos.line,
            column: pos.column,
            message: format!("unknown key `{key}` {section}"),
            hint: Some(hint),
        });
    }
    for key in unknown {
        map.remove(key.as_str());
    }
}

/// The closest candidate, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| {
            let (a, b) = (input.to_lowercase(), c.to_lowercase());
            // Transpositions and one-letter slips count as close for short words too.
            let edits = strsim::osa_distance(&a, &b);
            let score = if edits <= 1.max(b.len() / 4) {
                1.0
            } else {
                strsim::jaro_winkler(&a, &b)
            };
            (score, *c)
        })
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Places semantic errors of one file: a value that failed to decode was reported already, so
/// errors under its (stand-in) path are dropped.
struct Semantics<'a> {
    path: &'a str,
    index: &'a Index,
    patched: &'a [String],
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl Semantics<'_> {
    fn is_patched(&self, key_path: &str) -> bool {
        let key_path = key_path.strip_suffix("#key").unwrap_or(key_path);
        self.patched.iter().any(|p| {
            key_path == p
                || key_path.starts_with(&format!("{p}."))
                || key_path.starts_with(&format!("{p}["))
        })
    }

    /// An error at `key_path`'s value (or its key, for a path ending in `#key`).
    fn error(&mut self, key_path: &str, message: String, hint: &str) {
        if self.is_patched(key_path) {
            return;
        }
        let pos = match key_path.strip_suffix("#key") {
            Some(key_path) => self.index.key_pos(key_path),
            None => self.index.value_pos(key_path),
        };
        self.diagnostics.push(Diagnostic {
            file: self.path.to_owned(),
            line: pos.line,
            column: pos.column,
            message,
            hint: (!hint.is_empty()).then(|| hint.to_owned()),
        });
    }

    /// `version`, `name` and `branches`: the patterns and where each is.
    fn header(&mut self, raw: &RawSpec) -> (Vec<BranchPattern>, Vec<(usize, usize)>) {
        if raw.version != 1 {
            self.error(
                "version",
                format!(
                    "unsupported `version` {}; this envctl reads version 1",
                    raw.version
                ),
                "set `version: 1`, or upgrade envctl",
            );
        }
        if !is_env_name(&raw.name) {
            self.error(
                "name",
                format!("`name` `{}` is not a valid environment name", raw.name),
                "use 1 to 63 of `a-z`, `0-9` and `-`, starting with a letter, e.g. `preview`",
            );
        }
        if raw.branches.is_empty() {
            self.error(
                "branches",
                "`branches` is empty, so this spec covers no branch".into(),
                "list branch names or globs, e.g. `[\"feature/*\"]`",
            );
        }
        let mut patterns = Vec::new();
        let mut positions = Vec::new();
        let branches: &[String] = if raw.branches.len() > MAX_BRANCH_PATTERNS {
            self.error(
                "branches",
                format!(
                    "`branches` lists {} patterns; at most {MAX_BRANCH_PATTERNS} are allowed",
                    raw.branches.len()
                ),
                "cover many branches with one glob, e.g. `feature/**`",
            );
            &[]
        } else {
            &raw.branches
        };
        for (i, text) in branches.iter().enumerate() {
            let key_path = format!("branches[{i}]");
            if branches[..i].contains(text) {
                self.error(
                    &key_path,
                    format!("branch pattern `{text}` is listed twice"),
                    "remove one of them",
                );
                continue;
            }
            match BranchPattern::parse(text) {
                Ok(p) => {
                    let pos = self.index.value_pos(&key_path);
                    patterns.push(p);
                    positions.push((pos.line, pos.column));
                }
                Err(message) => self.error(
                    &key_path,
                    message,
                    "`*` matches within one `/` segment, `**` across segments, e.g. `feature/**`",
                ),
            }
        }
        if !patterns.is_empty() && patterns.iter().all(|p| p.excludes) {
            self.error(
                "branches",
                "every pattern in `branches` starts with `!`, so this spec covers no branch".into(),
                "a `!` pattern only takes branches away from the others: add the branches to cover, e.g. `[\"**\", \"!dependabot/**\"]`",
            );
        }
        (patterns, positions)
    }

    /// The `cluster` section; `None` when its scaling is unusable.
    fn cluster(&mut self, cluster: &RawCluster) -> Option<ClusterSettings> {
        if cluster.engine != "aurora-postgresql" {
            let hint = match did_you_mean(&cluster.engine, &["aurora-postgresql"]) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "version 1 supports `aurora-postgresql` only".into(),
            };
            self.error(
                "cluster.engine",
                format!("unsupported engine `{}`", cluster.engine),
                &hint,
            );
        }
        if let Some(version) = &cluster.engine_version
            && !is_engine_version(version)
        {
            self.error(
                "cluster.engineVersion",
                format!("`{version}` is not an engine version"),
                "quote it as a string of numbers and dots, e.g. `\"16.6\"`",
            );
        }
        if !cluster.express {
            self.error(
                "cluster.express",
                "version 1 supports express configuration only".into(),
                "set `express: true` or remove the key",
            );
        }
        let min = self.acu("cluster.scaling.minAcu", cluster.scaling.min_acu);
        let max = self.acu("cluster.scaling.maxAcu", cluster.scaling.max_acu);
        let scaling_patched =
            self.is_patched("cluster.scaling.minAcu") || self.is_patched("cluster.scaling.maxAcu");
        if let (Some(min), Some(max)) = (min, max)
            && min > max
            && !scaling_patched
        {
            self.error(
                "cluster.scaling.minAcu",
                format!("`minAcu` {min} is greater than `maxAcu` {max}"),
                "make `minAcu` at most `maxAcu`",
            );
        }
        if let Some(max) = max
            && max < Acu::ONE
        {
            self.error(
                "cluster.scaling.maxAcu",
                format!("`maxAcu` {max} is below 1 ACU, which AWS refuses for a maximum"),
                "set `maxAcu: 1` or more (`minAcu: 0` still lets the cluster pause)",
            );
        }
        self.tags(&cluster.tags);
        Some(ClusterSettings {
            engine: cluster.engine.clone(),
            engine_version: cluster.engine_version.clone(),
            express: cluster.express,
            scaling: Scaling {
                min_acu: min?,
                max_acu: max?,
            },
            deletion_protection: cluster.deletion_protection,
            tags: cluster.tags.clone(),
        })
    }

    fn acu(&mut self, key_path: &str, value: f64) -> Option<Acu> {
        let acu = Acu::from_f64(value);
        if acu.is_none() {
            let problem = if (0.0..=256.0).contains(&value) {
                "is not a multiple of 0.5"
            } else {
                "is out of range"
            };
            self.error(
                key_path,
                format!("{value} ACU {problem}"),
                "use 0 to 256 in steps of 0.5, e.g. 0.5, 4 or 16",
            );
        }
        acu
    }

    /// `cluster.tags`: AWS's alphabet and limits, and room beside envctl's own.
    fn tags(&mut self, tags: &BTreeMap<String, String>) {
        if tags.len() > MAX_USER_TAGS {
            self.error(
                "cluster.tags",
                format!(
                    "{} tags; at most {MAX_USER_TAGS} fit beside envctl's own {OWN_TAGS} (AWS allows 50 per resource)",
                    tags.len()
                ),
                "remove some tags",
            );
        } else if encode_tag_keys(tags.keys()).is_none() {
            self.error(
                "cluster.tags",
                format!(
                    "the tag keys are too long together: envctl records them in `{}`, a tag value of at most {MAX_TAG_VALUE_LEN} characters",
                    model_tags::SPEC_TAGS
                ),
                "use fewer or shorter tag keys",
            );
        }
        for (key, value) in tags {
            let key_path = format!("cluster.tags.{key}");
            let key_place = format!("{key_path}#key");
            if key.starts_with(model_tags::RESERVED_PREFIX) || aws_reserved(key) {
                self.error(
                    &key_place,
                    format!("tag key `{key}` is reserved"),
                    "keys starting with `envctl:`, `aws:` or `rds:` are set by envctl or AWS; choose another key",
                );
            } else if key.is_empty() || key.chars().count() > 128 || !key.chars().all(tag_char) {
                self.error(
                    &key_place,
                    format!("tag key `{key}` is not allowed by AWS"),
                    "use 1 to 128 letters, digits, spaces and `_ . : / = + - @`",
                );
            }
            if value.chars().count() > 256 || !value.chars().all(tag_char) {
                self.error(
                    &key_path,
                    format!("the value of tag `{key}` is not allowed by AWS"),
                    "use up to 256 letters, digits, spaces and `_ . : / = + - @`",
                );
            } else if aws_reserved(value) {
                self.error(
                    &key_path,
                    format!(
                        "the value of tag `{key}` starts with `aws:` or `rds:`, which AWS refuses"
                    ),
                    "choose a value that does not start with `aws:` or `rds:`",
                );
            }
        }
    }

    /// The `database` section: names, target version (`None` for `latest`), seeds.
    fn database(&mut self, database: &RawDatabase, context: &Context) -> Option<u64> {
        for (field, value) in [("name", &database.name), ("user", &database.user)] {
            if !is_sql_name(value) {
                self.error(
                    &format!("database.{field}"),
                    format!("`{value}` is not a valid database {field}"),
                    "use 1 to 63 letters, digits and `_`, starting with a letter",
                );
            }
        }
        if is_sql_name(&database.user)
            && let Some(why) = reserved_user(&database.user)
        {
            self.error(
                "database.user",
                format!("`{}` is {why}", database.user),
                "choose a name of your own for the application's user, e.g. `app`",
            );
        }
        let target = match database.schema_version {
            SchemaVersion::Latest => None,
            SchemaVersion::Version(v) => {
                if v > MAX_MIGRATION_VERSION {
                    self.error(
                        "database.schemaVersion",
                        format!("`database.schemaVersion` {v} is out of range"),
                        SCHEMA_VERSION_HINT,
                    );
                } else if v > context.highest_migration {
                    self.error(
                        "database.schemaVersion",
                        format!(
                            "`schemaVersion` {v} is beyond the highest migration ({})",
                            context.highest_migration
                        ),
                        "add the migration, lower the version, or use `latest`",
                    );
                }
                Some(v)
            }
        };
        let mut seen = BTreeSet::new();
        for (i, seed) in database.seeds.iter().enumerate() {
            let key_path = format!("database.seeds[{i}]");
            if !seen.insert(seed) {
                self.error(
                    &key_path,
                    format!("seed `{seed}` is listed twice"),
                    "remove one of them",
                );
            } else if !seed.starts_with(super::migrations::SEEDS_DIR) || !seed.ends_with(".sql") {
                self.error(
                    &key_path,
                    format!("seed `{seed}` is not a `.sql` file under `schemas/seeds/`"),
                    "give the repository-relative path, e.g. `schemas/seeds/users.sql`",
                );
            } else if context.unusable.contains(seed) {
                self.error(
                    &key_path,
                    format!("seed file `{seed}` cannot be used: its own error says why"),
                    "fix the error reported for the file",
                );
            } else if let Some(inside) = directory_of(seed, context.seed_paths) {
                self.error(
                    &key_path,
                    format!("seed `{seed}` is a directory, not a file"),
                    &format!("list the files in it, e.g. `{inside}`"),
                );
            } else if !context.seed_paths.contains(seed) {
                let hint = match similar_seed(seed, context.seed_paths) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "create the file or remove it from `seeds`".into(),
                };
                self.error(
                    &key_path,
                    format!("seed file `{seed}` does not exist"),
                    &hint,
                );
            }
        }
        target
    }

    /// `lifecycle.ttl` in seconds.
    fn ttl(&mut self, lifecycle: &RawLifecycle) -> Option<u64> {
        let text = lifecycle.ttl.as_ref()?;
        match parse_ttl(text) {
            Some(seconds) if seconds <= MAX_TTL_SECONDS => Some(seconds),
            parsed => {
                let zero = text
                    .strip_suffix(['m', 'h', 'd'])
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b == b'0'));
                if zero {
                    self.error(
                        "lifecycle.ttl",
                        format!("`lifecycle.ttl` `{text}` is zero"),
                        "write at least `1m`, or leave `ttl` out to keep the environment until its branch goes",
                    );
                    return None;
                }
                // Well written but too long (or too long to count) is its own mistake.
                let well_formed = parsed.is_some()
                    || text.strip_suffix(['m', 'h', 'd']).is_some_and(|n| {
                        n.bytes().all(|b| b.is_ascii_digit()) && n.bytes().any(|b| b != b'0')
                    });
                if well_formed {
                    self.error(
                        "lifecycle.ttl",
                        format!(
                            "`lifecycle.ttl` `{text}` is longer than the maximum of {} days",
                            MAX_TTL_SECONDS / 86_400
                        ),
                        "write at most `365d`, e.g. `30d`",
                    );
                } else {
                    self.error(
                        "lifecycle.ttl",
                        format!("`{text}` is not a duration"),
                        "write a whole number of minutes, hours or days: `30m`, `12h`, `7d`",
                    );
                }
                None
            }
        }
    }
}

/// The existing seed whose file name is closest to `seed`'s (a shared `schemas/seeds/` prefix
/// says nothing).
fn similar_seed<'a>(seed: &str, seed_paths: &'a BTreeSet<String>) -> Option<&'a String> {
    let file_name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    let names: Vec<String> = seed_paths.iter().map(|p| file_name(p)).collect();
    let candidates: Vec<&str> = names.iter().map(String::as_str).collect();
    let name = did_you_mean(&file_name(seed), &candidates)?;
    seed_paths.iter().find(|p| file_name(p) == name)
}

fn check_semantics(
    path: &str,
    raw: RawSpec,
    index: &Index,
    context: &Context,
    patched: &[String],
    diagnostics: &mut Vec<Diagnostic>,
) -> (Option<Spec>, Identity) {
    let mut semantics = Semantics {
        path,
        index,
        patched,
        diagnostics,
    };
    let (patterns, pattern_positions) = semantics.header(&raw);
    let cluster = semantics.cluster(&raw.cluster);
    let target = semantics.database(&raw.database, context);
    let data = raw
        .database
        .from
        .as_ref()
        .map(|from| semantics.data_source(from, context));
    let ttl_seconds = semantics.ttl(&raw.lifecycle);
    let name_pos = index.value_pos("name");
    let identity = Identity {
        file: path.to_owned(),
        name: raw.name.clone(),
        name_pos: (name_pos.line, name_pos.column),
        // The same `!` pattern in two files takes the same branches from both: no clash.
        patterns: patterns
            .iter()
            .zip(pattern_positions.iter().copied())
            .filter(|(p, _)| !p.excludes)
            .map(|(p, position)| (p.text.clone(), position))
            .collect(),
    };
    let Some(cluster) = cluster else {
        return (None, identity);
    };
    // A `from` with errors makes no spec (they are reported); none at all is `None`.
    let data = match data {
        Some(None) => return (None, identity),
        Some(Some(data)) => Some(data),
        None => None,
    };
    let database = DatabaseSettings {
        name: raw.database.name.clone(),
        user: raw.database.user.clone(),
    };
    let hash_input = serde_json::json!({
        "name": raw.name,
        "cluster": cluster,
        "database": database,
        "protect": raw.lifecycle.protect,
        "ttl": ttl_seconds,
        "from": data.as_ref().map(|d| serde_json::json!({
            "source": d.from,
            "rules": d.rules,
            "files": d.files,
        })),
    });
    let hash = sha256_hex(hash_input.to_string().as_bytes())[..16].to_owned();
    let spec = Spec {
        file: path.to_owned(),
        name_pos: (name_pos.line, name_pos.column),
        pattern_positions,
        name: raw.name,
        branches: patterns,
        cluster: std::sync::Arc::new(cluster),
        database,
        schema_version: target,
        seeds: raw.database.seeds,
        ttl_seconds,
        protect: raw.lifecycle.protect,
        hash,
        resolved_seeds: std::sync::OnceLock::new(),
        data,
        resolved_data: std::sync::OnceLock::new(),
    };
    (Some(spec), identity)
}

impl Semantics<'_> {
    /// `database.from`: one source (a branch, or a cluster), rules on well-formed columns with
    /// known strategies, masking files that exist.
    fn data_source(&mut self, from: &RawFrom, context: &Context) -> Option<super::SpecSource> {
        let mut ok = true;
        let source = match (&from.branch, &from.cluster) {
            (Some(_), Some(_)) => {
                self.error(
                    "database.from.cluster",
                    "`from` names both a `branch` and a `cluster`".into(),
                    "keep one: `branch` for another environment of this repository, `cluster` for a database envctl does not manage",
                );
                ok = false;
                SourceRef::DefaultBranch
            }
            (Some(branch), None) => {
                if let Err(why) = check_branch_name(branch) {
                    self.error("database.from.branch", why, "name a branch, e.g. `main`");
                    ok = false;
                }
                SourceRef::Branch(branch.clone())
            }
            (None, Some(cluster)) => {
                if !is_valid_rds_identifier(cluster) {
                    self.error(
                        "database.from.cluster",
                        format!("`{cluster}` is not a DB cluster identifier"),
                        "use 1 to 63 of `a-z`, `0-9` and `-`, starting with a letter",
                    );
                    ok = false;
                }
                SourceRef::Cluster(cluster.clone())
            }
            (None, None) => SourceRef::DefaultBranch,
        };
        let mut rules = Vec::new();
        for (column, strategy) in &from.mask {
            let key_path = format!("database.from.mask.{column}");
            let column = match ColumnPath::parse(column) {
                Ok(column) if reserved_schema(&column.schema) => {
                    self.error(
                        &format!("{key_path}#key"),
                        format!(
                            "masking rule `{column}` names a table in `{}`, which holds \
                             PostgreSQL's own catalogs or envctl's records, not data to mask",
                            column.schema
                        ),
                        "name a table of your own schemas; masking runs as the master user, \
                         and an UPDATE of a catalog would change the whole server",
                    );
                    None
                }
                Ok(column) => Some(column),
                Err(why) => {
                    self.error(
                        &format!("{key_path}#key"),
                        format!("masking rule {why}"),
                        "name the column as `schema.table.column`, e.g. `app.users.email` (double-quote a name with other characters)",
                    );
                    None
                }
            };
            let strategy = match MaskStrategy::parse(strategy.as_deref()) {
                Ok(strategy) => Some(strategy),
                Err(why) => {
                    let hint =
                        match did_you_mean(strategy.as_deref().unwrap_or(""), &MaskStrategy::NAMES)
                        {
                            Some(name) => format!("did you mean `{name}`?"),
                            None => {
                                "use `null`, `email`, `name`, `hash` or `fixed:<literal>`".into()
                            }
                        };
                    self.error(&key_path, why, &hint);
                    None
                }
            };
            match (column, strategy) {
                (Some(column), Some(strategy)) => rules.push(MaskRule { column, strategy }),
                _ => ok = false,
            }
        }
        rules.sort();
        for pair in rules.windows(2) {
            if pair[0].column == pair[1].column {
                self.error(
                    "database.from.mask",
                    format!("column `{}` has two masking rules", pair[0].column),
                    "keep one rule per column",
                );
                ok = false;
            }
        }
        ok &= self.mask_files(&from.mask_sql, context);
        ok &= self.master_user(from.master_user.as_deref(), &source);
        let pos = self.index.value_pos("database.from");
        ok.then(|| super::SpecSource {
            from: source,
            master_user: from.master_user.clone(),
            rules,
            files: from.mask_sql.clone(),
            pos: (pos.line, pos.column),
            branch_pos: {
                let p = self.index.value_pos("database.from.branch");
                (p.line, p.column)
            },
        })
    }

    /// `database.from.masterUser`: a user name, beside a `from.cluster` only.
    fn master_user(&mut self, user: Option<&str>, source: &SourceRef) -> bool {
        let Some(user) = user else {
            return true;
        };
        if !matches!(source, SourceRef::Cluster(_)) {
            self.error(
                "database.from.masterUser",
                "`masterUser` is for a `from.cluster` source: envctl's own environments' master user is `postgres`".into(),
                "remove it, or name the cluster with `cluster`",
            );
            return false;
        }
        if !is_sql_name(user) {
            self.error(
                "database.from.masterUser",
                format!("`{user}` is not a valid user name"),
                "use 1 to 63 letters, digits and `_`, starting with a letter (the cluster's `MasterUsername`)",
            );
            return false;
        }
        true
    }

    /// `database.from.maskSql`: each listed once, a `.sql` file under `schemas/mask/` that
    /// exists and loaded. `false` when one is not.
    fn mask_files(&mut self, files: &[String], context: &Context) -> bool {
        let mut ok = true;
        let mut seen = BTreeSet::new();
        for (i, file) in files.iter().enumerate() {
            let key_path = format!("database.from.maskSql[{i}]");
            if !seen.insert(file) {
                self.error(
                    &key_path,
                    format!("masking file `{file}` is listed twice"),
                    "remove one of them",
                );
                ok = false;
            } else if !file.starts_with(super::migrations::MASK_DIR) || !file.ends_with(".sql") {
                self.error(
                    &key_path,
                    format!("masking file `{file}` is not a `.sql` file under `schemas/mask/`"),
                    "give the repository-relative path, e.g. `schemas/mask/extra.sql`",
                );
                ok = false;
            } else if context.unusable.contains(file) {
                self.error(
                    &key_path,
                    format!("masking file `{file}` cannot be used: its own error says why"),
                    "fix the error reported for the file",
                );
                ok = false;
            } else if let Some(inside) = directory_of(file, context.mask_paths) {
                self.error(
                    &key_path,
                    format!("masking file `{file}` is a directory, not a file"),
                    &format!("list the files in it, e.g. `{inside}`"),
                );
                ok = false;
            } else if !context.mask_paths.contains(file) {
                self.error(
                    &key_path,
                    format!("masking file `{file}` does not exist"),
                    "create the file or remove it from `maskSql`",
                );
                ok = false;
            }
        }
        ok
    }
}

/// The first file found under `path` when `path` is a directory of them (seeds and masking files
/// are read from subdirectories too, so a directory named `x.sql` is a real one).
fn directory_of<'a>(path: &str, files: &'a BTreeSet<String>) -> Option<&'a str> {
    let prefix = format!("{path}/");
    files
        .range(prefix.clone()..)
        .next()
        .filter(|file| file.starts_with(&prefix))
        .map(String::as_str)
}

/// AWS allows 50 tags per resource, envctl's own ([`model_tags::ALL`]) included, but for those
/// written only where they fit ([`model_tags::BEST_EFFORT`]).
const OWN_TAGS: usize = model_tags::ALL.len() - model_tags::BEST_EFFORT.len();
const MAX_USER_TAGS: usize = model_tags::AWS_TAG_LIMIT - OWN_TAGS;
/// The longest `lifecycle.ttl`: a year. Longer ones are not ephemeral, and far ones overflow the
/// dates `status` prints.
pub const MAX_TTL_SECONDS: u64 = 365 * 86_400;
/// The most `branches` patterns in one file: matching costs branches × patterns.
pub const MAX_BRANCH_PATTERNS: usize = 1000;
/// The highest migration version: the ledger stores versions as PostgreSQL `bigint`.
pub const MAX_MIGRATION_VERSION: u64 = i64::MAX as u64;

/// Whether AWS refuses a tag key or value for its prefix (`aws:`, `rds:`, in any case).
fn aws_reserved(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.starts_with("aws:") || lower.starts_with("rds:")
}

/// Why a role name cannot be the spec's user: PostgreSQL's and RDS's own roles, the names SQL
/// reserves, and envctl's ledger reader.
fn reserved_user(user: &str) -> Option<&'static str> {
    let lower = user.to_ascii_lowercase();
    if lower.starts_with("pg_") {
        Some("a PostgreSQL built-in role name (`pg_*` is reserved)")
    } else if lower.starts_with("rds") {
        Some(
            "a name RDS reserves for its own roles (`rds*`: `rds_superuser`, `rdsadmin`, `rds_iam`, …)",
        )
    } else if matches!(
        lower.as_str(),
        "public" | "none" | "current_user" | "session_user" | "current_role" | "user"
    ) {
        Some("a name SQL reserves, not a role")
    } else if lower == crate::model::READER_USER {
        Some("envctl's own ledger reader")
    } else {
        None
    }
}

fn tag_char(c: char) -> bool {
    c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c)
}

fn is_env_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_engine_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

fn is_sql_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `30m`, `12h`, `7d` → seconds.
pub fn parse_ttl(text: &str) -> Option<u64> {
    let unit = match text.chars().last()? {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok().filter(|n| *n > 0)?;
    n.checked_mul(unit)
}

/// A schema a masking rule may not name: PostgreSQL's own (`pg_catalog`, `pg_toast`, any
/// `pg_…`, which no user can create, and `information_schema`) and envctl's records (`envctl`).
fn reserved_schema(schema: &str) -> bool {
    schema.starts_with("pg_") || schema == "information_schema" || schema == "envctl"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_syntax() {
        assert_eq!(parse_ttl("30m"), Some(1800));
        assert_eq!(parse_ttl("12h"), Some(43_200));
        assert_eq!(parse_ttl("7d"), Some(604_800));
        for bad in [
            "",
            "7",
            "d",
            "0d",
            "-1d",
            "1.5h",
            "7w",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_ttl(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("maxAcus", &["minAcu", "maxAcu"]),
            Some("maxAcu")
        );
        assert_eq!(did_you_mean("zzz", &["minAcu", "maxAcu"]), None);
    }
}
