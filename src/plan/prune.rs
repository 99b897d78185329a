//! What `prune` does with each live environment and each leftover of an interrupted create, and
//! why: pure functions of their live tags, what git says about their branches, and the time. The
//! command gathers the git facts ([`GitView`], with the help of [`wanted_of_trees`] and
//! [`missing_branch`]), calls [`decide`] when it plans (which fills
//! [`crate::plan::PlanOptions`]'s deletions, so the planner makes the whole plan), and calls
//! [`verdict`] again on fresh facts right before each delete.
//!
//! The reasons, in the order they are tried: the branch is gone from `origin` (and, for the local
//! provider, from the local branches); its tip is in the default branch's history and is not
//! where it started (`envctl:base`: a branch pushed with no commits of its own is not merged);
//! no spec in its own tree covers it; its ttl has passed since `envctl:last-applied`. Whatever the
//! reason, the default branch's environment, a protected one, one with deletion protection on
//! and one envctl will not touch (an id outside the prefix) are kept, and said so.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::model::{
    ClusterId, DeleteReason, Failure, Leftover, ObservedEnv, Owner, StatusClass, Wanted, tags,
    ttl_text,
};

/// An environment (or leftover) that a reason would delete but prune keeps, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// Always `keep` (as a plan action's `type`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `None` for a leftover whose branch cannot be told.
    pub branch: Option<String>,
    pub env: Option<String>,
    pub cluster_id: ClusterId,
    /// The reason that holds, e.g. `branch deleted: not on origin`.
    pub reason: String,
    /// Why it stays anyway.
    pub kept_because: String,
}

impl Kept {
    pub fn new(
        branch: Option<String>,
        env: Option<String>,
        cluster_id: ClusterId,
        reason: String,
        kept_because: String,
    ) -> Kept {
        Kept {
            kind: "keep",
            branch,
            env,
            cluster_id,
            reason,
            kept_because,
        }
    }
}

/// How one deletion of a prune ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneStatus {
    Deleted,
    /// Someone else deleted it first.
    Gone,
    /// Its reason no longer held when looked at again.
    Kept,
    Failed,
    /// A signal came first.
    NotStarted,
}

impl PruneStatus {
    /// As in `--json`: `deleted`, `gone`, `kept`, `failed`, `not_started`.
    pub fn as_str(self) -> &'static str {
        match self {
            PruneStatus::Deleted => "deleted",
            PruneStatus::Gone => "gone",
            PruneStatus::Kept => "kept",
            PruneStatus::Failed => "failed",
            PruneStatus::NotStarted => "not_started",
        }
    }
}

/// What happened to one deletion of a prune.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PruneResult {
    pub branch: String,
    pub env: String,
    pub cluster_id: ClusterId,
    pub status: PruneStatus,
    /// Why it was deleted or kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What went wrong (`failed`, `not_started`), serialized on one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// Why a prune deleted nothing at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub message: String,
    pub hint: Option<String>,
}

/// A prune's counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PruneSummary {
    pub delete: usize,
    pub kept: usize,
}

/// What `prune --json` prints: its plan, what it keeps, and once it ran, what happened.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport<'a> {
    pub format_version: u32,
    pub provider: &'a str,
    pub repo: &'a crate::model::RepoName,
    pub prefix: &'a str,
    /// `None` when git could not say (prune refused).
    pub default_branch: Option<&'a str>,
    pub dry_run: bool,
    /// `delete` actions, each with its reason (the plan JSON's shape).
    pub actions: &'a [crate::model::Action],
    pub summary: PruneSummary,
    pub kept: &'a [Kept],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<&'a [PruneResult]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refused>,
}

/// What git says about a live environment's branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchState {
    /// Not on `origin`, and not a local branch where those count.
    Gone,
    /// Not seen, but git could not have stored it: `why` (a ref `a` keeps `a/b` from being
    /// fetched, and the other way round). Only the ttl can delete its environment.
    Unseen(String),
    Live {
        /// The tips that count (`origin`'s; for the local provider the local branch's too), hex.
        tips: Vec<String>,
        /// Every tip is the default branch's tip or one of its ancestors.
        in_default: bool,
        /// What the branch's own tree wants (`None`: not read).
        wanted: Option<Wanted>,
    },
}

