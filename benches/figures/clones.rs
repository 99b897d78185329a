//! Items 8 and 9, data branches (issue 17).
//!
//! 8. `clone`: on the local provider, `envctl apply` of a data branch whose source holds about
//!    1 GiB made with `generate_series` (`--clone-mib`), masking one column of its 1M-row table
//!    (the row count scales with the size). Twice: with nobody connected to the source, beside
//!    `createdb -T` of the same database (the floor); and while one session holds a connection
//!    to it (PostgreSQL then refuses a template, so envctl dumps and restores), beside
//!    `createdb` plus `pg_dump --format=custom --compress=0 | pg_restore`, the pipeline envctl
//!    runs. Targets: ≤ 1.5× the floor; ≤ 1.1× the dump and restore. envctl's progress lines,
//!    timestamped as they arrive, split its time into the copy, the masking and the rest.
//! 9. `clone-calls`: against the AWS peer, the API calls of an apply that clones: one branch
//!    alone, then five at once (`--all`), by action, mutating and reading. Target: 4 mutating
//!    calls per clone, the waits batched by the one poller.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::measure::{self, Stats, secs, verdict};
use crate::observe::aws_env;
use crate::support::peer::Peer;
use crate::{Ctx, Server, clean_env, git};

const REPO: &str = "bench/clones";
const BRANCH: &str = "feature/x";
/// Rows of the masked table at 1 GiB (issue 17's figure); fewer in a smaller source.
const USERS_AT_1_GIB: u64 = 1_000_000;

fn write(repo: &Path, path: &str, text: &str) {
    let path = repo.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const MAIN_SPEC: &str = "version: 1\nname: main\nbranches: [main]\ncluster:\n  engine: aurora-postgresql\n  express: true\n  scaling: { minAcu: 0.5, maxAcu: 8 }\ndatabase:\n  name: postgres\n  user: postgres\n";

const PREVIEW_SPEC: &str = "version: 1\nname: preview\nbranches: [\"feature/*\"]\ncluster:\n  engine: aurora-postgresql\n  express: true\n  scaling: { minAcu: 0, maxAcu: 4 }\ndatabase:\n  name: postgres\n  user: postgres\n  from:\n    branch: main\n    mask:\n      app.users.email: email\n";

/// A table of personal data (the masked one, its address unique) and a bulk table that makes up
/// the rest of the size.
const SCHEMA: &str = "CREATE SCHEMA app;
CREATE TABLE app.users (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    full_name text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE app.events (
    id bigint PRIMARY KEY,
    user_id bigint NOT NULL,
    at timestamptz NOT NULL,
    payload text NOT NULL
);
";

/// The repository: `main` with the schema, `feature/x`…`feature/x5` data branches of it, each
/// with a migration of its own on top (it runs after the masking, and its progress line ends
/// the masking's share of the time).
fn repository(ctx: &Ctx, name: &str, branches: &[String]) -> PathBuf {
    let repo = ctx.dir(name);
    write(&repo, "environments/main.yaml", MAIN_SPEC);
    write(&repo, "environments/preview.yaml", PREVIEW_SPEC);
    write(&repo, "schemas/migrations/0001_app.sql", SCHEMA);
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "schema"]);
    git(&repo, &["checkout", "-q", "-b", "work"]);
    write(
        &repo,
        "schemas/migrations/0002_note.sql",
        "ALTER TABLE app.users ADD COLUMN note text;\n",
    );
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "the branch's own migration"]);
    for branch in branches {
        git(&repo, &["branch", branch]);
    }
    git(&repo, &["checkout", "-q", "main"]);
    repo
}

fn cluster_id(branch: &str) -> String {
    envctl::model::ClusterId::derive(
        &envctl::model::Prefix::default(),
        &envctl::model::RepoName::parse(REPO).unwrap(),
        branch,
    )
    .to_string()
}

