//! Executes a [`Plan`] through the [`Provider`] trait, environment by environment.
//!
//! Per environment, in order:
//! 1. delete (or the delete half of a replace);
//! 2. create, copy a data branch's source (tagged `envctl:masked=pending`), or repair what
//!    serves a live environment's database (AWS: its writer);
//! 3. wait until ready;
//! 4. mask a copy (also one a cut-off apply left pending) before anything else runs;
//! 5. update scaling and deletion protection;
//! 6. bring a live environment's tags up to date, by difference (tags someone else put there
//!    stay), with `envctl:last-applied` (an environment with nothing to do gets that alone); a new
//!    one was created with them and skips this write. `envctl:masked=done` goes with the next tag
//!    write after masking: this one, or step 7's, or alone (best effort) if no session is had;
//! 7. when the database needs it, one locked session ([`db::lock`]): reset, migrate, seed, and
//!    write the ledger tags from the ledger as it is now, before the lock is released.
//!
//! Environments run in parallel up to `concurrency`; one environment's failure
//! ([`ApplyError`]) stops only that environment. A signal stops new steps from starting; the
//! step in flight finishes. Every step is idempotent, so running apply again after an
//! interruption at any point converges.
//!
//! Policy checks (blocked actions, `--max-deletions`, confirmation) happen before this runs, in
//! `commands`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use crate::cancel::Cancel;
use crate::db;
use crate::model::{
    ActionKind, CloneSource, ClusterId, DesiredEnv, EnvOutcome, Failure, Field, LedgerTags,
    ObservedEnv, OutcomeStatus, Owner, Plan, TagUpdate, Tags, Wanted, tag_update, tags,
};
use crate::provider::{Created, DeleteOptions, Provider, ProviderError};
use crate::report::Progress;

/// How apply runs.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub concurrency: usize,
    /// Bounds every wait: readiness, connecting, the advisory lock, deletes.
    pub wait_timeout: Duration,
    /// Delete protected environments too (`destroy --force`).
    pub force_delete: bool,
}

/// Why one environment's apply stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The plan blocks this environment: nothing was changed.
    #[error("blocked: {0}")]
    Blocked(String),
    /// A signal came before this step; the steps before it are done.
    #[error("interrupted before {0}")]
    Interrupted(&'static str),
    /// A provider operation failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Migrating, seeding or reading the ledger failed.
    #[error(transparent)]
    Db(Box<db::DbError>),
    /// A tag value cannot be written (a branch name too long for its tag).
    #[error("{0}")]
    Tags(String),
}

impl From<db::DbError> for ApplyError {
    fn from(e: db::DbError) -> ApplyError {
        ApplyError::Db(Box::new(e))
    }
}

/// What one environment's actions ask for, gathered from the plan: every action kind maps to a
/// step, so adding a kind does not compile until apply knows what to do with it.
#[derive(Clone, Debug, Default)]
struct Steps {
    blocked: Option<String>,
    delete: bool,
    replace: bool,
    create: bool,
    repair: bool,
    /// The fields an update changes (empty: no update).
    update: Vec<Field>,
    reset: bool,
    migrate: bool,
    seed: bool,
    /// A data branch's copy to make: a new environment, or again after deleting this one
    /// (`reclone`: a reset by copying the source again).
    copy: Option<CloneSource>,
    reclone: bool,
}

impl Steps {
    fn add(&mut self, kind: &ActionKind) {
        match kind {
            ActionKind::Blocked { reason, .. } => self.blocked = Some(reason.clone()),
            ActionKind::Delete { .. } => self.delete = true,
            ActionKind::Replace { .. } => self.replace = true,
            ActionKind::Create { .. } => self.create = true,
            ActionKind::Clone { source, .. } => self.copy = Some(source.clone()),
            ActionKind::Reset {
                reclone: Some(source),
                ..
            } => {
                self.copy = Some(source.clone());
                self.reclone = true;
            }
            ActionKind::Repair { .. } => self.repair = true,
            ActionKind::Update { changes } => {
                // Masking is its own step (see `mask`).
                self.update = changes
                    .iter()
                    .map(|c| c.field)
                    .filter(|f| *f != Field::Masking)
                    .collect();
            }
            ActionKind::Reset { .. } => self.reset = true,
            ActionKind::Migrate { .. } => self.migrate = true,
            ActionKind::Seed { .. } => self.seed = true,
        }
    }

