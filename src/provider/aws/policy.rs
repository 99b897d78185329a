//! The least-privilege IAM policies for what the AWS provider calls, for one owner (repository and
//! prefix) and the database users its specs name. Pure: each document is a JSON value.
//!
//! Two roles, so that a pull request cannot change what a push owns:
//! - [`Role::Plan`] (pull requests): discovery and describes, and `rds-db:connect` only as
//!   [`READER_USER`], a login that can read envctl's ledger and nothing else (apply makes it: see
//!   `data_plane.rs`). Nothing it allows changes anything.
//! - [`Role::Apply`] (pushes, branch deletes, prune):
//!   - creating only with this owner's ownership tags in the request (`aws:RequestTag/…`), on
//!     clusters and writer instances named with the prefix;
//!   - modifying, tagging and deleting only what already carries them (`aws:ResourceTag/…`);
//!     tagging what carries no `envctl:managed` tag only with this owner's tags (a cluster's tags
//!     at create, an untagged writer);
//!   - one Deny per ownership key, each firing only when the request sets that key to another
//!     value: `StringNotEquals` on the request tag AND `Null: false` (the key is present). IAM
//!     ANDs the keys of one operator, and a missing key makes a negated operator (and any
//!     `…IfExists`) true, so one statement for three keys would deny nothing that keeps one of
//!     them, and every tag update that names none of them. A Deny on removing any of them;
//!   - Denies on deleting the cluster or writer of an environment tagged `envctl:protect=true`,
//!     and on removing or changing that tag: protecting the default branch's database is
//!     enforced by IAM, and undoing it needs a person's credentials;
//!   - cloning (a data branch: `RestoreDBClusterToPointInTime`) only into a cluster named with
//!     the prefix, untagged (it does not exist yet) and with this owner's tags in the request, and
//!     only from this owner's environments or the clusters the specs name in `from.cluster`
//!     (read, never changed: a clone shares their storage pages copy-on-write);
//!   - `rds-db:connect` as the users the specs name, the master user and the reader.
//!
//! IAM database authentication does not support global condition keys: `rds-db:connect` cannot be
//! narrowed by tag, only by user name (README: what the grant covers). ARNs carry the Region's
//! partition (`aws`, `aws-cn`, `aws-us-gov`).

use serde_json::{Value, json};

use crate::model::{Owner, tags};

pub use crate::model::READER_USER;

/// Which of envctl's two roles a policy is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Pull-request plans: read-only.
    Plan,
    /// Pushes, branch deletes and prune: creates, changes and deletes this owner's environments.
    Apply,
}

/// Every API action the provider calls, as IAM names them, and which role needs it.
pub const ACTIONS: &[(&str, Role)] = &[
    ("tag:GetResources", Role::Plan),
    ("rds:DescribeDBClusters", Role::Plan),
    ("rds:DescribeDBInstances", Role::Plan),
    ("rds:DescribeDBEngineVersions", Role::Plan),
    ("rds:DescribeAccountAttributes", Role::Plan),
    ("rds-db:connect", Role::Plan),
    ("rds:CreateDBCluster", Role::Apply),
    ("rds:CreateDBInstance", Role::Apply),
    ("rds:RestoreDBClusterToPointInTime", Role::Apply),
    ("rds:AddTagsToResource", Role::Apply),
    ("rds:ModifyDBCluster", Role::Apply),
    ("rds:RemoveTagsFromResource", Role::Apply),
    ("rds:DeleteDBInstance", Role::Apply),
    ("rds:DeleteDBCluster", Role::Apply),
];

/// Where the policy's ARNs point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: String,
    /// A Region, or `*`.
    pub region: String,
    /// An account id, or `*`.
    pub account: String,
}

impl Scope {
    /// ARNs for `region` (its partition), or every Region of the `aws` partition.
    pub fn new(region: Option<&str>, account: Option<&str>) -> Scope {
        Scope {
            partition: region.map_or("aws", partition_of).to_owned(),
            region: region.unwrap_or("*").to_owned(),
            account: account.unwrap_or("*").to_owned(),
        }
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.partition, self.region, self.account
        )
    }
}

/// The partition of a Region: `aws-cn` for China, `aws-us-gov` for GovCloud (US), `aws-iso*` for
/// the isolated Regions, `aws` elsewhere.
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else {
        "aws"
    }
}

