//! Domain values shared by every layer: repository names, branches, cluster ids, the ownership tag
//! encoding, desired and observed environments, ledgers, actions and plans.
//!
//! Architecture invariant: this module does no IO and imports no tokio, aws-sdk, sqlx or git2. Every
//! value here is plain data that tests can build by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Tag keys written on every managed cluster. Keys starting with `envctl:` are reserved.
pub mod tags {
    pub const RESERVED_PREFIX: &str = "envctl:";
    pub const MANAGED: &str = "envctl:managed";
    pub const REPO: &str = "envctl:repo";
    /// The cluster id prefix of the run that made it: a namespace (two prefixes never touch each
    /// other's environments).
    pub const PREFIX: &str = "envctl:prefix";
    pub const BRANCH: &str = "envctl:branch";
    pub const ENV: &str = "envctl:env";
    pub const SPEC_HASH: &str = "envctl:spec-hash";
    pub const SCHEMA_VERSION: &str = "envctl:schema-version";
    pub const LEDGER_DIGEST: &str = "envctl:ledger-digest";
    pub const BASE: &str = "envctl:base";
    pub const LAST_APPLIED: &str = "envctl:last-applied";
    /// `true` when the spec that last applied the environment had `lifecycle.protect: true`.
    pub const PROTECT: &str = "envctl:protect";
    /// The spec's ttl in seconds, when it has one (prune needs it after the spec is gone).
    pub const TTL: &str = "envctl:ttl";
    /// `{user}@{name}`: the spec's `database.user` and `database.name` when the environment was
    /// made (neither can change in place; on AWS the cluster does not say which user the spec named).
    pub const DATABASE: &str = "envctl:database";
    /// The keys of the spec's own tags, encoded (see [`super::encode_tag_keys`]): the tags envctl
    /// may change or remove. Any other tag (cost allocation, AWS Config, a human) is left alone.
    pub const SPEC_TAGS: &str = "envctl:spec-tags";
    /// Tags that describe the database's contents or history rather than the spec: written only
    /// from a ledger read under the advisory lock (or at create), never from the plan.
    pub const STATE: [&str; 4] = [SCHEMA_VERSION, LEDGER_DIGEST, LAST_APPLIED, BASE];
}

/// A resource's tags.
pub type Tags = BTreeMap<String, String>;

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checksum of a migration or seed file: SHA-256 of the content with CRLF normalized to LF, so a
/// checkout with `core.autocrlf` does not look edited.
pub fn content_checksum(text: &str) -> String {
    sha256_hex(normalize_line_endings(text).as_bytes())
}

/// Replaces every CRLF with LF.
pub fn normalize_line_endings(text: &str) -> String {
    text.replace("\r\n", "\n")
}

/// `OWNER/NAME`, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RepoName(String);