    /// A new database: created now, replaced, or copied.
    fn fresh(&self) -> bool {
        self.create || self.replace || self.copy.is_some()
    }
}

/// One environment's share of the plan.
struct Work<'a> {
    cluster_id: ClusterId,
    branch: String,
    env: String,
    desired: Option<&'a DesiredEnv>,
    observed: Option<&'a ObservedEnv>,
    steps: Steps,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The tags a new environment is created with: the spec's, where the branch started, and a
/// ledger state that no plan takes as converged until migrations and seeds ran.
pub fn initial_tags(
    desired: &DesiredEnv,
    owner: &Owner,
    base: Option<&str>,
) -> Result<Tags, String> {
    let mut out = desired.spec_tags(owner)?;
    out.extend(LedgerTags::unknown().to_tags());
    if let Some(base) = base {
        out.insert(tags::BASE.into(), base.into());
    }
    out.insert(tags::LAST_APPLIED.into(), now_rfc3339());
    Ok(out)
}

/// The tags a locked session writes when it is done: what the ledger says, and that it was applied
/// now.
pub fn state_update(state: LedgerTags) -> TagUpdate {
    let mut update = TagUpdate {
        set: state.to_tags(),
        ..TagUpdate::default()
    };
    update.set.insert(tags::LAST_APPLIED.into(), now_rfc3339());
    update
}

/// Whether `envctl:commit` fits beside a resource's other tags, `keys` (as they will be): AWS
/// allows 50, and every other tag of envctl's may come ([`tags::BEST_EFFORT`]).
fn commit_fits<'a>(keys: impl Iterator<Item = &'a String>) -> bool {
    let foreign = keys
        .filter(|k| !k.starts_with(tags::RESERVED_PREFIX))
        .count();
    foreign + tags::ALL.len() <= tags::AWS_TAG_LIMIT
}

/// What every environment's steps share.
pub struct Executor<'a, P: Provider> {
    pub provider: &'a P,
    pub owner: &'a Owner,
    /// The `envctl:base` commit to record per branch (otherwise an environment keeps its own).
    pub bases: &'a BTreeMap<String, String>,
    /// The `envctl:commit` to record per branch (none: the environment keeps its own).
    pub commits: &'a BTreeMap<String, String>,
    pub options: &'a ApplyOptions,
    pub progress: &'a Progress,
    pub cancel: &'a Cancel,
}

