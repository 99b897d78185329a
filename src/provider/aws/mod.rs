//! The AWS provider: each environment is an Aurora PostgreSQL cluster created with express
//! configuration (cluster and writer instance in one call, serverless v2 scaling, IAM database
//! authentication only, master user `postgres`).
//!
//! - Observe reads tags only: `tag:GetResources` for this owner's clusters, then
//!   `DescribeDBClusters` by id in batches of 100; it never connects to a database (that would wake
//!   a paused cluster and cost money).
//! - Every change re-reads the cluster and refuses unless its live tags name this owner
//!   (`envctl:managed`, `envctl:repo`, `envctl:prefix`); a delete also refuses `envctl:protect`
//!   and deletion protection unless forced, and an id outside the prefix always.
//! - A delete is one `DeleteDBCluster` with `DeleteDBInstances` (the writer and the cluster, all
//!   or nothing), and every destructive call (that one, and turning deletion protection off) is
//!   preceded by a fresh read of the cluster's live tags, one round trip before it: RDS has no
//!   conditional delete, so that round trip is the window in which a tag change goes unseen.
//!   Deletes AWS refuses for the moment (a cluster or writer still being made, an instance still
//!   being deleted) are sent again as the poller sees the way clear, within `--wait-timeout`.
//! - A cluster that lists no writer is observed as such (`ObservedEnv::writerless`) and repaired
//!   with a `db.serverless` writer tagged like the cluster.
//! - Waits go through one shared [`poller::Poller`]: one batched describe per interval for all of
//!   a run's waiting environments.
//! - Credentials, region and `AWS_ENDPOINT_URL` come from the standard chain (aws-config); the SDK
//!   retries throttling, 5xx and timeouts (8 attempts unless `AWS_MAX_ATTEMPTS` says otherwise,
//!   checked here first: aws-config panics on a malformed one).
//! - A signal ends every wait at once (`Cancel::process`): AWS carries on, the next run picks it
//!   up.
//!
//! Submodules: `api` (the calls, as plain data), `poller`, `data_plane` (tokens, TLS, roles, the
//! test override), `policy` (the IAM policy), `token` (IAM auth tokens).

pub mod api;
mod clone;
pub mod data_plane;
mod delete;
pub mod doctor;
pub mod policy;
pub mod poller;
pub mod tls;
pub mod token;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_smithy_http_client::tls as sdk_tls;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use api::{Api, AwsError, ClusterState, CreateRequest, InstanceState};
use data_plane::DataPlane;
use poller::{Check, Poller, Snapshot};

use super::upstream::Upstream;
use super::{BoxError, Connection, Created, DeleteOptions, Provider, ProviderError, boxed};
use crate::cancel::Cancel;
use crate::model::{
    Acu, ClusterId, DatabaseSettings, DesiredEnv, ObservedEnv, Owner, Scaling, StatusClass,
    TagUpdate, Tags, tags,
};

/// The AWS provider of one region.
pub struct AwsProvider {
    api: Api,
    poller: Poller,
    data_plane: DataPlane,
    region: String,
    timeout: Duration,
    /// Set by a signal: every wait ends.
    cancel: Cancel,
}

/// Most attempts `AWS_MAX_ATTEMPTS` may ask for (each retry backs off up to 20 s).
const MAX_ATTEMPTS: u32 = 100;

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

/// The retries `AWS_MAX_ATTEMPTS` and `AWS_RETRY_MODE` ask for (8 standard attempts when
/// unset), checked first: aws-config panics on a malformed one.
fn retry_config() -> Result<RetryConfig, BoxError> {
    let attempts = match std::env::var("AWS_MAX_ATTEMPTS") {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_ATTEMPTS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "AWS_MAX_ATTEMPTS `{}` is not a whole number from 1 to {MAX_ATTEMPTS} (the attempts of each AWS call, the first included); unset it for 8",
                    text.escape_debug()
                )
                .into());
            }
        },
        Err(std::env::VarError::NotPresent) => 8,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("AWS_MAX_ATTEMPTS is not text: set a whole number from 1 to 100".into());
        }
    };
    let config = match std::env::var("AWS_RETRY_MODE").as_deref().map(str::trim) {
        Err(_) | Ok("") => RetryConfig::standard(),
        Ok(mode) if mode.eq_ignore_ascii_case("standard") => RetryConfig::standard(),
        Ok(mode) if mode.eq_ignore_ascii_case("adaptive") => RetryConfig::adaptive(),
        Ok(mode) => {
            return Err(format!(
                "AWS_RETRY_MODE `{}` is neither `standard` nor `adaptive`",
                mode.escape_debug()
            )
            .into());
        }
    };
    Ok(config.with_max_attempts(attempts))
}

