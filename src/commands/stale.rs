//! A plan from a view of a branch older than the one its environment was last applied from
//! (a re-run of an older push's workflow, pipelines finishing out of order, a clone that has not
//! fetched) would take the environment back: reset it to fewer migrations, replace it, or delete
//! it because an older commit had no spec for the branch. Every apply records the commit it read
//! the branch at (`envctl:commit`, `{sha}@{committer time}`); a plan whose commit is older blocks
//! that environment (its other actions go with those), naming the two commits; other
//! environments are planned as before, and a reset asked for by name is not held to it.
//!
//! Older means ([`older`]): an ancestor of the recorded commit, or not containing it while
//! `origin`'s branch does (commits of one's own on top of an older state); or, when git cannot
//! tell by ancestry (a rebase, a force-push, a record this clone does not have), committed no
//! later, or dated ahead of the clock. A branch read from a tree with no commit (git does not
//! know it), or an environment with no `envctl:commit` (made by an earlier envctl), is planned
//! as before.

use std::collections::BTreeMap;

use git2::Oid;

use crate::git::Git;
use crate::model::{ActionKind, ObservedEnv, Plan, SourceKind, Summary, tags};
use crate::settings::Scope;

/// The `envctl:commit` value of `commit`: `{sha}@{committer time, seconds}`; `None` when this
/// clone does not have it.
pub fn stamp(git: &Git, commit: Oid) -> Option<String> {
    git.commit_time(commit).map(|t| format!("{commit}@{t}"))
}

/// A recorded `envctl:commit`: the commit and its committer time.
fn parse(value: &str) -> Option<(Oid, i64)> {
    let (sha, time) = value.split_once('@')?;
    Some((Oid::from_str(sha).ok()?, time.parse().ok()?))
}

/// The commit each branch of `scope` is read at: its tip, or, for the checked-out branch read
/// from the working tree, `HEAD`. A branch git does not know has none.
pub fn read_commits(git: &Git, scope: &Scope) -> BTreeMap<String, Oid> {
    let current = git.current_branch().ok();
    scope
        .sources
        .iter()
        .filter_map(|(branch, source)| {
            let commit = match source {
                SourceKind::Commit(sha) => Oid::from_str(sha).ok()?,
                SourceKind::WorkingTree if current.as_deref() == Some(branch.as_str()) => {
                    git.head_commit()?
                }
                SourceKind::WorkingTree => return None,
            };
            Some((branch.clone(), commit))
        })
        .collect()
}

/// The `envctl:commit` to record per branch of `commits`: none where the branch's live
/// environment was applied from a newer commit (an older view's update or migration leaves the
/// newer record, so the next older view is still told apart), unless a reset was asked for by
/// name (`resets_asked`): the database is then the older view's.
pub fn stamps(
    git: &Git,
    commits: &BTreeMap<String, Oid>,
    observed: &[ObservedEnv],
    resets_asked: bool,
) -> BTreeMap<String, String> {
    commits
        .iter()
        .filter(|(branch, commit)| {
            resets_asked
                || observed
                    .iter()
                    .filter(|o| o.branch().as_deref() == Some(branch.as_str()))
                    .filter_map(|o| o.tag(tags::COMMIT))
                    .all(|recorded| older(git, branch, **commit, recorded).is_none())
        })
        .filter_map(|(branch, commit)| Some((branch.clone(), stamp(git, *commit)?)))
        .collect()
}

