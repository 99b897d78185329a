//! What git says for a prune: whether this clone can be trusted to say which branches are gone
//! (not shallow, an `origin` of this repository that fetches every branch), the default branch,
//! and per environment's branch its tips, whether they are in the default branch's history, and
//! what its trees want (each distinct snapshot read once, through [`Settings::loader`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::git::{Git, Refs};
use crate::model::Owner;
use crate::plan::prune::{BranchState, Fetched, GitView, missing_branch, wanted_of_trees};
use crate::report::error_chain;
use crate::settings::{Settings, Tree, default_branch};

/// Why git cannot be trusted for this prune: nothing is deleted.
#[derive(Debug, thiserror::Error)]
#[error("{message} (hint: {hint})")]
pub(super) struct Untrusted {
    pub message: String,
    pub hint: String,
}

const NOTHING: &str = "; nothing was deleted";
const FETCH_ALL: &str = "in GitHub Actions, check out with `fetch-depth: 0`";

fn untrusted(message: impl Into<String>, hint: impl Into<String>) -> Untrusted {
    Untrusted {
        message: format!("{}{NOTHING}", message.into()),
        hint: hint.into(),
    }
}

/// What git says, read once.
pub(super) struct Facts {
    pub view: GitView,
    pub notes: Vec<String>,
}

/// Reads what prune needs from git about `branches`, or says why it cannot be trusted.
/// `local_branches_count`: local branches are live too (the local provider), the current one
/// even before its first commit, with its wants read from the working tree as apply reads them.
pub(super) fn read_git(
    settings: &Settings,
    branches: &BTreeSet<String>,
    local_branches_count: bool,
) -> Result<Facts, Untrusted> {
    let Some(git) = settings.git.as_ref() else {
        return Err(untrusted(
            format!("`{}` is not a git repository", settings.root.display()),
            "run prune in a clone of the repository",
        ));
    };
    let fsck = "check the repository with `git fsck`";
    git.check_loose_refs()
        .map_err(|e| untrusted(error_chain(&e), fsck))?;
    let refs = settings
        .refs()
        .map_err(|e| untrusted(format!("{e:#}"), fsck))?;
    let owner = settings.owner();
    let notes = check_clone(git, refs, &owner, local_branches_count)?;
    let Some(default) = default_branch(git) else {
        return Err(untrusted(
            "cannot tell the default branch, which prune never deletes and measures \"merged\" against",
            "set ENVCTL_DEFAULT_BRANCH (e.g. `main`), or run `git remote set-head origin --auto`",
        ));
    };
    let default_tips = tips_of(refs, &default, local_branches_count);
    if default_tips.is_empty() {
        let place = match local_branches_count {
            true => "neither on `origin` nor a local branch",
            false => "not on `origin`",
        };
        return Err(untrusted(
            format!("the default branch `{default}` is {place}"),
            format!(
                "check ENVCTL_DEFAULT_BRANCH and `origin/HEAD`, or fetch `{default}` ({FETCH_ALL})"
            ),
        ));
    }
    let known: BTreeSet<String> = refs
        .remote
        .keys()
        .chain(refs.local.keys())
        .cloned()
        .collect();
    let reading = Reading {
        settings,
        git,
        refs,
        default_tips: &default_tips,
        local_branches_count,
    };
    Ok(Facts {
        view: GitView {
            default_branch: default,
            local_branches_count,
            branches: reading.branch_states(branches)?,
            known,
            fetched: match (
                git.has_origin(),
                git.fetched_at(owner.repo.as_str(), SystemTime::now()),
            ) {
                (false, _) => Fetched::NoOrigin,
                (true, Some(at)) => Fetched::At(at),
                (true, None) => Fetched::Unknown,
            },
        },
        notes,
    })
}

/// The tips of a branch that count: `origin`'s, and the local one where local branches count.
fn tips_of(refs: &Refs, branch: &str, local_branches_count: bool) -> Vec<git2::Oid> {
    let mut tips: Vec<git2::Oid> = refs.remote.get(branch).copied().into_iter().collect();
    if local_branches_count
        && let Some(local) = refs.local.get(branch)
        && !tips.contains(local)
    {
        tips.push(*local);
    }
    tips
}

