//! Arguments + environment + repository → resolved settings: the repository root and name, the id
//! prefix, git, the current branch, and which files each branch in scope reads (its own tree, or
//! the working tree). No command logic here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cli::Cli;
use crate::git::Git;
use crate::model::{
    Owner, Prefix, RepoName, SourceKind, Wanted, check_branch_name, encode_branch_tag,
};
use crate::report::UserError;
use crate::spec::{self, Catalog, Diagnostic, RepoFiles};

/// What every command that touches environments needs.
pub struct Settings {
    pub root: PathBuf,
    pub repo: RepoName,
    /// The repository as it was given (`--repo`, GITHUB_REPOSITORY or `origin`), before `repo`
    /// lower-cased it: GitHub's OIDC `sub` claim keeps the case, and IAM compares it exactly.
    pub repo_spelled: String,
    pub prefix: Prefix,
    pub git: Option<Git>,
    /// Every branch tip, read once on first use (thousands of branches are one listing).
    refs: std::cell::OnceCell<crate::git::Refs>,
}

/// The desired state of the branches in scope, and where each was read from.
pub struct Scope {
    pub desired: BTreeMap<String, Wanted>,
    pub sources: BTreeMap<String, SourceKind>,
    /// Branches that git does not know, read from the working tree.
    pub unknown_to_git: Vec<String>,
}

/// Why a scope could not be loaded.
pub enum ScopeError {
    /// Specs are invalid: nothing may be applied.
    Invalid(Vec<Diagnostic>),
    Other(anyhow::Error),
}

/// What a branch whose tree has invalid specs does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidSpecs {
    /// Stop the command and print every diagnostic (`validate`, a plan of named branches).
    Refuse,
    /// The branch's environment is blocked; the other branches go on (`--all`).
    Block,
}

impl From<anyhow::Error> for ScopeError {
    fn from(e: anyhow::Error) -> ScopeError {
        ScopeError::Other(e)
    }
}

/// The repository root: the git working tree that holds `dir` (so envctl works the same from a
/// subdirectory), else `dir` itself.
pub fn repository_root(dir: &Path) -> anyhow::Result<(PathBuf, Option<Git>)> {
    if !dir.is_dir() {
        return Err(UserError::with_hint(
            format!("`{}` is not a directory", dir.display()),
            "pass `-C` the repository's root",
        )
        .into());
    }
    let git = Git::open(dir).ok();
    let root = git
        .as_ref()
        .and_then(Git::workdir)
        .unwrap_or_else(|| dir.to_owned());
    Ok((root, git))
}

/// Reads the working tree's snapshot, refusing a tree without `environments/`: reading it as
/// "no specs" would plan to delete every environment.
pub fn read_working_tree(root: &Path) -> anyhow::Result<RepoFiles> {
    if !root.join("environments").is_dir() {
        return Err(UserError::with_hint(
            format!("there is no `environments/` directory in `{}`", root.display()),
            "run envctl in a repository with environment files, or pass `-C DIR`; `envctl schema` describes the format",
        )
        .into());
    }
    crate::source::read_working_tree(root)
        .with_context(|| format!("cannot read the repository at `{}`", root.display()))
}

