//! `envctl proxy` and `envctl exec --proxy` end to end: real clients (psql, node-postgres, sqlx)
//! through the real binary to real PostgreSQL servers: the shared test server (local provider),
//! private servers of a test's own (200 connections; a server that stops; TLS required), and the
//! AWS peer with the data-plane override on a TLS server that checks IAM tokens. A few cases
//! (MD5, a server that never answers) drive the library's proxy in-process against a real server.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use sqlx::{Connection, Row};
use support::TestRepo;
use support::certs::unrelated_ca;
use support::iam_ldap::IamLdap;
use support::peer::{Peer, SECRET_KEY, SESSION_TOKEN, run_prefix};
use support::proxy::ProxyProcess;
use support::tls::{PrivateServer, ServerOptions};

/// A spec whose branches `app/*` log in as their own user (roles are server-wide and each
/// belongs to one repository: every test has its own).
fn app_spec(user: &str) -> String {
    format!(
        "version: 1\nname: app\nbranches: [\"app/*\"]\ncluster:\n  engine: aurora-postgresql\n  express: true\n  scaling: {{ minAcu: 0, maxAcu: 2 }}\ndatabase:\n  user: {user}\n  schemaVersion: latest\n  seeds: [schemas/seeds/dummy.sql]\nlifecycle:\n  ttl: 1d\n"
    )
}

/// The user of a test's `app` spec.
fn user_of(name: &str) -> String {
    name.replace('-', "_")
}

/// What a token looks like wherever it appears.
const TOKEN_MARKERS: [&str; 3] = ["X-Amz-Signature", "X-Amz-Security-Token", "Action=connect"];

/// A repository with the `app` spec (user [`user_of`] the name), its `app/x` environment applied
/// on the shared server.
fn app_repo(name: &str) -> TestRepo {
    let repo = TestRepo::new(name);
    repo.write("environments/app.yaml", &app_spec(&user_of(name)));
    repo.commit("an app spec with its own user");
    repo.apply("app/x");
    repo
}

/// `envctl proxy --port 0 ARGS` for the repository.
fn start_proxy(repo: &TestRepo, args: &[&str]) -> ProxyProcess {
    let mut cmd = repo.process(&[]);
    cmd.args(["proxy", "--port", "0"]).args(args);
    ProxyProcess::start(cmd)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// psql with `url`, these extra environment variables and SQL; (success, stdout, stderr).
fn psql(url: &str, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let output = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-At"])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql runs (install postgresql-client)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn psql_ok(url: &str, sql: &str) -> String {
    let (ok, stdout, stderr) = psql(url, &[], &["-c", sql]);
    assert!(ok, "psql through the proxy failed: {stderr}");
    stdout.trim_end().to_owned()
}

#[test]
fn psql_through_the_proxy_queries_copies_prepares_and_reads_64_mib() {
    let repo = app_repo("proxy-psql");
    let proxy = start_proxy(&repo, &["--branch", "app/x"]);
    let id = repo.status()["environments"][0]["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The line: the port, then a URL without a password.
    assert_eq!(
        proxy.url,
        format!(
            "postgres://proxy_psql@127.0.0.1:{}/{id}?sslmode=disable",
            proxy.port
        )
    );
    assert_eq!(
        psql_ok(&proxy.url, "SELECT current_user, current_database()"),
        format!("proxy_psql|{id}")
    );
    // Whatever user and database the client names, it reaches the branch's as its user.
    let elsewhere = format!(
        "postgres://someone@127.0.0.1:{}/otherdb?sslmode=disable",
        proxy.port
    );
    assert_eq!(
        psql_ok(&elsewhere, "SELECT current_user, current_database()"),
        format!("proxy_psql|{id}")
    );
    // The client's start-up parameters reach the server unchanged.
    let (ok, out, err) = psql(
        &proxy.url,
        &[
            ("PGAPPNAME", "proxy-test"),
            ("PGOPTIONS", "-c search_path=audit,public -c work_mem=7MB"),
        ],
        &[
            "-c",
            "SELECT current_setting('application_name'), current_setting('search_path'), current_setting('work_mem')",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "proxy-test|audit,public|7MB");

    // COPY in and out.
    psql_ok(
        &proxy.url,
        "CREATE TABLE copied (n int, label text); CREATE TABLE IF NOT EXISTS prepared_check (n int)",
    );
    let rows: String = (1..=20_000).map(|n| format!("{n}\trow {n}\n")).collect();
    let mut copy_in = Command::new("psql")
        .arg(&proxy.url)
        .args(["-v", "ON_ERROR_STOP=1", "-c", "\\copy copied from stdin"])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    copy_in
        .stdin
        .take()
        .unwrap()
        .write_all(rows.as_bytes())
        .unwrap();
    let copied = copy_in.wait_with_output().unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert_eq!(
        psql_ok(&proxy.url, "SELECT count(*), sum(n) FROM copied"),
        "20000|200010000"
    );
    let copy_out = psql_ok(
        &proxy.url,
        "COPY (SELECT * FROM copied ORDER BY n) TO STDOUT",
    );
    assert_eq!(format!("{copy_out}\n"), rows);

    // Prepared statements, by SQL.
    assert_eq!(
        psql_ok(
            &proxy.url,
            "PREPARE twice(int) AS SELECT $1 * 2; EXECUTE twice(21); EXECUTE twice(50)"
        ),
        "PREPARE\n42\n100"
    );

    // A 64 MiB result arrives whole.
    let output = Command::new("psql")
        .arg(&proxy.url)
        .args([
            "-At",
            "-c",
            "SELECT repeat('x', 1048576) FROM generate_series(1, 64)",
        ])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout.len(), 64 * (1_048_576 + 1));
    assert!(output.stdout.iter().all(|b| *b == b'x' || *b == b'\n'));
}

#[test]
fn sqlx_through_the_proxy_prepares_copies_listens_and_reads_64_mib() {
    let repo = app_repo("proxy-sqlx");
    let proxy = start_proxy(&repo, &["--branch", "app/x"]);
    runtime().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&proxy.url).await.unwrap();
        // Prepared statements (the extended protocol), the second run from sqlx's cache.
        for n in [21i32, 50] {
            let doubled: i32 = sqlx::query_scalar("SELECT $1::int * 2")
                .bind(n)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(doubled, n * 2);
        }
        // COPY in and out.
        sqlx::raw_sql("CREATE TABLE copied (n int, label text)")
            .execute(&mut conn)
            .await
            .unwrap();
        let rows: String = (1..=5_000).map(|n| format!("{n}\tlabel {n}\n")).collect();
        let mut copy = conn.copy_in_raw("COPY copied FROM STDIN").await.unwrap();
        copy.send(rows.as_bytes()).await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), 5_000);
        use futures_util::TryStreamExt;
        let out: Vec<bytes::Bytes> = conn
            .copy_out_raw("COPY (SELECT * FROM copied ORDER BY n) TO STDOUT")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out.concat(), rows.as_bytes());
        // 64 MiB.
        let big = sqlx::query("SELECT repeat('x', 1048576) AS r FROM generate_series(1, 64)")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let bytes: usize = big.iter().map(|r| r.get::<String, _>("r").len()).sum();
        assert_eq!(bytes, 64 << 20);
        // LISTEN/NOTIFY between two connections through the proxy.
        let mut listener = sqlx::postgres::PgListener::connect(&proxy.url)
            .await
            .unwrap();
        listener.listen("envctl_proxy").await.unwrap();
        sqlx::query("SELECT pg_notify('envctl_proxy', 'hello')")
            .execute(&mut conn)
            .await
            .unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("a notification within 10 s")
            .unwrap();
        assert_eq!(
            (heard.channel(), heard.payload()),
            ("envctl_proxy", "hello")
        );
        conn.close().await.unwrap();
    });
}

