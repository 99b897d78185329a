//! The IAM policies `envctl iam-policy` prints, judged by IAM's own evaluation rules (the IAM User
//! Guide, "Policy evaluation logic" and "Condition operators"), not by what the AWS peer allows:
//! - a request is allowed only when some statement allows it and none denies it (an explicit Deny
//!   wins; nothing said is a deny);
//! - a statement applies when its `Action` and `Resource` match (`*` and `?` wildcards) and every
//!   operator of its `Condition` holds (operators are ANDed, and so are the keys of one
//!   operator; the values of one key are ORed, but ANDed for a negated operator);
//! - a key missing from the request makes a positive operator false, a negated one
//!   (`StringNotEquals`, `StringNotLike`) true, any `…IfExists` true; `Null: true` holds exactly
//!   when it is missing; `ForAnyValue:` is false and `ForAllValues:` true on a missing key.
//!
//! Each case is a request envctl (or someone holding its role) could make, built from the
//! request context AWS documents for the RDS actions: `aws:RequestTag/…` and `aws:TagKeys` for
//! the tags sent, `aws:ResourceTag/…` for the tags the resource carries, `rds:DatabaseEngine` and
//! `rds:DatabaseClass` for creates.

use std::collections::BTreeMap;

use envctl::model::{Owner, Prefix, RepoName};
use envctl::provider::aws::policy::{self, Role, Scope};
use serde_json::Value;

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Allowed,
    ExplicitDeny,
    ImplicitDeny,
}

/// One API call as IAM sees it.
struct Request {
    action: &'static str,
    resource: String,
    context: BTreeMap<String, Vec<String>>,
}

impl Request {
    fn new(action: &'static str, resource: String) -> Request {
        Request {
            action,
            resource,
            context: BTreeMap::new(),
        }
    }

    /// Tags the resource carries.
    fn resource_tags(mut self, tags: &[(&str, &str)]) -> Request {
        for (k, v) in tags {
            self.context
                .insert(format!("aws:ResourceTag/{k}"), vec![(*v).to_owned()]);
        }
        self
    }

    /// Tags the request sets (`AddTagsToResource`, or a create's `Tags`).
    fn request_tags(mut self, tags: &[(&str, &str)]) -> Request {
        for (k, v) in tags {
            self.context
                .insert(format!("aws:RequestTag/{k}"), vec![(*v).to_owned()]);
        }
        let keys = self.context.entry("aws:TagKeys".to_owned()).or_default();
        keys.extend(tags.iter().map(|(k, _)| (*k).to_owned()));
        self
    }

    /// Tag keys the request removes (`RemoveTagsFromResource`).
    fn removing(mut self, keys: &[&str]) -> Request {
        self.context.insert(
            "aws:TagKeys".to_owned(),
            keys.iter().map(|k| (*k).to_owned()).collect(),
        );
        self
    }

    fn with(mut self, key: &str, value: &str) -> Request {
        self.context.insert(key.to_owned(), vec![value.to_owned()]);
        self
    }
}

/// `*` any run of characters, `?` one.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::String(s) => vec![s.clone()],
        other => vec![other.to_string()],
    }
}

