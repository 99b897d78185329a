//! The AWS calls the provider makes, as plain data in and out: tag discovery
//! (`tag:GetResources`), batched describes of clusters and instances, and the few mutations.
//! Errors keep the AWS error code (`DBClusterNotFoundFault`, …) so callers can decide what is
//! idempotent, and render as people read them: the code, AWS's message and the request id (for
//! AWS support), never the SDK's dump of headers and body, and never a credential.
//!
//! Every list is paginated to the end: `GetResources` 100 per page following
//! `PaginationToken`, `DescribeDBClusters`/`DescribeDBInstances` by id in batches of at most 100
//! following `Marker`, so N clusters cost about 2·⌈N/100⌉ calls.
//!
//! `DeleteDBCluster` is sent with `DeleteDBInstances=true` (every instance, then the cluster, in
//! one call: RDS deletes all of them or none). The RDS API model documents the parameter
//! (botocore 1.44.18), aws-sdk-rds 1.159 has no setter for it, so [`Api::delete_cluster`] adds
//! it to the request's form body (`awsQuery`) in the SDK's `modify_before_signing` hook, on each
//! attempt, before the body is signed.

use std::collections::BTreeMap;

use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::operation::RequestId;
use aws_sdk_rds::types::{Filter, ServerlessV2ScalingConfiguration, Tag};
use aws_sdk_resourcegroupstagging::types::TagFilter;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_types::body::SdkBody;

use crate::model::{ClusterId, Owner, Tags, tags};

/// Most ids in one `db-cluster-id` filter, and the page size of every list.
pub const BATCH: usize = 100;

/// An AWS call that failed: its error code, if AWS gave one, what went wrong in words, and the
/// request id AWS gave it.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {message}{}", request_id.as_ref().map(|id| format!(" (request id {id})")).unwrap_or_default())]
pub struct AwsError {
    pub action: &'static str,
    pub code: Option<String>,
    message: String,
    request_id: Option<String>,
}

impl AwsError {
    fn of<E>(action: &'static str, error: SdkError<E, HttpResponse>) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = error.code().map(str::to_owned);
        let request_id = error
            .request_id()
            .or_else(|| error.meta().request_id())
            .map(str::to_owned);
        let message = match &error {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                match (&code, error.message()) {
                    (Some(code), Some(message)) => format!("{code}: {}", one_line(message)),
                    (Some(code), None) => code.clone(),
                    (None, _) => format!("AWS answered HTTP {status} with no error code"),
                }
            }
            SdkError::TimeoutError(_) => "AWS did not answer in time".to_owned(),
            SdkError::DispatchFailure(_) => format!(
                "cannot reach AWS{}: {}",
                endpoint_override(action, |name| std::env::var(name).ok())
                    .map(|(name, url)| format!(" at {url} (from {name})"))
                    .unwrap_or_default(),
                std::error::Error::source(&error).map_or_else(|| chain(&error), chain)
            ),
            SdkError::ResponseError(response) => format!(
                "cannot read AWS's answer (HTTP {}): {}",
                response.raw().status().as_u16(),
                chain(&error)
            ),
            SdkError::ConstructionFailure(_) => {
                format!("cannot make the request: {}", chain(&error))
            }
            _ => chain(&error),
        };
        AwsError {
            action,
            code,
            message,
            request_id,
        }
    }

    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// AWS's message, as it gave it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The endpoint a variable sends `action`'s service to, as the SDK reads them (the service's own
