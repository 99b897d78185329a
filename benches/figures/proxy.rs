//! Item 10, `envctl proxy` on the local provider: `pgbench -S` (select only) at 1, 8 and 64
//! clients through the proxy, directly to the server, and through `socat` (a plain extra hop),
//! alternating, 20 s each; the CPU each hop spends per transaction (user and system time of the
//! proxy and of socat) beside what pgbench and PostgreSQL spend, and the system calls each hop
//! makes (strace -c over a separate run); connection set-up (`pgbench -C`) the three ways; the
//! time to sign an IAM token (`benches/signing.rs`, optimised); and the proxy's resident size with
//! 1 000 idle clients (a server of its own with room for them).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure::{Stats, process_tree_cpu, verdict};
use crate::support::proxy::ProxyProcess;
use crate::support::tls::{PrivateServer, ServerOptions};
use crate::{Ctx, check_interrupted, copy_dir, git};

/// How clients reach the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Direct,
    Proxy,
    Socat,
}

const WAYS: [Way; 3] = [Way::Direct, Way::Proxy, Way::Socat];

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Proxy => "envctl proxy",
            Way::Socat => "socat",
        }
    }
}

/// One pgbench run.
#[derive(Clone, Copy, Default)]
struct Bench {
    tps: f64,
    latency_ms: f64,
    /// `-C`: mean time to open a connection.
    connect_ms: f64,
    transactions: f64,
    /// CPU seconds of the hop (the proxy's or socat's), user and system.
    hop_user: f64,
    hop_system: f64,
    /// CPU seconds of pgbench and of PostgreSQL (its backends, reaped by the postmaster).
    ends: f64,
}

/// Where pgbench connects for each way.
struct Endpoints {
    server_port: u16,
    server_pid: u32,
    proxy: ProxyProcess,
    socat: std::process::Child,
    socat_port: u16,
    password: String,
    database: String,
}

impl Endpoints {
    fn port(&self, way: Way) -> u16 {
        match way {
            Way::Direct => self.server_port,
            Way::Proxy => self.proxy.port,
            Way::Socat => self.socat_port,
        }
    }

    /// The hop's process id (none for direct).
    fn hop(&self, way: Way) -> Option<u32> {
        match way {
            Way::Direct => None,
            Way::Proxy => Some(self.proxy.pid() as u32),
            Way::Socat => Some(self.socat.id()),
        }
    }

    /// pgbench against `way` (the proxy takes no password).
    fn pgbench(&self, way: Way, args: &[String]) -> Command {
        let mut command = Command::new("pgbench");
        command
            .args(["-h", "127.0.0.1", "-p", &self.port(way).to_string()])
            .args(["-U", "postgres"])
            .args(args)
            .arg(&self.database)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        if way != Way::Proxy {
            command.env("PGPASSWORD", &self.password);
        }
        command
    }
}

/// User and system CPU seconds of a process and its reaped children (socat forks one per
/// connection; the proxy's threads are its own).
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let ticks = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64;
    (
        (field(11) + field(13)) / ticks,
        (field(12) + field(14)) / ticks,
    )
}

/// A number after `label` in pgbench's report (`tps = 1234.5 (…)`).
fn figure(text: &str, label: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pgbench printed no `{label}`:\n{text}"))
}