/// What git says, for every live environment's branch.
#[derive(Clone, Debug)]
pub struct GitView {
    pub default_branch: String,
    /// Local branches count as live (the local provider).
    pub local_branches_count: bool,
    pub branches: BTreeMap<String, BranchState>,
    /// Every branch git knows (`origin`'s and local ones), for telling whose an untagged
    /// leftover is by its name.
    pub known: BTreeSet<String>,
    /// When this clone last learned `origin`'s branches (see [`FETCH_MARGIN`]).
    pub fetched: Fetched,
}

/// When the clone last learned `origin`'s branches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// There is no `origin` (the local provider goes by local branches).
    NoOrigin,
    /// Nothing says (no reflog entry that vouches for a clone or a full fetch): git's reasons
    /// are not trusted.
    Unknown,
    At(SystemTime),
}

/// An environment applied later than this before the clone's last fetch may belong to a branch
/// the clone has not seen: git's reasons are not trusted for it (clocks of two machines differ by
/// a little).
pub const FETCH_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// What prune does with one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delete(DeleteReason),
    /// A reason holds, but the environment is kept: `why`.
    Kept {
        reason: DeleteReason,
        why: String,
    },
    /// No reason holds: `why` it stays.
    Stays(String),
}

/// Decides for one environment.
pub fn verdict(env: &ObservedEnv, git: &GitView, now: SystemTime) -> Verdict {
    let Some(branch) = env.branch() else {
        return Verdict::Stays("its `envctl:branch` tag cannot be read".into());
    };
    if env.status_class() == StatusClass::Deleting {
        return Verdict::Stays("it is being deleted".into());
    }
    let Some(reason) = reason(env, &branch, git, now) else {
        return Verdict::Stays(why_it_stays(env, &branch, git));
    };
    let kept = |why: String| Verdict::Kept {
        reason: reason.clone(),
        why,
    };
    if let Some(why) = &env.refused {
        return kept(why.clone());
    }
    if branch == git.default_branch {
        return kept("it is the default branch's environment, which prune never deletes".into());
    }
    if env.protected() {
        return kept(format!(
            "it is protected (`lifecycle.protect`); `envctl destroy --branch {branch} --force` deletes it"
        ));
    }
    if env.deletion_protection {
        return kept(format!(
            "its deletion protection is on (`cluster.deletionProtection`); `envctl destroy --branch {branch} --force` deletes it"
        ));
    }
    let from_git = !matches!(reason, DeleteReason::TtlExpired { .. });
    if from_git {
        // Git's reason is not trusted here; the ttl, which git does not decide, still is.
        let untrusted = |why: String| match ttl_reason(env, now) {
            Some(ttl) => Verdict::Delete(ttl),
            None => kept(why),
        };
        let fresh_clone = format!(
            "prune from a fresh clone (as the scheduled workflow does), or `envctl destroy --branch {branch}`"
        );
        match (git.fetched, last_applied(env)) {
            (Fetched::NoOrigin, _) => {}
            (Fetched::Unknown, _) => {
                return untrusted(format!(
                    "nothing says when this clone last fetched every branch from origin (no reflog entry of a clone or a full fetch), so its view of the branches may be old; {fresh_clone}"
                ));
            }
            (Fetched::At(fetched), Some(applied)) if applied + FETCH_MARGIN >= fetched => {
                return untrusted(format!(
                    "it was applied at {}, after (or less than a minute before) this clone's last full fetch from origin at {}: its branch may be newer than what this clone knows; {fresh_clone}",
                    humantime::format_rfc3339_seconds(applied),
                    humantime::format_rfc3339_seconds(fetched)
                ));
            }
            (Fetched::At(_), None) => {
                return untrusted(format!(
                    "it has no `envctl:last-applied` tag, so nothing says whether its branch is newer than what this clone knows; apply it once, or `envctl destroy --branch {branch}`"
                ));
            }
            (Fetched::At(_), Some(_)) => {}
        }
    }
    Verdict::Delete(reason)
}