impl<P: Provider> Executor<'_, P> {
    /// Runs the plan. `scope` holds what every branch in the plan's scope wants, `observed` the
    /// live environments the plan was made from.
    pub async fn apply(
        &self,
        plan: &Plan,
        scope: &BTreeMap<String, Wanted>,
        observed: &[ObservedEnv],
    ) -> Vec<EnvOutcome> {
        // Keyed by branch and id: a branch whose id collides with another branch's environment
        // never acts on (or touches) that environment.
        let live_of = |branch: &str, id: &ClusterId| {
            observed
                .iter()
                .find(|o| &o.cluster_id == id && o.branch().as_deref() == Some(branch))
        };
        let mut work: BTreeMap<(String, ClusterId), Work> = BTreeMap::new();
        // Every covered, live environment in scope is touched (last-applied), even with no action.
        for (branch, wanted) in scope {
            if let Some(desired) = wanted.desired()
                && let Some(live) = live_of(branch, &desired.cluster_id)
            {
                work.insert(
                    (branch.clone(), desired.cluster_id.clone()),
                    Work {
                        cluster_id: desired.cluster_id.clone(),
                        branch: branch.clone(),
                        env: desired.env.clone(),
                        desired: Some(desired),
                        observed: Some(live),
                        steps: Steps::default(),
                    },
                );
            }
        }
        for action in &plan.actions {
            let entry = work
                .entry((action.branch.clone(), action.cluster_id.clone()))
                .or_insert_with(|| Work {
                    cluster_id: action.cluster_id.clone(),
                    branch: action.branch.clone(),
                    env: action.env.clone(),
                    desired: scope
                        .get(&action.branch)
                        .and_then(Wanted::desired)
                        .filter(|d| d.cluster_id == action.cluster_id),
                    observed: live_of(&action.branch, &action.cluster_id),
                    steps: Steps::default(),
                });
            entry.steps.add(&action.kind);
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
        let mut outcome = EnvOutcome {
            branch: work.branch.clone(),
            env: work.env.clone(),
            cluster_id: work.cluster_id.clone(),
            done: Vec::new(),
            status: OutcomeStatus::Ok,
            exists: false,
        };
        if self.cancel.is_requested() {
            outcome.status = OutcomeStatus::NotStarted;
            outcome.exists = work.observed.is_some();
            return ((work.branch, work.cluster_id), outcome);
        }
        let result = self.steps(&work, &mut outcome).await;
        self.progress.finish(&work.branch);
        if let Err(error) = result {
            outcome.status = OutcomeStatus::Failed(Failure::of(&error));
        }
        ((work.branch, work.cluster_id), outcome)
    }

    fn say(&self, work: &Work<'_>, text: &str) {
        self.progress.step(&work.branch, text);
    }

    fn interrupted(&self, before: &'static str) -> Result<(), ApplyError> {
        match self.cancel.is_requested() {
            true => Err(ApplyError::Interrupted(before)),
            false => Ok(()),
        }
    }

    /// One environment's steps, in order; the first failure stops them.
    async fn steps(&self, work: &Work<'_>, outcome: &mut EnvOutcome) -> Result<(), ApplyError> {
        let steps = &work.steps;
        if let Some(reason) = &steps.blocked {
            // Nothing changes, but a spec still covers it: it was applied, so it is not idle.
            if work.desired.is_some() && work.observed.is_some() {
                let touch = TagUpdate::set(tags::LAST_APPLIED, now_rfc3339());
                let _ = self
                    .provider
                    .update_tags(self.owner, &work.cluster_id, &touch)
                    .await;
                outcome.exists = true;
            }
            return Err(ApplyError::Blocked(reason.clone()));
        }
        if let (true, Some(desired)) = (steps.fresh(), work.desired) {
            // What the new environment needs is checked before the old one goes.
            self.provider.prepare(self.owner, desired).await?;
        }
        if steps.delete || steps.replace || steps.reclone {
            self.delete(work, outcome).await?;
            if steps.delete {
                return Ok(());
            }
        }
        let Some(desired) = work.desired else {
            return Ok(());
        };
        let spec_tags = desired.spec_tags(self.owner).map_err(ApplyError::Tags)?;
        // Where the branch started does not change when its environment is replaced, unless the
        // command says otherwise (`bases`).
        let observed_base = work.observed.and_then(|o| o.tag(tags::BASE));
        let base = self
            .bases
            .get(&work.branch)
            .map(String::as_str)
            .or(observed_base);
        // The copy's own id, which its masking records carry (a new copy makes a new one).
        let mut mask_id = work
            .observed
            .and_then(|o| o.tag(tags::MASK_ID))
            .map(str::to_owned);
        match &steps.copy {
            Some(source) => mask_id = Some(self.copy(work, desired, source, base, outcome).await?),
            None if steps.fresh() => self.create(work, desired, base, outcome).await?,
            None if steps.repair => {
                self.interrupted("repairing")?;
                self.say(work, "repairing: creating its writer instance");
                self.provider.repair(self.owner, desired).await?;
                outcome.done.push("repaired (a new writer instance)".into());
            }
            None => {}
        }
        // The database needs a locked session when something is to run, or when its ledger tags
        // do not say it is converged (the plan read the ledger; the tags must say what it said).
        let live = work.observed.filter(|_| !steps.fresh());
        let digest_matches =
            live.and_then(|o| o.tag(tags::LEDGER_DIGEST)) == Some(desired.ledger_digest().as_str());
        // A repaired environment is waited on too: it is ready only once its new writer is.
        let db_work = steps.fresh()
            || steps.repair
            || steps.reset
            || steps.migrate
            || steps.seed
            || !digest_matches;
        if db_work {
            self.say(work, "waiting until ready");
            let on_wait = |what: &str| self.say(work, &format!("waiting until ready: {what}"));
            self.provider
                .wait_ready(self.owner, desired, self.options.wait_timeout, &on_wait)
                .await?;
        }
        outcome.exists = true;
        // A data branch's copy is masked before anything else may use it (also one whose
        // masking an interrupted apply left pending).
        let pending = work.observed.is_some_and(ObservedEnv::masking_pending);
        let mut masked = false;
        if let Some(data) = &desired.data
            && (steps.copy.is_some() || pending)
        {
            self.interrupted("masking")?;
            self.mask(work, desired, data, mask_id.as_deref(), outcome)
                .await?;
            masked = true;
        }
        self.update(work, desired, outcome).await?;
        // Masking committed: said with the next tag write. A run cut off before it leaves
        // `pending`, and the next one finds the masking committed and says so.
        let masked = masked.then_some(mask_id.as_deref());
        let said_later = self
            .applied_now(desired, live, &spec_tags, base, masked, !steps.reset)
            .await?;
        if db_work {
            if let Err(error) = self.interrupted("migrating") {
                self.say_alone(desired, &said_later).await;
                return Err(error);
            }
            self.converge(work, desired, said_later, outcome).await?;
        } else {
            self.say_alone(desired, &said_later).await;
        }
        if outcome.done.is_empty() {
            outcome.done.push("up to date".into());
        }
        Ok(())
    }

    /// A live environment's tags brought up to date before anything runs, with last-applied (a
    /// prune deciding meanwhile by the ttl, or by a view of git older than this apply, sees that
    /// and keeps it), and `masked=done` after a masking. A new environment's create carried the
    /// spec's tags, its base and last-applied: no write (one call fewer on AWS), and what it
    /// returns (`masked=done`) goes with the next write.
    async fn applied_now(
        &self,
        desired: &DesiredEnv,
        live: Option<&ObservedEnv>,
        spec_tags: &Tags,
        base: Option<&str>,
        masked: Option<Option<&str>>,
        stamp: bool,
    ) -> Result<TagUpdate, ApplyError> {
        // Only onto the copy that was masked (`masked`: it was, with this mask id, when it has
        // one): never onto one another run made again under this id meanwhile.
        let mut masked_done = TagUpdate::set(tags::MASKED, "done");
        masked_done.only_if = masked
            .flatten()
            .map(|m| (tags::MASK_ID.to_owned(), m.to_owned()));
        let masked = masked.is_some();
        if let Some(data) = &desired.data {
            masked_done
                .set
                .insert(tags::MASK_DIGEST.into(), data.mask_digest());
        }
        let Some(live) = live else {
            return Ok(if masked {
                masked_done
            } else {
                TagUpdate::default()
            });
        };
        let mut update = tag_update(&live.tags, spec_tags);
        if let Some(base) = base
            && live.tag(tags::BASE) != Some(base)
        {
            update.set.insert(tags::BASE.into(), base.into());
        }
        update.set.insert(tags::LAST_APPLIED.into(), now_rfc3339());
        let keys_after = live
            .tags
            .keys()
            .filter(|k| !update.remove.contains(*k))
            .chain(update.set.keys().filter(|k| !live.tags.contains_key(*k)));
        // A reset records its commit only once it has run (it may be refused under the lock).
        if let Some(commit) = self.commits.get(&desired.branch)
            && stamp
            && live.tag(tags::COMMIT) != Some(commit.as_str())
            && commit_fits(keys_after)
        {
            update.set.insert(tags::COMMIT.into(), commit.clone());
        }
        if masked {
            update.merge(masked_done);
        }
        self.provider
            .update_tags(self.owner, &desired.cluster_id, &update)
            .await?;
        Ok(TagUpdate::default())
    }

    /// Deletes the environment (alone, or as the first half of a replace).
    async fn delete(&self, work: &Work<'_>, outcome: &mut EnvOutcome) -> Result<(), ApplyError> {
        if work.steps.replace
            && let (Some(desired), Some(live)) = (work.desired, work.observed)
        {
            // The spec allows the replace; the live resource may still say what the old spec
            // asked (protected, deletion protection on): make it say what the spec says first,
            // so the delete's own re-check on the live resource lets it through.
            let spec_tags = desired.spec_tags(self.owner).map_err(ApplyError::Tags)?;
            self.provider
                .update_tags(
                    self.owner,
                    &work.cluster_id,
                    &tag_update(&live.tags, &spec_tags),
                )
                .await?;
            if live.deletion_protection && !desired.cluster.deletion_protection {
                self.provider.update(self.owner, desired).await?;
            }
        }
        self.interrupted("deleting")?;
        self.say(work, &format!("deleting {}", work.cluster_id));
        // What another apply changes as it runs (a newer commit's, migrating) must not have
        // changed since the plan: its work is never deleted for an older plan.
        let unchanged = work
            .observed
            .map(|o| {
                [tags::COMMIT, tags::LEDGER_DIGEST]
                    .iter()
                    .map(|key| (key.to_string(), o.tag(key).map(str::to_owned)))
                    .collect()
            })
            .unwrap_or_default();
        let options = DeleteOptions {
            force: self.options.force_delete,
            wait_timeout: self.options.wait_timeout,
            unchanged,
        };
        match self
            .provider
            .delete(self.owner, &work.cluster_id, options)
            .await
        {
            // Gone before the delete's own look (another run deleted it, or its wait saw it
            // go): what was asked holds.
            Ok(()) | Err(ProviderError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        outcome.done.push("deleted".into());
        Ok(())
    }

    /// Creates the environment with its initial tags (a new one, or the second half of a
    /// replace).
    async fn create(
        &self,
        work: &Work<'_>,
        desired: &DesiredEnv,
        base: Option<&str>,
        outcome: &mut EnvOutcome,
    ) -> Result<(), ApplyError> {
        self.interrupted("creating")?;
        let mut initial = initial_tags(desired, self.owner, base).map_err(ApplyError::Tags)?;
        if let Some(commit) = self.commits.get(&work.branch)
            && commit_fits(initial.keys())
        {
            initial.insert(tags::COMMIT.into(), commit.clone());
        }
        self.say(work, &format!("creating {}", desired.cluster_id));
        let created = self.provider.create(self.owner, desired, &initial).await?;
        if work.steps.replace {
            // "deleted" then "created" reads as one thing to users.
            outcome.done.pop();
            outcome.done.push("replaced".into());
        } else {
            outcome.done.push(match created {
                Created::New => "created".into(),
                // Another run made it first (or this one, whose answer was lost).
                Created::Existing => "found it created".into(),
            });
        }
        Ok(())
    }

    /// Makes a data branch's environment as a copy of its source's (a new one, or again in a
    /// reset), tagged with where it came from, `envctl:masked=pending` from the start and a new
    /// `envctl:mask-id`, which it returns.
    async fn copy(
        &self,
        work: &Work<'_>,
        desired: &DesiredEnv,
        source: &CloneSource,
        base: Option<&str>,
        outcome: &mut EnvOutcome,
    ) -> Result<String, ApplyError> {
        self.interrupted("copying")?;
        let mut initial = initial_tags(desired, self.owner, base).map_err(ApplyError::Tags)?;
        initial.insert(tags::SOURCE.into(), source.cluster_id.to_string());
        initial.insert(tags::MASKED.into(), "pending".into());
        let mask_id = hex::encode(rand::random::<[u8; 16]>());
        initial.insert(tags::MASK_ID.into(), mask_id.clone());
        if let Some(commit) = self.commits.get(&work.branch)
            && commit_fits(initial.keys())
        {
            initial.insert(tags::COMMIT.into(), commit.clone());
        }
        self.say(
            work,
            &format!("copying {} into {}", source.cluster_id, desired.cluster_id),
        );
        // Another run's copy, made first, is finished with its own id.
        let live_mask_id = self
            .provider
            .clone_env(self.owner, desired, &source.cluster_id, &initial)
            .await?;
        // Another run made it first, with a mask id of its own: not copied here.
        let found = live_mask_id.as_ref().is_some_and(|live| *live != mask_id);
        let again = if work.steps.reclone {
            outcome.done.pop();
            " again"
        } else {
            ""
        };
        outcome.done.push(match found {
            true => format!("found it copied{again}"),
            false => format!("copied {}{again}", source.cluster_id),
        });
        Ok(live_mask_id.unwrap_or(mask_id))
    }

    /// Masks a data branch's copy (its rules and files in one transaction, as the master user);
    /// the caller then says so in `envctl:masked`, with the tags it writes before migrating.
    async fn mask(
        &self,
        work: &Work<'_>,
        desired: &DesiredEnv,
        data: &crate::model::DataSource,
        mask_id: Option<&str>,
        outcome: &mut EnvOutcome,
    ) -> Result<(), ApplyError> {
        let id = &desired.cluster_id;
        self.say(work, "masking");
        let connection = self
            .provider
            .master_connection(id, &desired.database)
            .await?;
        let mut conn = db::connect(&connection, self.options.wait_timeout).await?;
        let masked = db::mask::mask(&mut conn, id, data, mask_id).await;
        let _ = sqlx::Connection::close(conn).await;
        let masked = masked?;
        self.provider
            .masking_committed(self.owner, id, mask_id)
            .await?;
        outcome.done.push(match masked {
            // Not "masked" when nothing was: a spec with no rules and no files copies as is.
            db::mask::Masked::Now if data.rules.is_empty() && data.files.is_empty() => {
                "copied with no masking (the spec has no rules)".into()
            }
            db::mask::Masked::Now => "masked".into(),
            db::mask::Masked::Already => "masking found committed".into(),
        });
        Ok(())
    }

    /// The in-place update the plan asks for: scaling and deletion protection on the provider
    /// (the other fields are tags, written with the rest).
    async fn update(
        &self,
        work: &Work<'_>,
        desired: &DesiredEnv,
        outcome: &mut EnvOutcome,
    ) -> Result<(), ApplyError> {
        let fields = &work.steps.update;
        if fields.is_empty() {
            return Ok(());
        }
        self.interrupted("updating")?;
        let names = fields
            .iter()
            .map(|f| f.spec_name())
            .collect::<Vec<_>>()
            .join(", ");
        self.say(work, &format!("updating {names}"));
        if fields.iter().any(|f| f.is_provider_setting()) {
            self.provider.update(self.owner, desired).await?;
        }
        outcome.done.push(format!("updated {names}"));
        Ok(())
    }

    /// The environment's session under its advisory lock ([`db::lock`]).
    async fn lock(&self, work: &Work<'_>, desired: &DesiredEnv) -> Result<db::Locked, ApplyError> {
        let connection = self
            .provider
            .connection(&desired.cluster_id, &desired.database)
            .await?;
        let conn = db::connect(&connection, self.options.wait_timeout).await?;
        let wait = db::LockWait {
            timeout: self.options.wait_timeout,
            cancel: self.cancel,
        };
        Ok(db::lock(conn, &wait, |text| self.say(work, text)).await?)
    }

    /// Writes tags that were to go out with another write that will not happen now, as far as it
    /// can: a failure here changes nothing the next run does not do again (`envctl:masked=pending`
    /// makes it find the masking committed and say so).
    async fn say_alone(&self, desired: &DesiredEnv, update: &TagUpdate) {
        if !update.set.is_empty() {
            let _ = self
                .provider
                .update_tags(self.owner, &desired.cluster_id, update)
                .await;
        }
    }

    /// One locked session: reset, migrate and seed as planned, then write the ledger tags from
    /// the ledger read under the lock (also after a failure: they say how far it got).
    /// `also` goes out with the ledger tags (alone, as far as it can, when no session is had).
    async fn converge(
        &self,
        work: &Work<'_>,
        desired: &DesiredEnv,
        also: TagUpdate,
        outcome: &mut EnvOutcome,
    ) -> Result<(), ApplyError> {
        let id = &desired.cluster_id;
        let reset = work.steps.reset;
        let mut locked = match self.lock(work, desired).await {
            Ok(locked) => locked,
            Err(error) => {
                self.say_alone(desired, &also).await;
                return Err(error);
            }
        };
        if reset {
            // A reset that stops half-way must not look converged (its digest may match now).
            let mut unknown = state_update(LedgerTags::unknown());
            unknown.merge(also.clone());
            self.provider.update_tags(self.owner, id, &unknown).await?;
        }
        let mut done = db::Converged::default();
        let result = locked
            .converge(
                desired,
                reset,
                match work.observed.map(|o| &o.ledger) {
                    Some(crate::model::LedgerRead::Read(ledger)) => Some(ledger),
                    _ => None,
                },
                self.cancel,
                |step| self.say(work, step),
                &mut done,
            )
            .await;
        let state = match locked.ledger().await {
            Ok(ledger) => LedgerTags::of_ledger(&ledger, desired),
            Err(_) => LedgerTags::unknown(),
        };
        let mut update = state_update(state);
        update.merge(also);
        if done.reset
            && let Some(commit) = self.commits.get(&desired.branch)
            && work.observed.is_none_or(|o| commit_fits(o.tags.keys()))
        {
            update.set.insert(tags::COMMIT.into(), commit.clone());
        }
        let tagged = self.provider.update_tags(self.owner, id, &update).await;
        locked.unlock().await;
        if done.reset {
            outcome.done.push("reset".into());
        }
        if !done.migrations.is_empty() {
            outcome
                .done
                .push(format!("migrated {}", done.migrations.join(", ")));
        }
        if !done.seeds.is_empty() {
            outcome
                .done
                .push(format!("seeded {}", done.seeds.join(", ")));
        }
        result?;
        Ok(tagged?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(foreign: usize, own: &[&str]) -> Vec<String> {
        (0..foreign)
            .map(|i| format!("team{i}"))
            .chain(own.iter().map(|k| (*k).to_owned()))
            .collect()
    }

    #[test]
    fn the_commit_tag_is_written_only_where_every_tag_of_envctls_still_fits_under_50() {
        // 31 of the spec's (or anyone's) and all of envctl's: 50.
        assert!(commit_fits(keys(31, &[tags::MANAGED, tags::REPO]).iter()));
        // 32, which validate allows beside envctl's other 18: no room for it.
        assert!(!commit_fits(keys(32, &[]).iter()));
        // An environment an earlier envctl filled to 50 (32 + 18): none either, so no apply
        // of it fails on AWS's quota.
        assert!(!commit_fits(keys(32, &tags::ALL[..18]).iter()));
    }
}