/// The AWS configuration from the standard chain (credentials, region, `AWS_ENDPOINT_URL`), with
/// envctl's HTTP client (rustls on ring), timeouts and retries.
pub async fn sdk_config() -> Result<aws_config::SdkConfig, BoxError> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(sdk_tls::Provider::Rustls(
            sdk_tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    // Retries are set here, so aws-config never reads (and panics on) them itself.
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry_config()?)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    Ok(loader.load().await)
}

impl AwsProvider {
    /// The cluster as AWS describes it now; `NotFound` when it is gone.
    async fn described(&self, id: &ClusterId) -> Result<api::ClusterState, ProviderError> {
        self.api
            .describe_cluster(id)
            .await
            .map_err(|e| ProviderError::ObserveFailed(boxed(e)))?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))
    }

    /// A connection to the environment's database (on the override server, the cluster's) as
    /// `user`, or as the cluster's master user when `None`.
    async fn data_plane_connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
        user: Option<&str>,
    ) -> Result<Connection, ProviderError> {
        let cluster = self.described(id).await?;
        let name = match &self.data_plane.target {
            data_plane::Target::Override { .. } => id.to_string(),
            data_plane::Target::Aws { .. } => database.name.clone(),
        };
        let user = user.map_or_else(|| self.data_plane.master_of(&cluster), str::to_owned);
        self.data_plane
            .connection(&cluster, &name, &user)
            .await
            .map_err(|e| ProviderError::Unavailable {
                provider: "aws",
                source: e,
            })
    }

    /// [`AwsProvider::connect`], saying what to do when it fails, and telling `note` when the
    /// data plane will not verify the server.
    pub async fn open(
        timeout: Duration,
        note: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<AwsProvider, super::SetupError> {
        if let Ok(tls) = tls::from_env()
            && tls.mode == tls::Mode::Require
            && std::env::var_os("ENVCTL_DATA_PLANE_OVERRIDE").is_none()
        {
            note(
                "warning: PGSSLMODE=require: connections to the databases are encrypted, but the server is not verified; unset PGSSLMODE to verify it (verify-full)",
            );
        }
        AwsProvider::connect(timeout).await.map_err(|e| super::SetupError {
            message: "cannot use the aws provider".into(),
            hint: "configure AWS credentials and a region as for the AWS CLI (AWS_PROFILE, AWS_REGION, or OIDC in GitHub Actions)".into(),
            source: Some(super::without_provider_layer(e)),
        })
    }

    /// Loads the AWS configuration (credentials, region, endpoint) from the standard chain.
    pub async fn connect(timeout: Duration) -> Result<AwsProvider, ProviderError> {
        let unavailable = |e: BoxError| ProviderError::Unavailable {
            provider: "aws",
            source: e,
        };
        let config = sdk_config().await.map_err(unavailable)?;
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
        let cancel = Cancel::process();
        let poller = Poller::new(
            api.clone(),
            poll_interval().map_err(unavailable)?,
            cancel.clone(),
        );
        let data_plane =
            DataPlane::from_env(credentials, region.clone(), timeout).map_err(unavailable)?;
        Ok(AwsProvider {
            api,
            poller,
            data_plane,
            region,
            timeout,
            cancel,
        })
    }

    /// Sleeps, unless a signal comes first: `false` then.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = self.cancel.requested_wait() => false,
        }
    }

    pub fn region(&self) -> &str {
        &self.region
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

    /// Brings member instances' tags in line with their cluster: the ownership tags (IAM lets
    /// envctl delete only writers that carry them) and, with `protect`, `envctl:protect` while
    /// the cluster has it (IAM's Deny on deleting a protected environment's writer reads the
    /// writer's own tags). An instance another owner tagged is never touched.
    async fn tag_members<'a>(
        &self,
        owner: &Owner,
        cluster_tags: &Tags,
        instances: impl IntoIterator<Item = &'a InstanceState>,
        protect: bool,
    ) -> Result<(), AwsError> {
        let protected = cluster_tags.get(tags::PROTECT).map(String::as_str) == Some("true");
        for instance in instances {
            if instance.tags.contains_key(tags::MANAGED) && !owner.owns(&instance.tags) {
                continue;
            }
            let mut want = owner.tags();
            if protect && protected {
                want.insert(tags::PROTECT.to_owned(), "true".to_owned());
            }
            let set: Tags = want
                .into_iter()
                .filter(|(k, v)| instance.tags.get(k) != Some(v))
                .collect();
            self.api.add_tags(&instance.arn, &set).await?;
            if protect && !protected && instance.tags.contains_key(tags::PROTECT) {
                self.api
                    .remove_tags(&instance.arn, &[tags::PROTECT.to_owned()])
                    .await?;
            }
        }
        Ok(())
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
                will_not_be_available(id, &cluster.status)
                    .unwrap_or_else(|| Check::Waiting(format!("cluster {}", cluster.status)))
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

/// What to do about a cluster status that waiting will not change (see
/// [`crate::model::StatusClass::Unusable`]), for the cluster of `branch`: start a stopped one
/// (the only status `aws rds start-db-cluster` is for); make again one AWS cannot recover; look
/// at why for the rest.
pub fn status_hint(status: &str, id: &ClusterId, branch: Option<&str>) -> Option<String> {
    let destroy = crate::model::code(&format!(
        "envctl destroy --branch {}",
        branch.unwrap_or("BRANCH")
    ));
    let events = format!(
        "`aws rds describe-events --source-type db-cluster --source-identifier {id}` says why"
    );
    let again = format!("{destroy} deletes it, then apply makes it again");
    Some(match status {
        "stopped" => format!(
            "start it (`aws rds start-db-cluster --db-cluster-identifier {id}`), then apply again"
        ),
        "stopping" => "it is being stopped: once it is `stopped`, start it, then apply again".into(),
        "failed" => format!("AWS could not recover it ({events}); {again}"),
        "cloning-failed" => format!("AWS could not make it as a clone ({events}); {again}"),
        "migration-failed" => {
            format!("AWS could not migrate data into it ({events}); {again}")
        }
        "inaccessible-encryption-credentials" => format!(
            "AWS cannot use the KMS key it is encrypted with, and cannot recover it; {again}"
        ),
        "inaccessible-encryption-credentials-recoverable" => {
            "AWS cannot use the KMS key it is encrypted with: enable the key (or restore its grant) and AWS recovers it, then apply again".into()
        }
        _ if StatusClass::of(status) == StatusClass::Unusable => format!(
            "see why in the RDS console or with `aws rds describe-db-clusters --db-cluster-identifier {id}`, fix it, then apply again"
        ),
        _ => return None,
    })
}

fn observed(owner: &Owner, cluster: ClusterState) -> ObservedEnv {
    let scaling = match (
        cluster.min_acu.and_then(Acu::from_f64),
        cluster.max_acu.and_then(Acu::from_f64),
    ) {
        (Some(min_acu), Some(max_acu)) => Some(Scaling { min_acu, max_acu }),
        _ => None,
    };
    let (database_user, database_name) = database_of(&cluster);
    let branch = cluster
        .tags
        .get(tags::BRANCH)
        .and_then(|v| crate::model::decode_branch_tag(v));
    ObservedEnv {
        endpoint: cluster
            .endpoint
            .as_ref()
            .map(|host| format!("{host}:{}", cluster.port.unwrap_or(5432))),
        arn: Some(cluster.arn),
        status_hint: status_hint(&cluster.status, &cluster.id, branch.as_deref()),
        writerless: cluster.members.is_empty(),
        refused: owner.id_outside_prefix(&cluster.id),
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

/// How many polls in a row may see an available cluster with no instance at all before a wait
/// for its writer gives up (nothing is coming: the plan repairs it).
const NO_WRITER_POLLS: u32 = 3;

/// A cluster ready for connections: available, with every member instance available, and an
/// endpoint. `no_writer` counts the polls in a row that saw it available with no instance at all.
fn ready(snapshot: &Snapshot, id: &ClusterId, no_writer: &mut u32) -> Check {
    let Some(cluster) = snapshot.cluster(id) else {
        return Check::Failed(format!("`{id}` does not exist"));
    };
    if let Some(end) = will_not_be_available(id, &cluster.status) {
        return end;
    }
    if cluster.status != "available" {
        return Check::Waiting(format!("cluster {}", cluster.status));
    }
    let Some(instances) = snapshot.instances_of(id) else {
        return Check::Waiting(format!("cluster {}", cluster.status));
    };
    let instances: Vec<_> = instances.collect();
    if instances.is_empty() && cluster.members.is_empty() {
        *no_writer += 1;
        if *no_writer >= NO_WRITER_POLLS {
            return Check::Failed(format!(
                "`{id}` has no writer instance, so nothing serves its database; run apply again: its plan repairs it"
            ));
        }
    } else {
        *no_writer = 0;
    }
    if instances.is_empty() || cluster.members.is_empty() {
        return Check::Waiting("waiting for its writer instance".to_owned());
    }
    if let Some(busy) = instances.iter().find(|i| i.status != "available") {
        if StatusClass::of(&busy.status) == StatusClass::Unusable {
            return Check::Failed(format!(
                "its instance `{}` is {}, which waiting does not change; see why with `aws rds describe-events --source-type db-instance --source-identifier {}`, then apply again",
                busy.id, busy.status, busy.id
            ));
        }
        return Check::Waiting(format!("instance {} {}", busy.id, busy.status));
    }
    if cluster.endpoint.is_none() {
        return Check::Waiting("waiting for its endpoint".to_owned());
    }
    Check::Done
}

/// The end of a wait for `id` to be available when its status says it is going away or will not
/// get there by waiting (`stopped`, `cloning-failed`, …): failed at once, with what to do.
fn will_not_be_available(id: &ClusterId, status: &str) -> Option<Check> {
    match StatusClass::of(status) {
        StatusClass::Deleting => Some(Check::Failed(format!("`{id}` is being deleted"))),
        StatusClass::Unusable => Some(Check::Failed(match status_hint(status, id, None) {
            Some(hint) => format!("`{id}` is {status}, which waiting does not change: {hint}"),
            None => format!("`{id}` is {status}, which waiting does not change"),
        })),
        StatusClass::Available | StatusClass::Busy => None,
    }
}

/// A wait's end as the provider reports it: a signal, or `otherwise`.
fn wait_failed(
    id: &ClusterId,
    e: poller::WaitError,
    otherwise: impl Fn(BoxError) -> ProviderError,
) -> ProviderError {
    match e {
        poller::WaitError::Interrupted { last } => ProviderError::Interrupted {
            id: id.clone(),
            what: last,
        },
        e => otherwise(boxed(e)),
    }
}

/// A delete IAM refused: for a protected environment, the apply role's policy forbids it on
/// purpose.
fn denied(id: &ClusterId, cluster: &ClusterState, e: AwsError) -> ProviderError {
    let why = match cluster.tags.get(tags::PROTECT).map(String::as_str) {
        Some("true") => format!(
            "IAM denies deleting it: it is tagged `envctl:protect=true`, and envctl's apply role may not delete a protected environment; run the destroy with a person's AWS credentials ({})",
            e.code.as_deref().unwrap_or("AccessDenied")
        ),
        _ => format!(
            "IAM denies deleting it: check that the role has `envctl iam-policy --role apply` and that the cluster and its writer carry this repository's `envctl:` tags ({})",
            e.code.as_deref().unwrap_or("AccessDenied")
        ),
    };
    ProviderError::DeleteFailed(id.clone(), why.into())
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
            .map(|c| observed(owner, c))
            .collect())
    }

    async fn create(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        tags: &Tags,
    ) -> Result<Created, ProviderError> {
        let id = &desired.cluster_id;
        let failed = |e: BoxError| ProviderError::CreateFailed(id.clone(), e);
        super::check_create_tags(owner, id, tags)?;
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
                Ok(()) => {
                    self.data_plane.created(id).await.map_err(failed)?;
                    return Ok(Created::New);
                }
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
                            .map_err(|e| wait_failed(id, e, failed))?;
                        continue;
                    }
                    Some(_) => {
                        self.data_plane.created(id).await.map_err(failed)?;
                        return Ok(Created::Existing);
                    }
                }
            }
            if error.is("DBClusterQuotaExceededFault") {
                return Err(quota_error(id, error));
            }
            if error.is("InvalidParameterCombination")
                && let Some(version) = request.engine_version
                && error.to_string().contains("EngineVersion")
            {
                return Err(failed(
                    format!(
                        "AWS refused `cluster.engineVersion` (`{version}`) with express configuration, which takes its own default version; remove `engineVersion` from the spec ({})",
                        error.code.as_deref().unwrap_or("refused")
                    )
                    .into(),
                ));
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
        owner: &Owner,
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
        if desired.data.is_some() {
            // A clone has no writer until envctl makes one (also after an apply cut off).
            self.complete_clone(owner, id, timeout, on_wait).await?;
        }
        let mut no_writer = 0;
        let snapshot = self
            .wait_for(id, timeout, |s| ready(s, id, &mut no_writer), on_wait)
            .await
            .map_err(|e| match e {
                poller::WaitError::Failed(why) if why.ends_with("does not exist") => {
                    ProviderError::NotFound(id.clone())
                }
                e => wait_failed(id, e, not_ready),
            })?;
        // The poll that saw it ready read it after the wait began: no need to describe it again.
        let cluster = snapshot
            .cluster(id)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        // Express makes the writer itself, with no tags of ours.
        self.tag_members(
            owner,
            &cluster.tags,
            snapshot.instances_of(id).into_iter().flatten(),
            true,
        )
        .await
        .map_err(|e| ProviderError::UpdateFailed(id.clone(), boxed(e)))?;
        if !self.data_plane.is_override() {
            self.wait_for_dns(&cluster, timeout.saturating_sub(start.elapsed()), on_wait)
                .await?;
        }
        self.data_plane
            .setup(&cluster, desired)
            .await
            .map_err(|e| ProviderError::LoginFailed {
                id: id.clone(),
                user: self.data_plane.master_of(&cluster),
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
                Err(_) if !self.pause(Duration::from_secs(2)).await => {
                    return Err(ProviderError::Interrupted {
                        id: id.clone(),
                        what: "waiting until its user can log in".into(),
                    });
                }
                Err(_) => {}
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
        let cluster = match cluster.status.as_str() {
            "available" => cluster,
            _ => {
                self.wait_available(id, self.timeout, |_| true)
                    .await
                    .map_err(|e| wait_failed(id, e, failed))?;
                // Read again right before the change (it may turn deletion protection off).
                self.owned_cluster(owner, id, failed)
                    .await?
                    .ok_or_else(|| ProviderError::NotFound(id.clone()))?
            }
        };
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
        .map_err(|e| wait_failed(id, e, failed))
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
        if let Some(why) = update.refused_by(&cluster.tags) {
            return Err(failed(why.into()));
        }
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
            .map_err(|e| failed(boxed(e)))?;
        // The writer carries `envctl:protect` as the cluster does.
        if changed.contains_key(tags::PROTECT) || removed.iter().any(|k| k == tags::PROTECT) {
            let mut now = cluster.tags.clone();
            update.apply_to(&mut now);
            let instances = self
                .api
                .describe_instances(std::slice::from_ref(id))
                .await
                .map_err(|e| failed(boxed(e)))?;
            self.tag_members(owner, &now, &instances, true)
                .await
                .map_err(|e| failed(boxed(e)))?;
        }
        Ok(())
    }

    async fn delete(
        &self,
        owner: &Owner,
        id: &ClusterId,
        options: DeleteOptions,
    ) -> Result<(), ProviderError> {
        delete::delete(self, owner, id, &options).await
    }

    async fn repair(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError> {
        delete::repair(self, owner, desired).await
    }

    async fn occupants(
        &self,
        owner: &Owner,
        ids: &[ClusterId],
    ) -> Result<std::collections::BTreeMap<ClusterId, String>, ProviderError> {
        let clusters = self
            .api
            .describe_clusters(ids)
            .await
            .map_err(|e| ProviderError::ObserveFailed(boxed(e)))?;
        Ok(clusters
            .into_values()
            .filter_map(|c| Some((c.id.clone(), owner.why_not_ours(&c.tags)?)))
            .collect())
    }

    /// Whatever the data plane of this run: signed for the cluster's own endpoint.
    async fn auth_token(&self, id: &ClusterId, user: &str) -> Result<String, ProviderError> {
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

    async fn engine_support(
        &self,
        versions: &std::collections::BTreeSet<Option<String>>,
    ) -> Result<crate::model::EngineSupportMap, ProviderError> {
        engine_support(&self.api, versions)
            .await
            .map_err(|e| ProviderError::ObserveFailed(boxed(e)))
    }

    async fn ledger_readers(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Vec<Connection>, ProviderError> {
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
        let unavailable = |e| ProviderError::Unavailable {
            provider: "aws",
            source: e,
        };
        // The reader first: the plan role may log in as nothing else. An environment made before
        // the reader existed has none until its next apply: then the spec's user.
        let mut readers = Vec::new();
        for user in [crate::model::READER_USER, database.user.as_str()] {
            readers.push(
                self.data_plane
                    .connection(&cluster, &name, user)
                    .await
                    .map_err(unavailable)?,
            );
        }
        Ok(readers)
    }

    async fn clone_env(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        source: &ClusterId,
        tags: &Tags,
    ) -> Result<Option<String>, ProviderError> {
        self.restore(owner, desired, source, tags).await
    }

    async fn source_status(
        &self,
        id: &ClusterId,
    ) -> Result<Option<super::SourceStatus>, ProviderError> {
        let cluster = self
            .api
            .describe_cluster(id)
            .await
            .map_err(|e| ProviderError::ObserveFailed(boxed(e)))?;
        Ok(cluster.map(|c| super::SourceStatus {
            hint: status_hint(&c.status, id, c.tags.get(tags::BRANCH).map(String::as_str)),
            masking_pending: tags::masking_pending(&c.tags),
            masked_with: tags::masked_with(&c.tags).map(str::to_owned),
            master_user: c.master_username.clone(),
            status: c.status,
        }))
    }

    async fn master_connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        self.data_plane_connection(id, database, None).await
    }

    async fn connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        self.data_plane_connection(id, database, Some(&database.user))
            .await
    }

    async fn upstream(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Upstream, ProviderError> {
        let cluster = self.described(id).await?;
        self.data_plane
            .upstream(&cluster, &database.name, &database.user)
            .await
            .map_err(|e| ProviderError::Unavailable {
                provider: "aws",
                source: e,
            })
    }
}

/// What the account offers for each of these engine versions (one `DescribeDBEngineVersions`
/// each): `16` asks for any 16.x, and the newest of them decides (what AWS picks).
pub async fn engine_support(
    api: &Api,
    versions: &std::collections::BTreeSet<Option<String>>,
) -> Result<crate::model::EngineSupportMap, AwsError> {
    let mut support = crate::model::EngineSupportMap::new();
    for version in versions {
        let found = api.engine_versions(version.as_deref()).await?;
        let best = found
            .into_iter()
            .max_by(|a, b| version_key(&a.version).cmp(&version_key(&b.version)));
        let entry = match best {
            Some(v) => crate::model::EngineSupport::Offered {
                version: v.version,
                min_acu: v.min_acu,
                max_acu: v.max_acu,
            },
            None => crate::model::EngineSupport::NotOffered {
                why: match version {
                    Some(version) => format!(
                        "Aurora PostgreSQL {version} is not offered in this Region (`aws rds describe-db-engine-versions --engine aurora-postgresql` lists what is); choose another `cluster.engineVersion`"
                    ),
                    None => "this Region offers no default Aurora PostgreSQL version (is Aurora available here?)".to_owned(),
                },
            },
        };
        support.insert(version.clone(), entry);
    }
    Ok(support)
}

/// `16.10` after `16.9`: the numbers of a version, for ordering.
fn version_key(version: &str) -> Vec<u64> {
    version.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The database a connection to `desired` opens: the spec's on AWS, the cluster id's on the
/// override server.
fn connection_database(data_plane: &DataPlane, desired: &DesiredEnv) -> String {
    match &data_plane.target {
        data_plane::Target::Override { .. } => desired.cluster_id.to_string(),
        data_plane::Target::Aws { .. } => desired.database.name.clone(),
    }
}

impl AwsProvider {
    /// After `available`, a new endpoint can take a couple of minutes to resolve.
    async fn wait_for_dns(
        &self,
        cluster: &ClusterState,
        timeout: Duration,
        on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), ProviderError> {
        let not_ready = |why: String| ProviderError::NotReady {
            id: cluster.id.clone(),
            waited: timeout,
            source: Some(why.into()),
        };
        let host = cluster
            .endpoint
            .clone()
            .ok_or_else(|| not_ready("the cluster has no endpoint".into()))?;
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
                return Err(not_ready(format!(
                    "its endpoint `{host}` did not resolve in DNS within {}",
                    crate::model::duration_text(timeout)
                )));
            }
            if !said {
                on_wait("waiting for its endpoint to resolve in DNS");
                said = true;
            }
            if !self.pause(Duration::from_secs(2)).await {
                return Err(ProviderError::Interrupted {
                    id: cluster.id.clone(),
                    what: "waiting for its endpoint to resolve in DNS".into(),
                });
            }
        }
    }
}
