//! Domain values shared by every layer, one file per concept:
//! - `identity`: repository names, the id prefix, ownership, branch names, cluster ids;
//! - `tags`: the tags envctl writes and how they change (by difference);
//! - `desired`: what a branch wants (its spec resolved, migrations, seeds);
//! - `observed`: what is live (an environment from its tags, its status, its ledger);
//! - `plan`: actions, delete reasons, the plan and its summary;
//! - `check`: what `envctl doctor` finds;
//! - `lint`: what the migration linter found in a migration;
//! - `schema`: a database's schema as `envctl diff` reads it, and the difference of two.
//! - `text`: names in code spans and durations, as people read them.
//!
//! Architecture invariant: this module does no IO and imports no tokio, aws-sdk, sqlx or git2. Every
//! value here is plain data that tests can build by hand.

pub mod check;
pub mod desired;
pub mod identity;
pub mod lint;
pub mod observed;
pub mod plan;
pub mod schema;
pub mod tags;
pub mod text;

pub use check::{Check, CheckOutcome, SpecAsk};
pub use desired::{
    Acu, ClusterSettings, ColumnPath, DataSource, DatabaseSettings, DesiredEnv, MaskRule,
    MaskStrategy, Migration, Scaling, Seed, SourceKind, SourceRef, Wanted, content_checksum,
    ledger_digest, normalize_line_endings,
};
pub use identity::{
    ClusterId, MAX_CLUSTER_ID_LEN, Owner, Prefix, READER_USER, RepoName, check_branch_name,
    is_valid_rds_identifier, sha256_hex,
};
pub use lint::LintFinding;
pub use observed::{
    AppliedMigration, AppliedSeed, EngineSupport, EngineSupportMap, Ledger, LedgerFailure,
    LedgerRead, LedgerTags, Leftover, ObservedEnv, SourceFacts, StatusClass,
};
pub use plan::{
    Action, ActionKind, CloneSource, DeleteReason, EnvOutcome, Failure, Field, FieldChange,
    OutcomeStatus, Plan, PlanFlags, Summary, ttl_text,
};
pub use tags::{
    MAX_TAG_VALUE_LEN, TagUpdate, Tags, decode_branch_tag, decode_tag_keys, encode_branch_tag,
    encode_tag_keys, tag_update,
};
pub use text::{code, duration_text};
