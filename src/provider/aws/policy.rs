//! The least-privilege IAM policy for what the AWS provider calls, for one owner (repository and
//! prefix) and the database users its specs name. Pure: the document as a JSON value.
//!
//! - Discovery (`tag:GetResources`, `rds:DescribeDBClusters`, `rds:DescribeDBInstances`) cannot
//!   be scoped by tag: `*`.
//! - Creating is allowed only for clusters named with the prefix and only when the request tags
//!   them as this owner's (`aws:RequestTag/envctl:managed`, `envctl:repo`, `envctl:prefix`); the
//!   writer instance express creates with it is scoped by name.
//! - Modifying, tagging and deleting are allowed only on clusters whose tags already say they are
//!   this owner's (`aws:ResourceTag/…`); tags may never be changed to name another owner, and the
//!   ownership tags may never be removed.
//! - `rds-db:connect` only as the users the specs name and the master user `postgres` (setup).

use serde_json::{Value, json};

use crate::model::{Owner, tags};

/// Every API action the provider calls, as IAM names them.
pub const ACTIONS: &[&str] = &[
    "tag:GetResources",
    "rds:DescribeDBClusters",
    "rds:DescribeDBInstances",
    "rds:CreateDBCluster",
    "rds:CreateDBInstance",
    "rds:AddTagsToResource",
    "rds:ModifyDBCluster",
    "rds:RemoveTagsFromResource",
    "rds:DeleteDBInstance",
    "rds:DeleteDBCluster",
    "rds-db:connect",
];

/// The policy document.
pub fn document(owner: &Owner, users: &[String]) -> Value {
    let prefix = owner.prefix.as_str();
    let repo = owner.repo.as_str();
    let clusters = format!("arn:aws:rds:*:*:cluster:{prefix}-*");
    let instances = format!("arn:aws:rds:*:*:db:{prefix}-*");
    let ownership = |kind: &str| {
        json!({
            format!("{kind}/{}", tags::MANAGED): "true",
            format!("{kind}/{}", tags::REPO): repo,
            format!("{kind}/{}", tags::PREFIX): prefix,
        })
    };
    let mut users: Vec<String> = users.to_vec();
    users.push(super::data_plane::MASTER_USER.to_owned());
    users.sort();
    users.dedup();
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DiscoverClusters",
                "Effect": "Allow",
                "Action": ["tag:GetResources", "rds:DescribeDBClusters", "rds:DescribeDBInstances"],
                "Resource": "*"
            },
            {
                "Sid": "CreateOwnTaggedClusters",
                "Effect": "Allow",
                "Action": ["rds:CreateDBCluster", "rds:AddTagsToResource"],
                "Resource": [clusters, "arn:aws:rds:*:*:cluster-pg:*", "arn:aws:rds:*:*:subgrp:*"],
                "Condition": { "StringEquals": ownership("aws:RequestTag") }
            },
            {
                "Sid": "CreateTheExpressWriter",
                "Effect": "Allow",
                "Action": ["rds:CreateDBInstance"],
                "Resource": [instances, "arn:aws:rds:*:*:pg:*", "arn:aws:rds:*:*:subgrp:*"]
            },
            {
                "Sid": "ChangeOwnClusters",
                "Effect": "Allow",
                "Action": ["rds:ModifyDBCluster", "rds:DeleteDBCluster", "rds:AddTagsToResource", "rds:RemoveTagsFromResource"],
                "Resource": clusters,
                "Condition": { "StringEquals": ownership("aws:ResourceTag") }
            },
            {
                "Sid": "NeverRetagToAnotherOwner",
                "Effect": "Deny",
                "Action": ["rds:AddTagsToResource"],
                "Resource": "*",
                "Condition": { "StringNotEqualsIfExists": ownership("aws:RequestTag") }
            },
            {
                "Sid": "NeverRemoveOwnership",
                "Effect": "Deny",
                "Action": ["rds:RemoveTagsFromResource"],
                "Resource": "*",
                "Condition": { "ForAnyValue:StringEquals": { "aws:TagKeys": [tags::MANAGED, tags::REPO, tags::PREFIX] } }
            },
            {
                "Sid": "DeleteOwnWriters",
                "Effect": "Allow",
                "Action": ["rds:DeleteDBInstance"],
                "Resource": instances
            },
            {
                "Sid": "ConnectAsTheSpecsUsers",
                "Effect": "Allow",
                "Action": ["rds-db:connect"],
                "Resource": users
                    .iter()
                    .map(|user| format!("arn:aws:rds-db:*:*:dbuser:*/{user}"))
                    .collect::<Vec<_>>()
            }
        ]
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

    #[test]
    fn allows_every_action_the_provider_calls_and_scopes_creates_by_tag() {
        let owner = Owner {
            repo: RepoName::parse("acme/shop").unwrap(),
            prefix: Prefix::parse("envctl").unwrap(),
        };
        let document = document(&owner, &["app".to_owned()]);
        let allowed = allowed_actions(&document);
        for action in ACTIONS {
            assert!(allowed.iter().any(|a| a == action), "{action} is missing");
        }
        let create = &document["Statement"][1];
        assert_eq!(
            create["Condition"]["StringEquals"]["aws:RequestTag/envctl:repo"],
            "acme/shop"
        );
        assert_eq!(
            document["Statement"][7]["Resource"],
            json!([
                "arn:aws:rds-db:*:*:dbuser:*/app",
                "arn:aws:rds-db:*:*:dbuser:*/postgres"
            ])
        );
    }
}
