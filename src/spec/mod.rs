//! Desired state from a repository snapshot: environment files, migrations and seeds → a validated
//! [`Catalog`], and from it the [`DesiredEnv`] of any branch.
//!
//! Architecture invariant: no IO here. Callers hand in a [`RepoFiles`] snapshot read from the
//! working tree (`source.rs`) or from a commit (`git.rs`); this module only parses and checks it,
//! so it is tested with plain data. Every problem is a [`Diagnostic`] at `file:line:column`.

pub mod lint;
pub mod matching;
pub mod migrations;
pub mod raw;
pub mod validate;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::{
    ClusterId, ClusterSettings, DataSource, DatabaseSettings, DesiredEnv, MaskRule, Migration,
    Prefix, RepoName, Seed, SourceRef,
};

use matching::BranchPattern;

pub const ENVIRONMENTS_DIR: &str = "environments/";
/// Largest file read, environment file, migration or seed; anything bigger is refused unparsed.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most symbolic links followed to reach one file.
pub const MAX_LINK_HOPS: usize = 8;
/// The directories a snapshot reads, which must be real directories (not links) in any source.
pub const READ_DIRS: [&str; 5] = [
    "environments",
    "schemas",
    "schemas/migrations",
    "schemas/seeds",
    "schemas/mask",
];

/// A file of a repository snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileContent {
    Bytes(Vec<u8>),
    /// Not read: over the limit.
    TooLarge {
        size: u64,
        limit: u64,
    },
    /// Not read: not a regular file inside the repository.
    Refused(Refusal),
}

/// Why a path was not read. Both sources (working tree and git tree) refuse the same paths for
/// the same reasons, so a snapshot never depends on where it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A symbolic link whose target is absolute or climbs above the repository root. `target` is
    /// the target of the last link followed, as written.
    LinkOutside { target: String },
    /// A symbolic link to a file outside `environments/` and `schemas/` (an ignored file such as
    /// `.envctl/`, or one git does not hold): it could not read the same from git.
    LinkOutsideContent { target: String },
    /// A symbolic link to nothing.
    LinkDangling { target: String },
    /// Links that loop, or a chain longer than [`MAX_LINK_HOPS`].
    LinkLoop { target: String },
    /// A symbolic link to a directory.
    LinkToDirectory { target: String },
    /// A FIFO, socket, device or submodule; `target` when reached through a link.
    NotRegular {
        kind: String,
        target: Option<String>,
    },
    /// One of [`READ_DIRS`] is a symbolic link: its files would come from wherever it points.
    DirectoryLink { target: String },
    /// One of [`READ_DIRS`] is a git submodule: git holds a commit of another repository there,
    /// not files, so a branch's own tree would read as empty.
    Submodule,
    /// The file name is not UTF-8 or holds a control character (a line break would let a name
    /// print lines of its own, GitHub Actions workflow commands among them).
    BadName,
}

impl Refusal {
    /// The diagnostic for a refused `path`, at its start.
    pub fn diagnostic(&self, path: &str) -> Diagnostic {
        let (message, hint) = match self {
            Refusal::LinkOutside { target } => (
                format!("the file is a symbolic link to `{target}`, outside the repository"),
                "envctl reads only files inside the repository: copy the file in, or link to a file inside it with a relative path",
            ),
            Refusal::LinkOutsideContent { target } => (
                format!(
                    "the file is a symbolic link to `{target}`, outside `environments/` and `schemas/`"
                ),
                "envctl reads only files under `environments/` and `schemas/` (the same from disk and from git): link to one there, or copy the file in",
            ),
            Refusal::LinkDangling { target } => (
                format!("the file is a symbolic link to `{target}`, which does not exist"),
                "create the file it points to, or remove the link",
            ),
            Refusal::LinkLoop { target } => (
                format!(
                    "the file is a symbolic link to `{target}`, which loops or goes through more than {MAX_LINK_HOPS} links"
                ),
                "point the link straight at a regular file",
            ),
            Refusal::LinkToDirectory { target } => (
                format!("the file is a symbolic link to `{target}`, which is a directory"),
                "point the link at a file, or remove it",
            ),
            Refusal::NotRegular { kind, target: None } => (
                format!("the file is {kind}, not a regular file"),
                "replace it with a regular file",
            ),
            Refusal::NotRegular {
                kind,
                target: Some(target),
            } => (
                format!(
                    "the file is a symbolic link to `{target}`, which is {kind}, not a regular file"
                ),
                "point the link at a regular file",
            ),
            Refusal::BadName => (
                "the file name is not valid UTF-8 or holds a control character".to_owned(),
                "rename it with letters, digits, `_`, `-` and `.`",
            ),
            Refusal::DirectoryLink { target } => (
                format!(
                    "the directory is a symbolic link to `{target}`; envctl reads only real directories here"
                ),
                "make it a directory of the repository, not a link (git stores a link, not the files behind it)",
            ),
            Refusal::Submodule => (
                "the directory is a git submodule; envctl reads only this repository's own files here".to_owned(),
                "make it a directory of the repository (a branch's tree holds only a commit of another repository for a submodule, so plans of other branches would read no files)",
            ),
        };
        Diagnostic::at_start(path, message, Some(hint.to_owned()))
    }
}

