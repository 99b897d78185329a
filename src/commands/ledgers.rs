//! What a plan reads from the databases before planning: the ledgers of the environments whose
//! digest says they may not be converged, and for each data branch its source: where it is,
//! whether it can be copied now, and the ledger a copy would carry.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::db;
use crate::model::{
    ClusterId, ColumnPath, DatabaseSettings, DesiredEnv, Ledger, LedgerFailure, LedgerRead,
    LedgerTags, ObservedEnv, SourceFacts, SourceRef, Wanted, tags,
};
use crate::plan::{self as planner};
use crate::provider::Provider;
use crate::report::{Reporter, error_chain};
use crate::settings::Scope;

/// Reads the ledger of every live environment in scope whose digest differs from the desired one.
/// One that cannot be read blocks its environment only.
pub async fn read_needed<P: Provider>(
    provider: &P,
    scope: &Scope,
    observed: &mut [ObservedEnv],
    timeout: Duration,
    reporter: &Reporter,
) {
    for o in observed.iter_mut() {
        let Some(branch) = o.branch() else { continue };
        let Some(desired) = scope.desired.get(&branch).and_then(Wanted::desired) else {
            continue;
        };
        if desired.cluster_id != o.cluster_id || !planner::needs_ledger(desired, o) {
            continue;
        }
        if planner::unfinished_copy(desired, o).is_some() {
            // Planned from its source's ledger (see `sources`): it may have no database yet.
            continue;
        }
        reporter.detail(&format!(
            "reading the ledger of `{}`: its ledger digest differs from the desired one",
            o.cluster_id
        ));
        // A database that was never converged and is not made yet has applied nothing (a create
        // cut off before its database was made).
        let never_converged =
            o.tag(tags::LEDGER_DIGEST) == Some(LedgerTags::unknown().ledger_digest.as_str());
        o.ledger = read(
            provider,
            &o.cluster_id,
            &desired.database,
            never_converged,
            timeout,
            reporter,
        )
        .await;
    }
}

/// One environment's ledger, through each login the provider offers until one may read it.
async fn read<P: Provider>(
    provider: &P,
    id: &ClusterId,
    database: &DatabaseSettings,
    never_converged: bool,
    timeout: Duration,
    reporter: &Reporter,
) -> LedgerRead {
    read_with_columns(
        provider,
        id,
        database,
        never_converged,
        &[],
        timeout,
        reporter,
    )
    .await
    .0
}

/// [`read`], and which of `columns` the database has, read in the same session (`None`: none
/// asked, or they could not be read).
async fn read_with_columns<P: Provider>(
    provider: &P,
    id: &ClusterId,
    database: &DatabaseSettings,
    never_converged: bool,
    columns: &[ColumnPath],
    timeout: Duration,
    reporter: &Reporter,
) -> (LedgerRead, Option<BTreeSet<ColumnPath>>) {
    let unreachable = |e: &(dyn std::error::Error + 'static)| LedgerRead::Failed {
        kind: LedgerFailure::Unreachable,
        why: error_chain(e),
    };
    let readers = match provider.ledger_readers(id, database).await {
        Ok(readers) => readers,
        Err(e) => return (unreachable(&e), None),
    };
    let count = readers.len();
    for (i, connection) in readers.iter().enumerate() {
        // A login refused (or a ledger it may not read) leaves the next one to try.
        let last = i + 1 == count;
        let mut conn = match db::connect(connection, timeout).await {
            Ok(conn) => conn,
            Err(e) if never_converged && e.is_missing_database() => {
                return (LedgerRead::Read(Ledger::default()), None);
            }
            Err(e) if e.is_refused() && !last => continue,
            Err(e) => return (unreachable(&e), None),
        };
        let ledger = db::read_ledger(&mut conn).await;
        let present = match (&ledger, columns.is_empty()) {
            (Ok(_), false) => match db::present_columns(&mut conn, columns).await {
                Ok(present) => Some(present),
                Err(e) => {
                    // Not checked, then: the copy's masking says so if a column is missing.
                    reporter.detail(&format!(
                        "cannot read which columns `{id}` has: {}",
                        error_chain(&e)
                    ));
                    None
                }
            },
            _ => None,
        };
        let _ = sqlx::Connection::close(conn).await;
        let read = match ledger {
            Ok(ledger) => {
                reporter.detail(&format!(
                    "read the ledger of `{id}` as `{}`",
                    connection.user
                ));
                LedgerRead::Read(ledger)
            }
            Err(e) if e.is_refused() && !last => continue,
            Err(e) => LedgerRead::Failed {
                kind: LedgerFailure::Unreadable,
                why: error_chain(&e),
            },
        };
        return (read, present);
    }
    let none = LedgerRead::Failed {
        kind: LedgerFailure::Unreachable,
        why: "no login to read the ledger with".into(),
    };
    (none, None)
}

/// The sources of the data branches in scope that have no environment yet or whose ledger is
/// read (a reset may copy again), each looked at once: its cluster, whether it can be copied
/// now, and its ledger.
pub async fn sources<P: Provider>(
    provider: &P,
    scope: &Scope,
    observed: &[ObservedEnv],
    default_branch: Option<&str>,
    reset: bool,
    timeout: Duration,
    reporter: &Reporter,
) -> BTreeMap<SourceRef, SourceFacts> {
    // Every column the masking rules of the branches copying a source name, by source: which of
    // them it has is read with its ledger.
    let mut columns: BTreeMap<SourceRef, BTreeSet<ColumnPath>> = BTreeMap::new();
    for desired in scope.desired.values().filter_map(Wanted::desired) {
        if let Some(data) = &desired.data
            && let Ok(source) = planner::resolve_source(data, default_branch)
        {
            let named = data.rules.iter().map(|r| r.column.clone());
            columns.entry(source).or_default().extend(named);
        }
    }
    let mut found = BTreeMap::new();
    for desired in scope.desired.values().filter_map(Wanted::desired) {
        let Some(data) = &desired.data else { continue };
        let live = observed.iter().find(|o| o.cluster_id == desired.cluster_id);
        if live.is_some_and(|o| !planner::needs_ledger(desired, o)) && !reset {
            // Converged, or a replace (which a data branch does not do): no copy in sight.
            continue;
        }
        let Ok(source) = planner::resolve_source(data, default_branch) else {
            continue;
        };
        if found.contains_key(&source) || source == SourceRef::Branch(desired.branch.clone()) {
            continue;
        }
        let asked: Vec<ColumnPath> = columns
            .get(&source)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        let facts = look_at(
            provider, &source, desired, observed, &asked, timeout, reporter,
        )
        .await;
        found.insert(source, facts);
    }
    found
}