/// Whether one operator holds for one key.
fn holds(operator: &str, key: &str, wanted: &[String], request: &Request) -> bool {
    let (qualifier, operator) = match operator.split_once(':') {
        Some((q, op)) => (Some(q), op),
        None => (None, operator),
    };
    let (operator, if_exists) = match operator.strip_suffix("IfExists") {
        Some(op) => (op, true),
        None => (operator, false),
    };
    let present = request.context.get(key);
    if operator == "Null" {
        let missing = present.is_none();
        return wanted.iter().any(|w| (w == "true") == missing);
    }
    let negated = operator.contains("Not");
    let Some(values) = present else {
        return match qualifier {
            Some("ForAnyValue") => false,
            Some("ForAllValues") => true,
            _ => if_exists || negated,
        };
    };
    let matches_one = |value: &str| {
        wanted.iter().any(|w| match operator {
            "StringEquals" | "StringNotEquals" | "Bool" => w == value,
            "StringEqualsIgnoreCase" | "StringNotEqualsIgnoreCase" => w.eq_ignore_ascii_case(value),
            "StringLike" | "StringNotLike" | "ArnLike" | "ArnNotLike" => glob(w, value),
            other => panic!("the evaluator does not know `{other}`"),
        })
    };
    let one = |value: &str| {
        if negated {
            !matches_one(value)
        } else {
            matches_one(value)
        }
    };
    match qualifier {
        Some("ForAnyValue") => values.iter().any(|v| one(v)),
        Some("ForAllValues") => values.iter().all(|v| one(v)),
        None => {
            assert_eq!(
                values.len(),
                1,
                "`{key}` is a list: use ForAnyValue/ForAllValues"
            );
            one(&values[0])
        }
        Some(other) => panic!("unknown qualifier `{other}`"),
    }
}

fn applies(statement: &Value, request: &Request) -> bool {
    let action = strings(&statement["Action"]).iter().any(|a| {
        glob(
            &a.to_ascii_lowercase(),
            &request.action.to_ascii_lowercase(),
        )
    });
    // A trust policy's statements name a Principal, not a Resource: the role itself.
    let resource = statement.get("Resource").is_none()
        || strings(&statement["Resource"])
            .iter()
            .any(|r| glob(r, &request.resource));
    let conditions = statement["Condition"].as_object().is_none_or(|ops| {
        ops.iter().all(|(operator, keys)| {
            keys.as_object()
                .unwrap()
                .iter()
                .all(|(key, wanted)| holds(operator, key, &strings(wanted), request))
        })
    });
    action && resource && conditions
}

fn decide(document: &Value, request: &Request) -> Decision {
    let statements = document["Statement"].as_array().unwrap();
    let applying: Vec<&Value> = statements.iter().filter(|s| applies(s, request)).collect();
    if applying.iter().any(|s| s["Effect"] == "Deny") {
        Decision::ExplicitDeny
    } else if applying.iter().any(|s| s["Effect"] == "Allow") {
        Decision::Allowed
    } else {
        Decision::ImplicitDeny
    }
}

const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "123456789012";

fn owner() -> Owner {
    Owner {
        repo: RepoName::parse("acme/shop").unwrap(),
        prefix: Prefix::default(),
    }
}

fn specs() -> policy::SpecFacts {
    policy::SpecFacts {
        users: vec!["app".to_owned()],
        sources: vec!["staging".to_owned()],
    }
}

fn apply_policy() -> Value {
    policy::document(
        &owner(),
        &specs(),
        Role::Apply,
        &Scope::new(Some(REGION), Some(ACCOUNT)),
    )
}

fn plan_policy() -> Value {
    policy::document(
        &owner(),
        &specs(),
        Role::Plan,
        &Scope::new(Some(REGION), Some(ACCOUNT)),
    )
}

fn cluster(id: &str) -> String {
    format!("arn:aws:rds:{REGION}:{ACCOUNT}:cluster:{id}")
}

fn instance(id: &str) -> String {
    format!("arn:aws:rds:{REGION}:{ACCOUNT}:db:{id}")
}

const OURS: [(&str, &str); 3] = [
    ("envctl:managed", "true"),
    ("envctl:repo", "acme/shop"),
    ("envctl:prefix", "envctl"),
];
const THEIRS: [(&str, &str); 3] = [
    ("envctl:managed", "true"),
    ("envctl:repo", "other/repo"),
    ("envctl:prefix", "envctl"),
];

fn ours_and(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    OURS.iter().chain(extra).copied().collect()
}

