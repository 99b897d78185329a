//! Data branches on the local provider, through the `envctl` binary against a real PostgreSQL:
//! a feature branch's database starts as a masked copy of `main`'s, carries its ledger, runs only
//! the migrations beyond it, is re-copied by a reset, and is never handed out unmasked.

mod support;

use nix::sys::signal::Signal;
use predicates::prelude::*;
use support::process::{psql_in_background, signal_when_said};
use support::{TestRepo, admin_sql, set_metadata, tags_of};

/// A table of personal data, on top of the example's migrations.
const USERS_MIGRATION: &str = "CREATE SCHEMA app;
CREATE TABLE app.users (
    id integer PRIMARY KEY,
    email text NOT NULL UNIQUE,
    full_name text,
    phone text,
    visits integer NOT NULL DEFAULT 0
);
CREATE TABLE app.orders (id integer PRIMARY KEY, email text NOT NULL);
";

/// The preview spec as a data branch of `main`, masking the users' personal data.
const PREVIEW_FROM_MAIN: &str = "database:
  name: postgres
  user: postgres
  from:
    branch: main
    mask:
      app.users.email: hash
      app.orders.email: hash
      app.users.full_name: name
      app.users.phone: null
    maskSql: [schemas/mask/visits.sql]
";

/// A masking file that is not idempotent on its own: it shows masking ran exactly once.
const VISITS_MASK: &str = "UPDATE app.users SET visits = visits + 1000;\n";

/// `main` applied with the users table and two real-looking rows; the preview spec copies it.
fn repo_with_main(name: &str) -> TestRepo {
    repo_with_main_as(name, "postgres")
}

/// [`repo_with_main`] with `user` as every spec's `database.user` (a copy carries its
/// source's).
fn repo_with_main_as(name: &str, user: &str) -> TestRepo {
    let repo = TestRepo::new(name);
    if user != "postgres" {
        repo.replace_in(
            "environments/main.yaml",
            "database:\n",
            &format!("database:\n  user: {user}\n"),
        );
        repo.replace_in(
            "environments/preview.yaml",
            "  user: postgres\n",
            &format!("  user: {user}\n"),
        );
    }
    repo.write("schemas/migrations/0004_users.sql", USERS_MIGRATION);
    repo.write("schemas/mask/visits.sql", VISITS_MASK);
    repo.replace_in(
        "environments/preview.yaml",
        &format!("database:\n  name: postgres\n  user: {user}\n"),
        &PREVIEW_FROM_MAIN.replace("user: postgres", &format!("user: {user}")),
    );
    repo.commit("users, and previews copy main's data");
    repo.apply("main");
    repo.sql(
        "main",
        "INSERT INTO app.users VALUES
           (1, 'ada@example.com', 'Ada Real', '+44 1234', 1),
           (2, 'alan@example.com', 'Alan Real', '+44 5678', 2);
         INSERT INTO app.orders VALUES (10, 'ada@example.com')",
    );
    repo
}

#[test]
fn a_branch_starts_as_a_masked_copy_and_runs_only_its_own_migrations() {
    let repo = repo_with_main("data-clone");
    repo.git(&["checkout", "-q", "-b", "feature/report"]);
    repo.write(
        "schemas/migrations/0005_report.sql",
        "ALTER TABLE app.users ADD COLUMN last_report date;\n",
    );
    repo.commit("the branch's own migration");
    let main_id = repo.cluster_id("main").to_string();

    let plan = repo.plan_json("feature/report");
    let kinds: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["clone", "migrate"], "{plan}");
    assert_eq!(plan["summary"]["clone"], 1);
    assert_eq!(plan["summary"]["create"], 0);
    let clone = &plan["actions"][0];
    assert_eq!(clone["source"]["branch"], "main");
    assert_eq!(clone["source"]["cluster_id"], main_id.as_str());
    assert_eq!(
        clone["source"]["mask"],
        serde_json::json!([
            "app.orders.email: hash",
            "app.users.email: hash",
            "app.users.full_name: name",
            "app.users.phone: null"
        ])
    );
    assert_eq!(
        clone["source"]["mask_sql"],
        serde_json::json!(["schemas/mask/visits.sql"])
    );
    // Only the branch's migration runs on the copy: main's ledger came with it.
    assert_eq!(plan["actions"][1]["from"], 4);
    assert_eq!(plan["actions"][1]["to"], 5);
    // The seed ran on main with the same checksum: the copy has it.
    repo.envctl()
        .args(["plan", "--branch", "feature/report"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("+ clone    feature/report"))
        .stdout(predicate::str::contains(format!(
            "a data branch: a copy of `main`'s environment ({main_id}), masking app.orders.email: hash"
        )))
        .stdout(predicate::str::contains("then running schemas/mask/visits.sql"))
        .stdout(predicate::str::contains("4 → 5: 0005_report"))
        .stdout(predicate::str::contains("1 to clone"));

    repo.envctl()
        .args(["apply", "--branch", "feature/report"])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "copied {main_id}; masked; migrated 0005_report"
        )));
    // Masked: no real address, name or phone; hashes stable, so the join still matches.
    let users = repo.sql(
        "feature/report",
        "SELECT string_agg(concat_ws('|', id, email, full_name, coalesce(phone, 'NULL'), visits), ';' ORDER BY id) FROM app.users",
    );
    assert!(!users.contains("example.com"), "{users}");
    assert!(!users.contains("Real"), "{users}");
    assert!(!users.contains("+44"), "{users}");
    assert!(users.contains("|NULL|1001;"), "visits masked once: {users}");
    assert!(users.ends_with("|NULL|1002"), "{users}");
    let joined = repo.sql(
        "feature/report",
        "SELECT count(*) FROM app.orders o JOIN app.users u ON u.email = o.email WHERE u.id = 1",
    );
    assert_eq!(joined, "1", "hash keeps joins on masked columns");
    // Keyed: hashing a guess does not find it (an unkeyed md5 would: a customer's address could
    // be tested, a short value brute-forced), and no key is left in the copy.
    let guessed = repo.sql(
        "feature/report",
        "SELECT count(*) FROM app.users WHERE email = md5('ada@example.com') OR email = md5('alan@example.com')",
    );
    assert_eq!(
        guessed, "0",
        "a masked value is not the plain md5 of the real one"
    );
    assert_eq!(
        repo.sql(
            "feature/report",
            "SELECT coalesce(current_setting('envctl.mask_key', true), '')"
        ),
        ""
    );
    // The ledger is main's plus the branch's own; the seed did not run again.
    assert_eq!(repo.applied_versions("feature/report"), "1,2,3,4,5");
    assert_eq!(repo.dummy_rows("feature/report"), "3");
    // Nobody was connected to main (envctl's plan had read its ledger and let go): a template
    // copy, whose relations keep the source's oids (a dump and restore makes new ones).
    let oid = "SELECT 'app.users'::regclass::oid";
    assert_eq!(repo.sql("feature/report", oid), repo.sql("main", oid));
    // Its files too, but for the masked tables: rewritten (a new file, each row written once),
    // not updated (a new version of each row beside the old one).
    let (main_file, _) = file_and_ctid(&repo, "main", "envctl.migrations");
    assert_eq!(
        file_and_ctid(&repo, "feature/report", "envctl.migrations").0,
        main_file
    );
    let (main_file, _) = file_and_ctid(&repo, "main", "app.orders");
    let (copy_file, ctid) = file_and_ctid(&repo, "feature/report", "app.orders");
    assert_ne!(copy_file, main_file, "app.orders was rewritten");
    assert_eq!(ctid, "(0,1)", "app.orders was not updated");
    // main is untouched: its data unmasked, no migration 5.
    assert_eq!(repo.applied_versions("main"), "1,2,3,4");
    assert_eq!(
        repo.sql("main", "SELECT email FROM app.users WHERE id = 1"),
        "ada@example.com"
    );

    // Rows added to main later do not appear in the copy.
    repo.sql(
        "main",
        "INSERT INTO app.users VALUES (3, 'grace@example.com', 'Grace', NULL, 0)",
    );
    assert_eq!(
        repo.sql("feature/report", "SELECT count(*) FROM app.users"),
        "2"
    );

    // status says where it came from; the tags say masking is done.
    let status = repo.status();
    let feature = status["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["branch"] == "feature/report")
        .unwrap()
        .clone();
    assert_eq!(feature["source"], main_id.as_str());
    assert_eq!(feature["masked"], "done");
    repo.envctl()
        .args(["status"])
        .assert()
        .success()
        .stdout(predicate::str::contains("SOURCE"))
        .stdout(predicate::str::contains(main_id.as_str()));

    // Converged: nothing more to do, and the masking did not run again.
    repo.envctl()
        .args(["plan", "--branch", "feature/report", "--detailed-exitcode"])
        .assert()
        .code(0);
    repo.apply("feature/report");
    assert_eq!(
        repo.sql(
            "feature/report",
            "SELECT visits FROM app.users WHERE id = 1"
        ),
        "1001"
    );

    // Deleting the copy leaves its source; destroying would need main's own protection off.
    repo.envctl()
        .args(["destroy", "--branch", "feature/report", "--yes"])
        .assert()
        .success();
    assert_eq!(repo.applied_versions("main"), "1,2,3,4");
}

/// A session on `branch`'s database (connected when this returns) until the child is killed:
/// `CREATE DATABASE … TEMPLATE` refuses a source with one, a dump and restore does not.
fn hold_a_session(repo: &TestRepo, branch: &str) -> std::process::Child {
    let holder = psql_in_background(&repo.url(branch), "SELECT pg_sleep(60)");
    let db = repo.cluster_id(branch).to_string();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while admin_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"
    ))
    .trim()
        == "0"
    {
        assert!(std::time::Instant::now() < until, "psql did not connect");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    holder
}

/// `apply --branch <branch>` while a session holds main's database (a dump and restore, then).
fn apply_while_main_is_held(repo: &TestRepo, branch: &str) -> std::process::Output {
    let mut holder = hold_a_session(repo, "main");
    let applied = repo
        .envctl()
        .args(["apply", "--branch", branch])
        .output()
        .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    applied
}

fn assert_applied(applied: &std::process::Output) {
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

/// `apply --branch <branch>` fails saying each of `said` (and none of `unsaid`), and the copy is
/// handed out to nobody (`url` refuses it: masking has not committed).
fn refused_and_handed_out_nothing(repo: &TestRepo, branch: &str, said: &[&str], unsaid: &[&str]) {
    let applied = repo
        .envctl()
        .args(["apply", "--branch", branch])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(!applied.status.success(), "{stderr}");
    for text in said {
        assert!(stderr.contains(text), "`{text}` in {stderr}");
    }
    for text in unsaid {
        assert!(!stderr.contains(text), "no `{text}` in {stderr}");
    }
    repo.envctl()
        .args(["url", "--branch", branch])
        .assert()
        .failure()
        .stderr(predicate::str::contains("masking has not committed"));
}

/// `relation`'s file, and where its first row is (`ctid`) in `branch`'s database: an `UPDATE`
/// of a freshly written one-page table leaves the new version at `(0,2)`; a rewrite, or rows
/// written once, at `(0,1)`.
fn file_and_ctid(repo: &TestRepo, branch: &str, relation: &str) -> (String, String) {
    let file = repo.sql(
        branch,
        &format!("SELECT pg_relation_filenode('{relation}')"),
    );
    let ctid = repo.sql(branch, &format!("SELECT min(ctid)::text FROM {relation}"));
    (file, ctid)
}

#[test]
fn a_source_with_open_sessions_is_still_copied_without_waiting_on_a_template() {
    let repo = repo_with_main("data-busy");
    repo.git(&["checkout", "-q", "-b", "feature/busy"]);
    // A session on main for the whole apply: CREATE DATABASE … TEMPLATE refuses, the dump and
    // restore does not.
    let mut holder = hold_a_session(&repo, "main");
    let main_db = repo.cluster_id("main").to_string();
    // Watching the server while it applies: a template tried first would wait 5 seconds for
    // the session to leave before PostgreSQL refused it.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (done, main_db) = (done.clone(), main_db.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                seen += admin_sql(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE DATABASE %TEMPLATE \"{main_db}\"%'"
                ))
                .trim()
                .parse::<usize>()
                .unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            seen
        })
    };
    let applied = repo
        .envctl()
        .args(["apply", "--branch", "feature/busy"])
        .output()
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let templates_tried = watcher.join().unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_applied(&applied);
    assert_eq!(
        templates_tried, 0,
        "a busy source is dumped without trying a template first"
    );
    // A dump and restore: the relations have oids of their own.
    let oid = "SELECT 'app.users'::regclass::oid";
    assert_ne!(repo.sql("feature/busy", oid), repo.sql("main", oid));
    assert_eq!(
        repo.sql("feature/busy", "SELECT count(*) FROM app.users"),
        "2"
    );
    assert_eq!(repo.applied_versions("feature/busy"), "1,2,3,4");
    let email = repo.sql("feature/busy", "SELECT email FROM app.users WHERE id = 1");
    assert!(!email.contains("example.com"), "{email}");
    // Masked as it was copied: both tables' rows came through a masking query, written once
    // (inserted, never updated), and masking skipped their rules.
    assert_eq!(
        repo.sql(
            "feature/busy",
            "SELECT string_agg(statement, ' ' ORDER BY statement) FROM envctl.masked_in_copy"
        ),
        format!(
            "{} {}",
            r#"UPDATE "app"."orders" SET "email" = CASE WHEN "email" IS NULL THEN NULL ELSE md5(current_setting('envctl.mask_key') || "email"::text) END"#,
            r#"UPDATE "app"."users" SET "email" = CASE WHEN "email" IS NULL THEN NULL ELSE md5(current_setting('envctl.mask_key') || "email"::text) END, "full_name" = CASE WHEN "full_name" IS NULL THEN NULL ELSE (ARRAY['Ada', 'Alan', 'Barbara', 'Claude', 'Dorothy', 'Edsger', 'Frances', 'Grace', 'Hedy', 'John', 'Katherine', 'Linus', 'Margaret', 'Niklaus', 'Radia', 'Tim'])[1 + ((('x' || substr(md5(current_setting('envctl.mask_key') || 'first:' || "full_name"::text), 1, 8))::bit(32)::bigint) % 16::bigint)] || ' ' || (ARRAY['Allen', 'Babbage', 'Codd', 'Dijkstra', 'Engelbart', 'Floyd', 'Gray', 'Hopper', 'Knuth', 'Lamport', 'Liskov', 'Lovelace', 'Perlman', 'Ritchie', 'Shannon', 'Turing'])[1 + ((('x' || substr(md5(current_setting('envctl.mask_key') || 'last:' || "full_name"::text), 1, 8))::bit(32)::bigint) % 16::bigint)] END, "phone" = NULL"#
        )
    );
    assert_eq!(
        file_and_ctid(&repo, "feature/busy", "app.orders").1,
        "(0,1)"
    );
    let users = repo.sql(
        "feature/busy",
        "SELECT string_agg(concat_ws('|', id, full_name, coalesce(phone, 'NULL'), visits), ';' ORDER BY id) FROM app.users",
    );
    assert!(!users.contains("Real") && !users.contains("+44"), "{users}");
    assert!(
        users.contains("|NULL|1001;"),
        "the masking file ran once: {users}"
    );
    assert_eq!(
        repo.sql(
            "feature/busy",
            "SELECT count(*) FROM app.orders o JOIN app.users u ON u.email = o.email WHERE u.id = 1"
        ),
        "1",
        "one key for every rule: joins on masked columns match"
    );
    // The objects keep their owners, as a template copy would.
    assert_eq!(
        repo.sql(
            "feature/busy",
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'app' AND tablename = 'users'"
        ),
        "postgres"
    );
}