fn last_applied(env: &ObservedEnv) -> Option<SystemTime> {
    humantime::parse_rfc3339(env.tag(tags::LAST_APPLIED)?).ok()
}

/// Why no reason holds, for `-v`.
fn why_it_stays(env: &ObservedEnv, branch: &str, git: &GitView) -> String {
    match git.branches.get(branch) {
        None => "its branch was not looked at".into(),
        Some(BranchState::Gone) => "its branch is gone, but that is no reason here".into(),
        Some(BranchState::Unseen(why)) => why.clone(),
        Some(BranchState::Live {
            tips, in_default, ..
        }) => match env.tag(tags::BASE) {
            _ if !*in_default || branch == git.default_branch => "its branch is live".into(),
            None => format!(
                "its branch is in `{}`'s history, but no `envctl:base` was recorded (the environment was made before the default branch was known), so merged cannot be told: it goes when the branch is deleted or its ttl passes",
                git.default_branch
            ),
            Some(base) if tips.iter().any(|t| t == base) => {
                "its branch has no commits of its own".into()
            }
            Some(_) => "its branch is live".into(),
        },
    }
}

/// The first reason that holds, guards aside.
fn reason(env: &ObservedEnv, branch: &str, git: &GitView, now: SystemTime) -> Option<DeleteReason> {
    match git.branches.get(branch)? {
        BranchState::Gone => {
            return Some(DeleteReason::BranchDeleted {
                local_branches_count: git.local_branches_count,
            });
        }
        BranchState::Unseen(_) => {}
        BranchState::Live {
            tips,
            in_default,
            wanted,
        } => {
            // Merged: in the default branch's history, with commits of its own (a tip at its
            // base was pushed with none). Without a recorded base it cannot be told.
            if *in_default
                && branch != git.default_branch
                && let Some(base) = env.tag(tags::BASE)
                && !tips.is_empty()
                && tips.iter().all(|tip| tip != base)
            {
                return Some(DeleteReason::BranchMerged {
                    into: git.default_branch.clone(),
                });
            }
            if let Some(Wanted::Nothing) = wanted {
                return Some(DeleteReason::NoSpec);
            }
        }
    }
    ttl_reason(env, now)
}

/// The ttl has passed since the last apply.
fn ttl_reason(env: &ObservedEnv, now: SystemTime) -> Option<DeleteReason> {
    let expires = env.expires_at()?;
    (now >= expires).then(|| DeleteReason::TtlExpired {
        ttl: env
            .tag(tags::TTL)
            .and_then(|t| t.parse().ok())
            .map(ttl_text)
            .unwrap_or_default(),
        since: env.tag(tags::LAST_APPLIED).unwrap_or_default().to_owned(),
    })
}

/// Which of a branch's trees says what it wants (`origin`'s tip, the local tip, the working
/// tree): covered by any of them is covered; else one that cannot say (invalid specs) keeps it
/// unknown; else none covers it. `None` when there is no tree.
pub fn wanted_of_trees(wants: Vec<Wanted>) -> Option<Wanted> {
    if let Some(i) = wants.iter().position(|w| matches!(w, Wanted::Env(_))) {
        return wants.into_iter().nth(i);
    }
    if let Some(i) = wants
        .iter()
        .position(|w| matches!(w, Wanted::Unknown { .. }))
    {
        return wants.into_iter().nth(i);
    }
    wants.into_iter().next()
}