impl RepoName {
    /// Parses `owner/name` (GitHub's alphabet: letters, digits, `-`, `_`, `.`), lower-casing it.
    pub fn parse(text: &str) -> Result<RepoName, String> {
        let text = text.trim();
        let valid_part = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match text.split_once('/') {
            Some((owner, name)) if valid_part(owner) && valid_part(name) => {
                Ok(RepoName(text.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "`{text}` is not a repository name; expected `OWNER/NAME`, e.g. `acme/shop`"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The cluster id prefix: a letter, then up to 19 of `[a-z0-9-]`, no `--`, no trailing `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix(String);

impl Default for Prefix {
    fn default() -> Self {
        Prefix("envctl".to_owned())
    }
}

impl Prefix {
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let mut chars = text.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !starts_with_letter || !rest_ok || text.len() > 20 {
            return Err(format!(
                "`{text}` is not a valid prefix: use a lower-case letter followed by up to 19 of `a-z`, `0-9`, `-`"
            ));
        }
        if text.contains("--") || text.ends_with('-') {
            return Err(format!(
                "`{text}` is not a valid prefix: it may not contain `--` or end with `-`"
            ));
        }
        Ok(Prefix(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who owns an environment: this repository under this id prefix. envctl changes or deletes only
/// what carries `envctl:managed=true` with both of these, checked when observing and again on the
/// live resource right before every change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub repo: RepoName,
    pub prefix: Prefix,
}

impl Owner {
    /// Whether tags read from a live resource say it is ours.
    pub fn owns(&self, tags: &Tags) -> bool {
        tags.get(tags::MANAGED).map(String::as_str) == Some("true")
            && tags.get(tags::REPO).map(String::as_str) == Some(self.repo.as_str())
            && tags.get(tags::PREFIX).map(String::as_str) == Some(self.prefix.as_str())
    }

    /// Why tags read from a live resource are not ours, for an error message; `None` when they are.
    pub fn why_not_ours(&self, tags: &Tags) -> Option<String> {
        if tags.get(tags::MANAGED).map(String::as_str) != Some("true") {
            return Some("it does not carry `envctl:managed=true`".into());
        }
        match tags.get(tags::REPO) {
            Some(repo) if repo == self.repo.as_str() => {}
            Some(repo) => return Some(format!("it belongs to repository `{repo}`")),
            None => return Some("it carries no `envctl:repo` tag".into()),
        }
        match tags.get(tags::PREFIX) {
            Some(prefix) if prefix == self.prefix.as_str() => None,
            Some(prefix) => Some(format!(
                "it belongs to prefix `{prefix}` (ENVCTL_PREFIX), not `{}`",
                self.prefix.as_str()
            )),
            None => Some("it carries no `envctl:prefix` tag".into()),
        }
    }

    /// The tags that mark a resource as ours.
    pub fn tags(&self) -> Tags {
        Tags::from([
            (tags::MANAGED.to_owned(), "true".to_owned()),
            (tags::REPO.to_owned(), self.repo.as_str().to_owned()),
            (tags::PREFIX.to_owned(), self.prefix.as_str().to_owned()),
        ])
    }
}

/// A change to a resource's tags: set these, remove those; every other tag is left as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagUpdate {
    pub set: Tags,
    pub remove: BTreeSet<String>,
}

impl TagUpdate {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Sets one tag.
    pub fn set(key: &str, value: impl Into<String>) -> TagUpdate {
        TagUpdate {
            set: Tags::from([(key.to_owned(), value.into())]),
            remove: BTreeSet::new(),
        }
    }

    /// Applies the update to a tag map (what a provider does on the live resource).
    pub fn apply_to(&self, tags: &mut Tags) {
        for key in &self.remove {
            tags.remove(key);
        }
        tags.extend(self.set.clone());
    }
}

/// What to change so that `live` carries `desired`: keys in `desired` with another value are set;
/// keys that envctl owns on `live` (`envctl:` keys, and the spec tags listed in its
/// `envctl:spec-tags`) and that `desired` lacks are removed, except the state tags
/// ([`tags::STATE`]), which only a ledger read changes. Tags someone else put there are kept.
pub fn tag_update(live: &Tags, desired: &Tags) -> TagUpdate {
    let mut owned: BTreeSet<&str> = live
        .keys()
        .filter(|k| k.starts_with(tags::RESERVED_PREFIX))
        .map(String::as_str)
        .collect();
    let listed = live
        .get(tags::SPEC_TAGS)
        .and_then(|v| decode_tag_keys(v))
        .unwrap_or_default();
    owned.extend(listed.iter().map(String::as_str));
    TagUpdate {
        set: desired
            .iter()
            .filter(|(k, v)| live.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        remove: owned
            .into_iter()
            .filter(|k| live.contains_key(*k) && !desired.contains_key(*k))
            .filter(|k| !tags::STATE.contains(k))
            .map(str::to_owned)
            .collect(),
    }
}

/// Encodes the keys of a spec's tags for `envctl:spec-tags`: each key escaped as branch names are
/// (so no key contains a space), joined by spaces. `None` when the result is longer than a tag
/// value may be.
pub fn encode_tag_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Option<String> {
    let encoded: Vec<String> = keys.into_iter().map(|k| escape_tag_text(k)).collect();
    let text = encoded.join(" ");
    (text.len() <= MAX_TAG_VALUE_LEN).then_some(text)
}

/// Decodes `envctl:spec-tags`; `None` when it is not a valid encoding.
pub fn decode_tag_keys(value: &str) -> Option<Vec<String>> {
    value
        .split(' ')
        .filter(|k| !k.is_empty())
        .map(decode_branch_tag)
        .collect()
}

/// Checks a branch name against git's ref-name rules (`git check-ref-format --branch`).
pub fn check_branch_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{name}` is not a valid git branch name: {why}"));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "@" {
        return bad("`@` alone is not allowed");
    }
    if name == "HEAD" {
        return bad("`HEAD` names whatever is checked out, not a branch");
    }
    if name.starts_with('-') {
        return bad("it may not start with `-`");
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return bad("it may not start or end with `/` or contain `//`");
    }
    if name.ends_with('.') || name.contains("..") || name.contains("@{") {
        return bad("it may not end with `.` or contain `..` or `@{`");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad(&format!("it may not contain {c:?}"));
    }
    for component in name.split('/') {
        if component.starts_with('.') || component.ends_with(".lock") {
            return bad("no path component may start with `.` or end with `.lock`");
        }
    }
    Ok(())
}

/// Longest cluster id we generate: `{id}-instance-1` must fit in RDS's 63 characters.
pub const MAX_CLUSTER_ID_LEN: usize = 52;

/// An RDS DB cluster identifier that envctl derived for a branch, or read from a live cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(String);

impl ClusterId {
    /// `{prefix}-{slug}-{hash}`: see product.md "Identity and ownership".
    pub fn derive(prefix: &Prefix, repo: &RepoName, branch: &str) -> ClusterId {
        let hash = &sha256_hex(format!("{}\n{branch}", repo.as_str()).as_bytes())[..8];
        let mut slug = String::new();
        for c in branch.to_lowercase().chars() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                slug.push(c);
            } else if !slug.ends_with('-') {
                slug.push('-');
            }
        }
        let budget = MAX_CLUSTER_ID_LEN - prefix.as_str().len() - 2 - hash.len();
        let slug: String = slug.trim_matches('-').chars().take(budget).collect();
        let slug = slug.trim_end_matches('-');
        if slug.is_empty() {
            ClusterId(format!("{}-{hash}", prefix.as_str()))
        } else {
            ClusterId(format!("{}-{slug}-{hash}", prefix.as_str()))
        }
    }

    /// Wraps an id read from a live resource.
    pub fn from_live(id: impl Into<String>) -> ClusterId {
        ClusterId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `id` is a valid RDS DB cluster identifier (1–63, starts with a letter, `[a-z0-9-]`, no
/// `--`, no trailing `-`).
pub fn is_valid_rds_identifier(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-')
}

/// Longest AWS tag value.
pub const MAX_TAG_VALUE_LEN: usize = 256;

fn tag_char_unescaped(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '+' | '-' | '@')
}

/// Encodes a branch name for the `envctl:branch` tag: characters AWS tag values do not allow, and
/// `=` itself, become `=XX` per UTF-8 byte (`'` → `=27`).
pub fn encode_branch_tag(branch: &str) -> Result<String, String> {
    let out = escape_tag_text(branch);
    if out.len() > MAX_TAG_VALUE_LEN {
        return Err(format!(
            "branch `{branch}` is too long for the `envctl:branch` tag: its encoding has {} characters, AWS allows {MAX_TAG_VALUE_LEN}; use a shorter branch name",
            out.len()
        ));
    }
    Ok(out)
}

/// Escapes text for a tag value: characters AWS tag values do not allow, space and `=` become
/// `=XX` per UTF-8 byte.
fn escape_tag_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if tag_char_unescaped(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("={byte:02X}"));
            }
        }
    }
    out
}