/// variable first), with any user part of the URL left out: a stale `AWS_ENDPOINT_URL` (a local
/// emulator's) is the usual reason AWS cannot be reached, and the message should say so.
fn endpoint_override(
    action: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    let service = if action.starts_with("tag:") {
        "AWS_ENDPOINT_URL_RESOURCE_GROUPS_TAGGING_API"
    } else {
        "AWS_ENDPOINT_URL_RDS"
    };
    [service, "AWS_ENDPOINT_URL"].into_iter().find_map(|name| {
        let url = var(name).filter(|url| !url.trim().is_empty())?;
        let url = match url.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest
                    .split_once('/')
                    .map_or((rest, None), |(authority, path)| (authority, Some(path)));
                let host = authority
                    .rsplit_once('@')
                    .map_or(authority, |(_, host)| host);
                match path {
                    Some(path) => format!("{scheme}://{host}/{path}"),
                    None => format!("{scheme}://{host}"),
                }
            }
            None => url,
        };
        Some((
            name,
            url.chars().filter(|c| !c.is_control()).take(200).collect(),
        ))
    })
}

/// An error and its sources on one line, each as it displays itself (never a debug dump).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = one_line(&error.to_string());
    let mut source = error.source();
    while let Some(cause) = source {
        let said = one_line(&cause.to_string());
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Text from AWS on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A cluster as `DescribeDBClusters` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterState {
    pub id: ClusterId,
    pub arn: String,
    pub status: String,
    pub tags: Tags,
    pub min_acu: Option<f64>,
    pub max_acu: Option<f64>,
    pub deletion_protection: bool,
    pub engine_version: Option<String>,
    pub database_name: Option<String>,
    pub endpoint: Option<String>,
    pub port: Option<u16>,
    /// Member instance ids, writer first.
    pub members: Vec<String>,
    pub created_at: Option<String>,
    /// The master user (`postgres` for express, as far as anyone has seen).
    pub master_username: Option<String>,
}

/// An instance as `DescribeDBInstances` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceState {
    pub id: String,
    pub arn: String,
    pub cluster: Option<String>,
    pub status: String,
    pub tags: Tags,
}

/// An engine version as `DescribeDBEngineVersions` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineVersionState {
    pub version: String,
    pub min_acu: Option<f64>,
    pub max_acu: Option<f64>,
}

/// The RDS and tagging clients of one region.
#[derive(Clone, Debug)]
pub struct Api {
    pub rds: aws_sdk_rds::Client,
    pub tagging: aws_sdk_resourcegroupstagging::Client,
}

fn cluster_state(cluster: &aws_sdk_rds::types::DbCluster) -> Option<ClusterState> {
    let id = cluster.db_cluster_identifier()?;
    let scaling = cluster.serverless_v2_scaling_configuration();
    let mut members: Vec<(bool, String)> = cluster
        .db_cluster_members()
        .iter()
        .filter_map(|m| {
            Some((
                !m.is_cluster_writer().unwrap_or(false),
                m.db_instance_identifier()?.to_owned(),
            ))
        })
        .collect();
    members.sort();
    Some(ClusterState {
        id: ClusterId::from_live(id),
        arn: cluster.db_cluster_arn().unwrap_or_default().to_owned(),
        status: cluster.status().unwrap_or("unknown").to_owned(),
        tags: tags_of(cluster.tag_list()),
        min_acu: scaling.and_then(|s| s.min_capacity()),
        max_acu: scaling.and_then(|s| s.max_capacity()),
        deletion_protection: cluster.deletion_protection().unwrap_or(false),
        engine_version: cluster.engine_version().map(str::to_owned),
        database_name: cluster.database_name().map(str::to_owned),
        endpoint: cluster.endpoint().map(str::to_owned),
        port: cluster.port().and_then(|p| u16::try_from(p).ok()),
        members: members.into_iter().map(|(_, id)| id).collect(),
        created_at: cluster
            .cluster_create_time()
            .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
        master_username: cluster.master_username().map(str::to_owned),
    })
}

fn tags_of(list: &[Tag]) -> Tags {
    list.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
        .collect()
}

/// The cluster id in a cluster ARN (`arn:aws:rds:REGION:ACCOUNT:cluster:ID`).
pub fn cluster_id_of_arn(arn: &str) -> Option<&str> {
    arn.rsplit_once(":cluster:").map(|(_, id)| id)
}

