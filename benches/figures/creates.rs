//! Item 2, parallel creates: `envctl apply --all --yes --concurrency c` of 20 new branches against
//! the AWS peer, whose clusters answer `creating` for L = 2 s and then `available`, with the data
//! planes on a private PostgreSQL server (`ENVCTL_DATA_PLANE_OVERRIDE`), so every environment is
//! also migrated and seeded, as users get it. Beside it in the same run: the bound the target
//! sets, ⌈20/c⌉·L + P + 0.5 s, and the same apply with L = 0.
//!
//! The override server's databases are made before the clock starts: on AWS the database exists
//! when the cluster is `available` (its making is part of L), while on the override server envctl
//! would otherwise run `CREATE DATABASE` right after each create, which on this machine costs
//! about as much as the whole wait (see BENCHMARKS.md).
//!
//! The peer's call log gives the timeline: per environment when it was created, which poll first
//! saw it available (its lateness: that poll's arrival minus create + L) and when its last call
//! came (the work after the wait). A `DescribeDBClusters` is the poller's when it names several
//! clusters, or one cluster before the poll that saw it available; the rest are the
//! per-environment re-reads before a change. Only the poller describes instances here.
//!
//! The poll interval P is 250 ms (`ENVCTL_AWS_POLL_INTERVAL`): the default 5 s is about an
//! eighth of what an express create takes on AWS (30–45 s to the first query), and 250 ms keeps
//! that proportion to the peer's 2 s.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::measure::{self, Stats, secs, verdict};
use crate::observe::aws_env;
use crate::support::peer::Peer;
use crate::{Ctx, copy_dir, git};

const BRANCHES: usize = 20;
const DELAY: f64 = 2.0;
pub const POLL: f64 = 0.25;
const REPO: &str = "bench/creates";

fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// What the peer's log says about one apply.
struct Timeline {
    creates: usize,
    /// Arrival of the last `CreateDBCluster`, from the first call of the run.
    last_create: f64,
    /// Per environment: the first poll after create + L minus create + L.
    lateness: Vec<f64>,
    /// Per environment: its last tagging (the ledger tags, the end of its work) minus the poll
    /// that saw it available.
    work_after: Vec<f64>,
    /// From the last environment's last tagging to the last call (the outputs' re-reads).
    tail: f64,
    /// The poller's `DescribeDBClusters` arrivals.
    polls: Vec<f64>,
    /// `DescribeDBInstances` (only the poller makes them here).
    instance_describes: usize,
    /// `DescribeDBClusters` naming one environment after its wait.
    per_env_describes: usize,
    /// From the first create to the last poll that saw an environment available.
    wait_window: f64,
    /// `DescribeDBInstances` naming a cluster still `creating`.
    instance_reads_while_creating: usize,
    cpu: Option<Cpu>,
}

/// CPU seconds during one apply.
#[derive(Clone, Copy)]
struct Cpu {
    envctl: f64,
    peer: f64,
    /// The PostgreSQL server: the postmaster and the backends it reaped.
    postgres: f64,
    /// The whole machine (both CPUs): envctl, the peer, PostgreSQL and anything else.
    machine: f64,
    wall: f64,
}

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

