//! What users read besides plans, snapshotted as the planner's renderings are: the `status`
//! table (columns padded by display width, so wide and combining characters line up), its JSON,
//! apply's per-environment result lines (a failure's causes each on a line of its own), and
//! prune's result lines. The time is an argument: nothing here depends on the clock.

use std::time::SystemTime;

use envctl::model::{
    Acu, ClusterId, EnvOutcome, Failure, ObservedEnv, OutcomeStatus, Scaling, encode_branch_tag,
    tags,
};
use envctl::plan::prune::{PruneResult, PruneStatus};
use envctl::plan::render;

/// 2026-11-20T12:00:00Z.
fn now() -> SystemTime {
    humantime::parse_rfc3339("2026-11-20T12:00:00Z").unwrap()
}

fn live(branch: &str, id: &str, extra: &[(&str, &str)]) -> ObservedEnv {
    let mut tags: std::collections::BTreeMap<String, String> = [
        (tags::BRANCH, encode_branch_tag(branch).unwrap()),
        (tags::ENV, "preview".to_owned()),
        (tags::SCHEMA_VERSION, "3".to_owned()),
        (tags::LAST_APPLIED, "2026-11-20T09:00:00Z".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        tags.insert((*k).to_owned(), (*v).to_owned());
    }
    ObservedEnv {
        cluster_id: ClusterId::from_live(id),
        tags,
        status: "available".into(),
        status_hint: None,
        scaling: Some(Scaling {
            min_acu: Acu::from_f64(0.0).unwrap(),
            max_acu: Acu::from_f64(4.0).unwrap(),
        }),
        deletion_protection: false,
        engine_version: None,
        database_name: None,
        database_user: Some("app".into()),
        created_at: Some("2026-11-18T12:00:00Z".into()),
        endpoint: Some("127.0.0.1:5432".into()),
        arn: None,
        writerless: false,
        refused: None,
        ledger: Default::default(),
    }
}

fn observed() -> Vec<ObservedEnv> {
    let mut stopped = live(
        "feature/日本語",
        "envctl-feature-0b5e3c1a",
        &[(tags::TTL, "86400")],
    );
    stopped.status = "stopped".into();
    stopped.scaling = None;
    stopped.endpoint = None;
    // Available, but its writer is gone: the state says so (it is not ready for anything).
    let mut writerless = live(
        "fix/cafe\u{301}",
        "envctl-fix-cafe-1d2c3b4a",
        &[(tags::TTL, "600")],
    );
    writerless.writerless = true;
    vec![
        live("feature/login", "envctl-feature-login-005b07d0", &[]),
        stopped,
        live(
            "main",
            "envctl-main-7f3a2b1c",
            &[(tags::PROTECT, "true"), (tags::TTL, "3600")],
        ),
        writerless,
    ]
}

#[test]
fn status_table() {
    let table = render::status_table(&observed(), None, now());
    insta::assert_snapshot!(table);
    // Every row's third column starts in the same terminal column: padding counts display width.
    let starts: Vec<usize> = table
        .lines()
        .map(|line| {
            let at = line
                .find("envctl-")
                .or_else(|| line.find("CLUSTER ID"))
                .unwrap();
            unicode_width::UnicodeWidthStr::width(&line[..at])
        })
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] == w[1]),
        "{starts:?}\n{table}"
    );
}

#[test]
fn a_schema_version_no_apply_converged_is_shown_unknown() {
    // As a create (or a copy, which carries its source's ledger) cut off before its migrations
    // leaves its tags.
    let cut_off = live(
        "feature/cut",
        "envctl-feature-cut-1a2b3c4d",
        &[(tags::SCHEMA_VERSION, "0"), (tags::LEDGER_DIGEST, "none")],
    );
    let converged = live(
        "feature/zero",
        "envctl-feature-zero-1a2b3c4d",
        &[(tags::SCHEMA_VERSION, "0"), (tags::LEDGER_DIGEST, "abc")],
    );
    let table = render::status_table(&[cut_off, converged], None, now());
    let schema_of = |branch: &str| {
        let header = table.lines().next().unwrap();
        let at = header.find("SCHEMA").unwrap();
        let line = table.lines().find(|l| l.starts_with(branch)).unwrap();
        line[at..].split_whitespace().next().unwrap().to_owned()
    };
    assert_eq!(schema_of("feature/cut"), "-", "{table}");
    assert_eq!(schema_of("feature/zero"), "0", "{table}");
}

#[test]
fn status_json() {
    let json = render::status_json(&observed(), None);
    insta::assert_snapshot!(serde_json::to_string_pretty(&json).unwrap());
}

