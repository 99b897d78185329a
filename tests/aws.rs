//! The AWS provider through the CLI, against the offline AWS peer on loopback (moto's server with
//! Aurora express behaviour, `scripts/aws-peer/`), exactly as a user's AWS is reached:
//! AWS_ENDPOINT_URL and the standard credential chain. Data planes go to the shared test
//! PostgreSQL server (ENVCTL_DATA_PLANE_OVERRIDE). Never skipped, never mocked.

mod support;

use std::time::Duration;

use predicates::prelude::*;
use serde_json::{Value, json};
use support::peer::{Peer, SECRET_KEY, SESSION_TOKEN, run_prefix};
use support::{APPLIED_VERSIONS, DUMMY_ROWS, TestRepo, exec_psql};

/// A repository and a peer, with envctl under this run's prefix.
struct Aws {
    repo: TestRepo,
    peer: Peer,
    prefix: String,
}

impl Aws {
    fn new(name: &str, flags: &[&str]) -> Aws {
        Aws {
            repo: TestRepo::new(&format!("aws-{name}")),
            peer: Peer::start(flags),
            prefix: run_prefix(),
        }
    }

    fn envctl(&self) -> assert_cmd::Command {
        let mut cmd = self.peer.envctl(self.repo.path(), &self.repo.repo);
        cmd.env("ENVCTL_PREFIX", &self.prefix);
        cmd
    }

    /// Runs envctl; returns (exit code, stdout, stderr), checking no AWS secret appears (but in
    /// what `token`, `url` and `exec`'s child print: a token carries the session token).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let output = self.envctl().args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let asked = ["token", "url", "exec"].contains(&args[0]);
        for secret in [SECRET_KEY, SESSION_TOKEN] {
            assert!(
                !stderr.contains(secret) && (asked || !stdout.contains(secret)),
                "a secret leaked from {args:?}:\n{stdout}\n{stderr}"
            );
        }
        assert!(
            !stdout.contains(SECRET_KEY),
            "the secret key leaked from {args:?}"
        );
        (output.status.code().unwrap_or(-1), stdout, stderr)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(code, 0, "{args:?} failed:\n{stderr}");
        stdout
    }

    fn id(&self, branch: &str) -> String {
        support::cluster_id(&self.prefix, &self.repo.repo, branch).to_string()
    }

    /// SQL in a branch's database through `envctl exec -- psql`.
    fn sql(&self, branch: &str, sql: &str) -> String {
        self.ok(&exec_psql(branch, sql)).trim().to_owned()
    }
}

fn param<'a>(call: &'a Value, key: &str) -> &'a Value {
    &call["params"][key]
}

fn tag_list(call: &Value) -> Value {
    let mut tags = serde_json::Map::new();
    for tag in param(call, "Tags").as_array().into_iter().flatten() {
        tags.insert(
            tag["Key"].as_str().unwrap().to_owned(),
            tag["Value"].clone(),
        );
    }
    Value::Object(tags)
}