#[test]
fn the_last_applied_refresh_and_the_ledger_tags_are_allowed() {
    let policy = apply_policy();
    let id = "envctl-feature-a-12345678";
    let refresh = Request::new("rds:AddTagsToResource", cluster(id))
        .resource_tags(&OURS)
        .request_tags(&[("envctl:last-applied", "2026-12-07T00:00:00Z")]);
    assert_eq!(decide(&policy, &refresh), Decision::Allowed);
    let ledger = Request::new("rds:AddTagsToResource", cluster(id))
        .resource_tags(&OURS)
        .request_tags(&[
            ("envctl:ledger-digest", "abc"),
            ("envctl:schema-version", "3"),
            ("team", "web"),
        ]);
    assert_eq!(decide(&policy, &ledger), Decision::Allowed);
    // The same, on a protected environment: protection forbids deletes, not applies.
    let protected = ours_and(&[("envctl:protect", "true")]);
    let refresh = Request::new("rds:AddTagsToResource", cluster(id))
        .resource_tags(&protected)
        .request_tags(&[("envctl:last-applied", "2026-12-07T00:00:00Z")]);
    assert_eq!(decide(&policy, &refresh), Decision::Allowed);
    let scaling = Request::new("rds:ModifyDBCluster", cluster(id)).resource_tags(&protected);
    assert_eq!(decide(&policy, &scaling), Decision::Allowed);
}

#[test]
fn retagging_to_another_owner_or_removing_ownership_is_denied() {
    let policy = apply_policy();
    let id = cluster("envctl-feature-a-12345678");
    for (key, value) in [
        ("envctl:repo", "other/repo"),
        ("envctl:prefix", "alice"),
        ("envctl:managed", "false"),
    ] {
        // Keeping the other two keys as they are does not help.
        let tags: Vec<(&str, &str)> = OURS
            .iter()
            .map(|(k, v)| if *k == key { (*k, value) } else { (*k, *v) })
            .collect();
        let retag = Request::new("rds:AddTagsToResource", id.clone())
            .resource_tags(&OURS)
            .request_tags(&tags);
        assert_eq!(decide(&policy, &retag), Decision::ExplicitDeny, "{key}");
        let alone = Request::new("rds:AddTagsToResource", id.clone())
            .resource_tags(&OURS)
            .request_tags(&[(key, value)]);
        assert_eq!(decide(&policy, &alone), Decision::ExplicitDeny, "{key}");
        let remove = Request::new("rds:RemoveTagsFromResource", id.clone())
            .resource_tags(&OURS)
            .removing(&[key, "team"]);
        assert_eq!(decide(&policy, &remove), Decision::ExplicitDeny, "{key}");
    }
    // Removing a spec tag of ours is fine.
    let remove = Request::new("rds:RemoveTagsFromResource", id)
        .resource_tags(&OURS)
        .removing(&["team"]);
    assert_eq!(decide(&policy, &remove), Decision::Allowed);
}

#[test]
fn tagging_another_repositorys_cluster_or_writer_into_ownership_is_denied() {
    let policy = apply_policy();
    for resource in [
        cluster("envctl-feature-b-87654321"),
        instance("envctl-feature-b-87654321"),
    ] {
        let stamp = Request::new("rds:AddTagsToResource", resource.clone())
            .resource_tags(&THEIRS)
            .request_tags(&OURS);
        assert_ne!(decide(&policy, &stamp), Decision::Allowed, "{resource}");
        // Then modifying or deleting it is denied too.
        for action in [
            "rds:ModifyDBCluster",
            "rds:DeleteDBCluster",
            "rds:DeleteDBInstance",
        ] {
            let change = Request::new(action, resource.clone()).resource_tags(&THEIRS);
            assert_ne!(decide(&policy, &change), Decision::Allowed, "{action}");
        }
    }
    // With a prefix that contains `-`: another prefix's cluster matches `envctl-*` by name, but
    // not by its tags.
    let other_prefix = [
        ("envctl:managed", "true"),
        ("envctl:repo", "acme/shop"),
        ("envctl:prefix", "envctl-x"),
    ];
    let stamp = Request::new("rds:AddTagsToResource", cluster("envctl-x-main-1234abcd"))
        .resource_tags(&other_prefix)
        .request_tags(&OURS);
    assert_ne!(decide(&policy, &stamp), Decision::Allowed);
    // A cluster envctl is creating (or an untagged writer) takes our tags.
    let create_tags = Request::new("rds:AddTagsToResource", cluster("envctl-feature-c-1"))
        .request_tags(&ours_and(&[("envctl:branch", "feature/c")]));
    assert_eq!(decide(&policy, &create_tags), Decision::Allowed);
    let writer =
        Request::new("rds:AddTagsToResource", instance("envctl-feature-c-1")).request_tags(&OURS);
    assert_eq!(decide(&policy, &writer), Decision::Allowed);
}

