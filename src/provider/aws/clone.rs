//! Data branches on AWS: a copy-on-write clone of the source cluster, in the four calls the RDS
//! API reference documents for a cluster without a VPC:
//! 1. `RestoreDBClusterToPointInTime` (`RestoreType=copy-on-write`, `EnableVPCNetworking=false`,
//!    `EnableInternetAccessGateway=true`, `EnableIAMDatabaseAuthentication=true`), every tag on
//!    the call, so a crash never leaves an untagged clone;
//! 2. once it is available, `ModifyDBCluster MasterUserAuthenticationType=iam-db-auth`;
//! 3. once that shows, `CreateDBInstance` (`db.serverless`), tagged with the ownership tags, as
//!    the restore makes no instance;
//! 4. the writer is waited for as after any create.
//!
//! Steps 2 and 3 run when the clone has no writer yet, so an apply cut off between any two calls
//! finishes the clone on its next run. A lost answer (an error after the effect) converges the
//! same way: the restore's `DBClusterAlreadyExistsFault` on our own clone is success, and so is
//! the writer's `DBInstanceAlreadyExists` on our own writer.
//!
//! Step 2's `InvalidDBClusterStateFault` says only that the cluster was not `available`: already
//! modifying (this call's lost answer), or busy with something else (`backing-up`, …), when RDS
//! refused the modify with no effect. Nothing in `DBCluster` says which (it has no field for the
//! master user's authentication type), so the modify is sent again, as it is idempotent, once
//! the cluster is available, until RDS takes it; the writer comes only after that, as a clone
//! with a writer is otherwise taken as finished. A clone whose masking is still pending and has
//! a writer gets the modify once more (an earlier envctl could make the writer after a refused
//! modify, leaving the master user on passwords, which masking cannot log in with on AWS).
//!
//! Under `ENVCTL_DATA_PLANE_OVERRIDE` the clone's database starts as a copy of its source's
//! override database (made before the writer, so a clone with a writer has its data).

use std::time::Duration;

use super::api::{AwsError, ClusterState, CreateRequest};
use super::poller::{Check, Snapshot};
use super::{AwsProvider, quota_error};
use crate::model::{ClusterId, DesiredEnv, Owner, Tags, tags};
use crate::provider::{BoxError, ProviderError, boxed};

/// How many times step 2 is sent while RDS refuses it for the cluster's state: a backup or
/// another change can take a cluster out of `available` between the poll and the call, but not
/// every time.
const MODIFY_ATTEMPTS: u32 = 5;

/// The writer instance envctl makes for a clone: the id express gives its own writers.
pub fn writer_id(id: &ClusterId) -> String {
    format!("{id}-instance-1")
}

impl AwsProvider {
    /// Step 1: the restore, or ours already (an earlier run, or this call's lost answer).
    /// Returns the clone's `envctl:mask-id` as it lives.
    pub(super) async fn restore(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        source: &ClusterId,
        tags: &Tags,
    ) -> Result<Option<String>, ProviderError> {
        let id = &desired.cluster_id;
        let failed = |e: BoxError| ProviderError::CreateFailed(id.clone(), e);
        crate::provider::check_create_tags(owner, id, tags)?;
        let request = CreateRequest {
            id,
            min_acu: desired.cluster.scaling.min_acu.as_f64(),
            max_acu: desired.cluster.scaling.max_acu.as_f64(),
            deletion_protection: desired.cluster.deletion_protection,
            engine_version: None,
            database_name: None,
            tags,
        };
        let error = match self.api.restore_clone(&request, source).await {
            Ok(()) => return Ok(tags.get(tags::MASK_ID).cloned()),
            Err(error) => error,
        };
        if error.is("DBClusterAlreadyExistsFault") {
            return match self.owned_cluster(owner, id, failed).await? {
                Some(cluster) if cluster.tags.get(tags::SOURCE) == Some(&source.to_string()) => {
                    Ok(cluster.tags.get(tags::MASK_ID).cloned())
                }
                Some(_) => Err(failed(
                    format!("`{id}` exists and is not a copy of `{source}` (its `envctl:source` tag says otherwise); `envctl reset` makes it one").into(),
                )),
                // Gone again meanwhile (a delete finishing): the next apply restores it.
                None => Err(failed(boxed(error))),
            };
        }
        Err(restore_refused(id, source, error))
    }

    /// Steps 2 and 3 when the clone has no writer yet; nothing otherwise (or for a cluster that
    /// is not a clone).
    pub(super) async fn complete_clone(
        &self,
        owner: &Owner,
        id: &ClusterId,
        timeout: Duration,
        on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), ProviderError> {
        let failed = |e: BoxError| ProviderError::CreateFailed(id.clone(), e);
        let snapshot = self
            .wait_for(id, timeout, |s| available(s, id), on_wait)
            .await
            .map_err(|e| failed(boxed(e)))?;
        let Some(cluster) = snapshot.cluster(id).cloned() else {
            return Err(ProviderError::NotFound(id.clone()));
        };
        let Some(source) = cluster.tags.get(tags::SOURCE).cloned() else {
            return Ok(());
        };
        let has_writer = !cluster.members.is_empty()
            || snapshot
                .instances_of(id)
                .is_some_and(|mut i| i.next().is_some());
        if has_writer && !tags::masking_pending(&cluster.tags) {
            return Ok(());
        }
        if let Some(why) = owner.why_not_ours(&cluster.tags) {
            return Err(ProviderError::NotOurs {
                id: id.clone(),
                why,
            });
        }
        if has_writer {
            // Masking pending with a writer: the master user may still be on passwords (see
            // the module's comment); no field says, and the modify is idempotent.
            on_wait("making sure its master user is on IAM authentication");
            return self.master_user_to_iam(id, timeout, true).await;
        }
        self.data_plane
            .cloned(&ClusterId::from_live(source), id)
            .await
            .map_err(failed)?;
        on_wait("setting its master user to IAM authentication");
        self.master_user_to_iam(id, timeout, false).await?;
        on_wait("creating its writer instance");
        self.create_clone_writer(owner, &cluster).await
    }