/// What the specs say that a policy depends on: their database users and the clusters their
/// data branches copy that envctl does not manage (`from.cluster`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecFacts {
    pub users: Vec<String>,
    pub sources: Vec<String>,
}

/// The policy document of `role`.
pub fn document(owner: &Owner, specs: &SpecFacts, role: Role, scope: &Scope) -> Value {
    let users = &specs.users;
    let mut statements = vec![discovery(owner, scope)];
    match role {
        Role::Plan => statements.push(connect(scope, "ConnectAsTheLedgerReader", &[])),
        Role::Apply => {
            statements.extend(apply_statements(owner, scope));
            statements.extend(clone_statements(owner, scope, &specs.sources));
            let mut users: Vec<String> = users.to_vec();
            users.push(super::data_plane::MASTER_USER.to_owned());
            statements.push(connect(scope, "ConnectAsTheSpecsUsers", &users));
        }
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// Read-only calls, which IAM cannot scope by tag.
fn discovery(_owner: &Owner, _scope: &Scope) -> Value {
    json!({
        "Sid": "DiscoverClusters",
        "Effect": "Allow",
        "Action": [
            "tag:GetResources",
            "rds:DescribeDBClusters",
            "rds:DescribeDBInstances",
            "rds:DescribeDBEngineVersions",
            "rds:DescribeAccountAttributes"
        ],
        "Resource": "*"
    })
}

/// `rds-db:connect` as `users` and the ledger reader (sorted, once each).
fn connect(scope: &Scope, sid: &str, users: &[String]) -> Value {
    let mut users: Vec<String> = users.to_vec();
    users.push(READER_USER.to_owned());
    users.sort();
    users.dedup();
    let resources: Vec<String> = users
        .iter()
        .map(|user| scope.arn("rds-db", &format!("dbuser:*/{user}")))
        .collect();
    json!({ "Sid": sid, "Effect": "Allow", "Action": ["rds-db:connect"], "Resource": resources })
}

/// What the apply role may create, change and delete, and the Denies that bound it.
fn apply_statements(owner: &Owner, scope: &Scope) -> Vec<Value> {
    let prefix = owner.prefix.as_str();
    let repo = owner.repo.as_str();
    let clusters = scope.arn("rds", &format!("cluster:{prefix}-*"));
    let instances = scope.arn("rds", &format!("db:{prefix}-*"));
    let any = |kind: &str| scope.arn("rds", &format!("{kind}:*"));
    let ownership = |kind: &str| {
        json!({
            format!("{kind}/{}", tags::MANAGED): "true",
            format!("{kind}/{}", tags::REPO): repo,
            format!("{kind}/{}", tags::PREFIX): prefix,
        })
    };
    let owned = ownership("aws:ResourceTag");
    let requested = ownership("aws:RequestTag");
    let untagged = json!({ format!("aws:ResourceTag/{}", tags::MANAGED): "true" });
    let mut statements = vec![
        json!({
            "Sid": "CreateOwnTaggedClusters",
            "Effect": "Allow",
            "Action": ["rds:CreateDBCluster"],
            "Resource": [clusters, any("cluster-pg"), any("og"), any("subgrp"), instances],
            "Condition": { "StringEquals": aurora(&requested, None) }
        }),
        json!({
            "Sid": "CreateOwnTaggedWriters",
            "Effect": "Allow",
            "Action": ["rds:CreateDBInstance"],
            "Resource": [instances, clusters, any("pg"), any("og"), any("subgrp")],
            "Condition": { "StringEquals": aurora(&requested, Some("db.serverless")) }
        }),
        json!({
            "Sid": "ChangeOwnClustersAndWriters",
            "Effect": "Allow",
            "Action": [
                "rds:ModifyDBCluster",
                "rds:DeleteDBCluster",
                "rds:DeleteDBInstance",
                "rds:AddTagsToResource",
                "rds:RemoveTagsFromResource"
            ],
            "Resource": [clusters, instances],
            "Condition": { "StringEquals": owned }
        }),
        json!({
            "Sid": "TagWhatCarriesNoOwnerYet",
            "Effect": "Allow",
            "Action": ["rds:AddTagsToResource"],
            "Resource": [clusters, instances],
            "Condition": { "StringEquals": requested, "Null": untagged }
        }),
    ];
    // One Deny per key: it fires only when the request sets that key to another value.
    for (key, value) in [
        (tags::MANAGED, "true"),
        (tags::REPO, repo),
        (tags::PREFIX, prefix),
    ] {
        let sid = match key {
            tags::MANAGED => "NeverRetagManaged",
            tags::REPO => "NeverRetagToAnotherRepository",
            _ => "NeverRetagToAnotherPrefix",
        };
        let tag = format!("aws:RequestTag/{key}");
        statements.push(json!({
            "Sid": sid,
            "Effect": "Deny",
            "Action": ["rds:AddTagsToResource"],
            "Resource": "*",
            "Condition": {
                "StringNotEquals": { tag.clone(): value },
                "Null": { tag: "false" }
            }
        }));
    }
    let protected = json!({ format!("aws:ResourceTag/{}", tags::PROTECT): "true" });
    statements.extend([
        json!({
            "Sid": "NeverRemoveOwnership",
            "Effect": "Deny",
            "Action": ["rds:RemoveTagsFromResource"],
            "Resource": "*",
            "Condition": { "ForAnyValue:StringEquals": { "aws:TagKeys": [tags::MANAGED, tags::REPO, tags::PREFIX] } }
        }),
        json!({
            "Sid": "NeverDeleteProtected",
            "Effect": "Deny",
            "Action": ["rds:DeleteDBCluster", "rds:DeleteDBInstance"],
            "Resource": "*",
            "Condition": { "StringEquals": protected }
        }),
        json!({
            "Sid": "NeverUnprotect",
            "Effect": "Deny",
            "Action": ["rds:AddTagsToResource"],
            "Resource": "*",
            "Condition": {
                "StringEquals": protected,
                "StringNotEquals": { format!("aws:RequestTag/{}", tags::PROTECT): "true" },
                "Null": { format!("aws:RequestTag/{}", tags::PROTECT): "false" }
            }
        }),
        json!({
            "Sid": "NeverRemoveProtection",
            "Effect": "Deny",
            "Action": ["rds:RemoveTagsFromResource"],
            "Resource": "*",
            "Condition": {
                "StringEquals": protected,
                "ForAnyValue:StringEquals": { "aws:TagKeys": [tags::PROTECT] }
            }
        }),
    ]);
    statements
}

/// Cloning: the new cluster by its name, its absent `envctl:managed` tag and the request's tags;
/// the source by its own tags (this owner's environment) or by its ARN (a `from.cluster`).
fn clone_statements(owner: &Owner, scope: &Scope, sources: &[String]) -> Vec<Value> {
    let prefix = owner.prefix.as_str();
    let clusters = scope.arn("rds", &format!("cluster:{prefix}-*"));
    let any = |kind: &str| scope.arn("rds", &format!("{kind}:*"));
    let tagged = |kind: &str| {
        json!({
            format!("{kind}/{}", tags::MANAGED): "true",
            format!("{kind}/{}", tags::REPO): owner.repo.as_str(),
            format!("{kind}/{}", tags::PREFIX): prefix,
        })
    };
    let untagged = json!({ format!("aws:ResourceTag/{}", tags::MANAGED): "true" });
    let mut statements = vec![
        json!({
            "Sid": "CloneIntoOwnTaggedClusters",
            "Effect": "Allow",
            "Action": ["rds:RestoreDBClusterToPointInTime"],
            "Resource": [clusters, any("cluster-pg"), any("og"), any("subgrp")],
            "Condition": { "StringEquals": tagged("aws:RequestTag"), "Null": untagged }
        }),
        json!({
            "Sid": "CloneFromOwnEnvironments",
            "Effect": "Allow",
            "Action": ["rds:RestoreDBClusterToPointInTime"],
            "Resource": [clusters],
            "Condition": { "StringEquals": tagged("aws:ResourceTag") }
        }),
    ];
    let mut named: Vec<String> = sources
        .iter()
        .map(|id| scope.arn("rds", &format!("cluster:{id}")))
        .collect();
    named.sort();
    named.dedup();
    if !named.is_empty() {
        statements.push(json!({
            "Sid": "CloneFromNamedSources",
            "Effect": "Allow",
            "Action": ["rds:RestoreDBClusterToPointInTime"],
            "Resource": named
        }));
    }
    statements
}

/// `conditions` and: the engine is Aurora PostgreSQL (an instance of it exists only in a cluster,
/// so no standalone instance can be made), of `class` where given.
fn aurora(conditions: &Value, class: Option<&str>) -> Value {
    let mut all = conditions.clone();
    all["rds:DatabaseEngine"] = json!("aurora-postgresql");
    if let Some(class) = class {
        all["rds:DatabaseClass"] = json!(class);
    }
    all
}

/// The trust policy of `role` for GitHub Actions' OIDC provider in `account`: the plan role is
/// assumed only by `pull_request` runs of the repository, the apply role only by runs on one of
/// its branches (pushes, and the branch-delete and scheduled runs, which run on the default
/// branch); both only with the audience `sts.amazonaws.com`. `repo` is spelled as GitHub spells
/// it: the `sub` claim keeps its case, and IAM compares strings case-sensitively.
pub fn trust_document(repo: &str, role: Role, scope: &Scope) -> Value {
    let provider = format!(
        "arn:{}:iam::{}:oidc-provider/token.actions.githubusercontent.com",
        scope.partition,
        if scope.account == "*" {
            "ACCOUNT_ID"
        } else {
            &scope.account
        }
    );
    const AUDIENCE: &str = "token.actions.githubusercontent.com:aud";
    const SUBJECT: &str = "token.actions.githubusercontent.com:sub";
    // One key per operator and key: two `StringEquals` objects would be one JSON key, and the
    // second would replace the first (the plan role lost its audience that way).
    let condition = match role {
        Role::Plan => json!({
            "StringEquals": {
                (AUDIENCE): "sts.amazonaws.com",
                (SUBJECT): format!("repo:{repo}:pull_request"),
            }
        }),
        Role::Apply => json!({
            "StringEquals": { (AUDIENCE): "sts.amazonaws.com" },
            "StringLike": { (SUBJECT): format!("repo:{repo}:ref:refs/heads/*") },
        }),
    };
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "GitHubActions",
            "Effect": "Allow",
            "Principal": { "Federated": provider },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": condition
        }]
    })
}

