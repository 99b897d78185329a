//! The planner: `plan(desired, observed, options) -> Plan`, a pure function.
//!
//! It matches live environments to branches by their `envctl:branch` tag, compares spec and
//! ledger with what is live, and lists actions in a fixed order. Whether anything outside the
//! desired state is deleted for reasons other than "no spec covers it" is decided here, by
//! [`PlanOptions::extra_deletions`], which only prune and destroy fill.
//!
//! One environment's problem (several live environments for a branch, an id collision, a branch
//! whose tree cannot say what it wants, an unreadable ledger, a protected history that diverged)
//! is a `blocked` action for that environment; the rest of the plan is unaffected.
//!
//! Architecture invariant: no IO; the caller observes, reads ledgers where [`needs_ledger`] says so,
//! and renders (`render.rs`).

pub mod diff;
pub mod prune;
pub mod render;
pub mod review;

use std::collections::BTreeMap;

use serde_json::json;
use similar::TextDiff;

use crate::model::{
    Action, ActionKind, CloneSource, ClusterId, DataSource, DeleteReason, DesiredEnv,
    EngineSupport, EngineSupportMap, Field, FieldChange, Ledger, LedgerFailure, LedgerRead,
    Migration, ObservedEnv, Owner, Plan, PlanFlags, SourceFacts, SourceRef, StatusClass, Summary,
    Wanted, code, tags,
};

pub const FORMAT_VERSION: u32 = 1;

/// What the planner compares.
pub struct PlanInput<'a> {
    pub provider: &'a str,
    /// This run's repository and id prefix: every observed environment is one of theirs.
    pub owner: &'a Owner,
    /// Each branch in scope, with what it wants.
    pub scope: &'a BTreeMap<String, Wanted>,
    /// Every live environment of this repository under this prefix.
    pub observed: &'a [ObservedEnv],
    /// What the provider offers for the engine versions in play (empty: no limits known).
    pub engines: &'a EngineSupportMap,
    /// The default branch, where git can tell (the source of a data branch whose spec names
    /// none).
    pub default_branch: Option<&'a str>,
    /// What the command found of each data branch's source, by source (`DefaultBranch`
    /// resolved to its branch).
    pub sources: &'a BTreeMap<SourceRef, SourceFacts>,
    /// Ids a create would use that something not this owner's holds, with whose it is (read only
    /// for what a first plan creates; empty: none known).
    pub occupied: &'a BTreeMap<ClusterId, String>,
}

/// How the planner may act.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `--reset` / `--no-reset`.
    pub flags: PlanFlags,
    /// Deletions for reasons the planner cannot see (branch deleted or merged, ttl expired,
    /// destroy requested). Only prune and destroy set these.
    pub extra_deletions: BTreeMap<ClusterId, DeleteReason>,
    /// Leftovers of interrupted creates to delete, by name, each with the branch whose create
    /// left it. Only prune sets these (from [`prune::decide`]).
    pub leftover_deletions: BTreeMap<ClusterId, String>,
    /// Delete even protected environments (`destroy --force`).
    pub force_delete_protected: bool,
}

/// Why no plan could be made: only a caller's mistake. One environment's problem is a `blocked`
/// action for that environment, never an error of the whole plan.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The caller did not read a ledger the plan needs.
    #[error("internal error: the ledger of `{0}` was not read before planning")]
    LedgerNotRead(ClusterId),
}

/// Whether planning this branch needs the live ledger: only when its digest differs from the
/// desired one (reading it connects to the database, which can wake a paused cluster).
/// Only an available environment is read: connecting to one that is not fails or waits.
pub fn needs_ledger(desired: &DesiredEnv, observed: &ObservedEnv) -> bool {
    (observed.tag(tags::LEDGER_DIGEST) != Some(desired.ledger_digest().as_str())
        || masking_changed(desired, observed).is_some())
        && replace_reasons(desired, observed).is_empty()
        && observed.status_class() == StatusClass::Available
        && !observed.missing_writer()
}

/// Makes the plan.
pub fn plan(input: &PlanInput, options: &PlanOptions) -> Result<Plan, PlanError> {
    // Most branches make one action; the live environments are grouped by branch once.
    let mut actions = Vec::with_capacity(input.scope.len());
    let mut by_branch: BTreeMap<String, Vec<&ObservedEnv>> = BTreeMap::new();
    // What envctl will not touch (an id outside the prefix) is no branch's environment: it shows
    // only where something would delete it, blocked.
    let mut refused = Vec::new();
    for o in input.observed {
        if let Some(branch) = o.branch()
            && !options.extra_deletions.contains_key(&o.cluster_id)
        {
            match o.refused {
                Some(_) => refused.push((branch, o)),
                None => by_branch.entry(branch).or_default().push(o),
            }
        }
    }
    for (branch, wanted) in input.scope {
        let live = by_branch.get(branch).map_or(&[][..], Vec::as_slice);
        plan_branch(&mut actions, input, branch, wanted, live, options)?;
    }
    for (branch, observed) in refused {
        if let Some(Wanted::Nothing) = input.scope.get(&branch)
            && observed.status_class() != StatusClass::Deleting
        {
            delete_or_block(
                &mut actions,
                observed,
                &DeleteReason::NoSpec,
                false,
                options,
            );
        }
    }
    for (cluster_id, reason) in &options.extra_deletions {
        if let Some(observed) = input.observed.iter().find(|o| &o.cluster_id == cluster_id) {
            delete_or_block(
                &mut actions,
                observed,
                reason,
                observed.protected(),
                options,
            );
        }
    }
    for (name, branch) in &options.leftover_deletions {
        actions.push(Action {
            kind: ActionKind::Delete {
                reason: DeleteReason::Leftover.to_string(),
            },
            branch: branch.clone(),
            env: "-".into(),
            cluster_id: name.clone(),
        });
    }
    // Stable: within a branch, actions keep the order they execute in. Usually already in order
    // (the scope is): no sort, and no copy of the actions for one.
    if !actions.is_sorted_by(|a, b| a.branch <= b.branch) {
        actions.sort_by(|a, b| a.branch.cmp(&b.branch));
    }
    let summary = Summary::of(&actions);
    Ok(Plan {
        format_version: FORMAT_VERSION,
        provider: input.provider.to_owned(),
        repo: input.owner.repo.clone(),
        prefix: input.owner.prefix.as_str().to_owned(),
        scope: input.scope.keys().cloned().collect(),
        options: options.flags,
        observed_fingerprint: fingerprint(input, options),
        actions,
        summary,
        sources: BTreeMap::new(),
        uncovered: input
            .scope
            .iter()
            .filter(|(branch, wanted)| {
                matches!(wanted, Wanted::Nothing)
                    && !input
                        .observed
                        .iter()
                        .any(|o| o.branch().as_deref() == Some(branch.as_str()))
            })
            .map(|(branch, _)| branch.clone())
            .collect(),
    })
}

