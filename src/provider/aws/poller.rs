//! One poller for every wait of a run. RDS allows a sustained 12 requests a second per account
//! and Region: twenty environments polling alone would use most of it. Instead every waiting
//! environment registers its cluster id here, and one task describes all of them together — one
//! batched `DescribeDBClusters` per interval, whatever the number of waiters, and a batched
//! `DescribeDBInstances` of the clusters past `creating` (while a cluster is `creating` its
//! writer cannot be ready and no wait looks at it) — and publishes the snapshot; each waiter
//! checks its own condition against it.
//!
//! Polls start one interval apart (not one interval after the previous poll ended), so a wait
//! ends at most one interval after its condition holds. The interval is
//! `ENVCTL_AWS_POLL_INTERVAL` (default 5 s: an express cluster takes tens of seconds to become
//! available, so a wait ends at most 5 s late while polling costs 0.2–0.4 requests a second; the
//! tests against the offline AWS peer set a fraction of a second).
//!
//! A signal ends every wait at once ([`WaitError::Interrupted`]): the resource carries on in AWS
//! whether envctl waits or not, and the next run picks it up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::api::{Api, ClusterState, InstanceState};
use crate::model::ClusterId;

/// What one poll saw.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The poll's number, in the order polls started; 0 is "none yet".
    pub seq: u64,
    /// The clusters this poll asked about (a wait registered during a poll is not among them).
    pub covered: BTreeSet<ClusterId>,
    pub clusters: BTreeMap<ClusterId, ClusterState>,
    pub instances: Vec<InstanceState>,
    /// The clusters whose instances this poll read: every covered one but those `creating`.
    pub instances_read: BTreeSet<ClusterId>,
    /// Why the last poll failed, if it did (the SDK retried first).
    pub error: Option<String>,
}

impl Snapshot {
    pub fn cluster(&self, id: &ClusterId) -> Option<&ClusterState> {
        self.clusters.get(id)
    }

    /// The instances of a cluster, or `None` when this poll did not read them (the cluster was
    /// `creating`).
    pub fn instances_of<'a>(
        &'a self,
        id: &'a ClusterId,
    ) -> Option<impl Iterator<Item = &'a InstanceState>> {
        self.instances_read.contains(id).then(|| {
            self.instances
                .iter()
                .filter(move |i| i.cluster.as_deref() == Some(id.as_str()))
        })
    }
}

/// Why a wait ended without its condition.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The timeout passed; `last` says what the last poll saw.
    #[error("still {last} after {}", crate::model::duration_text(*waited))]
    TimedOut { waited: Duration, last: String },
    /// The condition said the wait can never succeed.
    #[error("{0}")]
    Failed(String),
    /// A signal asked envctl to stop; `last` says what the last poll saw.
    #[error("stopped waiting on a signal ({last})")]
    Interrupted { last: String },
}

/// What a condition says of a snapshot.
pub enum Check {
    Done,
    /// Not yet; the text says what it is waiting for ("creating", …).
    Waiting(String),
    Failed(String),
}

struct Shared {
    api: Api,
    interval: Duration,
    waiting: Mutex<Waiting>,
    wake: Notify,
    snapshot: watch::Sender<Arc<Snapshot>>,
    started: std::sync::Once,
    /// Ends every wait when a signal sets it.
    cancel: crate::cancel::Cancel,
}

/// Who waits, and how many polls have started: both under one lock, so a wait knows which polls
/// read the waiting ids after it registered.
#[derive(Default)]
struct Waiting {
    /// Cluster id → how many waits want it.
    ids: BTreeMap<ClusterId, usize>,
    /// Polls started so far; a poll's snapshot has its number as `seq`.
    polls_started: u64,
}

/// The shared poller (cheap to clone).
#[derive(Clone)]
pub struct Poller {
    shared: Arc<Shared>,
}

/// Removes a wait's registration when the wait ends (or is cancelled).
struct Registration<'a> {
    shared: &'a Shared,
    id: ClusterId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = waiting.ids.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                waiting.ids.remove(&self.id);
            }
        }
    }
}

impl Poller {
    pub fn new(api: Api, interval: Duration, cancel: crate::cancel::Cancel) -> Poller {
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::default()));
        Poller {
            shared: Arc::new(Shared {
                api,
                interval,
                waiting: Mutex::new(Waiting::default()),
                wake: Notify::new(),
                snapshot,
                started: std::sync::Once::new(),
                cancel,
            }),
        }
    }

    pub fn interval(&self) -> Duration {
        self.shared.interval
    }

    /// Waits until `check` says done for cluster `id`, judging only snapshots taken after the
    /// wait began, and returns the snapshot it said done on. `on_wait` hears what it waits for
    /// whenever that changes.
    pub async fn wait(
        &self,
        id: &ClusterId,
        timeout: Duration,
        mut check: impl FnMut(&Snapshot) -> Check,
        mut on_wait: impl FnMut(&str),
    ) -> Result<Arc<Snapshot>, WaitError> {
        self.start();
        let start = Instant::now();
        let mut receiver = self.shared.snapshot.subscribe();
        // Only polls that start after this registration read the cluster after the caller's
        // last step (a create, a delete): one already under way may have read it before.
        let (after, _registration) = {
            let mut waiting = self
                .shared
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *waiting.ids.entry(id.clone()).or_insert(0) += 1;
            let registration = Registration {
                shared: &self.shared,
                id: id.clone(),
            };
            (waiting.polls_started, registration)
        };
        self.shared.wake.notify_one();
        let mut last = "waiting for the first poll".to_owned();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let changed = tokio::select! {
                changed = tokio::time::timeout(left, receiver.changed()) => changed,
                _ = self.shared.cancel.requested_wait() => {
                    return Err(WaitError::Interrupted { last });
                }
            };
            match changed {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(WaitError::TimedOut {
                        waited: start.elapsed(),
                        last,
                    });
                }
            }
            let snapshot = receiver.borrow_and_update().clone();
            if snapshot.seq <= after || !snapshot.covered.contains(id) {
                continue;
            }
            if let Some(error) = &snapshot.error {
                // Nothing to judge by: say so, keep waiting.
                let what = format!("{last} (the last poll failed: {error})");
                on_wait(&what);
                continue;
            }
            match check(&snapshot) {
                Check::Done => return Ok(snapshot),
                Check::Failed(why) => return Err(WaitError::Failed(why)),
                Check::Waiting(what) => {
                    if what != last {
                        on_wait(&what);
                        last = what;
                    }
                }
            }
        }
    }

    fn start(&self) {
        let shared = self.shared.clone();
        self.shared.started.call_once(move || {
            tokio::spawn(poll_loop(shared));
        });
    }
}

