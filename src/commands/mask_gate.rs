//! Whether a data branch's copy may be handed out under the masking its spec asks for now.
//! `url`, `exec`, `token` and `proxy` refuse a copy whose masking committed with other rules or
//! files (its `envctl:mask-digest`) than the branch's spec, read now, names, as they refuse one
//! whose masking is pending: a column masked since would be served as its source has it, until an
//! apply copies again (and for good where `--no-reset`, `protect` or `--max-deletions` block
//! that reset).
//!
//! The spec is read as `plan` reads it ([`Settings::load_scope`]: the current branch's working
//! tree, another branch's own commit), and only for an environment that is a copy. Left as
//! before: an environment that is no copy; a copy masked before envctl recorded the digest (there
//! is nothing to compare, and `plan` leaves it too); and a copy whose spec no longer copies data
//! (no `from`) or that no spec covers any more: those name no rules to hold it to, and no apply
//! would copy it again, so a refusal could never be lifted by the apply it would name.

use std::collections::BTreeMap;

use crate::model::{ObservedEnv, Wanted};
use crate::report::UserError;
use crate::settings::{InvalidSpecs, Settings};

/// What a branch's spec, read now, says of its copy's masking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SpecMasking {
    /// The digest of its masking rules and files.
    Digest(String),
    /// It copies no data (no `from`), or no spec covers the branch: no rules to compare.
    NoCopy,
    /// It cannot be read (an invalid spec, an unreadable tree): whether its rules changed is not
    /// known.
    Unreadable,
}

impl SpecMasking {
    /// The digest a copy must have been masked with, where the spec names one.
    pub(super) fn digest(&self) -> Option<&str> {
        match self {
            SpecMasking::Digest(digest) => Some(digest),
            _ => None,
        }
    }
}

/// The spec's masking of each of `branches`, read in one pass (no branch, no read).
pub(super) fn spec_masking(
    settings: &Settings,
    branches: &[String],
) -> BTreeMap<String, SpecMasking> {
    if branches.is_empty() {
        return BTreeMap::new();
    }
    // Blocked, not refused: one branch's invalid spec says nothing of another's.
    let scope = settings.load_scope(branches, InvalidSpecs::Block).ok();
    branches
        .iter()
        .map(|branch| {
            let wanted = scope.as_ref().and_then(|s| s.desired.get(branch));
            let masking = match wanted {
                Some(Wanted::Env(desired)) => match &desired.data {
                    Some(data) => SpecMasking::Digest(data.mask_digest()),
                    None => SpecMasking::NoCopy,
                },
                Some(Wanted::Nothing) => SpecMasking::NoCopy,
                Some(Wanted::Unknown { .. }) | None => SpecMasking::Unreadable,
            };
            (branch.clone(), masking)
        })
        .collect()
}

/// The spec's masking of `env`'s branch, read only where `env` is a copy (`None` otherwise).
pub(super) fn spec_masking_of(
    settings: &Settings,
    env: &ObservedEnv,
    branch: &str,
) -> Option<SpecMasking> {
    if !env.is_copy() {
        return None;
    }
    spec_masking(settings, &[branch.to_owned()]).remove(branch)
}

/// Why a copy is not handed out under its branch's spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It was masked with other rules or files than the spec's.
    Changed,
    /// The spec cannot be read, so that is not known.
    Unreadable,
}

/// Why a copy masked with `live` (its recorded digest, [`ObservedEnv::masked_with`]) is not
/// handed out under `spec` (its branch's, read now), if it is not. Only a copy whose masking
/// committed with a recorded digest is compared.
pub(super) fn refusal(live: Option<&str>, spec: Option<&SpecMasking>) -> Option<Refusal> {
    let live = live?;
    match spec? {
        SpecMasking::Digest(wanted) => (wanted != live).then_some(Refusal::Changed),
        SpecMasking::NoCopy => None,
        SpecMasking::Unreadable => Some(Refusal::Unreadable),
    }
}