/// One branch's actions. `live` holds its live environments (by their `envctl:branch` tag).
fn plan_branch(
    actions: &mut Vec<Action>,
    input: &PlanInput,
    branch: &str,
    wanted: &Wanted,
    live: &[&ObservedEnv],
    options: &PlanOptions,
) -> Result<(), PlanError> {
    let blocked = |id: &ClusterId, env: &str, reason: String| Action {
        kind: ActionKind::Blocked { reason, diff: None },
        branch: branch.to_owned(),
        env: env.to_owned(),
        cluster_id: id.clone(),
    };
    if live.len() > 1 {
        let ids = live
            .iter()
            .map(|o| format!("`{}`", o.cluster_id))
            .collect::<Vec<_>>()
            .join(", ");
        for observed in live {
            actions.push(blocked(
                &observed.cluster_id,
                &observed.env_name(),
                format!(
                    "branch {} has {} live environments ({ids}); {} deletes them all, then apply creates one",
                    code(branch),
                    live.len(),
                    code(&format!("envctl destroy --branch {branch}"))
                ),
            ));
        }
        return Ok(());
    }
    let current = live.first().copied();
    match wanted {
        Wanted::Unknown { reason } => {
            let id = current.map_or_else(
                || ClusterId::derive(&input.owner.prefix, &input.owner.repo, branch),
                |o| o.cluster_id.clone(),
            );
            let env = current.map_or_else(|| "-".to_owned(), ObservedEnv::env_name);
            actions.push(blocked(&id, &env, reason.clone()));
        }
        Wanted::Nothing => {
            if let Some(observed) = current.filter(|o| o.status_class() != StatusClass::Deleting) {
                delete_or_block(
                    actions,
                    observed,
                    &DeleteReason::NoSpec,
                    observed.protected(),
                    options,
                );
            }
        }
        Wanted::Env(desired) => plan_wanted(actions, input, desired, live, options)?,
    }
    Ok(())
}

/// A branch that wants an environment, with its live ones (at most one here).
fn plan_wanted(
    actions: &mut Vec<Action>,
    input: &PlanInput,
    desired: &DesiredEnv,
    live: &[&ObservedEnv],
    options: &PlanOptions,
) -> Result<(), PlanError> {
    let branch = desired.branch.as_str();
    let blocked = |id: &ClusterId, env: &str, reason: String| Action {
        kind: ActionKind::Blocked { reason, diff: None },
        branch: branch.to_owned(),
        env: env.to_owned(),
        cluster_id: id.clone(),
    };
    if let Some(other) = input
        .observed
        .iter()
        .find(|o| o.cluster_id == desired.cluster_id && o.branch().as_deref() != Some(branch))
    {
        let tagged = other
            .branch()
            .unwrap_or_else(|| other.tag(tags::BRANCH).unwrap_or("").to_owned());
        actions.push(blocked(
            &desired.cluster_id,
            &desired.env,
            format!(
                "live cluster `{}` has the id envctl derives for branch {}, but its `envctl:branch` tag says {}; envctl will not adopt it",
                desired.cluster_id,
                code(branch),
                code(&tagged)
            ),
        ));
        return Ok(());
    }
    // One being deleted is as good as gone: apply waits until it is, then creates.
    let current = live
        .first()
        .copied()
        .filter(|o| o.status_class() != StatusClass::Deleting);
    let deleting = live
        .iter()
        .any(|o| o.status_class() == StatusClass::Deleting);
    match current {
        None if let Some(whose) = input.occupied.get(&desired.cluster_id) => {
            let reason = format!(
                "refusing to touch `{}`, the id envctl derives for branch {}: a cluster that is not this repository's holds it ({whose}); envctl neither creates over it nor adopts it: delete or rename that cluster, or give this repository another `ENVCTL_PREFIX`",
                desired.cluster_id,
                code(branch)
            );
            push(actions, desired, ActionKind::Blocked { reason, diff: None });
        }
        None if let Some(reason) = unsupported(desired, input.engines, None) => {
            push(actions, desired, ActionKind::Blocked { reason, diff: None });
        }
        None if let Some(data) = &desired.data => plan_clone(actions, input, desired, data),
        None => {
            let waits = match deleting {
                true => " (its old cluster is being deleted; apply waits until it is gone)",
                false => "",
            };
            let reason = format!(
                "branch {} is covered by {}{waits}",
                code(branch),
                code(&desired.spec_file)
            );
            push(actions, desired, ActionKind::Create { reason });
            migrate_and_seed_from_scratch(actions, desired);
        }
        Some(observed) if observed.cluster_id != desired.cluster_id => {
            // Same owner and branch, another id: made by another version of the id formula, or
            // tagged by hand. Neither adopted nor deleted.
            actions.push(blocked(
                &observed.cluster_id,
                &observed.env_name(),
                format!(
                    "branch {} has live environment `{}`, but envctl derives `{}` for it; {} deletes it, then apply creates the new one",
                    code(branch),
                    observed.cluster_id,
                    desired.cluster_id,
                    code(&format!("envctl destroy --branch {branch}"))
                ),
            ));
        }
        Some(observed) => plan_live(actions, desired, observed, options, input)?,
    }
    Ok(())
}