#[test]
fn an_express_cluster_per_branch_from_create_to_destroy() {
    let aws = Aws::new(
        "lifecycle",
        &["--create-delay", "0.5", "--delete-delay", "0.5"],
    );
    let id = aws.id("feature/a");
    let applied: Value =
        serde_json::from_str(&aws.ok(&["apply", "--branch", "feature/a", "--json"])).unwrap();
    assert_eq!(applied["environments"][0]["status"], "ok", "{applied}");
    assert_eq!(applied["environments"][0]["cluster_id"], id.as_str());

    let creates = aws.peer.calls_of("CreateDBCluster");
    assert_eq!(creates.len(), 1);
    let create = &creates[0];
    assert_eq!(param(create, "DBClusterIdentifier"), id.as_str());
    assert_eq!(param(create, "Engine"), "aurora-postgresql");
    assert_eq!(param(create, "WithExpressConfiguration"), true);
    assert_eq!(
        param(create, "ServerlessV2ScalingConfiguration"),
        &json!({"MinCapacity": 0.0, "MaxCapacity": 4.0})
    );
    assert_eq!(param(create, "DeletionProtection"), false);
    assert!(param(create, "MasterUsername").is_null());
    assert!(param(create, "MasterUserPassword").is_null());
    assert!(
        param(create, "DatabaseName").is_null(),
        "postgres is the default"
    );
    let tags = tag_list(create);
    assert_eq!(tags["envctl:managed"], "true");
    assert_eq!(tags["envctl:repo"], aws.repo.repo.as_str());
    assert_eq!(tags["envctl:prefix"], aws.prefix.as_str());
    assert_eq!(tags["envctl:branch"], "feature/a");
    assert_eq!(tags["team"], "web");
    // Migrations and seeds reached the cluster's data plane.
    assert_eq!(aws.sql("feature/a", DUMMY_ROWS), "3");
    let live = aws.peer.tags_of(&id);
    assert_eq!(live["envctl:schema-version"], "3");

    // A second apply changes nothing.
    aws.peer.reset_calls();
    aws.ok(&["apply", "--branch", "feature/a"]);
    aws.envctl()
        .args(["plan", "--branch", "feature/a", "--detailed-exitcode"])
        .assert()
        .code(0);
    for action in [
        "CreateDBCluster",
        "ModifyDBCluster",
        "DeleteDBCluster",
        "DeleteDBInstance",
        "RemoveTagsFromResource",
    ] {
        assert!(
            aws.peer.calls_of(action).is_empty(),
            "{action} on a no-op apply"
        );
    }

    // Someone else's tag survives; a scaling change is an update in place.
    aws.peer.tag(&id, "cost-center", "1234");
    aws.repo
        .replace_in("environments/preview.yaml", "maxAcu: 4", "maxAcu: 8");
    let plan: Value =
        serde_json::from_str(&aws.ok(&["plan", "--json", "--branch", "feature/a"])).unwrap();
    assert_eq!(plan["summary"]["update"], 1, "{plan}");
    assert_eq!(plan["actions"][0]["changes"][0]["field"], "scaling");
    assert_eq!(
        plan["actions"][0]["changes"].as_array().unwrap().len(),
        1,
        "{plan}"
    );
    aws.ok(&["apply", "--branch", "feature/a"]);
    let modifies = aws.peer.calls_of("ModifyDBCluster");
    assert_eq!(modifies.len(), 1);
    assert_eq!(
        param(&modifies[0], "ServerlessV2ScalingConfiguration"),
        &json!({"MinCapacity": 0.0, "MaxCapacity": 8.0})
    );
    assert_eq!(param(&modifies[0], "ApplyImmediately"), true);
    let live = aws.peer.tags_of(&id);
    assert_eq!(live["cost-center"], "1234", "{live}");
    let status: Value = serde_json::from_str(&aws.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["environments"][0]["max_acu"], 8);
    assert_eq!(status["environments"][0]["state"], "available");

    // Destroy: the writer and the cluster in one call (`DeleteDBInstances`), without a final
    // snapshot, right after a fresh read of the cluster.
    aws.ok(&["destroy", "--branch", "feature/a", "--yes"]);
    let calls = aws.peer.calls();
    let at = |action: &str| {
        calls
            .iter()
            .position(|c| c["action"] == action && c["status"] == 200)
            .unwrap_or_else(|| panic!("no {action}"))
    };
    assert!(aws.peer.calls_of("DeleteDBInstance").is_empty());
    let delete = &calls[at("DeleteDBCluster")];
    assert_eq!(param(delete, "DeleteDBInstances"), true);
    assert_eq!(param(delete, "SkipFinalSnapshot"), true);
    assert_eq!(param(delete, "DeleteAutomatedBackups"), true);
    assert_eq!(
        calls[at("DeleteDBCluster") - 1]["action"],
        "DescribeDBClusters",
        "the live tags are read right before the delete"
    );
    assert!(!aws.peer.cluster_ids().contains(&id));
    assert!(aws.peer.instances().is_empty(), "the writer went with it");
    assert_eq!(
        support::database_count(&id),
        "0",
        "the data plane's database went with the cluster"
    );

    // Every action called here is in the policy `iam-policy` prints.
    let policy: Value = serde_json::from_str(&aws.ok(&["iam-policy", "--json"])).unwrap();
    let allowed = envctl::provider::aws::policy::allowed_actions(&policy);
    let mut called: Vec<String> = calls
        .iter()
        .map(|c| match c["service"].as_str().unwrap() {
            "tagging" => format!("tag:{}", c["action"].as_str().unwrap()),
            service => format!("{service}:{}", c["action"].as_str().unwrap()),
        })
        .collect();
    called.sort();
    called.dedup();
    for action in &called {
        assert!(
            allowed.contains(action),
            "{action} is not in the policy: {allowed:?}"
        );
    }
}

