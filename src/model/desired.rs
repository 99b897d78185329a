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
