//! Executes a [`Plan`] through the [`Provider`] trait, environment by environment.
//!
//! Per environment, in order: replace (delete, then create), create, wait until ready, update,
//! reset/migrate/seed (one [`db::converge`] under the advisory lock), and refresh the tags
//! (`envctl:last-applied` even when nothing else changed), or delete. Environments run in parallel
//! up to `concurrency`; one environment's failure stops only that environment. A signal stops new
//! steps from starting; the step in flight finishes. Every step is idempotent, so running apply
//! again after an interruption at any point converges.
//!
//! Policy checks (blocked actions, `--max-deletions`, confirmation) happen before this runs, in
//! `commands`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use crate::db::{self, Cancel};
use crate::model::{
    ActionKind, ClusterId, DesiredEnv, ObservedEnv, Plan, RepoName, encode_branch_tag, tags,
};
use crate::provider::{Provider, ProviderError};
use crate::report::Progress;

/// How apply runs.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub concurrency: usize,
    pub wait_timeout: Duration,
}

/// What happened to one environment.
#[derive(Clone, Debug)]
pub struct EnvOutcome {
    pub branch: String,
    pub env: String,
    pub cluster_id: ClusterId,
    /// Short descriptions of what was done, in order.
    pub done: Vec<String>,
    pub status: OutcomeStatus,
    /// Set when the environment exists afterwards (not deleted).
    pub exists: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutcomeStatus {
    Ok,
    Failed(String),
    /// Not started because a signal arrived first.
    NotStarted,
}

/// One environment's share of the plan.
struct Work<'a> {
    cluster_id: ClusterId,
    branch: String,
    env: String,
    desired: Option<&'a DesiredEnv>,
    observed: Option<&'a ObservedEnv>,
    kinds: Vec<&'a ActionKind>,
}

/// What the ledger tags say about a database: written as converged only after its migrations and
/// seeds ran (or the plan found nothing to run), so a failure in between is retried next time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerTags {
    pub schema_version: u64,
    pub ledger_digest: String,
}

impl LedgerTags {
    /// What a live environment's tags say now (`none` when it has no digest yet).
    pub fn of(observed: Option<&ObservedEnv>) -> LedgerTags {
        LedgerTags {
            schema_version: observed.and_then(|o| o.schema_version()).unwrap_or(0),
            ledger_digest: observed
                .and_then(|o| o.tag(tags::LEDGER_DIGEST))
                .unwrap_or("none")
                .to_owned(),
        }
    }

    /// A database whose ledger satisfies `desired`.
    pub fn converged(desired: &DesiredEnv, schema_version: u64) -> LedgerTags {
        LedgerTags {
            schema_version,
            ledger_digest: desired.ledger_digest(),
        }
    }
}

/// The tags envctl writes on an environment.
pub fn environment_tags(
    desired: &DesiredEnv,
    repo: &RepoName,
    base: Option<&str>,
    ledger: &LedgerTags,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = desired.cluster.tags.clone();
    out.insert(tags::MANAGED.into(), "true".into());
    out.insert(tags::REPO.into(), repo.as_str().into());
    out.insert(tags::BRANCH.into(), encode_branch_tag(&desired.branch)?);
    out.insert(tags::ENV.into(), desired.env.clone());
    out.insert(tags::SPEC_HASH.into(), desired.spec_hash.clone());
    out.insert(
        tags::SCHEMA_VERSION.into(),
        ledger.schema_version.to_string(),
    );
    out.insert(tags::LEDGER_DIGEST.into(), ledger.ledger_digest.clone());
    if let Some(base) = base {
        out.insert(tags::BASE.into(), base.into());
    }
    out.insert(
        tags::LAST_APPLIED.into(),
        humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    );
    if desired.protect {
        out.insert(tags::PROTECT.into(), "true".into());
    }
    if let Some(ttl) = desired.ttl_seconds {
        out.insert(tags::TTL.into(), ttl.to_string());
    }
    Ok(out)
}

/// What every environment's steps share.
pub struct Executor<'a, P: Provider> {
    pub provider: &'a P,
    pub repo: &'a RepoName,
    /// The `envctl:base` commit per branch, for environments that have none yet.
    pub bases: &'a BTreeMap<String, String>,
    pub options: &'a ApplyOptions,
    pub progress: &'a Progress,
    pub cancel: &'a Cancel,
}

