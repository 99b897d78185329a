//! The planner, data-driven: each case builds desired state from real spec text and observed state
//! by hand, and snapshots what users see (the text rendering; JSON and Markdown where they differ).

use std::collections::BTreeMap;

use envctl::apply::{initial_tags, state_update};
use envctl::model::{
    AppliedMigration, AppliedSeed, ClusterId, DeleteReason, DesiredEnv, Ledger, LedgerRead,
    LedgerTags, ObservedEnv, Owner, PlanFlags, Prefix, RepoName, Scaling, Wanted, tags,
};
use envctl::plan::render::{self, Style};
use envctl::plan::{PlanError, PlanInput, PlanOptions, plan};
use envctl::spec::{self, Catalog, RepoFiles};

const PREVIEW: &str = "\
version: 1
name: preview
branches: [\"feature/*\"]
cluster:
  scaling: { minAcu: 0, maxAcu: 4 }
  tags: { team: web }
database:
  seeds: [schemas/seeds/users.sql]
";

const MAIN: &str = "\
version: 1
name: main
branches: [main]
cluster:
  scaling: { minAcu: 0.5, maxAcu: 8 }
lifecycle:
  protect: true
";

#[derive(Clone)]
struct World {
    files: RepoFiles,
}

impl World {
    fn new() -> World {
        let mut files = RepoFiles::default();
        files.insert_bytes("environments/preview.yaml", PREVIEW.as_bytes().to_vec());
        files.insert_bytes("environments/main.yaml", MAIN.as_bytes().to_vec());
        files.insert_bytes(
            "schemas/migrations/0001_create_users.sql",
            b"CREATE TABLE users (id int);\n".to_vec(),
        );
        files.insert_bytes(
            "schemas/migrations/0002_add_email.sql",
            b"ALTER TABLE users ADD email text;\n".to_vec(),
        );
        files.insert_bytes(
            "schemas/seeds/users.sql",
            b"INSERT INTO users VALUES (1);\n".to_vec(),
        );
        World { files }
    }

    fn with(mut self, path: &str, text: &str) -> World {
        self.files.insert_bytes(path, text.as_bytes().to_vec());
        self
    }

    fn catalog(&self) -> Catalog {
        spec::load(&self.files).expect("test specs are valid")
    }

    fn desired(&self, branch: &str) -> Option<DesiredEnv> {
        self.catalog()
            .desired_for(branch, &repo(), &Prefix::default())
            .unwrap()
    }
}

fn repo() -> RepoName {
    RepoName::parse("acme/shop").unwrap()
}

fn owner() -> Owner {
    Owner {
        repo: repo(),
        prefix: Prefix::default(),
    }
}

/// A live environment exactly as apply leaves it: created with apply's initial tags, then its
/// ledger tags written from a ledger that holds what `desired` wants (apply's own tag writers).
fn converged(desired: &DesiredEnv) -> ObservedEnv {
    let mut tags = initial_tags(desired, &owner(), Some("0123abcd")).unwrap();
    let ledger = ledger_of(desired);
    state_update(LedgerTags::of_ledger(&ledger, desired)).apply_to(&mut tags);
    // The engine a cluster reports: the version asked for, a minor of it, or the default.
    let engine_version = match desired.cluster.engine_version.as_deref() {
        None => "16.6".to_owned(),
        Some(v) if !v.contains('.') => format!("{v}.4"),
        Some(v) => v.to_owned(),
    };
    ObservedEnv {
        cluster_id: desired.cluster_id.clone(),
        tags,
        status: "available".into(),
        status_hint: None,
        scaling: Some(desired.cluster.scaling),
        deletion_protection: desired.cluster.deletion_protection,
        engine_version: Some(engine_version),
        database_name: Some(desired.database.name.clone()),
        database_user: Some(desired.database.user.clone()),
        created_at: Some("2026-11-20T09:00:00Z".into()),
        endpoint: None,
        arn: None,
        writerless: false,
        refused: None,
        ledger: LedgerRead::Read(ledger),
    }
}

fn ledger_of(desired: &DesiredEnv) -> Ledger {
    Ledger {
        migrations: desired
            .migrations
            .iter()
            .map(|m| AppliedMigration {
                version: m.version,
                name: m.name.clone(),
                checksum: m.checksum.clone(),
                sql: m.sql.clone(),
            })
            .collect(),
        seeds: desired
            .seeds
            .iter()
            .map(|s| AppliedSeed {
                path: s.path.clone(),
                checksum: s.checksum.clone(),
            })
            .collect(),
    }
}

/// Marks an observed env as needing its ledger read (its digest no longer matches).
fn stale_digest(mut observed: ObservedEnv) -> ObservedEnv {
    observed
        .tags
        .insert(tags::LEDGER_DIGEST.into(), "0000000000000000".into());
    observed
}

fn wanted(desired: Option<DesiredEnv>) -> Wanted {
    match desired {
        Some(desired) => Wanted::Env(Box::new(desired)),
        None => Wanted::Nothing,
    }
}

fn check_with(
    scope: Vec<(&str, Option<DesiredEnv>)>,
    observed: Vec<ObservedEnv>,
    options: &PlanOptions,
) -> Result<envctl::model::Plan, PlanError> {
    check_wanted(
        scope.into_iter().map(|(b, d)| (b, wanted(d))).collect(),
        observed,
        options,
    )
}

fn check_wanted(
    scope: Vec<(&str, Wanted)>,
    observed: Vec<ObservedEnv>,
    options: &PlanOptions,
) -> Result<envctl::model::Plan, PlanError> {
    check_occupied(scope, observed, options, &BTreeMap::new())
}

/// [`check_wanted`], with ids a create would use held by someone else.
fn check_occupied(
    scope: Vec<(&str, Wanted)>,
    observed: Vec<ObservedEnv>,
    options: &PlanOptions,
    occupied: &BTreeMap<ClusterId, String>,
) -> Result<envctl::model::Plan, PlanError> {
    let scope: BTreeMap<String, Wanted> =
        scope.into_iter().map(|(b, w)| (b.to_owned(), w)).collect();
    plan(
        &PlanInput {
            provider: "local",
            owner: &owner(),
            scope: &scope,
            observed: &observed,
            engines: &Default::default(),
            default_branch: None,
            sources: &Default::default(),
            occupied,
        },
        options,
    )
}

/// The plan for one branch, wanted as `desired`, with the default options.
fn plan_one(
    branch: &str,
    desired: Option<DesiredEnv>,
    observed: Vec<ObservedEnv>,
) -> envctl::model::Plan {
    check_with(vec![(branch, desired)], observed, &PlanOptions::default()).expect("plan succeeds")
}

/// The text a user sees for that plan.
fn text_one(branch: &str, desired: Option<DesiredEnv>, observed: Vec<ObservedEnv>) -> String {
    check(vec![(branch, desired)], observed, &PlanOptions::default())
}

/// The kind of each action, in order.
fn kinds(plan: &envctl::model::Plan) -> Vec<&str> {
    plan.actions.iter().map(|a| a.kind.name()).collect()
}

/// The branch and kind of each action, in order.
fn branch_kinds(plan: &envctl::model::Plan) -> Vec<(&str, &str)> {
    plan.actions
        .iter()
        .map(|a| (a.branch.as_str(), a.kind.name()))
        .collect()
}

/// The plan's first action of `kind`.
fn action<'a>(plan: &'a envctl::model::Plan, kind: &str) -> &'a envctl::model::Action {
    plan.actions
        .iter()
        .find(|a| a.kind.name() == kind)
        .unwrap_or_else(|| panic!("a {kind} in {:?}", plan.actions))
}