/// Decodes an `envctl:branch` tag value; `None` when it is not a valid encoding.
pub fn decode_branch_tag(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut iter = value.bytes();
    while let Some(b) = iter.next() {
        if b == b'=' {
            let hi = iter.next()?;
            let lo = iter.next()?;
            let hex = [hi, lo];
            let text = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(text, 16).ok()?);
        } else if tag_char_unescaped(b as char) {
            bytes.push(b);
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Aurora capacity units, stored in half units so that equality is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acu(u16);

impl Acu {
    pub const MAX: Acu = Acu(512);

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

/// What a ledger says, as tags: written only from a ledger read under the advisory lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerTags {
    pub schema_version: u64,
    pub ledger_digest: String,
}

impl LedgerTags {
    /// A database whose ledger is unknown or being rebuilt: no plan takes it as converged.
    pub fn unknown() -> LedgerTags {
        LedgerTags {
            schema_version: 0,
            ledger_digest: "none".into(),
        }
    }

    /// What `ledger` says, seen by `desired`: its digest equals `desired.ledger_digest()` exactly
    /// when the ledger satisfies `desired` (seeds the spec no longer lists do not count).
    pub fn of_ledger(ledger: &Ledger, desired: &DesiredEnv) -> LedgerTags {
        let wanted: BTreeSet<&str> = desired.seeds.iter().map(|s| s.path.as_str()).collect();
        LedgerTags {
            schema_version: ledger.max_version(),
            ledger_digest: ledger_digest(
                ledger
                    .migrations
                    .iter()
                    .map(|m| (m.version, m.checksum.as_str())),
                ledger
                    .seeds
                    .iter()
                    .filter(|s| wanted.contains(s.path.as_str()))
                    .map(|s| (s.path.as_str(), s.checksum.as_str())),
            ),
        }
    }

    pub fn to_tags(&self) -> Tags {
        Tags::from([
            (
                tags::SCHEMA_VERSION.to_owned(),
                self.schema_version.to_string(),
            ),
            (tags::LEDGER_DIGEST.to_owned(), self.ledger_digest.clone()),
        ])
    }
}

/// One row of the migration ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: u64,
    pub name: String,
    pub checksum: String,
    pub sql: String,
}

/// One row of the seed ledger (the latest per path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedSeed {
    pub path: String,
    pub checksum: String,
}

