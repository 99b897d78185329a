//! The AWS delete path, and the repair of what an interrupted one can leave (a cluster with no
//! writer).
//!
//! A delete is one `DeleteDBCluster` with `DeleteDBInstances=true`: RDS deletes every instance,
//! then the cluster, or nothing. Each destructive call (that one, and turning deletion protection
//! off for `--force`) directly follows a fresh read of the cluster, checked with
//! [`super::super::check_delete`]: ownership, the prefix, `envctl:protect`, deletion protection
//! and every tag the delete was decided on. Between that read and the call there is one round
//! trip, and nothing else; RDS offers no conditional delete to close it.
//!
//! AWS refuses a delete for a while in some states: a cluster still `creating` (its writer is
//! listed only partway through), a writer `creating`, an instance already `deleting`. Those are
//! waited out through the poller, and the delete is sent again once the way looks clear (after a
//! fresh read again), within `--wait-timeout`; a timeout says what it was still waiting for. A
//! cluster in a status waiting does not change (`stopped`, …) fails at once, with what to do.
//! It must not do: delete anything without the fresh read right before, or take a refusal for
//! "already deleting" without reading again.

use std::time::{Duration, Instant};

use super::api::{AwsError, ClusterState, InstanceState};
use super::poller::{Check, Snapshot};
use super::{AwsProvider, denied, wait_failed};
use crate::model::{ClusterId, DesiredEnv, Owner, StatusClass, Tags, tags};
use crate::provider::{BoxError, DeleteOptions, ProviderError, boxed, check_delete};

/// At most this many rounds (reads, waits, attempts) of one delete or repair, whatever the
/// timeout: a loop that makes no progress ends.
const MAX_ROUNDS: usize = 200;

/// Deletes the cluster `id` and its instances (see the module's comment).
pub(super) async fn delete(
    aws: &AwsProvider,
    owner: &Owner,
    id: &ClusterId,
    options: &DeleteOptions,
) -> Result<(), ProviderError> {
    let failed = |e: BoxError| ProviderError::DeleteFailed(id.clone(), e);
    let start = Instant::now();
    let left = || options.wait_timeout.saturating_sub(start.elapsed());
    let mut tagged = false;
    'sent: {
        for _ in 0..MAX_ROUNDS {
            if round(aws, owner, id, options, &mut tagged, left()).await? {
                break 'sent;
            }
        }
        return Err(failed("AWS kept refusing the delete; run it again".into()));
    }
    aws.wait_gone(id, left(), &|_| {})
        .await
        .map_err(|e| wait_failed(id, e, failed))?;
    aws.data_plane
        .drop_override_database(id.as_str())
        .await
        .map_err(failed)
}

/// One round of a delete: a fresh read, then the delete (or what must come first: deletion
/// protection off, a wait, the writer's tags). `true` once the cluster is going.
async fn round(
    aws: &AwsProvider,
    owner: &Owner,
    id: &ClusterId,
    options: &DeleteOptions,
    tagged: &mut bool,
    left: Duration,
) -> Result<bool, ProviderError> {
    let failed = |e: BoxError| ProviderError::DeleteFailed(id.clone(), e);
    // Its instances first, so that the cluster's own read is the last call before any
    // destructive one.
    let instances = aws
        .api
        .describe_instances(std::slice::from_ref(id))
        .await
        .map_err(|e| failed(boxed(e)))?;
    let Some(cluster) = aws.owned_cluster(owner, id, failed).await? else {
        gone(aws, id, options).await?;
        return Ok(true);
    };
    check_delete(
        owner,
        id,
        &cluster.tags,
        cluster.deletion_protection,
        options,
    )?;
    if cluster.status == "deleting" {
        return Ok(true);
    }
    if cluster.deletion_protection {
        // Forced (`check_delete` refused it otherwise); read one round trip ago.
        aws.api
            .modify_cluster(id, None, false)
            .await
            .map_err(|e| failed(boxed(e)))?;
        aws.wait_available(id, left, |c| !c.deletion_protection)
            .await
            .map_err(|e| wait_failed(id, e, failed))?;
        return Ok(false);
    }
    if let Some(why) = not_now(&cluster, Some(&instances)) {
        wait_until_deletable(aws, id, left, &why).await?;
        return Ok(false);
    }
    if !*tagged && untagged(owner, &instances) {
        // IAM lets envctl delete only writers that carry its tags.
        aws.tag_members(owner, &cluster.tags, &instances, false)
            .await
            .map_err(|e| failed(boxed(e)))?;
        *tagged = true;
        return Ok(false);
    }
    match aws.api.delete_cluster(id).await {
        Ok(()) => Ok(true),
        Err(e) if e.is("AccessDenied") || e.is("AccessDeniedException") => {
            Err(denied(id, &cluster, e))
        }
        Err(e) if e.is("DBClusterNotFoundFault") => Ok(true),
        Err(e) if e.is("InvalidDBClusterStateFault") || e.is("InvalidDBInstanceState") => {
            refused_for_now(&cluster, &e)?;
            let why = format!("AWS refused the delete for now ({})", e.message());
            wait_until_deletable(aws, id, left, &why).await?;
            Ok(false)
        }
        Err(e) => Err(failed(boxed(e))),
    }
}