/// Where the node tools are (`npm ci --prefix tests/node`).
fn node_script(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/pg").is_dir(),
        "node-postgres is not installed: run `npm ci --prefix tests/node` (.ci/run does)"
    );
    dir.join(name)
}

#[test]
fn exec_with_proxy_hands_the_command_a_proxy_and_no_password() {
    let repo = app_repo("proxy-exec");
    let id = repo.status()["environments"][0]["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // node-postgres: queries, a named prepared statement, LISTEN/NOTIFY, 64 MiB.
    let node = repo
        .envctl()
        .args(["exec", "--proxy", "--branch", "app/x", "--", "node"])
        .arg(node_script("proxy.mjs"))
        .output()
        .unwrap();
    assert!(
        node.status.success(),
        "{}",
        String::from_utf8_lossy(&node.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&node.stdout).unwrap();
    assert_eq!(seen["user"], "proxy_exec");
    assert_eq!(seen["database"], id.as_str());
    assert_eq!(seen["doubled"], serde_json::json!([42, 100]));
    assert_eq!(
        seen["notification"],
        serde_json::json!({"channel": "envctl_proxy", "payload": "through the proxy"})
    );
    assert_eq!(seen["bigBytes"], 64 << 20);
    assert_eq!(seen["password"], serde_json::Value::Null);
    let url = seen["url"].as_str().unwrap();
    assert!(
        url.starts_with("postgres://proxy_exec@127.0.0.1:") && url.ends_with("?sslmode=disable"),
        "{url}"
    );

    // The PG* variables point at the proxy too, psql uses them, and the child's status is
    // envctl's.
    let shell = repo
        .envctl()
        .args(["exec", "--proxy", "--branch", "app/x", "--", "sh", "-c"])
        .arg("echo \"${PGPASSWORD-unset} $PGHOST $PGSSLMODE $PGUSER\"; psql -Atc 'SELECT current_user' && exit 3")
        .output()
        .unwrap();
    assert_eq!(
        shell.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&shell.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&shell.stdout),
        "unset 127.0.0.1 disable proxy_exec\nproxy_exec\n"
    );
    // The caller's libpq variables that would take the child elsewhere are not passed on: a
    // PGHOSTADDR would have had the password sent to another address, a service another
    // database reached (both the proxy's and the direct way).
    for proxied in [true, false] {
        let mut args = vec!["exec"];
        if proxied {
            args.push("--proxy");
        }
        args.extend(["--branch", "app/x", "--", "sh", "-c"]);
        let env = repo
            .envctl()
            .args(&args)
            .arg("echo ${PGHOSTADDR-unset} ${PGSERVICE-unset} ${PGSERVICEFILE-unset} ${PGREQUIREAUTH-unset}")
            .env("PGHOSTADDR", "127.0.0.5")
            .env("PGSERVICE", "mine")
            .env("PGSERVICEFILE", "/tmp/elsewhere.conf")
            .env("PGREQUIREAUTH", "scram-sha-256")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&env.stdout),
            "unset unset unset unset\n",
            "--proxy {proxied}: {}",
            String::from_utf8_lossy(&env.stderr)
        );
    }
    // Without --proxy, exec hands out the password as before.
    let direct = repo
        .envctl()
        .args([
            "exec",
            "--branch",
            "app/x",
            "--",
            "sh",
            "-c",
            "echo ${PGPASSWORD:+set}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "set\n");
}

/// Waits until a query of `application_name` runs on the shared server.
fn wait_until_running(application_name: &str) {
    wait_for_sleeps(
        application_name,
        1,
        "the query never ran",
        Duration::from_secs(20),
    );
}

/// Waits until the server runs `want` `pg_sleep` queries of `application_name`'s, failing with
/// `failure` after `within`.
fn wait_for_sleeps(application_name: &str, want: u32, failure: &str, within: Duration) {
    let start = Instant::now();
    while support::admin_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}' AND query LIKE '%pg_sleep%' AND state = 'active'"
    ))
    .trim()
        != want.to_string()
    {
        assert!(start.elapsed() < within, "{failure}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// psql running `sql` through the proxy as `application_name`, in the background.
fn psql_in_background(url: &str, application_name: &str, sql: &str) -> std::process::Child {
    Command::new("psql")
        .arg(url)
        .args(["-Atc", sql])
        .env("PGAPPNAME", application_name)
        .env_remove("PGPASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_cancel_from_psql_returns_within_two_seconds() {
    let repo = app_repo("proxy-cancel");
    // One connection at most: the session being cancelled fills the proxy, and its cancel
    // request, which holds no session, must still get through.
    let proxy = start_proxy(
        &repo,
        &["--branch", "app/x", "-v", "--max-connections", "1"],
    );
    let sleeper = psql_in_background(&proxy.url, "proxy-cancel-test", "SELECT pg_sleep(30)");
    wait_until_running("proxy-cancel-test");
    let interrupted = Instant::now();
    support::proxy::signal(sleeper.id(), Signal::SIGINT);
    let mut sleeper = sleeper;
    let output = loop {
        if sleeper.try_wait().unwrap().is_some() {
            break sleeper.wait_with_output().unwrap();
        }
        assert!(
            interrupted.elapsed() < Duration::from_secs(10),
            "psql did not return after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = interrupted.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(2), "the cancel took {took:?}");
    proxy.wait_for_stderr("cancel request sent to backend", Duration::from_secs(5));
}

#[test]
fn two_hundred_concurrent_clients_and_the_limit_past_them() {
    let server = PrivateServer::start(ServerOptions {
        tls: false,
        max_connections: 260,
        hba: vec!["all all 127.0.0.1/32 scram-sha-256".into()],
    });
    let repo = TestRepo::new("proxy-many");
    repo.write("environments/app.yaml", &app_spec("app"));
    repo.commit("an app spec with its own user");
    let local = |cmd: &mut Command| {
        cmd.env("ENVCTL_LOCAL_URL", server.url());
    };
    let mut apply = repo.process(&[]);
    local(&mut apply);
    let applied = apply.args(["apply", "--branch", "app/x"]).output().unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let mut cmd = repo.process(&[]);
    local(&mut cmd);
    cmd.args([
        "proxy",
        "--port",
        "0",
        "--branch",
        "app/x",
        "--max-connections",
        "200",
    ]);
    let proxy = ProxyProcess::start(cmd);
    runtime().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
        for n in 0..200i32 {
            let url = proxy.url.clone();
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                // All 200 are open at once before any goes.
                barrier.wait().await;
                let row = sqlx::query("SELECT $1::int AS n, pg_backend_pid() AS pid")
                    .bind(n)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(row.get::<i32, _>("n"), n);
                let pid: i32 = row.get("pid");
                // Hold the connection until every client has its answer.
                (pid, conn)
            });
        }
        let mut held = Vec::new();
        while let Some(result) = tasks.join_next().await {
            held.push(result.unwrap());
        }
        let mut pids: Vec<i32> = held.iter().map(|(pid, _)| *pid).collect();
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), 200, "each client has a backend of its own");
        // The 201st is refused, saying why.
        let refused = sqlx::PgConnection::connect(&proxy.url).await.unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains("too many clients") && text.contains("200"),
            "{text}"
        );
        for (_, conn) in held {
            conn.close().await.unwrap();
        }
        // Once they are closed, new clients come in again. A client's close
        // returns before the proxy has seen it and let its slot go (as with
        // PostgreSQL's own backends), so the slots come back within moments,
        // not at once: until then the refusal is the limit's, nothing else.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut again = loop {
            match sqlx::PgConnection::connect(&proxy.url).await {
                Ok(conn) => break conn,
                Err(error) if Instant::now() < deadline => {
                    let text = error.to_string();
                    assert!(text.contains("too many clients"), "{text}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("the closed clients' slots never came back: {error}"),
            }
        };
        sqlx::query("SELECT 1").execute(&mut again).await.unwrap();
    });
}