/// The source a data branch copies, resolved: the default branch named, or why it cannot be.
pub fn resolve_source(
    data: &DataSource,
    default_branch: Option<&str>,
) -> Result<SourceRef, String> {
    match &data.from {
        SourceRef::DefaultBranch => match default_branch {
            Some(branch) => Ok(SourceRef::Branch(branch.to_owned())),
            None => Err(
                "its spec copies the default branch's data (`from` names no branch), but the default branch cannot be told; set ENVCTL_DEFAULT_BRANCH or `from.branch`".to_owned(),
            ),
        },
        other => Ok(other.clone()),
    }
}

/// What a plan shows of a clone's source: its branch or cluster, and the masking.
fn clone_source(data: &DataSource, source: &SourceRef, facts: &SourceFacts) -> CloneSource {
    CloneSource {
        branch: match source {
            SourceRef::Branch(branch) => Some(branch.clone()),
            _ => None,
        },
        cluster_id: facts.cluster_id.clone(),
        mask: data
            .rules
            .iter()
            .map(|r| format!("{}: {}", r.column, r.strategy))
            .collect(),
        mask_sql: data.files.iter().map(|f| f.path.clone()).collect(),
    }
}

/// The source's facts and its ledger, or why a copy of it cannot be planned.
fn source_of<'a>(
    input: &'a PlanInput,
    desired: &DesiredEnv,
    data: &DataSource,
) -> Result<(SourceRef, &'a SourceFacts, &'a Ledger), String> {
    let source = resolve_source(data, input.default_branch)?;
    if source == SourceRef::Branch(desired.branch.clone()) {
        return Err(format!(
            "branch `{}` is its spec's source (the default branch), and an environment cannot be a copy of itself; give the default branch a spec without `from`",
            desired.branch
        ));
    }
    let facts = input
        .sources
        .get(&source)
        .ok_or_else(|| "internal error: the source was not looked at before planning".to_owned())?;
    if let Some(problem) = &facts.problem {
        return Err(problem.clone());
    }
    if let Some(problem) = carried_mismatch(facts, desired) {
        return Err(problem);
    }
    if let Some(problem) = missing_columns(facts, data) {
        return Err(problem);
    }
    match &facts.ledger {
        LedgerRead::Read(ledger) => Ok((source, facts, ledger)),
        LedgerRead::Failed { why, .. } => Err(format!("the source's ledger cannot be read: {why}")),
        LedgerRead::NotRead => Err("internal error: the source's ledger was not read".to_owned()),
    }
}

/// The masking rules whose columns the source does not have, where it was looked at: masking
/// runs on the copy before any migration of the branch, so the copy would be made, then fail.
fn missing_columns(facts: &SourceFacts, data: &DataSource) -> Option<String> {
    let present = facts.columns.as_ref()?;
    let missing: Vec<String> = data
        .rules
        .iter()
        .filter(|r| !present.contains(&r.column))
        .map(|r| format!("`{}`", r.column))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the source has no column {}, which the masking rules name: masking runs on the copy before the branch's migrations, so it would fail there; fix the rules, or apply the migration that adds {} to the source first",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        )
    })
}

/// What a copy carries of its source (its database, user and engine version) that the spec asks
/// otherwise, if anything.
fn carried_mismatch(facts: &SourceFacts, desired: &DesiredEnv) -> Option<String> {
    let mut carried = vec![
        (
            "database.user",
            facts.database_user.as_deref(),
            desired.database.user.as_str(),
        ),
        (
            "database.name",
            facts.database_name.as_deref(),
            desired.database.name.as_str(),
        ),
    ];
    if let Some(want) = &desired.cluster.engine_version {
        carried.push((
            "cluster.engineVersion",
            facts.engine_version.as_deref(),
            want,
        ));
    }
    carried.into_iter().find_map(|(field, have, want)| {
        let have = have?;
        let same = match field {
            "cluster.engineVersion" => engine_version_matches(want, have),
            _ => have == want,
        };
        (!same).then(|| {
            format!(
                "a copy carries its source's {field} `{have}`, and this spec says `{want}`: make them the same"
            )
        })
    })
}