    /// Step 2, sent again while RDS refuses it with `InvalidDBClusterStateFault` (at most
    /// [`MODIFY_ATTEMPTS`] times, each once the cluster is available again), then waited for.
    /// A refusal may have had no effect (the cluster was busy with something else), so waiting
    /// alone could leave the master user on passwords; a repeat after a lost answer is harmless.
    /// `again`: the clone has its writer, so the modify most likely took effect before; a
    /// refusal of its parameters (a modify that changes nothing, which the API reference does
    /// not document) is then taken as done: masking's own login says if it was not.
    async fn master_user_to_iam(
        &self,
        id: &ClusterId,
        timeout: Duration,
        again: bool,
    ) -> Result<(), ProviderError> {
        let failed = |e: BoxError| ProviderError::CreateFailed(id.clone(), e);
        let start = std::time::Instant::now();
        let wait = || self.wait_available(id, timeout.saturating_sub(start.elapsed()), |_| true);
        let mut refused = None;
        for attempt in 0..MODIFY_ATTEMPTS {
            if attempt > 0 {
                wait().await.map_err(|e| failed(boxed(e)))?;
            }
            match self.api.master_user_by_iam(id).await {
                Ok(()) => return wait().await.map_err(|e| failed(boxed(e))),
                Err(e) if e.is("InvalidDBClusterStateFault") => refused = Some(e),
                Err(e)
                    if again
                        && (e.is("InvalidParameterCombination")
                            || e.is("InvalidParameterValue")) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(failed(boxed(e))),
            }
        }
        let last = refused.map(|e| e.to_string()).unwrap_or_default();
        Err(failed(
            format!(
                "RDS refused to set the master user to IAM authentication {MODIFY_ATTEMPTS} times, the cluster leaving `available` each time (the last: {last}); apply again once it stays available"
            )
            .into(),
        ))
    }

    /// Step 3, or ours already.
    async fn create_clone_writer(
        &self,
        owner: &Owner,
        cluster: &ClusterState,
    ) -> Result<(), ProviderError> {
        let id = &cluster.id;
        let failed = |e: BoxError| ProviderError::CreateFailed(id.clone(), e);
        let writer = writer_id(id);
        let error = match self.api.create_instance(&writer, id, &owner.tags()).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if error.is("DBInstanceAlreadyExists") || error.is("DBInstanceAlreadyExistsFault") {
            let instances = self
                .api
                .describe_instances(std::slice::from_ref(id))
                .await
                .map_err(|e| failed(boxed(e)))?;
            if instances.iter().any(|i| i.id == writer) {
                return Ok(());
            }
            return Err(failed(
                format!(
                    "an instance `{writer}` exists in another cluster; delete it, then apply again"
                )
                .into(),
            ));
        }
        if error.is("InstanceQuotaExceeded") {
            return Err(failed(
                format!("the account's quota of DB instances in this Region is used up (40 by default): destroy unused environments, or ask for more in the Service Quotas console ({error})").into(),
            ));
        }
        Err(failed(boxed(error)))
    }
}

/// The cluster exists and is available (a clone has no writer to wait for yet).
fn available(snapshot: &Snapshot, id: &ClusterId) -> Check {
    match snapshot.cluster(id) {
        None => Check::Failed(format!("`{id}` does not exist")),
        Some(c) if c.status != "available" => super::will_not_be_available(id, &c.status)
            .unwrap_or_else(|| Check::Waiting(format!("cluster {}", c.status))),
        Some(_) => Check::Done,
    }
}

/// Why AWS refused a clone, in words that say what to do.
fn restore_refused(id: &ClusterId, source: &ClusterId, error: AwsError) -> ProviderError {
    let code = error.code.clone().unwrap_or_else(|| "refused".to_owned());
    let why = match code.as_str() {
        "DBClusterQuotaExceededFault" => return quota_error(id, error),
        "DBClusterNotFoundFault" => format!(
            "its source `{source}` does not exist (deleted since the plan?); apply its branch, or change `from`"
        ),
        "InvalidDBClusterStateFault" => format!(
            "its source `{source}` cannot be cloned in its present state (stopped, paused or busy); start it (`aws rds start-db-cluster --db-cluster-identifier {source}`) or wait until it is available, then apply again"
        ),
        "InvalidParameterCombination" | "InvalidParameterValue"
            if error.to_string().contains("VPC")
                || error.to_string().contains("InternetAccessGateway") =>
        {
            "AWS refused a clone without a VPC (`EnableVPCNetworking=false` with the internet access gateway); data branches need it in this account and Region, so this environment is not created empty instead".to_owned()
        }
        "InvalidParameterCombination" if error.to_string().contains("xpress") => format!(
            "AWS does not clone the express cluster `{source}`; copy another environment, or drop `from`"
        ),
        _ => return ProviderError::CreateFailed(id.clone(), boxed(error)),
    };
    ProviderError::CreateFailed(id.clone(), format!("{why} ({code}: {error})").into())
}
