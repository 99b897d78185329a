//! Item 4, migrations: `envctl apply --all --yes --concurrency 4` of 20 branches on the local
//! provider, each a new database with 30 migrations (tables, columns, indexes — two of them
//! `CREATE INDEX CONCURRENTLY` outside a transaction —, views, functions, triggers) and 3 seeds
//! (single-row inserts, one multi-row insert, a generated one). Beside it, `psql` doing the same
//! with the same parallelism: 4 workers, each taking the next database, `CREATE DATABASE`, then
//! one `psql -f` session applying the same files, each migration and seed in its own
//! transaction (`BEGIN; \i file; COMMIT;`) as envctl runs them, the no-transaction ones bare.
//! envctl does more (a temporary name and a rename, tags, the ledger with each file's checksum
//! and text, an advisory lock); the target says how much that may cost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::measure::{self, Stats, verdict};
use crate::{Ctx, clean_env, git};

const DATABASES: usize = 20;
const MIGRATIONS: usize = 30;
const PARALLEL: usize = 4;
const REPO: &str = "bench/migrations";

/// Whether migration `k` runs outside a transaction.
fn no_transaction(k: usize) -> bool {
    k == 15 || k == 25
}

fn migration(k: usize) -> String {
    match k {
        1 => "CREATE SCHEMA app;\n".to_owned(),
        2..=11 => {
            let t = k - 1;
            format!(
                "-- Table {t}.\nCREATE TABLE app.t{t} (\n    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    name text NOT NULL,\n    created_at timestamptz NOT NULL DEFAULT now(),\n    amount numeric(12, 2),\n    data jsonb NOT NULL DEFAULT '{{}}'::jsonb\n);\nCOMMENT ON TABLE app.t{t} IS 'table {t}; it has a ; in its comment';\n"
            )
        }
        15 | 25 => {
            let t = if k == 15 { 1 } else { 2 };
            format!(
                "-- envctl:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t{t}_created_idx ON app.t{t} (created_at);\n"
            )
        }
        12..=21 => {
            let t = k - 11;
            format!(
                "ALTER TABLE app.t{t} ADD COLUMN note_{k} text;\nCREATE INDEX t{t}_name_{k}_idx ON app.t{t} (name);\nCREATE VIEW app.v{k} AS SELECT id, name, note_{k} FROM app.t{t} WHERE amount > 0;\n"
            )
        }
        _ => {
            let t = k - 21;
            format!(
                "CREATE FUNCTION app.touch_{k}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n    NEW.data := NEW.data || jsonb_build_object('touched', {k}); -- a ; inside the body\n    RETURN NEW;\nEND;\n$$;\nCREATE TRIGGER touch_{k} BEFORE INSERT ON app.t{t}\n    FOR EACH ROW EXECUTE FUNCTION app.touch_{k}();\nCREATE TABLE app.child_{k} (\n    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    parent bigint NOT NULL REFERENCES app.t{t} (id) ON DELETE CASCADE,\n    label text\n);\n"
            )
        }
    }
}

fn seeds() -> Vec<(&'static str, String)> {
    let mut reference = String::from("-- Reference rows, one statement each.\n");
    for i in 1..=200 {
        reference.push_str(&format!(
            "INSERT INTO app.t{} (name, amount) VALUES ('row {i}', {i}.50);\n",
            i % 5 + 1
        ));
    }
    let mut bulk =
        String::from("-- One multi-row insert.\nINSERT INTO app.t6 (name, amount, data) VALUES\n");
    let values: Vec<String> = (1..=2000)
        .map(|i| format!("    ('bulk {i}', {i}, '{{\"n\": {i}}}')"))
        .collect();
    bulk.push_str(&values.join(",\n"));
    bulk.push_str(";\n");
    let generated = "-- Generated on the server.\nINSERT INTO app.t7 (name, amount)\n    SELECT 'gen ' || g, g FROM generate_series(1, 10000) AS g;\n".to_owned();
    vec![
        ("01_reference.sql", reference),
        ("02_bulk.sql", bulk),
        ("03_generated.sql", generated),
    ]
}

fn migration_name(k: usize) -> String {
    format!("{k:04}_step_{k}.sql")
}