/// The text a user sees for this plan.
fn check(
    scope: Vec<(&str, Option<DesiredEnv>)>,
    observed: Vec<ObservedEnv>,
    options: &PlanOptions,
) -> String {
    let plan = check_with(scope, observed, options).expect("plan succeeds");
    render::text(&plan, Style { color: false })
}

#[test]
fn create_migrates_and_seeds_a_new_branch() {
    let world = World::new();
    let text = text_one("feature/login", world.desired("feature/login"), vec![]);
    insta::assert_snapshot!("create", text);
}

/// The cluster ids start in one terminal column whatever the branch names are written in: wide
/// characters take two columns, a combining accent none.
#[test]
fn columns_line_up_whatever_the_branch_names_characters() {
    let world = World::new();
    let branches = ["feature/日本語", "feature/ab", "feature/e\u{301}te"];
    let text = check(
        branches.iter().map(|b| (*b, world.desired(b))).collect(),
        vec![],
        &PlanOptions::default(),
    );
    let starts: std::collections::BTreeSet<usize> = text
        .lines()
        .filter_map(|line| {
            let at = line.find("envctl-")?;
            Some(unicode_width::UnicodeWidthStr::width(&line[..at]))
        })
        .collect();
    assert_eq!(starts.len(), 1, "{text}");
    assert!(text.contains("feature/日本語"), "{text}");
}

#[test]
fn converged_environment_has_no_changes() {
    let world = World::new();
    let desired = world.desired("feature/login").unwrap();
    let mut observed = converged(&desired);
    observed.ledger = LedgerRead::NotRead; // digest matches: the planner must not need the ledger
    let plan = plan_one("feature/login", Some(desired), vec![observed]);
    assert!(plan.is_empty(), "{:?}", plan.actions);
    assert_eq!(
        render::text(&plan, Style { color: false }),
        "No changes: the live environments match the desired state.\n"
    );
}

#[test]
fn scaling_tags_and_deletion_protection_update_in_place() {
    let world = World::new();
    let desired = world.desired("feature/login").unwrap();
    let mut observed = converged(&desired);
    observed.scaling = Some(Scaling {
        min_acu: envctl::model::Acu::from_f64(0.0).unwrap(),
        max_acu: envctl::model::Acu::from_f64(2.0).unwrap(),
    });
    observed.tags.insert("team".into(), "data".into());
    observed.deletion_protection = true;
    let text = text_one("feature/login", Some(desired), vec![observed]);
    insta::assert_snapshot!("update", text);
}

#[test]
fn only_the_new_migration_runs() {
    let world = World::new();
    let before = world.desired("feature/login").unwrap();
    let observed = converged(&before);
    let world = world.with(
        "schemas/migrations/0003_add_orders.sql",
        "CREATE TABLE orders (id int);\n",
    );
    let text = text_one(
        "feature/login",
        world.desired("feature/login"),
        vec![observed],
    );
    insta::assert_snapshot!("migrate_new", text);
}

#[test]
fn changed_seed_runs_again() {
    let world = World::new();
    let observed = converged(&world.desired("feature/login").unwrap());
    let world = world.with("schemas/seeds/users.sql", "INSERT INTO users VALUES (2);\n");
    let text = text_one(
        "feature/login",
        world.desired("feature/login"),
        vec![observed],
    );
    insta::assert_snapshot!("seed_changed", text);
}

#[test]
fn schema_version_stops_at_n() {
    let world = World::new().with(
        "environments/preview.yaml",
        &PREVIEW.replace("database:\n", "database:\n  schemaVersion: 1\n"),
    );
    let plan = plan_one("feature/login", world.desired("feature/login"), vec![]);
    let migrate = action(&plan, "migrate");
    assert_eq!(
        serde_json::to_value(migrate).unwrap()["migrations"],
        serde_json::json!(["0001_create_users"])
    );
}

#[test]
fn edited_migration_resets_with_a_diff() {
    let world = World::new();
    let observed = stale_digest(converged(&world.desired("feature/login").unwrap()));
    let world = world.with(
        "schemas/migrations/0002_add_email.sql",
        "ALTER TABLE users ADD email text NOT NULL;\n",
    );
    let text = text_one(
        "feature/login",
        world.desired("feature/login"),
        vec![observed],
    );
    insta::assert_snapshot!("reset_edited", text);
}

#[test]
fn removed_and_lowered_migrations_diverge() {
    let world = World::new();
    let observed = stale_digest(converged(&world.desired("feature/login").unwrap()));

    let mut gone = World::new();
    gone.files.remove("schemas/migrations/0002_add_email.sql");
    let lowered = World::new().with(
        "environments/preview.yaml",
        &PREVIEW.replace("database:\n", "database:\n  schemaVersion: 1\n"),
    );
    let mut out = String::new();
    for (name, world) in [("removed", gone), ("lowered", lowered)] {
        let plan = check_with(
            vec![("feature/login", world.desired("feature/login"))],
            vec![observed.clone()],
            &PlanOptions::default(),
        );
        match plan {
            Ok(plan) => {
                let reset = action(&plan, "reset");
                out.push_str(&format!("{name}: {}\n", render::detail(reset)));
            }
            Err(e) => out.push_str(&format!("{name}: error {e}\n")),
        }
    }
    insta::assert_snapshot!("divergence_reasons", out);
}