#[test]
fn deleting_another_repositorys_cluster_or_writer_is_denied_and_ours_allowed() {
    let policy = apply_policy();
    for (action, resource) in [
        ("rds:DeleteDBCluster", cluster("envctl-feature-b-87654321")),
        (
            "rds:DeleteDBInstance",
            instance("envctl-feature-b-87654321"),
        ),
    ] {
        let theirs = Request::new(action, resource.clone()).resource_tags(&THEIRS);
        assert_eq!(decide(&policy, &theirs), Decision::ImplicitDeny, "{action}");
        let untagged = Request::new(action, resource.clone());
        assert_eq!(
            decide(&policy, &untagged),
            Decision::ImplicitDeny,
            "{action}"
        );
        let ours = Request::new(action, resource).resource_tags(&OURS);
        assert_eq!(decide(&policy, &ours), Decision::Allowed, "{action}");
    }
    // Outside the prefix, even with our tags.
    let outside = Request::new("rds:DeleteDBCluster", cluster("prod-orders")).resource_tags(&OURS);
    assert_eq!(decide(&policy, &outside), Decision::ImplicitDeny);
}

#[test]
fn a_protected_environment_is_neither_deleted_nor_unprotected() {
    let policy = apply_policy();
    let protected = ours_and(&[("envctl:protect", "true")]);
    for (action, resource) in [
        ("rds:DeleteDBCluster", cluster("envctl-main-1a2b3c4d")),
        ("rds:DeleteDBInstance", instance("envctl-main-1a2b3c4d")),
    ] {
        let delete = Request::new(action, resource).resource_tags(&protected);
        assert_eq!(decide(&policy, &delete), Decision::ExplicitDeny, "{action}");
    }
    let id = cluster("envctl-main-1a2b3c4d");
    let unprotect = Request::new("rds:AddTagsToResource", id.clone())
        .resource_tags(&protected)
        .request_tags(&[("envctl:protect", "false")]);
    assert_eq!(decide(&policy, &unprotect), Decision::ExplicitDeny);
    let remove = Request::new("rds:RemoveTagsFromResource", id.clone())
        .resource_tags(&protected)
        .removing(&["envctl:protect"]);
    assert_eq!(decide(&policy, &remove), Decision::ExplicitDeny);
    // Protecting one is allowed.
    let protect = Request::new("rds:AddTagsToResource", id)
        .resource_tags(&OURS)
        .request_tags(&[("envctl:protect", "true")]);
    assert_eq!(decide(&policy, &protect), Decision::Allowed);
}

