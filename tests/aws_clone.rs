//! Data branches on the AWS provider, against the offline AWS peer: the four calls of a
//! copy-on-write clone with exactly the parameters the RDS API reference gives for a cluster
//! without a VPC, tags on the restore itself, faults that converge, sources that cannot be
//! cloned, and a policy that covers every call. The data planes go to the shared test server
//! (ENVCTL_DATA_PLANE_OVERRIDE), where a clone's database starts as a copy of its source's.

mod support;

use predicates::prelude::*;
use serde_json::{Value, json};
use support::TestRepo;
use support::peer::{Peer, param, run_prefix, tag_list};

const USERS_MIGRATION: &str = "CREATE SCHEMA app;
CREATE TABLE app.users (id integer PRIMARY KEY, email text NOT NULL, visits integer NOT NULL DEFAULT 0);
";

/// A repository whose previews copy `main`'s data, masking e-mail addresses, and a peer.
struct Clones {
    repo: TestRepo,
    peer: Peer,
    prefix: String,
}

impl Clones {
    fn new(name: &str, flags: &[&str]) -> Clones {
        let repo = TestRepo::new(&format!("aws-clone-{name}"));
        repo.write("schemas/migrations/0004_users.sql", USERS_MIGRATION);
        repo.write(
            "schemas/mask/visits.sql",
            "UPDATE app.users SET visits = visits + 1000;\n",
        );
        repo.replace_in(
            "environments/preview.yaml",
            "database:\n  name: postgres\n  user: postgres\n",
            "database:\n  name: postgres\n  user: postgres\n  from:\n    branch: main\n    mask:\n      app.users.email: email\n    maskSql: [schemas/mask/visits.sql]\n",
        );
        repo.commit("previews copy main");
        Clones {
            repo,
            peer: Peer::start(flags),
            prefix: run_prefix(),
        }
    }