/// The cluster is gone: its data plane's stand-in goes too. Decided on tags that are gone with
/// it, say so (someone deleted it first).
async fn gone(
    aws: &AwsProvider,
    id: &ClusterId,
    options: &DeleteOptions,
) -> Result<(), ProviderError> {
    aws.data_plane
        .drop_override_database(id.as_str())
        .await
        .map_err(|e| ProviderError::DeleteFailed(id.clone(), e))?;
    match options.unchanged.is_empty() {
        true => Ok(()),
        false => Err(ProviderError::NotFound(id.clone())),
    }
}

/// Why AWS would refuse to delete the cluster now, while it would not after waiting: it is still
/// being made (its writer is listed only partway through), or an instance of it is being made or
/// deleted. `instances`: what `DescribeDBInstances` says (`None`: not read).
fn not_now(cluster: &ClusterState, instances: Option<&[InstanceState]>) -> Option<String> {
    if cluster.status == "creating" {
        return Some("cluster creating: AWS deletes it once it is made".into());
    }
    let instances = instances?;
    if let Some(busy) = instances
        .iter()
        .find(|i| i.status == "creating" || i.status == "deleting")
    {
        return Some(match busy.status.as_str() {
            "creating" => format!(
                "instance {} creating: AWS deletes it once it is made",
                busy.id
            ),
            _ => format!(
                "instance {} deleting: the cluster goes once it has",
                busy.id
            ),
        });
    }
    None
}

/// A refusal that waiting will not end (a cluster `stopped`, `failed`, …) fails now, with what to
/// do; the others are waited out.
fn refused_for_now(cluster: &ClusterState, e: &AwsError) -> Result<(), ProviderError> {
    if StatusClass::of(&cluster.status) != StatusClass::Unusable {
        return Ok(());
    }
    let hint = match cluster.status.as_str() {
        "stopped" => format!(
            "start it (`aws rds start-db-cluster --db-cluster-identifier {}`), then delete again",
            cluster.id
        ),
        _ => format!(
            "see why in the RDS console or with `aws rds describe-db-clusters --db-cluster-identifier {}`",
            cluster.id
        ),
    };
    Err(ProviderError::DeleteFailed(
        cluster.id.clone(),
        format!(
            "AWS does not delete it while it is `{}` ({}); {hint}",
            cluster.status,
            e.message()
        )
        .into(),
    ))
}

/// Whether an instance that carries no other owner's tags lacks ours.
fn untagged(owner: &Owner, instances: &[InstanceState]) -> bool {
    let ours = owner.tags();
    instances
        .iter()
        .filter(|i| !i.tags.contains_key(tags::MANAGED) || owner.owns(&i.tags))
        .any(|i| ours.iter().any(|(k, v)| i.tags.get(k) != Some(v)))
}