#[test]
fn creates_need_our_tags_and_no_standalone_instance_can_be_made() {
    let policy = apply_policy();
    let create = |tags: &[(&str, &str)], engine: &str| {
        Request::new("rds:CreateDBCluster", cluster("envctl-feature-a-12345678"))
            .request_tags(tags)
            .with("rds:DatabaseEngine", engine)
    };
    assert_eq!(
        decide(&policy, &create(&OURS, "aurora-postgresql")),
        Decision::Allowed
    );
    assert_ne!(
        decide(&policy, &create(&THEIRS, "aurora-postgresql")),
        Decision::Allowed
    );
    assert_eq!(
        decide(&policy, &create(&OURS[..2], "aurora-postgresql")),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&policy, &create(&OURS, "aurora-mysql")),
        Decision::ImplicitDeny
    );
    let writer = |engine: &str, class: &str, tags: &[(&str, &str)]| {
        Request::new(
            "rds:CreateDBInstance",
            instance("envctl-feature-a-12345678"),
        )
        .request_tags(tags)
        .with("rds:DatabaseEngine", engine)
        .with("rds:DatabaseClass", class)
    };
    assert_eq!(
        decide(
            &policy,
            &writer("aurora-postgresql", "db.serverless", &OURS)
        ),
        Decision::Allowed
    );
    // A standalone instance: another engine (an Aurora instance exists only in a cluster), or
    // without our tags, or another class.
    assert_eq!(
        decide(&policy, &writer("postgres", "db.t4g.micro", &OURS)),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&policy, &writer("postgres", "db.serverless", &OURS)),
        Decision::ImplicitDeny
    );
    assert_ne!(
        decide(&policy, &writer("aurora-postgresql", "db.serverless", &[])),
        Decision::Allowed
    );
    assert_ne!(
        decide(&policy, &writer("aurora-postgresql", "db.r6g.large", &OURS)),
        Decision::Allowed
    );
}

#[test]
fn the_plan_role_reads_and_changes_nothing() {
    let policy = plan_policy();
    let id = cluster("envctl-feature-a-12345678");
    for action in [
        "tag:GetResources",
        "rds:DescribeDBClusters",
        "rds:DescribeDBInstances",
        "rds:DescribeDBEngineVersions",
        "rds:DescribeAccountAttributes",
    ] {
        let read = Request::new(action, "*".to_owned());
        assert_eq!(decide(&policy, &read), Decision::Allowed, "{action}");
    }
    for action in [
        "rds:CreateDBCluster",
        "rds:CreateDBInstance",
        "rds:ModifyDBCluster",
        "rds:DeleteDBCluster",
        "rds:DeleteDBInstance",
        "rds:AddTagsToResource",
        "rds:RemoveTagsFromResource",
        "rds:RestoreDBClusterToPointInTime",
    ] {
        let change = Request::new(action, id.clone())
            .resource_tags(&OURS)
            .request_tags(&OURS)
            .with("rds:DatabaseEngine", "aurora-postgresql");
        assert_eq!(decide(&policy, &change), Decision::ImplicitDeny, "{action}");
    }
    let user = |name: &str| {
        Request::new(
            "rds-db:connect",
            format!("arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:cluster-ABC/{name}"),
        )
    };
    assert_eq!(decide(&policy, &user("envctl_reader")), Decision::Allowed);
    for name in ["postgres", "app"] {
        assert_eq!(
            decide(&policy, &user(name)),
            Decision::ImplicitDeny,
            "{name}"
        );
    }
    // The apply role connects as the specs' users and the master user.
    let apply = apply_policy();
    for name in ["postgres", "app"] {
        assert_eq!(decide(&apply, &user(name)), Decision::Allowed, "{name}");
    }
}