/// On a server that skips the write-ahead log for a table made or emptied in the same
/// transaction (envctl's private server runs `wal_level = minimal`), a busy source's copy is
/// restored in one transaction and each masked table is emptied before its rows go in: the rows
/// of a 1 GiB copy are not written twice.
#[test]
fn a_busy_copy_is_restored_in_one_transaction_where_that_skips_the_log() {
    assert_eq!(
        admin_sql("SHOW wal_level").trim(),
        "minimal",
        "the private server's setting, given when it starts: a test server an older envctl \
         started is still running; stop it (`pg_ctl stop -D $TMPDIR/envctl-test-postgres/data`)"
    );
    let repo = repo_with_main("data-one-transaction");
    repo.sql(
        "main",
        "CREATE TABLE app.notes (id integer, body text);
         INSERT INTO app.notes SELECT g, 'note ' || g FROM generate_series(1, 100) g",
    );
    repo.git(&["checkout", "-q", "-b", "feature/one"]);
    assert_applied(&apply_while_main_is_held(&repo, "feature/one"));
    assert_eq!(
        repo.sql("feature/one", "SELECT count(*) FROM app.notes"),
        "100"
    );
    // Every unmasked table's rows came in one transaction: the restore's.
    assert_eq!(
        repo.sql(
            "feature/one",
            "SELECT count(DISTINCT xmin::text) || ' ' || count(*) FROM (
               SELECT xmin FROM app.notes UNION ALL SELECT xmin FROM envctl.migrations) rows"
        ),
        "1 104"
    );
    // Each masked table was emptied (a new file) in the transaction its masked rows came in.
    for table in ["app.users", "app.orders"] {
        assert_eq!(
            repo.sql(
                "feature/one",
                &format!("SELECT relfilenode <> oid FROM pg_class WHERE oid = '{table}'::regclass")
            ),
            "t",
            "{table}"
        );
    }
    assert_eq!(
        repo.sql("feature/one", "SELECT count(*) FROM envctl.masked_in_copy"),
        "2"
    );
    let email = repo.sql("feature/one", "SELECT email FROM app.users WHERE id = 1");
    assert!(!email.contains("example.com"), "{email}");
}

/// Operators and a function a user of the source could make in `public` for argument types
/// PostgreSQL has none of its own for exactly (an `oid` beside a `regclass`, an integer or a
/// `bigint`; a `bigint` modulo an integer; `quote_ident` of a `name`): an exact match wins over
/// `pg_catalog`'s, whatever the path's order, and each raises, naming who called it.
const HIJACKING_OPERATORS: &str = r#"DO $do$
DECLARE pair text[]; op text; n int := 0;
BEGIN
  FOREACH pair SLICE 1 IN ARRAY ARRAY[['oid','regclass'],['regclass','oid'],['oid','integer'],
      ['integer','oid'],['oid','bigint'],['bigint','oid'],['bigint','integer']] LOOP
    FOREACH op IN ARRAY ARRAY['=','<>','>=','>','<','<='] LOOP
      n := n + 1;
      EXECUTE format('CREATE FUNCTION public.hijack_%s(%s, %s) RETURNS boolean LANGUAGE plpgsql
        AS $f$ BEGIN RAISE EXCEPTION ''hijacked by %%'', current_user; END $f$', n, pair[1], pair[2]);
      EXECUTE format('CREATE OPERATOR public.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = public.hijack_%s)',
        op, pair[1], pair[2], n);
    END LOOP;
  END LOOP;
  CREATE FUNCTION public.hijack_mod(bigint, integer) RETURNS bigint LANGUAGE plpgsql
    AS $f$ BEGIN RAISE EXCEPTION 'hijacked by %', current_user; END $f$;
  CREATE OPERATOR public.% (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = public.hijack_mod);
  CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql
    AS $f$ BEGIN RAISE EXCEPTION 'hijacked by %', current_user; END $f$;
END $do$"#;

#[test]
fn operators_a_source_user_made_never_run_in_envctl_s_own_statements() {
    // envctl's sessions on a source and a copy run as the admin (a superuser on the local
    // provider), with the database's path after `pg_catalog`: its own statements must not
    // resolve to an operator a user of the source made. Every way a copy is made and masked:
    // a template copy rewritten, a busy copy masked as it is copied, and a busy copy of a
    // table with a trigger, masked by UPDATE.
    let repo = repo_with_main("data-hijack");
    repo.sql(
        "main",
        "CREATE TABLE app.audit (order_id integer);
         CREATE FUNCTION app.audit_order() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO app.audit VALUES (NEW.id); RETURN NEW; END $$;",
    );
    repo.sql("main", HIJACKING_OPERATORS);
    assert!(
        repo.sql(
            "main",
            "SELECT count(*) FROM pg_operator WHERE oprnamespace = 'public'::regnamespace"
        )
        .parse::<u32>()
        .unwrap()
            > 40
    );
    for (branch, busy) in [("feature/template", false), ("feature/busy", true)] {
        repo.git(&["checkout", "-q", "-b", branch]);
        let applied = if busy {
            apply_while_main_is_held(&repo, branch)
        } else {
            repo.envctl()
                .args(["apply", "--branch", branch])
                .output()
                .unwrap()
        };
        assert_applied(&applied);
        let email = repo.sql(branch, "SELECT email FROM app.users WHERE id = 1");
        assert!(!email.contains("example.com"), "{email}");
        repo.git(&["checkout", "-q", "main"]);
    }
    repo.sql(
        "main",
        "CREATE TRIGGER audit BEFORE UPDATE ON app.orders
           FOR EACH ROW EXECUTE FUNCTION app.audit_order()",
    );
    repo.git(&["checkout", "-q", "-b", "feature/updated"]);
    assert_applied(&apply_while_main_is_held(&repo, "feature/updated"));
    assert_eq!(
        repo.sql("feature/updated", "SELECT count(*) FROM app.audit"),
        "1"
    );
}

#[test]
fn a_restore_that_fails_early_on_a_large_dump_fails_the_apply_in_time_saying_why() {
    // pg_restore stops at the first table whose check calls a function by the path (a restore
    // runs with an empty one), while pg_dump still has megabytes of the next table to write:
    // with no reader left, pg_dump must see its pipe break, not block on it for ever.
    let repo = repo_with_main("data-restore-fails");
    repo.sql(
        "main",
        "SET search_path = app, public;
         CREATE FUNCTION app.helper() RETURNS integer LANGUAGE sql AS 'SELECT 0';
         CREATE FUNCTION app.positive(x integer) RETURNS boolean LANGUAGE sql AS 'SELECT x > helper()';
         CREATE TABLE app.a_check (x integer CHECK (app.positive(x)));
         INSERT INTO app.a_check VALUES (1);
         CREATE TABLE app.z_big (id integer, body text);
         INSERT INTO app.z_big SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g",
    );
    repo.git(&["checkout", "-q", "-b", "feature/fails"]);
    let mut holder = hold_a_session(&repo, "main");
    let mut apply = repo
        .process(&["apply", "--branch", "feature/fails"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = apply.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = apply.kill();
            let _ = holder.kill();
            panic!("apply still waits 120 s after it began");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = holder.kill();
    let _ = holder.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut apply.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("pg_restore failed") && stderr.contains("helper() does not exist"),
        "{stderr}"
    );
}

/// The temporary database a copy of `id` is made under, when it exists: its comment (`None`
/// untagged) and whether its connection limit is envctl's creating marker.
fn temporary_of(id: &str) -> Option<(Option<serde_json::Value>, bool)> {
    let row = admin_sql(&format!(
        "SELECT coalesce(shobj_description(oid, 'pg_database'), '-') || '|' || (datconnlimit = 7177)::text \
         FROM pg_database WHERE datname = '{id}-creating'"
    ));
    let row = row.trim();
    let (comment, marked) = row.rsplit_once('|')?;
    let comment = (comment != "-").then(|| serde_json::from_str(comment).unwrap());
    Some((comment, marked == "true"))
}

/// Kills `apply --branch <branch>` while its copy's `pg_dump` waits on a lock a session holds
/// on main's users table.
fn cut_off_a_copy(repo: &TestRepo, branch: &str) {
    let main = repo.cluster_id("main").to_string();
    let mut holder = psql_in_background(
        &repo.url("main"),
        "BEGIN; LOCK TABLE app.users; SELECT pg_sleep(60)",
    );
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while admin_sql(&format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE d.datname = '{main}' AND l.mode = 'AccessExclusiveLock' AND l.granted \
         AND l.locktype = 'relation'"
    ))
    .trim()
        == "0"
    {
        assert!(
            std::time::Instant::now() < until,
            "the lock was never taken"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut apply = repo
        .process(&["apply", "--branch", branch])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while admin_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' \
         AND wait_event_type = 'Lock' AND datname = '{main}'"
    ))
    .trim()
        == "0"
    {
        assert!(std::time::Instant::now() < until, "pg_dump never waited");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    apply.kill().unwrap();
    apply.wait().unwrap();
    // Its pg_dump goes with it, not waiting on for the lock (--wait-timeout, 15 minutes).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while admin_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = '{main}'"
    ))
    .trim()
        != "0"
    {
        assert!(
            std::time::Instant::now() < until,
            "pg_dump outlived the envctl that ran it"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = holder.kill();
    let _ = holder.wait();
    // Its backend would sleep on, holding the lock, until it next writes to the client.
    admin_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK TABLE app.users;%'",
    );
}

#[test]
fn a_copy_cut_off_or_failed_leaves_nothing_prune_cannot_find() {
    let repo = repo_with_main("data-cut-off");
    repo.git(&["checkout", "-q", "-b", "feature/cut"]);
    repo.git(&["checkout", "-q", "main"]);
    let id = repo.cluster_id("feature/cut").to_string();
    cut_off_a_copy(&repo, "feature/cut");
    // Killed mid-copy, what it left says whose it is.
    let (comment, _) = temporary_of(&id).expect("the copy's temporary database");
    let comment = comment.expect("tagged before its rows came");
    assert_eq!(comment["tags"]["envctl:branch"], "feature/cut", "{comment}");
    // status says so; destroy deletes it.
    repo.envctl()
        .arg("status")
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "`{id}-creating` is not an environment but what an apply of `feature/cut` left when it was cut off"
        )));
    // Asked first, like any destroy: without a terminal, --yes.
    repo.envctl()
        .args(["destroy", "--branch", "feature/cut"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "there is no terminal to confirm it",
        ));
    assert!(temporary_of(&id).is_some(), "deleted without consent");
    repo.envctl()
        .args(["destroy", "--branch", "feature/cut", "--yes"])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!("deleted `{id}-creating`")));
    assert_eq!(temporary_of(&id), None, "destroy left the copy cut off");

    // Once the branch is gone and the leftover old, prune deletes it.
    cut_off_a_copy(&repo, "feature/cut");
    repo.git(&["branch", "-q", "-D", "feature/cut"]);
    set_metadata(
        &format!("{id}-creating"),
        "{created_at}",
        "\"2026-01-01T00:00:00Z\"",
    );
    repo.envctl()
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .args(["prune", "--yes"])
        .assert()
        .success();
    assert_eq!(temporary_of(&id), None, "prune left the copy cut off");

    // A copy that fails (pg_restore stops at a check calling a function by the path) drops
    // what it made at once.
    repo.sql(
        "main",
        "SET search_path = app, public;
         CREATE FUNCTION app.helper() RETURNS integer LANGUAGE sql AS 'SELECT 0';
         CREATE FUNCTION app.positive(x integer) RETURNS boolean LANGUAGE sql AS 'SELECT x > helper()';
         CREATE TABLE app.a_check (x integer CHECK (app.positive(x)));
         INSERT INTO app.a_check VALUES (1)",
    );
    repo.git(&["checkout", "-q", "-b", "feature/fails"]);
    let failed = apply_while_main_is_held(&repo, "feature/fails");
    assert!(!failed.status.success());
    let id = repo.cluster_id("feature/fails").to_string();
    assert_eq!(temporary_of(&id), None, "the failed copy was left");
}