#[test]
fn an_upstream_killed_mid_query_fails_its_client_and_the_proxy_serves_on() {
    let repo = app_repo("proxy-killed");
    let proxy = start_proxy(&repo, &["--branch", "app/x"]);
    runtime().block_on(async {
        let mut victim = sqlx::PgConnection::connect(&proxy.url).await.unwrap();
        let mut bystander = sqlx::PgConnection::connect(&proxy.url).await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut victim)
            .await
            .unwrap();
        let sleeping = tokio::spawn(async move {
            let result = sqlx::query("SELECT pg_sleep(30)")
                .execute(&mut victim)
                .await;
            (result, victim)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = Instant::now();
        assert_eq!(
            support::admin_sql(&format!("SELECT pg_terminate_backend({pid})")).trim(),
            "t"
        );
        let (result, _victim) = tokio::time::timeout(Duration::from_secs(10), sleeping)
            .await
            .expect("the killed query returns")
            .unwrap();
        let error = result.expect_err("the killed query fails").to_string();
        assert!(
            error.contains("terminating connection due to administrator command"),
            "{error}"
        );
        assert!(killed.elapsed() < Duration::from_secs(5));
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut bystander)
            .await
            .unwrap();
        assert_eq!(one, 1);
        let mut newcomer = sqlx::PgConnection::connect(&proxy.url).await.unwrap();
        let two: i32 = sqlx::query_scalar("SELECT 2")
            .fetch_one(&mut newcomer)
            .await
            .unwrap();
        assert_eq!(two, 2);
    });
}