/// A data branch with no environment: a copy of its source's, masked, then the migrations past
/// the source's ledger and the seeds it lacks. Blocked when the source cannot be copied, or when
/// its applied history is not this branch's.
fn plan_clone(
    actions: &mut Vec<Action>,
    input: &PlanInput,
    desired: &DesiredEnv,
    data: &DataSource,
) {
    let blocked = |reason: String| ActionKind::Blocked { reason, diff: None };
    let (source, facts, ledger) = match source_of(input, desired, data) {
        Ok(found) => found,
        Err(reason) => {
            return push(
                actions,
                desired,
                blocked(format!("cannot copy its source: {reason}")),
            );
        }
    };
    if let Some((reason, diff)) = divergence(desired, ledger) {
        let kind = ActionKind::Blocked {
            reason: format!(
                "its source's applied migrations are not this branch's ({reason}): bring the branch up to date with its source, or drop `from` to start empty"
            ),
            diff,
        };
        return push(actions, desired, kind);
    }
    let reason = format!(
        "branch `{}` is covered by `{}`, a data branch",
        desired.branch, desired.spec_file
    );
    let source = clone_source(data, &source, facts);
    push(actions, desired, ActionKind::Clone { reason, source });
    plan_pending(
        actions,
        desired,
        ledger.max_version(),
        seeds_missing(desired, ledger),
    );
}

/// The spec's seeds the ledger has not run with their checksum now.
fn seeds_missing(desired: &DesiredEnv, ledger: &Ledger) -> Vec<String> {
    desired
        .seeds
        .iter()
        .filter(|s| {
            !ledger
                .seeds
                .iter()
                .any(|a| a.path == s.path && a.checksum == s.checksum)
        })
        .map(|s| s.path.clone())
        .collect()
}

/// Why the provider cannot give `desired` its scaling (see [`scaling_unsupported`]).
/// `live_version`: the version of the live cluster an update changes; otherwise the spec's,
/// for a new cluster.
fn unsupported(
    desired: &DesiredEnv,
    engines: &EngineSupportMap,
    live_version: Option<&str>,
) -> Option<String> {
    let version = match live_version {
        Some(version) => Some(version.to_owned()),
        None => desired.cluster.engine_version.clone(),
    };
    scaling_unsupported(desired.cluster.scaling, &version, engines)
}

/// Why `scaling` cannot be had on engine `version` (`None`: the provider's default): the
/// version is not offered, or does not allow the range (a minimum of 0 needs a version that can
/// pause; the highest maximum depends on the version). `None` when it can, or nothing is known.
pub fn scaling_unsupported(
    scaling: crate::model::Scaling,
    version: &Option<String>,
    engines: &EngineSupportMap,
) -> Option<String> {
    let (version, min_acu, max_acu) = match engines.get(version)? {
        EngineSupport::NotOffered { why } => return Some(why.clone()),
        EngineSupport::Offered {
            version,
            min_acu,
            max_acu,
        } => (version, *min_acu, *max_acu),
    };
    let (min, max) = (scaling.min_acu.as_f64(), scaling.max_acu.as_f64());
    if let Some(lowest) = min_acu
        && min < lowest
    {
        return Some(format!(
            "`minAcu: {}` needs an engine version that can pause; engine version {version} allows a minimum of {lowest} ACU: set `minAcu: {lowest}`, or a newer `cluster.engineVersion`",
            scaling.min_acu
        ));
    }
    if let Some(highest) = max_acu
        && max > highest
    {
        return Some(format!(
            "`maxAcu: {}` is above what engine version {version} allows ({highest} ACU): lower `maxAcu`, or set a newer `cluster.engineVersion`",
            scaling.max_acu
        ));
    }
    None
}

fn push(actions: &mut Vec<Action>, desired: &DesiredEnv, kind: ActionKind) {
    actions.push(Action {
        kind,
        branch: desired.branch.clone(),
        env: desired.env.clone(),
        cluster_id: desired.cluster_id.clone(),
    });
}

fn push_observed(actions: &mut Vec<Action>, observed: &ObservedEnv, kind: ActionKind) {
    actions.push(Action {
        kind,
        branch: observed.branch().unwrap_or_default(),
        env: observed.env_name(),
        cluster_id: observed.cluster_id.clone(),
    });
}

fn delete_or_block(
    actions: &mut Vec<Action>,
    observed: &ObservedEnv,
    reason: &DeleteReason,
    protected: bool,
    options: &PlanOptions,
) {
    let branch = observed.branch().unwrap_or_default();
    let destroy = |force: &str| code(&format!("envctl destroy --branch {branch}{force}"));
    let kind = if let Some(why) = &observed.refused {
        ActionKind::Blocked {
            diff: None,
            reason: format!("would delete ({reason}) but {why}"),
        }
    } else if protected && !options.force_delete_protected {
        ActionKind::Blocked {
            diff: None,
            reason: format!(
                "would delete ({reason}) but the environment is protected (`lifecycle.protect`); {} deletes it",
                destroy(" --force")
            ),
        }
    } else if observed.deletion_protection && !options.force_delete_protected {
        ActionKind::Blocked {
            diff: None,
            reason: format!(
                "would delete ({reason}) but its deletion protection is on (`cluster.deletionProtection`); {} turns it off and deletes it",
                destroy(" --force")
            ),
        }
    } else {
        ActionKind::Delete {
            reason: reason.to_string(),
        }
    };
    push_observed(actions, observed, kind);
}

/// A `migrate` action running `pending`, with their lint findings.
fn migrate(from: u64, desired: &DesiredEnv, pending: &[&Migration]) -> ActionKind {
    ActionKind::Migrate {
        from,
        to: desired.target_version,
        migrations: pending.iter().map(|m| m.name.clone()).collect(),
        lint: pending
            .iter()
            .flat_map(|m| m.lint.iter().cloned())
            .collect(),
    }
}