#[test]
fn a_replace_waits_until_the_old_cluster_is_gone() {
    let aws = Aws::new("replace", &["--delete-delay", "1.5"]);
    let id = aws.id("feature/r");
    aws.ok(&["apply", "--branch", "feature/r"]);
    aws.repo.set_preview_user("envctl_aws_app");
    let plan: Value =
        serde_json::from_str(&aws.ok(&["plan", "--json", "--branch", "feature/r"])).unwrap();
    assert_eq!(plan["actions"][0]["type"], "replace", "{plan}");
    aws.peer.reset_calls();
    aws.ok(&["apply", "--branch", "feature/r", "--yes"]);
    let calls = aws.peer.calls();
    let deleted = calls
        .iter()
        .find(|c| c["action"] == "DeleteDBCluster" && c["status"] == 200)
        .expect("the old cluster was deleted");
    let created = calls
        .iter()
        .find(|c| c["action"] == "CreateDBCluster" && c["status"] == 200)
        .expect("the new one was created");
    let waited = created["time"].as_f64().unwrap() - deleted["time"].as_f64().unwrap();
    assert!(waited >= 1.4, "created {waited:.2}s after the delete began");
    assert_eq!(aws.peer.cluster_ids(), std::slice::from_ref(&id));
    assert_eq!(
        aws.sql("feature/r", "SELECT current_user"),
        "envctl_aws_app"
    );
    assert_eq!(aws.sql("feature/r", DUMMY_ROWS), "3");
    aws.ok(&["destroy", "--branch", "feature/r", "--yes"]);
}

/// Calls slower than the poll interval (100 ms here) make polls run back to back: the poll that
/// starts as the old cluster's delete wait ends still reads the old id, and arrives after the new
/// create. The new cluster's wait must not judge by it (it would say the cluster does not exist).
#[test]
fn a_replace_with_calls_slower_than_the_poll_interval() {
    let aws = Aws::new("replace-slow", &["--delete-delay", "0.5"]);
    aws.ok(&["apply", "--branch", "feature/s"]);
    aws.repo.set_preview_user("envctl_aws_app");
    // Slower than the data plane's DROP DATABASE and CREATE DATABASE between the old cluster's
    // end and the new one's create, so the poll under way then is still under way after it.
    aws.peer.config(json!({"latency_ms": [800, 800]}));
    aws.ok(&["apply", "--branch", "feature/s", "--yes"]);
    aws.peer.config(json!({"latency_ms": [0, 0]}));
    assert_eq!(aws.peer.cluster_ids(), vec![aws.id("feature/s")]);
    assert_eq!(
        aws.sql("feature/s", "SELECT current_user"),
        "envctl_aws_app"
    );
    aws.ok(&["destroy", "--branch", "feature/s", "--yes"]);
}