/// What the ledger in a live database says was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// In version order.
    pub migrations: Vec<AppliedMigration>,
    pub seeds: Vec<AppliedSeed>,
}

impl Ledger {
    pub fn max_version(&self) -> u64 {
        self.migrations.iter().map(|m| m.version).max().unwrap_or(0)
    }
}

/// A live environment as a provider observed it, from its tags and control plane alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedEnv {
    pub cluster_id: ClusterId,
    /// All tags, envctl's and the user's.
    pub tags: BTreeMap<String, String>,
    /// Provider status, e.g. `available`.
    pub status: String,
    pub scaling: Option<Scaling>,
    pub deletion_protection: bool,
    /// Settings that cannot change in place, where the provider knows them.
    pub engine_version: Option<String>,
    pub database_name: Option<String>,
    pub database_user: Option<String>,
    /// When the environment was created (RFC 3339), where the provider knows it.
    pub created_at: Option<String>,
    /// `host:port` of its database, where the provider knows it.
    pub endpoint: Option<String>,
    /// The cloud resource's ARN (AWS).
    pub arn: Option<String>,
    /// Read only when the plan needs it (the ledger digest differs from the desired one).
    pub ledger: LedgerRead,
}

/// Whether and how the plan read an environment's ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LedgerRead {
    /// Not read: its digest tag matched, or the plan does not need it.
    #[default]
    NotRead,
    Read(Ledger),
    /// Reading it failed: the environment is blocked, the others go on.
    Failed(String),
}

