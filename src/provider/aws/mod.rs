//! The AWS provider: each environment is an Aurora PostgreSQL cluster created with express
//! configuration (cluster and writer instance in one call, serverless v2 scaling, IAM database
//! authentication only, master user `postgres`).
//!
//! - Observe reads tags only: `tag:GetResources` for this owner's clusters, then
//!   `DescribeDBClusters` by id in batches of 100; it never connects to a database (that would wake
//!   a paused cluster and cost money).
//! - Every change re-reads the cluster and refuses unless its live tags name this owner
//!   (`envctl:managed`, `envctl:repo`, `envctl:prefix`); a delete also refuses `envctl:protect`
//!   and deletion protection unless forced.
//! - Waits go through one shared [`poller::Poller`]: one batched describe per interval for all of
//!   a run's waiting environments.
//! - Credentials, region and `AWS_ENDPOINT_URL` come from the standard chain (aws-config); the SDK
//!   retries throttling, 5xx and timeouts (8 attempts unless `AWS_MAX_ATTEMPTS` says otherwise).
//!
//! Submodules: `api` (the calls, as plain data), `poller`, `data_plane` (tokens, TLS, roles, the
//! test override), `policy` (the IAM policy), `token` (IAM auth tokens).

pub mod api;
pub mod data_plane;
pub mod policy;
pub mod poller;
pub mod token;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_smithy_http_client::tls;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use api::{Api, AwsError, ClusterState, CreateRequest};
use data_plane::DataPlane;
use poller::{Check, Poller, Snapshot};

use super::upstream::Upstream;
use super::{BoxError, Connection, DeleteOptions, Provider, ProviderError, boxed};
use crate::model::{
    Acu, ClusterId, DatabaseSettings, DesiredEnv, ObservedEnv, Owner, Scaling, TagUpdate, Tags,
    tags,
};

/// The AWS provider of one region.
pub struct AwsProvider {
    api: Api,
    poller: Poller,
    data_plane: DataPlane,
    region: String,
    timeout: Duration,
}

/// How often the shared poller describes waiting clusters (`ENVCTL_AWS_POLL_INTERVAL`).
fn poll_interval() -> Result<Duration, BoxError> {
    match std::env::var("ENVCTL_AWS_POLL_INTERVAL") {
        Ok(text) if !text.is_empty() => match humantime::parse_duration(&text) {
            Ok(d) if (Duration::from_millis(10)..=Duration::from_secs(300)).contains(&d) => Ok(d),
            Ok(_) => Err(format!("ENVCTL_AWS_POLL_INTERVAL `{text}` is outside 10ms to 5m").into()),
            Err(e) => {
                Err(format!("ENVCTL_AWS_POLL_INTERVAL `{text}` is not a duration: {e}").into())
            }
        },
        _ => Ok(Duration::from_secs(5)),
    }
}

/// The AWS configuration from the standard chain (credentials, region, `AWS_ENDPOINT_URL`), with
/// envctl's HTTP client (rustls on ring), timeouts and retries.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
        loader = loader.retry_config(RetryConfig::standard().with_max_attempts(8));
    }
    loader.load().await
}