async fn poll_loop(shared: Arc<Shared>) {
    loop {
        let (ids, seq): (Vec<ClusterId>, u64) = {
            let mut waiting = shared.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if waiting.ids.is_empty() {
                (Vec::new(), 0)
            } else {
                waiting.polls_started += 1;
                (waiting.ids.keys().cloned().collect(), waiting.polls_started)
            }
        };
        if ids.is_empty() {
            // Nobody waits: sleep until somebody does (or the last one has gone).
            shared.wake.notified().await;
            continue;
        }
        let started = tokio::time::Instant::now();
        let polled = async {
            let clusters = shared.api.describe_clusters(&ids).await?;
            let past_creating = instances_to_read(&ids, &clusters);
            let instances = match past_creating.is_empty() {
                true => Vec::new(),
                false => shared.api.describe_instances(&past_creating).await?,
            };
            Ok::<_, super::api::AwsError>((clusters, instances, past_creating))
        }
        .await;
        let snapshot = match polled {
            Ok((clusters, instances, instances_read)) => Snapshot {
                seq,
                covered: ids.into_iter().collect(),
                clusters,
                instances,
                instances_read: instances_read.into_iter().collect(),
                error: None,
            },
            Err(e) => Snapshot {
                seq,
                covered: ids.into_iter().collect(),
                error: Some(e.to_string()),
                ..Snapshot::default()
            },
        };
        shared.snapshot.send_replace(Arc::new(snapshot));
        // One interval after this poll started; but when it took longer than that (throttled,
        // retried), still half an interval's rest before the next.
        let next =
            (started + shared.interval).max(tokio::time::Instant::now() + shared.interval / 2);
        tokio::time::sleep_until(next).await;
    }
}

/// The clusters whose instances a poll reads: all but those `creating` (whose writer cannot be
/// ready yet); a cluster that is gone too, so a wait for its instances to go sees them gone.
fn instances_to_read(
    ids: &[ClusterId],
    clusters: &BTreeMap<ClusterId, ClusterState>,
) -> Vec<ClusterId> {
    ids.iter()
        .filter(|id| clusters.get(*id).is_none_or(|c| c.status != "creating"))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: &str, status: &str) -> (ClusterId, ClusterState) {
        let id = ClusterId::from_live(id);
        let state = ClusterState {
            id: id.clone(),
            arn: String::new(),
            status: status.to_owned(),
            tags: Default::default(),
            min_acu: None,
            max_acu: None,
            deletion_protection: false,
            engine_version: None,
            database_name: None,
            endpoint: None,
            port: None,
            members: Vec::new(),
            created_at: None,
            master_username: None,
        };
        (id, state)
    }

    #[test]
    fn instances_are_read_for_clusters_past_creating_and_for_gone_ones() {
        let ids: Vec<ClusterId> = ["a", "b", "c", "gone"]
            .into_iter()
            .map(ClusterId::from_live)
            .collect();
        let clusters: BTreeMap<_, _> = [
            cluster("a", "creating"),
            cluster("b", "available"),
            cluster("c", "deleting"),
        ]
        .into_iter()
        .collect();
        let read: Vec<String> = instances_to_read(&ids, &clusters)
            .iter()
            .map(|id| id.to_string())
            .collect();
        assert_eq!(read, ["b", "c", "gone"]);
        let all_creating: BTreeMap<_, _> = [cluster("a", "creating")].into_iter().collect();
        assert!(instances_to_read(&ids[..1], &all_creating).is_empty());
    }

    #[test]
    fn a_poll_that_did_not_read_a_cluster_s_instances_says_so() {
        let snapshot = Snapshot {
            instances: vec![InstanceState {
                id: "b-instance-1".into(),
                arn: String::new(),
                cluster: Some("b".into()),
                status: "available".into(),
                tags: Default::default(),
            }],
            instances_read: [ClusterId::from_live("b")].into_iter().collect(),
            ..Snapshot::default()
        };
        assert!(snapshot.instances_of(&ClusterId::from_live("a")).is_none());
        let b = ClusterId::from_live("b");
        assert_eq!(snapshot.instances_of(&b).unwrap().count(), 1);
    }
}