/// A client speaking just enough of the protocol to start a large result and vanish.
fn vanish_mid_result(port: u16, application_name: &str) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let startup = envctl::proxy::wire::StartupMessage {
        version: 196_608,
        params: vec![
            (b"user".to_vec(), b"anyone".to_vec()),
            (
                b"application_name".to_vec(),
                application_name.as_bytes().to_vec(),
            ),
        ],
    };
    socket.write_all(&startup.encode()).unwrap();
    // Up to ReadyForQuery ('Z', length 5, status).
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(6).any(|w| w == b"Z\x00\x00\x00\x05I") {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "the proxy closed during start-up: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    let sql = b"SELECT repeat('x', 1048576) FROM generate_series(1, 512)\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((4 + sql.len()) as i32).to_be_bytes());
    query.extend_from_slice(sql);
    socket.write_all(&query).unwrap();
    let mut read = 0;
    while read < 256 * 1024 {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0);
        read += n;
    }
    // Gone, with unread data: the kernel resets the connection.
    drop(socket);
}

/// The `(open connections: N, tasks: T)` of the proxy's line for connection `id`.
fn closed_counts(stderr: &str, id: u64) -> (usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("connection {id} closed")))
        .unwrap_or_else(|| panic!("no close line for connection {id}:\n{stderr}"));
    let open = line
        .split("open connections: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let tasks = line
        .split("tasks: ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .parse()
        .unwrap();
    (open, tasks)
}

#[test]
fn a_client_that_vanishes_mid_result_leaks_no_descriptor_task_or_backend() {
    let repo = app_repo("proxy-vanish");
    let proxy = start_proxy(&repo, &["--branch", "app/x", "-v"]);
    // Idle counts, after one ordinary connection came and went.
    psql_ok(&proxy.url, "SELECT 1");
    let stderr = proxy.wait_for_stderr("connection 1 closed", Duration::from_secs(10));
    let idle = closed_counts(&stderr, 1);
    assert_eq!(idle.0, 0);
    let idle_fds = proxy.open_fds();

    for round in 0..3u64 {
        vanish_mid_result(proxy.port, "proxy-vanish-test");
        let id = 2 + round;
        let stderr =
            proxy.wait_for_stderr(&format!("connection {id} closed"), Duration::from_secs(20));
        assert_eq!(closed_counts(&stderr, id), idle, "{stderr}");
    }
    let start = Instant::now();
    loop {
        let fds = proxy.open_fds();
        let backends = support::admin_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'proxy-vanish-test'",
        );
        if fds == idle_fds && backends.trim() == "0" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "after the clients vanished: {fds} descriptors (idle: {idle_fds}), {} backends",
            backends.trim()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_open_connections_and_a_second_signal_closes_them() {
    let repo = app_repo("proxy-drain");
    let mut proxy = start_proxy(&repo, &["--branch", "app/x", "--drain", "10s"]);
    let running = psql_in_background(
        &proxy.url,
        "proxy-drain-finishes",
        "SELECT pg_sleep(1.5), 'finished'",
    );
    wait_until_running("proxy-drain-finishes");
    proxy.signal(Signal::SIGTERM);
    proxy.wait_for_stderr("stopped listening", Duration::from_secs(5));
    // No new connections.
    assert!(
        TcpStream::connect(("127.0.0.1", proxy.port)).is_err(),
        "the proxy still accepts"
    );
    let finished = running.wait_with_output().unwrap();
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&finished.stdout).trim(),
        "|finished"
    );
    let status = proxy.wait(Duration::from_secs(5)).expect("the proxy exits");
    assert_eq!(status.code(), Some(143));

    // A connection still busy when the drain period ends is closed.
    let mut proxy = start_proxy(&repo, &["--branch", "app/x", "--drain", "1s", "-v"]);
    let busy = psql_in_background(&proxy.url, "proxy-drain-closed", "SELECT pg_sleep(30)");
    wait_until_running("proxy-drain-closed");
    let signalled = Instant::now();
    proxy.signal(Signal::SIGINT);
    let status = proxy
        .wait(Duration::from_secs(10))
        .expect("the proxy exits");
    assert_eq!(status.code(), Some(130));
    assert!(signalled.elapsed() >= Duration::from_millis(900));
    assert!(proxy.stderr().contains("closed 1 connection still open"));
    assert!(
        proxy
            .stderr()
            .contains("sent a cancel request for 1 of the 1 connection closed"),
        "{}",
        proxy.stderr()
    );
    let output = support::wait_at_most(busy, Duration::from_secs(10), "psql");
    assert!(!output.status.success());
    // Told why, as PostgreSQL's own shutdown tells it (not "server closed the connection
    // unexpectedly").
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains(
            "terminating connection due to administrator command (the proxy is stopping)"
        ),
        "{said}"
    );
    // Its query stopped on the server too (a cancel went with the close).
    wait_until_stopped("proxy-drain-closed");

    // A second signal closes at once.
    let mut proxy = start_proxy(&repo, &["--branch", "app/x", "--drain", "60s"]);
    let busy = psql_in_background(&proxy.url, "proxy-drain-second", "SELECT pg_sleep(30)");
    wait_until_running("proxy-drain-second");
    proxy.signal(Signal::SIGTERM);
    proxy.wait_for_stderr("stopped listening", Duration::from_secs(5));
    let second = Instant::now();
    proxy.signal(Signal::SIGTERM);
    let status = proxy.wait(Duration::from_secs(5)).expect("the proxy exits");
    assert_eq!(status.code(), Some(143));
    assert!(second.elapsed() < Duration::from_secs(3));
    let output = support::wait_at_most(busy, Duration::from_secs(10), "psql");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the proxy is stopping"),
        "{output:?}"
    );
    wait_until_stopped("proxy-drain-second");
}