#[test]
fn a_busy_copy_too_big_for_one_transaction_s_locks_is_restored_statement_by_statement() {
    // 32 000 operators with a comment each: no kind envctl counts before choosing one
    // transaction, and locks in it past the lock table of a server of 200 connections. On a
    // server of its own: a transaction filling the lock table fails other sessions' locks
    // meanwhile, which would fail other tests.
    let server = support::OwnServer::start("envctl-locks-");
    let url = server.url.clone();
    let repo = TestRepo::new("data-locks");
    repo.write("schemas/migrations/0004_users.sql", USERS_MIGRATION);
    repo.write("schemas/mask/visits.sql", VISITS_MASK);
    repo.replace_in(
        "environments/preview.yaml",
        "database:\n  name: postgres\n  user: postgres\n",
        PREVIEW_FROM_MAIN,
    );
    repo.commit("users, and previews copy main's data");
    let own = |args: &[&str]| {
        let mut cmd = repo.process(args);
        cmd.env("ENVCTL_LOCAL_URL", &url);
        cmd.output().unwrap()
    };
    assert_applied(&own(&["apply", "--branch", "main"]));
    let main_url = String::from_utf8(own(&["url", "--branch", "main"]).stdout).unwrap();
    support::psql_at(
        main_url.trim(),
        "INSERT INTO app.users VALUES (1, 'ada@example.com', 'Ada Real', '+44 1234', 1);
         CREATE FUNCTION app.same(integer, integer) RETURNS boolean LANGUAGE sql AS 'SELECT $1 = $2'",
    );
    // In batches: one transaction cannot make them all, for the same reason.
    for batch in 0..4 {
        support::psql_at(
            main_url.trim(),
            &format!(
                "DO $$ DECLARE name text; BEGIN FOR i IN {}..{} LOOP
                   name := 'app.===' || translate(i::text, '0123456789', '<>=~!@#%^&');
                   EXECUTE format('CREATE OPERATOR %s (LEFTARG = integer, RIGHTARG = integer, FUNCTION = app.same)', name);
                   EXECUTE format('COMMENT ON OPERATOR %s (integer, integer) IS %L', name, 'an operator');
                 END LOOP; END $$",
                batch * 8000 + 1,
                batch * 8000 + 8000
            ),
        );
    }
    assert_eq!(
        support::psql_at(
            main_url.trim(),
            "SELECT count(*) FROM pg_operator WHERE oprnamespace = 'app'::regnamespace"
        )
        .trim(),
        "32000"
    );
    repo.git(&["checkout", "-q", "-b", "feature/locks"]);
    let holder = support::process::psql_in_background(main_url.trim(), "SELECT pg_sleep(120)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _holder = Kill(holder);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while support::psql_at(
        main_url.trim(),
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(120)'",
    )
    .trim()
        == "0"
    {
        assert!(std::time::Instant::now() < until, "psql did not connect");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_applied(&own(&["apply", "--branch", "feature/locks"]));
    let branch_url = String::from_utf8(own(&["url", "--branch", "feature/locks"]).stdout).unwrap();
    assert_eq!(
        support::psql_at(
            branch_url.trim(),
            "SELECT (SELECT count(*) FROM pg_operator WHERE oprnamespace = 'app'::regnamespace)
                 || ' ' || (SELECT email LIKE '%example.com' FROM app.users WHERE id = 1)"
        )
        .trim(),
        "32000 false"
    );
}

#[test]
fn a_diverged_history_resets_by_copying_again() {
    let repo = repo_with_main("data-reset");
    repo.git(&["checkout", "-q", "-b", "feature/edit"]);
    repo.write(
        "schemas/migrations/0005_own.sql",
        "CREATE TABLE app.own (id integer);\n",
    );
    repo.commit("own migration");
    repo.apply("feature/edit");
    repo.sql("feature/edit", "INSERT INTO app.own VALUES (7)");

    // The branch edits its own migration: the copy's history diverged; a reset copies main again.
    repo.write(
        "schemas/migrations/0005_own.sql",
        "CREATE TABLE app.own (id bigint);\n",
    );
    repo.commit("edit own migration");
    let plan = repo.plan_json("feature/edit");
    assert_eq!(plan["actions"][0]["type"], "reset", "{plan}");
    assert_eq!(
        plan["actions"][0]["reclone"]["cluster_id"],
        repo.cluster_id("main").to_string().as_str()
    );
    assert_eq!(plan["actions"][1]["type"], "migrate");
    assert_eq!(plan["actions"][1]["from"], 4);
    repo.envctl()
        .args(["plan", "--branch", "feature/edit"])
        .assert()
        .stdout(predicate::str::contains("copies `main`'s environment"))
        .stdout(predicate::str::contains(
            "+CREATE TABLE app.own (id bigint);",
        ));

    // `--no-reset` blocks it, as any reset.
    repo.envctl()
        .args(["plan", "--branch", "feature/edit", "--no-reset"])
        .assert()
        .stdout(predicate::str::contains(
            "a reset is needed but `--no-reset` was given",
        ));

    repo.envctl()
        .args(["apply", "--branch", "feature/edit", "--yes"])
        .assert()
        .success()
        .stderr(predicate::str::contains("copied"))
        .stderr(predicate::str::contains("again"));
    assert_eq!(
        repo.sql(
            "feature/edit",
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'own'"
        ),
        "bigint"
    );
    assert_eq!(
        repo.sql("feature/edit", "SELECT count(*) FROM app.own"),
        "0"
    );
    assert_eq!(
        repo.sql("feature/edit", "SELECT visits FROM app.users WHERE id = 1"),
        "1001",
        "masked once on the new copy"
    );

    // main edits a migration it applied and is reset (it is not protected here): the branch,
    // merging main, has the edited file, and its copy the old one: copied again.
    repo.git(&["checkout", "-q", "main"]);
    repo.replace_in("environments/main.yaml", "protect: true", "protect: false");
    repo.write(
        "schemas/migrations/0004_users.sql",
        &format!("{USERS_MIGRATION}COMMENT ON TABLE app.users IS 'people';\n"),
    );
    repo.commit("main edits 0004");
    repo.envctl()
        .args(["apply", "--branch", "main", "--yes"])
        .assert()
        .success();
    repo.sql(
        "main",
        "INSERT INTO app.users VALUES (5, 'edsger@example.com', 'Edsger', NULL, 0)",
    );
    repo.git(&["checkout", "-q", "feature/edit"]);
    repo.git(&["merge", "-q", "--no-edit", "main"]);
    let plan = repo.plan_json("feature/edit");
    assert_eq!(plan["actions"][0]["type"], "reset", "{plan}");
    assert!(
        plan["actions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("0004")
    );
    repo.envctl()
        .args(["apply", "--branch", "feature/edit", "--yes"])
        .assert()
        .success();
    assert_eq!(
        repo.sql(
            "feature/edit",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM app.users"
        ),
        "5"
    );
}

#[test]
fn an_interrupted_masking_hands_out_nothing_and_the_next_apply_masks_once() {
    let repo = repo_with_main("data-kill");
    // Masking that takes long enough to be killed in.
    repo.write(
        "schemas/mask/visits.sql",
        &format!("{VISITS_MASK}SELECT pg_sleep(30);\n"),
    );
    repo.git(&["checkout", "-q", "-b", "feature/kill"]);
    repo.commit("slow masking");
    let id = repo.cluster_id("feature/kill").to_string();
    let (_, status) = signal_when_said(
        &repo,
        &["apply", "--branch", "feature/kill"],
        "feature/kill: masking",
        Signal::SIGKILL,
    );
    assert!(!status.success());

    // The copy exists, tagged pending, and nobody gets a connection to it.
    assert_eq!(tags_of(&id)["envctl:masked"], "pending");
    for args in [
        vec!["url", "--branch", "feature/kill"],
        vec!["exec", "--branch", "feature/kill", "--", "true"],
        vec!["exec", "--proxy", "--branch", "feature/kill", "--", "true"],
        vec!["proxy", "--branch", "feature/kill"],
    ] {
        repo.envctl()
            .args(&args)
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .failure()
            .stderr(predicate::str::contains("masking has not committed"));
    }
    // A proxy of every environment leaves it out, and says so.
    let proxy = support::proxy::ProxyProcess::start(repo.process(&["proxy", "--all", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&proxy.line).unwrap();
    let branches: Vec<&str> = listed["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["branch"].as_str().unwrap())
        .collect();
    assert!(branches.contains(&"main"), "{branches:?}");
    assert!(!branches.contains(&"feature/kill"), "{branches:?}");
    proxy.wait_for_stderr(
        "not serving `feature/kill`",
        std::time::Duration::from_secs(30),
    );
    drop(proxy);
    // status says so; plan says masking is to do.
    repo.envctl()
        .args(["status"])
        .assert()
        .stdout(predicate::str::contains("(masking pending)"));
    repo.envctl()
        .args(["plan", "--branch", "feature/kill"])
        .assert()
        .stdout(predicate::str::contains(
            "masking pending → done (its masking has not committed: it masks again, and until then `url`, `exec`, `token` and `proxy` refuse it)",
        ));

    repo.write("schemas/mask/visits.sql", VISITS_MASK);
    repo.commit("fast masking");
    repo.envctl()
        .args(["apply", "--branch", "feature/kill"])
        .assert()
        .success()
        .stderr(predicate::str::contains("masked"));
    assert_eq!(
        repo.sql("feature/kill", "SELECT visits FROM app.users WHERE id = 1"),
        "1001"
    );

    // Killed after masking committed, before the tag said so: the record says it is done.
    assert_eq!(tags_of(&id)["envctl:masked"], "done");
    set_metadata(&id, "{tags,envctl:masked}", "\"pending\"");
    repo.envctl()
        .args(["apply", "--branch", "feature/kill"])
        .assert()
        .success()
        .stderr(predicate::str::contains("masking found committed"));
    assert_eq!(
        repo.sql("feature/kill", "SELECT visits FROM app.users WHERE id = 1"),
        "1001"
    );
}

#[test]
fn sources_that_cannot_be_copied_block_their_branch_only() {
    let repo = TestRepo::new("data-blocked");
    repo.replace_in(
        "environments/preview.yaml",
        "database:\n  name: postgres\n  user: postgres\n",
        "database:\n  name: postgres\n  user: postgres\n  from:\n    branch: main\n",
    );
    repo.commit("previews copy main");
    // main has no environment yet.
    repo.git(&["checkout", "-q", "-b", "feature/a"]);
    repo.envctl()
        .args(["plan", "--branch", "feature/a"])
        .assert()
        .stdout(predicate::str::contains(
            "cannot copy its source: branch `main` has no environment to copy (apply it first)",
        ));
    // An external source that does not exist.
    repo.replace_in(
        "environments/preview.yaml",
        "    branch: main\n",
        "    cluster: no-such-database\n",
    );
    repo.envctl()
        .args(["plan", "--branch", "feature/a"])
        .assert()
        .stdout(predicate::str::contains(
            "cannot copy its source: cluster `no-such-database` does not exist",
        ));
}

#[test]
fn an_external_source_is_only_read() {
    let repo = TestRepo::new("data-external");
    let external = "envctl-test-staging-copy-source";
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{external}\""));
    admin_sql(&format!("CREATE DATABASE \"{external}\""));
    let server = support::server_url();
    let external_url = format!("{}/{external}", &server[..server.rfind('/').unwrap()]);
    support::psql_at(
        &external_url,
        "CREATE SCHEMA app; CREATE TABLE app.users (id int, email text); INSERT INTO app.users VALUES (1, 'real@example.com')",
    );
    repo.replace_in(
        "environments/preview.yaml",
        "database:\n  name: postgres\n  user: postgres\n",
        &format!(
            "database:\n  name: postgres\n  user: postgres\n  from:\n    cluster: {external}\n    mask:\n      app.users.email: email\n"
        ),
    );
    repo.commit("previews copy staging");
    repo.git(&["checkout", "-q", "-b", "feature/ext"]);
    repo.apply("feature/ext");
    let email = repo.sql("feature/ext", "SELECT email FROM app.users");
    assert!(!email.contains("real@"), "{email}");
    assert!(
        email.ends_with("@example.invalid") || email.contains('@'),
        "{email}"
    );
    // The external database is unchanged and untagged.
    assert_eq!(
        support::psql_at(&external_url, "SELECT email FROM app.users").trim(),
        "real@example.com"
    );
    assert_eq!(
        admin_sql(&format!(
            "SELECT coalesce(shobj_description(oid, 'pg_database'), 'none') FROM pg_database WHERE datname = '{external}'"
        ))
        .trim(),
        "none"
    );
    repo.envctl()
        .args(["destroy", "--branch", "feature/ext", "--yes"])
        .assert()
        .success();
    assert_eq!(
        support::psql_at(&external_url, "SELECT count(*) FROM app.users").trim(),
        "1"
    );
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{external}\""));
}

#[test]
fn a_kill_at_each_step_converges_with_masking_done_once() {
    let repo = repo_with_main("data-steps");
    repo.git(&["checkout", "-q", "-b", "feature/steps"]);
    repo.write(
        "schemas/migrations/0005_slow.sql",
        "SELECT pg_sleep(2);\nCREATE TABLE app.slow (id integer);\n",
    );
    repo.commit("a slow migration of its own");
    let id = repo.cluster_id("feature/steps").to_string();
    for step in [
        "copying",
        "waiting until ready",
        "masking",
        "migrating 0005_slow",
    ] {
        let (_, status) = signal_when_said(
            &repo,
            &["apply", "--branch", "feature/steps"],
            &format!("feature/steps: {step}"),
            Signal::SIGKILL,
        );
        assert!(!status.success(), "killed at {step}");
        // Whatever is left is never handed out unmasked.
        let tags = tags_of_if_any(&id);
        let url = repo
            .envctl()
            .args(["url", "--branch", "feature/steps"])
            .output()
            .unwrap();
        match tags.as_ref().and_then(|t| t["envctl:masked"].as_str()) {
            Some("done") => assert!(url.status.success(), "after {step}"),
            _ => assert!(!url.status.success(), "after {step}: handed out"),
        }
    }
    repo.apply("feature/steps");
    assert_eq!(tags_of(&id)["envctl:masked"], "done");
    assert_eq!(
        repo.sql(
            "feature/steps",
            "SELECT string_agg(visits::text, ',' ORDER BY id) FROM app.users"
        ),
        "1001,1002",
        "masked exactly once in effect"
    );
    assert_eq!(repo.applied_versions("feature/steps"), "1,2,3,4,5");
    // Nothing left under a temporary name.
    assert_eq!(
        admin_sql(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{id}-creating'"
        ))
        .trim(),
        "0"
    );
}

/// A local environment's tags, if it exists.
fn tags_of_if_any(id: &str) -> Option<serde_json::Value> {
    let exists = admin_sql(&format!(
        "SELECT count(*) FROM pg_database WHERE datname = '{id}'"
    ));
    (exists.trim() == "1").then(|| tags_of(id))
}

#[test]
fn hostile_column_paths_are_quoted_never_interpolated() {
    let repo = TestRepo::new("data-hostile");
    repo.write(
        "schemas/migrations/0004_hostile.sql",
        "CREATE SCHEMA app;\n\
         CREATE TABLE app.users (id integer PRIMARY KEY, email text);\n\
         CREATE SCHEMA \"we;ird\";\n\
         CREATE TABLE \"we;ird\".\"tä\"\"ble\" (\"e-mail; DROP TABLE app.users; --\" text, \"Ünï\" text);\n",
    );
    repo.replace_in(
        "environments/preview.yaml",
        "database:\n  name: postgres\n  user: postgres\n",
        "database:\n  name: postgres\n  user: postgres\n  from:\n    branch: main\n    mask:\n      '\"we;ird\".\"tä\"\"ble\".\"e-mail; DROP TABLE app.users; --\"': hash\n      '\"we;ird\".\"tä\"\"ble\".\"Ünï\"': \"fixed:'); DROP TABLE app.users; --\"\n",
    );
    repo.commit("hostile names");
    repo.apply("main");
    repo.sql(
        "main",
        "INSERT INTO app.users VALUES (1, 'a@example.com');\n\
         INSERT INTO \"we;ird\".\"tä\"\"ble\" VALUES ('secret@example.com', 'real')",
    );
    repo.git(&["checkout", "-q", "-b", "feature/hostile"]);
    repo.apply("feature/hostile");
    // And again while a session holds main: masked as it is copied, the names as patterns for
    // pg_dump and in COPY statements.
    repo.git(&["checkout", "-q", "-b", "feature/hostile-busy"]);
    let applied = apply_while_main_is_held(&repo, "feature/hostile-busy");
    assert_applied(&applied);
    assert_eq!(
        repo.sql(
            "feature/hostile-busy",
            "SELECT count(*) FROM envctl.masked_in_copy"
        ),
        "1"
    );
    for branch in ["feature/hostile", "feature/hostile-busy"] {
        let row = repo.sql(
            branch,
            "SELECT \"e-mail; DROP TABLE app.users; --\" || '|' || \"Ünï\" FROM \"we;ird\".\"tä\"\"ble\"",
        );
        assert!(!row.contains("secret"), "{branch}: {row}");
        assert!(
            row.ends_with("|'); DROP TABLE app.users; --"),
            "{branch}: the literal kept as text: {row}"
        );
        // Nothing was dropped, here or in main.
        assert_eq!(repo.sql(branch, "SELECT count(*) FROM app.users"), "1");
    }
    assert_eq!(repo.sql("main", "SELECT count(*) FROM app.users"), "1");
}

#[test]
fn a_failing_mask_names_its_statement_and_hands_out_nothing() {
    let repo = repo_with_main("data-maskfail");
    repo.replace_in(
        "environments/preview.yaml",
        "      app.users.phone: null\n",
        "      app.users.phone: null\n      app.users.visits: fixed:lots\n",
    );
    repo.commit("a rule whose value the column does not take");
    repo.git(&["checkout", "-q", "-b", "feature/fail"]);
    // Nothing of the copy is handed out, and main is untouched.
    refused_and_handed_out_nothing(
        &repo,
        "feature/fail",
        &[
            "the masking rule of",
            "app.users.visits",
            "invalid input syntax for type integer",
        ],
        &[],
    );
    assert_eq!(
        repo.sql("main", "SELECT email FROM app.users WHERE id = 1"),
        "ada@example.com"
    );
}

#[test]
fn deleting_a_source_leaves_its_copies() {
    let repo = repo_with_main("data-source-gone");
    repo.git(&["checkout", "-q", "-b", "feature/keep"]);
    repo.apply("feature/keep");
    repo.envctl()
        .args(["destroy", "--branch", "main", "--yes", "--force"])
        .assert()
        .success();
    assert_eq!(
        repo.sql("feature/keep", "SELECT count(*) FROM app.users"),
        "2"
    );
    // With its source gone the copy is planned like any environment: nothing to do.
    repo.envctl()
        .args(["plan", "--branch", "feature/keep", "--detailed-exitcode"])
        .assert()
        .code(0);
}

#[test]
fn a_large_source_s_file_copy_statement_copies_on_this_server() {
    let repo = repo_with_main("data-file-copy");
    let main_db = repo.cluster_id("main").to_string();
    let server_version: i32 = admin_sql("SHOW server_version_num").trim().parse().unwrap();
    let facts = envctl::provider::copy::SourceFacts {
        sessions: 0,
        size: Some(envctl::provider::copy::FILE_COPY_FROM),
        server_version,
    };
    let target = format!("{main_db}-file-copy");
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{target}\""));
    let statement = envctl::provider::copy::template_statement(
        &main_db,
        &target,
        " CONNECTION LIMIT 0",
        &facts,
    );
    assert_eq!(
        statement.contains("STRATEGY FILE_COPY"),
        server_version >= 150_000,
        "{statement}"
    );
    admin_sql(&statement);
    admin_sql(&format!("ALTER DATABASE \"{target}\" CONNECTION LIMIT -1"));
    let url = format!(
        "{}/{target}",
        support::server_url().rsplit_once('/').unwrap().0
    );
    let copied = support::psql_at(&url, "SELECT count(*) FROM app.users");
    admin_sql(&format!("DROP DATABASE \"{target}\""));
    assert_eq!(copied.trim(), "2");
}

