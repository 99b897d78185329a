//! What is live: an environment as a provider observed it from its tags and control plane
//! ([`ObservedEnv`]), what its status means, and its migration ledger when the plan read it.
//!
//! Architecture invariant: no IO (see `model/mod.rs`).

use std::collections::{BTreeMap, BTreeSet};

use super::desired::{DesiredEnv, Scaling, ledger_digest};
use super::identity::ClusterId;
use super::tags::{self, Tags, decode_branch_tag, decode_tag_keys};

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
    /// What to do about a status that will not become available by waiting (how to start a
    /// stopped cluster, where to see why one failed), from the provider; `None` when there is
    /// nothing to say.
    pub status_hint: Option<String>,
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
    /// Nothing serves its database: the provider lists no instance in it (AWS: no
    /// `DBClusterMembers`). Normal while it is `creating` (the writer is listed partway) or being
    /// deleted; otherwise left by a delete cut off half-way, or an instance deleted by hand.
    pub writerless: bool,
    /// Why envctl will neither change nor delete it although it carries this owner's tags (AWS:
    /// an id outside the prefix, so envctl did not make it); `None` for what envctl may touch.
    pub refused: Option<String>,
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
    Failed {
        kind: LedgerFailure,
        why: String,
    },
}

/// Why a ledger could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerFailure {
    /// The database could not be reached (connection refused, a login that failed): it may
    /// work next time.
    Unreachable,
    /// The database answered, but its ledger cannot be read (altered by hand): a reset rebuilds
    /// it.
    Unreadable,
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
            | "cloning-failed"
            | "migration-failed"
            | "inaccessible-encryption-credentials"
            | "inaccessible-encryption-credentials-recoverable"
            | "incompatible-network"
            | "incompatible-option-group"
            | "incompatible-parameters"
            | "incompatible-restore"
            | "storage-full"
            // Instances' own.
            | "restore-error"
            | "incompatible-credentials" => StatusClass::Unusable,
            _ => StatusClass::Busy,
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

    /// A data branch's copy whose masking has not committed ([`tags::masking_pending`]).
    pub fn masking_pending(&self) -> bool {
        tags::masking_pending(&self.tags)
    }

    /// The digest of the masking rules and files its copy was masked with ([`tags::masked_with`]).
    pub fn masked_with(&self) -> Option<&str> {
        tags::masked_with(&self.tags)
    }

    /// A data branch's copy, masked or not ([`tags::is_copy`]).
    pub fn is_copy(&self) -> bool {
        tags::is_copy(&self.tags)
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

    /// It has no writer where it should have one: writerless, and neither `creating` nor being
    /// deleted.
    pub fn missing_writer(&self) -> bool {
        self.writerless && self.status != "creating" && self.status_class() != StatusClass::Deleting
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

/// What an interrupted create left behind (the local provider's `{id}-creating`), as prune finds
/// it.
#[derive(Clone, Debug)]
pub struct Leftover {
    /// The resource's own name.
    pub name: String,
    /// The id the create was making.
    pub cluster_id: ClusterId,
    /// Its branch: from its tags, or for an untagged one the branch whose derived id it carries
    /// (the caller fills that in; untagged leftovers of unknown branches are never deleted).
    pub branch: Option<String>,
    /// When it was made, where it says.
    pub created_at: Option<std::time::SystemTime>,
    /// A create is at work on it now (it holds the id's lock): nobody left it, and neither
    /// prune nor `status` calls it a leftover; `destroy` says to wait.
    pub at_work: bool,
}

/// What the provider's account offers for an engine version: the serverless v2 range it
/// supports (AWS: `DescribeDBEngineVersions`, `ServerlessV2FeaturesSupport`).
#[derive(Clone, Debug, PartialEq)]
pub enum EngineSupport {
    Offered {
        /// The version itself (for a spec without `engineVersion`, the default one).
        version: String,
        /// The lowest minimum capacity it allows (0: it can pause), where the provider says.
        min_acu: Option<f64>,
        /// The highest maximum capacity it allows, where the provider says.
        max_acu: Option<f64>,
    },
    /// Not offered: `why`, in the provider's words, with what to do.
    NotOffered { why: String },
}

/// Engine support by the spec's `engineVersion` (`None`: the provider's default version).
pub type EngineSupportMap = BTreeMap<Option<String>, EngineSupport>;

/// What a plan knows of a data branch's source (`database.from`), gathered by the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFacts {
    /// Its cluster id (on the local provider, its database).
    pub cluster_id: ClusterId,
    /// Why it cannot be copied now (it does not exist, is not available, its own masking has not
    /// committed); `None`: it can.
    pub problem: Option<String>,
    /// Its ledger: the migrations and seeds a copy carries.
    pub ledger: LedgerRead,
    /// The database user and name its environment has, where known: a copy carries them.
    pub database_user: Option<String>,
    pub database_name: Option<String>,
    pub engine_version: Option<String>,
    /// Of the columns the masking rules of the data branches copying it name, those it has
    /// (`None`: not looked at).
    pub columns: Option<std::collections::BTreeSet<crate::model::ColumnPath>>,
}
