//! Everything envctl asks git, through git2 (no `git` process, no checkout): the current branch,
//! the repository name from `origin`, the default branch, branch lists, merge bases, and a branch's
//! own files as a [`RepoFiles`] snapshot read from its tree.

use std::path::{Path, PathBuf};

use git2::{
    BranchType, ErrorCode, ObjectType, Oid, Repository, Tree, TreeWalkMode, TreeWalkResult,
};

use crate::source::{Node, resolve_link};
use crate::spec::{FileContent, READ_DIRS, Refusal, RepoFiles};

/// A git operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `-C DIR` is not inside a git repository.
    #[error("`{0}` is not inside a git repository")]
    NotARepository(PathBuf, #[source] git2::Error),
    /// HEAD is detached and no GitHub variable names the branch.
    #[error(
        "HEAD is detached and neither GITHUB_HEAD_REF nor GITHUB_REF_NAME names a branch (a tag push has no branch); pass `--branch`"
    )]
    DetachedHead,
    /// Reading refs, commits or trees failed.
    #[error("cannot read {what} from git")]
    Read {
        what: String,
        #[source]
        source: git2::Error,
    },
}

fn read_err(what: impl Into<String>) -> impl FnOnce(git2::Error) -> GitError {
    let what = what.into();
    move |source| GitError::Read { what, source }
}

/// A repository opened once per command.
pub struct Git {
    repo: Repository,
}

/// Branch tips by name: `origin`'s and the local ones.
#[derive(Clone, Debug, Default)]
pub struct Refs {
    pub remote: std::collections::BTreeMap<String, Oid>,
    pub local: std::collections::BTreeMap<String, Oid>,
}

impl Refs {
    /// `origin/B`, else the local `B`.
    pub fn tip(&self, branch: &str) -> Option<Oid> {
        self.remote
            .get(branch)
            .or_else(|| self.local.get(branch))
            .copied()
    }
}

/// A branch's files and the commit they were read from.
pub struct BranchTree {
    pub commit: String,
    pub files: RepoFiles,
}

impl Git {
    /// Opens the repository containing `dir`.
    pub fn open(dir: &Path) -> Result<Git, GitError> {
        // envctl reads each commit and tree it needs once (snapshots are keyed by tree id), so
        // libgit2's object cache (up to 256 MiB) only holds memory: tens of MB over 10 000
        // branches (BENCHMARKS.md, planning scale).
        git2::opts::enable_caching(false);
        Repository::discover(dir)
            .map(|repo| Git { repo })
            .map_err(|e| GitError::NotARepository(dir.to_owned(), e))
    }

    /// The root of the working tree (`None` for a bare repository).
    pub fn workdir(&self) -> Option<PathBuf> {
        self.repo.workdir().map(Path::to_path_buf)
    }

    /// The working tree's branch; in GitHub Actions with a detached HEAD, `GITHUB_HEAD_REF` then
    /// `GITHUB_REF_NAME`.
    pub fn current_branch(&self) -> Result<String, GitError> {
        let head_detached = self.repo.head_detached().unwrap_or(true);
        if !head_detached {
            // An unborn branch (no commits yet) still has a name.
            let head = self.repo.find_reference("HEAD").map_err(read_err("HEAD"))?;
            if let Ok(Some(target)) = head.symbolic_target()
                && let Some(name) = target.strip_prefix("refs/heads/")
            {
                return Ok(name.to_owned());
            }
        }
        if let Ok(head_ref) = std::env::var("GITHUB_HEAD_REF")
            && !head_ref.is_empty()
        {
            return Ok(head_ref);
        }
        // GITHUB_REF_NAME also names tags: only a branch push counts.
        let is_branch = match std::env::var("GITHUB_REF_TYPE") {
            Ok(kind) if !kind.is_empty() => kind == "branch",
            _ => std::env::var("GITHUB_REF")
                .map_or(true, |r| r.is_empty() || r.starts_with("refs/heads/")),
        };
        if let Ok(ref_name) = std::env::var("GITHUB_REF_NAME")
            && !ref_name.is_empty()
            && is_branch
        {
            return Ok(ref_name);
        }
        Err(GitError::DetachedHead)
    }