#[test]
fn a_drain_that_ends_inside_a_result_never_puts_its_error_inside_a_message() {
    let repo = app_repo("proxy-drain-mid-row");
    let mut proxy = start_proxy(&repo, &["--branch", "app/x", "--drain", "1s"]);
    let mut socket = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let startup = envctl::proxy::wire::StartupMessage {
        version: 196_608,
        params: vec![(b"user".to_vec(), b"anyone".to_vec())],
    };
    socket.write_all(&startup.encode()).unwrap();
    let mut stream = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !stream.windows(6).any(|w| w == b"Z\x00\x00\x00\x05I") {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "the proxy closed during start-up");
        stream.extend_from_slice(&buf[..n]);
    }
    stream.clear();
    // Rows of 1 MiB of `x`, read slowly: the drain ends while the client is inside one.
    let sql = b"SELECT repeat('x', 1048576) FROM generate_series(1, 4096)\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((4 + sql.len()) as i32).to_be_bytes());
    query.extend_from_slice(sql);
    socket.write_all(&query).unwrap();
    let n = socket.read(&mut buf).unwrap();
    stream.extend_from_slice(&buf[..n]);
    proxy.signal(Signal::SIGTERM);
    let started = Instant::now();
    loop {
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => stream.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never closed");
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = proxy
        .wait(Duration::from_secs(10))
        .expect("the proxy exits");
    assert_eq!(status.code(), Some(143));
    // Every message whole and the server's (RowDescription, then DataRows of x), but the last,
    // cut off: what it holds is that row's bytes, nothing of the proxy's.
    let mut rest = &stream[..];
    let mut rows = 0;
    while rest.len() >= 5 {
        let kind = rest[0];
        let length = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let whole = rest.len() > length;
        let body = &rest[5..(1 + length).min(rest.len())];
        match kind {
            b'T' => assert!(whole),
            b'D' => {
                // Column count (2 bytes) and the value's length (4), then the value.
                assert!(
                    body.iter().skip(6).all(|&b| b == b'x'),
                    "a row holds bytes that are not its own, after {rows} rows"
                );
                rows += 1;
            }
            // Where the drain ended between two rows, the proxy says why, last.
            b'E' => assert!(whole && rest.len() == 1 + length, "an error before the end"),
            other => panic!(
                "message {:?} inside the result, after {rows} rows",
                other as char
            ),
        }
        if !whole {
            break;
        }
        rest = &rest[1 + length..];
    }
    assert!(
        rows > 0 && rows < 4096,
        "{rows} rows: the drain did not end inside the result"
    );
}

/// Waits (up to 5 s) until the server runs no query of `application_name`'s: a backend whose
/// client went away runs its query on to its end unless it is cancelled (here, 30 s).
fn wait_until_stopped(application_name: &str) {
    wait_for_sleeps(
        application_name,
        0,
        &format!("`{application_name}`'s query still runs on the server after the proxy closed it"),
        Duration::from_secs(5),
    );
}