#[test]
fn a_column_a_view_reads_is_masked_by_update() {
    let repo = repo_with_main("data-view");
    // PostgreSQL refuses to change the type of a column a view reads: the rewrite rolls back and
    // the table is masked by UPDATE.
    repo.sql(
        "main",
        "CREATE VIEW app.order_emails AS SELECT email FROM app.orders",
    );
    repo.git(&["checkout", "-q", "-b", "feature/view"]);
    repo.apply("feature/view");
    let (main_file, _) = file_and_ctid(&repo, "main", "app.orders");
    let (copy_file, ctid) = file_and_ctid(&repo, "feature/view", "app.orders");
    assert_eq!(copy_file, main_file, "app.orders was not rewritten");
    assert_eq!(ctid, "(0,2)", "app.orders was updated");
    let email = repo.sql("feature/view", "SELECT email FROM app.order_emails");
    assert!(!email.contains("example.com"), "{email}");
    // The other table was still rewritten.
    assert_ne!(
        file_and_ctid(&repo, "feature/view", "app.users").0,
        file_and_ctid(&repo, "main", "app.users").0
    );
}

#[test]
fn a_busy_source_with_a_trigger_on_a_masked_table_is_masked_by_update() {
    let repo = repo_with_main("data-busy-trigger");
    // A trigger of the user's on a masked table: masking has always fired it (an UPDATE), so a
    // copy that masks as it copies (which would not) is not taken: all tables are copied plainly
    // and masked by UPDATE, the trigger firing once per row.
    repo.sql(
        "main",
        "CREATE TABLE app.audit (order_id integer);
         CREATE FUNCTION app.audit_order() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO app.audit VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER audit BEFORE UPDATE ON app.orders
           FOR EACH ROW EXECUTE FUNCTION app.audit_order();",
    );
    repo.git(&["checkout", "-q", "-b", "feature/trigger"]);
    let applied = apply_while_main_is_held(&repo, "feature/trigger");
    assert_applied(&applied);
    assert_eq!(
        repo.sql("feature/trigger", "SELECT count(*) FROM app.audit"),
        "1"
    );
    assert_eq!(
        repo.sql(
            "feature/trigger",
            "SELECT to_regclass('envctl.masked_in_copy') IS NULL"
        ),
        "t",
        "nothing was masked in the copy"
    );
    let email = repo.sql("feature/trigger", "SELECT email FROM app.orders");
    assert!(!email.contains("example.com"), "{email}");
}

#[test]
fn a_failing_rule_in_a_busy_copy_names_its_statement_and_hands_out_nothing() {
    let repo = repo_with_main("data-busy-fail");
    // `fixed:` text a column of integers does not take: the copy's COPY refuses it.
    repo.replace_in(
        "environments/preview.yaml",
        "      app.users.phone: null\n",
        "      app.users.phone: null\n      app.users.visits: fixed:many\n",
    );
    repo.commit("a rule whose value the column refuses");
    repo.git(&["checkout", "-q", "-b", "feature/busy-fail"]);
    let applied = apply_while_main_is_held(&repo, "feature/busy-fail");
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(!applied.status.success(), "{stderr}");
    assert!(
        stderr.contains("the masking rule of app.users.email"),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid input syntax for type integer"),
        "{stderr}"
    );
    assert!(stderr.contains("'many'"), "the statement: {stderr}");
    repo.envctl()
        .args(["url", "--branch", "feature/busy-fail"])
        .assert()
        .failure();
    assert_eq!(
        repo.sql("main", "SELECT email FROM app.users WHERE id = 1"),
        "ada@example.com"
    );
}

#[test]
fn a_busy_copy_whose_masked_table_gets_rows_besides_its_masked_copy_hands_out_nothing() {
    let repo = repo_with_main("data-busy-sneak");
    // A check on another table whose function writes into the masked table: the restore of that
    // table's rows puts an unmasked row into `app.users` before the masked rows' COPY, which the
    // copy must notice and refuse, as it would rows the dump carried itself.
    repo.sql(
        "main",
        "CREATE FUNCTION app.sneak(n integer) RETURNS boolean LANGUAGE plpgsql AS
           $$ BEGIN
                INSERT INTO app.users VALUES (100 + n, 'sneak' || n || '@example.com', 'Sneak', NULL, 0);
                RETURN true;
              END $$;
         CREATE TABLE app.notes (n integer CHECK (app.sneak(n)));
         INSERT INTO app.notes VALUES (1);",
    );
    repo.git(&["checkout", "-q", "-b", "feature/sneak"]);
    let applied = apply_while_main_is_held(&repo, "feature/sneak");
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(!applied.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#""app"."users" held rows before its rows were copied masked"#),
        "{stderr}"
    );
    repo.envctl()
        .args(["url", "--branch", "feature/sneak"])
        .assert()
        .failure();
}

#[test]
fn a_failing_migration_after_masking_still_says_masked() {
    // A new copy's first tag write is its ledger's, after migrating: masked=done goes out with
    // it, also when a migration fails, so the copy is handed out as what it is (masked, its
    // ledger short of the spec's).
    let repo = repo_with_main("data-migration-fails");
    repo.git(&["checkout", "-q", "-b", "feature/broken"]);
    repo.write("schemas/migrations/0005_broken.sql", "SELECT 1/0;\n");
    repo.commit("a migration that fails");
    repo.envctl()
        .args(["apply", "--branch", "feature/broken"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("division by zero"));
    let id = repo.cluster_id("feature/broken").to_string();
    let tags = tags_of(&id);
    assert_eq!(tags["envctl:masked"], "done", "{tags}");
    assert_eq!(tags["envctl:schema-version"], "4", "{tags}");
    repo.envctl()
        .args(["url", "--branch", "feature/broken"])
        .assert()
        .success();
}

#[test]
fn a_source_s_own_masking_records_never_make_masking_skip() {
    let repo = repo_with_main("data-forged");
    let feature = repo.cluster_id("feature/forged").to_string();
    // A source carrying records that say this copy's masking committed (as an envctl before
    // mask ids made the table) and that its tables were masked as they were copied: the
    // copy's id is predictable (the plan prints it), but not the mask id made with the copy,
    // which no record here carries; masking runs.
    // (main is protected, so it outlives the test: a rerun finds what this one left there.)
    repo.sql(
        "main",
        "DO $$ BEGIN
           IF to_regclass('envctl.masking') IS NOT NULL THEN
             EXECUTE (SELECT CASE relkind WHEN 'v' THEN 'DROP VIEW envctl.masking'
                                          ELSE 'DROP TABLE envctl.masking' END
                        FROM pg_class WHERE oid = 'envctl.masking'::regclass);
           END IF;
         END $$;
         DROP TABLE IF EXISTS envctl.masked_in_copy",
    );
    repo.sql(
        "main",
        &format!(
            "CREATE TABLE envctl.masking (cluster_id text PRIMARY KEY, digest text NOT NULL,
                                          masked_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO envctl.masking VALUES ('{feature}', 'x');
             CREATE TABLE envctl.masked_in_copy (cluster_id text NOT NULL, mask_id text NOT NULL,
                                                 statement text NOT NULL);
             INSERT INTO envctl.masked_in_copy
               SELECT '{feature}', m, s
                 FROM unnest(ARRAY['', 'x', '0']) m, unnest(ARRAY[{}, {}]) s",
            "$$UPDATE \"app\".\"orders\" SET \"email\" = CASE WHEN \"email\" IS NULL THEN NULL ELSE md5(current_setting('envctl.mask_key') || \"email\"::text) END$$",
            "$$UPDATE \"app\".\"users\" SET \"email\" = CASE WHEN \"email\" IS NULL THEN NULL ELSE md5(current_setting('envctl.mask_key') || \"email\"::text) END$$"
        ),
    );
    repo.git(&["checkout", "-q", "-b", "feature/forged"]);
    repo.envctl()
        .args(["apply", "--branch", "feature/forged"])
        .assert()
        .success()
        .stderr(predicate::str::contains("; masked"));
    let emails = repo.sql(
        "feature/forged",
        "SELECT string_agg(email, ',') FROM (SELECT email FROM app.users UNION ALL SELECT email FROM app.orders) e",
    );
    assert!(!emails.contains("example.com"), "{emails}");
    // The copy's record is its own: one row, carrying the mask id of its tags.
    let mask_id = tags_of(&feature)["envctl:mask-id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(mask_id.len(), 32, "{mask_id}");
    assert_eq!(
        repo.sql(
            "feature/forged",
            &format!(
                "SELECT string_agg(mask_id, ',') FROM envctl.masking WHERE cluster_id = '{feature}'"
            )
        ),
        mask_id
    );

    // A masking record that is not a table of the master user's (a view that says every copy
    // is masked) is refused: nothing is handed out.
    repo.sql(
        "main",
        "DROP TABLE envctl.masking;
         CREATE VIEW envctl.masking AS
           SELECT current_database()::text AS cluster_id, ''::text AS digest, now() AS masked_at",
    );
    repo.git(&["checkout", "-q", "-b", "feature/forged-view"]);
    refused_and_handed_out_nothing(
        &repo,
        "feature/forged-view",
        &["`envctl.masking` is not a table of the master user's"],
        &[],
    );
}

#[test]
fn a_busy_source_whose_masked_column_an_update_cascades_to_is_masked_by_update() {
    let repo = repo_with_main("data-busy-cascade");
    // An update of app.users.email cascades to app.refs: masking in the copy would not, and the
    // foreign key, made after the rows, would refuse the copy. The rows are copied plainly and
    // masked by UPDATE, which cascades.
    repo.sql(
        "main",
        "CREATE TABLE app.refs (email text REFERENCES app.users (email) ON UPDATE CASCADE);
         INSERT INTO app.refs VALUES ('ada@example.com')",
    );
    repo.git(&["checkout", "-q", "-b", "feature/cascade"]);
    let applied = apply_while_main_is_held(&repo, "feature/cascade");
    assert_applied(&applied);
    let (refs, user) = (
        repo.sql("feature/cascade", "SELECT email FROM app.refs"),
        repo.sql(
            "feature/cascade",
            "SELECT email FROM app.users WHERE id = 1",
        ),
    );
    assert!(!refs.contains("example.com"), "{refs}");
    assert_eq!(refs, user, "the cascade carried the masked value");
}

/// Every value the planner's statistics hold for `app`'s tables, and its indexes' expressions,
/// in `branch`'s database, as one text: the most common values and the histograms, of single
/// columns and of extended statistics.
fn statistics_values(repo: &TestRepo, branch: &str) -> String {
    repo.sql(
        branch,
        "SELECT coalesce(string_agg(concat_ws(' ', most_common_vals::text, histogram_bounds::text), ' '), '')
           FROM pg_stats WHERE schemaname = 'app'
         UNION ALL
         SELECT coalesce(string_agg(concat_ws(' ', most_common_vals::text), ' '), '')
           FROM pg_stats_ext WHERE schemaname = 'app'",
    )
}

#[test]
fn the_planner_statistics_of_a_masked_copy_hold_no_unmasked_value() {
    let repo = repo_with_main("data-stats");
    // A view on app.orders.email makes it masked by UPDATE (the rewrite would drop the column's
    // statistics with its old type); an expression index and extended statistics on the masked
    // columns keep values of their own. Analyzed, so main's statistics hold its real addresses.
    repo.sql(
        "main",
        "CREATE VIEW app.order_emails AS SELECT email FROM app.orders;
         CREATE INDEX orders_lower_email ON app.orders (lower(email));
         CREATE STATISTICS app.orders_stats (mcv) ON id, email FROM app.orders;
         INSERT INTO app.orders SELECT 100 + i, 'grace@example.com' FROM generate_series(1, 20) i;
         ANALYZE app.orders, app.users;",
    );
    let before = statistics_values(&repo, "main");
    assert!(before.contains("grace@example.com"), "{before}");
    repo.git(&["checkout", "-q", "-b", "feature/stats"]);
    repo.apply("feature/stats");
    let (main_file, _) = file_and_ctid(&repo, "main", "app.orders");
    assert_eq!(
        file_and_ctid(&repo, "feature/stats", "app.orders").0,
        main_file,
        "app.orders was masked by UPDATE"
    );
    let after = statistics_values(&repo, "feature/stats");
    assert!(!after.contains("example.com"), "{after}");
    assert!(!after.contains("Real"), "{after}");
}

/// `main` with `app.orders` analyzed while it held real addresses, then emptied (its statistics
/// stay: `ANALYZE` writes none from no rows), with `extra` run before the rows go.
fn main_with_emptied_orders(name: &str, extra: &str) -> TestRepo {
    let repo = repo_with_main(name);
    repo.sql(
        "main",
        &format!(
            "CREATE INDEX orders_lower_email ON app.orders (lower(email));
             INSERT INTO app.orders SELECT 100 + i, 'grace@example.com' FROM generate_series(1, 20) i;
             ANALYZE app.orders;
             {extra}
             DELETE FROM app.orders;"
        ),
    );
    assert!(statistics_values(&repo, "main").contains("grace@example.com"));
    repo
}

#[test]
fn an_emptied_masked_table_s_statistics_are_dropped() {
    // A trigger makes app.orders masked by UPDATE, which finds no rows; ANALYZE would keep the
    // statistics, changing the column to its own type drops them.
    let repo = main_with_emptied_orders(
        "data-stats-empty",
        "CREATE FUNCTION app.keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER keep BEFORE UPDATE ON app.orders FOR EACH ROW EXECUTE FUNCTION app.keep();",
    );
    repo.git(&["checkout", "-q", "-b", "feature/empty"]);
    repo.apply("feature/empty");
    let after = statistics_values(&repo, "feature/empty");
    assert!(!after.contains("example.com"), "{after}");
    // The column and its index are as they were.
    assert_eq!(
        repo.sql(
            "feature/empty",
            "SELECT format_type(atttypid, atttypmod) || ' ' || attstorage::text FROM pg_attribute
              WHERE attrelid = 'app.orders'::regclass AND attname = 'email'"
        ),
        "text x"
    );
    assert_eq!(
        repo.sql(
            "feature/empty",
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'orders_lower_email'"
        ),
        "CREATE INDEX orders_lower_email ON app.orders USING btree (lower(email))"
    );
}

#[test]
fn an_emptied_masked_table_whose_statistics_cannot_be_dropped_hands_out_nothing() {
    // A view on the column refuses the change of type: the masking fails, saying why.
    let repo = main_with_emptied_orders(
        "data-stats-stuck",
        "CREATE VIEW app.order_emails AS SELECT email FROM app.orders;",
    );
    repo.git(&["checkout", "-q", "-b", "feature/stuck"]);
    refused_and_handed_out_nothing(
        &repo,
        "feature/stuck",
        &[
            "the planner's statistics of app.orders:",
            "`ANALYZE` writes none from an empty table",
            "app.order_emails",
        ],
        &[],
    );
}

#[test]
fn a_master_user_that_may_not_analyze_a_masked_table_fails_the_masking() {
    // On AWS the master user is not a superuser: masking by UPDATE needs only the privilege to
    // update, but replacing the statistics needs the table's owner or the database's. Such a
    // masking is refused, never committed with the source's values in the statistics.
    let repo = repo_with_main("data-stats-owner");
    repo.sql(
        "main",
        "CREATE VIEW app.order_emails AS SELECT email FROM app.orders; ANALYZE app.orders;",
    );
    let main_db = repo.cluster_id("main").to_string();
    let copy = format!("{main_db}-nonowner");
    let role = format!("{}_masker", repo.repo.replace(['/', '-', '.'], "_"));
    // What a run cut short left.
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{copy}\""));
    admin_sql(&format!("DROP ROLE IF EXISTS \"{role}\""));
    admin_sql(&format!(
        "CREATE DATABASE \"{copy}\" TEMPLATE \"{main_db}\""
    ));
    admin_sql(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'masker'"));
    admin_sql(&format!(
        "GRANT CREATE ON DATABASE \"{copy}\" TO \"{role}\""
    ));
    let base = support::server_url().rsplit_once('/').unwrap().0.to_owned();
    support::psql_at(
        &format!("{base}/{copy}"),
        &format!(
            "GRANT USAGE ON SCHEMA app TO \"{role}\";
             GRANT USAGE, CREATE ON SCHEMA envctl TO \"{role}\";
             GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA app TO \"{role}\";"
        ),
    );
    let desired = {
        let files = envctl::source::read_working_tree(repo.path()).unwrap();
        let catalog = envctl::spec::load(&files).unwrap();
        catalog
            .desired_for(
                "feature/x",
                &envctl::model::RepoName::parse(&repo.repo).unwrap(),
                &envctl::model::Prefix::default(),
            )
            .unwrap()
            .unwrap()
    };
    let data = desired.data.clone().expect("a data branch");
    let host = base.rsplit_once('@').unwrap().1;
    let url = format!("postgres://{role}:masker@{host}/{copy}");
    let failed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            envctl::db::mask::mask(&mut conn, &desired.cluster_id, &data, Some("test"))
                .await
                .unwrap_err()
                .to_string()
        });
    let orders = support::psql_at(&format!("{base}/{copy}"), "SELECT email FROM app.orders");
    admin_sql(&format!("DROP DATABASE \"{copy}\""));
    admin_sql(&format!("DROP ROLE \"{role}\""));
    assert!(
        failed.contains("the planner's statistics of app.orders:"),
        "{failed}"
    );
    assert!(
        failed.contains("only the table's owner or the database's"),
        "{failed}"
    );
    assert_eq!(
        orders.trim(),
        "ada@example.com",
        "the masking was rolled back"
    );
}

