//! Items 6 and 7, review (issue 18).
//!
//! 6. `diff`: `envctl diff` of two environments' databases on the local provider, each with 1 000
//!    tables (10 000 columns), 3 000 indexes besides the primary keys, and 200 functions, the
//!    branch's with a few changes; beside `pg_dump --schema-only` of both databases (at once)
//!    plus `diff -u` of the dumps. Target: ≤ 1.0× that reference.
//! 7. `lint`: `envctl plan` of a branch whose plan runs 200 migrations (DDL with lint findings),
//!    beside the same plan with no migrations: what reading, checking, linting and planning
//!    200 migrations adds (an upper bound of what lint adds). Target: ≤ 50 ms.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::measure::{self, Stats, secs, verdict};
use crate::{Ctx, git};

const TABLES: usize = 1_000;
const COLUMNS_PER_TABLE: usize = 10;
const INDEXES_PER_TABLE: usize = 3;
const FUNCTIONS: usize = 200;
const LINTED: usize = 200;

fn write(repo: &Path, path: &str, text: &str) {
    let path = repo.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const SPEC: &str = "version: 1\nname: bench\nbranches: [\"main\", \"feature/*\"]\ncluster:\n  engine: aurora-postgresql\n  express: true\n  scaling: { minAcu: 0, maxAcu: 4 }\n";

/// The schema: one migration that makes every object server-side.
fn schema_migration() -> String {
    let columns: Vec<String> = (1..COLUMNS_PER_TABLE)
        .map(|c| {
            if c % 2 == 0 {
                format!("c{c} integer")
            } else {
                format!("c{c} text")
            }
        })
        .collect();
    format!(
        "CREATE SCHEMA app;
DO $$
BEGIN
  FOR i IN 1..{TABLES} LOOP
    EXECUTE format('CREATE TABLE app.t%s (id bigint PRIMARY KEY, {columns})', i);
    FOR k IN 1..{INDEXES_PER_TABLE} LOOP
      EXECUTE format('CREATE INDEX t%s_c%s_idx ON app.t%s (c%s)', i, k, i, k);
    END LOOP;
  END LOOP;
  FOR i IN 1..{FUNCTIONS} LOOP
    EXECUTE format('CREATE FUNCTION app.f%s(a integer) RETURNS integer LANGUAGE sql AS %L', i, 'SELECT a + ' || i);
  END LOOP;
END $$;
",
        columns = columns.join(", ")
    )
}

fn envctl_in(ctx: &Ctx, repo: &Path, repo_name: &str) -> Command {
    let mut command = ctx.envctl();
    command
        .env("ENVCTL_LOCAL_URL", &ctx.server().url)
        .arg("-C")
        .arg(repo)
        .args(["--repo", repo_name]);
    command
}

/// Item 6's two environments: `main` and `feature/x` applied with the schema, the branch's
/// database then changed. Their admin URLs, and the catalog counts of `app`.
fn make_databases(ctx: &Ctx, repo: &Path, name: &str) -> (String, String, String) {
    let out = ctx.out();
    let server = ctx.server();
    write(repo, "environments/bench.yaml", SPEC);
    write(
        repo,
        "schemas/migrations/0001_schema.sql",
        &schema_migration(),
    );
    git(repo, &["init", "-q", "-b", "main"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "schema"]);
    git(repo, &["branch", "feature/x"]);
    eprintln!("item 6: making two databases of {TABLES} tables");
    for branch in ["main", "feature/x"] {
        let run = measure::run(
            envctl_in(ctx, repo, name).args(["apply", "--yes", "--branch", branch]),
            &out,
            "diff-apply",
        );
        run.expect_success("envctl apply");
    }
    let repo_name = envctl::model::RepoName::parse(name).unwrap();
    let url = |branch: &str| {
        let id = envctl::model::ClusterId::derive(&Default::default(), &repo_name, branch);
        server.url_of(id.as_str())
    };
    let (main_url, branch_url) = (url("main"), url("feature/x"));
    let psql = |url: &str, sql: &str| {
        let output = Command::new("psql")
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-Atqc", sql])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    psql(
        &branch_url,
        "ALTER TABLE app.t1 ADD COLUMN extra text; DROP INDEX app.t2_c1_idx; \
         CREATE TABLE app.added (id bigint); \
         CREATE OR REPLACE FUNCTION app.f1(a integer) RETURNS integer LANGUAGE sql AS 'SELECT a * 2';",
    );
    let shape = psql(
        &main_url,
        "SELECT (SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'app'::regnamespace) || ', ' || \
         (SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid WHERE c.relkind = 'r' AND c.relnamespace = 'app'::regnamespace AND a.attnum > 0) || ', ' || \
         (SELECT count(*) FROM pg_class WHERE relkind = 'i' AND relnamespace = 'app'::regnamespace) || ', ' || \
         (SELECT count(*) FROM pg_proc WHERE pronamespace = 'app'::regnamespace)",
    );
    (main_url, branch_url, shape)
}

/// Item 6.
pub fn run_diff(ctx: &Ctx) -> String {
    let repeat = ctx.repeat(5);
    let out = ctx.out();
    let server = ctx.server();
    server.drop_all_databases();
    let repo = ctx.dir("diff-repo");
    let name = "bench/diff";
    let (main_url, branch_url, shape) = make_databases(ctx, &repo, name);
    let dumps = ctx.dir("diff-dumps");
    let reference_script = format!(
        "pg_dump --schema-only --no-owner '{main_url}' > '{a}' & pg_dump --schema-only --no-owner '{branch_url}' > '{b}'; wait; diff -u '{a}' '{b}' > '{d}'; test $? -le 1",
        a = dumps.join("a.sql").display(),
        b = dumps.join("b.sql").display(),
        d = dumps.join("d.diff").display(),
    );
    let mut envctl_walls = Vec::new();
    let mut reference_walls = Vec::new();
    let mut envctl_run = None;
    for round in 0..repeat {
        eprintln!("item 6: round {}/{repeat}", round + 1);
        let mut order = [true, false];
        if round % 2 == 1 {
            order.reverse();
        }
        for is_envctl in order {
            if is_envctl {
                let run = measure::run(
                    envctl_in(ctx, &repo, name).args([
                        "diff",
                        "--branch",
                        "feature/x",
                        "--against",
                        "main",
                    ]),
                    &out,
                    "diff-envctl",
                );
                run.expect_success("envctl diff");
                envctl_walls.push(run.wall.as_secs_f64());
                envctl_run = Some(run);
            } else {
                let mut command = Command::new("sh");
                crate::clean_env(&mut command);
                command.args(["-c", &reference_script]);
                let run = measure::run(&mut command, &out, "diff-reference");
                run.expect_success("pg_dump and diff -u");
                reference_walls.push(run.wall.as_secs_f64());
            }
        }
    }
    let text = envctl_run.unwrap().stdout_text();
    let summary = text.lines().last().unwrap_or_default().to_owned();
    assert_eq!(summary, "Diff: 1 added, 0 removed, 3 changed.", "{text}");
    server.drop_all_databases();
    let envctl = Stats::of(&envctl_walls);
    let reference = Stats::of(&reference_walls);
    let ratio = envctl.median / reference.median;
    let met = ratio <= 1.0;
    format!(
        "## 6. Schema diff\n\n\
         `envctl diff --branch feature/x --against main` (local provider) of two databases of\n\
         {TABLES} tables × {COLUMNS_PER_TABLE} columns, {INDEXES_PER_TABLE} indexes per table besides its primary key and\n\
         {FUNCTIONS} functions (catalog counts in `app`, tables, columns, indexes, functions: {shape}), the branch's\n\
         with a column and a table added, an index dropped and a function changed; beside\n\
         `pg_dump --schema-only` of both databases at once, then `diff -u` of the dumps. {repeat} runs\n\
         each, alternately: median (min–max). envctl's output ends `{summary}`.\n\
         Target: ≤ 1.0× the reference.\n\n\
         | envctl diff | pg_dump × 2 + diff -u | ratio | target |\n\
         |---|---|---|---|\n\
         | {} | {} | {ratio:.2}× | {} |\n\n\
         Item 6: {}.\n",
        envctl.seconds(),
        reference.seconds(),
        verdict(met),
        if met {
            "target met"
        } else {
            "**target missed**"
        }
    )
}

/// A migration with lint findings: an index built without CONCURRENTLY, a NOT NULL column
/// without a default, a foreign key validated at once (two findings).
fn linted_migration(k: usize) -> String {
    format!(
        "-- Step {k}: a table, then changes to an older one.\n\
         CREATE TABLE app.s{k} (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12, 2));\n\
         CREATE INDEX s{k}_name_idx ON app.s{prev} (name);\n\
         ALTER TABLE app.s{prev} ADD COLUMN note_{k} text NOT NULL;\n\
         ALTER TABLE app.s{prev} ADD CONSTRAINT s{prev}_fk_{k} FOREIGN KEY (id) REFERENCES app.s{k} (id);\n\
         CREATE FUNCTION app.g{k}(a integer) RETURNS integer LANGUAGE plpgsql AS $f$\n\
         BEGIN\n  RETURN a + {k}; -- a ; in a body\nEND\n$f$;\n",
        prev = k.saturating_sub(1).max(1)
    )
}

fn lint_repository(ctx: &Ctx, name: &str, migrations: usize) -> PathBuf {
    let repo = ctx.dir(name);
    write(&repo, "environments/bench.yaml", SPEC);
    write(
        &repo,
        "schemas/migrations/0001_schema.sql",
        "CREATE SCHEMA app;\n",
    );
    for k in 2..=migrations + 1 {
        write(
            &repo,
            &format!("schemas/migrations/{k:04}_step.sql"),
            &linted_migration(k),
        );
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "migrations"]);
    git(&repo, &["branch", "feature/x"]);
    repo
}

