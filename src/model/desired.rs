//! What a branch wants: the spec that covers it resolved for that branch ([`DesiredEnv`]), with
//! its scaling, migrations and seeds, and the ledger digest it has once converged.
//!
//! Architecture invariant: no IO (see `model/mod.rs`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::identity::{ClusterId, Owner, sha256_hex};
use super::tags::{self, MAX_TAG_VALUE_LEN, Tags, encode_branch_tag, encode_tag_keys};

/// Checksum of a migration or seed file: SHA-256 of the content with CRLF normalized to LF, so a
/// checkout with `core.autocrlf` does not look edited.
pub fn content_checksum(text: &str) -> String {
    sha256_hex(normalize_line_endings(text).as_bytes())
}

/// Replaces every CRLF with LF.
pub fn normalize_line_endings(text: &str) -> String {
    text.replace("\r\n", "\n")
}

/// Aurora capacity units, stored in half units so that equality is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acu(u16);

impl Acu {
    pub const MAX: Acu = Acu(512);
    pub const ONE: Acu = Acu(2);

    /// `None` unless `value` is within 0..=256 and a multiple of 0.5.
    pub fn from_f64(value: f64) -> Option<Acu> {
        let halves = value * 2.0;
        if !(0.0..=512.0).contains(&halves) || halves.fract() != 0.0 {
            return None;
        }
        Some(Acu(halves as u16))
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 2.0
    }
}

impl fmt::Display for Acu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(2) {
            write!(f, "{}", self.0 / 2)
        } else {
            write!(f, "{}.5", self.0 / 2)
        }
    }
}

impl Serialize for Acu {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(2) {
            s.serialize_u64(u64::from(self.0 / 2))
        } else {
            s.serialize_f64(self.as_f64())
        }
    }
}

/// Serverless v2 scaling range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Scaling {
    pub min_acu: Acu,
    pub max_acu: Acu,
}

impl fmt::Display for Scaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}–{} ACU", self.min_acu, self.max_acu)
    }
}

/// A versioned SQL migration from `schemas/migrations/NNNN_description.sql`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub version: u64,
    /// The file name without `.sql`, e.g. `0004_add_orders`.
    pub name: String,
    /// Repository-relative path.
    pub path: String,
    pub checksum: String,
    /// The file's text with line endings normalized to LF.
    pub sql: String,
    /// First line is `-- envctl:no-transaction`.
    pub no_transaction: bool,
    /// What the migration linter found in it, found once when the snapshot was loaded.
    pub lint: std::sync::Arc<[super::lint::LintFinding]>,
}

/// A seed file to apply after migrations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub path: String,
    pub checksum: String,
    /// Shared by every branch that applies it.
    pub sql: std::sync::Arc<str>,
}

/// Cluster settings from a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterSettings {
    pub engine: String,
    pub engine_version: Option<String>,
    pub express: bool,
    pub scaling: Scaling,
    pub deletion_protection: bool,
    pub tags: BTreeMap<String, String>,
}

/// Database settings from a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DatabaseSettings {
    pub name: String,
    pub user: String,
}

/// Where a branch's specs, migrations and seeds were read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SourceKind {
    /// The working tree, uncommitted changes included.
    WorkingTree,
    /// A commit of the branch, read through git with no checkout.
    Commit(String),
}

/// What a branch wants: the spec that covers it, resolved for that branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredEnv {
    pub branch: String,
    pub cluster_id: ClusterId,
    /// The spec's `name`.
    pub env: String,
    /// Repository-relative path of the spec file.
    pub spec_file: String,
    pub spec_hash: String,
    /// The spec's cluster settings (shared with every branch the spec covers).
    pub cluster: std::sync::Arc<ClusterSettings>,
    pub database: DatabaseSettings,
    pub protect: bool,
    pub ttl_seconds: Option<u64>,
    /// The migrations to apply, in version order, up to the target version (shared with every
    /// branch of the same tree: plans of many branches hold one copy).
    pub migrations: std::sync::Arc<[Migration]>,
    /// Every migration in the catalogue, in version order (to explain divergence).
    pub catalogue: std::sync::Arc<[Migration]>,
    pub target_version: u64,
    pub seeds: std::sync::Arc<[Seed]>,
    /// Where its data comes from when it is a data branch (`database.from`), shared with every
    /// branch the spec covers; `None`: it starts empty.
    pub data: Option<std::sync::Arc<DataSource>>,
}

