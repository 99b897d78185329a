//! `envctl diff` on a real PostgreSQL through the binary: every kind of object added, removed,
//! changed and left alone; the same schema made in another order diffs empty; quoted and unicode
//! identifiers; envctl's ledger is left out. The renderings of a hand-made diff are snapshots.

mod support;

use std::collections::BTreeSet;

use envctl::model::schema::{DiffSide, ObjectKind, PartKind, Properties, Schema, SchemaObject};
use envctl::plan::diff;
use predicates::prelude::*;
use support::TestRepo;

/// A repository with `main` and `feature/x` applied (the example specs: the same three
/// migrations), each database then given its own SQL.
fn two_environments(name: &str, main_sql: &str, branch_sql: &str) -> TestRepo {
    let repo = TestRepo::new(name);
    repo.apply("main");
    repo.apply("feature/x");
    if !main_sql.is_empty() {
        repo.sql("main", main_sql);
    }
    if !branch_sql.is_empty() {
        repo.sql("feature/x", branch_sql);
    }
    repo
}

fn diff_json(repo: &TestRepo) -> serde_json::Value {
    let output = repo
        .envctl()
        .args([
            "diff",
            "--branch",
            "feature/x",
            "--against",
            "main",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "diff failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `(change, kind, name)` of every object in a diff JSON.
fn objects(diff: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_owned(),
                c["kind"].as_str().unwrap().to_owned(),
                c["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `(change, kind, name)` of every part of one object.
fn parts(diff: &serde_json::Value, name: &str) -> BTreeSet<(String, String, String)> {
    let object = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {diff:#}"));
    object["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["change"].as_str().unwrap().to_owned(),
                p["kind"].as_str().unwrap().to_owned(),
                p["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// One object of every kind, in schema `s`, given a variant: `same` objects are the same on both
/// sides, `v1`/`v2` differ in each property the diff compares.
fn every_kind(schema: &str, version: u8) -> String {
    let two = version == 2;
    let pick = |a: &str, b: &str| if two { b.to_owned() } else { a.to_owned() };
    format!(
        "CREATE SCHEMA {schema};
CREATE TYPE {schema}.mood AS ENUM ({labels});
CREATE DOMAIN {schema}.pos AS integer CHECK (VALUE > {min});
CREATE SEQUENCE {schema}.seq INCREMENT BY {increment};
CREATE TABLE {schema}.parent (id bigint PRIMARY KEY);
CREATE TABLE {schema}.t (
    id bigint GENERATED {identity} AS IDENTITY PRIMARY KEY,
    v {v_type} {v_null},
    d text DEFAULT {default},
    g bigint GENERATED ALWAYS AS ({generated}) STORED,
    parent bigint REFERENCES {schema}.parent (id) {on_delete},
    r int4range,
    {only}
    CONSTRAINT t_v_check CHECK (v {check}),
    CONSTRAINT t_d_unique UNIQUE ({unique}),
    CONSTRAINT t_r_excl EXCLUDE USING gist (r WITH {excl})
);
CREATE INDEX t_v_idx ON {schema}.t USING {method} (v) {predicate};
CREATE FUNCTION {schema}.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN {ret}; END $$;
CREATE TRIGGER t_touch BEFORE {event} ON {schema}.t FOR EACH ROW EXECUTE FUNCTION {schema}.touch();
ALTER TABLE {schema}.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY t_mine ON {schema}.t FOR {command} USING (v {policy});
CREATE VIEW {schema}.v AS SELECT id, v FROM {schema}.t WHERE {view};
CREATE MATERIALIZED VIEW {schema}.mv AS SELECT id FROM {schema}.t WHERE {view};
CREATE FUNCTION {schema}.f(a integer) RETURNS integer LANGUAGE sql {volatility} AS 'SELECT a + {body}';
CREATE PROCEDURE {schema}.p() LANGUAGE sql AS 'SELECT {body}';
",
        labels = pick("'happy', 'sad'", "'happy', 'sad', 'meh'"),
        min = pick("0", "1"),
        increment = pick("1", "2"),
        identity = pick("ALWAYS", "BY DEFAULT"),
        v_type = pick("integer", "bigint"),
        v_null = pick("", "NOT NULL"),
        default = pick("'x'", "'y'"),
        generated = pick("id * 2", "id * 3"),
        on_delete = pick("", "ON DELETE CASCADE"),
        only = pick("gone integer,", "added integer,"),
        check = pick("> 0", ">= 0"),
        unique = pick("d", "d, v"),
        excl = pick("&&", "="),
        method = pick("btree", "hash"),
        predicate = pick("", "WHERE v > 10"),
        ret = pick("NEW", "OLD"),
        event = pick("INSERT", "UPDATE"),
        command = pick("SELECT", "ALL"),
        policy = pick("> 0", "> 1"),
        view = pick("v > 0", "v > 1"),
        volatility = pick("IMMUTABLE", "STABLE"),
        body = pick("1", "2"),
    )
}

#[test]
fn every_object_kind_added_removed_changed_and_unchanged() {
    let main = format!(
        "CREATE EXTENSION citext;\n{}{}{}",
        every_kind("same", 1),
        every_kind("changed", 1),
        every_kind("removed", 1)
    );
    let branch = format!(
        "CREATE EXTENSION hstore;\n{}{}{}",
        every_kind("same", 1),
        every_kind("changed", 2),
        every_kind("added", 1)
    );
    let repo = two_environments("diff-kinds", &main, &branch);
    let diff = diff_json(&repo);
    assert_eq!(diff["format_version"], 1);
    assert_eq!(diff["branch"]["branch"], "feature/x");
    assert_eq!(diff["against"]["branch"], "main");
    let kinds = [
        ("schema", ""),
        ("enum", ".mood"),
        ("domain", ".pos"),
        ("sequence", ".seq"),
        ("table", ".parent"),
        ("table", ".t"),
        ("view", ".v"),
        ("materialized_view", ".mv"),
        ("function", ".f(a integer)"),
        ("function", ".touch()"),
        ("procedure", ".p()"),
    ];
    let mut expected = BTreeSet::new();
    for (change, schema) in [("added", "added"), ("removed", "removed")] {
        for (kind, name) in kinds {
            expected.insert((
                change.to_owned(),
                kind.to_owned(),
                format!("{schema}{name}"),
            ));
        }
    }
    for (kind, name) in kinds {
        // The schema itself and the referenced table do not change.
        if kind != "schema" && name != ".parent" {
            expected.insert((
                "changed".to_owned(),
                kind.to_owned(),
                format!("changed{name}"),
            ));
        }
    }
    expected.insert(("added".into(), "extension".into(), "hstore".into()));
    expected.insert(("removed".into(), "extension".into(), "citext".into()));
    assert_eq!(objects(&diff), expected, "{diff:#}");
    // Nothing of `same`, of envctl's ledger, of the example's `dummy` schema, or of what the
    // extensions brought (citext's functions and types).
    let text = diff.to_string();
    for absent in ["\"same", "envctl.", "dummy", "citext(", "hstore("] {
        assert!(!text.contains(absent), "{absent} in {diff:#}");
    }
    let t = parts(&diff, "changed.t");
    for (change, kind, name) in [
        ("added", "column", "added"),
        ("removed", "column", "gone"),
        ("changed", "column", "id"),
        ("changed", "column", "v"),
        ("changed", "column", "d"),
        ("changed", "column", "g"),
        ("changed", "constraint", "t_v_check"),
        ("changed", "constraint", "t_d_unique"),
        ("changed", "constraint", "t_r_excl"),
        ("changed", "constraint", "t_parent_fkey"),
        ("changed", "index", "t_v_idx"),
        ("changed", "trigger", "t_touch"),
        ("changed", "policy", "t_mine"),
    ] {
        assert!(
            t.contains(&(change.to_owned(), kind.to_owned(), name.to_owned())),
            "{change} {kind} {name} in {t:?}"
        );
    }
    assert_eq!(t.len(), 13, "{t:?}");
    // The column's properties, before and after.
    let text = repo
        .envctl()
        .args(["diff", "--branch", "feature/x", "--against", "main"])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    for line in [
        "~     column v",
        "~         type: integer → bigint",
        "+         not null: yes",
        "~         identity: always → by default",
        "+ extension hstore",
        "- extension citext",
        "Diff: 12 added, 12 removed, 9 changed.",
    ] {
        assert!(text.contains(line), "`{line}` in\n{text}");
    }
    repo.envctl()
        .args([
            "diff",
            "--branch",
            "feature/x",
            "--against",
            "main",
            "--detailed-exitcode",
        ])
        .assert()
        .code(2);
}

#[test]
fn the_same_schema_made_in_another_order_diffs_empty() {
    let forward = "CREATE TABLE public.a (id bigint PRIMARY KEY, name text);
CREATE TABLE public.b (id bigint PRIMARY KEY, a bigint REFERENCES public.a (id), CHECK (id > 0));
CREATE INDEX b_a ON public.b (a);
CREATE VIEW public.ab AS SELECT b.id, a.name FROM public.b JOIN public.a ON a.id = b.a;
CREATE FUNCTION public.f() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.b';";
    // Other order, columns added later (other positions, a dropped column left behind), the
    // function replaced.
    let backward = "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE TABLE public.a (name text, dropped int);
ALTER TABLE public.a DROP COLUMN dropped;
ALTER TABLE public.a ADD COLUMN id bigint PRIMARY KEY;
CREATE TABLE public.b (id bigint PRIMARY KEY, CHECK (id > 0));
ALTER TABLE public.b ADD COLUMN a bigint REFERENCES public.a (id);
CREATE INDEX b_a ON public.b (a);
CREATE VIEW public.ab AS SELECT b.id, a.name FROM public.b JOIN public.a ON a.id = b.a;
DROP FUNCTION public.f();
CREATE FUNCTION public.f() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.b';";
    let repo = two_environments("diff-order", forward, backward);
    repo.envctl()
        .args([
            "diff",
            "--branch",
            "feature/x",
            "--against",
            "main",
            "--detailed-exitcode",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::ends_with(
            "\nNo differences: the schemas are the same.\n",
        ));
}

#[test]
fn quoted_and_unicode_identifiers_are_named_as_postgresql_quotes_them() {
    let repo = two_environments(
        "diff-names",
        "CREATE TABLE public.\"Order Items\" (\"Qty\" int);",
        "CREATE TABLE public.\"Order Items\" (\"Qty\" bigint);
CREATE SCHEMA \"ünï\";
CREATE TABLE \"ünï\".\"tä\"\"b\" (\"sp ace\" text, plain int);",
    );
    let diff = diff_json(&repo);
    assert_eq!(
        objects(&diff),
        BTreeSet::from([
            ("added".into(), "schema".into(), "\"ünï\"".into()),
            ("added".into(), "table".into(), "\"ünï\".\"tä\"\"b\"".into()),
            (
                "changed".into(),
                "table".into(),
                "public.\"Order Items\"".into()
            ),
        ])
    );
    assert_eq!(
        parts(&diff, "\"ünï\".\"tä\"\"b\""),
        BTreeSet::from([
            ("added".into(), "column".into(), "\"sp ace\"".into()),
            ("added".into(), "column".into(), "plain".into()),
        ])
    );
    assert_eq!(
        parts(&diff, "public.\"Order Items\""),
        BTreeSet::from([("changed".into(), "column".into(), "\"Qty\"".into())])
    );
}

/// A database holding envctl's ledger alone is, to `diff`, an empty one.
#[test]
fn a_database_with_the_ledger_only_diffs_empty_against_an_empty_one() {
    let repo = two_environments(
        "diff-ledger",
        "DROP SCHEMA dummy CASCADE; DROP SCHEMA envctl CASCADE;",
        "DROP SCHEMA dummy CASCADE;",
    );
    assert_eq!(
        repo.sql("feature/x", "SELECT count(*) FROM envctl.migrations"),
        "3"
    );
    repo.envctl()
        .args([
            "diff",
            "--branch",
            "feature/x",
            "--against",
            "main",
            "--detailed-exitcode",
        ])
        .assert()
        .code(0);
    // And the default is the default branch.
    repo.envctl()
        .args(["diff", "--branch", "feature/x", "--json"])
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .assert()
        .success()
        .stdout(predicate::str::contains("\"changes\": []"));
}

#[test]
fn a_side_without_an_environment_is_an_error_saying_what_to_do() {
    let repo = TestRepo::new("diff-missing");
    repo.apply("feature/x");
    repo.envctl()
        .args(["diff", "--branch", "feature/x", "--against", "main"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "error: `envctl diff` compares `feature/x` with `main`, which has no environment",
        ))
        .stderr(predicate::str::contains("envctl apply --branch main"));
    repo.envctl()
        .args(["diff", "--branch", "feature/x"])
        .env_remove("ENVCTL_DEFAULT_BRANCH")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cannot tell the default branch to compare with",
        ));
}

// ---- renderings, from a hand-made diff --------------------------------------------------------

fn props(pairs: &[(&str, &str)]) -> Properties {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sample() -> envctl::model::schema::SchemaDiff {
    let mut before = Schema::default();
    let mut after = Schema::default();
    let mut users = SchemaObject::default();
    users.parts.insert(
        (PartKind::Column, "id".into()),
        props(&[("type", "bigint")]),
    );
    users.parts.insert(
        (PartKind::Column, "age".into()),
        props(&[("type", "integer")]),
    );
    users.parts.insert(
        (PartKind::Column, "legacy".into()),
        props(&[("type", "text")]),
    );
    before
        .objects
        .insert((ObjectKind::Table, "public.users".into()), users.clone());
    users.parts.remove(&(PartKind::Column, "legacy".into()));
    users.parts.insert(
        (PartKind::Column, "age".into()),
        props(&[("type", "bigint"), ("not null", "yes")]),
    );
    users.parts.insert(
        (PartKind::Index, "users_age".into()),
        props(&[(
            "definition",
            "CREATE INDEX users_age ON public.users USING btree (age)",
        )]),
    );
    after
        .objects
        .insert((ObjectKind::Table, "public.users".into()), users);
    before.objects.insert(
        (ObjectKind::View, "public.adults".into()),
        SchemaObject {
            properties: props(&[(
                "definition",
                " SELECT id\n   FROM users\n  WHERE age >= 18;",
            )]),
            parts: Default::default(),
        },
    );
    after.objects.insert(
        (ObjectKind::View, "public.adults".into()),
        SchemaObject {
            properties: props(&[(
                "definition",
                " SELECT id\n   FROM users\n  WHERE age >= 21;",
            )]),
            parts: Default::default(),
        },
    );
    after.objects.insert(
        (ObjectKind::Enum, "public.\"Mood\"".into()),
        SchemaObject {
            properties: props(&[("labels", "'a', 'b'")]),
            parts: Default::default(),
        },
    );
    before.objects.insert(
        (ObjectKind::Function, "public.old(integer)".into()),
        SchemaObject {
            properties: props(&[("language", "sql"), ("returns", "integer")]),
            parts: Default::default(),
        },
    );
    let side = |branch: &str, id: &str| DiffSide {
        branch: branch.into(),
        cluster_id: id.into(),
    };
    diff::diff(
        (&side("main", "envctl-main-1a2b3c4d"), &before),
        (
            &side("feature/login", "envctl-feature-login-005b07d0"),
            &after,
        ),
    )
}

#[test]
fn renderings_of_a_diff() {
    let diff = sample();
    insta::assert_snapshot!("diff_text", diff::text(&diff, false));
    insta::assert_snapshot!("diff_markdown", diff::markdown(&diff));
    insta::assert_snapshot!("diff_json", diff::json(&diff));
}

/// A long diff folds into `<details>`, and a backtick run in a definition cannot end its fence.
#[test]
fn a_long_diff_folds_and_its_fence_holds() {
    let mut after = Schema::default();
    for n in 0..50 {
        after.objects.insert(
            (ObjectKind::View, format!("public.v{n:02}")),
            SchemaObject {
                properties: props(&[("definition", "SELECT '```' AS fence")]),
                parts: Default::default(),
            },
        );
    }
    let side = DiffSide {
        branch: "b".into(),
        cluster_id: "envctl-b-00000000".into(),
    };
    let markdown = diff::markdown(&diff::diff((&side, &Schema::default()), (&side, &after)));
    assert!(markdown.contains("<details><summary>The diff (100 lines)</summary>\n\n````diff\n"));
    assert!(markdown.ends_with("\n````\n\n</details>\n"), "{markdown}");
}

#[test]
fn an_against_that_is_no_branch_name_is_refused_as_such() {
    // Not "no spec covers it, add a glob such as `../*`": no branch can be called that.
    let repo = TestRepo::new("diff-bad-against");
    for command in ["diff", "review"] {
        for bad in ["../../x", "feat*", "a b"] {
            repo.envctl()
                .args([command, "--branch", "main", "--against", bad])
                .assert()
                .code(1)
                .stderr(predicate::str::contains(format!(
                    "--against: `{bad}` is not a valid git branch name"
                )))
                .stderr(predicate::str::contains("glob").not());
        }
    }
}

#[test]
fn destroy_and_reset_refuse_a_branch_that_is_no_branch_name() {
    // Before, `destroy --branch 'feature/*'` said there was nothing to destroy and exited 0,
    // and reset hinted at `apply --branch feature/*`, which apply refuses.
    let repo = TestRepo::new("destroy-bad-branch");
    for command in ["destroy", "reset"] {
        for bad in ["feature/*", "", "a b"] {
            repo.envctl()
                .args([command, "--yes", "--branch", bad])
                .assert()
                .code(1)
                .stderr(predicate::str::contains(format!(
                    "`{bad}` is not a valid git branch name"
                )));
        }
    }
}

#[test]
fn a_range_type_s_own_functions_are_not_shown_as_the_user_s() {
    // PostgreSQL makes a range type's constructors (and its multirange's) with it: the diff
    // showed four functions nobody wrote.
    let repo = two_environments(
        "diff-range",
        "",
        "CREATE TYPE public.rng AS RANGE (subtype = float8);\n\
         CREATE FUNCTION public.mine(x int) RETURNS int LANGUAGE sql AS 'SELECT x';",
    );
    let found = objects(&diff_json(&repo));
    let functions: Vec<&(String, String, String)> = found
        .iter()
        .filter(|(_, kind, _)| kind == "function")
        .collect();
    assert_eq!(functions.len(), 1, "{found:?}");
    assert_eq!(functions[0].2, "public.mine(x integer)", "{found:?}");
}