/// What a provider's status means for envctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// Ready for anything.
    Available,
    /// On its way to available (`creating`, `modifying`, `starting`, `backing-up`, …): apply waits.
    Busy,
    /// Going away.
    Deleting,
    /// Will not become available by waiting (`stopped`, `failed`, inaccessible keys, …).
    Unusable,
}

impl StatusClass {
    pub fn of(status: &str) -> StatusClass {
        match status {
            "available" => StatusClass::Available,
            "deleting" => StatusClass::Deleting,
            "stopped"
            | "stopping"
            | "failed"
            | "inaccessible-encryption-credentials"
            | "inaccessible-encryption-credentials-recoverable"
            | "incompatible-network"
            | "incompatible-option-group"
            | "incompatible-parameters"
            | "incompatible-restore"
            | "storage-full" => StatusClass::Unusable,
            _ => StatusClass::Busy,
        }
    }
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

impl ObservedEnv {
    /// The branch this environment belongs to, decoded from its `envctl:branch` tag.
    pub fn branch(&self) -> Option<String> {
        self.tags
            .get(tags::BRANCH)
            .and_then(|v| decode_branch_tag(v))
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    pub fn env_name(&self) -> String {
        self.tag(tags::ENV).unwrap_or("-").to_owned()
    }

    /// The live values of the tags a spec owns: those listed in `envctl:spec-tags` (what the
    /// last apply wrote) and those `wanted` now. Tags anyone else put on the resource are not
    /// among them.
    pub fn spec_tags(&self, wanted: &Tags) -> Tags {
        let listed = self
            .tag(tags::SPEC_TAGS)
            .and_then(decode_tag_keys)
            .unwrap_or_default();
        self.tags
            .iter()
            .filter(|(k, _)| !k.starts_with(tags::RESERVED_PREFIX))
            .filter(|(k, _)| wanted.contains_key(*k) || listed.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn protected(&self) -> bool {
        self.tag(tags::PROTECT) == Some("true")
    }

    pub fn status_class(&self) -> StatusClass {
        StatusClass::of(&self.status)
    }

    pub fn schema_version(&self) -> Option<u64> {
        self.tag(tags::SCHEMA_VERSION).and_then(|v| v.parse().ok())
    }

    /// When its ttl runs out: `envctl:ttl` after `envctl:last-applied`. `None` without a ttl, or
    /// past year 9999.
    pub fn expires_at(&self) -> Option<std::time::SystemTime> {
        let last = humantime::parse_rfc3339(self.tag(tags::LAST_APPLIED)?).ok()?;
        let ttl: u64 = self.tag(tags::TTL)?.parse().ok()?;
        let at = last.checked_add(std::time::Duration::from_secs(ttl))?;
        // RFC 3339 has four-digit years.
        let year_10000 =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_800);
        (at < year_10000).then_some(at)
    }
}

/// Why an environment is deleted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeleteReason {
    /// The branch is not on `origin` (and, where local branches count, not a local branch).
    BranchDeleted {
        /// Local branches were looked at too (the local provider).
        local_too: bool,
    },
    /// The branch's tip is in the default branch's history and is not where it started.
    BranchMerged {
        into: String,
    },
    /// `envctl:ttl` has passed since `envctl:last-applied`.
    TtlExpired {
        /// The ttl, e.g. `7d`.
        ttl: String,
        /// When it was last applied (RFC 3339).
        since: String,
    },
    NoSpec,
    /// What an interrupted create left (`{id}-creating`).
    Leftover,
    /// `envctl destroy`.
    Requested,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteReason::BranchDeleted { local_too: false } => {
                f.write_str("branch deleted: not on origin")
            }
            DeleteReason::BranchDeleted { local_too: true } => {
                f.write_str("branch deleted: neither on origin nor a local branch")
            }
            DeleteReason::BranchMerged { into } => write!(f, "branch merged into {into}"),
            DeleteReason::TtlExpired { ttl, since } => {
                write!(f, "ttl expired: {ttl} since the last apply at {since}")
            }
            DeleteReason::NoSpec => f.write_str("no spec covers the branch"),
            DeleteReason::Leftover => f.write_str("leftover of an interrupted create"),
            DeleteReason::Requested => f.write_str("destroy requested"),
        }
    }
}