/// A data branch's clone: into a new cluster under the prefix with our tags in the request, from
/// our own environments or a `from.cluster` the specs name; never from another repository's
/// environment, an unnamed cluster, or into a cluster that is not new.
#[test]
fn clones_come_only_from_our_environments_or_named_sources() {
    let policy = apply_policy();
    let restore = |resource: String, resource_tags: &[(&str, &str)], request: &[(&str, &str)]| {
        Request::new("rds:RestoreDBClusterToPointInTime", resource)
            .resource_tags(resource_tags)
            .request_tags(request)
    };
    let target = cluster("envctl-feature-a-12345678");
    let with_source = ours_and(&[("envctl:source", "envctl-main-87654321")]);
    assert_eq!(
        decide(&policy, &restore(target.clone(), &[], &with_source)),
        Decision::Allowed,
        "the new cluster, with our tags"
    );
    assert_ne!(
        decide(&policy, &restore(target.clone(), &[], &THEIRS)),
        Decision::Allowed,
        "another repository's tags"
    );
    assert_ne!(
        decide(&policy, &restore(target.clone(), &[], &OURS[..2])),
        Decision::Allowed,
        "a tag missing"
    );
    assert_ne!(
        decide(&policy, &restore(cluster("prod-db"), &[], &OURS)),
        Decision::Allowed,
        "a target outside the prefix"
    );
    // Sources: the request carries our tags in each case.
    let main = cluster("envctl-main-87654321");
    assert_eq!(
        decide(&policy, &restore(main.clone(), &OURS, &OURS)),
        Decision::Allowed,
        "our own environment"
    );
    assert_eq!(
        decide(&policy, &restore(main, &THEIRS, &OURS)),
        Decision::ImplicitDeny,
        "another repository's environment under the same prefix"
    );
    assert_eq!(
        decide(&policy, &restore(cluster("staging"), &[], &OURS)),
        Decision::Allowed,
        "a from.cluster the specs name"
    );
    assert_eq!(
        decide(&policy, &restore(cluster("production"), &[], &OURS)),
        Decision::ImplicitDeny,
        "a cluster no spec names"
    );
    // The source is only read: nothing else is allowed on a named source.
    for action in [
        "rds:ModifyDBCluster",
        "rds:DeleteDBCluster",
        "rds:AddTagsToResource",
    ] {
        let change = Request::new(action, cluster("staging")).request_tags(&OURS);
        assert_eq!(decide(&policy, &change), Decision::ImplicitDeny, "{action}");
    }
}

/// The evaluator itself follows the documented rules on the cases that decide the Deny's shape.
#[test]
fn the_evaluator_follows_iams_missing_key_rules() {
    let request = Request::new("s:A", "r".into()).with("k", "v");
    assert!(!holds("StringEquals", "missing", &["x".into()], &request));
    assert!(holds("StringNotEquals", "missing", &["x".into()], &request));
    assert!(holds(
        "StringEqualsIfExists",
        "missing",
        &["x".into()],
        &request
    ));
    assert!(holds(
        "StringNotEqualsIfExists",
        "missing",
        &["x".into()],
        &request
    ));
    assert!(holds("Null", "missing", &["true".into()], &request));
    assert!(!holds("Null", "k", &["true".into()], &request));
    assert!(!holds(
        "ForAnyValue:StringEquals",
        "missing",
        &["x".into()],
        &request
    ));
    assert!(holds(
        "ForAllValues:StringEquals",
        "missing",
        &["x".into()],
        &request
    ));
    // Negated with several values: true only when it is none of them.
    assert!(!holds(
        "StringNotEquals",
        "k",
        &["v".into(), "w".into()],
        &request
    ));
    assert!(holds(
        "StringNotEquals",
        "k",
        &["x".into(), "w".into()],
        &request
    ));
    // The shape of the old Deny: three keys under one `StringNotEqualsIfExists` do not deny a
    // retag that keeps one key, and do deny a tag update that names none.
    let old_deny = serde_json::json!({ "Statement": [
        { "Effect": "Allow", "Action": "rds:AddTagsToResource", "Resource": "*" },
        { "Effect": "Deny", "Action": "rds:AddTagsToResource", "Resource": "*",
          "Condition": { "StringNotEqualsIfExists": {
              "aws:RequestTag/envctl:managed": "true",
              "aws:RequestTag/envctl:repo": "acme/shop",
              "aws:RequestTag/envctl:prefix": "envctl" } } }
    ]});
    let retag = Request::new("rds:AddTagsToResource", "arn".into())
        .request_tags(&[("envctl:managed", "true"), ("envctl:repo", "other/repo")]);
    assert_eq!(decide(&old_deny, &retag), Decision::Allowed);
    let refresh = Request::new("rds:AddTagsToResource", "arn".into())
        .request_tags(&[("envctl:last-applied", "now")]);
    assert_eq!(decide(&old_deny, &refresh), Decision::ExplicitDeny);
}