/// Waits until a poll sees nothing that would make AWS refuse the delete (or the cluster gone,
/// or being deleted), within `timeout`; `why` says what it waits for until the first poll.
async fn wait_until_deletable(
    aws: &AwsProvider,
    id: &ClusterId,
    timeout: Duration,
    why: &str,
) -> Result<(), ProviderError> {
    let failed = |e: BoxError| ProviderError::DeleteFailed(id.clone(), e);
    if timeout.is_zero() {
        return Err(failed(
            format!("still {why} when `--wait-timeout` ran out").into(),
        ));
    }
    let check = |snapshot: &Snapshot| match snapshot.cluster(id) {
        None => Check::Done,
        Some(cluster) if cluster.status == "deleting" => Check::Done,
        Some(cluster) => {
            let instances: Option<Vec<InstanceState>> = snapshot
                .instances_of(id)
                .map(|i| i.cloned().collect::<Vec<_>>());
            match not_now(cluster, instances.as_deref()) {
                Some(why) => Check::Waiting(why),
                None => Check::Done,
            }
        }
    };
    aws.poller
        .wait(id, timeout, check, |_| {})
        .await
        .map(drop)
        .map_err(|e| match e {
            super::poller::WaitError::TimedOut { waited, last }
                if last.starts_with("waiting for the first poll") =>
            {
                failed(format!("still {why} after {}", crate::model::duration_text(waited)).into())
            }
            e => wait_failed(id, e, failed),
        })
}

/// The writer a repair makes: `{cluster}-instance-1`, as express names it.
fn writer_id(id: &ClusterId) -> String {
    format!("{id}-instance-1")
}

/// Gives a cluster that lists no writer a `db.serverless` one, tagged with the ownership tags
/// (and `envctl:protect` with its cluster), as IAM lets envctl create it. Succeeds when it has a
/// writer already; waits while the old writer of that name is still being deleted.
pub(super) async fn repair(
    aws: &AwsProvider,
    owner: &Owner,
    desired: &DesiredEnv,
) -> Result<(), ProviderError> {
    let id = &desired.cluster_id;
    let failed = |e: BoxError| ProviderError::UpdateFailed(id.clone(), e);
    let start = Instant::now();
    let left = || aws.timeout.saturating_sub(start.elapsed());
    let writer = writer_id(id);
    for _ in 0..MAX_ROUNDS {
        let cluster = aws
            .owned_cluster(owner, id, failed)
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        if !cluster.members.is_empty() {
            return Ok(());
        }
        if cluster.status == "deleting" {
            return Err(failed("it is being deleted".into()));
        }
        if cluster.status != "available" {
            aws.wait_available(id, left(), |_| true)
                .await
                .map_err(|e| wait_failed(id, e, failed))?;
            continue;
        }
        let mut writer_tags: Tags = owner.tags();
        if cluster.tags.get(tags::PROTECT).map(String::as_str) == Some("true") {
            writer_tags.insert(tags::PROTECT.to_owned(), "true".to_owned());
        }
        match aws.api.create_instance(&writer, id, &writer_tags).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is("DBInstanceAlreadyExists") => {
                // The old writer, still being deleted, or one made meanwhile: wait until it is
                // gone or listed.
                wait_for_writer_name(aws, id, &writer, left()).await?;
            }
            Err(e) if e.is("InvalidDBClusterStateFault") => {
                aws.wait_available(id, left(), |_| true)
                    .await
                    .map_err(|e| wait_failed(id, e, failed))?;
            }
            Err(e) if e.is("AccessDenied") || e.is("AccessDeniedException") => {
                return Err(failed(
                    format!(
                        "IAM denies creating its writer: check that the role has `envctl iam-policy --role apply` ({e})"
                    )
                    .into(),
                ));
            }
            Err(e) => return Err(failed(boxed(e))),
        }
    }
    Err(failed(
        "its writer kept appearing and disappearing while it was repaired; run apply again".into(),
    ))
}

/// Waits until the instance named `writer` is gone, or listed in the cluster `id`.
async fn wait_for_writer_name(
    aws: &AwsProvider,
    id: &ClusterId,
    writer: &str,
    timeout: Duration,
) -> Result<(), ProviderError> {
    let failed = |e: BoxError| ProviderError::UpdateFailed(id.clone(), e);
    let check = |snapshot: &Snapshot| {
        let Some(cluster) = snapshot.cluster(id) else {
            return Check::Failed(format!("`{id}` does not exist"));
        };
        if !cluster.members.is_empty() {
            return Check::Done;
        }
        match snapshot
            .instances_of(id)
            .and_then(|mut i| i.find(|i| i.id == writer).cloned())
        {
            Some(instance) => Check::Waiting(format!(
                "instance {writer} {}: a writer of that name is made once it is gone",
                instance.status
            )),
            None => Check::Done,
        }
    };
    aws.poller
        .wait(id, timeout, check, |_| {})
        .await
        .map(drop)
        .map_err(|e| wait_failed(id, e, failed))
}
