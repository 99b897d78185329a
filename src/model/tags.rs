//! The tags envctl writes on every environment, and how they change: the reserved keys, the
//! encoding of branch names and tag-key lists into tag values, and changes by difference
//! ([`tag_update`]), which keep every tag someone else set.
//!
//! Architecture invariant: no IO (see `model/mod.rs`).

use std::collections::{BTreeMap, BTreeSet};

// The keys envctl writes; every key starting with `envctl:` is reserved.
pub const RESERVED_PREFIX: &str = "envctl:";
pub const MANAGED: &str = "envctl:managed";
pub const REPO: &str = "envctl:repo";
/// The cluster id prefix of the run that made it: a namespace (two prefixes never touch each
/// other's environments).
pub const PREFIX: &str = "envctl:prefix";
pub const BRANCH: &str = "envctl:branch";
pub const ENV: &str = "envctl:env";
pub const SPEC_HASH: &str = "envctl:spec-hash";
pub const SCHEMA_VERSION: &str = "envctl:schema-version";
pub const LEDGER_DIGEST: &str = "envctl:ledger-digest";
pub const BASE: &str = "envctl:base";
pub const LAST_APPLIED: &str = "envctl:last-applied";
/// `{sha}@{committer time}`: the commit of its branch the last apply read. A plan from an older
/// commit blocks what would take the environment back (`commands::stale`).
pub const COMMIT: &str = "envctl:commit";
/// `true` when the spec that last applied the environment had `lifecycle.protect: true`.
pub const PROTECT: &str = "envctl:protect";
/// The spec's ttl in seconds, when it has one (prune needs it after the spec is gone).
pub const TTL: &str = "envctl:ttl";
/// `{user}@{name}`: the spec's `database.user` and `database.name` when the environment was
/// made (neither can change in place; on AWS the cluster does not say which user the spec named).
pub const DATABASE: &str = "envctl:database";
/// The keys of the spec's own tags, encoded (see [`encode_tag_keys`]): the tags envctl
/// may change or remove. Any other tag (cost allocation, AWS Config, a human) is left alone.
pub const SPEC_TAGS: &str = "envctl:spec-tags";
/// A data branch's source: the cluster id it was copied from.
pub const SOURCE: &str = "envctl:source";
/// A data branch's masking: `pending` from the copy until masking has committed, then `done`.
/// While it is `pending`, envctl hands out no connection to the environment.
pub const MASKED: &str = "envctl:masked";
/// A data branch's copy: random, made with the copy and carried by its masking records. A record
/// without it (one the source's data carried along, or forged there) is never taken as said.
pub const MASK_ID: &str = "envctl:mask-id";
/// A data branch's copy: the digest of the masking rules and files it was masked with, written
/// with `masked=done`. Rules or files changed since (a column someone forgot, masked now) plan a
/// copy again, so an open branch does not keep the column unmasked; until then envctl hands out
/// no connection to it (`commands::mask_gate`).
pub const MASK_DIGEST: &str = "envctl:mask-digest";

/// How many tags AWS allows on a resource.
pub const AWS_TAG_LIMIT: usize = 50;

/// Written only where it fits under [`AWS_TAG_LIMIT`] beside the rest (an environment made by an
/// earlier envctl may hold 50 already): without it, an environment is planned as before.
pub const BEST_EFFORT: [&str; 1] = [COMMIT];

/// Every key envctl writes on an environment (AWS allows 50 tags per resource, these included;
/// [`BEST_EFFORT`] ones only where they fit).
pub const ALL: [&str; 19] = [
    SOURCE,
    MASKED,
    MASK_ID,
    MASK_DIGEST,
    MANAGED,
    REPO,
    PREFIX,
    BRANCH,
    ENV,
    SPEC_HASH,
    SPEC_TAGS,
    DATABASE,
    SCHEMA_VERSION,
    LEDGER_DIGEST,
    BASE,
    LAST_APPLIED,
    COMMIT,
    PROTECT,
    TTL,
];