/// GitHub's OIDC token for a run of `repo`, as STS evaluates a role's trust policy: the `sub` and
/// `aud` claims as condition keys.
fn assume(sub: &str, aud: &str) -> Request {
    let mut request = Request::new("sts:AssumeRoleWithWebIdentity", String::new());
    for (key, value) in [("sub", sub), ("aud", aud)] {
        request.context.insert(
            format!("token.actions.githubusercontent.com:{key}"),
            vec![value.to_owned()],
        );
    }
    request
}

/// Each role is assumed only by the events it serves, only by tokens for AWS (`aud`), and only by
/// the repository as GitHub spells it (IAM compares case-sensitively). Regressions: the plan role's
/// trust lost its `aud` condition (a second `StringEquals` replaced the first), and both named the
/// repository in lower case, which a repository with capitals never matches.
#[test]
fn each_role_trusts_only_its_own_events_of_the_repository() {
    let scope = Scope::new(Some(REGION), Some(ACCOUNT));
    let plan = policy::trust_document("Acme/Shop", Role::Plan, &scope);
    let apply = policy::trust_document("Acme/Shop", Role::Apply, &scope);
    const AWS: &str = "sts.amazonaws.com";
    let pull_request = "repo:Acme/Shop:pull_request";
    let push = "repo:Acme/Shop:ref:refs/heads/feature/login";
    let default_branch = "repo:Acme/Shop:ref:refs/heads/main";
    for (what, request, plan_decision, apply_decision) in [
        (
            "a pull request",
            assume(pull_request, AWS),
            Decision::Allowed,
            Decision::ImplicitDeny,
        ),
        (
            "a push",
            assume(push, AWS),
            Decision::ImplicitDeny,
            Decision::Allowed,
        ),
        (
            "prune or a delete",
            assume(default_branch, AWS),
            Decision::ImplicitDeny,
            Decision::Allowed,
        ),
        (
            "a tag push",
            assume("repo:Acme/Shop:ref:refs/tags/v1", AWS),
            Decision::ImplicitDeny,
            Decision::ImplicitDeny,
        ),
        (
            "an environment",
            assume("repo:Acme/Shop:environment:prod", AWS),
            Decision::ImplicitDeny,
            Decision::ImplicitDeny,
        ),
        (
            "another audience",
            assume(pull_request, "https://example.com"),
            Decision::ImplicitDeny,
            Decision::ImplicitDeny,
        ),
        (
            "another audience on a push",
            assume(push, "https://example.com"),
            Decision::ImplicitDeny,
            Decision::ImplicitDeny,
        ),
        (
            "another repository",
            assume("repo:Acme/Shop-fork:pull_request", AWS),
            Decision::ImplicitDeny,
            Decision::ImplicitDeny,
        ),
        (
            "another repository's push",
            assume("repo:Acme/Shopping:ref:refs/heads/x", AWS),
            Decision::ImplicitDeny,
            Decision::ImplicitDeny,
        ),
        (
            "the name in lower case",
            assume("repo:acme/shop:pull_request", AWS),
            Decision::ImplicitDeny,
            Decision::ImplicitDeny,
        ),
    ] {
        assert_eq!(decide(&plan, &request), plan_decision, "plan role, {what}");
        assert_eq!(
            decide(&apply, &request),
            apply_decision,
            "apply role, {what}"
        );
    }
    for document in [&plan, &apply] {
        assert_eq!(
            document["Statement"][0]["Principal"]["Federated"],
            format!("arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com")
        );
    }
}