/// Item 7.
pub fn run_lint(ctx: &Ctx) -> String {
    let repeat = ctx.repeat(20);
    let out = ctx.out();
    ctx.server().drop_all_databases();
    let linted = lint_repository(ctx, "lint-200", LINTED);
    let bare = lint_repository(ctx, "lint-0", 0);
    let plan = |repo: &Path, label: &str| {
        let run = measure::run(
            envctl_in(ctx, repo, "bench/lint").args(["plan", "--branch", "feature/x", "--json"]),
            &out,
            label,
        );
        run.expect_success("envctl plan");
        run
    };
    // The plan runs them all, and carries their findings.
    let first = plan(&linted, "lint-plan-200");
    let json: serde_json::Value = serde_json::from_str(&first.stdout_text()).unwrap();
    let findings = json["actions"][1]["lint"].as_array().map_or(0, Vec::len);
    assert_eq!(findings, LINTED * 4, "four findings a migration");
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..repeat {
        if round % 5 == 0 {
            eprintln!("item 7: round {}/{repeat}", round + 1);
        }
        let mut order = [true, false];
        if round % 2 == 1 {
            order.reverse();
        }
        for linted_first in order {
            if linted_first {
                with.push(plan(&linted, "lint-plan-200").wall.as_secs_f64());
            } else {
                without.push(plan(&bare, "lint-plan-0").wall.as_secs_f64());
            }
        }
    }
    let with = Stats::of(&with);
    let without = Stats::of(&without);
    let added = with.median - without.median;
    let met = added <= 0.050;
    format!(
        "## 7. Migration lint\n\n\
         `envctl plan --branch feature/x --json` (local provider, no environment yet, so the plan\n\
         creates one and runs every migration) of a repository with {LINTED} migrations of DDL, each with\n\
         four lint findings ({findings} in the plan), beside the same plan with no migrations. {repeat} runs\n\
         each, alternately: median (min–max). The difference is what reading, checking, linting and\n\
         planning {LINTED} migrations adds to `plan`, so it bounds what lint adds. Target: ≤ 50 ms.\n\n\
         | plan, {LINTED} migrations | plan, none | added | target |\n\
         |---|---|---|---|\n\
         | {} | {} | {} | {} |\n\n\
         Item 7: {}.\n",
        with.seconds(),
        without.seconds(),
        secs(added),
        verdict(met),
        if met {
            "target met"
        } else {
            "**target missed**"
        }
    )
}
