//! `envctl doctor` on AWS: is this account, role and Region ready, before anything is created?
//! Read-only calls only (STS `GetCallerIdentity`, RDS describes, IAM
//! `SimulatePrincipalPolicy`), never a database connection, never a change.
//!
//! In order: credentials and whom they resolve to, the Region, RDS reachable with the DB cluster
//! quota used and left, each spec's engine version and scaling, the RDS CA bundle, and, when the
//! caller may simulate its own policy, whether it allows every call envctl makes (with the
//! request context envctl's calls carry: its ownership tags, Aurora PostgreSQL, db.serverless).

use aws_credential_types::provider::ProvideCredentials;

use super::api::Api;
use super::policy::{self, ACTIONS, Role, Scope};
use super::tls;
use crate::model::{Check, EngineSupport, Owner, READER_USER, SpecAsk};

/// Every AWS check, in order.
pub async fn checks(owner: Option<&Owner>, specs: &[SpecAsk]) -> Vec<Check> {
    let mut out = Vec::new();
    let config = match super::sdk_config().await {
        Ok(config) => config,
        Err(e) => {
            out.push(Check::failed(
                "aws configuration",
                crate::report::error_chain(e.as_ref()),
                "fix the AWS setting it names",
            ));
            out.push(Check::skipped("rds", "no AWS configuration"));
            return out;
        }
    };
    let credentials = match config.credentials_provider() {
        Some(provider) => provider
            .provide_credentials()
            .await
            .map_err(|e| e.to_string()),
        None => Err("no credentials provider is configured".to_owned()),
    };
    let region = config.region().map(|r| r.to_string());
    if let Err(why) = &credentials {
        out.push(Check::failed(
            "aws credentials",
            format!("cannot load AWS credentials: {why}"),
            "configure them as for the AWS CLI (AWS_PROFILE, AWS_ACCESS_KEY_ID, or OIDC with aws-actions/configure-aws-credentials in GitHub Actions)",
        ));
    }
    let Some(region) = region else {
        out.push(Check::failed(
            "aws region",
            "no AWS Region is configured",
            "set AWS_REGION (e.g. `eu-west-1`), or `region` in the AWS profile",
        ));
        out.push(Check::skipped("rds", "no Region"));
        return out;
    };
    if credentials.is_err() {
        out.push(Check::ok("aws region", region));
        out.push(Check::skipped("rds", "no credentials"));
        return out;
    }
    let sts = aws_sdk_sts::Client::new(&config);
    let identity = match sts.get_caller_identity().send().await {
        Ok(who) => {
            let arn = who.arn().unwrap_or_default().to_owned();
            let account = who.account().unwrap_or_default().to_owned();
            out.push(Check::ok(
                "aws credentials",
                format!("{arn} (account {account})"),
            ));
            Some((arn, account))
        }
        Err(e) => {
            out.push(Check::failed(
                "aws credentials",
                format!(
                    "STS does not accept them: {}",
                    aws_sdk_sts::error::DisplayErrorContext(&e)
                ),
                "refresh them (an expired session, a role that cannot be assumed?), or check AWS_ENDPOINT_URL",
            ));
            None
        }
    };
    out.push(Check::ok(
        "aws region",
        format!("{region} (partition {})", policy::partition_of(&region)),
    ));
    let api = Api {
        rds: aws_sdk_rds::Client::new(&config),
        tagging: aws_sdk_resourcegroupstagging::Client::new(&config),
    };
    let reachable = quota(&api, &mut out).await;
    if reachable {
        engines(&api, specs, &mut out).await;
    } else {
        out.push(Check::skipped("engine versions", "RDS is not reachable"));
    }
    out.push(bundle().await);
    match (identity, owner) {
        (Some((arn, account)), Some(owner)) => {
            let iam = aws_sdk_iam::Client::new(&config);
            let scope = Scope::new(Some(&region), Some(&account));
            out.push(permissions(&iam, &arn, owner, &scope).await);
        }
        (None, _) => out.push(Check::skipped("permissions", "the caller is unknown")),
        (_, None) => out.push(Check::skipped(
            "permissions",
            "the repository is unknown (pass --repo)",
        )),
    }
    out
}