/// The repository: one spec for `feature/*`, the migrations and seeds, 20 branches.
fn make_repository(ctx: &Ctx) -> PathBuf {
    let repo = ctx.dir("migrations-repo");
    let write = |path: &str, text: &str| {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let seed_list: Vec<String> = seeds()
        .iter()
        .map(|(name, _)| format!("schemas/seeds/{name}"))
        .collect();
    write(
        "environments/bench.yaml",
        &format!(
            "version: 1\nname: bench\nbranches: [\"feature/*\"]\ncluster:\n  engine: aurora-postgresql\n  express: true\n  scaling: {{ minAcu: 0, maxAcu: 4 }}\ndatabase:\n  schemaVersion: latest\n  seeds: [{}]\n",
            seed_list.join(", ")
        ),
    );
    for k in 1..=MIGRATIONS {
        write(
            &format!("schemas/migrations/{}", migration_name(k)),
            &migration(k),
        );
    }
    for (name, text) in seeds() {
        write(&format!("schemas/seeds/{name}"), &text);
    }
    git(&repo, &["init", "-q", "-b", "trunk"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "30 migrations and 3 seeds"]);
    for i in 1..=DATABASES {
        git(&repo, &["branch", &format!("feature/m{i:02}")]);
    }
    repo
}

/// The psql script for one database: each file in its own transaction, as envctl runs it.
fn psql_script(repo: &Path) -> String {
    let mut script = String::new();
    for k in 1..=MIGRATIONS {
        let path = repo.join("schemas/migrations").join(migration_name(k));
        if no_transaction(k) {
            script.push_str(&format!("\\i {}\n", path.display()));
        } else {
            script.push_str(&format!("BEGIN;\n\\i {}\nCOMMIT;\n", path.display()));
        }
    }
    for (name, _) in seeds() {
        let path = repo.join("schemas/seeds").join(name);
        script.push_str(&format!("BEGIN;\n\\i {}\nCOMMIT;\n", path.display()));
    }
    script
}

fn psql(url: &str, args: &[&str]) {
    let mut command = Command::new("psql");
    clean_env(&mut command);
    let output = command
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn run(ctx: &Ctx) -> String {
    let repeat = ctx.repeat(3);
    let out = ctx.out();
    let server = ctx.server();
    let repo = make_repository(ctx);
    let script = ctx.dir("migrations-psql").join("apply.sql");
    std::fs::write(&script, psql_script(&repo)).unwrap();
    let script = script.to_str().unwrap().to_owned();
    let mut envctl_walls = Vec::new();
    let mut psql_walls = Vec::new();
    for round in 0..repeat {
        eprintln!("item 4: round {}/{repeat}", round + 1);
        let mut order = [true, false];
        if round % 2 == 1 {
            order.reverse();
        }
        for is_envctl in order {
            server.drop_all_databases();
            if is_envctl {
                let mut command = ctx.envctl();
                command
                    .env("ENVCTL_LOCAL_URL", &server.url)
                    .arg("-C")
                    .arg(&repo)
                    .args(["--repo", REPO, "apply", "--all", "--yes"])
                    .args(["--concurrency", &PARALLEL.to_string()]);
                let run = measure::run(&mut command, &out, "migrations-envctl");
                run.expect_success("envctl apply --all");
                envctl_walls.push(run.wall.as_secs_f64());
            } else {
                let next = AtomicUsize::new(0);
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for _ in 0..PARALLEL {
                        scope.spawn(|| {
                            loop {
                                let i = next.fetch_add(1, Ordering::SeqCst);
                                if i >= DATABASES {
                                    break;
                                }
                                let name = format!("psql_{i:02}");
                                psql(&server.url, &["-c", &format!("CREATE DATABASE {name}")]);
                                psql(&server.url_of(&name), &["-f", &script]);
                            }
                        });
                    }
                });
                psql_walls.push(start.elapsed().as_secs_f64());
                crate::check_interrupted();
            }
            // Both made the same 20 databases with the same rows.
            let counts = server.sql(
                "SELECT count(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')",
            );
            assert_eq!(counts.trim(), DATABASES.to_string(), "20 databases");
        }
    }
    server.drop_all_databases();
    let envctl = Stats::of(&envctl_walls);
    let reference = Stats::of(&psql_walls);
    let ratio = envctl.median / reference.median;
    let met = ratio <= 1.2;
    format!(
        "## 4. Migrations\n\n\
         {DATABASES} new databases × {MIGRATIONS} migrations (2 of them `CREATE INDEX CONCURRENTLY` outside a\n\
         transaction) + 3 seeds (200 single-row inserts, one 2 000-row insert, a 10 000-row\n\
         `generate_series`) on the local provider: `envctl apply --all --yes --concurrency {PARALLEL}`\n\
         (one process) beside {PARALLEL} workers running `psql` (`CREATE DATABASE`, then one session\n\
         applying the same files, each in its own transaction). {repeat} runs each, alternately:\n\
         median (min–max). Target: ≤ 1.2× psql.\n\n\
         | envctl | psql | ratio | target |\n\
         |---|---|---|---|\n\
         | {} | {} | {ratio:.2}× | {} |\n\n\
         Item 4: {}.\n",
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
