//! Prune's deletions, one per delete action of its plan: each decides again on fresh facts
//! (observe, git read again, [`verdict`]) and deletes only if a reason still holds, with the tags
//! it was decided on unchanged on the live resource; a leftover is deleted only while it still
//! is one of the owner's, old enough, with no create at work on it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use super::facts::{Untrusted, read_git};
use crate::cancel::Cancel;
use crate::model::{Action, ClusterId, DeleteReason, Failure, Leftover, Owner, tags};
use crate::plan::prune::{Decisions, PruneResult, PruneStatus, Verdict, verdict};
use crate::provider::{AnyProvider, DeleteOptions, Provider, ProviderError};
use crate::report::Progress;
use crate::settings::Settings;

/// How many deletes run at once (each waits until its environment is gone).
pub(super) const CONCURRENCY: usize = 4;

/// The tags a deletion is decided on: they must be unchanged on the live resource when it goes.
const DECIDED_ON: [&str; 5] = [
    tags::BRANCH,
    tags::LAST_APPLIED,
    tags::BASE,
    tags::TTL,
    tags::PROTECT,
];

/// The leftovers the plan deletes, by the name its actions carry, each with the branch whose
/// create left it (decided, also for untagged ones).
pub(super) fn leftover_targets(
    leftovers: &[Leftover],
    decisions: &Decisions,
) -> BTreeMap<ClusterId, Leftover> {
    leftovers
        .iter()
        .filter_map(|leftover| {
            let name = ClusterId::from_live(leftover.name.clone());
            let branch = decisions.leftover_deletions.get(&name)?;
            let mut target = leftover.clone();
            target.branch = Some(branch.clone());
            Some((name, target))
        })
        .collect()
}

/// Why one deletion failed.
#[derive(Debug, thiserror::Error)]
enum DeleteError {
    /// Looking again (observe, or the delete itself) failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Git cannot be trusted now: nothing is deleted, and the run fails.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    /// The fresh settings could not be read.
    #[error("cannot read the repository again")]
    Settings(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// How one deletion ended, short of failing.
enum Done {
    Deleted(String),
    Gone,
    Kept(String),
}

/// What every deletion shares.
pub(super) struct Deleter<'a> {
    pub settings: &'a Settings,
    pub owner: &'a Owner,
    pub provider: &'a AnyProvider,
    pub local_branches_count: bool,
    pub wait_timeout: Duration,
    pub progress: &'a Progress,
    pub cancel: &'a Cancel,
    /// The leftovers the plan deletes, by name.
    pub leftovers: BTreeMap<ClusterId, Leftover>,
}

impl Deleter<'_> {
    /// Carries out one delete action of the plan, after looking again.
    pub async fn delete(&self, action: &Action) -> PruneResult {
        let result = |status, reason, error| PruneResult {
            branch: action.branch.clone(),
            env: action.env.clone(),
            cluster_id: action.cluster_id.clone(),
            status,
            reason,
            error,
        };
        if self.cancel.is_requested() {
            let error = Failure::new("interrupted before it started");
            return result(PruneStatus::NotStarted, None, Some(error));
        }
        let outcome = match self.leftovers.get(&action.cluster_id) {
            Some(leftover) => self.delete_leftover(action, leftover).await,
            None => self.delete_environment(action).await,
        };
        self.progress.finish(&action.branch);
        match outcome {
            Ok(Done::Deleted(reason)) => result(PruneStatus::Deleted, Some(reason), None),
            Ok(Done::Gone) => result(PruneStatus::Gone, None, None),
            Ok(Done::Kept(why)) => result(PruneStatus::Kept, Some(why), None),
            Err(e) => result(PruneStatus::Failed, None, Some(Failure::of(&e))),
        }
    }

    async fn delete_leftover(
        &self,
        action: &Action,
        leftover: &Leftover,
    ) -> Result<Done, DeleteError> {
        self.progress
            .step(&action.branch, &format!("deleting {}", leftover.name));
        let deleted = self
            .provider
            .delete_leftover(self.owner, leftover, self.wait_timeout)
            .await?;
        Ok(match deleted {
            true => Done::Deleted(DeleteReason::Leftover.to_string()),
            false => Done::Kept(
                "no longer a leftover of ours old enough to delete, or a create is at work on it"
                    .into(),
            ),
        })
    }

    /// Decides again on what is live and what git says now, and deletes only if a reason holds,
    /// with the tags it was decided on unchanged.
    async fn delete_environment(&self, action: &Action) -> Result<Done, DeleteError> {
        let (id, branch) = (&action.cluster_id, &action.branch);
        self.progress.step(branch, "checking again");
        let observed = self.provider.observe(self.owner).await?;
        let Some(live) = observed.iter().find(|o| &o.cluster_id == id) else {
            return Ok(Done::Gone);
        };
        if live.branch().as_deref() != Some(branch) {
            return Ok(Done::Kept(
                "its `envctl:branch` tag changed since the plan".into(),
            ));
        }
        let fresh = self
            .settings
            .reopened()
            .map_err(|e| DeleteError::Settings(e.into()))?;
        let branches = BTreeSet::from([branch.clone()]);
        let facts =
            tokio::task::block_in_place(|| read_git(&fresh, &branches, self.local_branches_count))?;
        let reason = match verdict(live, &facts.view, SystemTime::now()) {
            Verdict::Delete(reason) => reason,
            Verdict::Kept { why, .. } => return Ok(Done::Kept(why)),
            Verdict::Stays(why) => {
                return Ok(Done::Kept(format!("no reason holds any more: {why}")));
            }
        };
        let unchanged = DECIDED_ON
            .iter()
            .map(|key| (key.to_string(), live.tag(key).map(str::to_owned)))
            .collect();
        self.progress.step(branch, &format!("deleting {id}"));
        let options = DeleteOptions {
            force: false,
            wait_timeout: self.wait_timeout,
            unchanged,
        };
        match self.provider.delete(self.owner, id, options).await {
            Ok(()) => Ok(Done::Deleted(reason.to_string())),
            Err(ProviderError::Changed { what, .. }) => Ok(Done::Kept(what)),
            // Re-tagged to another owner since it was looked at: no longer this prune's.
            Err(ProviderError::NotOurs { why, .. }) => Ok(Done::Kept(why)),
            Err(ProviderError::NotFound(_)) => Ok(Done::Gone),
            Err(e @ (ProviderError::Protected(_) | ProviderError::DeletionProtected(_))) => {
                Ok(Done::Kept(e.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}