impl<P: Provider> Executor<'_, P> {
    /// Runs the plan. `scope` holds the desired state of every branch in the plan's scope,
    /// `observed` the live environments the plan was made from.
    pub async fn apply(
        &self,
        plan: &Plan,
        scope: &BTreeMap<String, Option<DesiredEnv>>,
        observed: &[ObservedEnv],
    ) -> Vec<EnvOutcome> {
        let mut work: BTreeMap<ClusterId, Work> = BTreeMap::new();
        // Every covered, live environment in scope gets its last-applied refreshed, even with no action.
        for (branch, desired) in scope {
            if let Some(desired) = desired {
                let live = observed.iter().find(|o| o.cluster_id == desired.cluster_id);
                if live.is_some() {
                    work.insert(
                        desired.cluster_id.clone(),
                        Work {
                            cluster_id: desired.cluster_id.clone(),
                            branch: branch.clone(),
                            env: desired.env.clone(),
                            desired: Some(desired),
                            observed: live,
                            kinds: Vec::new(),
                        },
                    );
                }
            }
        }
        for action in &plan.actions {
            let entry = work
                .entry(action.cluster_id.clone())
                .or_insert_with(|| Work {
                    cluster_id: action.cluster_id.clone(),
                    branch: action.branch.clone(),
                    env: action.env.clone(),
                    desired: scope
                        .get(&action.branch)
                        .and_then(|d| d.as_ref())
                        .filter(|d| d.cluster_id == action.cluster_id),
                    observed: observed.iter().find(|o| o.cluster_id == action.cluster_id),
                    kinds: Vec::new(),
                });
            entry.kinds.push(&action.kind);
        }
        futures_util::stream::iter(work.into_values())
            .map(|work| self.run_one(work))
            .buffer_unordered(self.options.concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect()
    }

    async fn run_one(&self, work: Work<'_>) -> ((String, ClusterId), EnvOutcome) {
        let Executor {
            progress, cancel, ..
        } = self;
        let mut outcome = EnvOutcome {
            branch: work.branch.clone(),
            env: work.env.clone(),
            cluster_id: work.cluster_id.clone(),
            done: Vec::new(),
            status: OutcomeStatus::Ok,
            exists: false,
        };
        if cancel.load(Ordering::SeqCst) != 0 {
            outcome.status = OutcomeStatus::NotStarted;
            outcome.exists = work.observed.is_some();
            return ((work.branch, work.cluster_id), outcome);
        }
        let result = self.steps(&work, &mut outcome).await;
        progress.finish(&work.branch);
        if let Err(message) = result {
            outcome.status = OutcomeStatus::Failed(message);
        }
        ((work.branch, work.cluster_id), outcome)
    }

    async fn steps(&self, work: &Work<'_>, outcome: &mut EnvOutcome) -> Result<(), String> {
        let Executor {
            provider,
            repo,
            bases,
            options,
            progress,
            cancel,
        } = self;
        let say = |text: &str| progress.step(&work.branch, text);
        let provider_err = |e: ProviderError| error_chain(&e);
        let interrupted = || cancel.load(Ordering::SeqCst) != 0;

        if let Some(ActionKind::Blocked { reason }) = work
            .kinds
            .iter()
            .find(|k| matches!(k, ActionKind::Blocked { .. }))
        {
            // Nothing changes, but a spec still covers it: it was applied, so it is not idle.
            if work.desired.is_some()
                && let Some(observed) = work.observed
            {
                let mut tags = observed.tags.clone();
                tags.insert(
                    tags::LAST_APPLIED.into(),
                    humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                );
                let _ = provider.set_tags(&work.cluster_id, &tags).await;
            }
            return Err(format!("blocked: {reason}"));
        }
        let has = |name: &str| work.kinds.iter().any(|k| k.name() == name);

        if has("delete") || has("replace") {
            say(&format!("deleting {}", work.cluster_id));
            provider
                .delete(&work.cluster_id, repo)
                .await
                .map_err(provider_err)?;
            outcome.done.push("deleted".into());
            if has("delete") {
                return Ok(());
            }
        }
        let Some(desired) = work.desired else {
            return Ok(());
        };
        // Where the branch started does not change when its environment is replaced.
        let base = work
            .observed
            .and_then(|o| o.tag(tags::BASE))
            .or_else(|| bases.get(&work.branch).map(String::as_str));
        // Until its migrations and seeds ran, a database keeps the ledger tags it had.
        let before = LedgerTags::of(work.observed.filter(|_| !has("replace")));

        if has("create") || has("replace") {
            if interrupted() {
                return Err("interrupted before creating".into());
            }
            let initial = environment_tags(desired, repo, base, &LedgerTags::of(None))?;
            say(&format!("creating {}", desired.cluster_id));
            provider
                .create(desired, &initial)
                .await
                .map_err(provider_err)?;
            outcome.done.push("created".into());
        }
        let db_work = has("reset") || has("migrate") || has("seed");
        if has("create") || has("replace") || db_work {
            say("waiting until ready");
            provider
                .wait_ready(desired, options.wait_timeout)
                .await
                .map_err(provider_err)?;
        }
        outcome.exists = true;
        if has("update") {
            if interrupted() {
                return Err("interrupted before updating".into());
            }
            say("updating scaling, tags and deletion protection");
            let tags = environment_tags(desired, repo, base, &before)?;
            provider
                .update(desired, &tags)
                .await
                .map_err(provider_err)?;
            outcome.done.push("updated".into());
        }
        let ledger = if db_work {
            if interrupted() {
                return Err("interrupted before migrating".into());
            }
            if has("reset") {
                // A reset that stops half-way must not look converged (its digest may match now).
                let dirty = LedgerTags {
                    schema_version: 0,
                    ledger_digest: "none".into(),
                };
                let tags = environment_tags(desired, repo, base, &dirty)?;
                provider
                    .set_tags(&desired.cluster_id, &tags)
                    .await
                    .map_err(provider_err)?;
            }
            let connection = provider
                .connection(&desired.cluster_id, &desired.database)
                .await
                .map_err(provider_err)?;
            let mut conn = db::connect(&connection)
                .await
                .map_err(|e| error_chain(&e))?;
            let mut converged = db::Converged {
                schema_version: before.schema_version,
                ..db::Converged::default()
            };
            let result = db::converge(
                &mut conn,
                desired,
                has("reset"),
                cancel,
                |step| say(step),
                &mut converged,
            )
            .await;
            let _ = sqlx::Connection::close(conn).await;
            if converged.reset {
                outcome.done.push("reset".into());
            }
            if !converged.migrations.is_empty() {
                outcome
                    .done
                    .push(format!("migrated {}", converged.migrations.join(", ")));
            }
            if !converged.seeds.is_empty() {
                outcome
                    .done
                    .push(format!("seeded {}", converged.seeds.join(", ")));
            }
            if let Err(e) = result {
                // Say how far it got; the digest stays unconverged, so the next plan reads the ledger.
                let partial = LedgerTags {
                    schema_version: converged.schema_version,
                    ledger_digest: if has("reset") {
                        "none".into()
                    } else {
                        before.ledger_digest.clone()
                    },
                };
                if let Ok(tags) = environment_tags(desired, repo, base, &partial) {
                    let _ = provider.set_tags(&desired.cluster_id, &tags).await;
                }
                return Err(error_chain(&e));
            }
            LedgerTags::converged(desired, converged.schema_version)
        } else {
            // Nothing to run: the ledger satisfies the desired state (the plan read it, or its digest
            // matched), so the tags may say so.
            let version = desired
                .migrations
                .iter()
                .map(|m| m.version)
                .max()
                .unwrap_or(0);
            LedgerTags::converged(desired, version)
        };
        let tags = environment_tags(desired, repo, base, &ledger)?;
        provider
            .set_tags(&desired.cluster_id, &tags)
            .await
            .map_err(provider_err)?;
        if outcome.done.is_empty() {
            outcome.done.push("up to date".into());
        }
        Ok(())
    }
}

/// Renders an error with its causes on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