/// Adds `rules` (spec lines under `mask:`) to the preview spec, committed.
fn with_rules(repo: &TestRepo, rules: &str) {
    repo.replace_in(
        "environments/preview.yaml",
        "      app.users.phone: null\n",
        &format!("      app.users.phone: null\n{rules}"),
    );
    repo.commit("more masking rules");
}

#[test]
fn a_rule_or_trigger_that_keeps_the_update_from_writing_fails_the_masking() {
    // `DO INSTEAD NOTHING` (an append-only idiom) and a trigger returning OLD both let the
    // UPDATE succeed while writing nothing: masking checks the rows afterwards.
    let repo = repo_with_main("data-keep");
    repo.sql(
        "main",
        "CREATE TABLE app.ledger (id int PRIMARY KEY, email text);
         INSERT INTO app.ledger VALUES (1, 'alice@example.com');
         CREATE RULE append_only AS ON UPDATE TO app.ledger DO INSTEAD NOTHING;",
    );
    with_rules(&repo, "      app.ledger.email: email\n");
    repo.git(&["checkout", "-q", "-b", "feature/keep"]);
    let refused = |repo: &TestRepo| {
        refused_and_handed_out_nothing(
            repo,
            "feature/keep",
            &[
                "the masking rule of app.ledger.email: 1 row of app.ledger still holds other values than the rules write",
            ],
            &["alice"],
        )
    };
    refused(&repo);
    repo.sql(
        "main",
        "DROP RULE append_only ON app.ledger;
         CREATE FUNCTION app.keep_old() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RETURN OLD; END $$;
         CREATE TRIGGER keep_old BEFORE UPDATE ON app.ledger
           FOR EACH ROW EXECUTE FUNCTION app.keep_old();",
    );
    repo.envctl()
        .args(["destroy", "--yes", "--branch", "feature/keep"])
        .assert()
        .success();
    refused(&repo);
}

#[test]
fn a_masking_file_cannot_change_how_the_next_one_is_read() {
    // The first file turns standard_conforming_strings off, so PostgreSQL would read the second
    // one's quoted text as a ROLLBACK and BEGIN that its lint took for a string: every rule rolled
    // back, the record written in the new transaction. Each file is read as its lint read it.
    let repo = repo_with_main("data-lexing");
    repo.write(
        "schemas/mask/a.sql",
        "SET standard_conforming_strings = off;\n",
    );
    repo.write(
        "schemas/mask/b.sql",
        "SELECT '\\''; ROLLBACK; BEGIN; SELECT '';\n",
    );
    repo.replace_in(
        "environments/preview.yaml",
        "maskSql: [schemas/mask/visits.sql]",
        "maskSql: [schemas/mask/visits.sql, schemas/mask/a.sql, schemas/mask/b.sql]",
    );
    repo.commit("two masking files");
    repo.git(&["checkout", "-q", "-b", "feature/lexing"]);
    repo.envctl().args(["validate"]).assert().success();
    // Read as its lint read it, the second file is one unterminated string: refused, nothing
    // handed out.
    refused_and_handed_out_nothing(
        &repo,
        "feature/lexing",
        &["masking file `schemas/mask/b.sql` at line 1: unterminated quoted string"],
        &[],
    );
}

#[test]
fn a_rule_on_a_foreign_table_is_refused_and_the_remote_rows_are_untouched() {
    // A foreign table's rows live on another server, here main's own database: an UPDATE of it
    // in the copy would write to the source.
    let repo = repo_with_main("data-foreign");
    let main_db = repo.cluster_id("main").to_string();
    let admin = support::server_url();
    let (credentials, host) = admin
        .trim_start_matches("postgres://")
        .split_once('@')
        .unwrap();
    let (user, password) = credentials.split_once(':').unwrap();
    let (address, _) = host.split_once('/').unwrap();
    let (hostname, port) = address.split_once(':').unwrap();
    admin_sql_in(
        &main_db,
        &format!(
            "CREATE EXTENSION postgres_fdw;
             CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw
               OPTIONS (host '{hostname}', port '{port}', dbname '{main_db}');
             CREATE USER MAPPING FOR PUBLIC SERVER loop
               OPTIONS (user '{user}', password '{password}');
             CREATE FOREIGN TABLE app.remote_orders (id int, email text)
               SERVER loop OPTIONS (schema_name 'app', table_name 'orders');"
        ),
    );
    with_rules(&repo, "      app.remote_orders.email: email\n");
    repo.git(&["checkout", "-q", "-b", "feature/foreign"]);
    repo.envctl()
        .args(["apply", "--branch", "feature/foreign"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "app.remote_orders is a foreign table, whose rows live on another server",
        ));
    assert_eq!(
        repo.sql("main", "SELECT email FROM app.orders"),
        "ada@example.com"
    );
}

#[test]
fn row_level_security_that_hides_rows_from_the_master_user_fails_the_masking() {
    // On AWS the master user is no superuser: a FORCE ROW LEVEL SECURITY policy would hide rows
    // from the masking UPDATE, which would leave them as they were and succeed.
    let db = "envctl-rls-masking";
    let role = "envctl_rls_masker";
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{db}\""));
    admin_sql(&format!("DROP ROLE IF EXISTS {role}"));
    admin_sql(&format!("CREATE ROLE {role} LOGIN PASSWORD 'masker'"));
    admin_sql(&format!("CREATE DATABASE \"{db}\" OWNER {role}"));
    let base = support::server_url().rsplit_once('/').unwrap().0.to_owned();
    let host = base.rsplit_once('@').unwrap().1.to_owned();
    let url = format!("postgres://{role}:masker@{host}/{db}");
    support::psql_at(
        &url,
        "CREATE TABLE tenants (id int, tenant int, email text);
         INSERT INTO tenants VALUES (1, 7, 'hidden@example.com');
         CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER keep BEFORE UPDATE ON tenants FOR EACH ROW EXECUTE FUNCTION keep();
         ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
         ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
         CREATE POLICY by_tenant ON tenants
           USING (tenant::text = current_setting('app.tenant', true));",
    );
    let data = envctl::model::DataSource {
        from: envctl::model::SourceRef::DefaultBranch,
        master_user: None,
        rules: vec![envctl::model::MaskRule {
            column: envctl::model::ColumnPath::parse("public.tenants.email").unwrap(),
            strategy: envctl::model::MaskStrategy::Email,
        }],
        files: std::sync::Arc::from([]),
    };
    let id = envctl::model::ClusterId::from_live("envctl-rls-masking");
    let failed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            envctl::db::mask::mask(&mut conn, &id, &data, Some("test"))
                .await
                .map(|m| format!("{m:?}"))
                .unwrap_err()
                .to_string()
        });
    let email = admin_sql_in(db, "SELECT email FROM tenants");
    admin_sql(&format!("DROP DATABASE \"{db}\""));
    admin_sql(&format!("DROP ROLE {role}"));
    assert!(failed.contains("row-level security"), "{failed}");
    assert_eq!(email.trim(), "hidden@example.com", "rolled back");
}

/// SQL as the admin in the database `db`.
fn admin_sql_in(db: &str, sql: &str) -> String {
    let base = support::server_url().rsplit_once('/').unwrap().0.to_owned();
    support::psql_at(&format!("{base}/{db}"), sql)
}

#[test]
fn a_copy_with_no_rules_is_not_reported_masked() {
    let repo = repo_with_main("data-unmasked");
    repo.replace_in(
        "environments/preview.yaml",
        PREVIEW_FROM_MAIN,
        "database:\n  name: postgres\n  user: postgres\n  from:\n    branch: main\n",
    );
    repo.commit("previews copy main's data as it is");
    repo.git(&["checkout", "-q", "-b", "feature/raw"]);
    repo.envctl()
        .args(["apply", "--branch", "feature/raw"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "copied with no masking (the spec has no rules)",
        ))
        .stderr(predicate::str::contains("; masked").not());
}

#[test]
fn an_external_source_that_is_a_copy_with_its_masking_pending_blocks() {
    // `from.branch` refuses a source whose masking has not committed; `from.cluster` naming the
    // same database must too (its data is main's, unmasked).
    let repo = repo_with_main("data-ext-pending");
    with_rules(&repo, "      app.users.visits: fixed:lots\n");
    repo.git(&["checkout", "-q", "-b", "feature/pending"]);
    refused_and_handed_out_nothing(&repo, "feature/pending", &["invalid input syntax"], &[]);
    let pending = repo.cluster_id("feature/pending").to_string();
    repo.write(
        "environments/hotfix.yaml",
        &format!(
            "version: 1\nname: hotfix\nbranches: [\"hotfix/*\"]\ncluster:\n  scaling: {{ minAcu: 0, maxAcu: 4 }}\ndatabase:\n  name: postgres\n  user: postgres\n  from:\n    cluster: {pending}\n    mask:\n      app.orders.email: hash\n"
        ),
    );
    repo.commit("hotfixes copy a pending copy");
    repo.git(&["checkout", "-q", "-b", "hotfix/x"]);
    let applied = repo
        .envctl()
        .args(["apply", "--branch", "hotfix/x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(!applied.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cluster `{pending}` is a copy envctl made whose masking has not committed"
        )),
        "{stderr}"
    );
    repo.envctl()
        .args(["url", "--branch", "hotfix/x"])
        .assert()
        .failure();
}

/// Resets the admin role's `log_statement` when dropped (also when the test fails).
struct StatementLogging(String);

impl Drop for StatementLogging {
    fn drop(&mut self) {
        admin_sql(&format!("ALTER ROLE \"{}\" RESET log_statement", self.0));
    }
}

#[test]
fn the_masking_key_never_reaches_a_statement_log() {
    // With every statement logged (log_statement = all logs a statement's parameters too), the
    // key must appear nowhere: it is made on the server, in the source's session (a busy copy)
    // and in the copy's (masking).
    let repo = repo_with_main("data-key-log");
    let log = std::env::temp_dir().join("envctl-test-postgres/server.log");
    let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let admin = admin_sql("SELECT current_user");
    let admin = admin.trim().to_owned();
    admin_sql(&format!("ALTER ROLE \"{admin}\" SET log_statement = 'all'"));
    let logging = StatementLogging(admin);
    repo.git(&["checkout", "-q", "-b", "feature/logged"]);
    repo.apply("feature/logged");
    repo.git(&["checkout", "-q", "-b", "feature/logged-busy"]);
    assert_applied(&apply_while_main_is_held(&repo, "feature/logged-busy"));
    drop(logging);
    let text = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&text[start as usize..]);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("mask_key")).collect();
    assert!(
        lines.iter().any(|l| l.contains("set_config")),
        "the masking's statements were logged: {}",
        lines.join("\n")
    );
    // A key is 64 hex digits (a copy's mask id, which is no secret, 32).
    let key_like = |line: &str| {
        line.split(|c: char| !c.is_ascii_hexdigit())
            .any(|run| run.len() >= 64)
    };
    let leaked: Vec<&&str> = lines.iter().filter(|l| key_like(l)).collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[test]
fn a_failing_rule_s_error_quotes_no_source_value() {
    // PostgreSQL's detail for a foreign key still referenced is `Key (email)=(…)`: the source's
    // value, in an apply log that CI keeps.
    let repo = repo_with_main("data-quiet-errors");
    repo.sql(
        "main",
        "CREATE TABLE app.accounts (email text PRIMARY KEY);
         CREATE TABLE app.logins (account text REFERENCES app.accounts);
         INSERT INTO app.accounts VALUES ('dave@example.com');
         INSERT INTO app.logins VALUES ('dave@example.com');",
    );
    with_rules(&repo, "      app.accounts.email: email\n");
    repo.git(&["checkout", "-q", "-b", "feature/quiet"]);
    refused_and_handed_out_nothing(
        &repo,
        "feature/quiet",
        &[
            "violates foreign key constraint \"logins_account_fkey\" on table \"logins\"",
            "constraint `logins_account_fkey`",
            "the server's detail is left out: it may show the rows' values",
        ],
        &["dave"],
    );
}

#[test]
fn a_copy_that_masks_as_it_copies_quotes_no_source_row_when_a_rule_breaks_a_constraint() {
    // With a session on main the rows are masked as they are copied: a rule that breaks a
    // CHECK fails the COPY, whose detail is `Failing row contains (…)`, the other columns as
    // they are in main.
    let repo = repo_with_main("data-quiet-copy");
    repo.sql(
        "main",
        "CREATE TABLE app.people (id int, email text CHECK (email IS NOT NULL), note text);
         INSERT INTO app.people VALUES (1, 'eve@example.com', 'TOPSECRET-NOTE');",
    );
    with_rules(&repo, "      app.people.email: null\n");
    repo.git(&["checkout", "-q", "-b", "feature/quiet-copy"]);
    let applied = apply_while_main_is_held(&repo, "feature/quiet-copy");
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(!applied.status.success(), "{stderr}");
    assert!(stderr.contains("people_email_check"), "{stderr}");
    assert!(!stderr.contains("TOPSECRET"), "{stderr}");
    assert!(!stderr.contains("eve@"), "{stderr}");
}

#[test]
fn a_fixed_value_is_written_as_the_spec_says_whatever_the_source_s_settings() {
    // A source database with `standard_conforming_strings = off` (the copy keeps it) would read
    // the backslash in `fixed:a\nb` as an escape: the phone would hold a newline.
    let repo = repo_with_main("data-literal");
    let main_db = repo.cluster_id("main").to_string();
    admin_sql(&format!(
        "ALTER DATABASE \"{main_db}\" SET standard_conforming_strings = off"
    ));
    repo.replace_in(
        "environments/preview.yaml",
        "      app.users.phone: null\n",
        "      app.users.phone: fixed:a\\nb\n",
    );
    repo.commit("phones masked to a fixed value with a backslash");
    repo.git(&["checkout", "-q", "-b", "feature/literal"]);
    repo.apply("feature/literal");
    repo.git(&["checkout", "-q", "-b", "feature/literal-busy"]);
    assert_applied(&apply_while_main_is_held(&repo, "feature/literal-busy"));
    for branch in ["feature/literal", "feature/literal-busy"] {
        assert_eq!(
            repo.sql(
                branch,
                "SELECT count(*) FROM app.users WHERE phone = 'a' || chr(92) || 'nb'"
            ),
            "2",
            "{branch}"
        );
    }
}