/// The files envctl reads from one tree: `environments/*.yaml`, `schemas/migrations/*.sql`,
/// `schemas/seeds/**`, `schemas/mask/**`. Paths are repository-relative with `/` separators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoFiles {
    files: BTreeMap<String, FileContent>,
}

impl RepoFiles {
    /// Whether a snapshot wants this path: `environments/*.yaml` and `*.yml`,
    /// `schemas/migrations/*.sql`, `schemas/seeds/**.sql`, `schemas/mask/**.sql`, with the
    /// extension in any case (the
    /// loaders name files like `0004_x.SQL` rather than skip them). Dotfiles and dot-directories
    /// (`.#preview.yaml` editor locks) are not the user's content.
    pub fn wants(path: &str) -> bool {
        if path.split('/').any(|part| part.starts_with('.')) {
            false
        } else if let Some(name) = path.strip_prefix(ENVIRONMENTS_DIR) {
            !name.contains('/') && has_extension(name, &[".yaml", ".yml"]).is_some()
        } else if let Some(name) = path.strip_prefix(migrations::MIGRATIONS_DIR) {
            !name.contains('/') && has_extension(name, &[".sql"]).is_some()
        } else if let Some(name) = path
            .strip_prefix(migrations::SEEDS_DIR)
            .or_else(|| path.strip_prefix(migrations::MASK_DIR))
        {
            has_extension(name, &[".sql"]).is_some()
        } else {
            false
        }
    }

    /// Whether a directory at `path` is refused where a file is wanted: in `environments/` and
    /// the migrations' directory, which are read without their subdirectories, a directory
    /// named like a spec or a migration (`0004_x.sql/`) is a mistake to say, not to skip.
    pub fn refuses_directory(path: &str) -> bool {
        Self::wants(path)
            && (path.starts_with(ENVIRONMENTS_DIR) || path.starts_with(migrations::MIGRATIONS_DIR))
    }

    /// The most bytes read for this path: [`MAX_FILE_BYTES`] for every file.
    pub fn limit_for(_path: &str) -> u64 {
        MAX_FILE_BYTES
    }

    pub fn insert(&mut self, path: impl Into<String>, content: FileContent) {
        self.files.insert(path.into(), content);
    }

    /// Adds a file from bytes, applying the size limit of its kind.
    pub fn insert_bytes(&mut self, path: impl Into<String>, bytes: Vec<u8>) {
        let path = path.into();
        let limit = Self::limit_for(&path);
        let content = if bytes.len() as u64 > limit {
            FileContent::TooLarge {
                size: bytes.len() as u64,
                limit,
            }
        } else {
            FileContent::Bytes(bytes)
        };
        self.files.insert(path, content);
    }

    pub fn remove(&mut self, path: &str) -> Option<FileContent> {
        self.files.remove(path)
    }

    pub fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a FileContent)> {
        self.files
            .range(dir.to_owned()..)
            .take_while(move |(p, _)| p.starts_with(dir))
            .map(|(p, c)| (p.as_str(), c))
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }
}