/// A ttl in seconds as users write it: `7d`, `36h`, `90m`, `45s` (the largest unit that divides it).
pub fn ttl_text(seconds: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds >= size && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// One field of an in-place update.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

/// What to do, per environment. Serialized as the product's plan JSON `type` and its fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ActionKind {
    Create {
        reason: String,
    },
    Replace {
        reason: String,
    },
    Update {
        changes: Vec<FieldChange>,
    },
    Reset {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
    Migrate {
        from: u64,
        to: u64,
        migrations: Vec<String>,
    },
    Seed {
        files: Vec<String>,
    },
    Delete {
        reason: String,
    },
    Blocked {
        reason: String,
        /// What diverged, when a reset is what is blocked.
        #[serde(skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
}

impl ActionKind {
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::Create { .. } => "create",
            ActionKind::Replace { .. } => "replace",
            ActionKind::Update { .. } => "update",
            ActionKind::Reset { .. } => "reset",
            ActionKind::Migrate { .. } => "migrate",
            ActionKind::Seed { .. } => "seed",
            ActionKind::Delete { .. } => "delete",
            ActionKind::Blocked { .. } => "blocked",
        }
    }

    /// Deletes or empties data: needs `--yes` without a terminal.
    pub fn is_destructive(&self) -> bool {
        matches!(
            self,
            ActionKind::Delete { .. } | ActionKind::Reset { .. } | ActionKind::Replace { .. }
        )
    }
}

/// One action on one environment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Action {
    #[serde(flatten)]
    pub kind: ActionKind,
    pub branch: String,
    pub env: String,
    pub cluster_id: ClusterId,
}

/// Count of actions per type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub migrate: usize,
    pub seed: usize,
    pub reset: usize,
    pub delete: usize,
    pub blocked: usize,
}

impl Summary {
    pub fn of(actions: &[Action]) -> Summary {
        let mut s = Summary::default();
        for a in actions {
            let slot = match a.kind {
                ActionKind::Create { .. } => &mut s.create,
                ActionKind::Update { .. } => &mut s.update,
                ActionKind::Replace { .. } => &mut s.replace,
                ActionKind::Migrate { .. } => &mut s.migrate,
                ActionKind::Seed { .. } => &mut s.seed,
                ActionKind::Reset { .. } => &mut s.reset,
                ActionKind::Delete { .. } => &mut s.delete,
                ActionKind::Blocked { .. } => &mut s.blocked,
            };
            *slot += 1;
        }
        s
    }
}

/// The flags a plan was made with: a saved plan carries them, so `apply PLANFILE` needs none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFlags {
    /// `--reset`: reset every environment in scope.
    pub reset: bool,
    /// `--no-reset`: a diverged history blocks instead of resetting.
    pub no_reset: bool,
}