impl Api {
    /// The ARNs `tag:GetResources` lists for `owner`'s clusters (it may list clusters that are
    /// gone: callers confirm with a describe).
    pub async fn tagged_clusters(&self, owner: &Owner) -> Result<Vec<String>, AwsError> {
        let filter = |key: &str, value: &str| TagFilter::builder().key(key).values(value).build();
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut request = self
                .tagging
                .get_resources()
                .resource_type_filters("rds:cluster")
                .tag_filters(filter(tags::MANAGED, "true"))
                .tag_filters(filter(tags::REPO, owner.repo.as_str()))
                .tag_filters(filter(tags::PREFIX, owner.prefix.as_str()))
                .resources_per_page(BATCH as i32);
            if let Some(token) = &token {
                request = request.pagination_token(token);
            }
            let page = request
                .send()
                .await
                .map_err(|e| AwsError::of("tag:GetResources", e))?;
            arns.extend(
                page.resource_tag_mapping_list()
                    .iter()
                    .filter_map(|m| m.resource_arn().map(str::to_owned)),
            );
            token = page
                .pagination_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        arns.sort();
        arns.dedup();
        Ok(arns)
    }

    /// The clusters with these ids that exist, in batches of at most 100 ids, following `Marker`.
    pub async fn describe_clusters(
        &self,
        ids: &[ClusterId],
    ) -> Result<BTreeMap<ClusterId, ClusterState>, AwsError> {
        let mut found = BTreeMap::new();
        for batch in ids.chunks(BATCH) {
            let filter = Filter::builder()
                .name("db-cluster-id")
                .set_values(Some(batch.iter().map(|id| id.to_string()).collect()))
                .build();
            let mut marker: Option<String> = None;
            loop {
                let page = self
                    .rds
                    .describe_db_clusters()
                    .filters(filter.clone())
                    .max_records(BATCH as i32)
                    .set_marker(marker.clone())
                    .send()
                    .await;
                // A filter lists what exists and never fails for a missing id: a
                // `DBClusterNotFoundFault` here is an error, never "none of them".
                let page = page.map_err(|e| AwsError::of("rds:DescribeDBClusters", e))?;
                for cluster in page.db_clusters() {
                    if let Some(state) = cluster_state(cluster) {
                        found.insert(state.id.clone(), state);
                    }
                }
                marker = page.marker().filter(|m| !m.is_empty()).map(str::to_owned);
                if marker.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// One cluster, or `None` when it does not exist (AWS answers `DBClusterNotFoundFault` for
    /// one id: only here does that mean "none").
    pub async fn describe_cluster(&self, id: &ClusterId) -> Result<Option<ClusterState>, AwsError> {
        let answer = self
            .rds
            .describe_db_clusters()
            .db_cluster_identifier(id.as_str())
            .send()
            .await;
        match answer {
            Ok(page) => Ok(page
                .db_clusters()
                .iter()
                .filter_map(cluster_state)
                .find(|c| &c.id == id)),
            Err(e) if e.code() == Some("DBClusterNotFoundFault") => Ok(None),
            Err(e) => Err(AwsError::of("rds:DescribeDBClusters", e)),
        }
    }

    /// The instances of these clusters, in batches of at most 100 cluster ids.
    pub async fn describe_instances(
        &self,
        clusters: &[ClusterId],
    ) -> Result<Vec<InstanceState>, AwsError> {
        let mut found = Vec::new();
        for batch in clusters.chunks(BATCH) {
            let filter = Filter::builder()
                .name("db-cluster-id")
                .set_values(Some(batch.iter().map(|id| id.to_string()).collect()))
                .build();
            let mut marker: Option<String> = None;
            loop {
                let page = self
                    .rds
                    .describe_db_instances()
                    .filters(filter.clone())
                    .max_records(BATCH as i32)
                    .set_marker(marker.clone())
                    .send()
                    .await
                    .map_err(|e| AwsError::of("rds:DescribeDBInstances", e))?;
                for instance in page.db_instances() {
                    if let Some(id) = instance.db_instance_identifier() {
                        found.push(InstanceState {
                            id: id.to_owned(),
                            arn: instance.db_instance_arn().unwrap_or_default().to_owned(),
                            cluster: instance.db_cluster_identifier().map(str::to_owned),
                            status: instance
                                .db_instance_status()
                                .unwrap_or("unknown")
                                .to_owned(),
                            tags: tags_of(instance.tag_list()),
                        });
                    }
                }
                marker = page.marker().filter(|m| !m.is_empty()).map(str::to_owned);
                if marker.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The Aurora PostgreSQL versions matching `version` (`None`: the default one), with the
    /// serverless v2 range each supports (`ServerlessV2FeaturesSupport`).
    pub async fn engine_versions(
        &self,
        version: Option<&str>,
    ) -> Result<Vec<EngineVersionState>, AwsError> {
        let mut found = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .rds
                .describe_db_engine_versions()
                .engine("aurora-postgresql")
                .set_engine_version(version.map(str::to_owned))
                .set_default_only(version.is_none().then_some(true))
                .max_records(BATCH as i32)
                .set_marker(marker.clone())
                .send()
                .await
                .map_err(|e| AwsError::of("rds:DescribeDBEngineVersions", e))?;
            for v in page.db_engine_versions() {
                let support = v.serverless_v2_features_support();
                found.push(EngineVersionState {
                    version: v.engine_version().unwrap_or_default().to_owned(),
                    min_acu: support.and_then(|s| s.min_capacity()),
                    max_acu: support.and_then(|s| s.max_capacity()),
                });
            }
            marker = page.marker().filter(|m| !m.is_empty()).map(str::to_owned);
            if marker.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// The account's RDS quotas in this Region: name → (used, max).
    pub async fn account_quotas(&self) -> Result<BTreeMap<String, (i64, i64)>, AwsError> {
        let answer = self
            .rds
            .describe_account_attributes()
            .send()
            .await
            .map_err(|e| AwsError::of("rds:DescribeAccountAttributes", e))?;
        Ok(answer
            .account_quotas()
            .iter()
            .filter_map(|q| {
                Some((
                    q.account_quota_name()?.to_owned(),
                    (q.used().unwrap_or(0), q.max().unwrap_or(0)),
                ))
            })
            .collect())
    }

    /// `CreateDBCluster` with express configuration.
    pub async fn create_cluster(&self, request: &CreateRequest<'_>) -> Result<(), AwsError> {
        let mut call = self
            .rds
            .create_db_cluster()
            .db_cluster_identifier(request.id.as_str())
            .engine("aurora-postgresql")
            .with_express_configuration(true)
            .serverless_v2_scaling_configuration(
                ServerlessV2ScalingConfiguration::builder()
                    .min_capacity(request.min_acu)
                    .max_capacity(request.max_acu)
                    .build(),
            )
            .deletion_protection(request.deletion_protection)
            .set_engine_version(request.engine_version.map(str::to_owned))
            .set_database_name(request.database_name.map(str::to_owned));
        for (key, value) in request.tags {
            call = call.tags(Tag::builder().key(key).value(value).build());
        }
        call.send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::of("rds:CreateDBCluster", e))
    }

    /// `RestoreDBClusterToPointInTime` as a copy-on-write clone of `source`, at its latest
    /// restorable time, without a VPC (the internet access gateway, which needs IAM database
    /// authentication), with the spec's scaling and deletion protection and every tag on the call
    /// itself: a crash never leaves an untagged clone.
    pub async fn restore_clone(
        &self,
        request: &CreateRequest<'_>,
        source: &ClusterId,
    ) -> Result<(), AwsError> {
        let mut call = self
            .rds
            .restore_db_cluster_to_point_in_time()
            .db_cluster_identifier(request.id.as_str())
            .source_db_cluster_identifier(source.as_str())
            .restore_type("copy-on-write")
            .use_latest_restorable_time(true)
            .enable_vpc_networking(false)
            .enable_internet_access_gateway(true)
            .enable_iam_database_authentication(true)
            .serverless_v2_scaling_configuration(
                ServerlessV2ScalingConfiguration::builder()
                    .min_capacity(request.min_acu)
                    .max_capacity(request.max_acu)
                    .build(),
            )
            .deletion_protection(request.deletion_protection);
        for (key, value) in request.tags {
            call = call.tags(Tag::builder().key(key).value(value).build());
        }
        call.send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::of("rds:RestoreDBClusterToPointInTime", e))
    }

    /// `ModifyDBCluster MasterUserAuthenticationType=iam-db-auth`: a clone without a VPC logs its
    /// master user in with IAM tokens only after this (the API reference says so for restores).
    pub async fn master_user_by_iam(&self, id: &ClusterId) -> Result<(), AwsError> {
        self.rds
            .modify_db_cluster()
            .db_cluster_identifier(id.as_str())
            .master_user_authentication_type(
                aws_sdk_rds::types::MasterUserAuthenticationType::IamDbAuth,
            )
            .apply_immediately(true)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::of("rds:ModifyDBCluster", e))
    }

    /// `ModifyDBCluster`: scaling and deletion protection, applied immediately.
    pub async fn modify_cluster(
        &self,
        id: &ClusterId,
        scaling: Option<(f64, f64)>,
        deletion_protection: bool,
    ) -> Result<(), AwsError> {
        let mut call = self
            .rds
            .modify_db_cluster()
            .db_cluster_identifier(id.as_str())
            .deletion_protection(deletion_protection)
            .apply_immediately(true);
        if let Some((min, max)) = scaling {
            call = call.serverless_v2_scaling_configuration(
                ServerlessV2ScalingConfiguration::builder()
                    .min_capacity(min)
                    .max_capacity(max)
                    .build(),
            );
        }
        call.send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::of("rds:ModifyDBCluster", e))
    }

    pub async fn add_tags(&self, arn: &str, set: &Tags) -> Result<(), AwsError> {
        if set.is_empty() {
            return Ok(());
        }
        let mut call = self.rds.add_tags_to_resource().resource_name(arn);
        for (key, value) in set {
            call = call.tags(Tag::builder().key(key).value(value).build());
        }
        call.send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::of("rds:AddTagsToResource", e))
    }

    pub async fn remove_tags(&self, arn: &str, keys: &[String]) -> Result<(), AwsError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.rds
            .remove_tags_from_resource()
            .resource_name(arn)
            .set_tag_keys(Some(keys.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::of("rds:RemoveTagsFromResource", e))
    }

    /// `DeleteDBCluster` with `DeleteDBInstances=true`: every instance of the cluster, then the
    /// cluster, in one call; RDS deletes all of them or nothing. No final snapshot.
    pub async fn delete_cluster(&self, id: &ClusterId) -> Result<(), AwsError> {
        self.rds
            .delete_db_cluster()
            .db_cluster_identifier(id.as_str())
            .skip_final_snapshot(true)
            .delete_automated_backups(true)
            .customize()
            .mutate_request(with_delete_instances)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::of("rds:DeleteDBCluster", e))
    }

    /// `CreateDBInstance`: a serverless v2 writer for an Aurora PostgreSQL cluster, with `tags`
    /// (what IAM lets envctl create: its ownership tags, this engine, this class).
    pub async fn create_instance(
        &self,
        id: &str,
        cluster: &ClusterId,
        tags: &Tags,
    ) -> Result<(), AwsError> {
        let mut call = self
            .rds
            .create_db_instance()
            .db_instance_identifier(id)
            .db_cluster_identifier(cluster.as_str())
            .engine("aurora-postgresql")
            .db_instance_class("db.serverless");
        for (key, value) in tags {
            call = call.tags(Tag::builder().key(key).value(value).build());
        }
        call.send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::of("rds:CreateDBInstance", e))
    }
}