/// Which of `extensions` (lower-case) `file_name` ends with, in any case; `None` when none, or
/// when the name is only the extension.
pub(crate) fn has_extension<'a>(file_name: &str, extensions: &[&'a str]) -> Option<&'a str> {
    extensions.iter().copied().find(|extension| {
        file_name.len() > extension.len()
            && file_name.is_char_boundary(file_name.len() - extension.len())
            && file_name[file_name.len() - extension.len()..].eq_ignore_ascii_case(extension)
    })
}

/// A diagnostic for a file that ends in `extension` in another case (`x.SQL`), which envctl
/// does not read; `None` when the case is right.
pub(crate) fn misnamed_extension(
    path: &str,
    extension: &str,
    kind: &str,
    expected: &str,
) -> Option<Diagnostic> {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    if file_name.ends_with(extension) {
        return None;
    }
    let stem = file_name.get(..file_name.len().checked_sub(extension.len())?)?;
    Some(Diagnostic::at_start(
        path,
        format!("`{file_name}` is not read: {kind} files end in {expected}"),
        Some(format!("rename it to `{stem}{extension}`")),
    ))
}

/// A problem in the user's files, placed at `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn at_start(file: &str, message: String, hint: Option<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message,
            hint,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A validated environment spec.
#[derive(Clone, Debug)]
pub struct Spec {
    pub file: String,
    pub name: String,
    /// Where `name` is, for errors about two specs with one name.
    pub name_pos: (usize, usize),
    /// Where each of `branches` is.
    pub pattern_positions: Vec<(usize, usize)>,
    pub branches: Vec<BranchPattern>,
    pub cluster: std::sync::Arc<ClusterSettings>,
    pub database: DatabaseSettings,
    /// `None` for `latest`.
    pub schema_version: Option<u64>,
    pub seeds: Vec<String>,
    pub ttl_seconds: Option<u64>,
    pub protect: bool,
    pub hash: String,
    /// `seeds` resolved against the catalogue, once (shared by every branch the spec covers).
    pub resolved_seeds: std::sync::OnceLock<Result<std::sync::Arc<[Seed]>, String>>,
    /// `database.from`, for a data branch.
    pub data: Option<SpecSource>,
    /// `data` resolved against the catalogue's masking files, once.
    pub resolved_data: std::sync::OnceLock<Result<std::sync::Arc<DataSource>, String>>,
}

/// A spec's `database.from`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecSource {
    pub from: SourceRef,
    /// `from.masterUser`.
    pub master_user: Option<String>,
    pub rules: Vec<MaskRule>,
    /// `maskSql`, in order.
    pub files: Vec<String>,
    /// Where `from` is, and its `branch`, for errors about the source.
    pub pos: (usize, usize),
    pub branch_pos: (usize, usize),
}

impl Spec {
    /// The data source with its masking files, shared by every branch the spec covers.
    pub fn data_source(
        &self,
        mask_files: &BTreeMap<String, Seed>,
    ) -> Option<Result<std::sync::Arc<DataSource>, String>> {
        let data = self.data.as_ref()?;
        Some(
            self.resolved_data
                .get_or_init(|| {
                    let files = data
                        .files
                        .iter()
                        .map(|path| {
                            mask_files
                                .get(path)
                                .cloned()
                                .ok_or_else(|| format!("masking file `{path}` does not exist"))
                        })
                        .collect::<Result<std::sync::Arc<[Seed]>, String>>()?;
                    Ok(std::sync::Arc::new(DataSource {
                        from: data.from.clone(),
                        master_user: data.master_user.clone(),
                        rules: data.rules.clone(),
                        files,
                    }))
                })
                .clone(),
        )
    }

    /// The seed files the spec lists, in its order, shared by every branch it covers.
    pub fn seed_files(
        &self,
        seeds: &BTreeMap<String, Seed>,
    ) -> Result<std::sync::Arc<[Seed]>, String> {
        self.resolved_seeds
            .get_or_init(|| {
                self.seeds
                    .iter()
                    .map(|path| {
                        seeds
                            .get(path)
                            .cloned()
                            .ok_or_else(|| format!("seed file `{path}` does not exist"))
                    })
                    .collect()
            })
            .clone()
    }
}

/// Everything one tree declares, validated.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub specs: Vec<Spec>,
    pub migrations: std::sync::Arc<[Migration]>,
    pub seeds: BTreeMap<String, Seed>,
    /// The masking files under `schemas/mask/`, by path.
    pub mask_files: BTreeMap<String, Seed>,
}