impl Settings {
    pub fn resolve(cli: &Cli) -> anyhow::Result<Settings> {
        let (root, git) = repository_root(&cli.directory)?;
        let repo_text = cli
            .repo
            .clone()
            .or_else(|| {
                std::env::var("GITHUB_REPOSITORY")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| git.as_ref().and_then(Git::origin_repo_name));
        let Some(repo_text) = repo_text else {
            let hint = match &git {
                Some(_) => "pass `--repo OWNER/NAME`, set ENVCTL_REPO, or add an `origin` remote"
                    .to_owned(),
                None => format!(
                    "run envctl inside your repository (or pass `-C DIR`): `{}` is in no git repository; without one, pass `--repo OWNER/NAME`",
                    root.display()
                ),
            };
            return Err(UserError::with_hint(
                "cannot tell which repository owns the environments",
                hint,
            )
            .into());
        };
        let repo = RepoName::parse(&repo_text).map_err(UserError::new)?;
        let prefix = match std::env::var("ENVCTL_PREFIX") {
            Ok(p) if !p.is_empty() => Prefix::parse(&p).map_err(|e| {
                UserError::with_hint(format!("ENVCTL_PREFIX: {e}"), "unset it to use `envctl`")
            })?,
            _ => Prefix::default(),
        };
        Ok(Settings {
            root,
            repo,
            repo_spelled: repo_text.trim().to_owned(),
            prefix,
            git,
            refs: std::cell::OnceCell::new(),
        })
    }

    /// The same repository, owner and prefix, with git opened again: refs and snapshots are read
    /// afresh (prune decides again right before each delete).
    pub fn reopened(&self) -> Result<Settings, crate::git::GitError> {
        let git = match &self.git {
            Some(_) => Some(Git::open(&self.root)?),
            None => None,
        };
        Ok(Settings {
            root: self.root.clone(),
            repo: self.repo.clone(),
            repo_spelled: self.repo_spelled.clone(),
            prefix: self.prefix.clone(),
            git,
            refs: std::cell::OnceCell::new(),
        })
    }

    /// Every branch tip git knows (`origin`'s and local), read once. Empty without git.
    pub fn refs(&self) -> anyhow::Result<&crate::git::Refs> {
        if let Some(refs) = self.refs.get() {
            return Ok(refs);
        }
        let refs = match &self.git {
            Some(git) => git.refs()?,
            None => crate::git::Refs::default(),
        };
        Ok(self.refs.get_or_init(|| refs))
    }

    /// Every branch git knows, sorted: `origin`'s and local ones, by name.
    pub fn branch_names(&self) -> anyhow::Result<Vec<String>> {
        let refs = self.refs()?;
        let names: std::collections::BTreeSet<&String> =
            refs.remote.keys().chain(refs.local.keys()).collect();
        Ok(names.into_iter().cloned().collect())
    }

    /// The current branch: the working tree's, or in GitHub Actions the event's.
    pub fn current_branch(&self) -> anyhow::Result<String> {
        match &self.git {
            Some(git) => Ok(git.current_branch()?),
            None => Err(UserError::with_hint(
                format!(
                    "`{}` is not a git repository, so there is no current branch",
                    self.root.display()
                ),
                "run envctl inside your repository (or pass `-C DIR`), or pass `--branch BRANCH`",
            )
            .into()),
        }
    }

    /// The branch a command works on: `--branch`, else the current one.
    pub fn branch_or_current(&self, branch: Option<&str>) -> anyhow::Result<String> {
        let branch = match branch {
            Some(b) => b.to_owned(),
            None => self.current_branch()?,
        };
        check_branch_name(&branch).map_err(UserError::new)?;
        encode_branch_tag(&branch).map_err(UserError::new)?;
        Ok(branch)
    }

    /// This run's owner: the repository and the id prefix.
    pub fn owner(&self) -> Owner {
        Owner {
            repo: self.repo.clone(),
            prefix: self.prefix.clone(),
        }
    }

    /// Loads what each branch wants. The current branch reads the working tree; others read their
    /// own tree through git (`origin/B`, else `B`); a branch git does not know reads the working
    /// tree. A tree with invalid specs stops everything, or under [`InvalidSpecs::Block`] makes
    /// its branch [`Wanted::Unknown`].
    pub fn load_scope(
        &self,
        branches: &[String],
        invalid: InvalidSpecs,
    ) -> Result<Scope, ScopeError> {
        let current = self.git.as_ref().and_then(|g| g.current_branch().ok());
        let refs = match &self.git {
            Some(_) => Some(self.refs()?),
            None => None,
        };
        let mut loader = self.loader();
        let mut diagnostics = Vec::new();
        let mut scope = Scope {
            desired: BTreeMap::new(),
            sources: BTreeMap::new(),
            unknown_to_git: Vec::new(),
        };
        for branch in branches {
            let is_current = current.as_deref() == Some(branch.as_str());
            let tip = refs.filter(|_| !is_current).and_then(|r| r.tip(branch));
            let tree = match tip {
                Some(tip) => {
                    scope
                        .sources
                        .insert(branch.clone(), SourceKind::Commit(tip.to_string()));
                    Tree::Commit(tip)
                }
                None => {
                    if !is_current {
                        scope.unknown_to_git.push(branch.clone());
                    }
                    scope
                        .sources
                        .insert(branch.clone(), SourceKind::WorkingTree);
                    Tree::WorkingTree
                }
            };
            let wanted = match (loader.catalog(tree, branch), invalid) {
                (Ok(Ok(catalog)), _) => wanted_by(catalog, branch, self),
                (Ok(Err(found)), InvalidSpecs::Block) => invalid_tree(found, tree),
                (Ok(Err(found)), InvalidSpecs::Refuse) => {
                    // A branch's own files, not the working tree's: say so.
                    diagnostics.extend(found.iter().cloned().map(|mut d| {
                        if let Tree::Commit(_) = tree {
                            d.message = format!("{} (in branch `{branch}`)", d.message);
                        }
                        d
                    }));
                    continue;
                }
                // One branch's unreadable tree (a blob missing from a partial clone) blocks
                // that branch under `--all`.
                (Err(e), InvalidSpecs::Block) if tip.is_some() => unreadable_tree(&e),
                (Err(e), _) => return Err(ScopeError::Other(e)),
            };
            scope.desired.insert(branch.clone(), wanted);
        }
        if diagnostics.is_empty() {
            Ok(scope)
        } else {
            diagnostics.sort();
            diagnostics.dedup();
            Err(ScopeError::Invalid(diagnostics))
        }
    }

    /// A reader of what branches want in their trees, for one command: each distinct snapshot
    /// is read and checked once.
    pub fn loader(&self) -> Loader<'_> {
        Loader {
            settings: self,
            snapshots: Snapshots::default(),
            working_tree: None,
        }
    }