/// One source: a branch's environment (from what was observed), or a cluster envctl does not
/// manage (asked of the provider, read only).
async fn look_at<P: Provider>(
    provider: &P,
    source: &SourceRef,
    desired: &DesiredEnv,
    observed: &[ObservedEnv],
    columns: &[ColumnPath],
    timeout: Duration,
    reporter: &Reporter,
) -> SourceFacts {
    let mut engine_version = None;
    let (cluster_id, database, problem) = match source {
        SourceRef::Branch(branch) => {
            // Its one environment (of several, none is chosen: `the_live_env`).
            let unusable = |problem: String| SourceFacts {
                cluster_id: ClusterId::from_live(String::new()),
                problem: Some(problem),
                ledger: LedgerRead::NotRead,
                database_user: None,
                database_name: None,
                engine_version: None,
                columns: None,
            };
            let env = match super::reconcile::the_live_env(observed, branch) {
                Ok(Some(env)) => env,
                Ok(None) => {
                    return unusable(format!(
                        "branch `{branch}` has no environment to copy (apply it first)"
                    ));
                }
                Err(several) => return unusable(several.to_string()),
            };
            let database = DatabaseSettings {
                name: env
                    .database_name
                    .clone()
                    .unwrap_or_else(|| desired.database.name.clone()),
                user: env
                    .database_user
                    .clone()
                    .unwrap_or_else(|| desired.database.user.clone()),
            };
            let problem = source_problem(env);
            engine_version = env.engine_version.clone();
            (env.cluster_id.clone(), database, problem)
        }
        SourceRef::Cluster(id) => {
            let id = ClusterId::from_live(id.clone());
            let problem = match provider.source_status(&id).await {
                Ok(None) => Some(format!("cluster `{id}` does not exist")),
                Ok(Some(found)) if found.masking_pending => Some(format!(
                    "cluster `{id}` is a copy envctl made whose masking has not committed: its \
                     data is its own source's, unmasked (apply the branch it belongs to first)"
                )),
                Ok(Some(found)) if found.status == "available" => {
                    master_user_problem(&id, found.master_user.as_deref(), desired)
                }
                Ok(Some(found)) => Some(format!(
                    "cluster `{id}` is `{}`; a copy can be made of an available cluster only{}",
                    found.status,
                    found
                        .hint
                        .map(|hint| format!("; {hint}"))
                        .unwrap_or_default()
                )),
                Err(e) => Some(format!(
                    "cluster `{id}` cannot be looked at: {}",
                    error_chain(&e)
                )),
            };
            (id, desired.database.clone(), problem)
        }
        SourceRef::DefaultBranch => {
            let problem = "the default branch cannot be told".to_owned();
            (
                ClusterId::from_live(String::new()),
                desired.database.clone(),
                Some(problem),
            )
        }
    };
    let (ledger, present) = match problem {
        Some(_) => (LedgerRead::NotRead, None),
        None => {
            read_with_columns(
                provider,
                &cluster_id,
                &database,
                false,
                columns,
                timeout,
                reporter,
            )
            .await
        }
    };
    let (database_user, database_name) = match source {
        SourceRef::Branch(_) => (Some(database.user), Some(database.name)),
        _ => (None, None),
    };
    SourceFacts {
        cluster_id,
        problem,
        ledger,
        database_user,
        database_name,
        engine_version,
        columns: present,
    }
}

/// Why a `from.cluster` source cannot be copied as the spec says: its master user, which the
/// copy keeps and masking logs in as (with a token only a policy that grants that login
/// allows), is not the one the spec names (`from.masterUser`, default `postgres`).
fn master_user_problem(
    id: &ClusterId,
    found: Option<&str>,
    desired: &crate::model::DesiredEnv,
) -> Option<String> {
    let said = desired
        .data
        .as_ref()
        .and_then(|d| d.master_user.as_deref())
        .unwrap_or(crate::provider::aws::data_plane::MASTER_USER);
    let found = found?;
    (found != said).then(|| {
        format!(
            "cluster `{id}`'s master user is `{found}`, not `{said}`: its copy keeps it, and masking logs in as it; set `from.masterUser: {found}` in the spec, then update the apply role's policy (`envctl iam-policy` grants that login)"
        )
    })
}

/// Why a branch's environment cannot be copied now, if it cannot.
fn source_problem(env: &ObservedEnv) -> Option<String> {
    let id = &env.cluster_id;
    if env.status != "available" {
        let hint = env
            .status_hint
            .as_ref()
            .map(|hint| format!("; {hint}"))
            .unwrap_or_default();
        return Some(format!(
            "its environment `{id}` is `{}`; a copy can be made of an available one only{hint}",
            env.status
        ));
    }
    if env.masking_pending() {
        return Some(format!(
            "its environment `{id}` is itself a copy whose masking has not committed (apply its branch first)"
        ));
    }
    None
}
