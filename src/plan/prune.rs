//! What `prune` does with each live environment, and why: a pure function of its live tags, what
//! git says about its branch, and the time. The command gathers the git facts ([`BranchState`]),
//! calls [`verdict`] when it plans, and again on fresh facts right before each delete.
//!
//! The reasons, in the order they are tried: the branch is gone from `origin` (and, for the local
//! provider, from the local branches); its tip is in the default branch's history and is not
//! where it started (`envctl:base`: a branch pushed with no commits of its own is not merged);
//! no spec in its own tree covers it; its ttl has passed since `envctl:last-applied`. Whatever the
//! reason, the default branch's environment, a protected one and one with deletion protection on
//! are kept, and said so.

use std::time::SystemTime;

use serde::Serialize;

use crate::model::{ClusterId, DeleteReason, ObservedEnv, StatusClass, Wanted, tags, ttl_text};

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

/// What happened to one deletion of a prune.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PruneResult {
    pub branch: String,
    pub env: String,
    pub cluster_id: ClusterId,
    /// `deleted`, `gone` (someone else deleted it first), `kept` (its reason no longer held when
    /// looked at again), `failed` or `not_started` (a signal came first).
    pub status: &'static str,
    /// Why it was deleted or kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What went wrong (`failed`, `not_started`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    pub local_too: bool,
    pub branches: std::collections::BTreeMap<String, BranchState>,
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
                    "it was applied at {}, later than a minute before this clone last fetched every branch from origin (at {}): its branch may be newer than what this clone knows; {fresh_clone}",
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
                local_too: git.local_too,
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
            ledger: Default::default(),
        }
    }

    fn view(branches: &[(&str, BranchState)]) -> GitView {
        GitView {
            default_branch: "main".into(),
            local_too: false,
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
}
