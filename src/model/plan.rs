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