/// RDS reachable, and the DB cluster quota used and left. Whether RDS answered.
async fn quota(api: &Api, out: &mut Vec<Check>) -> bool {
    match api.account_quotas().await {
        Ok(quotas) => {
            match quotas.get("DBClusters") {
                Some((used, max)) if used >= max => out.push(Check::failed(
                    "rds cluster quota",
                    format!("{used} of {max} DB clusters in use: none left"),
                    "destroy unused environments, or ask for more in the Service Quotas console (Amazon RDS, `DB clusters`)",
                )),
                Some((used, max)) => out.push(Check::ok(
                    "rds cluster quota",
                    format!("{used} of {max} DB clusters in use, {} left (an environment takes one)", max - used),
                )),
                None => out.push(Check::skipped(
                    "rds cluster quota",
                    "RDS did not list the DB cluster quota",
                )),
            }
            true
        }
        Err(e) => {
            out.push(Check::failed(
                "rds",
                format!("RDS is not reachable: {e}"),
                "check the Region, AWS_ENDPOINT_URL and that the role may `rds:DescribeAccountAttributes`",
            ));
            false
        }
    }
}

/// Each spec's engine version offered, and its scaling within what the version allows.
async fn engines(api: &Api, specs: &[SpecAsk], out: &mut Vec<Check>) {
    if specs.is_empty() {
        out.push(Check::skipped("engine versions", "no valid spec to check"));
        return;
    }
    let versions = specs.iter().map(|s| s.engine_version.clone()).collect();
    let support = match super::engine_support(api, &versions).await {
        Ok(support) => support,
        Err(e) => {
            out.push(Check::failed(
                "engine versions",
                format!("cannot read them: {e}"),
                "let the role `rds:DescribeDBEngineVersions`",
            ));
            return;
        }
    };
    for spec in specs {
        let name = format!("spec {}", spec.name);
        let version = match support.get(&spec.engine_version) {
            Some(EngineSupport::Offered { version, .. }) => version.clone(),
            _ => spec
                .engine_version
                .clone()
                .unwrap_or_else(|| "default".into()),
        };
        match crate::plan::scaling_unsupported(spec.scaling, &spec.engine_version, &support) {
            Some(why) => out.push(Check::failed(
                name,
                why,
                "change the spec as the message says",
            )),
            None => out.push(Check::ok(
                name,
                format!("Aurora PostgreSQL {version}, {} offered", spec.scaling),
            )),
        }
    }
}

/// The RDS CA bundle verify-full checks the server against: the user's, cached, or reachable.
async fn bundle() -> Check {
    let name = "rds ca bundle";
    let tls = match tls::from_env() {
        Ok(tls) => tls,
        Err(e) => return Check::failed(name, e.to_string(), e.hint()),
    };
    match &tls.roots {
        None => Check::skipped(
            name,
            "PGSSLMODE=require: connections are encrypted, the server is not verified",
        ),
        Some(tls::Roots::File { path, from }) => {
            Check::ok(name, format!("{} (from {from})", path.display()))
        }
        Some(tls::Roots::RdsBundle { path, url }) => match tls.check_bundle().await {
            Ok(true) => Check::ok(name, format!("cached at {}", path.display())),
            Ok(false) => Check::ok(
                name,
                format!(
                    "not cached yet; {url} answers with a bundle (fetched on first connection)"
                ),
            ),
            Err(e) => Check::failed(name, crate::report::error_chain(&e), e.hint()),
        },
    }
}

/// The request context envctl's `action` carries, for IAM's simulation of it: the ownership tags
/// on the resource and in the request, Aurora PostgreSQL on `db.serverless`; the tag keys a
/// removal names are a spec's own (the ownership keys are never removed).
fn context(owner: &Owner, action: &str) -> Vec<aws_sdk_iam::types::ContextEntry> {
    use aws_sdk_iam::types::{ContextEntry, ContextKeyTypeEnum};
    let entry = |key: String, values: Vec<String>, list: bool| {
        ContextEntry::builder()
            .context_key_name(key)
            .set_context_key_values(Some(values))
            .context_key_type(match list {
                true => ContextKeyTypeEnum::StringList,
                false => ContextKeyTypeEnum::String,
            })
            .build()
    };
    let mut entries = Vec::new();
    for (key, value) in owner.tags() {
        entries.push(entry(
            format!("aws:ResourceTag/{key}"),
            vec![value.clone()],
            false,
        ));
        entries.push(entry(format!("aws:RequestTag/{key}"), vec![value], false));
    }
    let keys = match action {
        "rds:RemoveTagsFromResource" => vec!["team".to_owned()],
        _ => owner.tags().into_keys().collect(),
    };
    entries.push(entry("aws:TagKeys".into(), keys, true));
    entries.push(entry(
        "rds:DatabaseEngine".into(),
        vec!["aurora-postgresql".into()],
        false,
    ));
    entries.push(entry(
        "rds:DatabaseClass".into(),
        vec!["db.serverless".into()],
        false,
    ));
    entries
}