    pub fn working_tree_files(&self) -> anyhow::Result<RepoFiles> {
        read_working_tree(&self.root)
    }

    /// The commit a branch environment records as `envctl:base`, where the branch started: its
    /// tip when that is in the default branch's history (`origin`'s or the local one: the branch
    /// has no commits of its own), else the merge base of the two. `None` when git does not know
    /// both.
    pub fn base_commit(&self, branch: &str) -> Option<String> {
        let git = self.git.as_ref()?;
        let default = default_branch(git)?;
        let tip = git.branch_tip(branch)?;
        let default_tips = git.branch_tips(&default);
        if default_tips
            .iter()
            .any(|d| git.is_ancestor(tip, *d).unwrap_or(false))
        {
            return Some(tip.to_string());
        }
        git.merge_base(tip, *default_tips.first()?)
    }

    /// Whether the branch's tip is in the default branch's history (it has no commits of its own
    /// now): its recorded base then moves to its tip.
    pub fn has_no_commits_of_its_own(&self, branch: &str) -> bool {
        self.base_commit(branch)
            .zip(self.git.as_ref().and_then(|g| g.branch_tip(branch)))
            .is_some_and(|(base, tip)| base == tip.to_string())
    }
}

/// What decides a commit's snapshot (see [`Git::snapshot_key`]).
type SnapshotKey = (Option<git2::Oid>, Option<git2::Oid>);

/// The snapshots read so far, by key, and the key of each commit seen (many branches at one
/// commit read it once).
#[derive(Default)]
struct Snapshots {
    by_key: BTreeMap<SnapshotKey, Result<Catalog, Vec<Diagnostic>>>,
    key_of: std::collections::HashMap<git2::Oid, SnapshotKey>,
}

/// Which tree a branch's wants are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// The working tree, uncommitted changes included.
    WorkingTree,
    /// A commit, read through git with no checkout.
    Commit(git2::Oid),
}

/// Reads what branches want in their trees, each distinct snapshot once: many branches share a
/// commit, or at least their `environments/` and `schemas/`.
pub struct Loader<'a> {
    settings: &'a Settings,
    snapshots: Snapshots,
    working_tree: Option<Result<Catalog, Vec<Diagnostic>>>,
}