/// Every action the document allows.
pub fn allowed_actions(document: &Value) -> Vec<String> {
    let mut actions: Vec<String> = document["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    actions.sort();
    actions.dedup();
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Prefix, RepoName};

    fn owner() -> Owner {
        Owner {
            repo: RepoName::parse("acme/shop").unwrap(),
            prefix: Prefix::parse("envctl").unwrap(),
        }
    }

    #[test]
    fn each_role_allows_the_actions_it_needs_and_the_plan_role_no_more() {
        let scope = Scope::new(None, None);
        let specs = SpecFacts {
            users: vec!["app".to_owned()],
            sources: vec![],
        };
        let apply = allowed_actions(&document(&owner(), &specs, Role::Apply, &scope));
        let plan = allowed_actions(&document(
            &owner(),
            &SpecFacts::default(),
            Role::Plan,
            &scope,
        ));
        for (action, role) in ACTIONS {
            assert!(apply.iter().any(|a| a == action), "{action} is missing");
            assert_eq!(
                plan.iter().any(|a| a == action),
                *role == Role::Plan,
                "{action} in the plan role"
            );
        }
    }

    #[test]
    fn arns_carry_the_regions_partition() {
        for (region, partition) in [
            ("eu-west-1", "aws"),
            ("cn-north-1", "aws-cn"),
            ("us-gov-west-1", "aws-us-gov"),
        ] {
            let scope = Scope::new(Some(region), Some("123456789012"));
            let text = document(&owner(), &SpecFacts::default(), Role::Apply, &scope).to_string();
            assert!(
                text.contains(&format!(
                    "arn:{partition}:rds:{region}:123456789012:cluster:envctl-*"
                )),
                "{text}"
            );
            assert!(!text.contains("arn:aws:") || partition == "aws", "{text}");
            let trust = trust_document("Acme/Shop", Role::Plan, &scope).to_string();
            assert!(trust.contains(&format!("arn:{partition}:iam::123456789012:oidc-provider/")));
        }
    }
}