#[test]
fn a_keyed_rule_whose_result_cannot_be_checked_is_refused_on_a_table_that_is_updated() {
    // `"char"` takes the keyed rule's text by an assignment cast (its first byte): no shape says
    // whether the trigger, which returns OLD, let the UPDATE write it. It kept `Z`.
    let repo = repo_with_main("data-unchecked");
    repo.sql(
        "main",
        "CREATE TABLE app.codes (id int, code \"char\");
         INSERT INTO app.codes VALUES (1, 'Z');
         CREATE FUNCTION app.keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$;
         CREATE TRIGGER keep BEFORE UPDATE ON app.codes FOR EACH ROW EXECUTE FUNCTION app.keep();",
    );
    with_rules(&repo, "      app.codes.code: hash\n");
    repo.git(&["checkout", "-q", "-b", "feature/unchecked"]);
    refused_and_handed_out_nothing(
        &repo,
        "feature/unchecked",
        &[
            "app.codes.code is of a type that takes the rule's text its own way",
            "mask it with `null` or `fixed:`",
        ],
        &[],
    );
}

#[test]
fn a_running_proxy_opens_nothing_to_a_copy_whose_masking_is_pending_again() {
    // A reset copies the branch again under the same name while a proxy started before runs:
    // until masking commits, its data is main's, unmasked. The proxy asks before each new
    // upstream connection, as url, exec and a new proxy refuse it.
    let repo = repo_with_main("data-proxy-gate");
    repo.git(&["checkout", "-q", "-b", "feature/served"]);
    repo.apply("feature/served");
    let mut cmd = repo.process(&[]);
    cmd.args(["proxy", "--port", "0", "--branch", "feature/served"]);
    let mut proxy = support::proxy::ProxyProcess::start(cmd);
    let read = |url: &str| {
        std::process::Command::new("psql")
            .arg(url)
            .args(["-Atc", "SELECT email FROM app.orders"])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
    };
    let served = read(&proxy.url);
    assert!(served.status.success(), "{served:?}");
    let id = repo.cluster_id("feature/served").to_string();
    let refused_saying = |text: &str| {
        let refused = read(&proxy.url);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{refused:?}");
        assert!(stderr.contains(text), "{stderr}");
    };
    // What a reset leaves while it copies again: no database of that name (a yes given then,
    // and kept for a second, would have let the next connection open the new copy at once).
    let away = format!("{id}-away");
    admin_sql(&format!("ALTER DATABASE \"{id}\" RENAME TO \"{away}\""));
    refused_saying("does not exist now");
    admin_sql(&format!("ALTER DATABASE \"{away}\" RENAME TO \"{id}\""));
    // What a reset cut off during masking leaves (the tag says pending). On one server a reset
    // can copy a small database again within a second: the proxy asks for every connection,
    // keeping no earlier yes.
    assert!(read(&proxy.url).status.success());
    set_metadata(&id, "{tags,envctl:masked}", "\"pending\"");
    refused_saying("this copy's masking has not committed");
    set_metadata(&id, "{tags,envctl:masked}", "\"done\"");
    assert!(read(&proxy.url).status.success());
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.wait(std::time::Duration::from_secs(10));
}

#[test]
fn a_proxy_login_to_a_database_made_pending_while_it_logged_in_relays_nothing() {
    // The proxy asks before it connects upstream, and a reset can copy the branch again between
    // that yes and the login. Made here without a delay: a session renames the database away
    // and back in a transaction, which holds it (a login waits for its lock), says pending, and
    // commits; the proxy's login, started after its yes, ends on a database now pending.
    let repo = repo_with_main("data-proxy-login");
    repo.git(&["checkout", "-q", "-b", "feature/late"]);
    repo.apply("feature/late");
    let mut cmd = repo.process(&[]);
    cmd.args(["proxy", "--port", "0", "--branch", "feature/late"]);
    let mut proxy = support::proxy::ProxyProcess::start(cmd);
    let id = repo.cluster_id("feature/late").to_string();
    let mut holder = psql_in_background(
        support::server_url(),
        &format!(
            "BEGIN; ALTER DATABASE \"{id}\" RENAME TO \"{id}-x\"; \
             ALTER DATABASE \"{id}-x\" RENAME TO \"{id}\"; SELECT pg_sleep(3); \
             DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE %I IS %L', '{id}', \
               jsonb_set(shobj_description((SELECT oid FROM pg_database WHERE datname = '{id}'), \
               'pg_database')::jsonb, '{{tags,envctl:masked}}', '\"pending\"')::text); END $$; \
             COMMIT"
        ),
    );
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while admin_sql(&format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'object' AND classid = 'pg_database'::regclass \
           AND objid = (SELECT oid FROM pg_database WHERE datname = '{id}') \
           AND mode = 'AccessExclusiveLock' AND granted"
    ))
    .trim()
        == "0"
    {
        assert!(std::time::Instant::now() < until, "the renaming session took no lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let read = std::process::Command::new("psql")
        .arg(&proxy.url)
        .args(["-Atc", "SELECT count(*) FROM app.orders"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&read.stderr);
    assert!(!read.status.success(), "{read:?}");
    assert!(stderr.contains("masking has not committed"), "{stderr}");
    assert!(read.stdout.is_empty(), "{read:?}");
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.wait(std::time::Duration::from_secs(10));
}

#[test]
fn a_url_handed_out_before_a_reset_opens_nothing_until_masking_commits() {
    // On the local provider a copy keeps its name and its user's password across a reset: a URL
    // handed out before it must not open the new copy's data while it is unmasked.
    let repo = TestRepo::new("data-conn-limit");
    let user = "data_conn_limit_user";
    let spec = |name: &str, branches: &str, from: &str| {
        format!(
            "version: 1\nname: {name}\nbranches: [{branches}]\ncluster:\n  scaling: {{ minAcu: 0, maxAcu: 2 }}\ndatabase:\n  user: {user}\n  schemaVersion: latest\n  seeds: [schemas/seeds/dummy.sql]\n{from}"
        )
    };
    repo.write(
        "environments/main.yaml",
        &spec("main", "main", "lifecycle:\n  protect: true\n"),
    );
    repo.write(
        "environments/preview.yaml",
        &spec(
            "preview",
            "\"feature/*\"",
            "  from:\n    branch: main\n    mask:\n      dummy.dummy_table.name: fixed:MASKED\n",
        ),
    );
    repo.commit("main and previews with their own user");
    repo.apply("main");
    repo.git(&["checkout", "-q", "-b", "feature/limit"]);
    repo.apply("feature/limit");
    let url = support::url_of(repo.envctl(), "feature/limit")
        .trim()
        .to_owned();
    let read = |url: &str| {
        std::process::Command::new("psql")
            .arg(url)
            .args([
                "-Atc",
                "SELECT string_agg(name, ',') FROM dummy.dummy_table",
            ])
            .output()
            .unwrap()
    };
    let masked = read(&url);
    assert!(masked.status.success(), "{masked:?}");
    assert!(String::from_utf8_lossy(&masked.stdout).contains("MASKED"));
    // A rule that fails: the reset copies main again, and its masking never commits.
    repo.replace_in(
        "environments/preview.yaml",
        "fixed:MASKED\n",
        "fixed:MASKED\n      dummy.dummy_table.id: fixed:oops\n",
    );
    repo.commit("a rule that fails");
    repo.envctl()
        .args(["reset", "--yes", "--branch", "feature/limit"])
        .assert()
        .failure();
    let refused = read(&url);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("too many connections"),
        "{refused:?}"
    );
}

#[test]
fn a_lock_held_in_the_source_fails_the_copy_within_the_wait_timeout() {
    // A session holding a table's lock (a forgotten transaction after DDL) kept pg_dump waiting
    // without end, --wait-timeout or not.
    let repo = repo_with_main("data-lock-wait");
    repo.git(&["checkout", "-q", "-b", "feature/locked"]);
    let mut holder = psql_in_background(
        &repo.url("main"),
        "BEGIN; LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
    );
    let main_db = repo.cluster_id("main").to_string();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while admin_sql(&format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
          WHERE d.datname = '{main_db}' AND l.mode = 'AccessExclusiveLock' AND l.granted"
    ))
    .trim()
        == "0"
    {
        assert!(std::time::Instant::now() < until, "the lock was not taken");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let started = std::time::Instant::now();
    let applied = repo
        .envctl()
        .args([
            "apply",
            "--branch",
            "feature/locked",
            "--wait-timeout",
            "2s",
        ])
        .timeout(std::time::Duration::from_secs(50))
        .output()
        .unwrap();
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(!applied.status.success(), "{stderr}");
    // Named for what it is: pg_dump's lock wait, on that table, not what pg_restore made of an
    // input that ended.
    assert!(
        stderr.contains("another session holds a lock on app.orders in the source")
            && stderr.contains("after 2s (--wait-timeout)"),
        "{stderr}"
    );
    assert!(!stderr.contains("input file is too short"), "{stderr}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "took {took:?}: {stderr}"
    );
}

#[test]
fn a_rule_added_after_the_copy_copies_the_branch_again_masked_with_it() {
    // Someone forgot a column of personal data and adds its rule: an open branch's copy must not
    // keep it as the source has it.
    let repo = repo_with_main("data-rule-added");
    repo.git(&["checkout", "-q", "-b", "feature/added"]);
    repo.apply("feature/added");
    assert_eq!(
        repo.sql("feature/added", "SELECT min(id) FROM app.orders"),
        "10"
    );
    with_rules(&repo, "      app.orders.id: fixed:0\n");
    repo.envctl()
        .args(["plan", "--branch", "feature/added", "--detailed-exitcode"])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("! reset    feature/added"))
        .stdout(predicate::str::contains(
            "the masking rules or files changed since this copy was masked",
        ));
    // A reset deletes the branch's data: asked for, as any reset is.
    repo.envctl()
        .args(["apply", "--branch", "feature/added", "--yes"])
        .assert()
        .success();
    assert_eq!(
        repo.sql("feature/added", "SELECT min(id) FROM app.orders"),
        "0"
    );
    // Converged: nothing more to do.
    repo.envctl()
        .args(["plan", "--branch", "feature/added", "--detailed-exitcode"])
        .assert()
        .code(0);
}

/// The preview spec's `app.users.full_name` rule line (the example's users are `… Real`).
const FULL_NAME_RULE: &str = "      app.users.full_name: name\n";

/// `feature/two`, applied with the `full_name` rule removed (its copy holds main's real names),
/// then that commit reverted: the spec masks the column again, the copy does not.
fn copy_masked_before_a_rule_came_back(name: &str) -> TestRepo {
    let repo = repo_with_main(name);
    repo.git(&["checkout", "-q", "-b", "feature/two"]);
    repo.replace_in("environments/preview.yaml", FULL_NAME_RULE, "");
    repo.commit("full_name needs no masking");
    repo.apply("feature/two");
    assert_eq!(
        repo.sql(
            "feature/two",
            "SELECT full_name FROM app.users WHERE id = 1"
        ),
        "Ada Real"
    );
    repo.git(&["revert", "--no-edit", "HEAD"]);
    assert!(
        repo.read("environments/preview.yaml")
            .contains(FULL_NAME_RULE)
    );
    repo
}

/// What the refusals of a copy masked with other rules than the spec's say.
const RULES_CHANGED: &str = "the masking rules changed since the copy was masked";

