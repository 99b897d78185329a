//! `diff`: the live schema of a branch's database against another branch's (the default branch's
//! by default). Connects to those two environments through the provider (as a plan reads a
//! ledger: on AWS over the IAM data plane), and to nothing else; reads both catalogs at once
//! (`db::catalog`), compares them (`plan::diff`) and prints text, JSON or Markdown.

use std::time::Duration;

use anyhow::Context;

use super::inspect::database_of;
use super::{DEFAULT_WAIT, print_stdout};
use crate::cli::{Cli, DiffArgs};
use crate::db;
use crate::model::schema::{DiffSide, Schema, SchemaDiff};
use crate::model::{Ledger, ObservedEnv};
use crate::plan::diff as schema_diff;
use crate::provider::{AnyProvider, Provider};
use crate::report::{Exit, Reporter, UserError};
use crate::settings::Settings;

/// One environment's schema, and its ledger when asked, over one connection.
pub(super) async fn read_env(
    provider: &AnyProvider,
    env: &ObservedEnv,
    with_ledger: bool,
    timeout: Duration,
) -> anyhow::Result<(Schema, Option<Ledger>)> {
    let what = || {
        format!(
            "cannot read the schema of `{}` ({})",
            env.branch().unwrap_or_default(),
            env.cluster_id
        )
    };
    let mut conn = connect_reader(provider, env, timeout)
        .await
        .with_context(what)?;
    let schema = db::catalog::read_schema(&mut conn)
        .await
        .with_context(what)?;
    let ledger = match with_ledger {
        true => Some(db::read_ledger(&mut conn).await.with_context(what)?),
        false => None,
    };
    let _ = sqlx::Connection::close(conn).await;
    Ok((schema, ledger))
}

/// A session as the first of the provider's ledger readers that the server lets in (the plan
/// role's reader on AWS before the spec's user), as a plan reads a ledger.
async fn connect_reader(
    provider: &AnyProvider,
    env: &ObservedEnv,
    timeout: Duration,
) -> anyhow::Result<sqlx::PgConnection> {
    let readers = provider
        .ledger_readers(&env.cluster_id, &database_of(env))
        .await?;
    let count = readers.len();
    for (i, connection) in readers.iter().enumerate() {
        match db::connect(connection, timeout).await {
            Ok(conn) => return Ok(conn),
            Err(e) if e.is_refused() && i + 1 < count => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("no login to read the database with")
}

/// The branch `--against` names, else the default branch.
pub(super) fn against_branch(settings: &Settings, against: Option<&str>) -> anyhow::Result<String> {
    if let Some(against) = against {
        crate::model::check_branch_name(against)
            .map_err(|why| UserError::new(format!("--against: {why}")))?;
        return Ok(against.to_owned());
    }
    settings
        .git
        .as_ref()
        .and_then(crate::settings::default_branch)
        .ok_or_else(|| {
            UserError::with_hint(
                "cannot tell the default branch to compare with",
                "pass `--against BRANCH`, or set ENVCTL_DEFAULT_BRANCH (e.g. `main`)",
            )
            .into()
        })
}

/// Both sides' live environments, or why one has none.
pub(super) fn environments<'a>(
    settings: &Settings,
    observed: &'a [ObservedEnv],
    branch: &str,
    against: &str,
) -> anyhow::Result<(&'a ObservedEnv, &'a ObservedEnv)> {
    let find = |name: &str| {
        super::reconcile::the_live_env(observed, name)?
            .ok_or_else(|| super::inspect::no_environment(settings, name))
    };
    let mine = find(branch)?;
    let theirs = find(against).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "`envctl diff` compares `{branch}` with `{against}`, which has no environment"
        ))
    })?;
    Ok((mine, theirs))
}

/// Reads both schemas at once and compares them; with `with_ledger`, also `against`'s ledger.
pub(super) async fn compare(
    provider: &AnyProvider,
    mine: &ObservedEnv,
    theirs: &ObservedEnv,
    with_ledger: bool,
) -> anyhow::Result<(SchemaDiff, Option<Ledger>)> {
    let side = |env: &ObservedEnv| DiffSide {
        branch: env.branch().unwrap_or_default(),
        cluster_id: env.cluster_id.to_string(),
    };
    let (after, before) = tokio::join!(
        read_env(provider, mine, false, DEFAULT_WAIT),
        read_env(provider, theirs, with_ledger, DEFAULT_WAIT)
    );
    let ((after, _), (before, ledger)) = (after?, before?);
    let diff = schema_diff::diff((&side(theirs), &before), (&side(mine), &after));
    Ok((diff, ledger))
}

pub async fn diff(cli: &Cli, args: &DiffArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let super::Live {
        settings,
        provider,
        observed,
    } = super::observe_live(cli, DEFAULT_WAIT, reporter).await?;
    let branch = settings.branch_or_current(args.branch.as_deref())?;
    let against = against_branch(&settings, args.against.as_deref())?;
    let (mine, theirs) = environments(&settings, &observed, &branch, &against)?;
    let (diff, _) = compare(&provider, mine, theirs, false).await?;
    let text = if args.json {
        schema_diff::json(&diff)
    } else if args.markdown {
        schema_diff::markdown(&diff)
    } else {
        schema_diff::text(&diff, reporter.stdout_color(cli.color))
    };
    print_stdout(&text)?;
    Ok(if args.detailed_exitcode && !diff.is_empty() {
        Exit::Changes
    } else {
        Exit::Success
    })
}