impl Loader<'_> {
    /// The checked catalog of a tree (its specs may be invalid); an error when the tree cannot be
    /// read at all.
    pub fn catalog(
        &mut self,
        tree: Tree,
        branch: &str,
    ) -> anyhow::Result<&Result<Catalog, Vec<Diagnostic>>> {
        match tree {
            Tree::WorkingTree => {
                if self.working_tree.is_none() {
                    let files = self.settings.working_tree_files()?;
                    self.working_tree = Some(spec::load(&files));
                }
                Ok(self.working_tree.as_ref().expect("loaded above"))
            }
            Tree::Commit(tip) => {
                let git = self.settings.git.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("internal error: a commit without a git repository")
                })?;
                let key = self.snapshots.read(git, tip, branch)?;
                Ok(&self.snapshots.by_key[&key])
            }
        }
    }

    /// What `branch` wants in `tree`; a tree that cannot be read or has invalid specs cannot say
    /// ([`Wanted::Unknown`]).
    pub fn wanted(&mut self, branch: &str, tree: Tree) -> Wanted {
        let settings = self.settings;
        match self.catalog(tree, branch) {
            Ok(Ok(catalog)) => wanted_by(catalog, branch, settings),
            Ok(Err(found)) => invalid_tree(found, tree),
            Err(e) => unreadable_tree(&e),
        }
    }
}

impl Snapshots {
    /// Reads and checks the snapshot of commit `tip` unless one with the same key was; returns
    /// its key.
    fn read(
        &mut self,
        git: &Git,
        tip: git2::Oid,
        branch: &str,
    ) -> Result<SnapshotKey, crate::git::GitError> {
        let key = match self.key_of.get(&tip) {
            Some(key) => *key,
            None => {
                let key = git.snapshot_key(tip)?;
                self.key_of.insert(tip, key);
                key
            }
        };
        if let std::collections::btree_map::Entry::Vacant(entry) = self.by_key.entry(key) {
            let tree = git.tree_at(tip, branch)?;
            entry.insert(spec::load(&tree.files));
        }
        Ok(key)
    }
}

/// What a valid catalog wants for `branch`.
fn wanted_by(catalog: &Catalog, branch: &str, settings: &Settings) -> Wanted {
    match catalog.desired_for(branch, &settings.repo, &settings.prefix) {
        Ok(None) => Wanted::Nothing,
        // Refused here, not half-way through an apply: its ownership tag cannot be written.
        Ok(Some(desired)) => match encode_branch_tag(branch) {
            Ok(_) => Wanted::Env(Box::new(desired)),
            Err(reason) => Wanted::Unknown { reason },
        },
        // Two specs tie for it: that branch's problem, not the others'.
        Err(reason) => Wanted::Unknown { reason },
    }
}

/// A branch whose tree cannot be read.
fn unreadable_tree(e: &anyhow::Error) -> Wanted {
    Wanted::Unknown {
        reason: format!(
            "its tree cannot be read: {}",
            crate::report::error_chain(e.as_ref())
        ),
    }
}

/// `ENVCTL_DEFAULT_BRANCH`, else `origin/HEAD`.
pub fn default_branch(git: &Git) -> Option<String> {
    match std::env::var("ENVCTL_DEFAULT_BRANCH") {
        // `origin/main` and `main` name the same branch here.
        Ok(b) if !b.is_empty() => Some(b.strip_prefix("origin/").unwrap_or(&b).to_owned()),
        _ => git.origin_head_branch(),
    }
}

/// A branch whose tree has invalid specs, under `--all`: blocked, with the first problem named.
fn invalid_tree(diagnostics: &[Diagnostic], tree: Tree) -> Wanted {
    let first = diagnostics
        .first()
        .map(|d| format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message))
        .unwrap_or_default();
    let more = match diagnostics.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let place = match tree {
        Tree::Commit(commit) => format!("commit {}", &commit.to_string()[..12]),
        Tree::WorkingTree => "the working tree".to_owned(),
    };
    Wanted::Unknown {
        reason: format!(
            "the branch's specs in {place} are invalid: {first}{more}; `envctl validate` on that branch shows every error"
        ),
    }
}