/// Tags that describe the database's contents or history rather than the spec. None comes from a
/// plan or a spec, and [`tag_update`] never removes one. Who writes them:
/// - `schema-version` and `ledger-digest`: only from a ledger read under the advisory lock, while
///   it is held, or as "unknown" at create and before a reset;
/// - `last-applied`: every apply that covers the environment, before anything runs (a no-op
///   apply too);
/// - `base`: at create, and by an apply of a named branch that has no commits of its own now;
/// - `commit`: at create, and by every apply whose branch was read at a commit.
pub const STATE: [&str; 5] = [SCHEMA_VERSION, LEDGER_DIGEST, LAST_APPLIED, BASE, COMMIT];

/// A resource's tags.
pub type Tags = BTreeMap<String, String>;

/// A change to a resource's tags: set these, remove those; every other tag is left as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagUpdate {
    pub set: Tags,
    pub remove: BTreeSet<String>,
    /// A tag the live resource must carry with this value, or nothing is written: a data
    /// branch's `masked=done` goes only onto the copy that was masked (its `envctl:mask-id`),
    /// never onto one another run made again under the same id meanwhile.
    pub only_if: Option<(String, String)>,
}

impl TagUpdate {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Sets one tag.
    pub fn set(key: &str, value: impl Into<String>) -> TagUpdate {
        TagUpdate {
            set: Tags::from([(key.to_owned(), value.into())]),
            ..TagUpdate::default()
        }
    }

    /// Adds `other`'s changes (and its condition, when it has one) to this update.
    pub fn merge(&mut self, other: TagUpdate) {
        self.set.extend(other.set);
        self.remove.extend(other.remove);
        if other.only_if.is_some() {
            self.only_if = other.only_if;
        }
    }

    /// Why the update may not be written on a resource with these live tags: its condition
    /// ([`TagUpdate::only_if`]) does not hold.
    pub fn refused_by(&self, live: &Tags) -> Option<String> {
        let (key, value) = self.only_if.as_ref()?;
        match live.get(key) {
            Some(live) if live == value => None,
            live => Some(format!(
                "its `{key}` is {} where this run's is `{value}`: another run made it again meanwhile, and this run's tags are not written onto it",
                live.map_or("missing".to_owned(), |l| format!("`{l}`"))
            )),
        }
    }

    /// Applies the update to a tag map (what a provider does on the live resource).
    pub fn apply_to(&self, tags: &mut Tags) {
        for key in &self.remove {
            tags.remove(key);
        }
        tags.extend(self.set.clone());
    }
}

/// Whether resources with these tags are a data branch's copy whose masking has not committed:
/// a copy (any of its tags says so: `envctl:source`, `envctl:mask-id`, `envctl:masked`) that is
/// not tagged `envctl:masked=done`. A copy whose `envctl:masked` tag someone removed or changed
/// is pending: its data may be its source's, unmasked.
pub fn masking_pending(tags: &Tags) -> bool {
    let copy = [SOURCE, MASK_ID, MASKED]
        .iter()
        .any(|k| tags.contains_key(*k));
    copy && tags.get(MASKED).map(String::as_str) != Some("done")
}

/// The digest of the masking rules and files a data branch's copy was masked with
/// ([`MASK_DIGEST`]), once its masking has committed (`envctl:masked=done`). None while it is
/// pending, nor on a copy masked before envctl recorded the digest.
pub fn masked_with(tags: &Tags) -> Option<&str> {
    match tags.get(MASKED).map(String::as_str) {
        Some("done") => tags.get(MASK_DIGEST).map(String::as_str),
        _ => None,
    }
}

/// Whether resources with these tags are a data branch's copy (any of [`DATA`] says so), masked
/// or not.
pub fn is_copy(tags: &Tags) -> bool {
    DATA.iter().any(|k| tags.contains_key(*k))
}

/// Tags about a data branch's copy: written when it is made and masked, never by a spec, and
/// never removed by [`tag_update`].
pub const DATA: [&str; 4] = [SOURCE, MASKED, MASK_ID, MASK_DIGEST];