/// The parameter aws-sdk-rds 1.159 has no setter for (see the module's comment).
const DELETE_INSTANCES: &str = "DeleteDBInstances=true";

/// Adds `DeleteDBInstances=true` to a `DeleteDBCluster` request's form body, once, and sets its
/// `Content-Length` to match (the signature, made after this hook, covers the new body).
fn with_delete_instances(request: &mut HttpRequest) {
    let Some(body) = request.body().bytes() else {
        return;
    };
    let body = String::from_utf8_lossy(body);
    if body
        .split('&')
        .any(|pair| pair.starts_with("DeleteDBInstances="))
    {
        return;
    }
    let body = match body.is_empty() {
        true => DELETE_INSTANCES.to_owned(),
        false => format!("{body}&{DELETE_INSTANCES}"),
    };
    request
        .headers_mut()
        .insert("Content-Length", body.len().to_string());
    *request.body_mut() = SdkBody::from(body);
}

/// What `CreateDBCluster` sends.
pub struct CreateRequest<'a> {
    pub id: &'a ClusterId,
    pub min_acu: f64,
    pub max_acu: f64,
    pub deletion_protection: bool,
    pub engine_version: Option<&'a str>,
    pub database_name: Option<&'a str>,
    pub tags: &'a Tags,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dispatch_failure_names_the_endpoint_a_variable_sent_it_to() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            super::endpoint_override("rds:DescribeDBClusters", vars(&[])),
            None
        );
        assert_eq!(
            super::endpoint_override(
                "rds:DescribeDBClusters",
                vars(&[("AWS_ENDPOINT_URL", "http://user:secret@127.0.0.1:5000/x")])
            ),
            Some(("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/x".to_owned()))
        );
        let both: &[(&str, &str)] = &[
            ("AWS_ENDPOINT_URL", "http://a:1"),
            ("AWS_ENDPOINT_URL_RDS", "http://b:2"),
            ("AWS_ENDPOINT_URL_RESOURCE_GROUPS_TAGGING_API", " "),
        ];
        assert_eq!(
            super::endpoint_override("rds:CreateDBCluster", vars(both)),
            Some(("AWS_ENDPOINT_URL_RDS", "http://b:2".to_owned()))
        );
        assert_eq!(
            super::endpoint_override("tag:GetResources", vars(both)),
            Some(("AWS_ENDPOINT_URL", "http://a:1".to_owned()))
        );
    }

    use super::*;

    #[test]
    fn delete_instances_is_added_to_the_form_body_once() {
        let body = "Action=DeleteDBCluster&Version=2014-10-31&DBClusterIdentifier=envctl-a-12345678&SkipFinalSnapshot=true";
        let mut request = HttpRequest::new(SdkBody::from(body));
        request
            .headers_mut()
            .insert("Content-Length", body.len().to_string());
        with_delete_instances(&mut request);
        with_delete_instances(&mut request);
        let sent = std::str::from_utf8(request.body().bytes().unwrap())
            .unwrap()
            .to_owned();
        assert_eq!(sent, format!("{body}&DeleteDBInstances=true"));
        assert_eq!(
            request.headers().get("Content-Length"),
            Some(sent.len().to_string().as_str())
        );
    }

    #[test]
    fn cluster_ids_from_arns() {
        assert_eq!(
            cluster_id_of_arn("arn:aws:rds:us-east-1:123456789012:cluster:envctl-main-f053b222"),
            Some("envctl-main-f053b222")
        );
        assert_eq!(cluster_id_of_arn("arn:aws:rds:us-east-1:1:db:x"), None);
    }
}