fn migrate_and_seed_from_scratch(actions: &mut Vec<Action>, desired: &DesiredEnv) {
    if !desired.migrations.is_empty() {
        let all: Vec<&Migration> = desired.migrations.iter().collect();
        push(actions, desired, migrate(0, desired, &all));
    }
    if !desired.seeds.is_empty() {
        push(
            actions,
            desired,
            ActionKind::Seed {
                files: desired.seeds.iter().map(|s| s.path.clone()).collect(),
            },
        );
    }
}

/// Fields that cannot change in place, with a reason each.
fn replace_reasons(desired: &DesiredEnv, observed: &ObservedEnv) -> Vec<String> {
    let mut reasons = Vec::new();
    if let (Some(want), Some(have)) = (&desired.cluster.engine_version, &observed.engine_version)
        && !engine_version_matches(want, have)
    {
        reasons.push(format!("engineVersion {have} → {want}"));
    }
    if let Some(have) = &observed.database_name
        && have != &desired.database.name
    {
        reasons.push(format!("database.name {have} → {}", desired.database.name));
    }
    if let Some(have) = &observed.database_user
        && have != &desired.database.user
    {
        reasons.push(format!("database.user {have} → {}", desired.database.user));
    }
    // Its unmasked data is handed to nobody, and no apply masks it any more: made anew, empty.
    if desired.data.is_none() && observed.masking_pending() {
        reasons.push(
            "a copy of another's data whose masking never committed, and the spec copies no data any more".into(),
        );
    }
    reasons
}

/// Seconds as the spec writes them: `7d`, `12h`, `30m`.
fn format_ttl(seconds: u64) -> String {
    match seconds {
        s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s => format!("{}m", s / 60),
    }
}

/// `16` asks for any 16.x; `16.6` for exactly that.
fn engine_version_matches(want: &str, have: &str) -> bool {
    have == want || have.starts_with(&format!("{want}."))
}

/// A live environment in any state: one that will not become available by waiting is blocked
/// when anything is to be done to it.
fn plan_live(
    actions: &mut Vec<Action>,
    desired: &DesiredEnv,
    observed: &ObservedEnv,
    options: &PlanOptions,
    input: &PlanInput,
) -> Result<(), PlanError> {
    let live = Live {
        desired,
        observed,
        options,
        input,
    };
    if observed.status_class() != StatusClass::Unusable {
        let planned = live.existing()?;
        // A replace makes a new cluster anyway; a blocked environment gets nothing done.
        let replaced_or_blocked = planned.iter().any(|a| {
            matches!(
                a.kind,
                ActionKind::Replace { .. } | ActionKind::Blocked { .. }
            )
        });
        // A copy cut off before its writer was made is finished by apply's wait (the provider
        // makes a copy's writer its own way), not repaired.
        if observed.missing_writer()
            && !replaced_or_blocked
            && unfinished_copy(desired, observed).is_none()
        {
            let reason = format!(
                "the cluster is `{}` but has no writer instance, so nothing serves its database (a delete cut off half-way, or a writer deleted by hand); apply creates one",
                observed.status
            );
            push(actions, desired, ActionKind::Repair { reason });
        }
        actions.extend(planned);
        return Ok(());
    }
    let digest_matches =
        observed.tag(tags::LEDGER_DIGEST) == Some(desired.ledger_digest().as_str());
    let planned = match digest_matches || options.flags.reset {
        true => live.existing()?,
        false => Vec::new(),
    };
    if !planned.is_empty() || !digest_matches {
        let reason = match &observed.status_hint {
            Some(hint) => format!(
                "the cluster is `{}` and will not become available by waiting: {hint}",
                observed.status
            ),
            None => format!(
                "the cluster is `{}` and will not become available by waiting; apply again once it is",
                observed.status
            ),
        };
        push(actions, desired, ActionKind::Blocked { diff: None, reason });
    }
    Ok(())
}

/// A branch's desired environment, its live one, and how the plan may act on it.
struct Live<'a> {
    desired: &'a DesiredEnv,
    observed: &'a ObservedEnv,
    options: &'a PlanOptions,
    input: &'a PlanInput<'a>,
}

impl Live<'_> {
    /// What an environment that is or will be available needs: a replace, or an update and
    /// what its database needs.
    fn existing(&self) -> Result<Vec<Action>, PlanError> {
        let (desired, observed) = (self.desired, self.observed);
        let mut actions = Vec::new();
        let replace = replace_reasons(desired, observed);
        if !replace.is_empty() {
            match unsupported(desired, self.input.engines, None) {
                Some(reason) => {
                    let reason = format!("{} needs a replace, but {reason}", replace.join("; "));
                    push(
                        &mut actions,
                        desired,
                        ActionKind::Blocked { reason, diff: None },
                    );
                }
                None => plan_replace(&mut actions, desired, observed, &replace.join("; ")),
            }
            return Ok(actions);
        }
        let changes = field_changes(desired, observed);
        let scaling = changes.iter().any(|c| c.field == Field::Scaling);
        let live_version = observed.engine_version.as_deref();
        if let Some(reason) = live_version
            .filter(|_| scaling)
            .and_then(|v| unsupported(desired, self.input.engines, Some(v)))
        {
            push(
                &mut actions,
                desired,
                ActionKind::Blocked { reason, diff: None },
            );
            return Ok(actions);
        }
        if !changes.is_empty() {
            push(&mut actions, desired, ActionKind::Update { changes });
        }
        actions.extend(plan_database(self)?);
        Ok(actions)
    }
}