/// Whether the caller's own role (or user) allows every call envctl makes, as IAM simulates
/// them. Skipped when the caller may not simulate.
async fn permissions(
    iam: &aws_sdk_iam::Client,
    caller: &str,
    owner: &Owner,
    scope: &Scope,
) -> Check {
    let name = "permissions";
    let Some(principal) = principal_arn(caller) else {
        return Check::skipped(
            name,
            format!("`{caller}` is not a role or user IAM can simulate"),
        );
    };
    let arn = |service: &str, resource: String| {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            scope.partition, scope.region, scope.account
        )
    };
    let id = format!("{}-doctor", owner.prefix.as_str());
    let mut denied: Vec<(String, Role)> = Vec::new();
    for (action, role) in ACTIONS {
        let resource = match *action {
            "rds-db:connect" => arn("rds-db", format!("dbuser:cluster-DOCTOR/{READER_USER}")),
            "rds:CreateDBInstance" | "rds:DeleteDBInstance" => {
                arn("rds", format!("db:{id}-instance-1"))
            }
            a if a.starts_with("rds:Describe") || a.starts_with("tag:") => "*".to_owned(),
            _ => arn("rds", format!("cluster:{id}")),
        };
        let answer = iam
            .simulate_principal_policy()
            .policy_source_arn(&principal)
            .action_names(*action)
            .resource_arns(resource)
            .set_context_entries(Some(context(owner, action)))
            .send()
            .await;
        let results = match answer {
            Ok(answer) => answer.evaluation_results().to_vec(),
            Err(e) => {
                let code = aws_sdk_iam::error::ProvideErrorMetadata::code(&e)
                    .unwrap_or("")
                    .to_owned();
                return match code.as_str() {
                    "AccessDenied" | "AccessDeniedException" => Check::skipped(
                        name,
                        "the caller may not `iam:SimulatePrincipalPolicy` on itself",
                    ),
                    _ => Check::skipped(
                        name,
                        format!(
                            "IAM could not simulate `{principal}`: {}",
                            aws_sdk_iam::error::DisplayErrorContext(&e)
                        ),
                    ),
                };
            }
        };
        let allowed = results.iter().all(|r| {
            r.eval_decision() == &aws_sdk_iam::types::PolicyEvaluationDecisionType::Allowed
        }) && !results.is_empty();
        if !allowed {
            denied.push(((*action).to_owned(), *role));
        }
    }
    let plan_denied: Vec<&str> = denied
        .iter()
        .filter(|(_, role)| *role == Role::Plan)
        .map(|(a, _)| a.as_str())
        .collect();
    let apply_actions = ACTIONS
        .iter()
        .filter(|(_, role)| *role == Role::Apply)
        .count();
    let apply_denied = denied
        .iter()
        .filter(|(_, role)| *role == Role::Apply)
        .count();
    if denied.is_empty() {
        Check::ok(
            name,
            format!("`{principal}` allows every call of the apply role"),
        )
    } else if plan_denied.is_empty() && apply_denied == apply_actions {
        Check::ok(
            name,
            format!(
                "`{principal}` allows the plan role's calls only (read-only: pull requests); pushes, deletes and prune need the apply role"
            ),
        )
    } else {
        let list: Vec<&str> = denied.iter().map(|(a, _)| a.as_str()).collect();
        Check::failed(
            name,
            format!("`{principal}` does not allow {}", list.join(", ")),
            "put `envctl iam-policy --role apply` (or `--role plan` for the pull-request role) on it",
        )
    }
}

/// The IAM ARN to simulate for an STS caller: `…:assumed-role/NAME/SESSION` is the role NAME
/// (IAM wants `arn:…:iam::ACCOUNT:role/NAME`; a role with a path is not found that way), a user
/// is itself.
pub fn principal_arn(caller: &str) -> Option<String> {
    let rest = caller.strip_prefix("arn:")?;
    let (partition, rest) = rest.split_once(':')?;
    let (service, rest) = rest.split_once(':')?;
    let (_region, rest) = rest.split_once(':')?;
    let (account, resource) = rest.split_once(':')?;
    match (service, resource.split('/').collect::<Vec<_>>().as_slice()) {
        ("sts", ["assumed-role", role, _session]) => {
            Some(format!("arn:{partition}:iam::{account}:role/{role}"))
        }
        ("iam", ["user", ..]) | ("iam", ["role", ..]) => Some(caller.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_map_to_what_iam_simulates() {
        assert_eq!(
            principal_arn("arn:aws:sts::123456789012:assumed-role/envctl-apply/GitHubActions"),
            Some("arn:aws:iam::123456789012:role/envctl-apply".into())
        );
        assert_eq!(
            principal_arn("arn:aws-cn:iam::123456789012:user/alice"),
            Some("arn:aws-cn:iam::123456789012:user/alice".into())
        );
        assert_eq!(principal_arn("arn:aws:iam::123456789012:root"), None);
        assert_eq!(principal_arn("nonsense"), None);
    }
}
