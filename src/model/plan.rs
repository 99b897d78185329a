//! The plan: actions per environment, why an environment is deleted, what a plan was made
//! with, and its summary. Serialized as the product's plan JSON.
//!
//! Architecture invariant: no IO (see `model/mod.rs`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::identity::{ClusterId, RepoName};

/// Why an environment is deleted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeleteReason {
    /// The branch is not on `origin` (and, where local branches count, not a local branch).
    BranchDeleted {
        /// Local branches count as live (the local provider): it is not a local branch either.
        local_branches_count: bool,
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
            DeleteReason::BranchDeleted {
                local_branches_count: false,
            } => f.write_str("branch deleted: not on origin"),
            DeleteReason::BranchDeleted {
                local_branches_count: true,
            } => f.write_str("branch deleted: neither on origin nor a local branch"),
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

/// A field an in-place update changes. Serialized as the plan JSON's `field` (`scaling`, `tags`,
/// `env`, `deletion_protection`, `protect`, `ttl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Scaling,
    Tags,
    Env,
    DeletionProtection,
    Protect,
    Ttl,
    /// A data branch's copy whose masking has not committed (`envctl:masked=pending`).
    Masking,
}

impl Field {
    /// The spec's own name for it, as users write it.
    pub fn spec_name(self) -> &'static str {
        match self {
            Field::Scaling => "cluster.scaling",
            Field::Tags => "cluster.tags",
            Field::Env => "name",
            Field::DeletionProtection => "cluster.deletionProtection",
            Field::Protect => "lifecycle.protect",
            Field::Ttl => "lifecycle.ttl",
            Field::Masking => "masking",
        }
    }

    /// Whether the provider changes it on the resource itself; the others are tags.
    pub fn is_provider_setting(self) -> bool {
        matches!(self, Field::Scaling | Field::DeletionProtection)
    }
}

/// One field of an in-place update.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: Field,
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
    /// A data branch's environment, made as a copy of its source's, masked.
    Clone {
        reason: String,
        source: CloneSource,
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
        /// A data branch resets by copying its source again (deleting this copy first).
        #[serde(skip_serializing_if = "Option::is_none")]
        reclone: Option<CloneSource>,
    },
    Migrate {
        from: u64,
        to: u64,
        migrations: Vec<String>,
        /// What the migration linter found in the migrations this runs, in their order (absent
        /// when nothing).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        lint: Vec<super::lint::LintFinding>,
    },
    Seed {
        files: Vec<String>,
    },
    Delete {
        reason: String,
    },
    /// Gives a live environment back what serves its database (AWS: a writer instance for a
    /// cluster that has none).
    Repair {
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
            ActionKind::Clone { .. } => "clone",
            ActionKind::Replace { .. } => "replace",
            ActionKind::Update { .. } => "update",
            ActionKind::Reset { .. } => "reset",
            ActionKind::Migrate { .. } => "migrate",
            ActionKind::Seed { .. } => "seed",
            ActionKind::Delete { .. } => "delete",
            ActionKind::Repair { .. } => "repair",
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

/// Where a clone's data comes from, as a plan shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloneSource {
    /// The source environment's branch; `None` for a cluster envctl does not manage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    pub cluster_id: ClusterId,
    /// The masking rules, `schema.table.column: strategy`, sorted by column.
    pub mask: Vec<String>,
    /// The masking files, in order.
    pub mask_sql: Vec<String>,
}

/// Count of actions per type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub clone: usize,
    pub update: usize,
    pub replace: usize,
    pub migrate: usize,
    pub seed: usize,
    pub reset: usize,
    pub delete: usize,
    pub blocked: usize,
    pub repair: usize,
}

impl Summary {
    pub fn of(actions: &[Action]) -> Summary {
        let mut s = Summary::default();
        for a in actions {
            let slot = match a.kind {
                ActionKind::Create { .. } => &mut s.create,
                ActionKind::Clone { .. } => &mut s.clone,
                ActionKind::Update { .. } => &mut s.update,
                ActionKind::Replace { .. } => &mut s.replace,
                ActionKind::Migrate { .. } => &mut s.migrate,
                ActionKind::Seed { .. } => &mut s.seed,
                ActionKind::Reset { .. } => &mut s.reset,
                ActionKind::Delete { .. } => &mut s.delete,
                ActionKind::Repair { .. } => &mut s.repair,
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

/// An error as users read it: what failed, then each cause (`caused by:`). Serialized as one
/// line, `message: cause: cause`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub causes: Vec<String>,
}

impl Failure {
    /// A failure with no causes.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            causes: Vec::new(),
        }
    }

    /// An error and the chain of its sources.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Failure {
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        Failure {
            message: error.to_string(),
            causes,
        }
    }

    /// The message and its causes on one line.
    pub fn one_line(&self) -> String {
        let mut text = self.message.clone();
        for cause in &self.causes {
            text.push_str(": ");
            text.push_str(cause);
        }
        text
    }
}

impl Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.one_line())
    }
}

/// What happened to one environment when a plan was applied.
#[derive(Clone, Debug)]
pub struct EnvOutcome {
    pub branch: String,
    pub env: String,
    pub cluster_id: ClusterId,
    /// Short descriptions of what was done, in order.
    pub done: Vec<String>,
    pub status: OutcomeStatus,
    /// Set when the environment exists afterwards (not deleted).
    pub exists: bool,
}

/// How one environment's apply ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutcomeStatus {
    Ok,
    Failed(Failure),
    /// Not started because a signal arrived first.
    NotStarted,
}
