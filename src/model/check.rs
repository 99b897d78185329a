//! What `envctl doctor` finds: one check per line, each passed (with what it found), failed
//! (with the fix), or skipped (with why).
//!
//! Architecture invariant: no IO (see `model/mod.rs`).

use serde::Serialize;

/// One check of `envctl doctor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `git origin`.
    pub check: String,
    #[serde(flatten)]
    pub outcome: CheckOutcome,
}

/// How a check came out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum CheckOutcome {
    /// Passed: what was found.
    Ok { detail: String },
    /// Failed: what is wrong, and how to fix it.
    Failed { detail: String, fix: String },
    /// Not checked: why.
    Skipped { detail: String },
}

impl Check {
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            outcome: CheckOutcome::Ok {
                detail: detail.into(),
            },
        }
    }

    pub fn failed(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            check: check.into(),
            outcome: CheckOutcome::Failed {
                detail: detail.into(),
                fix: fix.into(),
            },
        }
    }

    pub fn skipped(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            outcome: CheckOutcome::Skipped {
                detail: detail.into(),
            },
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self.outcome, CheckOutcome::Failed { .. })
    }
}

/// What a valid spec asks of the provider, for `envctl doctor` to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecAsk {
    /// The spec's `name`.
    pub name: String,
    /// `cluster.engineVersion` (`None`: the provider's default).
    pub engine_version: Option<String>,
    pub scaling: super::Scaling,
}