#[test]
fn clusters_of_others_are_never_changed_or_deleted() {
    let aws = Aws::new("ownership", &[]);
    let mine = aws.id("feature/x");
    // An untagged cluster with our id; another repository's; another prefix's.
    aws.peer.boto3(&format!(
        "for ident, tags in [({mine:?}, []), \
             ('other-repo-cluster', [{{'Key': 'envctl:managed', 'Value': 'true'}}, {{'Key': 'envctl:repo', 'Value': 'someone/else'}}, {{'Key': 'envctl:prefix', 'Value': {prefix:?}}}, {{'Key': 'envctl:branch', 'Value': 'feature/x'}}]), \
             ('other-prefix-cluster', [{{'Key': 'envctl:managed', 'Value': 'true'}}, {{'Key': 'envctl:repo', 'Value': {repo:?}}}, {{'Key': 'envctl:prefix', 'Value': 'zz'}}, {{'Key': 'envctl:branch', 'Value': 'feature/x'}}])]:\n    \
             rds.create_db_cluster(DBClusterIdentifier=ident, Engine='aurora-postgresql', WithExpressConfiguration=True, Tags=tags)",
        prefix = aws.prefix,
        repo = aws.repo.repo
    ));
    let status: Value = serde_json::from_str(&aws.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["environments"], json!([]), "{status}");
    aws.peer.reset_calls();
    let (code, _, stderr) = aws.run(&["apply", "--branch", "feature/x"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("refusing to touch `{mine}`")),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not carry `envctl:managed=true`"),
        "{stderr}"
    );
    for action in [
        "ModifyDBCluster",
        "DeleteDBCluster",
        "DeleteDBInstance",
        "AddTagsToResource",
        "RemoveTagsFromResource",
    ] {
        assert!(aws.peer.calls_of(action).is_empty(), "{action} was called");
    }
    assert_eq!(
        aws.peer.cluster_ids(),
        [
            mine.clone(),
            "other-prefix-cluster".to_owned(),
            "other-repo-cluster".to_owned()
        ]
    );

    // Ours, then its tags change between the plan and the delete: it is not deleted.
    aws.ok(&["apply", "--branch", "feature/z"]);
    let ours = aws.id("feature/z");
    aws.repo
        .replace_in("environments/preview.yaml", "\"feature/*\", ", "");
    let plan_file = aws.repo.path().join("plan.json");
    aws.ok(&[
        "plan",
        "--branch",
        "feature/z",
        "--out",
        plan_file.to_str().unwrap(),
    ]);
    aws.peer.tag(&ours, "envctl:repo", "someone/else");
    let (code, _, stderr) = aws.run(&["apply", "--yes", plan_file.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("stale plan"), "{stderr}");
    let (code, _, stderr) = aws.run(&["destroy", "--yes", "--branch", "feature/z"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("has no environment"), "{stderr}");
    assert!(
        aws.peer.cluster_ids().contains(&ours),
        "someone else's now: kept"
    );
}

#[test]
fn deletion_protection_is_refused_and_force_clears_it() {
    let aws = Aws::new("protection", &[]);
    aws.repo.replace_in(
        "environments/preview.yaml",
        "deletionProtection: false",
        "deletionProtection: true",
    );
    aws.ok(&["apply", "--branch", "feature/p"]);
    let id = aws.id("feature/p");
    let (code, _, stderr) = aws.run(&["destroy", "--branch", "feature/p", "--yes"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("deletion protection is on"), "{stderr}");
    assert!(aws.peer.cluster_ids().contains(&id));
    aws.ok(&["destroy", "--branch", "feature/p", "--yes", "--force"]);
    let modifies = aws.peer.calls_of("ModifyDBCluster");
    assert_eq!(param(modifies.last().unwrap(), "DeletionProtection"), false);
    assert!(!aws.peer.cluster_ids().contains(&id));
}

#[test]
fn discovery_over_250_clusters_takes_two_calls_a_hundred() {
    let aws = Aws::new("discovery", &[]);
    let tags = |repo: &str| {
        json!({
            "envctl:managed": "true",
            "envctl:repo": repo,
            "envctl:prefix": aws.prefix,
            "envctl:branch": "feature/{i}",
            "envctl:env": "preview",
        })
    };
    aws.peer.control(
        "POST",
        "/_peer/seed-clusters",
        &json!({"count": 250, "tags": tags(&aws.repo.repo), "id_prefix": format!("{}-seeded", aws.prefix)}),
    );
    aws.peer.control(
        "POST",
        "/_peer/seed-clusters",
        &json!({"count": 250, "tags": tags("someone/else"), "id_prefix": "unmanaged"}),
    );
    aws.peer.reset_calls();
    let status: Value = serde_json::from_str(&aws.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["environments"].as_array().unwrap().len(), 250);
    let calls = aws.peer.calls();
    let count = |action: &str| calls.iter().filter(|c| c["action"] == action).count();
    assert_eq!(count("GetResources"), 3, "⌈250/100⌉ pages");
    assert_eq!(count("DescribeDBClusters"), 3, "⌈250/100⌉ batches");
    assert_eq!(calls.len(), 6, "nothing else: {calls:?}");
}

#[test]
fn waits_share_one_poller() {
    // Each AWS call answers 150 ms late: a poll that slept a whole interval after finishing
    // would start 800 ms after the last one, not 500.
    let aws = Aws::new(
        "poller",
        &["--create-delay", "4", "--latency-ms", "150:150"],
    );
    for branch in [
        "feature/p1",
        "feature/p2",
        "feature/p3",
        "feature/p4",
        "feature/p5",
    ] {
        aws.repo.git(&["branch", branch]);
    }
    let started = std::time::Instant::now();
    let output = aws
        .envctl()
        .env("ENVCTL_AWS_POLL_INTERVAL", "500ms")
        .args(["apply", "--all", "--concurrency", "6"])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(aws.peer.cluster_ids().len(), 6, "five branches and main");
    let times = |action: &str| -> Vec<f64> {
        aws.peer
            .calls_of(action)
            .iter()
            .map(|c| c["time"].as_f64().unwrap())
            .collect()
    };
    let creates = times("CreateDBCluster");
    let last_create = creates.iter().cloned().fold(0.0, f64::max);
    let first_available = creates.iter().cloned().fold(f64::INFINITY, f64::min) + 4.0;
    // While every cluster is creating, only the poller describes: one DescribeDBClusters for all
    // six waits per interval, polls starting one interval apart, and no instance is described
    // (no writer can be ready before its cluster).
    let polls: Vec<f64> = times("DescribeDBClusters")
        .into_iter()
        .filter(|t| *t > last_create && *t < first_available)
        .collect();
    assert!(polls.len() >= 2, "polls {polls:?}, creates {creates:?}");
    for pair in polls.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (0.45..0.65).contains(&gap),
            "two polls {gap:.3}s apart (interval 0.5 s, each call 0.15 s): {polls:?}"
        );
    }
    let instances = times("DescribeDBInstances");
    assert!(
        instances.iter().all(|t| *t >= first_available),
        "instances described while every cluster was creating: {instances:?}"
    );
    assert!(!instances.is_empty(), "readiness reads the writers");
    let all_polls = times("DescribeDBInstances").len();
    assert!(
        all_polls as f64 <= elapsed.as_secs_f64() / 0.5 + 2.0,
        "{all_polls} polls in {elapsed:?}"
    );
}

#[test]
fn a_ready_cluster_is_taken_from_the_poll_that_saw_it_ready() {
    let aws = Aws::new("ready-read", &["--create-delay", "1"]);
    aws.repo.git(&["branch", "feature/r1"]);
    aws.ok(&["apply", "--branch", "feature/r1"]);
    let id = aws.id("feature/r1");
    let calls: Vec<Value> = aws
        .peer
        .calls()
        .into_iter()
        .filter(|c| c["params"].to_string().contains(&id))
        .collect();
    // Only the poll that saw the cluster past `creating` reads its writer.
    let ready = calls
        .iter()
        .position(|c| c["action"] == "DescribeDBInstances")
        .expect("a poll read the writer");
    let after: Vec<&str> = calls[ready + 1..]
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        after,
        [
            "AddTagsToResource",  // the writer gets the ownership tags (express makes it bare)
            "DescribeDBClusters", // the ownership re-check before tagging
            "AddTagsToResource",  // envctl:last-applied, before any migration runs
            "DescribeDBClusters", // the connection's endpoint
            "DescribeDBClusters", // the re-check before the ledger tags
            "AddTagsToResource",
            "DescribeDBClusters", // the endpoint apply prints
        ],
        "wait_ready describes the cluster no more after the poll that saw it ready"
    );
}