#[test]
fn added_before_applied_is_reordered() {
    let world = World::new().with("schemas/migrations/0005_late.sql", "SELECT 5;\n");
    let observed = stale_digest(converged(&world.desired("feature/login").unwrap()));
    let world = world.with("schemas/migrations/0003_between.sql", "SELECT 3;\n");
    let plan = plan_one(
        "feature/login",
        world.desired("feature/login"),
        vec![observed],
    );
    let reset = action(&plan, "reset");
    assert_eq!(
        render::detail(reset),
        "migration 0003_between was added before the already-applied version 5"
    );
}

#[test]
fn protected_or_no_reset_blocks_instead_of_resetting() {
    let world = World::new();
    let main_before = converged(&world.desired("main").unwrap());
    let preview_before = stale_digest(converged(&world.desired("feature/login").unwrap()));
    let world = world.with(
        "schemas/migrations/0001_create_users.sql",
        "CREATE TABLE users (id bigint);\n",
    );
    let protected = text_one(
        "main",
        world.desired("main"),
        vec![stale_digest(main_before)],
    );
    let no_reset = check(
        vec![("feature/login", world.desired("feature/login"))],
        vec![preview_before],
        &PlanOptions {
            flags: PlanFlags {
                no_reset: true,
                reset: false,
            },
            ..PlanOptions::default()
        },
    );
    insta::assert_snapshot!("blocked", format!("{protected}\n{no_reset}"));
}

#[test]
fn uncovered_branch_is_deleted_unless_protected() {
    let world = World::new();
    let preview = converged(&world.desired("feature/login").unwrap());
    let main = converged(&world.desired("main").unwrap());
    let text = check(
        vec![("feature/login", None), ("main", None)],
        vec![preview, main],
        &PlanOptions::default(),
    );
    insta::assert_snapshot!("delete_uncovered", text);
}

#[test]
fn engine_version_change_replaces() {
    let world = World::new();
    let observed = converged(&world.desired("feature/login").unwrap());
    let world = world.with(
        "environments/preview.yaml",
        &PREVIEW.replace("  scaling:", "  engineVersion: \"17.2\"\n  scaling:"),
    );
    let text = text_one(
        "feature/login",
        world.desired("feature/login"),
        vec![observed],
    );
    insta::assert_snapshot!("replace", text);
}

#[test]
fn database_user_change_on_protected_is_blocked() {
    let world = World::new();
    let observed = converged(&world.desired("main").unwrap());
    let world = world.with(
        "environments/main.yaml",
        &format!("{MAIN}database:\n  user: app\n"),
    );
    let plan = plan_one("main", world.desired("main"), vec![observed]);
    assert_eq!(plan.summary.blocked, 1);
    assert_eq!(plan.summary.replace, 0);
    assert!(render::detail(&plan.actions[0]).contains("database.user postgres → app"));
}

#[test]
fn prune_deletes_for_git_reasons_and_never_protected() {
    let world = World::new();
    let merged = converged(&world.desired("feature/merged").unwrap());
    let expired = converged(&world.desired("feature/old").unwrap());
    let main = converged(&world.desired("main").unwrap());
    let options = PlanOptions {
        extra_deletions: [
            (
                merged.cluster_id.clone(),
                DeleteReason::BranchMerged {
                    into: "main".into(),
                },
            ),
            (
                expired.cluster_id.clone(),
                DeleteReason::TtlExpired {
                    ttl: "7d".into(),
                    since: "2026-11-01T09:30:00Z".into(),
                },
            ),
            (
                main.cluster_id.clone(),
                DeleteReason::BranchDeleted {
                    local_branches_count: false,
                },
            ),
        ]
        .into_iter()
        .collect(),
        ..PlanOptions::default()
    };
    let text = check(vec![], vec![main, expired, merged], &options);
    insta::assert_snapshot!("prune", text);
}