#[test]
fn a_taken_port_and_an_address_outside_loopback_are_refused_clearly() {
    let repo = app_repo("proxy-port");
    let proxy = start_proxy(&repo, &["--branch", "app/x"]);
    let second = repo
        .envctl()
        .args([
            "proxy",
            "--branch",
            "app/x",
            "--port",
            &proxy.port.to_string(),
        ])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("error: cannot start the proxy")
            && stderr.contains(&format!("`127.0.0.1:{}` is already in use", proxy.port))
            && stderr.contains("hint:")
            && stderr.contains("--port 0"),
        "{stderr}"
    );
    assert!(second.stdout.is_empty());

    // An address given with the port is not a way around `--address`.
    let sneaky = repo
        .envctl()
        .args(["proxy", "--branch", "app/x", "--port", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(sneaky.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&sneaky.stderr);
    assert!(
        stderr.contains("not a port number") && stderr.contains("--address"),
        "{stderr}"
    );
    // With `--address`, it listens there and warns.
    let open = start_proxy(&repo, &["--branch", "app/x", "--address", "0.0.0.0"]);
    assert!(open.url.contains("@0.0.0.0:"), "{}", open.url);
    assert!(
        open.stderr().contains(
            "warning: listening on `0.0.0.0`, not loopback: anyone who reaches it gets the database"
        ),
        "{}",
        open.stderr()
    );
    let via_loopback = format!("postgres://x@127.0.0.1:{}/x?sslmode=disable", open.port);
    assert_eq!(psql_ok(&via_loopback, "SELECT current_user"), "proxy_port");
}

#[test]
fn all_serves_every_live_environment_by_branch_or_cluster_id() {
    let repo = app_repo("proxy-all");
    repo.apply("app/y");
    let proxy = start_proxy(&repo, &["--all", "--json"]);
    let line: serde_json::Value = serde_json::from_str(&proxy.line).unwrap();
    let environments = line["environments"].as_array().unwrap();
    let branches: Vec<&str> = environments
        .iter()
        .map(|e| e["branch"].as_str().unwrap())
        .collect();
    assert_eq!(branches, ["app/x", "app/y"]);
    for env in environments {
        let url = env["url"].as_str().unwrap();
        assert_eq!(url::Url::parse(url).unwrap().password(), None, "{url}");
        // By the branch (its URL), and by the cluster id.
        let id = env["cluster_id"].as_str().unwrap();
        assert_eq!(
            psql_ok(url, "SELECT current_database(), current_user"),
            format!("{id}|proxy_all")
        );
        let by_id = format!(
            "postgres://app@127.0.0.1:{}/{id}?sslmode=disable",
            proxy.port
        );
        assert_eq!(psql_ok(&by_id, "SELECT current_database()"), id);
    }
    let unknown = format!(
        "postgres://app@127.0.0.1:{}/app%2Fz?sslmode=disable",
        proxy.port
    );
    let (ok, _, stderr) = psql(&unknown, &[], &["-c", "SELECT 1"]);
    assert!(!ok);
    assert!(
        stderr
            .contains("no live environment for database `app/z`: name a branch (`app/x`, `app/y`)"),
        "{stderr}"
    );
    // A database name with a terminal escape and a line of its own reaches neither the client
    // nor the proxy's log as such.
    let hostile = format!(
        "postgres://app@127.0.0.1:{}/x%1B%5D0%3Bpwned%07%0A2026-01-01T00:00:00Z%20error%3A%20forged?sslmode=disable",
        proxy.port
    );
    let (ok, _, stderr) = psql(&hostile, &[], &["-c", "SELECT 1"]);
    assert!(!ok);
    assert!(
        stderr.contains(r"database `x\u{1b}]0;pwned\u{7}\n2026"),
        "{stderr}"
    );
    let log = proxy.wait_for_stderr("pwned", Duration::from_secs(5));
    assert!(!log.contains('\u{1b}') && !log.contains('\u{7}'), "{log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "{log}"
    );
}

#[test]
fn a_server_that_went_away_reaches_the_client_as_an_error_and_the_log_once() {
    let server = PrivateServer::start(ServerOptions {
        tls: false,
        ..ServerOptions::default()
    });
    let repo = TestRepo::new("proxy-gone");
    let mut apply = repo.process(&[]);
    apply
        .env("ENVCTL_LOCAL_URL", server.url())
        .args(["apply", "--branch", "main"]);
    let applied = apply.output().unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let mut cmd = repo.process(&[]);
    cmd.env("ENVCTL_LOCAL_URL", server.url())
        .args(["proxy", "--port", "0", "--branch", "main"]);
    let proxy = ProxyProcess::start(cmd);
    server.stop();
    let (ok, _, stderr) = psql(&proxy.url, &[], &["-c", "SELECT 1"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "envctl proxy: `main`: cannot reach `127.0.0.1:{}`",
            server.port
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("HINT:  check that the environment is up"),
        "{stderr}"
    );
    let log = proxy.wait_for_stderr("cannot reach", Duration::from_secs(5));
    assert_eq!(log.matches("cannot reach").count(), 1, "{log}");
    assert!(
        log.contains("error: connection 1: `main`: cannot reach"),
        "{log}"
    );
    assert!(!log.contains(&server.admin_password), "{log}");
}

/// A proxy in this process for one hand-made upstream; its address.
async fn proxy_in_process(
    upstream: envctl::provider::upstream::Upstream,
    connect_timeout: Duration,
) -> std::net::SocketAddr {
    let route = envctl::proxy::Route::ready("test", upstream).unwrap();
    let options = envctl::proxy::Options {
        max_connections: 10,
        drain: Duration::ZERO,
        idle_timeout: None,
        connect_timeout,
        reporter: envctl::report::Reporter::new(envctl::cli::ColorChoice::Never, true, 0),
    };
    let proxy = envctl::proxy::Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        envctl::proxy::Routing::One(std::sync::Arc::new(route)),
        options,
    )
    .await
    .unwrap();
    let address = proxy.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(envctl::proxy::Stop::Running);
    tokio::spawn(async move {
        let _stop = stop;
        proxy.serve(stopped).await
    });
    address
}

#[test]
fn md5_logins_work_and_the_servers_own_errors_reach_the_client_unchanged() {
    use envctl::provider::upstream::{Credential, Secret, TlsMode, TlsRules, Upstream};
    let server = PrivateServer::start(ServerOptions {
        tls: true,
        max_connections: 20,
        hba: vec!["all md5user 127.0.0.1/32 md5".into()],
    });
    server.sql(
        "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'right horse battery'",
    );
    assert!(
        server
            .sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'")
            .starts_with("md5")
    );
    let upstream = |password: &str| Upstream {
        cluster_id: envctl::model::ClusterId::from_live("test"),
        host: "127.0.0.1".into(),
        port: server.port,
        database: "postgres".into(),
        user: "md5user".into(),
        tls: TlsRules {
            mode: TlsMode::VerifyFull,
            root_cert: server.ca.clone(),
        },
        credential: Credential::Password(Secret::new(password.into())),
    };
    runtime().block_on(async {
        let good = proxy_in_process(upstream("right horse battery"), Duration::from_secs(10)).await;
        let url = format!("postgres://x@{good}/x?sslmode=disable");
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let row = sqlx::query(
            "SELECT current_user::text AS who, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>("who"), "md5user");
        assert!(row.get::<bool, _>("ssl"), "the proxy's connection uses TLS");

        let bad = proxy_in_process(upstream("wrong"), Duration::from_secs(10)).await;
        let url = format!("postgres://x@{bad}/x?sslmode=disable");
        let error = sqlx::PgConnection::connect(&url).await.unwrap_err();
        let db = error.as_database_error().expect("a server error");
        assert_eq!(db.code().as_deref(), Some("28P01"));
        assert_eq!(
            db.message(),
            "password authentication failed for user \"md5user\""
        );
    });
}

#[test]
fn a_server_that_never_answers_fails_at_the_connect_timeout_saying_why() {
    use envctl::provider::upstream::{Credential, TlsRules, Upstream};
    // Connections complete in the kernel's backlog and nobody answers: as a paused cluster
    // holds them while it resumes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    runtime().block_on(async {
        let address = proxy_in_process(
            Upstream {
                cluster_id: envctl::model::ClusterId::from_live("paused"),
                host: "127.0.0.1".into(),
                port,
                database: "postgres".into(),
                user: "app".into(),
                tls: TlsRules::disabled(),
                credential: Credential::None,
            },
            Duration::from_secs(1),
        )
        .await;
        let started = Instant::now();
        let url = format!("postgres://x@{address}/x?sslmode=disable");
        let error = sqlx::PgConnection::connect(&url).await.unwrap_err();
        let took = started.elapsed();
        let db = error.as_database_error().expect("an error from the proxy");
        assert_eq!(db.code().as_deref(), Some("08001"));
        assert_eq!(
            db.message(),
            format!(
                "envctl proxy: `test`: `127.0.0.1:{port}` did not let the connection in within 1s"
            )
        );
        let pg = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .unwrap();
        assert!(
            pg.hint()
                .unwrap()
                .contains("a paused cluster takes some seconds to resume")
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{took:?}"
        );
    });
    drop(silent);
}