/// A replace, unless what the spec says now protects the environment.
fn plan_replace(
    actions: &mut Vec<Action>,
    desired: &DesiredEnv,
    observed: &ObservedEnv,
    reason: &str,
) {
    let blocked = |why: &str| ActionKind::Blocked {
        diff: None,
        reason: format!(
            "{reason} needs a replace, but {why}; set it to false in the same change to allow the replace"
        ),
    };
    // A spec that covers the branch says whether it is protected; the tag is for when none does.
    if desired.data.is_some() {
        let reason = format!(
            "{reason} needs a replace, but a data branch is a copy of its source as it is: change the source's, or drop `from`, then `envctl reset` copies it again"
        );
        push(actions, desired, ActionKind::Blocked { reason, diff: None });
    } else if desired.protect {
        push(
            actions,
            desired,
            blocked("the environment is protected (`lifecycle.protect`)"),
        );
    } else if observed.deletion_protection && desired.cluster.deletion_protection {
        push(
            actions,
            desired,
            blocked("deletion protection is on (`cluster.deletionProtection`)"),
        );
    } else {
        // Apply turns off what the spec no longer asks for (protection) before deleting.
        push(
            actions,
            desired,
            ActionKind::Replace {
                reason: reason.to_owned(),
            },
        );
        migrate_and_seed_from_scratch(actions, desired);
    }
}

/// The fields an in-place update changes, in a fixed order.
fn field_changes(desired: &DesiredEnv, observed: &ObservedEnv) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    let mut change = |field, before, after| {
        changes.push(FieldChange {
            field,
            before,
            after,
        })
    };
    // An unreadable range (a comment edited by hand, a cluster without one) is corrected too.
    let range = |s: crate::model::Scaling| json!({"min_acu": s.min_acu, "max_acu": s.max_acu});
    if observed.scaling != Some(desired.cluster.scaling) {
        let before = observed.scaling.map_or(serde_json::Value::Null, range);
        change(Field::Scaling, before, range(desired.cluster.scaling));
    }
    let spec_tags = observed.spec_tags(&desired.cluster.tags);
    if spec_tags != desired.cluster.tags {
        change(Field::Tags, json!(spec_tags), json!(desired.cluster.tags));
    }
    if observed.tag(tags::ENV) != Some(desired.env.as_str()) {
        change(
            Field::Env,
            json!(observed.tag(tags::ENV)),
            json!(desired.env),
        );
    }
    if observed.deletion_protection != desired.cluster.deletion_protection {
        change(
            Field::DeletionProtection,
            json!(observed.deletion_protection),
            json!(desired.cluster.deletion_protection),
        );
    }
    if observed.protected() != desired.protect {
        change(
            Field::Protect,
            json!(observed.protected()),
            json!(desired.protect),
        );
    }
    let ttl = observed.tag(tags::TTL).and_then(|t| t.parse::<u64>().ok());
    if ttl != desired.ttl_seconds {
        change(
            Field::Ttl,
            json!(ttl.map(format_ttl)),
            json!(desired.ttl_seconds.map(format_ttl)),
        );
    }
    // A copy an interrupted apply left unmasked is masked by the next.
    if desired.data.is_some() && observed.masking_pending() {
        change(Field::Masking, json!("pending"), json!("done"));
    }
    changes
}

/// Why a data branch's copy must be made again: its masking committed with other rules or files
/// than the spec's now (`envctl:mask-digest`), e.g. a column someone forgot, masked now; the copy
/// still holds it as the source has it. A copy masked before envctl wrote the digest is left.
fn masking_changed(desired: &DesiredEnv, observed: &ObservedEnv) -> Option<String> {
    let data = desired.data.as_deref()?;
    let recorded = observed.masked_with()?;
    (recorded != data.mask_digest()).then(|| {
        "the masking rules or files changed since this copy was masked: it is copied again \
         and masked with them"
            .to_owned()
    })
}

/// A data branch's copy that was never converged and whose masking is pending: an apply was cut
/// off before its data arrived, or before it was masked.
pub fn unfinished_copy<'a>(
    desired: &'a DesiredEnv,
    observed: &ObservedEnv,
) -> Option<&'a DataSource> {
    let never_converged = observed.tag(tags::LEDGER_DIGEST)
        == Some(crate::model::LedgerTags::unknown().ledger_digest.as_str());
    let pending = observed.masking_pending();
    desired
        .data
        .as_deref()
        .filter(|_| never_converged && pending)
}

