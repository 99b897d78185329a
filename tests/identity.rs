//! Properties of cluster ids and the `envctl:branch` tag encoding over arbitrary git-valid branch
//! names, unicode included. Counted fuzz runs (`support::reliability::fuzz`, RELIABILITY.md).

mod support;

use envctl::model::{
    ClusterId, MAX_CLUSTER_ID_LEN, MAX_TAG_VALUE_LEN, Prefix, RepoName, check_branch_name,
    decode_branch_tag, encode_branch_tag, is_valid_rds_identifier,
};
use proptest::prelude::*;
use support::reliability::fuzz;

fn repo() -> RepoName {
    RepoName::parse("Acme/Shop").unwrap()
}

/// Branch names git accepts: letters of several scripts, digits, punctuation, `/` segments.
fn branch_name() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9._/'\";&$()!#%,+=@é日本ß\\-]{1,220}")
        .unwrap()
        .prop_filter("git-valid branch names", |b| check_branch_name(b).is_ok())
}

fn prefix() -> impl Strategy<Value = Prefix> {
    proptest::string::string_regex("[a-z]([a-z0-9]{0,9}(-[a-z0-9]{1,4})?)?")
        .unwrap()
        .prop_filter_map("valid prefixes", |p| Prefix::parse(&p).ok())
}

#[test]
fn cluster_id_is_always_a_valid_rds_identifier() {
    fuzz(
        "cluster_id_of_git_branches",
        512,
        100,
        (branch_name(), prefix()),
        |(branch, prefix)| {
            let id = ClusterId::derive(&prefix, &repo(), &branch);
            prop_assert!(is_valid_rds_identifier(id.as_str()), "{id} for {branch:?}");
            prop_assert!(
                id.as_str().len() <= MAX_CLUSTER_ID_LEN,
                "{id} is {} long",
                id.as_str().len()
            );
            let instance = format!("{id}-instance-1");
            prop_assert!(instance.len() <= 63, "{}", instance);
            let expected_start = format!("{}-", prefix.as_str());
            prop_assert!(id.as_str().starts_with(&expected_start), "{}", id);
            prop_assert_eq!(
                &id,
                &ClusterId::derive(&prefix, &repo(), &branch),
                "deterministic"
            );
            Ok(())
        },
    );
}

#[test]
fn folded_characters_still_give_different_ids() {
    fuzz("folded_branch_ids", 512, 100, branch_name(), |branch| {
        let variants = [
            branch.replace('-', "_"),
            branch.replace('_', "-"),
            branch.to_uppercase(),
            branch.to_lowercase(),
        ];
        let id = ClusterId::derive(&Prefix::default(), &repo(), &branch);
        for variant in variants.iter().filter(|v| **v != branch) {
            prop_assert_ne!(
                &id,
                &ClusterId::derive(&Prefix::default(), &repo(), variant)
            );
        }
        Ok(())
    });
}

#[test]
fn branch_tag_round_trips_or_is_refused() {
    fuzz(
        "branch_tag_of_git_branches",
        512,
        100,
        branch_name(),
        |branch| {
            match encode_branch_tag(&branch) {
                Ok(encoded) => {
                    prop_assert!(encoded.len() <= MAX_TAG_VALUE_LEN);
                    prop_assert!(
                        encoded
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.:/=+-@".contains(c)),
                        "{encoded}"
                    );
                    prop_assert_eq!(decode_branch_tag(&encoded), Some(branch));
                }
                Err(message) => {
                    prop_assert!(
                        message.contains("too long for the `envctl:branch` tag"),
                        "{message}"
                    );
                    prop_assert!(
                        branch.len() > MAX_TAG_VALUE_LEN / 9,
                        "short branch refused: {branch:?}"
                    );
                }
            }
            Ok(())
        },
    );
}

#[test]
fn ids_of_branches_that_fold_together_differ() {
    let ids: Vec<ClusterId> = ["a_b", "a-b", "A-B"]
        .iter()
        .map(|b| ClusterId::derive(&Prefix::default(), &repo(), b))
        .collect();
    assert!(ids.iter().all(|id| id.as_str().starts_with("envctl-a-b-")));
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
    assert_ne!(ids[0], ids[2]);
}

#[test]
fn a_long_branch_tag_is_refused_with_a_clear_error() {
    let err = encode_branch_tag(&format!("feature/{}", "'".repeat(100))).unwrap_err();
    assert_eq!(
        err,
        format!(
            "branch `feature/{}` is too long for the `envctl:branch` tag: its encoding has 308 characters, AWS allows 256; use a shorter branch name",
            "'".repeat(100)
        )
    );
}

#[test]
fn git_branch_rules() {
    for good in [
        "main",
        "feature/login",
        "fix/it's",
        "日本",
        "a.b",
        "release/1.2",
    ] {
        assert!(check_branch_name(good).is_ok(), "{good}");
    }
    for bad in [
        "", "-x", "a..b", "a/", "/a", "a//b", "a.lock", "a/.b", "a b", "a~b", "a:b", "a@{b", "a.",
        "HEAD",
    ] {
        assert!(check_branch_name(bad).is_err(), "{bad:?}");
    }
}

/// Ids computed once by hand (Python's hashlib over `{repo}\n{branch}`), not by the formula under
/// test: the README's example id among them. A change to the id formula renames every live
/// environment, so it must show up here.
#[test]
fn golden_ids() {
    let acme = RepoName::parse("Acme/Shop").unwrap();
    let prefix = Prefix::default();
    for (branch, want) in [
        ("feature/login", "envctl-feature-login-005b07d0"),
        ("main", "envctl-main-f053b222"),
        ("日本語", "envctl-062f229b"),
        ("fix/it's", "envctl-fix-it-s-7b5d0f07"),
    ] {
        assert_eq!(ClusterId::derive(&prefix, &acme, branch).as_str(), want);
    }
    let quickstart = RepoName::parse("envctl/quickstart").unwrap();
    assert_eq!(
        ClusterId::derive(
            &Prefix::parse("alice").unwrap(),
            &quickstart,
            "feature/login"
        )
        .as_str(),
        "alice-feature-login-1213b0ba"
    );
}