    fn envctl(&self) -> assert_cmd::Command {
        let mut cmd = self.peer.envctl(self.repo.path(), &self.repo.repo);
        cmd.env("ENVCTL_PREFIX", &self.prefix);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.envctl().args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn id(&self, branch: &str) -> String {
        support::cluster_id(&self.prefix, &self.repo.repo, branch).to_string()
    }

    fn sql(&self, branch: &str, sql: &str) -> String {
        self.ok(&support::exec_psql(branch, sql)).trim().to_owned()
    }

    /// `main` applied, with two users.
    fn main_with_users(&self) {
        self.ok(&["apply", "--branch", "main"]);
        self.sql(
            "main",
            "INSERT INTO app.users VALUES (1, 'ada@example.com', 1), (2, 'alan@example.com', 2)",
        );
    }
}

/// The calls that changed something, by action, answered 200.
fn mutations(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c["status"] == 200)
        .filter_map(|c| c["action"].as_str())
        .filter(|a| !a.starts_with("Describe") && *a != "GetResources")
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_clone_is_four_calls_with_the_documented_parameters() {
    let aws = Clones::new("calls", &["--create-delay", "0.3", "--modify-delay", "0.3"]);
    aws.main_with_users();
    let (main, feature) = (aws.id("main"), aws.id("feature/a"));
    aws.peer.reset_calls();
    aws.ok(&["apply", "--branch", "feature/a"]);
    let calls = aws.peer.calls();

    let restores: Vec<&Value> = calls
        .iter()
        .filter(|c| c["action"] == "RestoreDBClusterToPointInTime")
        .collect();
    assert_eq!(restores.len(), 1);
    let restore = restores[0];
    assert_eq!(param(restore, "DBClusterIdentifier"), feature.as_str());
    assert_eq!(param(restore, "SourceDBClusterIdentifier"), main.as_str());
    assert_eq!(param(restore, "RestoreType"), "copy-on-write");
    assert_eq!(param(restore, "UseLatestRestorableTime"), true);
    assert_eq!(param(restore, "EnableVPCNetworking"), false);
    assert_eq!(param(restore, "EnableInternetAccessGateway"), true);
    assert_eq!(param(restore, "EnableIAMDatabaseAuthentication"), true);
    assert_eq!(
        param(restore, "ServerlessV2ScalingConfiguration"),
        &json!({"MinCapacity": 0.0, "MaxCapacity": 4.0})
    );
    assert!(param(restore, "RestoreToTime").is_null());
    // Every tag on the restore itself: ownership, the source, masking pending, the spec's.
    let tags = tag_list(restore);
    assert_eq!(tags["envctl:managed"], "true");
    assert_eq!(tags["envctl:repo"], aws.repo.repo.as_str());
    assert_eq!(tags["envctl:prefix"], aws.prefix.as_str());
    assert_eq!(tags["envctl:branch"], "feature/a");
    assert_eq!(tags["envctl:source"], main.as_str());
    assert_eq!(tags["envctl:masked"], "pending");
    assert_eq!(tags["team"], "web");

    let modify = calls
        .iter()
        .find(|c| c["action"] == "ModifyDBCluster")
        .expect("a ModifyDBCluster");
    assert_eq!(param(modify, "DBClusterIdentifier"), feature.as_str());
    assert_eq!(param(modify, "MasterUserAuthenticationType"), "iam-db-auth");
    let create = calls
        .iter()
        .find(|c| c["action"] == "CreateDBInstance")
        .expect("a CreateDBInstance");
    assert_eq!(param(create, "DBClusterIdentifier"), feature.as_str());
    assert_eq!(param(create, "DBInstanceClass"), "db.serverless");
    assert_eq!(param(create, "Engine"), "aurora-postgresql");
    let writer_tags = tag_list(create);
    assert_eq!(writer_tags["envctl:repo"], aws.repo.repo.as_str());
    assert_eq!(writer_tags["envctl:prefix"], aws.prefix.as_str());
    // The order the API reference gives.
    let at = |action: &str| calls.iter().position(|c| c["action"] == action).unwrap();
    assert!(at("RestoreDBClusterToPointInTime") < at("ModifyDBCluster"));
    assert!(at("ModifyDBCluster") < at("CreateDBInstance"));
    // Three mutating calls make the clone, then one tag write: the ledger, with masked=done
    // (the restore carried everything else, last-applied too).
    assert_eq!(
        mutations(&calls),
        [
            "RestoreDBClusterToPointInTime",
            "ModifyDBCluster",
            "CreateDBInstance",
            "AddTagsToResource"
        ]
    );
    assert!(tags["envctl:last-applied"].is_string(), "{tags:?}");
    let tag_writes: Vec<Value> = calls
        .iter()
        .filter(|c| c["action"] == "AddTagsToResource" && c["status"] == 200)
        .map(tag_list)
        .collect();
    assert_eq!(tag_writes[0]["envctl:masked"], "done", "{tag_writes:?}");
    assert!(tag_writes[0]["envctl:ledger-digest"].is_string());
    assert!(tag_writes[0]["envctl:last-applied"].is_string());
    let state = aws
        .peer
        .control("GET", &format!("/_peer/cluster?id={feature}"), &Value::Null);
    assert_eq!(state["source"], main.as_str());
    assert_eq!(state["master_auth"], "iam-db-auth");
    assert_eq!(state["vpc"], false);
    assert_eq!(aws.peer.tags_of(&feature)["envctl:masked"], "done");
    // Nothing of main changed: no call but reads named it, except as the source.
    for call in &calls {
        let action = call["action"].as_str().unwrap_or_default();
        let read = action.starts_with("Describe") || action.starts_with("List");
        if action != "RestoreDBClusterToPointInTime" && !read && call["status"] == 200 {
            assert_ne!(param(call, "DBClusterIdentifier"), main.as_str(), "{call}");
        }
    }

    // The data came with it, masked; main's is not.
    let emails = aws.sql(
        "feature/a",
        "SELECT string_agg(email || ':' || visits, ',' ORDER BY id) FROM app.users",
    );
    assert!(!emails.contains("example.com"), "{emails}");
    assert!(
        emails.contains(":1001,") && emails.ends_with(":1002"),
        "{emails}"
    );
    assert_eq!(
        aws.sql("main", "SELECT email FROM app.users WHERE id = 1"),
        "ada@example.com"
    );
    let status: Value = serde_json::from_str(&aws.ok(&["status", "--json"])).unwrap();
    let row = status["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["branch"] == "feature/a")
        .unwrap()
        .clone();
    assert_eq!(row["source"], main.as_str());

    // Every action called is in the policy `iam-policy` prints.
    let policy: Value = serde_json::from_str(&aws.ok(&["iam-policy", "--json"])).unwrap();
    let allowed = envctl::provider::aws::policy::allowed_actions(&policy);
    for call in aws.peer.calls() {
        let action = match call["service"].as_str().unwrap() {
            "tagging" => format!("tag:{}", call["action"].as_str().unwrap()),
            service => format!("{service}:{}", call["action"].as_str().unwrap()),
        };
        assert!(allowed.contains(&action), "{action}: {allowed:?}");
    }

    // Destroying the clone leaves its source.
    aws.ok(&["destroy", "--branch", "feature/a", "--yes"]);
    assert!(aws.peer.cluster_ids().contains(&main));
    assert!(!aws.peer.cluster_ids().contains(&feature));
    assert_eq!(aws.sql("main", "SELECT count(*) FROM app.users"), "2");
}

#[test]
fn faults_on_every_clone_call_converge_to_one_masked_clone() {
    let aws = Clones::new(
        "faults",
        &["--create-delay", "0.2", "--modify-delay", "0.2"],
    );
    aws.main_with_users();
    let feature = aws.id("feature/f");
    aws.peer.config(json!({
        "fault_rate": 0.2,
        "seed": 17,
        "fault_actions": [
            "RestoreDBClusterToPointInTime",
            "ModifyDBCluster",
            "CreateDBInstance",
            "AddTagsToResource",
            "DescribeDBClusters",
            "DescribeDBInstances"
        ]
    }));
    let mut applied = false;
    for _ in 0..6 {
        let output = aws
            .envctl()
            .args(["apply", "--branch", "feature/f"])
            .output()
            .unwrap();
        if output.status.success() {
            applied = true;
            break;
        }
    }
    assert!(applied, "no apply converged in six runs");
    aws.peer.config(json!({"fault_rate": 0.0}));
    let clusters: Vec<String> = aws
        .peer
        .cluster_ids()
        .into_iter()
        .filter(|c| c == &feature)
        .collect();
    assert_eq!(clusters.len(), 1);
    let writers: Vec<(String, String)> = aws
        .peer
        .instances()
        .into_iter()
        .filter(|(_, cluster)| cluster == &feature)
        .collect();
    assert_eq!(writers.len(), 1, "{writers:?}");
    assert_eq!(aws.peer.tags_of(&feature)["envctl:masked"], "done");
    assert_eq!(
        aws.sql(
            "feature/f",
            "SELECT string_agg(visits::text, ',' ORDER BY id) FROM app.users"
        ),
        "1001,1002",
        "masked exactly once"
    );
    aws.envctl()
        .args(["plan", "--branch", "feature/f", "--detailed-exitcode"])
        .assert()
        .code(0);
}

#[test]
fn a_stopped_source_blocks_its_clones_only() {
    let aws = Clones::new("stopped", &[]);
    aws.main_with_users();
    aws.peer.control(
        "POST",
        "/_peer/set-status",
        &json!({"cluster": aws.id("main"), "status": "stopped"}),
    );
    aws.repo.replace_in(
        "environments/preview.yaml",
        "branches: [\"feature/*\", \"fix/*\"]",
        "branches: [\"feature/*\"]",
    );
    std::fs::write(
        aws.repo.path().join("environments/fixes.yaml"),
        aws.repo
            .read("environments/preview.yaml")
            .replace("name: preview", "name: fixes")
            .replace("branches: [\"feature/*\"]", "branches: [\"fix/*\"]")
            .split("  from:")
            .next()
            .unwrap(),
    )
    .unwrap();
    aws.repo.commit("fixes start empty");
    aws.repo.git(&["branch", "feature/b"]);
    aws.repo.git(&["branch", "fix/empty"]);
    aws.envctl()
        .args(["plan", "--all"])
        .assert()
        .stdout(predicate::str::contains("+ create   fix/empty"))
        .stdout(predicate::str::contains(format!(
            "cannot copy its source: its environment `{}` is `stopped`; a copy can be made of an available one only; start it (`aws rds start-db-cluster",
            aws.id("main")
        )));
    aws.envctl()
        .args(["apply", "--branch", "feature/b"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("is `stopped`"));
    assert!(!aws.peer.cluster_ids().contains(&aws.id("feature/b")));
    assert!(
        aws.peer
            .calls_of("RestoreDBClusterToPointInTime")
            .is_empty()
    );
}

#[test]
fn a_refused_clone_without_a_vpc_is_named_and_nothing_is_made_empty() {
    let aws = Clones::new("novpc", &[]);
    aws.main_with_users();
    aws.peer.config(json!({"clone_rejects_no_vpc": true}));
    aws.envctl()
        .args(["apply", "--branch", "feature/c"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "AWS refused a clone without a VPC",
        ))
        .stderr(predicate::str::contains("not created empty"));
    assert!(!aws.peer.cluster_ids().contains(&aws.id("feature/c")));
    assert!(
        aws.peer.calls_of("CreateDBCluster").len() == 1,
        "main's only"
    );
}

#[test]
fn an_apply_cut_off_after_the_restore_finishes_the_clone() {
    let aws = Clones::new("cut", &["--create-delay", "0.3"]);
    aws.main_with_users();
    let feature = aws.id("feature/d");
    // The restore as an apply killed right after it would leave it: tagged, masking pending,
    // no writer, no data-plane copy yet.
    let main = aws.id("main");
    let tags = [
        ("envctl:managed", "true".to_owned()),
        ("envctl:repo", aws.repo.repo.clone()),
        ("envctl:prefix", aws.prefix.clone()),
        ("envctl:branch", "feature/d".to_owned()),
        ("envctl:env", "preview".to_owned()),
        ("envctl:source", main.clone()),
        ("envctl:masked", "pending".to_owned()),
        ("envctl:ledger-digest", "none".to_owned()),
        ("envctl:schema-version", "0".to_owned()),
    ]
    .iter()
    .map(|(k, v)| format!("{{'Key': {k:?}, 'Value': {v:?}}}"))
    .collect::<Vec<_>>()
    .join(", ");
    aws.peer.boto3(&format!(
        "rds.restore_db_cluster_to_point_in_time(DBClusterIdentifier={feature:?}, SourceDBClusterIdentifier={main:?}, RestoreType='copy-on-write', UseLatestRestorableTime=True, EnableVPCNetworking=False, EnableInternetAccessGateway=True, EnableIAMDatabaseAuthentication=True, Tags=[{tags}])"
    ));
    aws.envctl()
        .args(["url", "--branch", "feature/d"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("masking has not committed"));
    aws.ok(&["apply", "--branch", "feature/d"]);
    assert_eq!(
        aws.peer
            .instances()
            .into_iter()
            .filter(|(_, c)| c == &feature)
            .count(),
        1
    );
    let emails = aws.sql("feature/d", "SELECT string_agg(email, ',') FROM app.users");
    assert!(!emails.contains("example.com"), "{emails}");
    assert_eq!(aws.peer.tags_of(&feature)["envctl:masked"], "done");
}

#[test]
fn a_clone_masked_with_other_rules_than_the_spec_s_gets_no_token_until_cloned_again() {
    // Cloned while the spec masked no column, then the rule came back (a revert): the clone holds
    // main's e-mail addresses, which the spec says are masked.
    let aws = Clones::new("rules-back", &[]);
    aws.main_with_users();
    aws.repo.git(&["checkout", "-q", "-b", "feature/two"]);
    let rule = "    mask:\n      app.users.email: email\n";
    aws.repo
        .replace_in("environments/preview.yaml", rule, "    mask: {}\n");
    aws.repo.commit("e-mail needs no masking");
    aws.ok(&["apply", "--branch", "feature/two"]);
    assert!(
        aws.sql("feature/two", "SELECT email FROM app.users")
            .contains("example.com")
    );
    aws.repo.git(&["revert", "--no-edit", "HEAD"]);
    for args in [
        vec!["token", "--branch", "feature/two"],
        vec!["url", "--branch", "feature/two"],
    ] {
        aws.envctl()
            .args(&args)
            .assert()
            .failure()
            .stdout("")
            .stderr(predicate::str::contains(
                "the masking rules changed since the copy was masked",
            ));
    }
    // The apply that clones again lifts it.
    aws.ok(&["apply", "--branch", "feature/two", "--yes"]);
    assert!(
        !aws.sql("feature/two", "SELECT email FROM app.users")
            .contains("example.com")
    );
    assert!(!aws.ok(&["token", "--branch", "feature/two"]).is_empty());
}

#[test]
fn a_clone_of_a_read_only_source_is_set_up_and_migrated_on_the_first_apply() {
    let aws = Clones::new("read-only", &[]);
    aws.main_with_users();
    // The source's database defaults to read-only; its clone keeps that setting.
    support::admin_sql(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_read_only = on",
        aws.id("main")
    ));
    aws.repo.git(&["checkout", "-q", "-b", "feature/ro"]);
    aws.repo.write(
        "schemas/migrations/0005_more.sql",
        "CREATE TABLE app.more (id integer);\n",
    );
    aws.repo.commit("a migration of its own");
    aws.ok(&["apply", "--branch", "feature/ro"]);
    assert_eq!(aws.sql("feature/ro", "SELECT count(*) FROM app.more"), "0");
    // Sessions handed to users keep the database's own default.
    assert_eq!(
        aws.sql("feature/ro", "SHOW default_transaction_read_only"),
        "on"
    );
}

#[test]
fn a_clone_that_fails_at_aws_while_apply_waits_fails_at_once_with_what_to_do() {
    let aws = Clones::new("fails", &[]);
    aws.main_with_users();
    aws.repo.git(&["branch", "feature/x"]);
    let feature = aws.id("feature/x");
    // While apply waits on the clone (its poller's first look at the clone's instances), the
    // clone turns `cloning-failed`, as AWS may show it after taking the restore: waiting longer
    // changes nothing.
    let hold = aws.peer.hold("DescribeDBInstances", &feature, 0);
    std::thread::scope(|scope| {
        let apply = scope.spawn(|| {
            let started = std::time::Instant::now();
            let output = aws
                .envctl()
                .args(["apply", "--branch", "feature/x", "--wait-timeout", "10m"])
                .output()
                .unwrap();
            (output, started.elapsed())
        });
        aws.peer.wait_held(hold);
        aws.peer
            .set_status(json!({"cluster": feature, "status": "cloning-failed"}));
        aws.peer.release(hold);
        let (output, took) = apply.join().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            took < std::time::Duration::from_secs(60),
            "waited {took:?} for a cluster that cannot become available"
        );
        let said = format!("{stdout}{stderr}");
        assert!(said.contains("cloning-failed"), "{said}");
        assert!(said.contains("describe-events"), "{said}");
    });
}

/// How the clone's master user logs in, as the peer keeps it (`GET /_peer/cluster`).
fn master_auth(aws: &Clones, id: &str) -> String {
    let state = aws
        .peer
        .control("GET", &format!("/_peer/cluster?id={id}"), &Value::Null);
    state["master_auth"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_master_user_modify_refused_for_a_busy_clone_is_sent_again_before_the_writer() {
    let aws = Clones::new("busy", &["--create-delay", "0.3"]);
    aws.main_with_users();
    let feature = aws.id("feature/e");
    // Between the poll that saw the clone available and the modify, a backup begins: RDS
    // refuses the modify (InvalidDBClusterStateFault) and nothing changes.
    let hold = aws.peer.hold("ModifyDBCluster", &feature, 0);
    std::thread::scope(|scope| {
        let apply = scope.spawn(|| {
            aws.envctl()
                .args(["apply", "--branch", "feature/e"])
                .output()
                .unwrap()
        });
        aws.peer.wait_held(hold);
        aws.peer
            .set_status(json!({"cluster": feature, "status": "backing-up"}));
        aws.peer.release(hold);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while aws.peer.calls_of("ModifyDBCluster").is_empty() {
            assert!(std::time::Instant::now() < deadline, "no modify answered");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(aws.peer.calls_of("ModifyDBCluster")[0]["status"], 400);
        assert_eq!(
            master_auth(&aws, &feature),
            "password",
            "refused: no effect"
        );
        aws.peer
            .set_status(json!({"cluster": feature, "status": "available"}));
        let output = apply.join().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
    assert_eq!(master_auth(&aws, &feature), "iam-db-auth");
    let modifies: Vec<Value> = aws
        .peer
        .calls_of("ModifyDBCluster")
        .iter()
        .map(|c| c["status"].clone())
        .collect();
    assert_eq!(modifies, [json!(400), json!(200)]);
    // The writer came after the modify RDS took.
    let calls = aws.peer.calls();
    let at = |action: &str, status: u64| {
        calls
            .iter()
            .position(|c| c["action"] == action && c["status"] == status)
            .unwrap()
    };
    assert!(at("ModifyDBCluster", 200) < at("CreateDBInstance", 200));
    assert_eq!(aws.peer.tags_of(&feature)["envctl:masked"], "done");
}

#[test]
fn a_pending_clone_with_a_writer_gets_its_master_user_on_iam_again() {
    let aws = Clones::new("pending-writer", &[]);
    aws.main_with_users();
    let feature = aws.id("feature/g");
    // Masking fails after the writer is made: the copy stays pending.
    aws.repo.git(&["checkout", "-q", "-b", "feature/g"]);
    aws.repo.write("schemas/mask/visits.sql", "SELECT 1 / 0;\n");
    aws.repo.commit("a masking file that fails");
    aws.envctl()
        .args(["apply", "--branch", "feature/g"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("division by zero"));
    assert_eq!(aws.peer.tags_of(&feature)["envctl:masked"], "pending");
    assert_eq!(
        aws.peer
            .instances()
            .into_iter()
            .filter(|(_, c)| c == &feature)
            .count(),
        1
    );
    // The master user on passwords, as an envctl that made the writer after a refused modify
    // left it (AWS shows no field saying so).
    aws.peer.boto3(&format!(
        "rds.modify_db_cluster(DBClusterIdentifier={feature:?}, MasterUserAuthenticationType='password', ApplyImmediately=True)"
    ));
    assert_eq!(master_auth(&aws, &feature), "password");
    aws.repo.write(
        "schemas/mask/visits.sql",
        "UPDATE app.users SET visits = visits + 1000;\n",
    );
    aws.repo.commit("the masking file fixed");
    aws.peer.reset_calls();
    aws.ok(&["apply", "--branch", "feature/g"]);
    assert_eq!(master_auth(&aws, &feature), "iam-db-auth");
    let modify = &aws.peer.calls_of("ModifyDBCluster")[0];
    assert_eq!(param(modify, "MasterUserAuthenticationType"), "iam-db-auth");
    assert_eq!(aws.peer.tags_of(&feature)["envctl:masked"], "done");
    assert_eq!(
        aws.sql(
            "feature/g",
            "SELECT string_agg(visits::text, ',' ORDER BY id) FROM app.users"
        ),
        "1001,1002",
        "masked exactly once"
    );
    // Masked: the next apply sends no modify.
    aws.peer.reset_calls();
    aws.ok(&["apply", "--branch", "feature/g"]);
    assert!(aws.peer.calls_of("ModifyDBCluster").is_empty());
}

#[test]
fn a_source_cluster_s_master_user_is_the_spec_s_or_the_copy_is_blocked() {
    let aws = Clones::new("master-user", &[]);
    aws.peer.boto3(
        "rds.create_db_cluster(DBClusterIdentifier='staging-orders', Engine='aurora-postgresql', \
         MasterUsername='dbadmin', MasterUserPassword='not-used-1234')",
    );
    aws.repo.replace_in(
        "environments/preview.yaml",
        "    branch: main\n",
        "    cluster: staging-orders\n",
    );
    aws.repo.commit("previews copy staging");
    aws.repo.git(&["branch", "feature/s"]);
    let plan = aws
        .envctl()
        .args(["plan", "--branch", "feature/s"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
    assert_eq!(plan.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cluster `staging-orders`'s master user is `dbadmin`, not `postgres`"),
        "{said}"
    );
    assert!(said.contains("set `from.masterUser: dbadmin`"), "{said}");
    // Said in the spec: the copy is planned, and the apply role's policy grants that login.
    aws.repo.replace_in(
        "environments/preview.yaml",
        "    cluster: staging-orders\n",
        "    cluster: staging-orders\n    masterUser: dbadmin\n",
    );
    aws.repo.commit("staging's master user");
    aws.repo.git(&["branch", "-f", "feature/s"]);
    let plan = aws
        .envctl()
        .args(["plan", "--branch", "feature/s", "--json"])
        .output()
        .unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    // The source passes (what stops the plan now is only that the peer's data plane holds no
    // database for a cluster made by hand, so its ledger cannot be read).
    let action = &plan["actions"][0];
    let reason = action["reason"].as_str().unwrap_or_default();
    assert!(
        action["type"] == "clone" || reason.contains("ledger cannot be read"),
        "{plan:#}"
    );
    assert!(!reason.contains("master user"), "{plan:#}");
    let policy = aws.ok(&["iam-policy", "--role", "apply"]);
    assert!(policy.contains("dbuser:*/dbadmin"), "{policy}");
}
