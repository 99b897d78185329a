//! Who and what: repository names, the id prefix, ownership ([`Owner`]), branch names and the
//! cluster ids envctl derives for them.
//!
//! Architecture invariant: no IO (see `model/mod.rs`).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tags::{self, Tags};

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `OWNER/NAME`, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RepoName(String);

impl RepoName {
    /// Parses `owner/name` (GitHub's alphabet: letters, digits, `-`, `_`, `.`), lower-casing it.
    pub fn parse(text: &str) -> Result<RepoName, String> {
        let text = text.trim();
        let valid_part = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match text.split_once('/') {
            Some((owner, name)) if valid_part(owner) && valid_part(name) => {
                Ok(RepoName(text.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "`{text}` is not a repository name; expected `OWNER/NAME`, e.g. `acme/shop`"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The cluster id prefix: a letter, then up to 19 of `[a-z0-9-]`, no `--`, no trailing `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix(String);

impl Default for Prefix {
    fn default() -> Self {
        Prefix("envctl".to_owned())
    }
}

impl Prefix {
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let mut chars = text.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !starts_with_letter || !rest_ok || text.len() > 20 {
            return Err(format!(
                "`{text}` is not a valid prefix: use a lower-case letter followed by up to 19 of `a-z`, `0-9`, `-`"
            ));
        }
        if text.contains("--") || text.ends_with('-') {
            return Err(format!(
                "`{text}` is not a valid prefix: it may not contain `--` or end with `-`"
            ));
        }
        Ok(Prefix(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who owns an environment: this repository under this id prefix. envctl changes or deletes only
/// what carries `envctl:managed=true` with both of these, checked when observing and again on the
/// live resource right before every change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub repo: RepoName,
    pub prefix: Prefix,
}

impl Owner {
    /// Whether tags read from a live resource say it is ours.
    pub fn owns(&self, tags: &Tags) -> bool {
        tags.get(tags::MANAGED).map(String::as_str) == Some("true")
            && tags.get(tags::REPO).map(String::as_str) == Some(self.repo.as_str())
            && tags.get(tags::PREFIX).map(String::as_str) == Some(self.prefix.as_str())
    }

    /// Why tags read from a live resource are not ours, for an error message; `None` when they are.
    pub fn why_not_ours(&self, tags: &Tags) -> Option<String> {
        if tags.get(tags::MANAGED).map(String::as_str) != Some("true") {
            return Some("it does not carry `envctl:managed=true`".into());
        }
        match tags.get(tags::REPO) {
            Some(repo) if repo == self.repo.as_str() => {}
            Some(repo) => return Some(format!("it belongs to repository `{repo}`")),
            None => return Some("it carries no `envctl:repo` tag".into()),
        }
        match tags.get(tags::PREFIX) {
            Some(prefix) if prefix == self.prefix.as_str() => None,
            Some(prefix) => Some(format!(
                "it belongs to prefix `{prefix}` (ENVCTL_PREFIX), not `{}`",
                self.prefix.as_str()
            )),
            None => Some("it carries no `envctl:prefix` tag".into()),
        }
    }

    /// Why envctl did not make the resource with this id, whatever its tags say: every id it
    /// makes starts with `{prefix}-`. `None` for an id under the prefix.
    pub fn id_outside_prefix(&self, id: &ClusterId) -> Option<String> {
        let prefix = self.prefix.as_str();
        match id.as_str().strip_prefix(prefix) {
            Some(rest) if rest.starts_with('-') => None,
            _ => Some(format!(
                "its id `{id}` does not start with `{prefix}-`, as every id envctl makes does: its `envctl:` tags were set by hand or copied, and envctl never changes or deletes it; remove those tags from it"
            )),
        }
    }

    /// The tags that mark a resource as ours.
    pub fn tags(&self) -> Tags {
        Tags::from([
            (tags::MANAGED.to_owned(), "true".to_owned()),
            (tags::REPO.to_owned(), self.repo.as_str().to_owned()),
            (tags::PREFIX.to_owned(), self.prefix.as_str().to_owned()),
        ])
    }
}

/// Checks a branch name against git's ref-name rules (`git check-ref-format --branch`).
pub fn check_branch_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{name}` is not a valid git branch name: {why}"));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "@" {
        return bad("`@` alone is not allowed");
    }
    if name == "HEAD" {
        return bad("`HEAD` names whatever is checked out, not a branch");
    }
    if name.starts_with('-') {
        return bad("it may not start with `-`");
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return bad("it may not start or end with `/` or contain `//`");
    }
    if name.ends_with('.') || name.contains("..") || name.contains("@{") {
        return bad("it may not end with `.` or contain `..` or `@{`");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad(&format!("it may not contain {c:?}"));
    }
    for component in name.split('/') {
        if component.starts_with('.') || component.ends_with(".lock") {
            return bad("no path component may start with `.` or end with `.lock`");
        }
    }
    Ok(())
}

/// The login envctl makes on every AWS environment to read its ledger and nothing else (the plan
/// role connects as it).
pub const READER_USER: &str = "envctl_reader";

/// Longest cluster id we generate: `{id}-instance-1` must fit in RDS's 63 characters.
pub const MAX_CLUSTER_ID_LEN: usize = 52;

/// An RDS DB cluster identifier that envctl derived for a branch, or read from a live cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(String);

impl ClusterId {
    /// `{prefix}-{slug}-{hash}`: see product.md "Identity and ownership".
    pub fn derive(prefix: &Prefix, repo: &RepoName, branch: &str) -> ClusterId {
        let hash = &sha256_hex(format!("{}\n{branch}", repo.as_str()).as_bytes())[..8];
        let mut slug = String::new();
        for c in branch.to_lowercase().chars() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                slug.push(c);
            } else if !slug.ends_with('-') {
                slug.push('-');
            }
        }
        let budget = MAX_CLUSTER_ID_LEN - prefix.as_str().len() - 2 - hash.len();
        let slug: String = slug.trim_matches('-').chars().take(budget).collect();
        let slug = slug.trim_end_matches('-');
        if slug.is_empty() {
            ClusterId(format!("{}-{hash}", prefix.as_str()))
        } else {
            ClusterId(format!("{}-{slug}-{hash}", prefix.as_str()))
        }
    }

    /// Wraps an id read from a live resource.
    pub fn from_live(id: impl Into<String>) -> ClusterId {
        ClusterId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `id` is a valid RDS DB cluster identifier (1–63, starts with a letter, `[a-z0-9-]`, no
/// `--`, no trailing `-`).
pub fn is_valid_rds_identifier(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoName {
        RepoName::parse("Acme/Shop").unwrap()
    }

    #[test]
    fn cluster_id_has_slug_and_hash() {
        let id = ClusterId::derive(&Prefix::default(), &repo(), "feature/Login_Page");
        assert!(
            id.as_str().starts_with("envctl-feature-login-page-"),
            "{id}"
        );
        assert_eq!(id.as_str().len(), "envctl-feature-login-page-".len() + 8);
        assert!(is_valid_rds_identifier(id.as_str()));
    }

    #[test]
    fn cluster_id_hash_uses_lowercased_repo() {
        let a = ClusterId::derive(&Prefix::default(), &repo(), "main");
        let b = ClusterId::derive(
            &Prefix::default(),
            &RepoName::parse("acme/shop").unwrap(),
            "main",
        );
        assert_eq!(a, b);
        let expected = &sha256_hex(b"acme/shop\nmain")[..8];
        assert_eq!(a.as_str(), format!("envctl-main-{expected}"));
    }

    #[test]
    fn cluster_id_of_non_ascii_branch_has_no_slug() {
        let id = ClusterId::derive(&Prefix::default(), &repo(), "日本語");
        assert_eq!(id.as_str().len(), "envctl-".len() + 8);
    }

    #[test]
    fn cluster_id_is_cut_to_52() {
        let branch = "feature/".to_owned() + &"a".repeat(200);
        let id = ClusterId::derive(&Prefix::parse("p").unwrap(), &repo(), &branch);
        assert_eq!(id.as_str().len(), MAX_CLUSTER_ID_LEN);
        let id = ClusterId::derive(
            &Prefix::parse("abcdefghij0123456789").unwrap(),
            &repo(),
            &branch,
        );
        assert_eq!(id.as_str().len(), MAX_CLUSTER_ID_LEN);
        assert!(is_valid_rds_identifier(id.as_str()));
    }

    #[test]
    fn prefix_rules() {
        assert!(Prefix::parse("envctl").is_ok());
        assert!(Prefix::parse("a").is_ok());
        for bad in [
            "",
            "1abc",
            "Abc",
            "a--b",
            "ab-",
            "abcdefghij01234567890",
            "a_b",
        ] {
            assert!(Prefix::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn repo_names() {
        assert_eq!(RepoName::parse("Acme/Shop").unwrap().as_str(), "acme/shop");
        assert!(RepoName::parse("acme").is_err());
        assert!(RepoName::parse("a/b/c").is_err());
        assert!(RepoName::parse("../..").is_err());
        assert!(RepoName::parse("acme/.").is_err());
    }
}
