//! Item 1, observe at the API's limit: `envctl status --json` against the AWS peer holding N
//! managed clusters (envctl's tags, this repository and prefix) and N unmanaged ones, beside
//! `observe_boto3.py`, a bare boto3 script making the same paginated `GetResources` and batched
//! `DescribeDBClusters` calls. Both are whole processes, run alternately. The peer's call log
//! counts the API calls; a listener standing in for every cluster's database counts connections
//! (`ENVCTL_DATA_PLANE_OVERRIDE` points there, so any connection envctl opened would land on it).

use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::measure::{self, Run, Stats, verdict};
use crate::support::peer::{Peer, python};
use crate::{Ctx, clean_env};

const REPO: &str = "bench/observe";
const PREFIX: &str = "envctl";

/// Counts TCP connections to a loopback port until dropped.
pub struct ConnectionTrap {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ConnectionTrap {
    pub fn start() -> ConnectionTrap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(_) => {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        ConnectionTrap {
            port,
            accepted,
            stop,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ConnectionTrap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The AWS environment of a process talking to `peer` (never the user's own AWS settings).
pub fn aws_env(command: &mut Command, peer: &Peer) {
    clean_env(command);
    command
        .env("AWS_ENDPOINT_URL", &peer.url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
}

/// Calls per action in the peer's log.
fn count(calls: &[Value], action: &str) -> usize {
    calls.iter().filter(|c| c["action"] == action).count()
}

fn environments(run: &Run) -> usize {
    let out: Value = serde_json::from_str(&run.stdout_text()).expect("status JSON");
    out["environments"].as_array().map_or(0, Vec::len)
}

pub fn run(ctx: &Ctx) -> String {
    let repeat = ctx.repeat(5);
    let out = ctx.out();
    let dir = ctx.dir("observe");
    let script = ctx.root.join("benches/figures/observe_boto3.py");
    let python = python();
    eprintln!("item 1: starting the AWS peer");
    let peer = Peer::start(&[]);
    let trap = ConnectionTrap::start();
    let mut rows = Vec::new();
    let mut all_met = true;
    for &n in &ctx.options.observe_n {
        peer.control("POST", "/_peer/reset", &json!({}));
        let managed_tags = json!({
            "envctl:managed": "true",
            "envctl:repo": REPO,
            "envctl:prefix": PREFIX,
            "envctl:branch": "feature/b{i}",
            "envctl:env": "preview",
            "envctl:spec-hash": "5f1c0e9a3b7d2c48",
            "envctl:spec-tags": "team",
            "envctl:schema-version": "3",
            "envctl:ledger-digest": "8d6b1f0e2c4a9735",
            "envctl:database": "postgres@postgres",
            "envctl:base": "0123456789abcdef0123456789abcdef01234567",
            "envctl:last-applied": "2026-11-25T12:00:00Z",
            "envctl:ttl": "7d",
            "team": "web",
        });
        peer.control(
            "POST",
            "/_peer/seed-clusters",
            &json!({"count": n, "tags": managed_tags, "id_prefix": "envctl-feature-b"}),
        );
        peer.control(
            "POST",
            "/_peer/seed-clusters",
            &json!({"count": n, "tags": {"team": "data", "Name": "{id}", "stage": "prod"}, "id_prefix": "other-db"}),
        );
        let mut envctl_runs = Vec::new();
        let mut script_runs = Vec::new();
        let mut envctl_calls = None;
        let mut script_calls = None;
        let before = trap.accepted();
        for round in 0..repeat {
            eprintln!("item 1: N = {n}, round {}/{repeat}", round + 1);
            let mut order = [true, false];
            if round % 2 == 1 {
                order.reverse();
            }
            for is_envctl in order {
                peer.reset_calls();
                let run = if is_envctl {
                    let mut command = ctx.envctl();
                    aws_env(&mut command, &peer);
                    command
                        .env(
                            "ENVCTL_DATA_PLANE_OVERRIDE",
                            format!(
                                "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
                                trap.port
                            ),
                        )
                        .arg("-C")
                        .arg(&dir)
                        .args(["--repo", REPO, "--provider", "aws", "status", "--json"]);
                    measure::run(&mut command, &out, "observe-envctl")
                } else {
                    let mut command = Command::new(&python);
                    aws_env(&mut command, &peer);
                    command.arg(&script).args([REPO, PREFIX]);
                    measure::run(&mut command, &out, "observe-boto3")
                };
                run.expect_success(if is_envctl {
                    "envctl status"
                } else {
                    "the boto3 script"
                });
                assert_eq!(environments(&run), n, "every managed cluster is listed");
                let calls = peer.calls();
                let counted = (
                    count(&calls, "GetResources"),
                    count(&calls, "DescribeDBClusters"),
                    calls.len(),
                );
                let slot = if is_envctl {
                    envctl_runs.push(run);
                    &mut envctl_calls
                } else {
                    script_runs.push(run);
                    &mut script_calls
                };
                assert!(
                    slot.is_none_or(|c| c == counted),
                    "calls differ between runs"
                );
                *slot = Some(counted);
            }
        }
        let connections = trap.accepted() - before;
        let (pages, describes, total) = envctl_calls.unwrap();
        let (script_pages, script_describes, _) = script_calls.unwrap();
        let bound = 2 * n.div_ceil(100);
        let envctl_wall = Stats::of_walls(&envctl_runs);
        let script_wall = Stats::of_walls(&script_runs);
        let ratio = envctl_wall.median / script_wall.median;
        // "A small constant": at most 2 calls beyond 2·⌈N/100⌉.
        let calls_met = total <= bound + 2 && connections == 0;
        let wall_met = ratio <= 1.2;
        all_met &= calls_met && wall_met;
        rows.push(format!(
            "| {n} + {n} | {total} ({pages} + {describes}) | {bound} | {} ({script_pages} + {script_describes}) | {connections} | {} | {} | {ratio:.2}× | {} | {} |",
            script_pages + script_describes,
            envctl_wall.seconds(),
            script_wall.seconds(),
            verdict(calls_met),
            verdict(wall_met),
        ));
    }
    format!(
        "## 1. Observe at the API's limit\n\n\
         `envctl status --json` (aws provider) against the AWS peer holding N managed and N unmanaged\n\
         clusters, beside `benches/figures/observe_boto3.py` (bare boto3: the same paginated\n\
         `GetResources` and batched `DescribeDBClusters`, the same JSON), each a whole process, run\n\
         alternately, {repeat} runs each: median (min–max). Calls are counted in the peer's log as\n\
         GetResources + DescribeDBClusters; DB connections are those a listener standing in for every\n\
         cluster's database accepted during envctl's runs. Targets: calls ≤ 2·⌈N/100⌉ + 2 with no DB\n\
         connection; wall time ≤ 1.2× the script.\n\n\
         | managed + unmanaged | envctl calls | 2·⌈N/100⌉ | script calls | DB connections | envctl | boto3 script | ratio | calls | wall |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         {}\n\n\
         Item 1: {}.\n",
        rows.join("\n"),
        if all_met {
            "all targets met"
        } else {
            "**a target missed** (see the rows)"
        }
    )
}