/// Where a data branch's data comes from (`database.from`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRef {
    /// The default branch's environment (the spec names no branch).
    DefaultBranch,
    /// That branch's environment.
    Branch(String),
    /// A cluster (on the local provider, a database) envctl does not manage: read only, never
    /// modified, deleted or tagged.
    Cluster(String),
}

/// The column a masking rule names: `schema.table.column` (unquoted parts folded to lower case,
/// as PostgreSQL folds them; `"Quoted"` ones kept as written).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ColumnPath {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl ColumnPath {
    /// Its table, as a spec would write it: `app.users`.
    pub fn table_written(&self) -> String {
        format!(
            "{}.{}",
            written_part(&self.schema),
            written_part(&self.table)
        )
    }

    /// Parses `schema.table.column`, each part a PostgreSQL identifier: unquoted (letters,
    /// digits, `_`, `$`, not starting with a digit or `$`; folded to lower case) or in double
    /// quotes (`""` for a quote inside).
    pub fn parse(text: &str) -> Result<ColumnPath, String> {
        let mut parts = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(format!("`{text}` has an unclosed `\"`")),
                    }
                }
                if part.is_empty() {
                    return Err(format!("`{text}` has an empty quoted name"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    let ok = c.is_alphabetic()
                        || c == '_'
                        || (!part.is_empty() && (c.is_ascii_digit() || c == '$'));
                    if !ok {
                        return Err(format!(
                            "`{text}`: `{c}` cannot be in an unquoted name; put that name in double quotes"
                        ));
                    }
                    part.extend(c.to_lowercase());
                    chars.next();
                }
                if part.is_empty() {
                    return Err(format!("`{text}` has an empty name"));
                }
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => {}
                Some(c) => return Err(format!("`{text}`: `{c}` after a quoted name")),
            }
        }
        match <[String; 3]>::try_from(parts) {
            Ok([schema, table, column]) => Ok(ColumnPath {
                schema,
                table,
                column,
            }),
            Err(parts) => Err(format!(
                "`{text}` names {} part{}; write `schema.table.column`",
                parts.len(),
                if parts.len() == 1 { "" } else { "s" }
            )),
        }
    }
}

/// A part as a spec would write it: plain when [`ColumnPath::parse`] reads it back as it is,
/// otherwise in double quotes (`app.users."E-Mail"`, never `app.users.E-Mail`).
fn written_part(part: &str) -> String {
    let plain = part.chars().enumerate().all(|(i, c)| {
        let letter = (c.is_alphabetic() && c.to_lowercase().eq(std::iter::once(c))) || c == '_';
        letter || (i > 0 && (c.is_ascii_digit() || c == '$'))
    });
    match plain && !part.is_empty() {
        true => part.to_owned(),
        false => format!("\"{}\"", part.replace('"', "\"\"")),
    }
}

/// As a spec would write it: parses back to itself.
impl fmt::Display for ColumnPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            written_part(&self.schema),
            written_part(&self.table),
            written_part(&self.column)
        )
    }
}

/// How a masking rule rewrites a column.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskStrategy {
    /// `NULL`.
    Null,
    /// A fake address, the same for the same input and unique per input
    /// (`user-<hash>@example.invalid`).
    Email,
    /// A fake name, the same for the same input.
    Name,
    /// A hash of the value (text), the same for the same input, so joins on masked columns still
    /// match.
    Hash,
    /// This literal, for every row.
    Fixed(String),
}