/// A program of the server's binaries (the ones envctl runs), else from PATH.
fn program(name: &str) -> String {
    envctl::provider::local_server::binary_dir()
        .map(|dir| dir.join(name))
        .filter(|path| path.is_file())
        .map_or_else(|| name.to_owned(), |path| path.display().to_string())
}

/// Runs SQL on one database of the server; psql's `-At` output, trimmed.
fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-Atqc", sql])
        .output()
        .expect("psql runs (install postgresql-client)");
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Fills `main`'s database: `users` rows in `app.users`, then `app.events` until the database
/// holds `bytes`. Its size and the two tables' row counts.
fn fill(url: &str, users: u64, bytes: u64) -> (u64, u64) {
    psql(
        url,
        &format!(
            "INSERT INTO app.users SELECT g, 'person' || g || '@example.com', 'Person ' || g, \
             timestamptz '2020-01-01' + g * interval '1 minute' FROM generate_series(1, {users}) g"
        ),
    );
    let size = || -> u64 {
        psql(url, "SELECT pg_database_size(current_database())")
            .parse()
            .unwrap()
    };
    // About 280 bytes an event with its index: chunks of a tenth of the rest.
    let chunk = (bytes.saturating_sub(size()) / 280 / 10).max(10_000);
    let mut events = 0u64;
    while size() < bytes {
        eprintln!(
            "item 8: filling the source, {} of {} MiB",
            size() >> 20,
            bytes >> 20
        );
        psql(
            url,
            &format!(
                "INSERT INTO app.events SELECT g, 1 + g % {users}, timestamptz '2020-01-01' + g * interval '1 second', \
                 repeat(md5(g::text), 6) FROM generate_series({}, {}) g",
                events + 1,
                events + chunk
            ),
        );
        events += chunk;
    }
    psql(url, "VACUUM ANALYZE");
    (size(), events)
}

/// A session that holds a connection to a database until dropped.
struct Holder(Child);