/// The plan: a value that plan prints and apply executes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub format_version: u32,
    pub provider: String,
    pub repo: RepoName,
    /// The id prefix (`ENVCTL_PREFIX`): the namespace the plan was made in.
    pub prefix: String,
    pub scope: Vec<String>,
    pub options: PlanFlags,
    pub observed_fingerprint: String,
    pub actions: Vec<Action>,
    pub summary: Summary,
    /// Where each branch's specs were read from: a commit, or `working-tree`.
    pub sources: BTreeMap<String, String>,
    /// Branches in scope that no spec covers and that have no environment: nothing to do, and
    /// worth saying why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uncovered: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn has_blocked(&self) -> bool {
        self.summary.blocked > 0
    }

    /// Actions that delete or empty data.
    pub fn destructive_actions(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| a.kind.is_destructive())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoName {
        RepoName::parse("Acme/Shop").unwrap()
    }

    #[test]
    fn cluster_id_has_slug_and_hash() {
        let id = ClusterId::derive(&Prefix::default(), &repo(), "feature/Login_Page");
        assert!(
            id.as_str().starts_with("envctl-feature-login-page-"),
            "{id}"
        );
        assert_eq!(id.as_str().len(), "envctl-feature-login-page-".len() + 8);
        assert!(is_valid_rds_identifier(id.as_str()));
    }

    #[test]
    fn cluster_id_hash_uses_lowercased_repo() {
        let a = ClusterId::derive(&Prefix::default(), &repo(), "main");
        let b = ClusterId::derive(
            &Prefix::default(),
            &RepoName::parse("acme/shop").unwrap(),
            "main",
        );
        assert_eq!(a, b);
        let expected = &sha256_hex(b"acme/shop\nmain")[..8];
        assert_eq!(a.as_str(), format!("envctl-main-{expected}"));
    }

    #[test]
    fn cluster_id_of_non_ascii_branch_has_no_slug() {
        let id = ClusterId::derive(&Prefix::default(), &repo(), "日本語");
        assert_eq!(id.as_str().len(), "envctl-".len() + 8);
    }

    #[test]
    fn cluster_id_is_cut_to_52() {
        let branch = "feature/".to_owned() + &"a".repeat(200);
        let id = ClusterId::derive(&Prefix::parse("p").unwrap(), &repo(), &branch);
        assert_eq!(id.as_str().len(), MAX_CLUSTER_ID_LEN);
        let id = ClusterId::derive(
            &Prefix::parse("abcdefghij0123456789").unwrap(),
            &repo(),
            &branch,
        );
        assert_eq!(id.as_str().len(), MAX_CLUSTER_ID_LEN);
        assert!(is_valid_rds_identifier(id.as_str()));
    }

    #[test]
    fn prefix_rules() {
        assert!(Prefix::parse("envctl").is_ok());
        assert!(Prefix::parse("a").is_ok());
        for bad in [
            "",
            "1abc",
            "Abc",
            "a--b",
            "ab-",
            "abcdefghij01234567890",
            "a_b",
        ] {
            assert!(Prefix::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn branch_tag_escapes_quote() {
        assert_eq!(encode_branch_tag("fix/it's").unwrap(), "fix/it=27s");
        assert_eq!(encode_branch_tag("a=b").unwrap(), "a=3Db");
        assert_eq!(decode_branch_tag("fix/it=27s").unwrap(), "fix/it's");
        assert_eq!(decode_branch_tag("bad=Z"), None);
    }

    #[test]
    fn branch_tag_too_long_is_refused() {
        let err = encode_branch_tag(&"é".repeat(50)).unwrap_err();
        assert!(err.contains("300 characters"), "{err}");
    }

    #[test]
    fn acu_steps() {
        assert_eq!(Acu::from_f64(0.5).unwrap().to_string(), "0.5");
        assert_eq!(Acu::from_f64(256.0).unwrap().to_string(), "256");
        assert!(Acu::from_f64(0.3).is_none());
        assert!(Acu::from_f64(256.5).is_none());
        assert!(Acu::from_f64(-1.0).is_none());
    }

    #[test]
    fn repo_names() {
        assert_eq!(RepoName::parse("Acme/Shop").unwrap().as_str(), "acme/shop");
        assert!(RepoName::parse("acme").is_err());
        assert!(RepoName::parse("a/b/c").is_err());
        assert!(RepoName::parse("../..").is_err());
        assert!(RepoName::parse("acme/.").is_err());
    }
}