/// What to change so that `live` carries `desired`: keys in `desired` with another value are set;
/// keys that envctl owns on `live` (`envctl:` keys, and the spec tags listed in its
/// `envctl:spec-tags`) and that `desired` lacks are removed, except the state tags
/// ([`STATE`]), which only a ledger read changes. Tags someone else put there are kept.
pub fn tag_update(live: &Tags, desired: &Tags) -> TagUpdate {
    let mut owned: BTreeSet<&str> = live
        .keys()
        .filter(|k| k.starts_with(RESERVED_PREFIX))
        .map(String::as_str)
        .collect();
    let listed = live
        .get(SPEC_TAGS)
        .and_then(|v| decode_tag_keys(v))
        .unwrap_or_default();
    owned.extend(listed.iter().map(String::as_str));
    TagUpdate {
        set: desired
            .iter()
            .filter(|(k, v)| live.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        remove: owned
            .into_iter()
            .filter(|k| live.contains_key(*k) && !desired.contains_key(*k))
            .filter(|k| !STATE.contains(k) && !DATA.contains(k))
            .map(str::to_owned)
            .collect(),
        only_if: None,
    }
}

/// Encodes the keys of a spec's tags for `envctl:spec-tags`: each key escaped as branch names are
/// (so no key contains a space), joined by spaces. `None` when the result is longer than a tag
/// value may be.
pub fn encode_tag_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Option<String> {
    let encoded: Vec<String> = keys.into_iter().map(|k| escape_tag_text(k)).collect();
    let text = encoded.join(" ");
    (text.len() <= MAX_TAG_VALUE_LEN).then_some(text)
}

/// Decodes `envctl:spec-tags`; `None` when it is not a valid encoding.
pub fn decode_tag_keys(value: &str) -> Option<Vec<String>> {
    value
        .split(' ')
        .filter(|k| !k.is_empty())
        .map(decode_branch_tag)
        .collect()
}

/// Longest AWS tag value.
pub const MAX_TAG_VALUE_LEN: usize = 256;

fn tag_char_unescaped(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '+' | '-' | '@')
}

/// Encodes a branch name for the `envctl:branch` tag: characters AWS tag values do not allow, and
/// `=` itself, become `=XX` per UTF-8 byte (`'` → `=27`).
pub fn encode_branch_tag(branch: &str) -> Result<String, String> {
    let out = escape_tag_text(branch);
    if out.len() > MAX_TAG_VALUE_LEN {
        return Err(format!(
            "branch `{branch}` is too long for the `envctl:branch` tag: its encoding has {} characters, AWS allows {MAX_TAG_VALUE_LEN}; use a shorter branch name",
            out.len()
        ));
    }
    Ok(out)
}

/// Escapes text for a tag value: characters AWS tag values do not allow, space and `=` become
/// `=XX` per UTF-8 byte.
fn escape_tag_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if tag_char_unescaped(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("={byte:02X}"));
            }
        }
    }
    out
}

/// Decodes an `envctl:branch` tag value; `None` when it is not a valid encoding.
pub fn decode_branch_tag(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut iter = value.bytes();
    while let Some(b) = iter.next() {
        if b == b'=' {
            let hi = iter.next()?;
            let lo = iter.next()?;
            let hex = [hi, lo];
            let text = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(text, 16).ok()?);
        } else if tag_char_unescaped(b as char) {
            bytes.push(b);
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_tag_escapes_quote() {
        assert_eq!(encode_branch_tag("fix/it's").unwrap(), "fix/it=27s");
        assert_eq!(encode_branch_tag("a=b").unwrap(), "a=3Db");
        assert_eq!(decode_branch_tag("fix/it=27s").unwrap(), "fix/it's");
        assert_eq!(decode_branch_tag("bad=Z"), None);
    }

    #[test]
    fn branch_tag_too_long_is_refused() {
        let err = encode_branch_tag(&"é".repeat(50)).unwrap_err();
        assert!(err.contains("300 characters"), "{err}");
    }
}