impl Holder {
    fn start(server: &Server, database: &str) -> Holder {
        let mut command = Command::new("psql");
        clean_env(&mut command);
        let child = command
            .arg(server.url_of(database))
            .args(["-Atqc", "SELECT pg_sleep(86400)"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql runs");
        let holder = Holder(child);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while holder.sessions(server, database) == 0 {
            assert!(std::time::Instant::now() < until, "psql did not connect");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        holder
    }

    fn sessions(&self, server: &Server, database: &str) -> usize {
        server
            .sql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND backend_type = 'client backend'"
            ))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One envctl apply of the data branch: its wall time and its parts from the progress lines.
struct Apply {
    wall: f64,
    copy: f64,
    mask: f64,
}

/// When the first line containing `needle` arrived.
fn line_at(lines: &[(f64, String)], needle: &str) -> f64 {
    lines
        .iter()
        .find(|(_, line)| line.contains(needle))
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("no progress line with `{needle}` in {lines:?}"))
}

fn apply_clone(ctx: &Ctx, repo: &Path, label: &str) -> Apply {
    let mut command = ctx.envctl();
    command
        .env("ENVCTL_LOCAL_URL", &ctx.server().url)
        .arg("-C")
        .arg(repo)
        .args(["--repo", REPO, "apply", "--yes", "--branch", BRANCH]);
    let (run, lines) = measure::run_with_lines(&mut command, &ctx.out(), label);
    run.expect_success("envctl apply of the data branch");
    let report = run.stdout_text() + &run.stderr_text();
    assert!(
        report.contains("masked; migrated 0002_note"),
        "copied, masked and migrated: {report}"
    );
    // Progress lines read `<time> <branch>: <step>` (the plan before them names the masking too).
    let step = |text: &str| line_at(&lines, &format!(" {BRANCH}: {text}"));
    let copying = step("copying ");
    let ready = step("waiting until ready");
    let masking = step("masking");
    let migrating = step("migrating 0002_note");
    Apply {
        wall: run.wall.as_secs_f64(),
        copy: ready - copying,
        mask: migrating - masking,
    }
}

/// The copy is whole and masked: every row, no address of the source's.
fn check_masked(server: &Server, users: u64) {
    let url = server.url_of(&cluster_id(BRANCH));
    let counts = psql(
        &url,
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE email LIKE '%@example.com') FROM app.users",
    );
    assert_eq!(
        counts,
        format!("{users} 0"),
        "the copy's users, and unmasked ones"
    );
}

fn drop_database(server: &Server, name: &str) {
    server.sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
}

/// A reference: a shell script timed as one process, after SQL on the server (untimed).
struct Reference {
    setup: Option<String>,
    script: String,
}

fn reference(ctx: &Ctx, reference: &Reference, label: &str) -> f64 {
    if let Some(setup) = &reference.setup {
        ctx.server().sql(setup);
    }
    let mut command = Command::new("bash");
    clean_env(&mut command);
    command.args(["-c", &format!("set -euo pipefail; {}", reference.script)]);
    let run = measure::run(&mut command, &ctx.out(), label);
    run.expect_success(label);
    run.wall.as_secs_f64()
}

struct Sample {
    envctl: Vec<Apply>,
    /// Per reference, its walls.
    references: Vec<Vec<f64>>,
}

/// `repeat` rounds, alternately: envctl's apply, then the references (envctl last every second
/// round); the copies dropped and a checkpoint before every run.
fn sample(
    ctx: &Ctx,
    repo: &Path,
    users: u64,
    repeat: usize,
    what: &str,
    references: &[Reference],
) -> Sample {
    let server = ctx.server();
    let mut sample = Sample {
        envctl: Vec::new(),
        references: vec![Vec::new(); references.len()],
    };
    for round in 0..repeat {
        eprintln!("item 8: {what}, round {}/{repeat}", round + 1);
        let mut order: Vec<Option<usize>> = std::iter::once(None)
            .chain((0..references.len()).map(Some))
            .collect();
        if round % 2 == 1 {
            order.rotate_left(1);
        }
        for run in order {
            server.sql("CHECKPOINT");
            match run {
                None => {
                    sample.envctl.push(apply_clone(ctx, repo, "clone-envctl"));
                    check_masked(server, users);
                    drop_database(server, &cluster_id(BRANCH));
                }
                Some(i) => {
                    let wall = reference(ctx, &references[i], "clone-reference");
                    sample.references[i].push(wall);
                    drop_database(server, "reference_copy");
                }
            }
        }
    }
    sample
}

fn row(what: &str, sample: &Sample, target: f64) -> (String, bool) {
    let walls: Vec<f64> = sample.envctl.iter().map(|a| a.wall).collect();
    let envctl = Stats::of(&walls);
    let copy = Stats::of(&sample.envctl.iter().map(|a| a.copy).collect::<Vec<_>>());
    let mask = Stats::of(&sample.envctl.iter().map(|a| a.mask).collect::<Vec<_>>());
    let rest = Stats::of(
        &sample
            .envctl
            .iter()
            .map(|a| a.wall - a.copy - a.mask)
            .collect::<Vec<_>>(),
    );
    let reference = Stats::of(&sample.references[0]);
    let ratio = envctl.median / reference.median;
    let met = ratio <= target;
    (
        format!(
            "| {what} | {} | {} | {} | {} | {} | {ratio:.2}× | ≤ {target}× | {} |",
            envctl.seconds(),
            secs(copy.median),
            secs(mask.median),
            secs(rest.median),
            reference.seconds(),
            verdict(met)
        ),
        met,
    )
}

/// The statement envctl's masking runs for the branch's rule.
fn mask_statement() -> String {
    let rule = envctl::model::MaskRule {
        column: envctl::model::ColumnPath::parse("app.users.email").unwrap(),
        strategy: envctl::model::MaskStrategy::Email,
    };
    let statements = envctl::sql::mask::statements(&[rule]);
    assert_eq!(statements.len(), 1);
    statements[0].1.clone()
}

/// Item 8.
pub fn run_local(ctx: &Ctx) -> String {
    let repeat = ctx.repeat(3);
    let mib = ctx.options.clone_mib;
    let bytes = mib << 20;
    let users = (USERS_AT_1_GIB * mib / 1024).max(1_000);
    let server = ctx.server();
    server.drop_all_databases();
    let repo = repository(ctx, "clone-repo", &[BRANCH.to_owned()]);
    let main = cluster_id("main");
    let apply_main = measure::run(
        ctx.envctl()
            .env("ENVCTL_LOCAL_URL", &server.url)
            .arg("-C")
            .arg(&repo)
            .args(["--repo", REPO, "apply", "--yes", "--branch", "main"]),
        &ctx.out(),
        "clone-main",
    );
    apply_main.expect_success("envctl apply of main");
    eprintln!("item 8: filling the source with {mib} MiB");
    let (size, events) = fill(&server.url_of(&main), users, bytes);
    let source = server.url_of(&main);
    let target = server.url_of("reference_copy");
    let createdb = format!("{} --maintenance-db='{}'", program("createdb"), server.url);
    let floor = Reference {
        setup: None,
        script: format!("{createdb} --template='{main}' reference_copy"),
    };
    // STRATEGY came with PostgreSQL 15; before it, every template copy copied files.
    let version = server.sql("SHOW server_version").trim().to_owned();
    let has_strategy: bool = server
        .sql("SELECT current_setting('server_version_num')::int >= 150000")
        .trim()
        == "t";
    let (strategy_flag, strategy) = if has_strategy {
        (" --strategy=file_copy", " STRATEGY FILE_COPY")
    } else {
        ("", "")
    };
    let file_copy = Reference {
        setup: None,
        script: format!("{createdb} --template='{main}'{strategy_flag} reference_copy"),
    };
    let mask_file = ctx.dir("clone-sql").join("mask.sql");
    // The statement reads this masking's key (a transaction-local setting, as envctl sets it).
    std::fs::write(
        &mask_file,
        format!(
            "SELECT set_config('{}', md5(random()::text), true);\n{};\n",
            envctl::sql::mask::MASK_KEY_SETTING,
            mask_statement()
        ),
    )
    .unwrap();
    let update = Reference {
        setup: Some(format!(
            "CREATE DATABASE reference_copy TEMPLATE \"{main}\"{strategy}"
        )),
        script: format!(
            "psql '{target}' -v ON_ERROR_STOP=1 -q --single-transaction --file='{}'",
            mask_file.display()
        ),
    };
    let idle = sample(
        ctx,
        &repo,
        users,
        repeat,
        "nobody connected",
        &[floor, file_copy, update],
    );
    let dump = Reference {
        setup: None,
        script: format!(
            "{createdb} --template=template0 --encoding=UTF8 reference_copy && \
             {} --format=custom --compress=0 --dbname='{source}' | {} --exit-on-error --dbname='{target}'",
            program("pg_dump"),
            program("pg_restore"),
        ),
    };
    let holder = Holder::start(server, &main);
    let busy = sample(ctx, &repo, users, repeat, "a session connected", &[dump]);
    assert_eq!(holder.sessions(server, &main), 1, "the session held on");
    drop(holder);
    server.drop_all_databases();
    let (idle_row, idle_met) = row("nobody connected · `createdb -T`", &idle, 1.5);
    let (busy_row, busy_met) = row("a session connected · dump and restore", &busy, 1.1);
    let file_copy = Stats::of(&idle.references[1]);
    let update = Stats::of(&idle.references[2]);
    format!(
        "## 8. Data branch copy (local provider)\n\n\
         `envctl apply --branch {BRANCH}` (local provider) of a data branch of `main`, whose database\n\
         holds {} ({} MiB asked: `--clone-mib`; PostgreSQL {version}) made with `generate_series`: `app.users`, {users} rows\n\
         (a unique index on `email`), and `app.events`, {events} rows; the branch masks\n\
         `app.users.email` (`email`) and has one migration of its own (`ALTER TABLE … ADD COLUMN`),\n\
         run after the masking. A plain table like this one is masked by rewriting it (`ALTER TABLE\n\
         … ALTER COLUMN email TYPE text USING <mask>`: each row written once, into a new file) on a\n\
         template copy, and as it is copied (`COPY (SELECT <masked>)` into the restored table) by a\n\
         dump and restore. Beside it, alternately: with nobody\n\
         connected to the source, `createdb -T` of the same database (the floor); while one session\n\
         holds a connection to it (PostgreSQL refuses a template then: envctl dumps and restores),\n\
         `createdb` then `pg_dump --format=custom --compress=0 | pg_restore --exit-on-error`, the\n\
         pipeline envctl runs (in two parts, around the masked table's rows), with the server's own\n\
         programs. {repeat} runs each: median\n\
         (min–max). envctl's parts (medians), from its progress lines timestamped as they arrived: the\n\
         copy (`copying` to `waiting until ready`), the masking (`masking` to the migration: the\n\
         masking transaction, the connection and lock for the migration) and the rest\n\
         (start-up, plan, the migration, tags). Each copy is checked whole and masked after its run.\n\n\
         | source · reference | envctl | copy | masking | rest | reference | ratio | target | |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         {idle_row}\n\
         {busy_row}\n\n\
         Measured beside them in the same rounds, with nobody connected: `createdb -T\n\
         --strategy=file_copy` (what envctl runs for a source of {} MiB or more on PostgreSQL 15 and\n\
         later) {}; psql running the same masking as one `UPDATE` (what envctl runs for a table it\n\
         cannot rewrite) in a transaction on a fresh copy (`{}`) {}.\n\n\
         Item 8: {}.\n",
        human_size(size),
        mib,
        envctl::provider::copy::FILE_COPY_FROM >> 20,
        file_copy.seconds(),
        mask_statement(),
        update.seconds(),
        if idle_met && busy_met {
            "all targets met"
        } else {
            "**a target missed** (see the rows)"
        }
    )
}

fn human_size(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The clusters a call names (filters, an identifier or a resource ARN).
fn ids_of(call: &Value) -> Vec<String> {
    let params = &call["params"];
    if let Some(filters) = params["Filters"].as_array() {
        return filters
            .iter()
            .flat_map(|f| f["Values"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
    }
    for key in ["DBClusterIdentifier", "ResourceName"] {
        if let Some(id) = params[key].as_str() {
            return vec![id.rsplit(':').next().unwrap().to_owned()];
        }
    }
    Vec::new()
}

fn is_read(action: &str) -> bool {
    ["Describe", "List", "Get"]
        .iter()
        .any(|prefix| action.starts_with(prefix))
}

/// Calls by action, answered 200, in the order of the action's first call.
fn by_action(calls: &[Value]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for call in calls.iter().filter(|c| c["status"] == 200) {
        let action = call["action"].as_str().unwrap_or_default();
        match out.iter_mut().find(|(a, _)| a == action) {
            Some((_, n)) => *n += 1,
            None => out.push((action.to_owned(), 1)),
        }
    }
    out
}

fn aws_apply(ctx: &Ctx, peer: &Peer, repo: &Path, args: &[&str], label: &str) -> f64 {
    let mut command = ctx.envctl();
    aws_env(&mut command, peer);
    command
        .env("ENVCTL_DATA_PLANE_OVERRIDE", &ctx.server().url)
        .env("ENVCTL_AWS_POLL_INTERVAL", "250ms")
        .arg("-C")
        .arg(repo)
        .args(["--repo", REPO, "--provider", "aws", "apply", "--yes"])
        .args(args);
    let run = measure::run(&mut command, &ctx.out(), label);
    run.expect_success(label);
    run.wall.as_secs_f64()
}

/// What the peer's log says about one apply that clones `clones`.
struct Calls {
    wall: f64,
    /// Per clone, its mutating calls.
    mutating: Vec<usize>,
    /// Mutating calls naming no clone.
    others: Vec<String>,
    /// The poller's `DescribeDBClusters`: those naming a clone still waiting (before the last
    /// `DescribeDBInstances` of it, which only the poller makes, for clusters past `creating`).
    polls: Vec<f64>,
    /// Of those, naming more than one cluster; and the most named at once.
    batched: usize,
    widest: usize,
    /// Every read, and the reads that are not polls.
    reads: usize,
    /// Reads other than polls, by action.
    other_reads: Vec<(String, usize)>,
}

fn summarize(calls: &[Value], clones: &[String], wall: f64) -> Calls {
    let ok: Vec<&Value> = calls.iter().filter(|c| c["status"] == 200).collect();
    let action = |c: &Value| c["action"].as_str().unwrap_or_default().to_owned();
    let time = |c: &Value| c["time"].as_f64().unwrap_or(0.0);
    let mut waited: std::collections::BTreeMap<String, f64> = Default::default();
    for call in ok.iter().filter(|c| action(c) == "DescribeDBInstances") {
        for id in ids_of(call) {
            let at = waited.entry(id).or_insert(0.0);
            *at = at.max(time(call));
        }
    }
    let is_poll = |c: &Value| {
        action(c) == "DescribeDBClusters"
            && ids_of(c)
                .iter()
                .any(|id| waited.get(id).is_some_and(|&end| time(c) <= end))
    };
    let polls: Vec<&Value> = ok.iter().copied().filter(|c| is_poll(c)).collect();
    let mut other_reads = by_action(
        &ok.iter()
            .filter(|c| is_read(&action(c)) && !is_poll(c))
            .map(|c| (*c).clone())
            .collect::<Vec<_>>(),
    );
    other_reads.sort();
    Calls {
        wall,
        mutating: clones
            .iter()
            .map(|id| {
                ok.iter()
                    .filter(|c| !is_read(&action(c)) && ids_of(c).contains(id))
                    .count()
            })
            .collect(),
        others: ok
            .iter()
            .filter(|c| !is_read(&action(c)) && !ids_of(c).iter().any(|id| clones.contains(id)))
            .map(|c| format!("`{}` on `{}`", action(c), ids_of(c).join(",")))
            .collect(),
        batched: polls.iter().filter(|c| ids_of(c).len() > 1).count(),
        widest: polls.iter().map(|c| ids_of(c).len()).max().unwrap_or(0),
        polls: polls.iter().map(|c| time(c)).collect(),
        reads: ok.iter().filter(|c| is_read(&action(c))).count(),
        other_reads,
    }
}

impl Calls {
    fn row(&self, what: &str) -> String {
        let gaps: Vec<f64> = self.polls.windows(2).map(|w| w[1] - w[0]).collect();
        let window = self.polls.last().unwrap_or(&0.0) - self.polls.first().unwrap_or(&0.0);
        let others: Vec<String> = self
            .other_reads
            .iter()
            .map(|(action, n)| format!("{n} `{action}`"))
            .collect();
        format!(
            "| {what} | {} | {} | {} | {} ({} naming several, up to {}) over {} | {} | {} | {} |",
            secs(self.wall),
            self.mutating
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if self.others.is_empty() {
                "none".to_owned()
            } else {
                self.others.join(", ")
            },
            self.polls.len(),
            self.batched,
            self.widest,
            secs(window),
            if gaps.is_empty() {
                "–".to_owned()
            } else {
                secs(Stats::of(&gaps).median)
            },
            self.reads,
            others.join(", "),
        )
    }
}

/// Item 9.
pub fn run_calls(ctx: &Ctx) -> String {
    let server = ctx.server();
    server.drop_all_databases();
    let many: Vec<String> = (1..=5).map(|i| format!("feature/x{i}")).collect();
    let mut branches = vec![BRANCH.to_owned()];
    branches.extend(many.iter().cloned());
    let repo = repository(ctx, "clone-calls-repo", &branches);
    eprintln!("item 9: starting the AWS peer");
    // Creates and modifies take a while, as on AWS (where they take minutes), so every wait
    // polls more than once.
    let peer = Peer::start(&["--create-delay", "1", "--modify-delay", "1"]);
    aws_apply(ctx, &peer, &repo, &["--branch", "main"], "calls-main");
    psql(
        &server.url_of(&cluster_id("main")),
        "INSERT INTO app.users VALUES (1, 'ada@example.com', 'Ada', now()), (2, 'alan@example.com', 'Alan', now())",
    );

    // One clone, then five at once.
    peer.reset_calls();
    let wall = aws_apply(ctx, &peer, &repo, &["--branch", BRANCH], "calls-one");
    let one_calls = peer.calls();
    let one = summarize(&one_calls, &[cluster_id(BRANCH)], wall);
    peer.reset_calls();
    let wall = aws_apply(
        ctx,
        &peer,
        &repo,
        &["--all", "--concurrency", "5"],
        "calls-many",
    );
    let ids: Vec<String> = many.iter().map(|b| cluster_id(b)).collect();
    let five = summarize(&peer.calls(), &ids, wall);
    drop(peer);
    server.drop_all_databases();

    let id = cluster_id(BRANCH);
    let sequence: Vec<String> = one_calls
        .iter()
        .filter(|c| c["status"] == 200)
        .filter_map(|c| c["action"].as_str())
        .filter(|a| !is_read(a))
        .map(|a| format!("`{a}`"))
        .collect();
    let by_action_rows: Vec<String> = by_action(&one_calls)
        .into_iter()
        .map(|(action, n)| {
            let kind = if is_read(&action) { "read" } else { "mutating" };
            let naming = one_calls
                .iter()
                .filter(|c| c["status"] == 200 && c["action"] == action.as_str())
                .filter(|c| ids_of(c).contains(&id))
                .count();
            format!("| `{action}` | {kind} | {n} | {naming} |")
        })
        .collect();
    let most = one
        .mutating
        .iter()
        .chain(&five.mutating)
        .max()
        .copied()
        .unwrap_or(0);
    let met = most <= 4;
    format!(
        "## 9. Data branch calls (AWS peer)\n\n\
         `envctl apply` of data branches of `main` (one masking rule, a migration of their own)\n\
         against the AWS peer, whose creates and modifies take 1 s; poll interval 250 ms; data\n\
         planes on a private PostgreSQL server (`ENVCTL_DATA_PLANE_OVERRIDE`). From the peer's call\n\
         log (calls answered 200): one branch alone (`--branch {BRANCH}`), then five at once\n\
         (`--all --concurrency 5`). Mutating calls are counted per clone (those naming it); polls\n\
         are the `DescribeDBClusters` naming a clone while it waits (up to the last\n\
         `DescribeDBInstances` of it, which only the poller makes), over the span from the first\n\
         to the last. Target: 4 mutating calls per clone, the waits batched by the one poller.\n\n\
         | apply | wall | mutating calls per clone | mutating, naming no clone | polls | poll gap (median) | reads | reads besides polls |\n\
         |---|---|---|---|---|---|---|---|\n\
         {}\n\
         {}\n\n\
         One clone's mutating calls in order: {}. Its calls by action:\n\n\
         | action | kind | calls | naming the clone |\n\
         |---|---|---|---|\n\
         {}\n\n\
         | mutating calls per clone | target | |\n\
         |---|---|---|\n\
         | {most} (most in either apply) | 4 | {} |\n\n\
         Item 9: {}.\n",
        one.row("one clone"),
        five.row("five at once"),
        sequence.join(", "),
        by_action_rows.join("\n"),
        verdict(met),
        if met {
            "target met"
        } else {
            "**target missed**"
        }
    )
}