/// What git says of a branch that has no tip: gone, or unseen when a ref under
/// `refs/remotes/origin` would keep a fetch from storing it (`origin/a` and `origin/a/b` cannot
/// both be stored: a fetch that met `a/b` on origin while `a` was still here failed for that one
/// ref, and wrote the others).
pub fn missing_branch<'a>(
    branch: &str,
    remote: impl IntoIterator<Item = &'a String>,
) -> BranchState {
    let inside = |path: &str, dir: &str| {
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
    };
    let clash = remote
        .into_iter()
        .find(|other| inside(branch, other) || inside(other, branch));
    match clash {
        Some(other) => BranchState::Unseen(format!(
            "its branch is not under `refs/remotes/origin`, but `origin/{other}` there would keep a fetch from storing it, so it may still be on origin; `git fetch --prune origin`, then prune again"
        )),
        None => BranchState::Gone,
    }
}

/// What prune decides on.
pub struct PruneInput<'a> {
    pub owner: &'a Owner,
    /// Every live environment of the owner.
    pub observed: &'a [ObservedEnv],
    /// Leftovers of interrupted creates under the owner's prefix.
    pub leftovers: &'a [Leftover],
    pub git: &'a GitView,
    pub now: SystemTime,
    /// A leftover younger than this may be a create still at work (`--wait-timeout`).
    pub leftover_min_age: Duration,
}

/// What prune decided, for the planner and for people.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decisions {
    /// Environments to delete, with their reasons ([`crate::plan::PlanOptions::extra_deletions`]).
    pub deletions: BTreeMap<ClusterId, DeleteReason>,
    /// Leftovers to delete, by name, with the branch whose create left each
    /// ([`crate::plan::PlanOptions::leftover_deletions`]).
    pub leftover_deletions: BTreeMap<ClusterId, String>,
    /// What a reason holds for but prune keeps, and why.
    pub kept: Vec<Kept>,
    /// Why everything else stays, a line each (for `-v`).
    pub stays: Vec<String>,
}

/// Decides for every live environment and leftover.
pub fn decide(input: &PruneInput) -> Decisions {
    let mut decisions = Decisions::default();
    for env in input.observed {
        let branch = env.branch();
        match verdict(env, input.git, input.now) {
            Verdict::Delete(reason) => {
                decisions.deletions.insert(env.cluster_id.clone(), reason);
            }
            Verdict::Kept { reason, why } => decisions.kept.push(Kept::new(
                branch,
                Some(env.env_name()),
                env.cluster_id.clone(),
                reason.to_string(),
                why,
            )),
            Verdict::Stays(why) => decisions.stays.push(format!(
                "keeps {} ({}): {why}",
                branch.as_deref().unwrap_or("-"),
                env.cluster_id
            )),
        }
    }
    // Untagged leftovers are told apart by their names: the id of a branch git knows.
    let mut ids: Option<BTreeMap<ClusterId, &String>> = None;
    for leftover in input.leftovers {
        let branch = leftover.branch.clone().or_else(|| {
            let ids = ids.get_or_insert_with(|| {
                let owner = input.owner;
                input
                    .git
                    .known
                    .iter()
                    .map(|b| (ClusterId::derive(&owner.prefix, &owner.repo, b), b))
                    .collect()
            });
            ids.get(&leftover.cluster_id).map(|b| (*b).clone())
        });
        decide_leftover(&mut decisions, leftover, branch, input);
    }
    decisions
}