#[test]
fn apply_reads_the_endpoints_it_prints_together() {
    let aws = Aws::new("endpoints", &[]);
    for branch in ["feature/e1", "feature/e2", "feature/e3"] {
        aws.repo.git(&["branch", branch]);
    }
    aws.ok(&["apply", "--all"]);
    // Nothing to do now but refresh last-applied; every call answers 300 ms late.
    aws.peer.config(json!({"latency_ms": "300:300"}));
    aws.peer.reset_calls();
    let stdout = aws.ok(&["apply", "--all", "--json"]);
    let out: Value = serde_json::from_str(&stdout).unwrap();
    let environments = out["environments"].as_array().unwrap();
    assert_eq!(environments.len(), 4, "three branches and main");
    assert!(
        environments
            .iter()
            .all(|e| e["endpoint"]["host"].is_string())
    );
    let calls = aws.peer.calls();
    let time = |c: &Value| c["time"].as_f64().unwrap();
    let last_tagging = calls
        .iter()
        .filter(|c| c["action"] == "AddTagsToResource")
        .map(time)
        .fold(0.0, f64::max);
    let reads: Vec<f64> = calls
        .iter()
        .filter(|c| c["action"] == "DescribeDBClusters" && time(c) > last_tagging)
        .map(time)
        .collect();
    assert_eq!(
        reads.len(),
        4,
        "one endpoint read per environment: {reads:?}"
    );
    // One after the other they would arrive 300 ms apart; together, at once.
    let spread = reads.iter().cloned().fold(0.0, f64::max)
        - reads.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(spread < 0.25, "the endpoint reads spread over {spread:.3}s");
}