impl MaskStrategy {
    /// The strategies' names, as specs write them (`fixed:<literal>` for [`MaskStrategy::Fixed`]).
    pub const NAMES: [&str; 5] = ["null", "email", "name", "hash", "fixed:"];

    /// Parses a rule's strategy; YAML `null` is `None`.
    pub fn parse(text: Option<&str>) -> Result<MaskStrategy, String> {
        match text {
            None | Some("null") => Ok(MaskStrategy::Null),
            Some("email") => Ok(MaskStrategy::Email),
            Some("name") => Ok(MaskStrategy::Name),
            Some("hash") => Ok(MaskStrategy::Hash),
            Some(other) => match other.strip_prefix("fixed:") {
                Some(literal) => Ok(MaskStrategy::Fixed(literal.to_owned())),
                None => Err(format!("`{other}` is not a masking strategy")),
            },
        }
    }
}

impl fmt::Display for MaskStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskStrategy::Null => f.write_str("null"),
            MaskStrategy::Email => f.write_str("email"),
            MaskStrategy::Name => f.write_str("name"),
            MaskStrategy::Hash => f.write_str("hash"),
            MaskStrategy::Fixed(literal) => write!(f, "fixed:{literal}"),
        }
    }
}

/// One masking rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MaskRule {
    pub column: ColumnPath,
    pub strategy: MaskStrategy,
}

/// A data branch's source and masking: rules (sorted by column) and files (in the spec's order),
/// run on the copy, in one transaction, before anything else may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSource {
    pub from: SourceRef,
    /// `from.masterUser`: the master user a `from.cluster` source has, as the spec says (`None`:
    /// `postgres`).
    pub master_user: Option<String>,
    pub rules: Vec<MaskRule>,
    pub files: std::sync::Arc<[Seed]>,
}

impl DataSource {
    /// A hash over the rules and the files' checksums: what masking did, recorded with it.
    pub fn mask_digest(&self) -> String {
        let mut text = String::new();
        for rule in &self.rules {
            // The parts as they are (not as displayed: a digest recorded before stays valid).
            let c = &rule.column;
            let path = format!("{}.{}.{}", c.schema, c.table, c.column);
            text.push_str(&format!("rule {path} {}\n", rule.strategy));
        }
        for file in self.files.iter() {
            text.push_str(&format!("file {} {}\n", file.path, file.checksum));
        }
        sha256_hex(text.as_bytes())[..16].to_owned()
    }
}

impl DesiredEnv {
    /// The tags envctl writes for this spec on its environment, ownership included: everything but
    /// the state tags ([`tags::STATE`]). Fails when a tag value cannot be written (a branch name
    /// too long for the tag).
    pub fn spec_tags(&self, owner: &Owner) -> Result<Tags, String> {
        let mut out = self.cluster.tags.clone();
        out.extend(owner.tags());
        out.insert(tags::BRANCH.into(), encode_branch_tag(&self.branch)?);
        out.insert(tags::ENV.into(), self.env.clone());
        out.insert(tags::SPEC_HASH.into(), self.spec_hash.clone());
        out.insert(
            tags::DATABASE.into(),
            format!("{}@{}", self.database.user, self.database.name),
        );
        if self.protect {
            out.insert(tags::PROTECT.into(), "true".into());
        }
        if let Some(ttl) = self.ttl_seconds {
            out.insert(tags::TTL.into(), ttl.to_string());
        }
        if !self.cluster.tags.is_empty() {
            let keys = encode_tag_keys(self.cluster.tags.keys()).ok_or_else(|| {
                format!(
                    "the tag keys of `{}` are too long together: envctl records them in one tag of at most {MAX_TAG_VALUE_LEN} characters",
                    self.spec_file
                )
            })?;
            out.insert(tags::SPEC_TAGS.into(), keys);
        }
        Ok(out)
    }

    /// The ledger digest this environment has once it has converged.
    pub fn ledger_digest(&self) -> String {
        ledger_digest(
            self.migrations
                .iter()
                .map(|m| (m.version, m.checksum.as_str())),
            self.seeds
                .iter()
                .map(|s| (s.path.as_str(), s.checksum.as_str())),
        )
    }
}