fn timeline(peer: &Peer, delay: f64) -> Timeline {
    let mut calls = peer.calls();
    calls.sort_by(|a, b| a["time"].as_f64().partial_cmp(&b["time"].as_f64()).unwrap());
    let time = |c: &Value| c["time"].as_f64().unwrap();
    let start = calls.first().map(time).unwrap_or(0.0);
    // When each cluster was made: its ClusterCreateTime (the peer turns it `available` L later),
    // not its create call's arrival, which a busy peer may take a while to serve.
    let made: BTreeMap<String, f64> = serde_json::from_str(peer.boto3(
        "made = {}\n\
         for page in rds.get_paginator('describe_db_clusters').paginate():\n    \
             made.update({c['DBClusterIdentifier']: c['ClusterCreateTime'].timestamp() for c in page['DBClusters']})\n\
         print(json.dumps(made))",
    ).trim())
    .expect("cluster create times");
    let created: BTreeMap<String, f64> = calls
        .iter()
        .filter(|c| c["action"] == "CreateDBCluster")
        .map(|c| {
            let id = ids_of(c)[0].clone();
            let at = made.get(&id).copied().unwrap_or_else(|| time(c));
            (id, at)
        })
        .collect();
    // The poll that saw each environment available: the first describe naming it after
    // create + L (nothing else describes it before its wait ends).
    let mut seen: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_call: BTreeMap<String, f64> = BTreeMap::new();
    let mut polls = Vec::new();
    let mut per_env_describes = 0;
    for call in &calls {
        let ids = ids_of(call);
        if call["action"] == "AddTagsToResource" {
            last_call.insert(ids[0].clone(), time(call));
        }
        if call["action"] != "DescribeDBClusters" {
            continue;
        }
        let by_poller = ids.len() > 1
            || ids
                .iter()
                .all(|id| seen.get(id).is_none_or(|&s| time(call) <= s));
        if by_poller {
            polls.push(time(call));
        } else {
            per_env_describes += 1;
        }
        for id in ids {
            if let Some(&made) = created.get(&id)
                && time(call) >= made + delay
            {
                seen.entry(id).or_insert(time(call));
            }
        }
    }
    let lateness = created
        .iter()
        .filter_map(|(id, made)| Some(seen.get(id)? - (made + delay)))
        .collect();
    let work_after = seen
        .iter()
        .map(|(id, at)| last_call.get(id).copied().unwrap_or(*at) - at)
        .collect();
    let first_create = created.values().cloned().fold(f64::INFINITY, f64::min);
    let last_tagging = last_call.values().cloned().fold(0.0, f64::max);
    let tail = calls.last().map(time).unwrap_or(0.0) - last_tagging;
    let last_seen = seen.values().cloned().fold(0.0, f64::max);
    Timeline {
        creates: created.len(),
        last_create: created.values().cloned().fold(0.0, f64::max) - start,
        lateness,
        work_after,
        polls,
        instance_describes: calls
            .iter()
            .filter(|c| c["action"] == "DescribeDBInstances")
            .count(),
        // Allowing the 20 ms a busy peer may take to serve a call that arrived.
        instance_reads_while_creating: calls
            .iter()
            .filter(|c| {
                c["action"] == "DescribeDBInstances"
                    && ids_of(c).iter().any(|id| {
                        created
                            .get(id)
                            .is_some_and(|made| made + delay > time(c) + 0.02)
                    })
            })
            .count(),
        per_env_describes,
        wait_window: last_seen - first_create,
        tail,
        cpu: None,
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

pub fn run(ctx: &Ctx) -> String {
    let repeat = ctx.repeat(3);
    let out = ctx.out();
    let server = ctx.server();
    // An example repository whose checked-out branch no spec covers, and 20 feature branches.
    let repo = ctx.dir("creates-repo");
    git(&repo, &["init", "-q", "-b", "trunk"]);
    copy_dir(&ctx.root.join("environments"), &repo.join("environments"));
    copy_dir(&ctx.root.join("schemas"), &repo.join("schemas"));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "example repository"]);
    let repo_name = envctl::model::RepoName::parse(REPO).unwrap();
    let mut ids = Vec::new();
    for i in 1..=BRANCHES {
        let branch = format!("feature/c{i:02}");
        git(&repo, &["branch", &branch]);
        ids.push(envctl::model::ClusterId::derive(
            &envctl::model::Prefix::default(),
            &repo_name,
            &branch,
        ));
    }
    eprintln!("item 2: starting the AWS peer");
    let peer = Peer::start(&[]);
    let mut rows = Vec::new();
    let mut detail = Vec::new();
    let mut all_met = true;
    for &c in &ctx.options.concurrency {
        let bound = (BRANCHES.div_ceil(c)) as f64 * DELAY + POLL + 0.5;
        let mut waited = Vec::new();
        let mut baseline = Vec::new();
        let mut timelines = Vec::new();
        for round in 0..repeat {
            for delay in [DELAY, 0.0] {
                eprintln!(
                    "item 2: --concurrency {c}, L = {delay} s, round {}/{repeat}",
                    round + 1
                );
                peer.control("POST", "/_peer/reset", &json!({}));
                peer.config(json!({"create_delay": delay}));
                server.drop_all_databases();
                for id in &ids {
                    server.sql(&format!("CREATE DATABASE \"{id}\""));
                }
                let mut command = ctx.envctl();
                aws_env(&mut command, &peer);
                command
                    .env("ENVCTL_DATA_PLANE_OVERRIDE", &server.url)
                    .env("ENVCTL_AWS_POLL_INTERVAL", format!("{}ms", POLL * 1000.0))
                    .arg("-C")
                    .arg(&repo)
                    .args([
                        "--repo",
                        REPO,
                        "--provider",
                        "aws",
                        "apply",
                        "--all",
                        "--yes",
                    ])
                    .args(["--concurrency", &c.to_string()]);
                let cpu_now = || {
                    (
                        measure::machine_busy(),
                        measure::process_cpu(peer.pid()),
                        measure::process_tree_cpu(server.pid()),
                    )
                };
                let before = cpu_now();
                let run = measure::run(&mut command, &out, "creates");
                // The server reaps the backends of envctl's closed connections.
                std::thread::sleep(std::time::Duration::from_millis(100));
                let after = cpu_now();
                run.expect_success("envctl apply --all");
                let mut timeline = timeline(&peer, delay);
                timeline.cpu = Some(Cpu {
                    envctl: run.cpu.as_secs_f64(),
                    peer: after.1 - before.1,
                    postgres: after.2 - before.2,
                    machine: after.0 - before.0,
                    wall: run.wall.as_secs_f64(),
                });
                assert_eq!(timeline.creates, BRANCHES, "one create per branch");
                if delay == 0.0 {
                    baseline.push(run);
                } else {
                    waited.push(run);
                    timelines.push(timeline);
                }
            }
        }
        let wall = Stats::of_walls(&waited);
        let base = Stats::of_walls(&baseline);
        let cpu_of = |f: &dyn Fn(&Cpu) -> f64| {
            Stats::of(
                &timelines
                    .iter()
                    .map(|t| f(&t.cpu.unwrap()))
                    .collect::<Vec<_>>(),
            )
            .median
        };
        let cpu = format!(
            "{:.2} · {:.2} · {:.2} ({:.0} %)",
            cpu_of(&|c| c.envctl),
            cpu_of(&|c| c.peer),
            cpu_of(&|c| c.postgres),
            cpu_of(&|c| c.machine / (c.wall * cpus())) * 100.0,
        );
        let median_of = |f: &dyn Fn(&Timeline) -> f64| {
            Stats::of(&timelines.iter().map(f).collect::<Vec<_>>()).median
        };
        let lateness = median_of(&|t| mean(&t.lateness));
        let work_after = median_of(&|t| mean(&t.work_after));
        let tail = median_of(&|t| t.tail);
        let last_create = median_of(&|t| t.last_create);
        let polls = median_of(&|t| t.polls.len() as f64);
        let per_env = median_of(&|t| t.per_env_describes as f64);
        // The poller's pace: polls against the intervals that passed while environments waited
        // (the first poll comes as the first wait starts), and instance reads against the polls
        // that saw a cluster turn available (only those read instances).
        let intervals = median_of(&|t| t.wait_window / POLL);
        let instance_reads = median_of(&|t| t.instance_describes as f64);
        let while_creating = timelines
            .iter()
            .map(|t| t.instance_reads_while_creating)
            .max()
            .unwrap_or(0);
        let gaps: Vec<f64> = timelines
            .iter()
            .flat_map(|t| t.polls.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>())
            .collect();
        let gap = Stats::of(&gaps);
        let wall_met = wall.max <= bound;
        // One DescribeDBClusters for all waiting environments per interval: polls an interval
        // apart (the median gap: arrivals at a busy peer jitter), and no DescribeDBInstances
        // while the clusters it names are creating (only polls that find clusters past it read
        // their writers).
        let polls_met = gap.median >= 0.95 * POLL && while_creating == 0;
        all_met &= wall_met && polls_met;
        rows.push(format!(
            "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {polls:.0} / {intervals:.1} | {instance_reads:.0} ({while_creating}) | {} | {per_env:.0} | {} | {} |",
            secs(bound),
            wall.seconds(),
            base.seconds(),
            cpu,
            secs(last_create),
            secs(lateness),
            secs(work_after),
            secs(tail),
            secs(gap.median),
            verdict(wall_met),
            verdict(polls_met),
        ));
        if c == 1 {
            let waits = BRANCHES as f64 * DELAY;
            detail.push(format!(
                "At c = 1 the {BRANCHES} waits run one after another: the wall time is {} = {BRANCHES} × L ({}) + \
                 {BRANCHES} × (lateness {} + work after the wait {}) + the outputs {} + the rest {} (start-up, \
                 observe, {BRANCHES} creates and the gaps between environments). The target allows P + 0.5 s = {} \
                 beyond the waits, i.e. {} per environment.",
                secs(wall.median),
                secs(waits),
                secs(lateness),
                secs(work_after),
                secs(tail),
                secs(wall.median - waits - BRANCHES as f64 * (lateness + work_after) - tail),
                secs(POLL + 0.5),
                secs((POLL + 0.5) / BRANCHES as f64),
            ));
        }
    }
    format!(
        "## 2. Parallel creates\n\n\
         `envctl apply --all --yes --concurrency c` of {BRANCHES} new branches (the example specs: create,\n\
         3 migrations, a seed each) against the AWS peer with `creating` → `available` after\n\
         L = {DELAY} s; data planes on a private PostgreSQL server whose databases are made before the\n\
         clock starts (AWS makes them during L); poll interval P = {} (`ENVCTL_AWS_POLL_INTERVAL`:\n\
         the 5 s default is about an eighth of an express create on AWS, 30–45 s; 250 ms keeps that\n\
         proportion to L). Beside it in the same run: the target's bound ⌈20/c⌉·L + P + 0.5 s, and the\n\
         same apply with L = 0. {repeat} runs each: median (min–max); the wall target is judged on the\n\
         slowest run. From the peer's call log (medians over the runs): the last create's arrival;\n\
         per environment, how long after it became available a poll saw it (lateness) and how long\n\
         its work went on after that (wait_ready's re-read, the data plane, migrations, seed, to its\n\
         last tagging); from the last environment's end to the last call (\"outputs\": the re-reads\n\
         for the endpoints that apply prints);\n\
         the poller's polls (one `DescribeDBClusters` for every waiting environment) against the\n\
         intervals that passed while environments waited, its `DescribeDBInstances` (in brackets:\n\
         in any run, those naming a cluster that was still `creating`), the median\n\
         gap between polls as they arrived at the peer; and the per-environment re-reads after the\n\
         wait (wait_ready's, before tagging, for the connection, the outputs). CPU seconds during the apply (L = 2 s): envctl's own (`wait4`), the\n\
         peer's and the PostgreSQL server's with its backends (`/proc`), and how busy the machine's {}\n\
         CPUs were over the wall time (with whatever else runs on it).\n\n\
         | c | bound | envctl, L = 2 s | envctl, L = 0 | CPU s: envctl · peer · PostgreSQL (machine busy) | last create | lateness | work after the wait | outputs | polls / intervals | instance reads (while creating) | poll gap | re-reads | wall | one describe per P |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n\
         {}\n\n\
         {}\n\n\
         Item 2: {}.\n",
        secs(POLL),
        cpus(),
        rows.join("\n"),
        detail.join("\n\n"),
        if all_met {
            "all targets met"
        } else {
            "**a target missed** (see the rows)"
        }
    )
}