#[test]
fn id_collision_is_blocked_never_adopted_and_the_others_go_on() {
    let world = World::new();
    let desired = world.desired("feature/login").unwrap();
    let mut observed = converged(&desired);
    observed
        .tags
        .insert(tags::BRANCH.into(), "feature/other".into());
    let plan = check_with(
        vec![
            ("feature/login", Some(desired)),
            ("feature/next", world.desired("feature/next")),
        ],
        vec![observed],
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(
        branch_kinds(&plan),
        [
            ("feature/login", "blocked"),
            ("feature/next", "create"),
            ("feature/next", "migrate"),
            ("feature/next", "seed")
        ]
    );
    assert!(
        render::detail(&plan.actions[0]).contains("`envctl:branch` tag says `feature/other`"),
        "{:?}",
        plan.actions[0]
    );
}

#[test]
fn several_live_environments_for_a_branch_are_blocked_each() {
    let world = World::new();
    let desired = world.desired("feature/login").unwrap();
    let mut other = converged(&desired);
    other.cluster_id = ClusterId::from_live("envctl-feature-login-99999999");
    let plan = check_with(
        vec![
            ("feature/login", Some(desired.clone())),
            ("feature/next", world.desired("feature/next")),
        ],
        vec![converged(&desired), other],
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(plan.summary.blocked, 2, "{:?}", plan.actions);
    assert_eq!(plan.summary.delete, 0);
    assert_eq!(
        plan.summary.create, 1,
        "feature/next is planned all the same"
    );
    assert!(
        render::detail(&plan.actions[0]).contains("has 2 live environments"),
        "{:?}",
        plan.actions[0]
    );
}

#[test]
fn a_branch_whose_tree_cannot_say_is_blocked_and_its_environment_kept() {
    let world = World::new();
    let live = converged(&world.desired("feature/broken").unwrap());
    let reason =
        "the branch's specs in commit 0123456789ab are invalid: environments/preview.yaml:3:1: bad";
    let plan = check_wanted(
        vec![
            (
                "feature/broken",
                Wanted::Unknown {
                    reason: reason.into(),
                },
            ),
            (
                "feature/tie",
                Wanted::Unknown {
                    reason: "two specs tie".into(),
                },
            ),
            ("feature/ok", wanted(world.desired("feature/ok"))),
        ],
        vec![live.clone()],
        &PlanOptions::default(),
    )
    .unwrap();
    let blocked: Vec<(&str, &str, &str)> = plan
        .actions
        .iter()
        .filter(|a| a.kind.name() == "blocked")
        .map(|a| (a.branch.as_str(), a.cluster_id.as_str(), a.env.as_str()))
        .collect();
    let tie_id = ClusterId::derive(&Prefix::default(), &repo(), "feature/tie");
    assert_eq!(
        blocked,
        [
            ("feature/broken", live.cluster_id.as_str(), "preview"),
            ("feature/tie", tie_id.as_str(), "-"),
        ]
    );
    assert_eq!(render::detail(&plan.actions[0]), reason);
    assert_eq!(plan.summary.create, 1);
}

#[test]
fn an_unreadable_ledger_blocks_that_environment_only() {
    let world = World::new();
    let mut broken = stale_digest(converged(&world.desired("feature/a").unwrap()));
    broken.ledger = LedgerRead::Failed {
        kind: envctl::model::LedgerFailure::Unreachable,
        why: "cannot connect: connection refused".into(),
    };
    let fine = stale_digest(converged(&world.desired("feature/b").unwrap()));
    let world = world.with("schemas/migrations/0003_more.sql", "SELECT 3;\n");
    let plan = check_with(
        vec![
            ("feature/a", world.desired("feature/a")),
            ("feature/b", world.desired("feature/b")),
        ],
        vec![broken, fine],
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(
        branch_kinds(&plan),
        [("feature/a", "blocked"), ("feature/b", "migrate")]
    );
    assert_eq!(
        render::detail(&plan.actions[0]),
        "cannot connect: connection refused"
    );
}

#[test]
fn tags_someone_else_set_are_left_alone_but_a_removed_spec_tag_goes() {
    let world = World::new();
    let desired = world.desired("feature/login").unwrap();
    let mut observed = converged(&desired);
    observed.tags.insert("cost-center".into(), "1234".into());
    let plan = plan_one("feature/login", Some(desired), vec![observed.clone()]);
    assert!(plan.is_empty(), "{:?}", plan.actions);

    let world = world.with(
        "environments/preview.yaml",
        &PREVIEW.replace("  tags: { team: web }\n", ""),
    );
    let plan = plan_one(
        "feature/login",
        world.desired("feature/login"),
        vec![observed],
    );
    assert_eq!(plan.actions.len(), 1, "{:?}", plan.actions);
    assert_eq!(render::detail(&plan.actions[0]), "cluster.tags -team");
}

#[test]
fn reset_on_demand() {
    let world = World::new();
    let desired = world.desired("feature/login").unwrap();
    let observed = converged(&desired);
    let plan = check_with(
        vec![("feature/login", Some(desired))],
        vec![observed],
        &PlanOptions {
            flags: PlanFlags {
                reset: true,
                no_reset: false,
            },
            ..PlanOptions::default()
        },
    )
    .unwrap();
    assert_eq!(kinds(&plan), ["reset", "migrate", "seed"]);
}

#[test]
fn order_is_deterministic_whatever_the_observed_order() {
    let world = World::new();
    let a = converged(&world.desired("feature/a").unwrap());
    let b = converged(&world.desired("feature/b").unwrap());
    let scope = || {
        vec![
            ("feature/a", None),
            ("feature/b", None),
            ("feature/c", world.desired("feature/c")),
        ]
    };
    let one = check_with(scope(), vec![a.clone(), b.clone()], &PlanOptions::default()).unwrap();
    let two = check_with(scope(), vec![b, a], &PlanOptions::default()).unwrap();
    assert_eq!(one, two);
    let branches: Vec<&str> = one.actions.iter().map(|a| a.branch.as_str()).collect();
    assert_eq!(
        branches,
        [
            "feature/a",
            "feature/b",
            "feature/c",
            "feature/c",
            "feature/c"
        ]
    );
}

#[test]
fn fingerprint_ignores_last_applied_but_not_state() {
    let world = World::new();
    let desired = world.desired("feature/login").unwrap();
    let observed = converged(&desired);
    let fp = |o: ObservedEnv| {
        plan_one("feature/login", Some(desired.clone()), vec![o]).observed_fingerprint
    };
    let base = fp(observed.clone());
    let mut touched = observed.clone();
    touched
        .tags
        .insert(tags::LAST_APPLIED.into(), "2026-11-24T00:00:00Z".into());
    assert_eq!(fp(touched), base);
    let mut scaled = observed.clone();
    scaled.scaling = None;
    assert_ne!(fp(scaled), base);
    let mut other_repo_env = observed;
    other_repo_env.cluster_id = ClusterId::from_live("envctl-unrelated-00000000");
    other_repo_env
        .tags
        .insert(tags::BRANCH.into(), "feature/unrelated".into());
    let with_unrelated = plan_one(
        "feature/login",
        Some(desired.clone()),
        vec![converged(&desired), other_repo_env],
    )
    .observed_fingerprint;
    assert_eq!(
        with_unrelated, base,
        "environments outside the scope do not count"
    );
}

#[test]
fn json_and_markdown_renderings() {
    let world = World::new();
    let login = world.desired("feature/login").unwrap();
    let stale = stale_digest(converged(&world.desired("feature/edit").unwrap()));
    let gone = converged(&world.desired("feature/gone").unwrap());
    let world = world.with(
        "schemas/migrations/0002_add_email.sql",
        "ALTER TABLE users ADD email varchar(200);\n",
    );
    let plan = check_with(
        vec![
            ("feature/edit", world.desired("feature/edit")),
            ("feature/gone", None),
            ("feature/login", Some(login)),
        ],
        vec![stale, gone],
        &PlanOptions::default(),
    )
    .unwrap();
    let json = render::json(&plan).replace(&plan.observed_fingerprint, "<fingerprint>");
    insta::assert_snapshot!("json", json);
    insta::assert_snapshot!("markdown", render::markdown(&plan));
}

#[test]
fn colour_only_when_asked() {
    let world = World::new();
    let plan = plan_one("feature/login", world.desired("feature/login"), vec![]);
    assert!(!render::text(&plan, Style { color: false }).contains('\x1b'));
    assert!(render::text(&plan, Style { color: true }).contains("\x1b[32m"));
}

#[test]
fn a_live_environment_under_another_id_is_blocked_neither_adopted_nor_deleted() {
    let world = World::new();
    let desired = world.desired("feature/login").unwrap();
    let mut old = converged(&desired);
    old.cluster_id = ClusterId::from_live("envctl-feature-login-0ld1d000");
    let plan = plan_one("feature/login", Some(desired), vec![old]);
    assert_eq!(kinds(&plan), ["blocked"]);
    assert_eq!(
        plan.actions[0].cluster_id.as_str(),
        "envctl-feature-login-0ld1d000"
    );
}

#[test]
fn turning_protect_off_lets_a_reset_through_and_shows_as_an_update() {
    let world = World::new();
    let main_before = stale_digest(converged(&world.desired("main").unwrap()));
    assert!(main_before.protected());
    let world = world
        .with(
            "environments/main.yaml",
            &MAIN.replace("protect: true", "protect: false\n  ttl: 12h"),
        )
        .with(
            "schemas/migrations/0001_create_users.sql",
            "CREATE TABLE users (id bigint);\n",
        );
    let plan = plan_one("main", world.desired("main"), vec![main_before]);
    assert_eq!(kinds(&plan), ["update", "reset", "migrate"]);
    assert_eq!(
        render::detail(&plan.actions[0]),
        "lifecycle.protect true → false; lifecycle.ttl none → 12h"
    );
}

#[test]
fn markdown_escapes_branch_names() {
    let world = World::new();
    let branch = "feature/<img src=x>`tick`|pipe";
    let plan = plan_one(branch, world.desired(branch), vec![]);
    let markdown = render::markdown(&plan);
    // A code span as long as the name's longest run of backticks plus one: it shows the name as
    // written (only `|` escaped, as a table needs), in the branch column and in the reason alike.
    assert!(
        markdown.contains("| ``feature/<img src=x>`tick`\\|pipe`` |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| branch ``feature/<img src=x>`tick`\\|pipe`` is covered by"),
        "{markdown}"
    );
    assert!(!markdown.contains("| feature/<img"), "{markdown}");
    assert!(
        !markdown.contains("&lt;img"),
        "`<` escaped inside code: {markdown}"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn spec_text(
        min: f64,
        max: f64,
        ttl: Option<u32>,
        protect: bool,
        team: &str,
        schema: Option<u8>,
        engine: Option<&str>,
    ) -> String {
        let engine = engine
            .map(|v| format!("  engineVersion: \"{v}\"\n"))
            .unwrap_or_default();
        let mut text = format!(
            "version: 1\nname: preview\nbranches: [\"feature/*\"]\ncluster:\n{engine}  scaling: {{ minAcu: {min}, maxAcu: {max} }}\n  tags: {{ team: \"{team}\" }}\ndatabase:\n  seeds: [schemas/seeds/users.sql]\n"
        );
        if let Some(v) = schema {
            text.push_str(&format!("  schemaVersion: {v}\n"));
        }
        text.push_str(&format!("lifecycle:\n  protect: {protect}\n"));
        if let Some(days) = ttl {
            text.push_str(&format!("  ttl: {days}d\n"));
        }
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the spec, an environment exactly as apply leaves it plans nothing, and one
        /// that does not exist plans a create first.
        #[test]
        fn a_converged_environment_plans_nothing(
            halves in (0u16..=512, 0u16..=512),
            ttl in proptest::option::of(1u32..=365),
            protect in any::<bool>(),
            team in "[a-z]{1,8}",
            schema in proptest::option::of(0u8..=2),
            engine in proptest::option::of(prop_oneof![Just("16"), Just("16.6"), Just("17.2")]),
        ) {
            let (a, b) = (f64::from(halves.0.min(halves.1)) / 2.0, f64::from(halves.0.max(halves.1)) / 2.0);
            let world = World::new().with("environments/preview.yaml", &spec_text(a, b, ttl, protect, &team, schema, engine));
            let desired = world.desired("feature/p").unwrap();
            let mut observed = converged(&desired);
            observed.ledger = LedgerRead::NotRead;
            let plan = check_with(vec![("feature/p", Some(desired.clone()))], vec![observed], &PlanOptions::default()).unwrap();
            prop_assert!(plan.is_empty(), "{:?}", plan.actions);

            let plan = check_with(vec![("feature/p", Some(desired))], vec![], &PlanOptions::default()).unwrap();
            prop_assert_eq!(plan.actions[0].kind.name(), "create");
            prop_assert!(plan.actions.iter().all(|a| a.branch == "feature/p" && a.env == "preview"));
        }
    }
}

#[test]
fn cloud_states_creating_deleting_and_stopped() {
    let world = World::new();
    let desired = world.desired("feature/s").unwrap();
    let with_status = |status: &str, observed: ObservedEnv| ObservedEnv {
        status: status.into(),
        ..observed
    };
    let kinds = |plan: &envctl::model::Plan| -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| format!("{} {}", a.kind.name(), render::detail(a)))
            .collect()
    };
    // Creating, never converged: planned from its tags, no ledger read (it cannot be reached).
    let mut creating = with_status("creating", stale_digest(converged(&desired)));
    creating.ledger = LedgerRead::NotRead;
    creating
        .tags
        .insert(tags::SCHEMA_VERSION.into(), "0".into());
    let plan = plan_one("feature/s", Some(desired.clone()), vec![creating]);
    assert_eq!(
        kinds(&plan),
        [
            "migrate 0 → 2: 0001_create_users, 0002_add_email",
            "seed schemas/seeds/users.sql"
        ]
    );
    // Being deleted: created again once it is gone; with no spec, nothing more to do.
    let deleting = with_status("deleting", converged(&desired));
    let plan = plan_one("feature/s", Some(desired.clone()), vec![deleting.clone()]);
    assert_eq!(plan.actions[0].kind.name(), "create");
    assert!(
        render::detail(&plan.actions[0]).contains("its old cluster is being deleted"),
        "{:?}",
        plan.actions
    );
    let plan = plan_one("feature/s", None, vec![deleting]);
    assert!(plan.is_empty(), "{:?}", plan.actions);
    // Stopped: nothing to do is fine; anything to do is blocked with what to run (the hint is
    // the AWS provider's, as its observe sets it).
    let mut stopped = with_status("stopped", converged(&desired));
    stopped.status_hint =
        envctl::provider::aws::status_hint("stopped", &desired.cluster_id, Some("feature/s"));
    let plan = check_with(
        vec![("feature/s", Some(desired.clone()))],
        vec![stopped.clone()],
        &PlanOptions::default(),
    )
    .unwrap();
    assert!(plan.is_empty(), "{:?}", plan.actions);
    let mut scaled = stopped;
    scaled.scaling = Some(Scaling {
        min_acu: envctl::model::Acu::from_f64(1.0).unwrap(),
        max_acu: envctl::model::Acu::from_f64(2.0).unwrap(),
    });
    scaled.ledger = LedgerRead::NotRead;
    let stale = stale_digest(scaled.clone());
    for observed in [scaled, stale] {
        let plan = plan_one("feature/s", Some(desired.clone()), vec![observed]);
        assert_eq!(
            kinds(&plan),
            [format!(
                "blocked the cluster is `stopped` and will not become available by waiting: start it (`aws rds start-db-cluster --db-cluster-identifier {}`), then apply again",
                desired.cluster_id
            )]
        );
    }
}

#[test]
fn deletion_protection_blocks_a_delete_and_a_replace_that_keeps_it() {
    let world = World::new();
    let desired = world.desired("feature/dp").unwrap();
    let mut live = converged(&desired);
    live.deletion_protection = true;
    let plan = plan_one("feature/dp", None, vec![live.clone()]);
    assert_eq!(plan.actions[0].kind.name(), "blocked");
    assert!(
        render::detail(&plan.actions[0]).contains("its deletion protection is on"),
        "{:?}",
        plan.actions
    );
    // Forced (destroy --force): deleted.
    let forced = PlanOptions {
        force_delete_protected: true,
        ..PlanOptions::default()
    };
    let plan = check_with(vec![("feature/dp", None)], vec![live.clone()], &forced).unwrap();
    assert_eq!(plan.actions[0].kind.name(), "delete");
    // A replace while the spec keeps deletion protection on is blocked; turned off, it goes.
    let keep = world.with(
        "environments/preview.yaml",
        &PREVIEW.replace(
            "  tags: { team: web }\n",
            "  tags: { team: web }\n  deletionProtection: true\n  engineVersion: \"17.2\"\n",
        ),
    );
    let plan = plan_one("feature/dp", keep.desired("feature/dp"), vec![live.clone()]);
    assert_eq!(plan.actions[0].kind.name(), "blocked", "{:?}", plan.actions);
    let off = World::new().with(
        "environments/preview.yaml",
        &PREVIEW.replace(
            "  tags: { team: web }\n",
            "  tags: { team: web }\n  engineVersion: \"17.2\"\n",
        ),
    );
    let plan = plan_one("feature/dp", off.desired("feature/dp"), vec![live]);
    assert_eq!(plan.actions[0].kind.name(), "replace", "{:?}", plan.actions);
}

#[test]
fn a_diff_cannot_close_its_markdown_fence() {
    let world = World::new().with(
        "schemas/migrations/0002_add_email.sql",
        "-- ```\n-- ~~~~\nALTER TABLE users ADD email text;\n",
    );
    let observed = stale_digest(converged(&world.desired("feature/md").unwrap()));
    let world = world.with(
        "schemas/migrations/0002_add_email.sql",
        "-- ```\n-- ~~~~\nALTER TABLE users ADD email varchar(9);\n# Approved\n",
    );
    let plan = plan_one("feature/md", world.desired("feature/md"), vec![observed]);
    let markdown = render::markdown(&plan);
    let fence_line = markdown
        .lines()
        .find(|l| l.starts_with("``") && l.ends_with("diff"))
        .expect("a fenced diff");
    let fence = fence_line.trim_end_matches("diff");
    assert!(fence.len() > 3, "longer than the diff's own run: {fence}");
    // Inside the block nothing closes it: the only line that is the bare fence is its end.
    let closing: Vec<&str> = markdown.lines().filter(|l| l.trim() == fence).collect();
    assert_eq!(closing.len(), 1, "{markdown}");
}

/// Prune hands the planner the leftovers it decided to delete: the planner makes the whole plan
/// (deletes of environments and of leftovers, in branch order, counted in the summary), and the
/// fingerprint says which leftovers it deletes.
#[test]
fn prunes_leftover_deletions_are_part_of_the_plan() {
    let world = World::new();
    let gone = converged(&world.desired("feature/b").unwrap());
    let leftover = ClusterId::from_live("envctl-feature-a-12345678-creating");
    let options = PlanOptions {
        extra_deletions: BTreeMap::from([(
            gone.cluster_id.clone(),
            DeleteReason::BranchDeleted {
                local_branches_count: false,
            },
        )]),
        leftover_deletions: BTreeMap::from([
            (leftover.clone(), "feature/a".to_owned()),
            (
                ClusterId::from_live("envctl-feature-c-12345678-creating"),
                "feature/c".to_owned(),
            ),
        ]),
        ..PlanOptions::default()
    };
    let plan = check_with(vec![], vec![gone], &options).unwrap();
    let actions: Vec<(&str, &str, String)> = plan
        .actions
        .iter()
        .map(|a| (a.branch.as_str(), a.env.as_str(), render::detail(a)))
        .collect();
    assert_eq!(
        actions,
        [
            (
                "feature/a",
                "-",
                "leftover of an interrupted create".to_owned()
            ),
            (
                "feature/b",
                "preview",
                "branch deleted: not on origin".to_owned()
            ),
            (
                "feature/c",
                "-",
                "leftover of an interrupted create".to_owned()
            ),
        ]
    );
    assert_eq!(plan.actions[0].cluster_id, leftover);
    assert_eq!(plan.summary.delete, 3);
    let without = check_with(
        vec![],
        vec![converged(&world.desired("feature/b").unwrap())],
        &PlanOptions {
            leftover_deletions: BTreeMap::new(),
            ..options.clone()
        },
    )
    .unwrap();
    assert_ne!(without.observed_fingerprint, plan.observed_fingerprint);
}

/// Data branches: a clone from `main`'s ledger with the migrations past it, a source that cannot
/// be copied, and a copy whose history diverged, re-copied by a reset; text, JSON and Markdown.
#[test]
fn data_branch_renderings() {
    let world = World::new()
        .with(
            "environments/preview.yaml",
            &PREVIEW.replace(
                "database:\n",
                "database:\n  from:\n    branch: main\n    mask:\n      public.users.email: email\n      public.users.name: hash\n    maskSql: [schemas/mask/extra.sql]\n",
            ),
        )
        .with("schemas/mask/extra.sql", "UPDATE users SET id = id;\n");
    let main = world.desired("main").unwrap();
    // main applied the first migration only.
    let mut main_ledger = ledger_of(&main);
    main_ledger.migrations.truncate(1);
    main_ledger.seeds.clear();
    let facts = |problem: Option<&str>| envctl::model::SourceFacts {
        cluster_id: main.cluster_id.clone(),
        problem: problem.map(str::to_owned),
        ledger: LedgerRead::Read(main_ledger.clone()),
        database_user: Some(main.database.user.clone()),
        database_name: Some(main.database.name.clone()),
        engine_version: Some("16.6".into()),
        columns: None,
    };
    let plan_with = |scope: Vec<(&str, Option<DesiredEnv>)>,
                     observed: Vec<ObservedEnv>,
                     facts: envctl::model::SourceFacts| {
        let scope: BTreeMap<String, Wanted> = scope
            .into_iter()
            .map(|(b, d)| (b.to_owned(), wanted(d)))
            .collect();
        let sources = BTreeMap::from([(envctl::model::SourceRef::Branch("main".into()), facts)]);
        plan(
            &PlanInput {
                provider: "local",
                owner: &owner(),
                scope: &scope,
                observed: &observed,
                engines: &Default::default(),
                default_branch: Some("main"),
                sources: &sources,
                occupied: &Default::default(),
            },
            &PlanOptions::default(),
        )
        .unwrap()
    };
    let clone = plan_with(
        vec![("feature/copy", world.desired("feature/copy"))],
        vec![],
        facts(None),
    );
    assert_eq!(kinds(&clone), ["clone", "migrate", "seed"]);
    assert_eq!(clone.summary.clone, 1);
    assert_eq!(clone.summary.create, 0);
    let text = render::text(&clone, Style { color: false });
    let json = render::json(&clone).replace(&clone.observed_fingerprint, "<fingerprint>");
    insta::assert_snapshot!("data_branch_text", text);
    insta::assert_snapshot!("data_branch_json", json);
    insta::assert_snapshot!("data_branch_markdown", render::markdown(&clone));

    let blocked = plan_with(
        vec![("feature/copy", world.desired("feature/copy"))],
        vec![],
        facts(Some("its environment `envctl-main-1` is `stopped`")),
    );
    assert_eq!(kinds(&blocked), ["blocked"]);
    assert!(
        render::detail(&blocked.actions[0])
            .contains("cannot copy its source: its environment `envctl-main-1` is `stopped`")
    );

    // The copy applied a version of 0002 that its branch has since edited: copied again.
    let copy = world.desired("feature/copy").unwrap();
    let mut observed = stale_digest(converged(&copy));
    observed
        .tags
        .insert(tags::SOURCE.into(), main.cluster_id.to_string());
    observed.tags.insert(tags::MASKED.into(), "done".into());
    let edited = world.clone().with(
        "schemas/migrations/0002_add_email.sql",
        "ALTER TABLE users ADD email varchar(200);\n",
    );
    let reset = plan_with(
        vec![("feature/copy", edited.desired("feature/copy"))],
        vec![observed],
        facts(None),
    );
    assert_eq!(kinds(&reset), ["reset", "migrate", "seed"]);
    insta::assert_snapshot!(
        "data_branch_reclone",
        render::text(&reset, Style { color: false })
    );

    // A copy cut off before its writer was made (it lists none): apply's wait makes the copy's
    // writer its own way and the plan runs what the source's ledger lacks; no repair.
    let mut unfinished = converged(&copy);
    unfinished
        .tags
        .insert(tags::SOURCE.into(), main.cluster_id.to_string());
    unfinished
        .tags
        .insert(tags::MASKED.into(), "pending".into());
    unfinished
        .tags
        .insert(tags::LEDGER_DIGEST.into(), "none".into());
    unfinished.writerless = true;
    unfinished.ledger = LedgerRead::Read(main_ledger.clone());
    let finish = plan_with(
        vec![("feature/copy", world.desired("feature/copy"))],
        vec![unfinished.clone()],
        facts(None),
    );
    assert_eq!(
        kinds(&finish),
        ["update", "migrate", "seed"],
        "{}",
        render::text(&finish, Style { color: false })
    );
    // Its masking never committed and its spec no longer copies data: nothing would ever mask
    // it (url, exec and proxy refuse it for good), so it is made anew, without the data.
    let plain = World::new();
    let dropped = plan_with(
        vec![("feature/copy", plain.desired("feature/copy"))],
        vec![unfinished.clone()],
        facts(None),
    );
    assert_eq!(kinds(&dropped), ["replace", "migrate", "seed"]);
    assert!(
        render::detail(&dropped.actions[0]).contains("masking never committed"),
        "{}",
        render::detail(&dropped.actions[0])
    );
    // A finished copy whose writer went later is repaired like any environment.
    let mut lost = converged(&copy);
    lost.tags
        .insert(tags::SOURCE.into(), main.cluster_id.to_string());
    lost.tags.insert(tags::MASKED.into(), "done".into());
    lost.writerless = true;
    let repaired = plan_with(
        vec![("feature/copy", world.desired("feature/copy"))],
        vec![lost],
        facts(None),
    );
    assert_eq!(kinds(&repaired), ["repair"]);
}

/// A migration the plan runs carries its lint findings beside it, in all three renderings: the
/// rule, where, and the safer way. Only the migrations the plan runs are linted into it.
#[test]
fn lint_findings_appear_beside_the_migration_they_concern() {
    let world = World::new();
    let observed = converged(&world.desired("feature/login").unwrap());
    let world = world
        .with(
            "schemas/migrations/0003_index_email.sql",
            "-- Find users by email.\nCREATE INDEX users_email ON users (email);\n\nALTER TABLE users\n    DROP COLUMN id;\n",
        )
        .with(
            "schemas/migrations/0004_safe.sql",
            "-- envctl:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_2 ON users (email);\n",
        );
    let plan = check_with(
        vec![("feature/login", world.desired("feature/login"))],
        vec![observed],
        &PlanOptions::default(),
    )
    .unwrap();
    let text = render::text(&plan, Style { color: false });
    insta::assert_snapshot!("lint_text", text);
    let json = render::json(&plan).replace(&plan.observed_fingerprint, "<fingerprint>");
    insta::assert_snapshot!("lint_json", json);
    insta::assert_snapshot!("lint_markdown", render::markdown(&plan));
    // 0001 and 0002 ran before: the plan says nothing of them.
    assert!(!text.contains("0002_add_email.sql:"), "{text}");
}

/// Issue 16, item 2: a cluster that lists no writer where it should have one is repaired (a new
/// action: text, JSON and Markdown show it, the summary counts it); while it is being made or
/// replaced anyway, it is not; its ledger is planned from its tags (nothing serves it to read).
#[test]
fn a_cluster_without_a_writer_is_repaired() {
    let world = World::new();
    let desired = world.desired("feature/w").unwrap();
    let mut writerless = converged(&desired);
    writerless.writerless = true;
    let plan = plan_one("feature/w", Some(desired.clone()), vec![writerless.clone()]);
    assert_eq!(kinds(&plan), ["repair"]);
    assert_eq!(plan.summary.repair, 1);
    let text = render::text(&plan, Style { color: false });
    let json = render::json(&plan);
    let markdown = render::markdown(&plan);
    insta::assert_snapshot!("repair", format!("{text}\n{json}\n{markdown}"));
    // Its digest stale: the ledger is not read (no writer to connect to); planned from its tags.
    let mut stale = stale_digest(writerless.clone());
    stale.ledger = LedgerRead::NotRead;
    stale.tags.insert(tags::SCHEMA_VERSION.into(), "1".into());
    assert!(!envctl::plan::needs_ledger(&desired, &stale));
    let plan = plan_one("feature/w", Some(desired.clone()), vec![stale]);
    assert_eq!(kinds(&plan), ["repair", "migrate", "seed"]);
    // Being made (the writer is listed partway through) or being deleted: nothing to repair.
    for status in ["creating", "deleting"] {
        let mut busy = writerless.clone();
        busy.status = status.into();
        let plan = plan_one("feature/w", Some(desired.clone()), vec![busy]);
        assert!(
            !kinds(&plan).contains(&"repair"),
            "{status}: {:?}",
            plan.actions
        );
    }
    // A replace makes a new cluster with its writer: no repair.
    let mut old = writerless.clone();
    old.engine_version = Some("15.4".into());
    let newer = world.with(
        "environments/preview.yaml",
        &PREVIEW.replace(
            "  tags: { team: web }\n",
            "  tags: { team: web }\n  engineVersion: \"16.6\"\n",
        ),
    );
    let plan = plan_one("feature/w", newer.desired("feature/w"), vec![old]);
    assert_eq!(kinds(&plan), ["replace", "migrate", "seed"]);
    // The fingerprint sees it: a plan saved before the writer went is stale.
    let whole = plan_one(
        "feature/w",
        Some(desired.clone()),
        vec![converged(&desired)],
    );
    let broken = plan_one("feature/w", Some(desired), vec![writerless]);
    assert_ne!(whole.observed_fingerprint, broken.observed_fingerprint);
}

/// Issue 16, item 5: an id a create would use that a cluster not this repository's holds is
/// blocked with whose it is: never `+ create` that apply then refuses.
#[test]
fn a_create_over_someone_else_s_cluster_is_blocked() {
    let world = World::new();
    let desired = world.desired("feature/x").unwrap();
    let occupied = BTreeMap::from([(
        desired.cluster_id.clone(),
        "it does not carry `envctl:managed=true`".to_owned(),
    )]);
    let scope = vec![("feature/x", Wanted::Env(Box::new(desired.clone())))];
    let plan = check_occupied(scope.clone(), vec![], &PlanOptions::default(), &occupied).unwrap();
    assert_eq!(kinds(&plan), ["blocked"]);
    let reason = render::detail(&plan.actions[0]);
    assert!(
        reason.starts_with(&format!("refusing to touch `{}`", desired.cluster_id))
            && reason.contains("(it does not carry `envctl:managed=true`)")
            && reason.contains("ENVCTL_PREFIX"),
        "{reason}"
    );
    let free = check_wanted(scope, vec![], &PlanOptions::default()).unwrap();
    assert_eq!(kinds(&free), ["create", "migrate", "seed"]);
    assert_ne!(free.observed_fingerprint, plan.observed_fingerprint);
}

/// Issue 16, item 4: an environment whose id is outside the prefix (tags set by hand or copied)
/// is never deleted, even forced; its branch's own environment is planned as if it were not there.
#[test]
fn an_environment_outside_the_prefix_is_never_deleted() {
    let world = World::new();
    let desired = world.desired("feature/o").unwrap();
    let mut foreign = converged(&desired);
    foreign.cluster_id = ClusterId::from_live("prod-orders");
    foreign.refused = owner().id_outside_prefix(&foreign.cluster_id);
    assert!(foreign.refused.is_some());
    // No spec covers its branch any more: blocked, not deleted.
    let plan = plan_one("feature/o", None, vec![foreign.clone()]);
    assert_eq!(kinds(&plan), ["blocked"]);
    assert!(
        render::detail(&plan.actions[0]).contains("does not start with `envctl-`"),
        "{:?}",
        plan.actions
    );
    // Destroy (even forced) and prune name it: blocked.
    let forced = PlanOptions {
        extra_deletions: BTreeMap::from([(foreign.cluster_id.clone(), DeleteReason::Requested)]),
        force_delete_protected: true,
        ..PlanOptions::default()
    };
    let plan = check_with(vec![], vec![foreign.clone()], &forced).unwrap();
    assert_eq!(kinds(&plan), ["blocked"]);
    // Its branch wants an environment: the derived one is made; the other is left alone.
    let plan = plan_one("feature/o", Some(desired.clone()), vec![foreign]);
    assert_eq!(kinds(&plan), ["create", "migrate", "seed"]);
    assert_eq!(plan.actions[0].cluster_id, desired.cluster_id);
}

/// Issue 16, item 6: `cloning-failed` and `migration-failed` are terminal, as `failed` is: with
/// anything to do the environment is blocked with the provider's hint, never waited on.
#[test]
fn terminal_statuses_are_blocked_not_waited_on() {
    use envctl::model::StatusClass;
    let world = World::new();
    let desired = world.desired("feature/s").unwrap();
    for status in ["cloning-failed", "migration-failed", "failed"] {
        assert_eq!(StatusClass::of(status), StatusClass::Unusable, "{status}");
        let hint =
            envctl::provider::aws::status_hint(status, &desired.cluster_id, Some("feature/s"))
                .unwrap();
        assert!(!hint.contains("start-db-cluster"), "{status}: {hint}");
        assert!(
            hint.contains("`envctl destroy --branch feature/s` deletes it"),
            "{hint}"
        );
        let mut live = stale_digest(converged(&desired));
        live.status = status.into();
        live.status_hint = Some(hint.clone());
        live.ledger = LedgerRead::NotRead;
        let plan = plan_one("feature/s", Some(desired.clone()), vec![live]);
        assert_eq!(kinds(&plan), ["blocked"], "{status}");
        assert_eq!(
            render::detail(&plan.actions[0]),
            format!("the cluster is `{status}` and will not become available by waiting: {hint}")
        );
    }
    for status in [
        "inaccessible-encryption-credentials",
        "inaccessible-encryption-credentials-recoverable",
    ] {
        let hint = envctl::provider::aws::status_hint(status, &desired.cluster_id, None).unwrap();
        assert!(!hint.contains("start-db-cluster"), "{status}: {hint}");
        assert!(hint.contains("KMS key"), "{status}: {hint}");
    }
    assert!(envctl::provider::aws::status_hint("available", &desired.cluster_id, None).is_none());
    assert!(envctl::provider::aws::status_hint("creating", &desired.cluster_id, None).is_none());
}