/// Whether this clone can say which branches are gone: not shallow, an `origin` of this
/// repository that fetches every branch and has some (without `origin`, only where local
/// branches count). Returns notes worth showing.
fn check_clone(
    git: &Git,
    refs: &Refs,
    owner: &Owner,
    local_branches_count: bool,
) -> Result<Vec<String>, Untrusted> {
    // A shallow clone cannot answer ancestry, and one made by a default checkout holds only the
    // branch it checked out: whatever it lacks would look deleted.
    if git.is_shallow() {
        return Err(untrusted(
            "this clone is shallow: it may lack branches, and cannot tell which were merged",
            format!(
                "fetch the whole history and every branch (`git fetch --unshallow origin`; {FETCH_ALL})"
            ),
        ));
    }
    if !git.has_origin() {
        if !local_branches_count {
            return Err(untrusted(
                "there is no `origin` remote, so prune cannot tell which branches were deleted",
                "run prune in a clone of the repository (`git remote add origin URL && git fetch origin`)",
            ));
        }
        return Ok(vec![
            "note: there is no `origin` remote: local branches alone say which branches are live"
                .to_owned(),
        ]);
    }
    check_origin_urls(git, owner)?;
    if !git.fetches_every_branch() {
        return Err(untrusted(
            "this clone does not fetch every branch of `origin` (a single-branch clone?), so a branch it lacks would look deleted",
            format!(
                "`git config remote.origin.fetch '+refs/heads/*:refs/remotes/origin/*' && git fetch origin` ({FETCH_ALL})"
            ),
        ));
    }
    if refs.remote.is_empty() {
        return Err(untrusted(
            "`origin` has no branches in this clone, so every environment's branch would look deleted",
            format!("fetch them first (`git fetch origin`; {FETCH_ALL})"),
        ));
    }
    Ok(Vec::new())
}

/// Every URL `origin` is configured with, as written, and the one fetches go to after
/// `insteadOf`: each must name the repository.
fn check_origin_urls(git: &Git, owner: &Owner) -> Result<(), Untrusted> {
    for url in git.origin_urls() {
        if !crate::git::is_hosted_url(&url) {
            continue;
        }
        let hint = format!(
            "run prune in a clone of `{}`, or check --repo, ENVCTL_REPO and GITHUB_REPOSITORY",
            owner.repo
        );
        match crate::git::repo_name_from_url(&url) {
            Some(name) if name.eq_ignore_ascii_case(owner.repo.as_str()) => {}
            Some(name) => {
                return Err(untrusted(
                    format!(
                        "`origin` is `{name}`, but the environments are `{}`'s: a clone of another repository (a fork?) cannot say which of its branches are gone",
                        owner.repo
                    ),
                    hint,
                ));
            }
            None => {
                let shown = match url.contains("://") {
                    true => crate::report::redact_url(&url),
                    false => url.clone(),
                };
                return Err(untrusted(
                    format!(
                        "`origin`'s URL `{shown}` names no OWNER/NAME, so prune cannot tell it is `{}`",
                        owner.repo
                    ),
                    hint,
                ));
            }
        }
    }
    Ok(())
}

/// What reading each branch's state needs.
struct Reading<'a> {
    settings: &'a Settings,
    git: &'a Git,
    refs: &'a Refs,
    default_tips: &'a [git2::Oid],
    local_branches_count: bool,
}

impl Reading<'_> {
    /// What git says of each branch: gone (or unseen), or live with whether it is in the
    /// default branch's history and what its trees want (each distinct snapshot read once).
    fn branch_states(
        &self,
        branches: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, BranchState>, Untrusted> {
        // The working tree's branch, for the local provider: live even before its first commit.
        let current = match self.local_branches_count {
            true => self.git.current_branch().ok(),
            false => None,
        };
        let mut loader = self.settings.loader();
        let mut states = BTreeMap::new();
        for branch in branches {
            let tips = tips_of(self.refs, branch, self.local_branches_count);
            let is_current = current.as_deref() == Some(branch.as_str());
            if tips.is_empty() && !is_current {
                states.insert(
                    branch.clone(),
                    missing_branch(branch, self.refs.remote.keys()),
                );
                continue;
            }
            let in_default = !tips.is_empty() && self.all_in_default(&tips)?;
            let trees = is_current
                .then_some(Tree::WorkingTree)
                .into_iter()
                .chain(tips.iter().map(|tip| Tree::Commit(*tip)));
            let wants = trees.map(|tree| loader.wanted(branch, tree)).collect();
            let state = BranchState::Live {
                tips: tips.iter().map(git2::Oid::to_string).collect(),
                in_default,
                wanted: wanted_of_trees(wants),
            };
            states.insert(branch.clone(), state);
        }
        Ok(states)
    }

    /// Whether every tip is the default branch's tip or one of its ancestors.
    fn all_in_default(&self, tips: &[git2::Oid]) -> Result<bool, Untrusted> {
        for tip in tips {
            let mut merged = false;
            for default_tip in self.default_tips {
                merged |= self.git.is_ancestor(*tip, *default_tip).map_err(|e| {
                    untrusted(
                        error_chain(&e),
                        format!("check the repository with `git fsck`, and fetch the whole history ({FETCH_ALL})"),
                    )
                })?;
            }
            if !merged {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
