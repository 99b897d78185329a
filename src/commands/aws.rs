//! `token` and `iam-policy`: the AWS side a user needs besides environments. `token` prints what
//! `aws rds generate-db-auth-token` prints; `iam-policy` the least-privilege policy for this
//! repository, prefix and the specs' database users.

use std::time::SystemTime;

use aws_credential_types::provider::ProvideCredentials;

use super::{DEFAULT_WAIT, open_provider, print_stdout};
use crate::cli::{Cli, IamPolicyArgs, RoleKind, TokenArgs};
use crate::provider::Provider;
use crate::provider::aws::{policy, sdk_config, token};
use crate::report::{Exit, Reporter, UserError};
use crate::settings::Settings;
use crate::spec;

pub async fn token(cli: &Cli, args: &TokenArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    if let Some(branch) = &args.branch {
        if !cli.provider.signs_iam_tokens() {
            return Err(UserError::with_hint(
                "`envctl token --branch` needs the aws provider: the local provider's databases take passwords, not IAM tokens",
                "pass `--provider aws` (or set ENVCTL_PROVIDER=aws); `envctl url` prints a local URL",
            )
            .into());
        }
        let settings = Settings::resolve(cli)?;
        let branch = settings.branch_or_current(Some(branch))?;
        let provider = open_provider(cli, &settings, DEFAULT_WAIT, reporter).await?;
        let observed = super::observe(&provider, &settings).await?;
        let env = super::inspect::env_to_connect(&settings, &observed, &branch)?.env;
        let user = env.database_user.as_deref().unwrap_or("postgres");
        let token = provider.auth_token(&env.cluster_id, user).await?;
        super::mask_in_actions(&[&token])?;
        print_stdout(&format!("{token}\n"))?;
        return Ok(Exit::Success);
    }
    let (Some(hostname), Some(username)) = (&args.hostname, &args.username) else {
        return Err(UserError::with_hint(
            "`envctl token` needs `--hostname` and `--username`, or `--branch`",
            "e.g. `envctl token --hostname H --port 5432 --username postgres --region us-east-1`",
        )
        .into());
    };
    let config = sdk_config()
        .await
        .map_err(|e| UserError::new(e.to_string()))?;
    let region = match (&args.region, config.region()) {
        (Some(region), _) => region.clone(),
        (None, Some(region)) => region.to_string(),
        (None, None) => {
            return Err(UserError::with_hint(
                "no AWS region: pass `--region` or set AWS_REGION",
                "e.g. `--region us-east-1`",
            )
            .into());
        }
    };
    let Some(credentials) = config.credentials_provider() else {
        return Err(UserError::new("no AWS credentials provider is configured").into());
    };
    let credentials = credentials.provide_credentials().await.map_err(|e| {
        anyhow::Error::new(e).context(UserError::with_hint(
            "cannot load AWS credentials",
            "configure them as for the AWS CLI (AWS_PROFILE, AWS_ACCESS_KEY_ID, OIDC in GitHub Actions)",
        ))
    })?;
    let token = token::generate_auth_token(
        &credentials,
        &region,
        hostname,
        args.port,
        username,
        SystemTime::now(),
    )
    .map_err(|e| UserError::new(e.to_string()))?;
    super::mask_in_actions(&[&token])?;
    print_stdout(&format!("{token}\n"))?;
    Ok(Exit::Success)
}

pub fn iam_policy(cli: &Cli, args: &IamPolicyArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let settings = Settings::resolve(cli)?;
    let files = settings.working_tree_files()?;
    let catalog = match spec::load(&files) {
        Ok(catalog) => catalog,
        Err(diagnostics) => {
            reporter.diagnostics(&diagnostics, false);
            return Ok(Exit::Failed);
        }
    };
    let specs = policy::SpecFacts {
        // The specs' users, and the master users of the clusters they copy (a copy keeps its
        // source's, and masking logs in as it).
        users: catalog
            .specs
            .iter()
            .map(|s| s.database.user.clone())
            .chain(
                catalog
                    .specs
                    .iter()
                    .filter_map(|s| s.data.as_ref()?.master_user.clone()),
            )
            .collect(),
        sources: catalog
            .specs
            .iter()
            .filter_map(|s| match &s.data.as_ref()?.from {
                crate::model::SourceRef::Cluster(id) => Some(id.clone()),
                _ => None,
            })
            .collect(),
    };
    let role = match args.role {
        RoleKind::Plan => policy::Role::Plan,
        RoleKind::Apply => policy::Role::Apply,
    };
    let scope = policy::Scope::new(args.region.as_deref(), args.account.as_deref());
    let owner = settings.owner();
    let document = match args.trust {
        true => policy::trust_document(&settings.repo_spelled, role, &scope),
        false => policy::document(&owner, &specs, role, &scope),
    };
    let text = if args.json {
        serde_json::to_string(&document).expect("json")
    } else {
        serde_json::to_string_pretty(&document).expect("json")
    };
    print_stdout(&format!("{text}\n"))?;
    let name = match args.role {
        RoleKind::Plan => "envctl-plan",
        RoleKind::Apply => "envctl-apply",
    };
    let how = match args.trust {
        true => format!(
            "create the role with it: `aws iam create-role --role-name {name} --assume-role-policy-document file://trust.json`"
        ),
        false => format!(
            "put it on the role with `aws iam put-role-policy --role-name {name} --policy-name envctl --policy-document file://policy.json` (again whenever a spec adds a `database.user`)"
        ),
    };
    reporter.note(&format!(
        "note: the {} {} for {} under prefix `{}`; {how}",
        match args.role {
            RoleKind::Plan => "plan role's",
            RoleKind::Apply => "apply role's",
        },
        if args.trust { "trust policy" } else { "policy" },
        settings.repo,
        settings.prefix.as_str()
    ));
    Ok(Exit::Success)
}