    /// `OWNER/NAME` parsed from the `origin` remote's URL, if there is one.
    pub fn origin_repo_name(&self) -> Option<String> {
        let remote = self.repo.find_remote("origin").ok()?;
        repo_name_from_url(remote.url().ok()?)
    }

    /// The default branch from `origin/HEAD`, if it is set.
    pub fn origin_head_branch(&self) -> Option<String> {
        let reference = self.repo.find_reference("refs/remotes/origin/HEAD").ok()?;
        let target = reference.symbolic_target().ok()??;
        target
            .strip_prefix("refs/remotes/origin/")
            .map(str::to_owned)
    }

    /// The tip of a branch: `origin/B`, else the local branch `B`.
    pub fn branch_tip(&self, branch: &str) -> Option<Oid> {
        [
            format!("refs/remotes/origin/{branch}"),
            format!("refs/heads/{branch}"),
        ]
        .iter()
        .find_map(|name| self.repo.refname_to_id(name).ok())
    }

    /// `origin/B`'s commit, where this clone has it.
    pub fn origin_tip(&self, branch: &str) -> Option<Oid> {
        self.repo
            .refname_to_id(&format!("refs/remotes/origin/{branch}"))
            .ok()
    }

    /// A branch's tips: `origin/B`, then the local `B` when it differs.
    pub fn branch_tips(&self, branch: &str) -> Vec<Oid> {
        let mut tips = Vec::new();
        for name in [
            format!("refs/remotes/origin/{branch}"),
            format!("refs/heads/{branch}"),
        ] {
            if let Ok(tip) = self.repo.refname_to_id(&name)
                && !tips.contains(&tip)
            {
                tips.push(tip);
            }
        }
        tips
    }