/// The AWS provider against the peer, its data plane on a TLS server that checks IAM tokens.
struct AwsTls {
    repo: TestRepo,
    peer: Peer,
    server: PrivateServer,
    ldap: IamLdap,
    prefix: String,
}

impl AwsTls {
    fn new(name: &str) -> AwsTls {
        let credentials = aws_credential_types::Credentials::new(
            "AKIAENVCTLTESTKEY",
            SECRET_KEY,
            Some(SESSION_TOKEN.to_owned()),
            None,
            "test",
        );
        let ldap = IamLdap::start(credentials, "us-east-1");
        let server = PrivateServer::start(ServerOptions {
            tls: true,
            max_connections: 50,
            hba: vec![ldap.hba_line("app")],
        });
        let repo = TestRepo::new(name);
        repo.write("environments/app.yaml", &app_spec("app"));
        repo.commit("an app spec with its own user");
        AwsTls {
            repo,
            peer: Peer::start(&[]),
            server,
            ldap,
            prefix: run_prefix(),
        }
    }

    /// envctl on AWS: the data plane overridden to the TLS server with `root` as the CA bundle.
    fn process(&self, root: &std::path::Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_envctl"));
        cmd.arg("-C")
            .arg(self.repo.path())
            .args(["--repo", &self.repo.repo, "--provider", "aws"]);
        for (key, value) in self.peer.environment() {
            cmd.env(key, value);
        }
        let url = format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.server.admin_password,
            self.server.port,
            root.display()
        );
        cmd.env("ENVCTL_DATA_PLANE_OVERRIDE", url)
            .env("ENVCTL_DATA_PLANE_OVERRIDE_AUTH", "iam")
            .env("ENVCTL_PREFIX", &self.prefix)
            .env_remove("ENVCTL_LOCAL_URL")
            .env_remove("PGSSLROOTCERT")
            .env_remove("PGSSLMODE");
        cmd
    }
}

#[test]
fn on_aws_every_connection_signs_a_new_token_over_verified_tls() {
    let aws = AwsTls::new("proxy-aws");
    let ca = aws.server.ca.clone().unwrap();
    let applied = aws
        .process(&ca)
        .args(["apply", "--branch", "app/x"])
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let mut cmd = aws.process(&ca);
    cmd.args(["-v", "proxy", "--port", "0", "--branch", "app/x", "--json"]);
    let proxy = ProxyProcess::start(cmd);
    let before = aws.ldap.binds().len();
    let mut connected_at = Vec::new();
    for n in 0..3 {
        if n > 0 {
            // Tokens carry the second they were signed: a token reused would show an older one.
            std::thread::sleep(Duration::from_millis(1100));
        }
        connected_at.push(SystemTime::now());
        assert_eq!(
            psql_ok(
                &proxy.url,
                "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ),
            "app|t"
        );
    }
    let binds: Vec<_> = aws.ldap.binds().into_iter().skip(before).collect();
    assert_eq!(binds.len(), 3, "one login per connection: {binds:?}");
    for (bind, connected) in binds.iter().zip(&connected_at) {
        assert_eq!(bind.user, "app");
        assert!(bind.accepted, "a valid token for `app`: {bind:?}");
        let signed = bind.signed_at.unwrap();
        // Signed for this connection: not before the second the client connected in.
        let floor = connected
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let signed_secs = signed
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(signed_secs >= floor, "a token signed before its connection");
    }
    let mut tokens: Vec<&str> = binds.iter().map(|b| b.token.as_str()).collect();
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "every connection has a token of its own");
    // No token or secret in what the proxy printed.
    for text in [proxy.line.clone(), proxy.stderr()] {
        for marker in TOKEN_MARKERS.iter().chain([&SECRET_KEY, &SESSION_TOKEN]) {
            assert!(
                !text.contains(marker),
                "{marker} in the proxy's output:\n{text}"
            );
        }
        for bind in &binds {
            assert!(!text.contains(&bind.token));
        }
    }
    // The cluster's database, as the spec's user, on the override server.
    let line: serde_json::Value = serde_json::from_str(&proxy.line).unwrap();
    assert_eq!(line["environments"][0]["user"], "app");
    assert!(
        line["environments"][0]["cluster_id"]
            .as_str()
            .unwrap()
            .starts_with(&aws.prefix)
    );
}