/// Reads and checks a snapshot. On failure returns every diagnostic, sorted by place.
pub fn load(files: &RepoFiles) -> Result<Catalog, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    // A linked directory is not a file any loader reads: report it here.
    for dir in READ_DIRS {
        if let Some(FileContent::Refused(refusal)) = files.files.get(dir) {
            diagnostics.push(refusal.diagnostic(dir));
        }
    }
    let migrations = migrations::load_migrations(files, &mut diagnostics);
    let seeds = migrations::load_seeds(files, &mut diagnostics);
    let mask_files = migrations::load_mask_files(files, &mut diagnostics);
    let seed_paths: BTreeSet<String> = seeds.keys().cloned().collect();
    let mask_paths: BTreeSet<String> = mask_files.keys().cloned().collect();
    // Files there that did not load (too large, not UTF-8, a link…): their own errors say why.
    let unusable: BTreeSet<String> = [migrations::SEEDS_DIR, migrations::MASK_DIR]
        .into_iter()
        .flat_map(|dir| files.under(dir))
        .map(|(path, _)| path.to_string())
        .filter(|path| !seed_paths.contains(path) && !mask_paths.contains(path))
        .collect();
    let context = validate::Context {
        highest_migration: migrations.last().map_or(0, |m| m.version),
        seed_paths: &seed_paths,
        mask_paths: &mask_paths,
        unusable: &unusable,
    };
    let mut specs: Vec<Spec> = Vec::new();
    let mut identities: Vec<validate::Identity> = Vec::new();
    for (path, content) in files.under(ENVIRONMENTS_DIR) {
        if !RepoFiles::wants(path) {
            continue;
        }
        let file_name = &path[ENVIRONMENTS_DIR.len()..];
        let extension = has_extension(file_name, &[".yaml", ".yml"]).unwrap_or(".yaml");
        if let Some(misnamed) =
            misnamed_extension(path, extension, "environment", "`.yaml` or `.yml`")
        {
            diagnostics.push(misnamed);
            continue;
        }
        let Some(text) = migrations::text_of(path, content, &mut diagnostics) else {
            continue;
        };
        let (spec, found, identity) = validate::check_file(path, &text, &context);
        diagnostics.extend(found);
        // Clashes between files are checked for every file whose name and branches were read,
        // valid or not: one run reports them all.
        if let Some(identity) = identity {
            check_clashes(&identity, &identities, &mut diagnostics);
            identities.push(identity);
        }
        if let Some(spec) = spec {
            specs.push(spec);
        }
    }
    check_sources(&specs, &mut diagnostics);
    if diagnostics.is_empty() {
        Ok(Catalog {
            specs,
            migrations: migrations.into(),
            seeds,
            mask_files,
        })
    } else {
        diagnostics.sort();
        Err(diagnostics)
    }
}

/// Every `from.branch` must be covered by a spec other than its own, and following `from`s from
/// spec to spec must end (a source that is itself a data branch is fine; a cycle is not). The
/// default branch (`from` without a branch) is known only at plan time.
fn check_sources(specs: &[Spec], diagnostics: &mut Vec<Diagnostic>) {
    let covering = |branch: &str| {
        matching::best_match(
            branch,
            specs
                .iter()
                .enumerate()
                .map(|(i, s)| (i, s.branches.as_slice(), s.file.as_str())),
        )
    };
    let at = |spec: &Spec, message: String, hint: &str| Diagnostic {
        file: spec.file.clone(),
        line: spec.data.as_ref().map_or(1, |d| d.branch_pos.0),
        column: spec.data.as_ref().map_or(1, |d| d.branch_pos.1),
        message,
        hint: Some(hint.to_owned()),
    };
    // Which spec each spec's source branch belongs to.
    let mut next: Vec<Option<usize>> = vec![None; specs.len()];
    for (i, spec) in specs.iter().enumerate() {
        let Some(SourceRef::Branch(branch)) = spec.data.as_ref().map(|d| &d.from) else {
            continue;
        };
        match covering(branch) {
            Ok(Some(j)) if j == i => diagnostics.push(at(
                spec,
                format!("`from.branch` `{branch}` is covered by this spec itself, so its environment would be a copy of itself"),
                "copy from a branch another spec covers (e.g. `main`)",
            )),
            Ok(Some(j)) => next[i] = Some(j),
            Ok(None) => diagnostics.push(at(
                spec,
                format!("`from.branch` `{branch}` is covered by no spec, so it has no environment to copy"),
                "name a branch a spec covers, or add a spec for it",
            )),
            Err(tie) => diagnostics.push(at(spec, tie, "make one of the tying patterns more specific")),
        }
    }
    for start in 0..specs.len() {
        let mut seen = vec![start];
        let mut at_spec = start;
        while let Some(j) = next[at_spec] {
            if j == start {
                let names: Vec<&str> = seen.iter().map(|&k| specs[k].name.as_str()).collect();
                diagnostics.push(at(
                    &specs[start],
                    format!(
                        "`from` makes a cycle: {} → {}",
                        names.join(" → "),
                        specs[start].name
                    ),
                    "let one of them start empty (no `from`) or copy from a branch outside the cycle",
                ));
                break;
            }
            if seen.contains(&j) {
                break;
            }
            seen.push(j);
            at_spec = j;
        }
    }
}