impl Refusal {
    /// The error of a command that connects to `branch` (`url`, `exec`, `token`, `proxy`).
    pub(super) fn for_branch(self, branch: &str) -> UserError {
        match self {
            Refusal::Changed => UserError::with_hint(
                format!(
                    "the environment of branch `{branch}` is a copy masked with other masking rules or files than its spec's: the masking rules changed since the copy was masked, so a column masked now may hold its source's data, and envctl hands out no connection to it"
                ),
                format!(
                    "`envctl apply --branch {branch}` copies it again and masks it with the spec's rules (a reset; `envctl plan --branch {branch}` shows it)"
                ),
            ),
            Refusal::Unreadable => UserError::with_hint(
                format!(
                    "the spec of branch `{branch}` cannot be read, so whether its masking rules changed since its copy was masked is not known: envctl hands out no connection to it"
                ),
                "`envctl validate` says what is wrong with the spec",
            ),
        }
    }

    /// Why `proxy --all` does not serve `branch`.
    pub(super) fn left_out(self, branch: &str) -> String {
        match self {
            Refusal::Changed => format!(
                "its environment is a copy masked with other masking rules or files than its spec's: the masking rules changed since the copy was masked (`envctl apply --branch {branch}` copies it again and masks it)"
            ),
            Refusal::Unreadable => "its spec cannot be read, so whether its masking rules changed since its copy was masked is not known (`envctl validate` says why)".to_owned(),
        }
    }
}

/// What a running proxy's gate says of a copy masked with `live` (its digest now) where the spec
/// the proxy read names `wanted`: refused when both are known and differ (a reset made the copy
/// again with other rules meanwhile).
pub(super) fn gate_refusal(wanted: Option<&str>, live: Option<&str>) -> Option<String> {
    let (wanted, live) = (wanted?, live?);
    (wanted != live).then(|| {
        "this copy was masked with other masking rules or files than its spec's when the proxy \
         started: the masking rules changed since the copy was masked, so a column masked now \
         may hold its source's data; `envctl apply` copies it again and masks it (restart the \
         proxy if the spec changed since it started)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Tags, tags};

    /// What a copy's tags say it was masked with ([`tags::masked_with`]).
    fn live(pairs: &[(&str, &str)]) -> Option<String> {
        let tags: Tags = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tags::masked_with(&tags).map(str::to_owned)
    }

    fn masked_with(digest: &str) -> Option<String> {
        live(&[
            (tags::SOURCE, "envctl-main"),
            (tags::MASKED, "done"),
            (tags::MASK_DIGEST, digest),
        ])
    }

    #[test]
    fn a_copy_masked_with_other_rules_than_the_spec_s_is_refused() {
        let spec = SpecMasking::Digest("new".into());
        let old = masked_with("old");
        assert_eq!(refusal(old.as_deref(), Some(&spec)), Some(Refusal::Changed));
        let new = masked_with("new");
        assert_eq!(refusal(new.as_deref(), Some(&spec)), None);
        let unreadable = SpecMasking::Unreadable;
        assert_eq!(
            refusal(new.as_deref(), Some(&unreadable)),
            Some(Refusal::Unreadable)
        );
    }

    #[test]
    fn what_names_no_rules_to_compare_is_handed_out_as_before() {
        let spec = SpecMasking::Digest("new".into());
        // No copy; a copy masked before the digest was recorded; one still pending.
        assert_eq!(refusal(live(&[]).as_deref(), Some(&spec)), None);
        let older = live(&[(tags::SOURCE, "envctl-main"), (tags::MASKED, "done")]);
        assert_eq!(refusal(older.as_deref(), Some(&spec)), None);
        let pending = live(&[(tags::MASKED, "pending"), (tags::MASK_DIGEST, "old")]);
        assert_eq!(pending, None);
        // A spec that copies no data any more, or that is gone.
        let old = masked_with("old");
        assert_eq!(refusal(old.as_deref(), Some(&SpecMasking::NoCopy)), None);
        // A gate: either digest unknown.
        assert_eq!(gate_refusal(None, Some("old")), None);
        assert_eq!(gate_refusal(Some("new"), None), None);
        assert_eq!(gate_refusal(Some("new"), Some("new")), None);
        assert!(gate_refusal(Some("new"), Some("old")).is_some());
    }
}