fn run_pgbench(ctx: &Ctx, endpoints: &Endpoints, way: Way, args: &[String]) -> Bench {
    let hop = endpoints.hop(way);
    let before = hop.map(cpu_split).unwrap_or_default();
    let server_before = process_tree_cpu(endpoints.server_pid);
    let run = crate::measure::run(&mut endpoints.pgbench(way, args), &ctx.out(), "pgbench");
    // Backends, and socat's children, are reaped (and counted) a moment after they end.
    std::thread::sleep(Duration::from_millis(300));
    let server = process_tree_cpu(endpoints.server_pid) - server_before;
    let after = hop.map(cpu_split).unwrap_or_default();
    let text = run.stdout_text();
    if run.code != Some(0) {
        panic!(
            "pgbench via {} failed (Debian: `apt-get install postgresql` has it): {}{text}",
            way.name(),
            run.stderr_text()
        );
    }
    Bench {
        tps: figure(&text, "tps = "),
        latency_ms: figure(&text, "latency average = "),
        connect_ms: if args.iter().any(|a| a == "-C") {
            figure(&text, "average connection time = ")
        } else {
            0.0
        },
        transactions: figure(&text, "number of transactions actually processed: "),
        hop_user: after.0 - before.0,
        hop_system: after.1 - before.1,
        ends: run.cpu.as_secs_f64() + server,
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A repository with the example specs whose `feature/bench-proxy` is applied on `server_url`;
/// the environment's database name.
fn applied_repo(ctx: &Ctx, dir: &Path, server_url: &str) -> String {
    if !dir.join(".git").exists() {
        copy_dir(&ctx.root.join("environments"), &dir.join("environments"));
        copy_dir(&ctx.root.join("schemas"), &dir.join("schemas"));
        git(dir, &["init", "-q", "-b", "main"]);
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "example"]);
    }
    let mut apply = ctx.envctl();
    apply
        .arg("-C")
        .arg(dir)
        .args([
            "--repo",
            "bench/proxy",
            "apply",
            "--branch",
            "feature/bench-proxy",
        ])
        .env("ENVCTL_LOCAL_URL", server_url);
    crate::measure::run(&mut apply, &ctx.out(), "proxy-apply").expect_success("apply");
    let mut status = ctx.envctl();
    status
        .arg("-C")
        .arg(dir)
        .args(["--repo", "bench/proxy", "status", "--json"])
        .env("ENVCTL_LOCAL_URL", server_url);
    let run = crate::measure::run(&mut status, &ctx.out(), "proxy-status");
    run.expect_success("status");
    let json: serde_json::Value = serde_json::from_str(&run.stdout_text()).unwrap();
    json["environments"][0]["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The release proxy for `feature/bench-proxy` against `server_url`.
fn start_proxy(ctx: &Ctx, dir: &Path, server_url: &str, max_connections: usize) -> ProxyProcess {
    let mut command = ctx.envctl();
    command
        .arg("-C")
        .arg(dir)
        .args([
            "--repo",
            "bench/proxy",
            "proxy",
            "--branch",
            "feature/bench-proxy",
        ])
        .args([
            "--port",
            "0",
            "--max-connections",
            &max_connections.to_string(),
        ])
        .env("ENVCTL_LOCAL_URL", server_url);
    ProxyProcess::start(command)
}

fn start_socat(server_port: u16) -> (std::process::Child, u16) {
    let port = free_port();
    let child = Command::new("socat")
        .arg(format!(
            "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=512,nodelay"
        ))
        .arg(format!("TCP:127.0.0.1:{server_port},nodelay"))
        .stdin(Stdio::null())
        .spawn()
        .expect("socat runs (Debian: `apt-get install socat`)");
    wait_for_port(port);
    (child, port)
}

/// System calls per transaction of a hop, from `strace -c -f` attached during a short run.
fn syscalls_per_transaction(ctx: &Ctx, endpoints: &Endpoints, way: Way, clients: usize) -> f64 {
    let pid = endpoints.hop(way).expect("a hop");
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("strace");
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(&summary)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace runs (Debian: `apt-get install strace`)");
    std::thread::sleep(Duration::from_millis(500));
    let args: Vec<String> = ["-n", "-S", "-T", "5", "-c", &clients.to_string(), "-j", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let bench = run_pgbench(ctx, endpoints, way, &args);
    crate::support::proxy::signal(strace.id(), nix::sys::signal::Signal::SIGINT);
    let _ = strace.wait();
    let text = std::fs::read_to_string(&summary).unwrap_or_default();
    let calls: f64 = text
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("strace printed no total:\n{text}"));
    calls / bench.transactions
}

/// Opens a client connection through the proxy and logs in (raw protocol, user `bench`).
fn idle_client(port: u16) -> TcpStream {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let startup = envctl::proxy::wire::StartupMessage {
        version: 196_608,
        params: vec![
            (b"user".to_vec(), b"bench".to_vec()),
            (b"application_name".to_vec(), b"idle".to_vec()),
        ],
    };
    socket.write_all(&startup.encode()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(6).any(|w| w == b"Z\x00\x00\x00\x05I") {
        let n = socket.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the proxy closed a client: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    socket
}

fn rss_kib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// The proxy's RSS idle and with `clients` idle clients, on a server with room for them.
fn memory(ctx: &Ctx, clients: usize) -> (f64, f64) {
    eprintln!("item 10: a server for {clients} connections");
    let server = PrivateServer::start(ServerOptions {
        tls: false,
        max_connections: clients as u32 + 50,
        hba: vec!["all all 127.0.0.1/32 scram-sha-256".into()],
    });
    let dir = ctx.dir("proxy-memory-repo");
    applied_repo(ctx, &dir, &server.url());
    let proxy = start_proxy(ctx, &dir, &server.url(), clients + 10);
    drop(idle_client(proxy.port));
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(proxy.pid());
    eprintln!("item 10: opening {clients} idle clients");
    let held: Vec<TcpStream> = (0..clients)
        .map(|_| {
            check_interrupted();
            idle_client(proxy.port)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let loaded = rss_kib(proxy.pid());
    drop(held);
    (idle, loaded)
}

/// µs to sign one IAM token, optimised (`benches/signing.rs`): the median of 5 batches, and
/// each batch's.
fn signing_micros(ctx: &Ctx) -> (f64, String) {
    let output = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["bench", "--quiet", "--locked", "--bench", "signing"])
        .current_dir(&ctx.root)
        .stdin(Stdio::null())
        .output()
        .expect("cargo runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo bench --bench signing: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (median, batches) = text.trim().split_once(' ').expect("`MEDIAN BATCHES…`");
    (median.parse().expect("a number"), batches.to_owned())
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

/// The median of one figure over rounds.
fn median(runs: &[Bench], figure: impl Fn(&Bench) -> f64) -> f64 {
    Stats::of(&runs.iter().map(figure).collect::<Vec<_>>()).median
}

pub fn run(ctx: &Ctx) -> String {
    let rounds = ctx.repeat(3);
    let seconds = 20;
    let clients = [1usize, 8, 64];
    let server = ctx.server();
    let server_port: u16 = url::Url::parse(&server.url).unwrap().port().unwrap();
    let password = url::Url::parse(&server.url)
        .unwrap()
        .password()
        .unwrap()
        .to_owned();
    let dir = ctx.dir("proxy-repo");
    let database = applied_repo(ctx, &dir, &server.url);
    eprintln!("item 10: pgbench -i in `{database}`");
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "5"])
        .arg(server.url_of(&database))
        .output()
        .expect("pgbench runs (Debian: `apt-get install postgresql`)");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let proxy = start_proxy(ctx, &dir, &server.url, 150);
    let (socat, socat_port) = start_socat(server_port);
    let mut endpoints = Endpoints {
        server_port,
        server_pid: server.pid(),
        proxy,
        socat,
        socat_port,
        password,
        database,
    };

    // Throughput: every (clients, way), rounds interleaved, the way's order rotated per round.
    let mut select = vec![vec![Vec::new(); WAYS.len()]; clients.len()];
    for round in 0..rounds {
        for (c, &n) in clients.iter().enumerate() {
            for k in 0..WAYS.len() {
                let w = (k + round) % WAYS.len();
                eprintln!(
                    "item 10: round {}/{rounds}, pgbench -S -c {n} via {} for {seconds} s",
                    round + 1,
                    WAYS[w].name()
                );
                let args: Vec<String> = [
                    "-n",
                    "-S",
                    "-T",
                    &seconds.to_string(),
                    "-c",
                    &n.to_string(),
                    "-j",
                    &n.min(2).to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                select[c][w].push(run_pgbench(ctx, &endpoints, WAYS[w], &args));
            }
        }
    }
    // Connection set-up: a new connection per transaction, one client.
    let mut setup = vec![Vec::new(); WAYS.len()];
    for round in 0..rounds {
        for k in 0..WAYS.len() {
            let w = (k + round) % WAYS.len();
            eprintln!("item 10: pgbench -C via {}", WAYS[w].name());
            let args: Vec<String> = ["-n", "-S", "-C", "-T", "10", "-c", "1", "-j", "1"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            setup[w].push(run_pgbench(ctx, &endpoints, WAYS[w], &args));
        }
    }
    eprintln!("item 10: system calls per transaction (strace -c -f, 8 clients, 5 s)");
    let calls_proxy = syscalls_per_transaction(ctx, &endpoints, Way::Proxy, 8);
    let calls_socat = syscalls_per_transaction(ctx, &endpoints, Way::Socat, 8);
    let _ = endpoints.socat.kill();
    let _ = endpoints.socat.wait();
    endpoints.proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = endpoints.proxy.wait(Duration::from_secs(20));
    eprintln!("item 10: token signing");
    let signing = signing_micros(ctx);
    let (idle_kib, loaded_kib) = memory(ctx, 1_000);

    render(
        &clients,
        &select,
        &setup,
        (calls_proxy, calls_socat),
        signing,
        (idle_kib, loaded_kib, 1_000),
        rounds,
        seconds,
    )
}

#[allow(clippy::too_many_arguments)]
fn render(
    clients: &[usize],
    select: &[Vec<Vec<Bench>>],
    setup: &[Vec<Bench>],
    calls: (f64, f64),
    signing: (f64, String),
    memory: (f64, f64, usize),
    rounds: usize,
    seconds: usize,
) -> String {
    let mut all_met = true;
    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    for (c, &n) in clients.iter().enumerate() {
        let tps = |w: usize| median(&select[c][w], |b| b.tps);
        let latency = |w: usize| median(&select[c][w], |b| b.latency_ms);
        let (direct, proxy, socat) = (tps(0), tps(1), tps(2));
        let throughput_met = n == 1 || proxy >= 0.8 * direct;
        let ahead_met = proxy > socat;
        let latency_met = n != 1 || latency(1) <= 1.3 * latency(0);
        all_met &= throughput_met && ahead_met && latency_met;
        let mut targets = vec![format!("ahead of socat: {}", verdict(ahead_met))];
        if n == 1 {
            targets.push(format!("latency ≤ 1.3×: {}", verdict(latency_met)));
        } else {
            targets.push(format!("≥ 0.8× direct: {}", verdict(throughput_met)));
        }
        rows.push(format!(
            "| {n} | {direct:.0} tps, {:.3} ms | {proxy:.0} tps ({}), {:.3} ms ({}) | {socat:.0} tps ({}), {:.3} ms ({}) | {} |",
            latency(0),
            ratio(proxy, direct),
            latency(1),
            ratio(latency(1), latency(0)),
            ratio(socat, direct),
            latency(2),
            ratio(latency(2), latency(0)),
            targets.join("; ")
        ));
        let per_tx = |w: usize, f: &dyn Fn(&Bench) -> f64| {
            median(&select[c][w], |b| f(b) / b.transactions) * 1e6
        };
        cpu_rows.push(format!(
            "| {n} | {:.1} µs | {:.1} µs | {:.1} µs ({:.1} + {:.1}) | {:.1} µs | {:.1} µs ({:.1} + {:.1}) |",
            per_tx(0, &|b| b.ends),
            per_tx(1, &|b| b.ends),
            per_tx(1, &|b| b.hop_user + b.hop_system),
            per_tx(1, &|b| b.hop_user),
            per_tx(1, &|b| b.hop_system),
            per_tx(2, &|b| b.ends),
            per_tx(2, &|b| b.hop_user + b.hop_system),
            per_tx(2, &|b| b.hop_user),
            per_tx(2, &|b| b.hop_system),
        ));
    }
    let connect = |w: usize| median(&setup[w], |b| b.connect_ms);
    let per_tx = |w: usize| median(&setup[w], |b| b.latency_ms);
    let connect_met = connect(1) <= 1.3 * connect(0);
    let signing_met = signing.0 < 100.0;
    let (idle_kib, loaded_kib, idle_clients) = memory;
    let per_connection = (loaded_kib - idle_kib) / idle_clients as f64;
    let memory_met = per_connection < 64.0;
    all_met &= connect_met && signing_met && memory_met;
    format!(
        "## 10. `envctl proxy`\n\n\
         Local provider, the environment of `feature/bench-proxy` (pgbench scale 5) on the\n\
         harness's server; the proxy is the release build; socat 1.7 relays to the same server\n\
         (`fork`, `nodelay`). `pgbench -n -S -T {seconds} -c N -j min(N, 2)`, {rounds} rounds, the\n\
         three ways interleaved and their order rotated per round; medians.\n\n\
         | clients | direct | through the proxy | through socat | targets |\n\
         |---|---|---|---|---|\n\
         {}\n\n\
         CPU per transaction (medians): pgbench's and PostgreSQL's (its backends), and the\n\
         hop's own, user + system (socat's forked children included). System calls per\n\
         transaction (`strace -c -f` attached to the hop during a separate 5 s run at 8\n\
         clients): the proxy {:.1}, socat {:.1}.\n\n\
         | clients | pgbench + PostgreSQL, direct | the same, through the proxy | the proxy's own | the same, through socat | socat's own |\n\
         |---|---|---|---|---|---|\n\
         {}\n\n\
         | figure | direct | proxy | socat | target | |\n\
         |---|---|---|---|---|---|\n\
         | connection set-up (`pgbench -C -c 1`: mean connection time; a whole transaction) | {:.2} ms; {:.2} ms | {:.2} ms ({}); {:.2} ms | {:.2} ms ({}); {:.2} ms | ≤ 1.3× direct | {} |\n\
         | signing an IAM token (optimised; median of 5 × 20 000; the batches: {}) | | {:.2} µs | | < 100 µs | {} |\n\
         | proxy RSS with {idle_clients} idle clients | | {:.1} MiB (idle: {:.1} MiB): {:.1} KiB per connection | | < 64 KiB per connection | {} |\n\n\
         Item 10: {}.\n",
        rows.join("\n"),
        calls.0,
        calls.1,
        cpu_rows.join("\n"),
        connect(0),
        per_tx(0),
        connect(1),
        ratio(connect(1), connect(0)),
        per_tx(1),
        connect(2),
        ratio(connect(2), connect(0)),
        per_tx(2),
        verdict(connect_met),
        signing.1,
        signing.0,
        verdict(signing_met),
        loaded_kib / 1024.0,
        idle_kib / 1024.0,
        per_connection,
        verdict(memory_met),
        if all_met {
            "all targets met"
        } else {
            "**a target missed**"
        }
    )
}