fn outcome(branch: &str, done: &[&str], status: OutcomeStatus) -> EnvOutcome {
    EnvOutcome {
        branch: branch.into(),
        env: "preview".into(),
        cluster_id: ClusterId::from_live(format!("envctl-{}", branch.replace('/', "-"))),
        done: done.iter().map(|d| (*d).to_owned()).collect(),
        status,
        exists: true,
    }
}

#[test]
fn apply_result_lines() {
    let failure = Failure {
        message: "cannot log in to `envctl-feature-b` as `app`".into(),
        causes: vec![
            "password authentication failed for user \"app\" (SQLSTATE 28P01)".into(),
            "line one\nline two".into(),
        ],
    };
    let outcomes = [
        outcome(
            "feature/a",
            &["created", "migrated 0001_init"],
            OutcomeStatus::Ok,
        ),
        outcome(
            "feature/b",
            &["created"],
            OutcomeStatus::Failed(failure.clone()),
        ),
        outcome("feature/c", &[], OutcomeStatus::NotStarted),
    ];
    let mut text: String = outcomes.iter().map(|o| render::outcome(o) + "\n").collect();
    text.push_str(&render::outcome_summary("Apply", &outcomes));
    insta::assert_snapshot!(text);
    // The JSON keeps the whole chain on one line.
    assert_eq!(
        serde_json::to_value(&failure).unwrap(),
        "cannot log in to `envctl-feature-b` as `app`: password authentication failed for user \"app\" (SQLSTATE 28P01): line one\nline two"
    );
}

#[test]
fn prune_result_lines() {
    let result = |branch: &str, status, reason: Option<&str>, error: Option<Failure>| PruneResult {
        branch: branch.into(),
        env: "preview".into(),
        cluster_id: ClusterId::from_live(format!("envctl-{}", branch.replace('/', "-"))),
        status,
        reason: reason.map(str::to_owned),
        error,
    };
    let results = [
        result(
            "feature/gone",
            PruneStatus::Deleted,
            Some("branch deleted: not on origin"),
            None,
        ),
        result("feature/raced", PruneStatus::Gone, None, None),
        result(
            "feature/pushed",
            PruneStatus::Kept,
            Some("its `envctl:last-applied` tag changed since the plan"),
            None,
        ),
        result(
            "feature/broken",
            PruneStatus::Failed,
            None,
            Some(Failure {
                message: "cannot delete `envctl-feature-broken`".into(),
                causes: vec!["connection refused".into()],
            }),
        ),
        result(
            "feature/late",
            PruneStatus::NotStarted,
            None,
            Some(Failure::new("interrupted before it started")),
        ),
    ];
    let mut text: String = results
        .iter()
        .map(|r| render::prune_result(r) + "\n")
        .collect();
    text.push_str(&render::prune_results_summary(&results));
    insta::assert_snapshot!(text);
}

#[test]
fn doctor_puts_a_fix_under_its_check_s_detail() {
    use envctl::model::{Check, CheckOutcome};
    let checks = [
        Check {
            check: "git origin".into(),
            outcome: CheckOutcome::Ok {
                detail: "o/r".into(),
            },
        },
        Check {
            check: "default branch".into(),
            outcome: CheckOutcome::Failed {
                detail: "unknown".into(),
                fix: "set it".into(),
            },
        },
    ];
    assert_eq!(
        render::doctor(&checks, render::Style { color: false }),
        "✓ git origin      o/r\n\
         ✗ default branch  unknown\n                  fix: set it\n\
         \n\
         Doctor: 1 check failed.\n"
    );
}

#[test]
fn the_default_branchs_environment_never_expires_in_status() {
    // A starter spec covers every branch with a ttl; prune never deletes the default branch's.
    let main = live("main", "envctl-main-7f3a2b1c", &[(tags::TTL, "3600")]);
    let feature = live(
        "feature/login",
        "envctl-feature-login-005b07d0",
        &[(tags::TTL, "3600")],
    );
    let table = render::status_table(&[main.clone(), feature.clone()], Some("main"), now());
    let row = |branch: &str| table.lines().find(|l| l.starts_with(branch)).unwrap();
    assert!(row("main ").contains("never (default branch)"), "{table}");
    assert!(row("feature/login").contains("expired"), "{table}");
    let json = render::status_json(&[main, feature], Some("main"));
    assert_eq!(
        json["environments"][0]["expires_at"],
        serde_json::Value::Null
    );
    assert!(json["environments"][1]["expires_at"].is_string(), "{json}");
}