/// What the database needs: nothing when its ledger digest says it is converged; otherwise the
/// migrations and seeds past its ledger, or a reset when the history diverged (blocked where
/// the spec or `--no-reset` forbids it).
fn plan_database(live: &Live) -> Result<Vec<Action>, PlanError> {
    let (desired, observed, options) = (live.desired, live.observed, live.options);
    let mut actions = Vec::new();
    let (reason, diff) = if options.flags.reset {
        ("reset requested".to_owned(), None)
    } else if let Some(changed) = masking_changed(desired, observed) {
        (changed, None)
    } else if observed.tag(tags::LEDGER_DIGEST) == Some(desired.ledger_digest().as_str()) {
        return Ok(actions);
    } else {
        let ledger = match &observed.ledger {
            LedgerRead::Read(ledger) => ledger,
            // Not readable yet (it is `creating`, `modifying`, …): plan from its tags; apply
            // reads the ledger under the lock once it is available.
            LedgerRead::NotRead
                if observed.status_class() == StatusClass::Busy || observed.missing_writer() =>
            {
                let applied = observed.schema_version().unwrap_or(0);
                let seeds = desired.seeds.iter().map(|s| s.path.clone()).collect();
                plan_pending(&mut actions, desired, applied, seeds);
                return Ok(actions);
            }
            // A copy an apply left before its data arrived (its ledger is not read: there may be
            // no database to read yet): what it will hold is its source's.
            LedgerRead::NotRead if let Some(data) = unfinished_copy(desired, observed) => {
                match source_of(live.input, desired, data) {
                    Ok((_, _, ledger)) => {
                        let seeds = seeds_missing(desired, ledger);
                        plan_pending(&mut actions, desired, ledger.max_version(), seeds);
                    }
                    Err(problem) => push(
                        &mut actions,
                        desired,
                        ActionKind::Blocked {
                            reason: format!("its copy cannot be finished: {problem}"),
                            diff: None,
                        },
                    ),
                }
                return Ok(actions);
            }
            LedgerRead::NotRead => {
                return Err(PlanError::LedgerNotRead(observed.cluster_id.clone()));
            }
            LedgerRead::Failed { kind, why } => {
                // A connection failure says so itself; a ledger that is there but unreadable
                // (altered by hand) is rebuilt by a reset.
                let reason = match kind {
                    LedgerFailure::Unreadable => format!(
                        "{why}; `envctl reset --branch {}` rebuilds it from scratch",
                        desired.branch
                    ),
                    LedgerFailure::Unreachable => why.clone(),
                };
                push(
                    &mut actions,
                    desired,
                    ActionKind::Blocked { reason, diff: None },
                );
                return Ok(actions);
            }
        };
        match divergence(desired, ledger) {
            Some(divergence) => divergence,
            None => {
                let seeds = seeds_missing(desired, ledger);
                plan_pending(&mut actions, desired, ledger.max_version(), seeds);
                return Ok(actions);
            }
        }
    };
    plan_reset(&mut actions, live, reason, diff);
    Ok(actions)
}

/// A reset, or what blocks it. A data branch resets by copying its source again, then runs
/// what the copy lacks.
fn plan_reset(actions: &mut Vec<Action>, live: &Live, reason: String, diff: Option<String>) {
    let (desired, options) = (live.desired, live.options);
    let why_blocked = if desired.protect {
        Some("the environment is protected (`lifecycle.protect`)".to_owned())
    } else if options.flags.no_reset {
        Some("`--no-reset` was given".to_owned())
    } else {
        None
    };
    let block = |actions: &mut Vec<Action>, why: &str, diff: Option<String>| {
        let way_out = if diff.is_some() {
            "; restore the applied file (the diff shows it) or add a new migration instead"
        } else {
            ""
        };
        push(
            actions,
            desired,
            ActionKind::Blocked {
                reason: format!("{reason}: a reset is needed but {why}{way_out}"),
                diff,
            },
        )
    };
    if let Some(why) = why_blocked {
        return block(actions, &why, diff);
    }
    let Some(data) = &desired.data else {
        push(
            actions,
            desired,
            ActionKind::Reset {
                reason,
                diff,
                reclone: None,
            },
        );
        return migrate_and_seed_from_scratch(actions, desired);
    };
    let (source, facts, ledger) = match source_of(live.input, desired, data) {
        Ok(found) => found,
        Err(problem) => {
            let why = format!("its source cannot be copied again: {problem}");
            return block(actions, &why, diff);
        }
    };
    if let Some((source_reason, _)) = divergence(desired, ledger) {
        let why = format!(
            "its source's applied migrations are not this branch's either ({source_reason})"
        );
        return block(actions, &why, diff);
    }
    let reclone = Some(clone_source(data, &source, facts));
    push(
        actions,
        desired,
        ActionKind::Reset {
            reason,
            diff,
            reclone,
        },
    );
    plan_pending(
        actions,
        desired,
        ledger.max_version(),
        seeds_missing(desired, ledger),
    );
}

/// The migrations past version `applied` and the `seeds` that have not run: from a ledger when
/// the history is intact, or, for an environment whose ledger cannot be read yet, from its
/// `envctl:schema-version` tag and every seed (a seed runs only when its checksum is new).
fn plan_pending(actions: &mut Vec<Action>, desired: &DesiredEnv, applied: u64, seeds: Vec<String>) {
    let pending: Vec<&Migration> = desired
        .migrations
        .iter()
        .filter(|m| m.version > applied)
        .collect();
    if !pending.is_empty() {
        push(actions, desired, migrate(applied, desired, &pending));
    }
    if !seeds.is_empty() {
        push(actions, desired, ActionKind::Seed { files: seeds });
    }
}