/// Why `view`, the commit `branch` is read at, is older than `recorded` (the commit its
/// environment was last applied from), or `None` when it is not (or git cannot tell). Ancestry
/// settles it where git has both commits: the view contains the record (newer), or the record
/// contains the view (older), or `origin`'s branch contains the record and the view does not
/// (a clone behind the branch, with commits of its own on top of an older state). Otherwise (a
/// rebase, a force-push, a record this clone does not have) committer times do, the view's
/// strictly later; a record dated ahead of the clock says nothing, and a view dated ahead of it
/// is not taken for newer.
pub fn older(git: &Git, branch: &str, view: Oid, recorded: &str) -> Option<String> {
    let (live, live_time) = parse(recorded)?;
    if view == live {
        return None;
    }
    let view_time = git.commit_time(view)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let ahead = |t: i64| t > now.saturating_add(60);
    let known = git.commit_time(live).is_some();
    let contains = |ancestor: Oid, of: Oid| git.is_ancestor(ancestor, of).unwrap_or(false);
    let behind_origin = || {
        git.origin_tip(branch)
            .is_some_and(|tip| tip != view && contains(live, tip))
    };
    let why = if known && contains(live, view) {
        return None;
    } else if known && contains(view, live) {
        "older than"
    } else if known && behind_origin() {
        "not containing"
    } else if ahead(live_time) {
        return None;
    } else if ahead(view_time) || view_time <= live_time {
        "older than"
    } else {
        return None;
    };
    let when = |t: i64| {
        u64::try_from(t).map_or_else(
            |_| t.to_string(),
            |s| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
                )
                .to_string()
            },
        )
    };
    let short = |oid: Oid| oid.to_string()[..12].to_owned();
    Some(format!(
        "this run reads the branch at commit {} ({}), {why} {} ({}), which its environment was last applied from{}",
        short(view),
        when(view_time),
        short(live),
        when(live_time),
        match (known, why) {
            (false, _) => " and which this clone does not have",
            (true, "not containing") => " and `origin`'s branch has",
            _ => "",
        }
    ))
}

/// Blocks every reset, replace and delete in `plan` of an environment last applied from a newer
/// commit of its branch than `commits` says this run reads (see the module's comment), and the
/// rest of that environment's actions with it. A reset asked for by name (`envctl reset`,
/// `--reset`: `resets_asked`) is not held to the newer commit.
pub fn guard(
    plan: &mut Plan,
    observed: &[ObservedEnv],
    desired: &BTreeMap<String, crate::model::Wanted>,
    git: &Git,
    commits: &BTreeMap<String, Oid>,
    resets_asked: bool,
) {
    let mut blocked = Vec::new();
    for action in &mut plan.actions {
        let what = match &action.kind {
            ActionKind::Reset { .. } if resets_asked => continue,
            ActionKind::Reset { .. } => "reset",
            ActionKind::Replace { .. } => "replace",
            ActionKind::Delete { .. } => "delete",
            _ => continue,
        };
        let Some(view) = commits.get(&action.branch) else {
            continue;
        };
        let Some(recorded) = observed
            .iter()
            .find(|o| o.cluster_id == action.cluster_id)
            .and_then(|o| o.tag(tags::COMMIT))
        else {
            continue;
        };
        let Some(why) = older(git, &action.branch, *view, recorded) else {
            continue;
        };
        let branch = &action.branch;
        let undo = match desired.get(branch).and_then(|w| w.desired()).is_some() {
            true => format!(
                "apply from `{branch}`'s newest commit (`git fetch`); push this commit first if it rewrites the branch (an amend, a rebase); or, if this older state is what it should be, `envctl reset --branch {branch}` (a reset asked for by name is not held to the newer commit) or `envctl destroy --branch {branch}` and apply again"
            ),
            false => format!(
                "apply from `{branch}`'s newest commit (`git fetch`), or `envctl destroy --branch {branch}` if it should go"
            ),
        };
        action.kind = ActionKind::Blocked {
            reason: format!("would {what} it from an older view of its branch: {why}; {undo}"),
            diff: None,
        };
        blocked.push((action.branch.clone(), action.cluster_id.clone()));
    }
    if blocked.is_empty() {
        return;
    }
    // A blocked environment runs nothing: the migrations and seeds that would follow the reset
    // go from the plan too, as the planner leaves them out of any blocked environment's.
    plan.actions.retain(|a| {
        matches!(a.kind, ActionKind::Blocked { .. })
            || !blocked
                .iter()
                .any(|(b, id)| *b == a.branch && *id == a.cluster_id)
    });
    plan.summary = Summary::of(&plan.actions);
}