/// A hash over applied migrations' and seeds' checksums (`envctl:ledger-digest`).
pub fn ledger_digest<'a>(
    migrations: impl Iterator<Item = (u64, &'a str)>,
    seeds: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut text = String::new();
    for (version, checksum) in migrations {
        text.push_str(&format!("migration {version} {checksum}\n"));
    }
    let mut seeds: Vec<_> = seeds.collect();
    seeds.sort();
    for (path, checksum) in seeds {
        text.push_str(&format!("seed {path} {checksum}\n"));
    }
    sha256_hex(text.as_bytes())[..16].to_owned()
}

/// What one branch in scope wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// No spec in the branch's tree covers it: it should have no environment.
    Nothing,
    Env(Box<DesiredEnv>),
    /// The branch's tree cannot say (an invalid spec, two specs tie): its environment is blocked
    /// and left as it is.
    Unknown {
        reason: String,
    },
}

impl Wanted {
    pub fn desired(&self) -> Option<&DesiredEnv> {
        match self {
            Wanted::Env(desired) => Some(desired),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acu_steps() {
        assert_eq!(Acu::from_f64(0.5).unwrap().to_string(), "0.5");
        assert_eq!(Acu::from_f64(256.0).unwrap().to_string(), "256");
        assert!(Acu::from_f64(0.3).is_none());
        assert!(Acu::from_f64(256.5).is_none());
        assert!(Acu::from_f64(-1.0).is_none());
    }
}

#[cfg(test)]
mod data_tests {
    use super::*;

    #[test]
    fn column_paths_fold_unquoted_names_and_keep_quoted_ones_whole() {
        let path = ColumnPath::parse(r#"App."Users.2024"."a""b;c""#).unwrap();
        assert_eq!(path.schema, "app");
        assert_eq!(path.table, "Users.2024");
        assert_eq!(path.column, "a\"b;c");
        assert_eq!(ColumnPath::parse("app.üsers.naïve").unwrap().table, "üsers");
        for bad in [
            "a.b", "a.b.c.d", "a..c", "a.b.\"c", "a.b.c;", "1a.b.c", "a.b.\"\"",
        ] {
            assert!(ColumnPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_column_path_displays_as_a_spec_would_write_it() {
        let path = ColumnPath::parse(r#"App."Users.2024"."a""b;c""#).unwrap();
        assert_eq!(path.to_string(), r#"app."Users.2024"."a""b;c""#);
        let path = ColumnPath::parse("app.üsers.naïve$1").unwrap();
        assert_eq!(path.to_string(), "app.üsers.naïve$1");
        let path = ColumnPath::parse(r#""1st"."$x"."E-Mail""#).unwrap();
        assert_eq!(path.to_string(), r#""1st"."$x"."E-Mail""#);
    }

    proptest::proptest! {
        #[test]
        fn a_displayed_column_path_parses_back_to_itself(
            schema in "[a-zA-Z_ä0-9$\\.\" -]{1,8}",
            table in "\\PC{1,6}",
            column in "[a-z_][a-z0-9_$]{0,6}",
        ) {
            let path = ColumnPath { schema, table, column };
            proptest::prop_assert_eq!(ColumnPath::parse(&path.to_string()), Ok(path.clone()));
        }
    }

    #[test]
    fn strategies_parse_as_specs_write_them() {
        assert_eq!(MaskStrategy::parse(None), Ok(MaskStrategy::Null));
        assert_eq!(
            MaskStrategy::parse(Some("fixed:0000")),
            Ok(MaskStrategy::Fixed("0000".into()))
        );
        assert_eq!(
            MaskStrategy::parse(Some("fixed:")),
            Ok(MaskStrategy::Fixed(String::new()))
        );
        assert!(MaskStrategy::parse(Some("Email")).is_err());
    }
}