/// Why the applied history cannot be continued, with a unified diff where a file changed.
pub fn divergence(desired: &DesiredEnv, ledger: &Ledger) -> Option<(String, Option<String>)> {
    let mut reasons = Vec::new();
    let mut diffs = String::new();
    for applied in &ledger.migrations {
        match desired
            .catalogue
            .iter()
            .find(|m| m.version == applied.version)
        {
            None => {
                reasons.push(format!(
                    "migration {} removed after it was applied",
                    applied.name
                ));
                diffs.push_str(&unified_diff(&applied.sql, "", "/dev/null"));
            }
            Some(now) if now.checksum != applied.checksum => {
                reasons.push(format!(
                    "migration {} edited after it was applied",
                    applied.name
                ));
                diffs.push_str(&unified_diff(&applied.sql, &now.sql, &now.path));
            }
            Some(_) => {}
        }
    }
    let max_applied = ledger.max_version();
    for missing in desired
        .migrations
        .iter()
        .filter(|m| m.version < max_applied)
        .filter(|m| !ledger.migrations.iter().any(|a| a.version == m.version))
    {
        reasons.push(format!(
            "migration {} was added before the already-applied version {max_applied}",
            missing.name
        ));
    }
    if desired.target_version < max_applied {
        reasons.push(format!(
            "target version {} is below the applied version {max_applied}",
            desired.target_version
        ));
    }
    if reasons.is_empty() {
        None
    } else {
        Some((reasons.join("; "), (!diffs.is_empty()).then_some(diffs)))
    }
}

fn unified_diff(applied: &str, now: &str, path: &str) -> String {
    TextDiff::from_lines(applied, now)
        .unified_diff()
        .context_radius(3)
        .header("applied", path)
        .to_string()
}

/// A hash over the observed state in scope and the desired inputs (product.md): a saved plan is
/// stale when this changes. The hash of one compact JSON document with sorted keys, written
/// straight into the hasher piece by piece: a plan of 100 000 branches never holds it whole.
fn fingerprint(input: &PlanInput, options: &PlanOptions) -> String {
    use sha2::Digest;
    let desired_ids: std::collections::BTreeSet<&ClusterId> = input
        .scope
        .values()
        .filter_map(Wanted::desired)
        .map(|d| &d.cluster_id)
        .collect();
    let observed_in_scope = |o: &&ObservedEnv| {
        o.branch().is_some_and(|b| input.scope.contains_key(&b))
            || options.extra_deletions.contains_key(&o.cluster_id)
            || desired_ids.contains(&o.cluster_id)
    };
    let mut observed: Vec<serde_json::Value> = input
        .observed
        .iter()
        .filter(observed_in_scope)
        .map(|o| {
            let tags: BTreeMap<&String, &String> = o
                .tags
                .iter()
                .filter(|(k, _)| *k != tags::LAST_APPLIED)
                .collect();
            let mut one = json!({
                "id": o.cluster_id,
                "tags": tags,
                "scaling": o.scaling.map(|s| (s.min_acu, s.max_acu)),
                "status": o.status,
                "deletion_protection": o.deletion_protection,
            });
            // Only when they say something, so that other plans' fingerprints stay as they were.
            if o.writerless {
                one["writerless"] = json!(true);
            }
            if let Some(why) = &o.refused {
                one["refused"] = json!(why);
            }
            one
        })
        .collect();
    observed.sort_by_key(|v| v["id"].to_string());
    let extra: BTreeMap<&ClusterId, String> = options
        .extra_deletions
        .iter()
        .map(|(id, reason)| (id, reason.to_string()))
        .collect();
    let mut hasher = HashWriter(sha2::Sha256::new());
    // The keys of the document, in order.
    let write = |hasher: &mut HashWriter, text: &str| {
        std::io::Write::write_all(hasher, text.as_bytes()).expect("hashing does not fail");
    };
    let value = |hasher: &mut HashWriter, value: &serde_json::Value| {
        serde_json::to_writer(hasher, value).expect("hashing does not fail");
    };
    write(&mut hasher, "{\"deletions\":");
    value(&mut hasher, &json!(extra));
    if !options.leftover_deletions.is_empty() {
        write(&mut hasher, ",\"leftover_deletions\":");
        value(&mut hasher, &json!(options.leftover_deletions));
    }
    if !input.occupied.is_empty() {
        write(&mut hasher, ",\"occupied\":");
        value(&mut hasher, &json!(input.occupied));
    }
    write(&mut hasher, ",\"desired\":{");
    for (i, (branch, wanted)) in input.scope.iter().enumerate() {
        if i > 0 {
            write(&mut hasher, ",");
        }
        value(&mut hasher, &json!(branch));
        write(&mut hasher, ":");
        let one = match wanted {
            Wanted::Nothing => serde_json::Value::Null,
            Wanted::Unknown { reason } => json!({ "unknown": reason }),
            Wanted::Env(d) => json!({
                "id": d.cluster_id,
                "spec_hash": d.spec_hash,
                "migrations": d.migrations.iter().map(|m| (m.version, &m.checksum)).collect::<Vec<_>>(),
                "seeds": d.seeds.iter().map(|s| (&s.path, &s.checksum)).collect::<Vec<_>>(),
            }),
        };
        value(&mut hasher, &one);
    }
    write(&mut hasher, "},\"flags\":");
    value(&mut hasher, &json!(options.flags));
    write(&mut hasher, ",\"format_version\":");
    value(&mut hasher, &json!(FORMAT_VERSION));
    write(&mut hasher, ",\"observed\":");
    value(&mut hasher, &json!(observed));
    write(&mut hasher, ",\"prefix\":");
    value(&mut hasher, &json!(input.owner.prefix.as_str()));
    write(&mut hasher, ",\"provider\":");
    value(&mut hasher, &json!(input.provider));
    write(&mut hasher, ",\"repo\":");
    value(&mut hasher, &json!(input.owner.repo));
    write(&mut hasher, "}");
    hex::encode(hasher.0.finalize())
}

/// Feeds what is written into a hash.
struct HashWriter(sha2::Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