/// Injected faults (RELIABILITY.md): 20% of AWS calls throttled or HTTP 500 (half of those after
/// the call took effect), random latency, slow states; `apply --all` over ten branches, again
/// after each change (new environments, a new migration, new scaling): every apply converges with
/// at most one whole-command retry, with one cluster per branch, no other cluster or instance,
/// and every ledger complete. `ENVCTL_FAULT_APPLIES` (long run: 20) sets how many applies.
#[test]
fn faults_and_slow_states_converge_without_duplicates() {
    let applies = support::reliability::count("ENVCTL_FAULT_APPLIES", 2, 20);
    let seed = (support::reliability::seed() % 1_000_000).to_string();
    let aws = Aws::new(
        "faults",
        &[
            "--fault-rate",
            "0.2",
            "--create-delay",
            "1",
            "--delete-delay",
            "1",
            "--modify-delay",
            "0.5",
            "--latency-ms",
            "0:30",
            "--seed",
            &seed,
        ],
    );
    let features: Vec<String> = (1..=10).map(|i| format!("feature/f{i}")).collect();
    for branch in &features {
        aws.repo.git(&["branch", branch]);
    }
    let mut branches: Vec<String> = features.clone();
    branches.push("main".to_owned());
    let mut expected: Vec<String> = branches.iter().map(|b| aws.id(b)).collect();
    expected.sort();
    // Every branch points at main's commit: a change on main is every branch's.
    let commit_everywhere = |message: &str| {
        aws.repo.commit(message);
        for branch in &features {
            aws.repo.git(&["branch", "-f", branch, "main"]);
        }
    };
    let started = std::time::Instant::now();
    let (mut retries, mut migrations, mut max_acu) = (0, 3, 4);
    let mut done: std::collections::BTreeMap<&str, u64> = Default::default();
    for round in 1..=applies {
        let change = match round % 3 {
            _ if round == 1 => "create",
            0 => {
                // New environments: three branches lose theirs (the destroy retried once if a
                // fault outlasts the SDK's retries).
                for branch in &features[(round as usize % 8)..(round as usize % 8 + 3)] {
                    let (code, _, _) = aws.run(&["destroy", "--yes", "--branch", branch]);
                    if code != 0 {
                        aws.ok(&["destroy", "--yes", "--branch", branch]);
                    }
                }
                "create"
            }
            1 => {
                migrations += 1;
                aws.repo.write(
                    &format!("schemas/migrations/{migrations:04}_step.sql"),
                    &format!("CREATE TABLE dummy.t{migrations} (id int);\n"),
                );
                commit_everywhere("a migration");
                "migrate"
            }
            _ => {
                max_acu = if max_acu == 4 { 6 } else { 4 };
                let text = aws.repo.read("environments/preview.yaml");
                let text = text
                    .replace("maxAcu: 4 }", &format!("maxAcu: {max_acu} }}"))
                    .replace("maxAcu: 6 }", &format!("maxAcu: {max_acu} }}"));
                aws.repo.write("environments/preview.yaml", &text);
                commit_everywhere("scaling");
                "update"
            }
        };
        *done.entry(change).or_default() += 1;
        let (code, _, stderr) = aws.run(&["apply", "--all", "--concurrency", "4"]);
        if code != 0 {
            retries += 1;
            let (code, _, again) = aws.run(&["apply", "--all", "--concurrency", "4"]);
            assert_eq!(
                code, 0,
                "apply {round} ({change}) did not converge with one retry:\n{stderr}\n--- retry:\n{again}"
            );
        }
        let ids = aws.peer.cluster_ids();
        assert_eq!(
            ids, expected,
            "apply {round}: one cluster per branch, none else"
        );
        let instances: Vec<String> = aws.peer.instances().into_iter().map(|(i, _)| i).collect();
        let writers: Vec<String> = expected
            .iter()
            .map(|id| format!("{id}-instance-1"))
            .collect();
        assert_eq!(
            instances, writers,
            "apply {round}: one writer per cluster, none else"
        );
    }
    let calls = aws.peer.calls();
    let faults = |kind: &str| calls.iter().filter(|c| c["fault"] == kind).count();
    let injected = faults("throttle") + faults("500") + faults("500-after");
    assert!(injected > 0, "the peer injected no fault");
    let versions = (1..=migrations)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for branch in &branches {
        assert_eq!(aws.sql(branch, APPLIED_VERSIONS), versions, "{branch}");
    }
    let status: Value = serde_json::from_str(&aws.ok(&["status", "--json"])).unwrap();
    for env in status["environments"].as_array().unwrap() {
        let max = if env["branch"] == "main" {
            8.0
        } else {
            f64::from(max_acu)
        };
        assert_eq!(env["max_acu"].as_f64(), Some(max), "{env}");
    }
    aws.envctl()
        .args(["plan", "--all", "--detailed-exitcode"])
        .assert()
        .code(0);
    eprintln!(
        "faults: {applies} applies over {} branches ({done:?}) in {:.0}s, each converged with {retries} whole-command retries in all; {} AWS calls, {injected} faults injected ({} throttles, {} 500s before and {} after the effect); {} clusters and {} writers at the end: no duplicate, no leak",
        branches.len(),
        started.elapsed().as_secs_f64(),
        calls.len(),
        faults("throttle"),
        faults("500"),
        faults("500-after"),
        expected.len(),
        expected.len(),
    );
}