    /// Every branch git knows: local branches and `origin`'s, by name, sorted and deduplicated.
    pub fn branches(&self) -> Result<Vec<String>, GitError> {
        let mut names = Vec::new();
        for item in self.repo.branches(None).map_err(read_err("branches"))? {
            let (branch, kind) = item.map_err(read_err("branches"))?;
            let Some(name) = branch.name().ok().flatten() else {
                continue;
            };
            match kind {
                BranchType::Local => names.push(name.to_owned()),
                BranchType::Remote => {
                    if let Some(name) = name.strip_prefix("origin/")
                        && name != "HEAD"
                    {
                        names.push(name.to_owned());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Every branch tip, read once: `origin`'s apart from the local ones (prune tells "deleted on
    /// origin" from "exists only here").
    pub fn refs(&self) -> Result<Refs, GitError> {
        let mut refs = Refs::default();
        for item in self.repo.branches(None).map_err(read_err("branches"))? {
            let (branch, kind) = item.map_err(read_err("branches"))?;
            let (Some(name), Some(tip)) = (branch.name().ok().flatten(), branch.get().target())
            else {
                continue;
            };
            match kind {
                BranchType::Local => {
                    refs.local.insert(name.to_owned(), tip);
                }
                BranchType::Remote => {
                    if let Some(name) = name.strip_prefix("origin/")
                        && name != "HEAD"
                    {
                        refs.remote.insert(name.to_owned(), tip);
                    }
                }
            }
        }
        Ok(refs)
    }

    /// Fails on a loose ref under `refs/remotes/origin/` or `refs/heads/` that does not name a
    /// commit (a file truncated by a crash, garbage, a link to nothing): git's own listing skips
    /// such a ref with a warning, and its branch would look deleted.
    pub fn check_loose_refs(&self) -> Result<(), GitError> {
        let odb = self.repo.odb().map_err(read_err("the object database"))?;
        for top in ["refs/remotes/origin", "refs/heads"] {
            let mut stack = vec![self.repo.commondir().join(top)];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let Ok(kind) = entry.file_type() else {
                        continue;
                    };
                    if kind.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let Ok(relative) = path.strip_prefix(self.repo.commondir()) else {
                        continue;
                    };
                    let name = relative.to_string_lossy().replace('\\', "/");
                    if name == "refs/remotes/origin/HEAD" || name.ends_with(".lock") {
                        continue;
                    }
                    let resolved = self.repo.refname_to_id(&name).and_then(|oid| {
                        if odb.exists(oid) {
                            Ok(())
                        } else {
                            Err(git2::Error::from_str("it names an object that is not here"))
                        }
                    });
                    if let Err(source) = resolved {
                        return Err(GitError::Read {
                            what: format!("the ref `{name}`"),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Paths git tracks (the index) at `dir` itself (a submodule or a link there) or under it,
    /// at most `limit` of them. An index that cannot be read is an error: nothing can be said.
    pub fn tracked_under(&self, dir: &str, limit: usize) -> Result<Vec<String>, GitError> {
        let index = self.repo.index().map_err(read_err("the index"))?;
        let dir = dir.trim_end_matches('/');
        let prefix = format!("{dir}/");
        Ok(index
            .iter()
            .map(|entry| String::from_utf8_lossy(&entry.path).into_owned())
            .filter(|path| path == dir || path.starts_with(&prefix))
            .take(limit)
            .collect())
    }

    /// Whether the repository is a shallow clone (ancestry questions cannot be answered).
    pub fn is_shallow(&self) -> bool {
        // A linked worktree of a shallow clone: the `shallow` file is the main repository's.
        self.repo.is_shallow() || self.repo.commondir().join("shallow").exists()
    }

    /// Whether `ancestor` is `of` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: Oid, of: Oid) -> Result<bool, GitError> {
        if ancestor == of {
            return Ok(true);
        }
        self.repo
            .graph_descendant_of(of, ancestor)
            .map_err(read_err("the history"))
    }

    /// A commit's committer time (seconds since the epoch); `None` when this clone does not have
    /// it.
    pub fn commit_time(&self, commit: Oid) -> Option<i64> {
        self.repo
            .find_commit(commit)
            .ok()
            .map(|c| c.committer().when().seconds())
    }

    /// The commit `HEAD` points at (`None` on an unborn branch).
    pub fn head_commit(&self) -> Option<Oid> {
        self.repo.head().ok()?.peel_to_commit().ok().map(|c| c.id())
    }

    /// Whether there is an `origin` remote.
    pub fn has_origin(&self) -> bool {
        self.repo.find_remote("origin").is_ok()
    }

    /// `origin`'s URLs: every `remote.origin.url` value as written (the repository it names)
    /// and the URL fetches go to after `insteadOf` rewriting; each must name the repository.
    pub fn origin_urls(&self) -> Vec<String> {
        let Ok(config) = self.repo.config() else {
            return Vec::new();
        };
        let Ok(entries) = config.multivar("remote.origin.url", None) else {
            return Vec::new();
        };
        let mut urls = Vec::new();
        let _ = entries.for_each(|entry| {
            if let Ok(value) = entry.value() {
                urls.push(value.to_owned());
            }
        });
        // libgit2 applies `insteadOf` when it loads the remote.
        if let Ok(remote) = self.repo.find_remote("origin")
            && let Ok(url) = remote.url()
            && !urls.iter().any(|u| u == url)
        {
            urls.push(url.to_owned());
        }
        urls
    }

    /// Whether fetching `origin` brings every branch (`refs/heads/*` → `refs/remotes/origin/*`,
    /// and no `^` refspec leaving some out): a single-branch clone's refspec names one branch,
    /// and then a missing `origin/B` proves nothing.
    pub fn fetches_every_branch(&self) -> bool {
        let Ok(remote) = self.repo.find_remote("origin") else {
            return false;
        };
        let Ok(specs) = remote.fetch_refspecs() else {
            return false;
        };
        let specs: Vec<&str> = (0..specs.len())
            .filter_map(|i| specs.get(i).ok().flatten())
            .collect();
        // git2 may not list negative refspecs: read the configuration too.
        let negative = self.repo.config().ok().is_some_and(|config| {
            config
                .multivar("remote.origin.fetch", None)
                .ok()
                .is_some_and(|entries| {
                    let mut found = false;
                    let _ = entries.for_each(|entry| {
                        found |= entry.value().is_ok_and(|v| v.trim_start().starts_with('^'));
                    });
                    found
                })
        });
        !negative
            && !specs.iter().any(|spec| spec.starts_with('^'))
            && specs.iter().any(|spec| {
                let spec = spec.strip_prefix('+').unwrap_or(spec);
                spec == "refs/heads/*:refs/remotes/origin/*"
            })
    }

    /// When this clone last learned `origin`'s branches: the newest entry in the reflogs of
    /// `refs/remotes/origin/*` that records a clone or a fetch of every branch
    /// ([`records_a_full_fetch`]; such a fetch writes one where it changed a ref, a failed fetch
    /// writes none). `None` when no reflog says. Entries not trusted:
    /// - one dated after `now` (plus [`crate::plan::prune::FETCH_MARGIN`]);
    /// - a clone of a URL naming another repository than `repo`;
    /// - a clone that does not show it fetched every branch of the repository `origin` names
    ///   now: it must have written two branches or more (a single-branch clone writes one, and
    ///   may have been widened since, in any second), from a URL `origin` still has. The
    ///   configuration file's own changes say nothing of a clone: `git config`, `git branch -D`
    ///   and `git push -u` rewrite it too;
    /// - a fetch or pull by the configured refspecs (its message names none), unless the last
    ///   fetch or pull (`FETCH_HEAD`, written by each), made at that time or later, came after
    ///   the configuration's last change or brought two branches or more: what the refspecs were
    ///   then (one branch, before a widening) is not known otherwise. A fetch that names every
    ///   branch's refspec (as CI checkouts' do) says it itself.
    pub fn fetched_at(
        &self,
        repo: &str,
        now: std::time::SystemTime,
    ) -> Option<std::time::SystemTime> {
        let seconds_of = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        };
        let latest = seconds_of(now + crate::plan::prune::FETCH_MARGIN);
        let clone_shows_it = self.clone_wrote_several_branches();
        let urls = self.origin_urls();
        // The last fetch or pull (`FETCH_HEAD`) came after the configuration's last change, to
        // the nanosecond (a script fetches in the second it configures): it fetched by the
        // refspecs configured now, and an entry no newer than it is vouched for.
        let modified = |name: &str, dir: &Path| {
            std::fs::symlink_metadata(dir.join(name))
                .and_then(|m| m.modified())
                .ok()
        };
        let fetch_head = modified("FETCH_HEAD", self.repo.path());
        let configured = modified("config", self.repo.commondir());
        let fetched_since_configured = |when: i64| match (fetch_head, configured) {
            (Some(fetched), Some(configured)) => {
                fetched > configured && seconds_of(fetched) >= when
            }
            _ => false,
        };
        let counts = |message: &str, when: i64| {
            if when > latest || !records_a_full_fetch(message) {
                return false;
            }
            match message.strip_prefix("clone: from ") {
                None => {
                    message.contains("refs/heads/*:refs/remotes/origin/*")
                        || fetched_since_configured(when)
                        || self.a_fetch_since_brought_several_branches(when, &seconds_of)
                }
                Some(url) => {
                    clone_shows_it
                        && urls.iter().any(|u| u == url)
                        && (!is_hosted_url(url)
                            || repo_name_from_url(url)
                                .is_some_and(|n| n.eq_ignore_ascii_case(repo)))
                }
            }
        };
        let mut newest: Option<i64> = None;
        let references = self.repo.references_glob("refs/remotes/origin/*").ok()?;
        for reference in references.flatten() {
            // `origin/HEAD` too: a clone writes its first entry there ("clone: from …").
            let Ok(name) = reference.name() else {
                continue;
            };
            let Ok(reflog) = self.repo.reflog(name) else {
                continue;
            };
            // Entries are newest first; only a clone or a fetch of every branch counts (a push
            // or a fetch of one branch moves a ref too, and says nothing of the others).
            let vouched = reflog.iter().find_map(|entry| {
                let when = entry.committer().when().seconds();
                matches!(entry.message(), Ok(Some(m)) if counts(m, when)).then_some(when)
            });
            if let Some(when) = vouched {
                newest = Some(newest.map_or(when, |n| n.max(when)));
            }
        }
        let seconds = u64::try_from(newest?).ok()?;
        std::time::SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds))
    }

    /// Whether the clone wrote two or more of `origin`'s branches: `refs/remotes/origin/*` but
    /// `HEAD` with no reflog entry but a clone's (a clone writes its refs with no entry of their
    /// own, its one entry going to `origin/HEAD`; a fetch or a push that wrote a ref left an
    /// entry). A single-branch clone writes one.
    fn clone_wrote_several_branches(&self) -> bool {
        let Ok(references) = self.repo.references_glob("refs/remotes/origin/*") else {
            return false;
        };
        let mut written = 0;
        for reference in references.flatten() {
            let Ok(name) = reference.name() else {
                continue;
            };
            if name == "refs/remotes/origin/HEAD" {
                continue;
            }
            let Ok(reflog) = self.repo.reflog(name) else {
                continue;
            };
            let by_the_clone = reflog.iter().all(
                |entry| matches!(entry.message(), Ok(Some(m)) if m.starts_with("clone: from ")),
            );
            if by_the_clone {
                written += 1;
                if written >= 2 {
                    return true;
                }
            }
        }
        false
    }

    /// Whether the last fetch, written at `since` or later, brought two or more branches
    /// (`FETCH_HEAD` lists each ref a fetch or pull brought, `branch 'B' of URL`): it fetched by
    /// more than one branch's refspec. Read up to 16 MiB.
    fn a_fetch_since_brought_several_branches(
        &self,
        since: i64,
        seconds_of: &dyn Fn(std::time::SystemTime) -> i64,
    ) -> bool {
        let path = self.repo.path().join("FETCH_HEAD");
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return false;
        };
        if !meta.is_file() || meta.modified().map_or(true, |t| seconds_of(t) < since) {
            return false;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            return false;
        };
        let mut text = String::new();
        if std::io::Read::read_to_string(&mut std::io::Read::take(file, 16 << 20), &mut text)
            .is_err()
        {
            return false;
        }
        text.lines().filter(|l| l.contains("\tbranch '")).count() >= 2
    }

    /// The merge base of two commits, hex.
    pub fn merge_base(&self, a: Oid, b: Oid) -> Option<String> {
        self.repo.merge_base(a, b).ok().map(|oid| oid.to_string())
    }

    /// A branch's own files read from its tip's tree, or `None` when git does not know the branch.
    /// Symbolic links are resolved inside the same tree by the rule the working tree follows
    /// ([`crate::source::resolve_link`]), so both read the same bytes or refuse the same paths.
    pub fn branch_tree(&self, branch: &str) -> Result<Option<BranchTree>, GitError> {
        match self.branch_tip(branch) {
            Some(tip) => self.tree_at(tip, branch).map(Some),
            None => Ok(None),
        }
    }

    /// What decides the files of commit `tip`: the ids of its `environments` and `schemas`
    /// entries (links there resolve only into those two). Two commits with the same key have the
    /// same snapshot, so it is read and checked once.
    pub fn snapshot_key(&self, tip: Oid) -> Result<(Option<Oid>, Option<Oid>), GitError> {
        let commit = self
            .repo
            .find_commit(tip)
            .map_err(read_err(format!("commit {tip}")))?;
        let tree = commit
            .tree()
            .map_err(read_err(format!("the tree of commit {tip}")))?;
        let id = |name: &str| tree.get_name(name).map(|entry| entry.id());
        Ok((id("environments"), id("schemas")))
    }

    /// The files of commit `tip` (of branch `branch`, as errors name it).
    pub fn tree_at(&self, tip: Oid, branch: &str) -> Result<BranchTree, GitError> {
        let commit = self
            .repo
            .find_commit(tip)
            .map_err(read_err(format!("the tip of `{branch}`")))?;
        let tree = commit
            .tree()
            .map_err(read_err(format!("the tree of `{branch}`")))?;
        let read_failed = |path: &str| read_err(format!("`{path}` of `{branch}`"));
        // First the entries we want, then their contents: a link is resolved against the tree.
        let mut wanted: Vec<(String, Oid, i32)> = Vec::new();
        let mut bad_names: Vec<String> = Vec::new();
        let mut submodules: Vec<String> = Vec::new();
        let mut directories: Vec<String> = Vec::new();
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let name = match entry.name() {
                Ok(name) if !name.chars().any(char::is_control) => name.to_owned(),
                // As the working tree does: said, not skipped.
                _ => {
                    let lossy: String = String::from_utf8_lossy(entry.name_bytes())
                        .chars()
                        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                        .collect();
                    let path = format!("{dir}{lossy}");
                    if entry.kind() == Some(ObjectType::Blob) && RepoFiles::wants(&path) {
                        bad_names.push(path);
                    }
                    return TreeWalkResult::Ok;
                }
            };
            let path = format!("{dir}{name}");
            if entry.kind() == Some(ObjectType::Commit) && READ_DIRS.contains(&path.as_str()) {
                submodules.push(path);
                return TreeWalkResult::Ok;
            }
            if entry.kind() == Some(ObjectType::Tree) {
                // As the working tree says it (a directory named like a spec or migration).
                if RepoFiles::refuses_directory(&path) {
                    directories.push(path);
                    return TreeWalkResult::Skip;
                }
                let prefix = format!("{path}/");
                let interesting = ["environments/", "schemas/"]
                    .iter()
                    .any(|p| p.starts_with(&prefix) || prefix.starts_with(p));
                return if interesting {
                    TreeWalkResult::Ok
                } else {
                    TreeWalkResult::Skip
                };
            }
            let is_read_dir = READ_DIRS.contains(&path.as_str());
            if entry.kind() == Some(ObjectType::Blob) && (is_read_dir || RepoFiles::wants(&path)) {
                wanted.push((path, entry.id(), entry.filemode()));
            }
            TreeWalkResult::Ok
        })
        .map_err(read_err(format!("the tree of `{branch}`")))?;
        let mut files = RepoFiles::default();
        for path in bad_names {
            files.insert(path, FileContent::Refused(Refusal::BadName));
        }
        for path in submodules {
            files.insert(path, FileContent::Refused(Refusal::Submodule));
        }
        for path in directories {
            files.insert(
                path,
                FileContent::Refused(Refusal::NotRegular {
                    kind: "a directory".to_owned(),
                    target: None,
                }),
            );
        }
        for (path, oid, mode) in wanted {
            let content = if READ_DIRS.contains(&path.as_str()) {
                // Where the working tree has a directory link, git has a link blob: refuse both.
                if mode != LINK_MODE {
                    continue;
                }
                FileContent::Refused(Refusal::DirectoryLink {
                    target: self
                        .link_target(oid)
                        .map_err(read_failed(&path))?
                        .unwrap_or_default(),
                })
            } else if mode == LINK_MODE {
                match resolve_link(&path, |p| self.tree_node(&tree, p))
                    .map_err(read_failed(&path))?
                {
                    Ok(resolved) => {
                        let entry = tree
                            .get_path(Path::new(&resolved))
                            .map_err(read_failed(&resolved))?;
                        self.read_blob(entry.id(), &path)
                            .map_err(read_failed(&resolved))?
                    }
                    Err(refusal) => FileContent::Refused(refusal),
                }
            } else {
                self.read_blob(oid, &path).map_err(read_failed(&path))?
            };
            files.insert(path, content);
        }
        Ok(BranchTree {
            commit: commit.id().to_string(),
            files,
        })
    }

    /// A blob's bytes, or too large when its size (read from the object header, without loading
    /// it) is over the limit.
    fn read_blob(&self, oid: Oid, path: &str) -> Result<FileContent, git2::Error> {
        let limit = RepoFiles::limit_for(path);
        let (size, _) = self.repo.odb()?.read_header(oid)?;
        if size as u64 > limit {
            return Ok(FileContent::TooLarge {
                size: size as u64,
                limit,
            });
        }
        Ok(FileContent::Bytes(
            self.repo.find_blob(oid)?.content().to_vec(),
        ))
    }

    /// A link blob's target, as the working tree reads it (UTF-8 with replacements); `None` for
    /// a "link" longer than any file system allows, which is not read.
    fn link_target(&self, oid: Oid) -> Result<Option<String>, git2::Error> {
        let (size, _) = self.repo.odb()?.read_header(oid)?;
        if size > MAX_LINK_TARGET_BYTES {
            return Ok(None);
        }
        let blob = self.repo.find_blob(oid)?;
        Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
    }

    /// What `path` is in `tree`, for [`resolve_link`].
    fn tree_node(&self, tree: &Tree, path: &str) -> Result<Node, git2::Error> {
        let entry = match tree.get_path(Path::new(path)) {
            Ok(entry) => entry,
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(Node::Missing),
            Err(e) => return Err(e),
        };
        Ok(match entry.filemode() {
            TREE_MODE => Node::Dir,
            LINK_MODE => match self.link_target(entry.id())? {
                Some(target) => Node::Link(target),
                None => Node::Missing,
            },
            COMMIT_MODE => Node::Other("a submodule"),
            _ if entry.kind() == Some(ObjectType::Blob) => Node::File,
            _ => Node::Other("not a regular file"),
        })
    }
}

/// git's file modes for a tree, a symbolic link and a submodule (a commit).
const TREE_MODE: i32 = 0o040000;
const LINK_MODE: i32 = 0o120000;
const COMMIT_MODE: i32 = 0o160000;
/// PATH_MAX on Linux: no working tree holds a longer link target.
const MAX_LINK_TARGET_BYTES: usize = 4096;

/// Whether a reflog message of a ref under `refs/remotes/origin` records a clone, or a fetch
/// (or pull) of every branch of `origin`.
/// - Yes: `clone: from …`, `fetch: …`, `fetch --prune origin: …`,
///   `fetch origin +refs/heads/*:refs/remotes/origin/* …: …` (what actions/checkout runs).
/// - No: `update by push`, `fetch origin main: …` (one branch), a fetch of another remote.
/// - Anything it cannot read counts as no fetch: prune then trusts an older one, or none.
pub fn records_a_full_fetch(message: &str) -> bool {
    if message.starts_with("clone: from ") {
        return true;
    }
    let Some((command, _)) = message.split_once(": ") else {
        return false;
    };
    let mut words = command.split_whitespace();
    if !matches!(words.next(), Some("fetch" | "pull")) {
        return false;
    }
    let (options, operands): (Vec<&str>, Vec<&str>) = words.partition(|w| w.starts_with('-'));
    // Refspecs from stdin, or a mapping other than the configured one: not in the message.
    if options
        .iter()
        .any(|o| *o == "--stdin" || o.starts_with("--refmap"))
    {
        return false;
    }
    if options.contains(&"--all") && operands.is_empty() {
        return true;
    }
    if options.contains(&"--multiple") {
        return operands.contains(&"origin");
    }
    match operands.split_first() {
        None => true,
        Some((remote, refspecs)) => {
            *remote == "origin"
                && refspecs.iter().all(|spec| {
                    let spec = spec.strip_prefix('+').unwrap_or(spec);
                    spec == "refs/heads/*:refs/remotes/origin/*"
                        || spec == "refs/tags/*:refs/tags/*"
                })
        }
    }
}

/// Whether a remote URL names a hosted repository (`https://`, `ssh://`, `git://`, scp-like
/// `host:path`) rather than a path on this machine.
pub fn is_hosted_url(url: &str) -> bool {
    let url = url.trim();
    match url.split_once("://") {
        Some((scheme, _)) => scheme != "file",
        None => match url.split_once(':') {
            // `host:path` (an ssh alias may be one letter), but not `./a:b` or `/p/a:b`.
            Some((host, _)) => !host.is_empty() && !host.contains('/') && !host.starts_with('.'),
            None => false,
        },
    }
}

/// `git@github.com:Acme/Shop.git`, `https://github.com/acme/shop`, `ssh://git@host/acme/shop.git`
/// → `Acme/Shop`.
pub fn repo_name_from_url(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let path = if let Some((_, rest)) = url.split_once("://") {
        rest.split_once('/')?.1
    } else if let Some((_, rest)) = url.split_once(':') {
        rest
    } else {
        url
    };
    let mut parts = path.rsplit('/');
    let name = parts.next()?;
    let owner = parts.next()?;
    (!owner.is_empty() && !name.is_empty()).then(|| format!("{owner}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clone_or_a_fetch_of_every_branch_counts_as_one() {
        for message in [
            "clone: from https://github.com/acme/shop.git",
            "fetch: fast-forward",
            "fetch origin: storing head",
            "fetch -q --prune origin: forced-update",
            "fetch --prune --no-recurse-submodules origin +refs/heads/*:refs/remotes/origin/* +refs/tags/*:refs/tags/*: storing head",
            "fetch --all: fast-forward",
            "fetch --multiple upstream origin: fast-forward",
            "pull: fast-forward",
        ] {
            assert!(records_a_full_fetch(message), "{message}");
        }
        for message in [
            "update by push",
            "fetch origin main: fast-forward",
            "pull origin main: fast-forward",
            "fetch origin +refs/heads/main:refs/remotes/origin/main: storing head",
            "fetch upstream: storing head",
            "fetch --depth 1 origin: storing head",
            "fetch --stdin origin: fast-forward",
            "fetch origin --stdin: fast-forward",
            "fetch --refmap=refs/heads/main:refs/remotes/origin/main origin: storing head",
            "remote: set-head",
            "branch: Created from HEAD",
            "fetch",
            "",
        ] {
            assert!(!records_a_full_fetch(message), "{message}");
        }
    }

    #[test]
    fn repo_names_from_remote_urls() {
        for (url, want) in [
            ("git@github.com:Acme/Shop.git", "Acme/Shop"),
            ("https://github.com/acme/shop", "acme/shop"),
            ("https://github.com/acme/shop.git/", "acme/shop"),
            ("ssh://git@github.com/acme/shop.git", "acme/shop"),
            // ssh with a port, https with credentials (what some CI checkouts write), no `.git`,
            // scp-like without a user, a local path, `file://`.
            ("ssh://git@github.com:22/acme/shop.git", "acme/shop"),
            (
                "https://x-access-token:secret@github.com/acme/shop.git",
                "acme/shop",
            ),
            ("https://github.example.com/scm/acme/shop", "acme/shop"),
            ("github.com:acme/shop", "acme/shop"),
            ("git@github.com:acme/shop", "acme/shop"),
            ("/srv/git/acme/shop.git", "acme/shop"),
            ("file:///srv/git/acme/shop.git", "acme/shop"),
        ] {
            assert_eq!(repo_name_from_url(url).as_deref(), Some(want), "{url}");
        }
        assert_eq!(repo_name_from_url("shop"), None);
    }
}