/// A name used by an earlier file, or a pattern listed in one: both are errors at their place.
fn check_clashes(
    identity: &validate::Identity,
    earlier: &[validate::Identity],
    diagnostics: &mut Vec<Diagnostic>,
) {
    if let Some(first) = earlier.iter().find(|e| e.name == identity.name) {
        diagnostics.push(Diagnostic {
            file: identity.file.clone(),
            line: identity.name_pos.0,
            column: identity.name_pos.1,
            message: format!(
                "environment name `{}` is already used by `{}`",
                identity.name, first.file
            ),
            hint: Some("give each environment file a unique `name`".into()),
        });
    }
    // The same pattern in two files: every branch it matches would tie.
    for (pattern, (line, column)) in &identity.patterns {
        if let Some(other) = earlier
            .iter()
            .find(|e| e.patterns.iter().any(|(p, _)| p == pattern))
        {
            diagnostics.push(Diagnostic {
                file: identity.file.clone(),
                line: *line,
                column: *column,
                message: format!(
                    "branch pattern `{pattern}` is also in `{}`, so the branches it matches would be covered by both",
                    other.file
                ),
                hint: Some(
                    "keep the pattern in one file, or make one of them more specific".into(),
                ),
            });
        }
    }
}

impl Catalog {
    /// The spec that covers `branch`, if any; an error when two specs tie.
    pub fn spec_for(&self, branch: &str) -> Result<Option<&Spec>, String> {
        let best = matching::best_match(
            branch,
            self.specs
                .iter()
                .enumerate()
                .map(|(i, s)| (i, s.branches.as_slice(), s.file.as_str())),
        )?;
        Ok(best.map(|i| &self.specs[i]))
    }

    /// What `branch` wants, or `None` when no spec covers it.
    pub fn desired_for(
        &self,
        branch: &str,
        repo: &RepoName,
        prefix: &Prefix,
    ) -> Result<Option<DesiredEnv>, String> {
        let Some(spec) = self.spec_for(branch)? else {
            return Ok(None);
        };
        let target = spec
            .schema_version
            .unwrap_or_else(|| self.migrations.last().map_or(0, |m| m.version));
        // Most specs want every migration: one shared copy then.
        let migrations: std::sync::Arc<[Migration]> =
            if self.migrations.iter().all(|m| m.version <= target) {
                self.migrations.clone()
            } else {
                self.migrations
                    .iter()
                    .filter(|m| m.version <= target)
                    .cloned()
                    .collect()
            };
        let seeds = spec.seed_files(&self.seeds)?;
        let data = spec.data_source(&self.mask_files).transpose()?;
        Ok(Some(DesiredEnv {
            data,
            branch: branch.to_owned(),
            cluster_id: ClusterId::derive(prefix, repo, branch),
            env: spec.name.clone(),
            spec_file: spec.file.clone(),
            spec_hash: spec.hash.clone(),
            cluster: spec.cluster.clone(),
            database: spec.database.clone(),
            protect: spec.protect,
            ttl_seconds: spec.ttl_seconds,
            migrations,
            catalogue: self.migrations.clone(),
            target_version: target,
            seeds,
        }))
    }
}