#[test]
fn urls_and_tokens_for_aws_environments() {
    let aws = Aws::new("tokens", &[]);
    aws.ok(&["apply", "--branch", "feature/t"]);
    let id = aws.id("feature/t");
    let endpoint = aws.peer.boto3(&format!(
        "print(rds.describe_db_clusters(DBClusterIdentifier={id:?})['DBClusters'][0]['Endpoint'])"
    ));
    let endpoint = endpoint.trim();
    // Without the test override: the cluster endpoint, TLS required, a fresh token as password.
    let real = || {
        let mut cmd = aws.envctl();
        cmd.env_remove("ENVCTL_DATA_PLANE_OVERRIDE");
        cmd
    };
    let url = url::Url::parse(support::url_of(real(), "feature/t").trim()).unwrap();
    assert_eq!(url.host_str(), Some(endpoint));
    assert_eq!(url.port(), Some(5432));
    assert_eq!(url.username(), "postgres");
    assert_eq!(url.query(), Some("sslmode=require"));
    let password = percent_encoding::percent_decode_str(url.password().unwrap())
        .decode_utf8()
        .unwrap()
        .into_owned();
    assert!(
        password.starts_with(&format!("{endpoint}:5432/?Action=connect&DBUser=postgres&")),
        "{password}"
    );
    assert!(password.contains("X-Amz-Signature="), "{password}");
    let env = String::from_utf8(
        real()
            .args(["exec", "--branch", "feature/t", "--", "env"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(env.contains("PGSSLMODE=require\n"), "{env}");
    assert!(env.contains(&format!("PGHOST={endpoint}\n")), "{env}");

    let token = aws.ok(&["token", "--branch", "feature/t"]);
    assert!(token.starts_with(&format!("{endpoint}:5432/?Action=connect&DBUser=postgres&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAENVCTLTESTKEY%2F")), "{token}");
    assert!(
        token.contains("&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token="),
        "{token}"
    );
    let token = aws.ok(&[
        "token",
        "--hostname",
        "db.example.com",
        "--port",
        "5433",
        "--username",
        "a+b user",
        "--region",
        "eu-west-1",
    ]);
    assert!(
        token.starts_with("db.example.com:5433/?Action=connect&DBUser=a%2Bb%20user&"),
        "{token}"
    );
    assert!(
        token.contains("%2Feu-west-1%2Frds-db%2Faws4_request"),
        "{token}"
    );
    aws.repo
        .envctl()
        .args(["--provider", "local", "token", "--branch", "feature/t"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("needs the aws provider"));
    aws.ok(&["destroy", "--branch", "feature/t", "--yes"]);
}

#[test]
fn no_region_or_a_bad_endpoint_is_a_clear_error() {
    let aws = Aws::new("config", &[]);
    let (code, _, stderr) = {
        let output = aws
            .envctl()
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .args(["status"])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::new(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no AWS region is configured"), "{stderr}");
    let started = std::time::Instant::now();
    let output = aws
        .envctl()
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_MAX_ATTEMPTS", "2")
        .args(["status"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot observe the live environments"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn the_cluster_quota_is_named_with_how_to_raise_it() {
    let aws = Aws::new("quota", &["--max-clusters", "1"]);
    aws.ok(&["apply", "--branch", "feature/q1"]);
    let (code, _, stderr) = aws.run(&["apply", "--branch", "feature/q2"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("quota of DB clusters in this Region is used up (40 by default"),
        "{stderr}"
    );
    assert!(stderr.contains("Service Quotas"), "{stderr}");
    assert_eq!(aws.peer.cluster_ids(), [aws.id("feature/q1")]);
}

#[test]
fn prune_on_aws_counts_only_origin_s_branches_and_looks_again_before_deleting() {
    let aws = Aws::new("prune", &["--delete-delay", "0.3"]);
    let _origin = aws.repo.with_origin();
    aws.repo.branch("feature/gone", 1, true);
    aws.repo.branch("feature/unpushed", 1, false);
    aws.repo.branch("feature/live", 1, true);
    for branch in ["feature/gone", "feature/unpushed", "feature/live"] {
        aws.ok(&["apply", "--branch", branch]);
    }
    // Applied ten minutes ago, before git last changed here: prune trusts git's reasons only for
    // what was applied before the clone last learned origin's branches.
    for branch in ["feature/gone", "feature/unpushed", "feature/live"] {
        aws.peer.applied_ten_minutes_ago(&aws.id(branch));
    }
    // Deleted on origin, still a local branch: on AWS only origin counts. Then fetched as CI
    // fetches.
    aws.repo
        .git(&["push", "-q", "origin", "--delete", "feature/gone"]);
    aws.repo.fetch_as_ci();
    let plan: Value = serde_json::from_str(&aws.ok(&["prune", "--dry-run", "--json"])).unwrap();
    let planned: Vec<(&str, &str)> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["branch"].as_str().unwrap(), a["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        planned,
        [
            ("feature/gone", "branch deleted: not on origin"),
            ("feature/unpushed", "branch deleted: not on origin"),
        ]
    );
    aws.peer.reset_calls();
    let report: Value = serde_json::from_str(&aws.ok(&["prune", "--yes", "--json"])).unwrap();
    let statuses: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["deleted", "deleted"], "{report:#}");
    assert_eq!(aws.peer.cluster_ids(), [aws.id("feature/live")]);
    // Each delete was preceded by a fresh look at the clusters.
    let calls = aws.peer.calls();
    let first_delete = calls
        .iter()
        .position(|c| c["action"] == "DeleteDBCluster")
        .expect("a delete");
    assert!(
        calls[..first_delete]
            .iter()
            .filter(|c| c["action"] == "GetResources")
            .count()
            >= 2,
        "observed, then looked again before deleting: {calls:#?}"
    );
    aws.ok(&["destroy", "--branch", "feature/live", "--yes"]);
}