#[test]
fn on_aws_a_server_certificate_from_another_ca_is_refused() {
    let aws = AwsTls::new("proxy-aws-ca");
    let ca = aws.server.ca.clone().unwrap();
    let applied = aws
        .process(&ca)
        .args(["apply", "--branch", "app/x"])
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let other = unrelated_ca(aws.repo.path());
    let mut cmd = aws.process(&other);
    cmd.args(["proxy", "--port", "0", "--branch", "app/x"]);
    let proxy = ProxyProcess::start(cmd);
    let before = aws.ldap.binds().len();
    let (ok, _, stderr) = psql(&proxy.url, &[], &["-c", "SELECT 1"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "envctl proxy: `app/x`: TLS with `127.0.0.1:{}` failed",
            aws.server.port
        )) && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    assert!(stderr.contains("PGSSLROOTCERT"), "{stderr}");
    // No token went to a server that could not prove who it is.
    assert_eq!(aws.ldap.binds().len(), before);
    let log = proxy.wait_for_stderr("TLS with", Duration::from_secs(5));
    assert_eq!(log.matches("TLS with").count(), 1, "{log}");
}

#[test]
fn an_idle_timeout_tells_the_client_and_stops_the_query_it_left() {
    // No traffic either way while a query runs is idle too: the client is told why, and the
    // query, which its backend would run on to its end, is cancelled.
    let repo = app_repo("proxy-idle");
    let proxy = start_proxy(&repo, &["--branch", "app/x", "--idle-timeout", "1s"]);
    let sleeper = psql_in_background(&proxy.url, "proxy-idle-test", "SELECT pg_sleep(30)");
    wait_until_running("proxy-idle-test");
    let output = support::wait_at_most(sleeper, Duration::from_secs(10), "psql");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("terminating connection after 1s with no traffic (--idle-timeout)"),
        "{stderr}"
    );
    wait_until_stopped("proxy-idle-test");
}

/// The `/proc/net/tcp` rows of `pid`'s established TCP sockets: (timer kind, inode).
fn established_sockets(pid: i32) -> Vec<(String, String)> {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local remote st tx:rx tr:when retrnsmt uid timeout inode
            let (state, timer, inode) = (fields.get(3)?, fields.get(5)?, fields.get(9)?);
            (*state == "01" && inodes.contains(*inode)).then(|| {
                let kind = timer.split(':').next().unwrap_or_default().to_owned();
                (kind, (*inode).to_owned())
            })
        })
        .collect()
}

#[test]
fn both_sides_of_a_session_have_tcp_keepalive() {
    // A client gone without a word (a laptop asleep) or an upstream behind a NAT that forgot the
    // flow would hold its slot and its backend for ever: both sockets probe.
    let repo = app_repo("proxy-keepalive");
    let proxy = start_proxy(&repo, &["--branch", "app/x"]);
    let sleeper = psql_in_background(&proxy.url, "proxy-keepalive-test", "SELECT pg_sleep(30)");
    wait_until_running("proxy-keepalive-test");
    // Timer 02 is the keepalive timer (00: none). A socket with bytes in flight, or an ACK
    // delayed, shows another timer for a moment: looked at again until all are quiet. Besides
    // the session's two, the proxy keeps one admin connection to the server (the gate's
    // question before each new connection), which idles without a timer.
    let until = Instant::now() + Duration::from_secs(5);
    let probing = |sockets: &[(String, String)]| sockets.iter().filter(|(t, _)| t == "02").count();
    let sockets = loop {
        let sockets = established_sockets(proxy.pid());
        let settled = sockets
            .iter()
            .all(|(timer, _)| timer == "02" || timer == "00");
        if (settled && probing(&sockets) == 2) || Instant::now() > until {
            break sockets;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    support::proxy::signal(sleeper.id(), Signal::SIGTERM);
    support::wait_at_most(sleeper, Duration::from_secs(10), "psql");
    assert_eq!(
        probing(&sockets),
        2,
        "the client's and the upstream's probe: {sockets:?}"
    );
    assert!(sockets.len() <= 3, "{sockets:?}");
}

#[test]
fn a_start_up_packet_too_long_once_it_names_the_environment_is_refused_with_a_reason() {
    let repo = app_repo("proxy-long-startup");
    let proxy = start_proxy(&repo, &["--branch", "app/x"]);
    let packet = |filler: usize| envctl::proxy::wire::StartupMessage {
        version: 196_608,
        params: vec![
            (b"user".to_vec(), b"a".to_vec()),
            (b"database".to_vec(), b"b".to_vec()),
            (b"application_name".to_vec(), vec![b'x'; filler]),
        ],
    };
    // As long as the proxy takes (10 000 bytes), with a one-letter user and database.
    let fill = 10_000 - packet(0).encode().len();
    let startup = packet(fill).encode();
    assert_eq!(startup.len(), envctl::proxy::wire::MAX_STARTUP_LEN);
    let mut socket = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    socket.write_all(&startup).unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.first() == Some(&b'E'), "{text}");
    assert!(text.contains("08P01"), "{text}");
    assert!(text.contains("start-up packet would be"), "{text}");
    // A packet that still fits goes through.
    psql_ok(&proxy.url, "SELECT 1");
}