impl AwsProvider {
    /// Loads the AWS configuration (credentials, region, endpoint) from the standard chain.
    pub async fn connect(timeout: Duration) -> Result<AwsProvider, ProviderError> {
        let unavailable = |e: BoxError| ProviderError::Unavailable {
            provider: "aws",
            source: e,
        };
        let config = sdk_config().await;
        let region = config
            .region()
            .map(|r| r.to_string())
            .ok_or_else(|| unavailable("no AWS region is configured: set AWS_REGION".into()))?;
        let credentials = config
            .credentials_provider()
            .ok_or_else(|| unavailable("no AWS credentials provider is configured".into()))?;
        let api = Api {
            rds: aws_sdk_rds::Client::new(&config),
            tagging: aws_sdk_resourcegroupstagging::Client::new(&config),
        };
        let poller = Poller::new(api.clone(), poll_interval().map_err(unavailable)?);
        let data_plane =
            DataPlane::from_env(credentials, region.clone(), timeout).map_err(unavailable)?;
        Ok(AwsProvider {
            api,
            poller,
            data_plane,
            region,
            timeout,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// A fresh IAM auth token for `user` at the cluster's endpoint (what `envctl token --branch`
    /// prints), whatever the data plane of this run.
    pub async fn auth_token(&self, id: &ClusterId, user: &str) -> Result<String, ProviderError> {
        let failed = |e: BoxError| ProviderError::Unavailable {
            provider: "aws",
            source: e,
        };
        let cluster = self
            .api
            .describe_cluster(id)
            .await
            .map_err(|e| failed(boxed(e)))?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        let host = cluster.endpoint.ok_or_else(|| {
            failed(format!("`{id}` has no endpoint yet (it is {})", cluster.status).into())
        })?;
        self.data_plane
            .token(&host, cluster.port.unwrap_or(5432), user)
            .await
            .map_err(failed)
    }

    /// The live cluster, checked to be `owner`'s; `None` when it does not exist.
    async fn owned_cluster(
        &self,
        owner: &Owner,
        id: &ClusterId,
        failed: impl Fn(BoxError) -> ProviderError,
    ) -> Result<Option<ClusterState>, ProviderError> {
        let Some(cluster) = self
            .api
            .describe_cluster(id)
            .await
            .map_err(|e| failed(boxed(e)))?
        else {
            return Ok(None);
        };
        if let Some(why) = owner.why_not_ours(&cluster.tags) {
            return Err(ProviderError::NotOurs {
                id: id.clone(),
                why,
            });
        }
        Ok(Some(cluster))
    }

    /// Waits until the poller sees `check` hold for `id`; the snapshot it held on.
    async fn wait_for(
        &self,
        id: &ClusterId,
        timeout: Duration,
        check: impl FnMut(&Snapshot) -> Check,
        on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<std::sync::Arc<Snapshot>, poller::WaitError> {
        self.poller
            .wait(id, timeout, check, |what| on_wait(what))
            .await
    }

    /// Waits until the cluster is gone.
    async fn wait_gone(
        &self,
        id: &ClusterId,
        timeout: Duration,
        on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), poller::WaitError> {
        let check = |snapshot: &Snapshot| match snapshot.cluster(id) {
            None => Check::Done,
            Some(cluster) => Check::Waiting(format!("cluster {}", cluster.status)),
        };
        self.wait_for(id, timeout, check, on_wait).await.map(drop)
    }

    /// Waits until the cluster is available with no change pending (after `ModifyDBCluster`,
    /// until `expect` holds too: a cluster can read `available` before it turns `modifying`).
    async fn wait_available(
        &self,
        id: &ClusterId,
        timeout: Duration,
        expect: impl Fn(&ClusterState) -> bool,
    ) -> Result<(), poller::WaitError> {
        let check = |snapshot: &Snapshot| match snapshot.cluster(id) {
            None => Check::Failed(format!("`{id}` does not exist")),
            Some(cluster) if cluster.status != "available" => {
                Check::Waiting(format!("cluster {}", cluster.status))
            }
            Some(cluster) if !expect(cluster) => {
                Check::Waiting("waiting for the change to show".to_owned())
            }
            Some(_) => Check::Done,
        };
        self.wait_for(id, timeout, check, &|_| {}).await.map(drop)
    }
}

/// What the cluster says of the database settings: `envctl:database` holds `{user}@{name}`.
fn database_of(cluster: &ClusterState) -> (Option<String>, Option<String>) {
    match cluster
        .tags
        .get(tags::DATABASE)
        .and_then(|v| v.split_once('@'))
    {
        Some((user, name)) => (Some(user.to_owned()), Some(name.to_owned())),
        None => (None, cluster.database_name.clone()),
    }
}

fn observed(cluster: ClusterState) -> ObservedEnv {
    let scaling = match (
        cluster.min_acu.and_then(Acu::from_f64),
        cluster.max_acu.and_then(Acu::from_f64),
    ) {
        (Some(min_acu), Some(max_acu)) => Some(Scaling { min_acu, max_acu }),
        _ => None,
    };
    let (database_user, database_name) = database_of(&cluster);
    ObservedEnv {
        endpoint: cluster
            .endpoint
            .as_ref()
            .map(|host| format!("{host}:{}", cluster.port.unwrap_or(5432))),
        arn: Some(cluster.arn),
        cluster_id: cluster.id,
        tags: cluster.tags,
        status: cluster.status,
        scaling,
        deletion_protection: cluster.deletion_protection,
        engine_version: cluster.engine_version,
        database_name,
        database_user,
        created_at: cluster.created_at,
        ledger: Default::default(),
    }
}

/// A cluster ready for connections: available, with every member instance available, and an
/// endpoint.
fn ready(snapshot: &Snapshot, id: &ClusterId) -> Check {
    let Some(cluster) = snapshot.cluster(id) else {
        return Check::Failed(format!("`{id}` does not exist"));
    };
    if cluster.status == "deleting" {
        return Check::Failed(format!("`{id}` is being deleted"));
    }
    if cluster.status != "available" {
        return Check::Waiting(format!("cluster {}", cluster.status));
    }
    let Some(instances) = snapshot.instances_of(id) else {
        return Check::Waiting(format!("cluster {}", cluster.status));
    };
    let instances: Vec<_> = instances.collect();
    if instances.is_empty() || cluster.members.is_empty() {
        return Check::Waiting("waiting for its writer instance".to_owned());
    }
    if let Some(busy) = instances.iter().find(|i| i.status != "available") {
        return Check::Waiting(format!("instance {} {}", busy.id, busy.status));
    }
    if cluster.endpoint.is_none() {
        return Check::Waiting("waiting for its endpoint".to_owned());
    }
    Check::Done
}

/// The quota message AWS's error code alone does not give.
fn quota_error(id: &ClusterId, e: AwsError) -> ProviderError {
    ProviderError::CreateFailed(
        id.clone(),
        format!(
            "the account's quota of DB clusters in this Region is used up (40 by default; an express cluster counts as one cluster and one instance): destroy unused environments, or ask for more in the Service Quotas console (Amazon RDS, `DB clusters`) ({e})"
        )
        .into(),
    )
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn observe(&self, owner: &Owner) -> Result<Vec<ObservedEnv>, ProviderError> {
        let failed = |e: AwsError| ProviderError::ObserveFailed(boxed(e));
        let arns = self.api.tagged_clusters(owner).await.map_err(failed)?;
        let ids: Vec<ClusterId> = arns
            .iter()
            .filter_map(|arn| api::cluster_id_of_arn(arn))
            .map(ClusterId::from_live)
            .collect();
        // GetResources may list clusters that are gone, or tags that changed: the describe decides.
        let clusters = self.api.describe_clusters(&ids).await.map_err(failed)?;
        Ok(clusters
            .into_values()
            .filter(|c| owner.owns(&c.tags))
            .map(observed)
            .collect())
    }

    async fn create(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        tags: &Tags,
    ) -> Result<(), ProviderError> {
        let id = &desired.cluster_id;
        let failed = |e: BoxError| ProviderError::CreateFailed(id.clone(), e);
        if !owner.owns(tags) {
            return Err(failed(
                "internal error: the tags to write do not name this repository and prefix".into(),
            ));
        }
        let mut request = CreateRequest {
            id,
            min_acu: desired.cluster.scaling.min_acu.as_f64(),
            max_acu: desired.cluster.scaling.max_acu.as_f64(),
            deletion_protection: desired.cluster.deletion_protection,
            engine_version: desired.cluster.engine_version.as_deref(),
            database_name: Some(desired.database.name.as_str()).filter(|n| *n != "postgres"),
            tags,
        };
        for _ in 0..5 {
            let error = match self.api.create_cluster(&request).await {
                Ok(()) => return self.data_plane.created(id).await.map_err(failed),
                Err(error) => error,
            };
            if error.is("DBClusterAlreadyExistsFault") {
                // Ours already (an earlier run, or this call's lost answer): go on. Anyone else's:
                // say whose. Ours being deleted (a replace): wait until it is gone.
                match self.owned_cluster(owner, id, failed).await? {
                    None => continue,
                    Some(cluster) if cluster.status == "deleting" => {
                        self.wait_gone(id, self.timeout, &|_| {})
                            .await
                            .map_err(|e| failed(boxed(e)))?;
                        continue;
                    }
                    Some(_) => return self.data_plane.created(id).await.map_err(failed),
                }
            }
            if error.is("DBClusterQuotaExceededFault") {
                return Err(quota_error(id, error));
            }
            if error.is("InvalidParameterCombination")
                && request.database_name.is_some()
                && error.to_string().contains("DatabaseName")
            {
                // Reported for express by one practitioner: create without it; the database is
                // made with SQL once the cluster is available.
                request.database_name = None;
                continue;
            }
            return Err(failed(boxed(error)));
        }
        Err(failed(
            "the cluster kept appearing and disappearing while it was created; run apply again"
                .into(),
        ))
    }

    async fn prepare(&self, _owner: &Owner, _desired: &DesiredEnv) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn wait_ready(
        &self,
        _owner: &Owner,
        desired: &DesiredEnv,
        timeout: Duration,
        on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), ProviderError> {
        let id = &desired.cluster_id;
        let start = std::time::Instant::now();
        let not_ready = |e: BoxError| ProviderError::NotReady {
            id: id.clone(),
            waited: start.elapsed(),
            source: Some(e),
        };
        let snapshot = self
            .wait_for(id, timeout, |s| ready(s, id), on_wait)
            .await
            .map_err(|e| match e {
                poller::WaitError::Failed(why) if why.ends_with("does not exist") => {
                    ProviderError::NotFound(id.clone())
                }
                e => not_ready(boxed(e)),
            })?;
        // The poll that saw it ready read it after the wait began: no need to describe it again.
        let cluster = snapshot
            .cluster(id)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        if !self.data_plane.is_override() {
            wait_for_dns(&cluster, timeout.saturating_sub(start.elapsed()), on_wait)
                .await
                .map_err(not_ready)?;
        }
        self.data_plane
            .setup(&cluster, desired)
            .await
            .map_err(|e| ProviderError::LoginFailed {
                id: id.clone(),
                user: data_plane::MASTER_USER.to_owned(),
                source: e,
            })?;
        // Ready means the spec's user can connect (a fresh cluster may refuse for a moment).
        loop {
            let connection = self
                .data_plane
                .connection(
                    &cluster,
                    &connection_database(&self.data_plane, desired),
                    &desired.database.user,
                )
                .await
                .map_err(not_ready)?;
            let attempt = async {
                let conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect_with(&connection.options)
                        .await?;
                sqlx::Connection::close(conn).await
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("28P01" | "28000" | "3D000")) =>
                {
                    return Err(ProviderError::LoginFailed {
                        id: id.clone(),
                        user: desired.database.user.clone(),
                        source: boxed(crate::sql::SqlError(sqlx::Error::Database(e))),
                    });
                }
                Err(e) if start.elapsed() >= timeout => {
                    return Err(not_ready(boxed(crate::sql::SqlError(e))));
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }

    async fn update(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError> {
        let id = &desired.cluster_id;
        let failed = |e: BoxError| ProviderError::UpdateFailed(id.clone(), e);
        let cluster = self
            .owned_cluster(owner, id, failed)
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        if cluster.status != "available" {
            self.wait_available(id, self.timeout, |_| true)
                .await
                .map_err(|e| failed(boxed(e)))?;
        }
        let (min, max) = (
            desired.cluster.scaling.min_acu.as_f64(),
            desired.cluster.scaling.max_acu.as_f64(),
        );
        let scaling_changed = cluster.min_acu != Some(min) || cluster.max_acu != Some(max);
        let protection = desired.cluster.deletion_protection;
        if !scaling_changed && cluster.deletion_protection == protection {
            return Ok(());
        }
        self.api
            .modify_cluster(id, scaling_changed.then_some((min, max)), protection)
            .await
            .map_err(|e| failed(boxed(e)))?;
        self.wait_available(id, self.timeout, |c| {
            c.min_acu == Some(min) && c.max_acu == Some(max) && c.deletion_protection == protection
        })
        .await
        .map_err(|e| failed(boxed(e)))
    }

    async fn update_tags(
        &self,
        owner: &Owner,
        id: &ClusterId,
        update: &TagUpdate,
    ) -> Result<(), ProviderError> {
        // Even with nothing to change, the live tags are re-checked (callers rely on it before
        // migrating).
        let failed = |e: BoxError| ProviderError::UpdateFailed(id.clone(), e);
        if owner.tags().keys().any(|k| update.remove.contains(k))
            || !owner
                .tags()
                .iter()
                .all(|(k, v)| update.set.get(k).is_none_or(|set| set == v))
        {
            return Err(failed(
                "internal error: the change would remove the ownership tags".into(),
            ));
        }
        let cluster = self
            .owned_cluster(owner, id, failed)
            .await?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        let changed: Tags = update
            .set
            .iter()
            .filter(|(k, v)| cluster.tags.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let removed: Vec<String> = update
            .remove
            .iter()
            .filter(|k| cluster.tags.contains_key(*k))
            .cloned()
            .collect();
        self.api
            .add_tags(&cluster.arn, &changed)
            .await
            .map_err(|e| failed(boxed(e)))?;
        self.api
            .remove_tags(&cluster.arn, &removed)
            .await
            .map_err(|e| failed(boxed(e)))
    }

    async fn delete(
        &self,
        owner: &Owner,
        id: &ClusterId,
        options: DeleteOptions,
    ) -> Result<(), ProviderError> {
        let failed = |e: BoxError| ProviderError::DeleteFailed(id.clone(), e);
        let Some(cluster) = self.owned_cluster(owner, id, failed).await? else {
            self.data_plane
                .drop_override_database(id.as_str())
                .await
                .map_err(failed)?;
            // Decided on tags that are gone with it: say so (someone deleted it first).
            if !options.unchanged.is_empty() {
                return Err(ProviderError::NotFound(id.clone()));
            }
            return Ok(());
        };
        // Re-read on the live resource: an apply may have protected it since the plan.
        if !options.force {
            if cluster.tags.get(tags::PROTECT).map(String::as_str) == Some("true") {
                return Err(ProviderError::Protected(id.clone()));
            }
            if cluster.deletion_protection {
                return Err(ProviderError::DeletionProtected(id.clone()));
            }
        }
        if let Some(what) = super::changed_tag(&cluster.tags, &options.unchanged) {
            return Err(ProviderError::Changed {
                id: id.clone(),
                what,
            });
        }
        if cluster.status != "deleting" {
            if cluster.deletion_protection {
                self.api
                    .modify_cluster(id, None, false)
                    .await
                    .map_err(|e| failed(boxed(e)))?;
                self.wait_available(id, options.wait_timeout, |c| !c.deletion_protection)
                    .await
                    .map_err(|e| failed(boxed(e)))?;
            }
            for instance in &cluster.members {
                match self.api.delete_instance(instance).await {
                    Ok(()) => {}
                    Err(e) if e.is("DBInstanceNotFound") || e.is("InvalidDBInstanceState") => {}
                    Err(e) => return Err(failed(boxed(e))),
                }
            }
            let members =
                |snapshot: &Snapshot| match snapshot.instances_of(id).map(|mut i| i.next()) {
                    // Its instances were not read: the cluster is still `creating`.
                    None => Check::Waiting("cluster creating".to_owned()),
                    Some(None) => Check::Done,
                    Some(Some(instance)) => {
                        Check::Waiting(format!("instance {} {}", instance.id, instance.status))
                    }
                };
            self.wait_for(id, options.wait_timeout, members, &|_| {})
                .await
                .map_err(|e| failed(boxed(e)))?;
            match self.api.delete_cluster(id).await {
                Ok(()) => {}
                Err(e) if e.is("DBClusterNotFoundFault") => {}
                // Already being deleted (another run, or this call's lost answer).
                Err(e) if e.is("InvalidDBClusterStateFault") => {}
                Err(e) => return Err(failed(boxed(e))),
            }
        }
        self.wait_gone(id, options.wait_timeout, &|_| {})
            .await
            .map_err(|e| failed(boxed(e)))?;
        self.data_plane
            .drop_override_database(id.as_str())
            .await
            .map_err(failed)
    }

    async fn connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        let cluster = self
            .api
            .describe_cluster(id)
            .await
            .map_err(|e| ProviderError::ObserveFailed(boxed(e)))?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        let name = match &self.data_plane.target {
            data_plane::Target::Override { .. } => id.to_string(),
            data_plane::Target::Aws { .. } => database.name.clone(),
        };
        self.data_plane
            .connection(&cluster, &name, &database.user)
            .await
            .map_err(|e| ProviderError::Unavailable {
                provider: "aws",
                source: e,
            })
    }

    async fn upstream(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Upstream, ProviderError> {
        let cluster = self
            .api
            .describe_cluster(id)
            .await
            .map_err(|e| ProviderError::ObserveFailed(boxed(e)))?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        self.data_plane
            .upstream(&cluster, &database.name, &database.user)
            .map_err(|e| ProviderError::Unavailable {
                provider: "aws",
                source: e,
            })
    }
}

/// The database a connection to `desired` opens: the spec's on AWS, the cluster id's on the
/// override server.
fn connection_database(data_plane: &DataPlane, desired: &DesiredEnv) -> String {
    match &data_plane.target {
        data_plane::Target::Override { .. } => desired.cluster_id.to_string(),
        data_plane::Target::Aws { .. } => desired.database.name.clone(),
    }
}

/// After `available`, a new endpoint can take a couple of minutes to resolve.
async fn wait_for_dns(
    cluster: &ClusterState,
    timeout: Duration,
    on_wait: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), BoxError> {
    let host = cluster
        .endpoint
        .clone()
        .ok_or("the cluster has no endpoint")?;
    let port = cluster.port.unwrap_or(5432);
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        if let Ok(mut addresses) = tokio::net::lookup_host((host.as_str(), port)).await
            && addresses.next().is_some()
        {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "its endpoint `{host}` did not resolve in DNS within {}",
                humantime::format_duration(timeout)
            )
            .into());
        }
        if !said {
            on_wait("waiting for its endpoint to resolve in DNS");
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
