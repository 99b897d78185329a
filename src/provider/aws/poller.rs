//! One poller for every wait of a run. RDS allows a sustained 12 requests a second per account
//! and Region: twenty environments polling alone would use most of it. Instead every waiting
//! environment registers its cluster id here, and one task describes all of them together — one
//! batched `DescribeDBClusters` and one `DescribeDBInstances` per interval, whatever the number of
//! waiters — and publishes the snapshot; each waiter checks its own condition against it.
//!
//! The interval is `ENVCTL_AWS_POLL_INTERVAL` (default 5 s: an express cluster takes tens of
//! seconds to become available, so a wait ends at most 5 s late while polling costs 0.4 requests a
//! second; the tests against the offline AWS peer set a fraction of a second).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::api::{Api, ClusterState, InstanceState};
use crate::model::ClusterId;

/// What one poll saw.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Counts polls; 0 is "none yet".
    pub seq: u64,
    /// The clusters this poll asked about (a wait registered during a poll is not among them).
    pub covered: BTreeSet<ClusterId>,
    pub clusters: BTreeMap<ClusterId, ClusterState>,
    pub instances: Vec<InstanceState>,
    /// Why the last poll failed, if it did (the SDK retried first).
    pub error: Option<String>,
}

impl Snapshot {
    pub fn cluster(&self, id: &ClusterId) -> Option<&ClusterState> {
        self.clusters.get(id)
    }

    /// The instances of a cluster.
    pub fn instances_of<'a>(
        &'a self,
        id: &'a ClusterId,
    ) -> impl Iterator<Item = &'a InstanceState> {
        self.instances
            .iter()
            .filter(move |i| i.cluster.as_deref() == Some(id.as_str()))
    }
}

/// Why a wait ended without its condition.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The timeout passed; `last` says what the last poll saw.
    #[error("still {last} after {}", humantime::format_duration(*waited))]
    TimedOut { waited: Duration, last: String },
    /// The condition said the wait can never succeed.
    #[error("{0}")]
    Failed(String),
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
    /// Cluster id → how many waits want it.
    waiting: Mutex<BTreeMap<ClusterId, usize>>,
    wake: Notify,
    snapshot: watch::Sender<Arc<Snapshot>>,
    started: std::sync::Once,
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
        if let Some(count) = waiting.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.id);
            }
        }
    }
}

impl Poller {
    pub fn new(api: Api, interval: Duration) -> Poller {
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::default()));
        Poller {
            shared: Arc::new(Shared {
                api,
                interval,
                waiting: Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
                snapshot,
                started: std::sync::Once::new(),
            }),
        }
    }

    pub fn interval(&self) -> Duration {
        self.shared.interval
    }

    /// Waits until `check` says done for cluster `id`, judging only snapshots taken after the
    /// wait began. `on_wait` hears what it waits for whenever that changes.
    pub async fn wait(
        &self,
        id: &ClusterId,
        timeout: Duration,
        mut check: impl FnMut(&Snapshot) -> Check,
        mut on_wait: impl FnMut(&str),
    ) -> Result<(), WaitError> {
        self.start();
        let start = Instant::now();
        let mut receiver = self.shared.snapshot.subscribe();
        let after = receiver.borrow_and_update().seq;
        let _registration = {
            let mut waiting = self
                .shared
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *waiting.entry(id.clone()).or_insert(0) += 1;
            Registration {
                shared: &self.shared,
                id: id.clone(),
            }
        };
        self.shared.wake.notify_one();
        let mut last = "waiting for the first poll".to_owned();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, receiver.changed()).await {
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
                Check::Done => return Ok(()),
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
    let mut seq = 0;
    loop {
        let ids: Vec<ClusterId> = {
            let waiting = shared.waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting.keys().cloned().collect()
        };
        if ids.is_empty() {
            // Nobody waits: sleep until somebody does (or the last one has gone).
            shared.wake.notified().await;
            continue;
        }
        let polled = async {
            let clusters = shared.api.describe_clusters(&ids).await?;
            let instances = shared.api.describe_instances(&ids).await?;
            Ok::<_, super::api::AwsError>((clusters, instances))
        }
        .await;
        seq += 1;
        let snapshot = match polled {
            Ok((clusters, instances)) => Snapshot {
                seq,
                covered: ids.into_iter().collect(),
                clusters,
                instances,
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
        tokio::time::sleep(shared.interval).await;
    }
}