#[test]
fn a_copy_masked_with_other_rules_than_the_spec_s_is_handed_out_to_nobody_until_copied_again() {
    let repo = copy_masked_before_a_rule_came_back("data-rule-back");
    repo.envctl()
        .args(["plan", "--branch", "feature/two"])
        .assert()
        .stdout(predicate::str::contains("! reset    feature/two"));
    // The reset that copies again is blocked: the copy stays as it is.
    repo.envctl()
        .args(["apply", "--branch", "feature/two", "--no-reset"])
        .assert()
        .failure();
    let select = "SELECT full_name FROM app.users ORDER BY id";
    let exec_proxy = [
        "exec",
        "--proxy",
        "--branch",
        "feature/two",
        "--",
        "psql",
        "-Atc",
        select,
    ];
    // Each is asked, and what any of them handed out is said at once.
    let mut handed_out = Vec::new();
    for args in [
        &["url", "--branch", "feature/two"][..],
        &support::exec_psql("feature/two", select)[..],
        &exec_proxy[..],
        &["proxy", "--port", "0", "--branch", "feature/two"][..],
    ] {
        let asked = repo
            .envctl()
            .args(args)
            .timeout(std::time::Duration::from_secs(30))
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&asked.stdout),
            String::from_utf8_lossy(&asked.stderr),
        );
        // Refused, saying why and what fixes it; nothing handed out: no URL, no row, no
        // listening line.
        let refused = !asked.status.success()
            && stderr.contains(RULES_CHANGED)
            && stderr.contains("`envctl apply --branch feature/two`")
            && stdout.is_empty();
        if !refused {
            handed_out.push(format!("{}: {stdout} {stderr}", args[0]));
        }
    }
    assert!(handed_out.is_empty(), "{handed_out:#?}");
    // A proxy of every environment serves main and leaves the branch out, saying why.
    let proxy = support::proxy::ProxyProcess::start(repo.process(&["proxy", "--all", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&proxy.line).unwrap();
    let branches: Vec<&str> = listed["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["branch"].as_str().unwrap())
        .collect();
    assert_eq!(branches, ["main"]);
    let said = proxy.wait_for_stderr(
        "not serving `feature/two`",
        std::time::Duration::from_secs(30),
    );
    assert!(said.contains(RULES_CHANGED), "{said}");
    let asked = std::process::Command::new("psql")
        .arg(format!(
            "postgres://postgres@127.0.0.1:{}/feature%2Ftwo?sslmode=disable",
            proxy.port
        ))
        .args(["-Atc", select])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(!asked.status.success(), "{asked:?}");
    assert!(!String::from_utf8_lossy(&asked.stdout).contains("Real"));
    drop(proxy);
    // A spec that cannot be read cannot say the rules are the same: refused too.
    let spec = repo.read("environments/preview.yaml");
    repo.write("environments/preview.yaml", &format!("{spec}nonsense: [\n"));
    repo.envctl()
        .args(["url", "--branch", "feature/two"])
        .assert()
        .failure()
        .stdout("")
        .stderr(predicate::str::contains(
            "the spec of branch `feature/two` cannot be read",
        ));
    repo.write("environments/preview.yaml", &spec);

    // The apply that copies again lifts it, and the column is masked.
    repo.envctl()
        .args(["apply", "--branch", "feature/two", "--yes"])
        .assert()
        .success();
    let names = repo.sql("feature/two", select);
    assert_eq!(names.lines().count(), 2, "{names}");
    assert!(!names.contains("Real"), "{names}");
    assert!(repo.url("feature/two").starts_with("postgres"));
    let mut cmd = repo.process(&[]);
    cmd.args(["proxy", "--port", "0", "--branch", "feature/two"]);
    let proxy = support::proxy::ProxyProcess::start(cmd);
    let served = support::psql_at(&proxy.url, select);
    assert!(!served.contains("Real"), "{served}");
}

#[test]
fn a_running_proxy_opens_nothing_to_a_copy_made_again_with_other_rules_than_its_spec_s() {
    // Both proxies read the spec when they start, with the `full_name` rule. A reset then copies
    // the branch again from a spec without it (another checkout's, here the working tree edited
    // meanwhile): the new copy holds main's real names, and neither proxy opens it.
    let repo = repo_with_main("data-proxy-rules");
    repo.git(&["checkout", "-q", "-b", "feature/two"]);
    repo.apply("feature/two");
    let mut one = repo.process(&[]);
    one.args(["proxy", "--port", "0", "--branch", "feature/two"]);
    let one = support::proxy::ProxyProcess::start(one);
    let all = support::proxy::ProxyProcess::start(repo.process(&["proxy", "--port", "0", "--all"]));
    let all_url = format!(
        "postgres://postgres@127.0.0.1:{}/feature%2Ftwo?sslmode=disable",
        all.port
    );
    let read = |url: &str| {
        std::process::Command::new("psql")
            .arg(url)
            .args(["-Atc", "SELECT full_name FROM app.users ORDER BY id"])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
    };
    for url in [&one.url, &all_url] {
        let served = read(url);
        assert!(served.status.success(), "{served:?}");
        assert!(!String::from_utf8_lossy(&served.stdout).contains("Real"));
    }
    repo.replace_in("environments/preview.yaml", FULL_NAME_RULE, "");
    repo.envctl()
        .args(["apply", "--branch", "feature/two", "--yes"])
        .assert()
        .success();
    for url in [&one.url, &all_url] {
        let refused = read(url);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{refused:?}");
        assert!(stderr.contains(RULES_CHANGED), "{stderr}");
        assert!(!String::from_utf8_lossy(&refused.stdout).contains("Real"));
    }
}

#[test]
fn a_masking_found_committed_with_other_rules_is_done_again_with_the_spec_s() {
    // An apply cut off after masking committed, before it said so (the copy still tagged
    // pending), and a rule added before the next apply: that apply must not take the earlier
    // masking for this spec's.
    let repo = repo_with_main("data-found-other");
    repo.git(&["checkout", "-q", "-b", "feature/found"]);
    repo.apply("feature/found");
    let id = repo.cluster_id("feature/found").to_string();
    set_metadata(&id, "{tags,envctl:masked}", "\"pending\"");
    with_rules(&repo, "      app.orders.id: fixed:0\n");
    repo.envctl()
        .args(["apply", "--branch", "feature/found", "--yes"])
        .assert()
        .success()
        .stderr(predicate::str::contains("masking found committed").not());
    assert_eq!(
        repo.sql("feature/found", "SELECT min(id) FROM app.orders"),
        "0"
    );
}

#[test]
fn a_copy_keeps_the_source_s_database_settings_and_privileges_either_way_it_is_made() {
    // Settings and privileges live in shared catalogs, outside a database's files: neither a
    // template copy nor a dump takes them, and an Aurora clone keeps them.
    let repo = repo_with_main("data-settings");
    let main_db = repo.cluster_id("main").to_string();
    let reader = "envctl_test_settings_reader";
    admin_sql(&format!(
        "DO $$ BEGIN CREATE ROLE {reader}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         ALTER DATABASE \"{main_db}\" SET search_path = app, \"$user\", \"We,ird\";
         ALTER DATABASE \"{main_db}\" SET app.note = 'it''s kept';
         ALTER ROLE {reader} IN DATABASE \"{main_db}\" SET work_mem = '8MB';
         REVOKE ALL ON DATABASE \"{main_db}\" FROM PUBLIC;
         GRANT CONNECT ON DATABASE \"{main_db}\" TO {reader} WITH GRANT OPTION;"
    ));
    let own = |db: &str| {
        admin_sql(&format!(
            "SELECT coalesce(r.rolname, '-') || ':' || array_to_string(s.setconfig, ';')
               FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
               LEFT JOIN pg_roles r ON r.oid = s.setrole
              WHERE d.datname = '{db}' ORDER BY 1;
             SELECT coalesce(nullif(pg_get_userbyid(a.grantee), '-'), 'PUBLIC') || ' '
                    || a.privilege_type || ' ' || a.is_grantable
               FROM pg_database d, aclexplode(d.datacl) a
              WHERE d.datname = '{db}' AND a.grantee <> d.datdba ORDER BY 1"
        ))
        .trim()
        .to_owned()
    };
    let expected = own(&main_db);
    assert_eq!(
        expected,
        format!(
            "-:search_path=app, \"$user\", \"We,ird\";app.note=it's kept\n\
             {reader}:work_mem=8MB\n\
             {reader} CONNECT true"
        ),
        "main's own settings and privileges, as the server stores them"
    );
    // A template copy (nobody on main), and a dump and restore (a session on main).
    repo.git(&["checkout", "-q", "-b", "feature/template"]);
    repo.apply("feature/template");
    repo.git(&["checkout", "-q", "-b", "feature/dumped"]);
    assert_applied(&apply_while_main_is_held(&repo, "feature/dumped"));
    for branch in ["feature/template", "feature/dumped"] {
        let copy = repo.cluster_id(branch).to_string();
        assert_eq!(own(&copy), expected, "{branch}");
        assert_eq!(
            repo.sql(
                branch,
                "SELECT current_setting('search_path') || '|' || current_setting('app.note')"
            ),
            "app, \"$user\", \"We,ird\"|it's kept",
            "{branch}: a session on the copy gets main's settings"
        );
        // PUBLIC has no CONNECT on the copy either.
        assert_eq!(
            admin_sql(&format!(
                "SELECT has_database_privilege('public', '{copy}', 'CONNECT')"
            ))
            .trim(),
            "f",
            "{branch}"
        );
    }
}

#[test]
fn an_apply_whose_copy_was_made_again_meanwhile_neither_opens_it_nor_says_it_masked() {
    // Apply A makes the branch's copy and is stopped as it starts masking; a reset (B) drops
    // that copy, makes another under the same id, and is killed before masking it. A, resumed,
    // finds B's copy: its masking must not open that copy or tag it `masked=done` (before, it
    // did both, on a copy whose masking nobody had recorded under its id).
    let repo = repo_with_main("data-made-again");
    repo.git(&["checkout", "-q", "-b", "feature/again"]);
    let mut a = repo
        .process(&["apply", "--branch", "feature/again"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut a_err = std::io::BufReader::new(a.stderr.take().unwrap());
    support::process::read_until(&mut a_err, ": masking");
    support::process::kill(&a, Signal::SIGSTOP);
    let id = repo.cluster_id("feature/again").to_string();
    let a_mask_id = tags_of(&id)["envctl:mask-id"].clone();
    let (_, b) = signal_when_said(
        &repo,
        &["reset", "--branch", "feature/again", "--yes"],
        "waiting until ready",
        Signal::SIGKILL,
    );
    assert!(!b.success());
    let b_tags = tags_of(&id);
    assert_ne!(
        b_tags["envctl:mask-id"], a_mask_id,
        "B made a copy of its own"
    );
    assert_eq!(b_tags["envctl:masked"], "pending");
    support::process::kill(&a, Signal::SIGCONT);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut a_err, &mut rest).unwrap();
    assert!(!a.wait().unwrap().success(), "{rest}");
    assert!(
        rest.contains("another run made it again meanwhile"),
        "{rest}"
    );
    assert_eq!(tags_of(&id)["envctl:masked"], "pending", "{rest}");
    assert_eq!(
        admin_sql(&format!(
            "SELECT datconnlimit FROM pg_database WHERE datname = '{id}'"
        ))
        .trim(),
        "0",
        "B's copy still takes no connection"
    );
    repo.envctl()
        .args(["url", "--branch", "feature/again"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("masking has not committed"));
    // The next apply finishes B's copy.
    repo.apply("feature/again");
    assert_eq!(tags_of(&id)["envctl:masked"], "done");
    let email = repo.sql("feature/again", "SELECT email FROM app.users WHERE id = 1");
    assert!(!email.contains("example.com"), "{email}");
}

#[test]
fn a_copy_whose_masked_tag_is_gone_is_pending_until_masked_again() {
    // Someone removed `envctl:masked`: the copy is still a copy (its source and mask id say so),
    // and nothing says it is masked. Before, url handed it out and no plan masked it again.
    let repo = repo_with_main("data-tag-gone");
    repo.git(&["checkout", "-q", "-b", "feature/gone"]);
    repo.apply("feature/gone");
    let id = repo.cluster_id("feature/gone").to_string();
    let mut metadata: serde_json::Value =
        serde_json::from_str(support::comment_of(&id).trim()).unwrap();
    metadata["tags"]
        .as_object_mut()
        .unwrap()
        .remove("envctl:masked");
    support::set_comment(&id, &metadata.to_string());
    repo.envctl()
        .args(["url", "--branch", "feature/gone"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("masking has not committed"));
    repo.envctl()
        .args(["status"])
        .assert()
        .success()
        .stdout(predicate::str::contains("(masking pending)"));
    let plan = repo
        .envctl()
        .args(["plan", "--branch", "feature/gone"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(plan.contains("masking pending → done"), "{plan}");
    repo.apply("feature/gone");
    assert_eq!(tags_of(&id)["envctl:masked"], "done");
    assert!(
        repo.envctl()
            .args(["url", "--branch", "feature/gone"])
            .output()
            .unwrap()
            .status
            .success()
    );
}

#[test]
fn a_branch_with_two_live_environments_is_neither_connected_to_nor_copied() {
    // A second database tagged as main's: url picked whichever sorted first, and a data branch
    // copied it.
    let repo = repo_with_main("data-two-mains");
    let main_db = repo.cluster_id("main").to_string();
    let other = &format!("envctl-aaa-{}", &main_db[main_db.len() - 8..]);
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{other}\""));
    admin_sql(&format!(
        "CREATE DATABASE \"{other}\" TEMPLATE \"{main_db}\""
    ));
    support::set_comment(other, support::comment_of(&main_db).trim());
    repo.envctl()
        .args(["url", "--branch", "main"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(format!(
            "branch `main` has 2 live environments (`{other}`, `{main_db}`): envctl does not choose one"
        )));
    repo.git(&["checkout", "-q", "-b", "feature/two"]);
    let applied = repo
        .envctl()
        .args(["apply", "--branch", "feature/two"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&applied.stderr);
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert!(!applied.status.success(), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("branch `main` has 2 live environments"),
        "{stdout}{stderr}"
    );
    assert!(
        repo.database_names()
            .iter()
            .all(|d| !d.contains("feature-two"))
    );
    // Nor does the review's diff compare with either.
    let review = repo
        .envctl()
        .args(["review", "--branch", "feature/two", "--against", "main"])
        .output()
        .unwrap();
    let review = String::from_utf8_lossy(&review.stdout).into_owned();
    assert!(
        review.contains("No diff: branch `main` has 2 live environments"),
        "{review}"
    );
    admin_sql(&format!("DROP DATABASE \"{other}\""));
}

#[test]
fn masking_calls_postgresql_s_own_functions_whatever_the_source_s_search_path() {
    // main's database puts a schema of its own first, with an `md5` that gives every value the
    // same digest: a copy keeps the setting, and the rules' unqualified md5 would call it.
    let repo = repo_with_main("data-search-path");
    let main_db = repo.cluster_id("main").to_string();
    repo.sql(
        "main",
        "CREATE SCHEMA shadow;
         CREATE FUNCTION shadow.md5(text) RETURNS text LANGUAGE sql
           AS $$ SELECT 'ffffffffffffffffffffffffffffffff' $$;
         CREATE FUNCTION shadow.gen_random_uuid() RETURNS uuid LANGUAGE sql
           AS $$ SELECT '00000000-0000-0000-0000-000000000000'::uuid $$;",
    );
    admin_sql(&format!(
        "ALTER DATABASE \"{main_db}\" SET search_path = shadow, pg_catalog, public"
    ));
    repo.git(&["checkout", "-q", "-b", "feature/shadowed"]);
    repo.apply("feature/shadowed");
    repo.git(&["checkout", "-q", "-b", "feature/shadowed-busy"]);
    assert_applied(&apply_while_main_is_held(&repo, "feature/shadowed-busy"));
    for branch in ["feature/shadowed", "feature/shadowed-busy"] {
        let emails = repo.sql(
            branch,
            "SELECT count(DISTINCT email) || ' ' || bool_or(email LIKE 'ffff%') FROM app.users",
        );
        assert_eq!(emails, "2 false", "{branch}");
        // The key is made by PostgreSQL's gen_random_uuid, not one that gives all zeros.
        assert_eq!(
            repo.sql(
                branch,
                "SELECT count(*) FROM app.users WHERE email = pg_catalog.md5(repeat('0', 64) || 'ada@example.com')"
            ),
            "0",
            "{branch}"
        );
        // The copy keeps main's setting for everything else.
        assert_eq!(
            repo.sql(branch, "SELECT current_setting('search_path')"),
            "shadow, pg_catalog, public",
            "{branch}"
        );
    }
}

#[test]
fn a_trigger_that_names_its_tables_by_the_database_s_search_path_still_fires_in_masking() {
    // A table with a trigger is masked by UPDATE, which fires it; its unqualified `audit_log`
    // is found through main's search_path, which the copy keeps (pinning the masking's path to
    // pg_catalog alone broke it).
    let repo = repo_with_main("data-audit-trigger");
    let main_db = repo.cluster_id("main").to_string();
    repo.sql(
        "main",
        "CREATE TABLE app.audited (id int, email text);
         CREATE TABLE app.audit_log (id int);
         INSERT INTO app.audited VALUES (1, 'eve@example.com');
         CREATE FUNCTION app.log() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN INSERT INTO audit_log VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER log BEFORE UPDATE ON app.audited FOR EACH ROW EXECUTE FUNCTION app.log();",
    );
    admin_sql(&format!(
        "ALTER DATABASE \"{main_db}\" SET search_path = app, public"
    ));
    with_rules(&repo, "      app.audited.email: email\n");
    repo.git(&["checkout", "-q", "-b", "feature/audited"]);
    repo.apply("feature/audited");
    assert_eq!(
        repo.sql(
            "feature/audited",
            "SELECT (SELECT count(*) FROM app.audit_log) || ' ' || (SELECT email LIKE 'user-%' FROM app.audited)"
        ),
        "1 true"
    );
}

#[test]
fn a_copy_s_settings_are_quoted_right_when_the_admin_s_strings_are_not_standard() {
    // On a server (its own, so no other test sees it) whose admin has
    // standard_conforming_strings off, a setting holding `\'` ended the literal early in
    // the statement that gave it to the copy. The error naming a setting names no value.
    let private = support::private::PrivateRepo::new("tests/data-scs");
    let dir = private.path();
    std::fs::write(
        dir.join("schemas/migrations/0004_users.sql"),
        USERS_MIGRATION,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("schemas/mask")).unwrap();
    std::fs::write(dir.join("schemas/mask/visits.sql"), VISITS_MASK).unwrap();
    let preview = std::fs::read_to_string(dir.join("environments/preview.yaml")).unwrap();
    let preview = preview.replace(
        "database:\n  name: postgres\n  user: postgres\n",
        PREVIEW_FROM_MAIN,
    );
    std::fs::write(dir.join("environments/preview.yaml"), preview).unwrap();
    private
        .envctl()
        .args(["apply", "--branch", "main"])
        .assert()
        .success();
    let admin = private.envctl().args(["local", "url"]).output().unwrap();
    let admin = String::from_utf8(admin.stdout).unwrap().trim().to_owned();
    let main_db = support::cluster_id("envctl", "tests/data-scs", "main").to_string();
    support::psql_at(
        &admin,
        &format!(
            "ALTER DATABASE \"{main_db}\" SET application_name = 'it\\''s';
             ALTER ROLE CURRENT_USER SET standard_conforming_strings = off;"
        ),
    );
    private
        .envctl()
        .args(["apply", "--branch", "feature/scs"])
        .assert()
        .success();
    let copy = support::cluster_id("envctl", "tests/data-scs", "feature/scs").to_string();
    let stored = support::psql_at(
        &admin,
        &format!(
            "SELECT array_to_string(s.setconfig, ';') FROM pg_db_role_setting s
               JOIN pg_database d ON d.oid = s.setdatabase
              WHERE d.datname = '{copy}' AND s.setrole = 0"
        ),
    );
    assert_eq!(stored.trim(), r"application_name=it\'s");
    support::private::stop(private.envctl());
}

#[test]
fn an_environment_outside_the_prefix_is_not_handed_out() {
    // A database tagged as this repository's `solo` branch, but whose id is outside the
    // prefix: status shows it as not envctl's; url and exec handed it out all the same.
    let repo = repo_with_main("data-outside");
    let main_db = repo.cluster_id("main").to_string();
    let outside = format!("zzz-outside-{}", &main_db[main_db.len() - 8..]);
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{outside}\""));
    admin_sql(&format!(
        "CREATE DATABASE \"{outside}\" TEMPLATE \"{main_db}\""
    ));
    support::set_comment(&outside, support::comment_of(&main_db).trim());
    set_metadata(&outside, "{tags,envctl:branch}", "\"solo\"");
    repo.envctl()
        .args(["url", "--branch", "solo"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("which envctl does not hand out"));
    admin_sql(&format!("DROP DATABASE \"{outside}\""));
}

#[test]
fn a_read_only_source_is_copied_and_migrated_on_the_first_apply() {
    let repo = repo_with_main("data-read-only");
    let main = repo.cluster_id("main").to_string();
    admin_sql(&format!(
        "ALTER DATABASE \"{main}\" SET default_transaction_read_only = on"
    ));
    repo.git(&["checkout", "-q", "-b", "feature/ro"]);
    repo.write(
        "schemas/migrations/0005_more.sql",
        "CREATE TABLE app.more (id integer);\n",
    );
    repo.commit("a migration of its own");
    repo.apply("feature/ro");
    assert_eq!(repo.applied_versions("feature/ro"), "1,2,3,4,5");
    // Sessions handed to users keep the database's own default.
    assert_eq!(
        repo.sql("feature/ro", "SHOW default_transaction_read_only"),
        "on"
    );
}

/// Runs `sql` on the shared server as role `user` (the admin's session, `SET ROLE`): what that
/// user may do with a database it can reach, whatever its password.
fn as_role(user: &str, sql: &str) -> std::process::Output {
    std::process::Command::new("psql")
        .arg(support::server_url())
        .args(["-v", "ON_ERROR_STOP=1", "-Atc"])
        .arg(format!("SET ROLE {user}; {sql}"))
        .output()
        .unwrap()
}

/// `apply --branch <branch>`, which must fail.
fn apply_fails(repo: &TestRepo, branch: &str) {
    let failed = repo
        .envctl()
        .args(["apply", "--branch", branch])
        .output()
        .unwrap();
    assert!(!failed.status.success(), "{failed:?}");
}

/// Whether database `id` is not `user`'s and takes no connection of theirs.
fn shut_from(id: &str, user: &str) -> bool {
    admin_sql(&format!(
        "SELECT pg_get_userbyid(datdba) <> '{user}', datconnlimit FROM pg_database WHERE datname = '{id}'"
    ))
    .trim()
        == "t|0"
}

#[test]
fn a_copy_is_not_its_user_s_until_its_masking_commits() {
    let user = "data_owner_user";
    let repo = repo_with_main_as("data-owner", user);
    repo.replace_in(
        "environments/preview.yaml",
        "      app.users.phone: null\n",
        "      app.users.phone: null\n      app.users.visits: fixed:lots\n",
    );
    repo.commit("a rule that fails");
    repo.git(&["checkout", "-q", "-b", "feature/own"]);
    let id = repo.cluster_id("feature/own").to_string();
    apply_fails(&repo, "feature/own");
    // Pending: the admin's, taking no connection of its user's, who cannot change either, nor
    // its tags.
    assert!(shut_from(&id, user));
    for sql in [
        format!("ALTER DATABASE \"{id}\" CONNECTION LIMIT -1"),
        format!("COMMENT ON DATABASE \"{id}\" IS '{{}}'"),
    ] {
        let tried = as_role(user, &sql);
        assert!(!tried.status.success(), "{sql}: allowed");
        assert!(
            String::from_utf8_lossy(&tried.stderr).contains("must be owner")
                || String::from_utf8_lossy(&tried.stderr).contains("permission denied"),
            "{tried:?}"
        );
    }
    assert_eq!(tags_of(&id)["envctl:masked"], "pending");
    // A pending copy its user owns (as an envctl from before copies were the admin's until
    // masked left one) is taken back by the next apply, before it masks.
    admin_sql(&format!("ALTER DATABASE \"{id}\" OWNER TO {user}"));
    apply_fails(&repo, "feature/own");
    assert!(shut_from(&id, user), "the pending copy was left its user's");
    // Masked, it is its user's, as any environment is.
    repo.replace_in(
        "environments/preview.yaml",
        "      app.users.visits: fixed:lots\n",
        "",
    );
    repo.commit("the rule fixed");
    repo.apply("feature/own");
    assert_eq!(
        admin_sql(&format!(
            "SELECT pg_get_userbyid(datdba), datconnlimit FROM pg_database WHERE datname = '{id}'"
        ))
        .trim(),
        format!("{user}|-1")
    );
    assert_eq!(
        repo.sql(
            "feature/own",
            "SELECT current_user, count(*) FROM app.users"
        ),
        format!("{user}|2")
    );
}

#[test]
fn a_busy_copy_masks_a_table_of_hundreds_of_masked_columns() {
    let repo = repo_with_main("data-wide");
    let columns: Vec<String> = (1..=400).map(|n| format!("c{n}")).collect();
    repo.sql(
        "main",
        &format!(
            "CREATE TABLE app.wide ({});
             INSERT INTO app.wide ({}) VALUES ({})",
            columns
                .iter()
                .map(|c| format!("{c} text"))
                .collect::<Vec<_>>()
                .join(", "),
            columns.join(", "),
            columns
                .iter()
                .map(|c| format!("'real {c}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let rules: String = columns
        .iter()
        .map(|c| format!("      app.wide.{c}: hash\n"))
        .collect();
    repo.replace_in(
        "environments/preview.yaml",
        "    mask:\n",
        &format!("    mask:\n{rules}"),
    );
    repo.commit("four hundred masked columns");
    repo.git(&["checkout", "-q", "-b", "feature/wide"]);
    assert_applied(&apply_while_main_is_held(&repo, "feature/wide"));
    assert_eq!(
        repo.sql(
            "feature/wide",
            "SELECT count(*) FROM app.wide WHERE c1 ~ '^[0-9a-f]{32}$' AND c400 ~ '^[0-9a-f]{32}$'"
        ),
        "1"
    );
}

#[test]
fn of_two_applies_at_once_only_the_one_that_copied_says_copied() {
    let repo = repo_with_main("data-two-applies");
    let main = repo.cluster_id("main").to_string();
    repo.git(&["checkout", "-q", "-b", "feature/twice"]);
    // The first apply's pg_dump waits on a lock; the second waits for the first's.
    let mut holder = psql_in_background(
        &repo.url("main"),
        "BEGIN; LOCK TABLE app.users; SELECT pg_sleep(60)",
    );
    let wait_for = |sql: &str, what: &str| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while admin_sql(sql).trim() == "0" {
            assert!(std::time::Instant::now() < until, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for(
        &format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE d.datname = '{main}' AND l.mode = 'AccessExclusiveLock' AND l.granted"
        ),
        "the lock was never taken",
    );
    let apply = || {
        repo.process(&["apply", "--branch", "feature/twice"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = apply();
    wait_for(
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' \
             AND wait_event_type = 'Lock' AND datname = '{main}'"
        ),
        "pg_dump never waited",
    );
    let second = apply();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = holder.kill();
    let _ = holder.wait();
    admin_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK TABLE app.users;%'",
    );
    let outputs: Vec<String> = [first, second]
        .into_iter()
        .map(|child| {
            let output = support::wait_at_most(child, std::time::Duration::from_secs(60), "apply");
            assert!(output.status.success(), "{output:?}");
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr)
        })
        .collect();
    let copied = outputs
        .iter()
        .filter(|o| o.contains(&format!("copied {main}")))
        .count();
    let found = outputs
        .iter()
        .filter(|o| o.contains("found it copied"))
        .count();
    assert_eq!((copied, found), (1, 1), "{outputs:#?}");
}

#[test]
fn a_copy_whose_masking_was_cut_off_plans_its_masking() {
    // A kill (a SIGINT lets the masking in flight finish, or not, as it happens to stand).
    let repo = repo_with_main("data-int-mask");
    repo.write(
        "schemas/mask/visits.sql",
        &format!("SELECT pg_sleep(3);\n{VISITS_MASK}"),
    );
    repo.commit("a slow masking file");
    repo.git(&["checkout", "-q", "-b", "feature/int"]);
    let (_, status) = signal_when_said(
        &repo,
        &["apply", "--branch", "feature/int"],
        "feature/int: masking",
        Signal::SIGKILL,
    );
    assert!(!status.success());
    let id = repo.cluster_id("feature/int").to_string();
    assert_eq!(tags_of(&id)["envctl:masked"], "pending");
    let plan = repo
        .envctl()
        .args(["plan", "--branch", "feature/int", "--detailed-exitcode"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(2), "{said}");
    assert!(said.contains("masking pending → done"), "{said}");
    repo.apply("feature/int");
    assert_eq!(
        repo.sql(
            "feature/int",
            "SELECT string_agg(visits::text, ',' ORDER BY id) FROM app.users"
        ),
        "1001,1002"
    );
}

#[test]
fn a_source_that_gives_public_no_connect_is_copied_and_its_user_connects_once_masked() {
    let user = "data_noconnect_user";
    let repo = repo_with_main_as("data-noconnect", user);
    let main = repo.cluster_id("main").to_string();
    admin_sql(&format!(
        "REVOKE ALL ON DATABASE \"{main}\" FROM PUBLIC; GRANT ALL ON DATABASE \"{main}\" TO {user}"
    ));
    repo.git(&["checkout", "-q", "-b", "feature/nc"]);
    repo.envctl()
        .args(["apply", "--branch", "feature/nc", "--wait-timeout", "20s"])
        .assert()
        .success();
    assert_eq!(
        repo.sql("feature/nc", "SELECT current_user, count(*) FROM app.users"),
        format!("{user}|2")
    );
}

#[test]
fn a_copy_left_the_admin_s_once_masked_is_handed_to_its_user_by_the_next_apply() {
    let user = "data_handover_user";
    let repo = repo_with_main_as("data-handover", user);
    repo.git(&["checkout", "-q", "-b", "feature/ho"]);
    repo.apply("feature/ho");
    let id = repo.cluster_id("feature/ho").to_string();
    // As an envctl from before copies were the admin's until masked leaves one it masks.
    admin_sql(&format!("ALTER DATABASE \"{id}\" OWNER TO postgres"));
    repo.write(
        "schemas/migrations/0005_schema.sql",
        "CREATE SCHEMA reports;\n",
    );
    repo.commit("a schema of its own, which takes the database's CREATE");
    repo.apply("feature/ho");
    assert_eq!(
        admin_sql(&format!(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{id}'"
        ))
        .trim(),
        user
    );
    assert_eq!(repo.applied_versions("feature/ho"), "1,2,3,4,5");
}

#[test]
fn a_copy_s_record_is_its_own_not_one_the_source_carried() {
    let user = "data_record_user";
    let repo = repo_with_main_as("data-record", user);
    // A table under the copy's record's name, the source user's, with a trigger that raises.
    repo.sql(
        "main",
        "CREATE SCHEMA IF NOT EXISTS envctl;
         CREATE TABLE envctl.masked_in_copy (cluster_id text, mask_id text, statement text);
         CREATE FUNCTION public.trap() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the trap fired as %', current_user; END $$;
         CREATE TRIGGER trap BEFORE INSERT OR DELETE ON envctl.masked_in_copy
           FOR EACH STATEMENT EXECUTE FUNCTION public.trap()",
    );
    repo.git(&["checkout", "-q", "-b", "feature/record"]);
    assert_applied(&apply_while_main_is_held(&repo, "feature/record"));
    // The copy's record is the admin's, made by this copy, with no trigger of the source's:
    // the masking trusts it (a record its user owns would be masked again by UPDATE).
    let id = repo.cluster_id("feature/record").to_string();
    assert_eq!(
        admin_sql_in(
            &id,
            "SELECT c.relowner::regrole::text, (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid) \
             FROM pg_class c WHERE c.oid = 'envctl.masked_in_copy'::regclass"
        )
        .trim(),
        "postgres|0"
    );
    assert_eq!(
        repo.sql(
            "feature/record",
            "SELECT count(*) FROM app.users WHERE email LIKE '%@example.com'"
        ),
        "0"
    );
}

#[test]
fn a_default_role_a_source_s_owner_gave_its_database_never_makes_masking_skip() {
    let user = "data_role_user";
    let repo = repo_with_main_as("data-role", user);
    // As main's owner: every session on the database (and on its copies, which keep its
    // settings) acts as that owner's role, and a masking record of the owner's whose `=`
    // always holds says any copy is masked.
    repo.sql(
        "main",
        &format!(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET role = {user}', current_database()); END $$;
             CREATE SCHEMA IF NOT EXISTS envctl;
             CREATE TYPE public.anyeq AS ENUM ('x');
             CREATE FUNCTION public.anyeq_text(public.anyeq, text) RETURNS boolean
               LANGUAGE sql IMMUTABLE AS 'SELECT true';
             CREATE OPERATOR public.= (LEFTARG = public.anyeq, RIGHTARG = text,
               FUNCTION = public.anyeq_text);
             CREATE TABLE envctl.masking (cluster_id public.anyeq, digest public.anyeq,
               masked_at timestamptz DEFAULT now(), mask_id public.anyeq);
             INSERT INTO envctl.masking VALUES ('x', 'x', now(), 'x')"
        ),
    );
    // The master user masks as itself: the owner's record is not its own, and is refused;
    // the copy stays pending, handed out to nobody. Whichever way it is copied.
    for (branch, busy) in [("feature/role", false), ("feature/role-busy", true)] {
        repo.git(&["checkout", "-q", "-b", branch]);
        let applied = match busy {
            true => apply_while_main_is_held(&repo, branch),
            false => repo
                .envctl()
                .args(["apply", "--branch", branch])
                .output()
                .unwrap(),
        };
        let said = String::from_utf8_lossy(&applied.stdout).into_owned()
            + &String::from_utf8_lossy(&applied.stderr);
        assert!(!applied.status.success(), "{branch}: {said}");
        assert!(
            said.contains("`envctl.masking` is not a table of the master user's"),
            "{branch}: {said}"
        );
        let id = repo.cluster_id(branch).to_string();
        assert_eq!(tags_of(&id)["envctl:masked"], "pending", "{branch}");
        repo.envctl()
            .args(["url", "--branch", branch])
            .assert()
            .failure();
    }
}

#[test]
fn a_masking_rule_on_a_column_the_source_does_not_have_blocks_before_anything_is_copied() {
    let repo = repo_with_main("data-missing-column");
    repo.replace_in(
        "environments/preview.yaml",
        "      app.users.phone: null\n",
        "      app.users.phone: null\n      app.users.id_hash: hash\n      app.gone.x: null\n",
    );
    repo.commit("rules on columns main does not have");
    repo.git(&["branch", "feature/m"]);
    let plan = repo
        .envctl()
        .args(["plan", "--branch", "feature/m"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert_eq!(plan.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "the source has no column `app.gone.x`, `app.users.id_hash`, which the masking rules name"
        ),
        "{said}"
    );
    repo.envctl()
        .args(["apply", "--branch", "feature/m"])
        .assert()
        .code(1);
    // Nothing was copied.
    let id = repo.cluster_id("feature/m");
    assert_eq!(support::database_count(id.as_str()), "0");
    assert_eq!(support::database_count(&format!("{id}-creating")), "0");
    // Rules on columns it has: copied.
    repo.replace_in(
        "environments/preview.yaml",
        "      app.users.id_hash: hash\n      app.gone.x: null\n",
        "",
    );
    repo.commit("rules on main's columns");
    repo.git(&["branch", "-f", "feature/m"]);
    repo.apply("feature/m");
}