/// Deletes a leftover of one of the owner's branches once it is old enough; keeps one whose name
/// is not its branch's id; leaves alone one that nothing says is the owner's.
fn decide_leftover(
    decisions: &mut Decisions,
    leftover: &Leftover,
    branch: Option<String>,
    input: &PruneInput,
) {
    let id = ClusterId::from_live(leftover.name.clone());
    let keep = |branch: String, why: String| {
        Kept::new(
            Some(branch),
            None,
            id.clone(),
            DeleteReason::Leftover.to_string(),
            why,
        )
    };
    let Some(branch) = branch else {
        // Under this prefix, but nothing says whose: possibly another repository's sharing the
        // server. Not ours to delete or to list.
        decisions.stays.push(format!(
            "leaves `{id}`: an untagged leftover of an interrupted create whose name is not the id of any branch git knows (another repository's?); drop it by hand if it is yours"
        ));
        return;
    };
    // Its name must be the id of the branch its tags name (as the delete checks again).
    let owner = input.owner;
    if ClusterId::derive(&owner.prefix, &owner.repo, &branch) != leftover.cluster_id {
        let why = format!(
            "its name is not the id envctl derives for {}; drop it by hand if it is yours",
            crate::model::code(&branch)
        );
        decisions.kept.push(keep(branch, why));
        return;
    }
    let age = leftover
        .created_at
        .and_then(|created| input.now.duration_since(created).ok());
    let young = leftover.created_at.is_some() && age.is_none_or(|a| a < input.leftover_min_age);
    if young {
        let why = format!(
            "it was made {} ago, less than --wait-timeout {}: a create may still be at work",
            crate::model::duration_text(age.unwrap_or_default()),
            crate::model::duration_text(input.leftover_min_age)
        );
        decisions.kept.push(keep(branch, why));
        return;
    }
    decisions.leftover_deletions.insert(id, branch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::encode_branch_tag;

    fn env(branch: &str, extra: &[(&str, &str)]) -> ObservedEnv {
        let mut tags: std::collections::BTreeMap<String, String> = [
            (tags::BRANCH, encode_branch_tag(branch).unwrap().as_str()),
            (tags::LAST_APPLIED, "2026-11-01T00:00:00Z"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            tags.insert(k.to_string(), v.to_string());
        }
        ObservedEnv {
            cluster_id: ClusterId::from_live(format!("envctl-{}", branch.replace('/', "-"))),
            tags,
            status: "available".into(),
            status_hint: None,
            scaling: None,
            deletion_protection: false,
            engine_version: None,
            database_name: None,
            database_user: None,
            created_at: None,
            endpoint: None,
            arn: None,
            writerless: false,
            refused: None,
            ledger: Default::default(),
        }
    }

    fn view(branches: &[(&str, BranchState)]) -> GitView {
        GitView {
            default_branch: "main".into(),
            local_branches_count: false,
            known: BTreeSet::new(),
            fetched: Fetched::NoOrigin,
            branches: branches
                .iter()
                .map(|(b, s)| (b.to_string(), s.clone()))
                .collect(),
        }
    }

    fn live(tip: &str, in_default: bool, wanted: Option<Wanted>) -> BranchState {
        BranchState::Live {
            tips: vec![tip.into()],
            in_default,
            wanted,
        }
    }

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn merged_needs_commits_of_its_own_and_a_recorded_base() {
        let now = at("2026-11-02T00:00:00Z");
        let git = view(&[("feature/a", live("c2", true, None))]);
        let merged = env("feature/a", &[(tags::BASE, "c1")]);
        assert_eq!(
            verdict(&merged, &git, now),
            Verdict::Delete(DeleteReason::BranchMerged {
                into: "main".into()
            })
        );
        // Pushed with no commits: its tip is where it started.
        let fresh = env("feature/a", &[(tags::BASE, "c2")]);
        assert_eq!(
            verdict(&fresh, &git, now),
            Verdict::Stays("its branch has no commits of its own".into())
        );
        // No base recorded: cannot tell.
        let unknown = env("feature/a", &[]);
        assert!(matches!(verdict(&unknown, &git, now), Verdict::Stays(_)));
    }

    #[test]
    fn an_id_outside_the_prefix_is_kept_whatever_the_reason() {
        let now = at("2026-11-02T00:00:00Z");
        let git = view(&[("feature/a", BranchState::Gone)]);
        let mut foreign = env("feature/a", &[]);
        foreign.cluster_id = ClusterId::from_live("prod-orders");
        foreign.refused = Some("its id `prod-orders` does not start with `envctl-`".into());
        match verdict(&foreign, &git, now) {
            Verdict::Kept { reason, why } => {
                assert!(matches!(reason, DeleteReason::BranchDeleted { .. }));
                assert!(why.contains("does not start with `envctl-`"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ttl_counts_from_the_last_apply() {
        let git = view(&[("feature/a", live("c2", false, None))]);
        let e = env("feature/a", &[(tags::TTL, "86400")]);
        assert!(matches!(
            verdict(&e, &git, at("2026-11-01T23:59:59Z")),
            Verdict::Stays(_)
        ));
        assert_eq!(
            verdict(&e, &git, at("2026-11-02T00:00:00Z")),
            Verdict::Delete(DeleteReason::TtlExpired {
                ttl: "1d".into(),
                since: "2026-11-01T00:00:00Z".into()
            })
        );
    }

    #[test]
    fn guards_keep_whatever_the_reason() {
        let now = at("2026-11-02T00:00:00Z");
        let git = view(&[
            ("main", BranchState::Gone),
            ("feature/p", BranchState::Gone),
        ]);
        let main = env("main", &[]);
        assert!(matches!(verdict(&main, &git, now), Verdict::Kept { .. }));
        let protected = env("feature/p", &[(tags::PROTECT, "true")]);
        assert!(matches!(
            verdict(&protected, &git, now),
            Verdict::Kept { .. }
        ));
        let mut locked = env("feature/p", &[]);
        locked.deletion_protection = true;
        assert!(matches!(verdict(&locked, &git, now), Verdict::Kept { .. }));
        let mut going = env("feature/p", &[]);
        going.status = "deleting".into();
        assert!(matches!(verdict(&going, &git, now), Verdict::Stays(_)));
    }

    #[test]
    fn git_reasons_are_not_trusted_for_what_was_applied_after_the_last_fetch() {
        let now = at("2026-11-02T00:00:00Z");
        let mut git = view(&[("feature/a", BranchState::Gone)]);
        let e = env("feature/a", &[]);
        // Applied 2026-11-01T00:00:00Z; fetched a day later: the view is newer, it goes.
        git.fetched = Fetched::At(at("2026-11-02T00:00:00Z"));
        assert!(matches!(verdict(&e, &git, now), Verdict::Delete(_)));
        // Fetched before it was applied (or within the margin): the branch may be newer.
        git.fetched = Fetched::At(at("2026-11-01T00:00:30Z"));
        let Verdict::Kept { why, .. } = verdict(&e, &git, now) else {
            panic!("kept")
        };
        assert!(why.contains("prune from a fresh clone"), "{why}");
        // Nothing says when: not trusted either.
        git.fetched = Fetched::Unknown;
        assert!(matches!(verdict(&e, &git, now), Verdict::Kept { .. }));
        // Nothing says when it was applied: kept too, whatever the fetch.
        let mut untimed = e.clone();
        untimed.tags.remove(tags::LAST_APPLIED);
        git.fetched = Fetched::At(at("2026-11-02T00:00:00Z"));
        let Verdict::Kept { why, .. } = verdict(&untimed, &git, now) else {
            panic!("kept")
        };
        assert!(why.contains("no `envctl:last-applied`"), "{why}");
        // A git reason not trusted, but the ttl has passed as well: the ttl decides.
        let expired = env("feature/a", &[(tags::TTL, "60")]);
        git.fetched = Fetched::Unknown;
        assert!(matches!(
            verdict(&expired, &git, now),
            Verdict::Delete(DeleteReason::TtlExpired { .. })
        ));
        git.fetched = Fetched::At(at("2026-11-01T00:00:30Z"));
        assert!(matches!(
            verdict(&expired, &git, now),
            Verdict::Delete(DeleteReason::TtlExpired { .. })
        ));
        // The ttl is not a git reason.
        let old = env("feature/a", &[(tags::TTL, "60")]);
        let mut git = view(&[("feature/a", live("c2", false, None))]);
        git.fetched = Fetched::Unknown;
        assert!(matches!(
            verdict(&old, &git, now),
            Verdict::Delete(DeleteReason::TtlExpired { .. })
        ));
    }

    #[test]
    fn an_uncovered_branch_goes_and_an_unreadable_tree_keeps_it() {
        let now = at("2026-11-01T01:00:00Z");
        let e = env("feature/a", &[]);
        let git = view(&[("feature/a", live("c2", false, Some(Wanted::Nothing)))]);
        assert_eq!(
            verdict(&e, &git, now),
            Verdict::Delete(DeleteReason::NoSpec)
        );
        let unknown = Wanted::Unknown {
            reason: "invalid".into(),
        };
        let git = view(&[("feature/a", live("c2", false, Some(unknown)))]);
        assert!(matches!(verdict(&e, &git, now), Verdict::Stays(_)));
    }

    fn owner() -> Owner {
        Owner {
            repo: crate::model::RepoName::parse("acme/shop").unwrap(),
            prefix: crate::model::Prefix::default(),
        }
    }

    fn leftover_of(branch: &str, tagged: bool, created: Option<&str>) -> Leftover {
        let id = ClusterId::derive(&owner().prefix, &owner().repo, branch);
        Leftover {
            name: format!("{id}-creating"),
            cluster_id: id,
            branch: tagged.then(|| branch.to_owned()),
            created_at: created.map(at),
            at_work: false,
        }
    }

    #[test]
    fn leftovers_go_when_old_enough_and_named_after_a_branch_of_ours() {
        let now = at("2026-11-02T00:00:00Z");
        let mut git = view(&[]);
        git.known = BTreeSet::from(["feature/known".to_owned()]);
        let old = leftover_of("feature/old", true, Some("2026-11-01T00:00:00Z"));
        let young = leftover_of("feature/young", true, Some("2026-11-01T23:59:00Z"));
        let untagged_known = leftover_of("feature/known", false, None);
        let untagged_unknown = leftover_of("feature/nobody", false, None);
        let mut misnamed = leftover_of("feature/a", true, None);
        misnamed.branch = Some("feature/b".into());
        let leftovers = [old, young, untagged_known, untagged_unknown, misnamed];
        let decisions = decide(&PruneInput {
            owner: &owner(),
            observed: &[],
            leftovers: &leftovers,
            git: &git,
            now,
            leftover_min_age: Duration::from_secs(15 * 60),
        });
        let deleted: Vec<&str> = decisions
            .leftover_deletions
            .values()
            .map(String::as_str)
            .collect();
        assert_eq!(deleted, ["feature/known", "feature/old"]);
        let kept: Vec<(&str, &str)> = decisions
            .kept
            .iter()
            .map(|k| (k.branch.as_deref().unwrap(), k.kept_because.as_str()))
            .collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept[0].0, "feature/young");
        assert!(kept[0].1.contains("less than --wait-timeout"), "{kept:?}");
        assert_eq!(kept[1].0, "feature/b");
        assert!(kept[1].1.contains("its name is not the id"), "{kept:?}");
        assert_eq!(decisions.stays.len(), 1);
        assert!(decisions.stays[0].contains("untagged leftover"));
        // The action's id is the leftover's own name.
        assert!(
            decisions
                .leftover_deletions
                .keys()
                .all(|name| name.as_str().ends_with("-creating"))
        );
    }

    #[test]
    fn a_branch_is_covered_when_any_of_its_trees_covers_it() {
        let unknown = || Wanted::Unknown {
            reason: "invalid".into(),
        };
        assert_eq!(
            wanted_of_trees(vec![Wanted::Nothing, unknown()]),
            Some(unknown())
        );
        assert_eq!(
            wanted_of_trees(vec![Wanted::Nothing, Wanted::Nothing]),
            Some(Wanted::Nothing)
        );
        assert_eq!(wanted_of_trees(Vec::new()), None);
    }

    #[test]
    fn a_branch_a_ref_clash_kept_out_of_the_fetch_is_unseen_not_gone() {
        let remote = ["a".to_owned(), "feature/x".to_owned()];
        assert!(matches!(
            missing_branch("a/b", &remote),
            BranchState::Unseen(why) if why.contains("`origin/a`")
        ));
        assert!(matches!(
            missing_branch("feature", &remote),
            BranchState::Unseen(why) if why.contains("`origin/feature/x`")
        ));
        assert_eq!(missing_branch("ab", &remote), BranchState::Gone);
        assert_eq!(missing_branch("feature-x", &remote), BranchState::Gone);
    }
}
