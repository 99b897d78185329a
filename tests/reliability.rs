//! Reliability under interruption and concurrency (RELIABILITY.md), through the binary, on both
//! providers: the local one on the shared test server, the AWS one against the offline peer.
//!
//! - Kill at any point: `apply --all` over several branches is SIGKILLed at a random moment (the
//!   seed is printed), then applied again; every branch has exactly one environment, its ledger
//!   matches its files, no migration or seed ran twice, and nothing is left over after a prune.
//! - Kill a delete at any point (AWS): `destroy` and `prune` are SIGKILLed at a random moment,
//!   then apply and prune run again; no writerless cluster survives a converging apply, no
//!   cluster of a live branch is deleted, and nothing outside the prefix or the repository is
//!   touched.
//! - Races: two applies of one branch at once; apply racing prune; a delete racing a tag change.
//!
//! Counts scale with `ENVCTL_RELIABILITY=long` (`scripts/reliability.sh --long`); each test prints
//! what it did.

mod support;

use std::collections::BTreeMap;
use std::process::{Command as Process, Output, Stdio};
use std::time::{Duration, Instant};

use support::TestRepo;
use support::peer::{Peer, run_prefix};
use support::reliability::{Rng, count};

/// Where the environments live.
enum Where {
    Local,
    Aws { peer: Peer, prefix: String },
}

/// A repository with a bare origin, feature branches pushed to it, and a provider.
struct Bed {
    repo: TestRepo,
    _origin: tempfile::TempDir,
    place: Where,
    /// Every branch that wants an environment (`main` included).
    branches: Vec<String>,
    /// Migrations added so far beyond the example's three.
    added: u64,
    /// Clusters beside the repository's environments that the checks leave out (a delete suite's
    /// bystanders, which it checks on its own).
    ignored: Vec<String>,
}

/// The seed every environment runs once per checksum: a row that would be there twice if it ran
/// twice.
const AUDIT_SEED: &str = "INSERT INTO audit.runs (version) VALUES (-1);\n";

impl Bed {
    fn new(name: &str, place: Where, features: usize) -> Bed {
        let repo = TestRepo::new(name);
        let origin = repo.with_origin();
        // An audit table each later migration and the audit seed write a row into.
        repo.write(
            "schemas/migrations/0004_audit.sql",
            "CREATE SCHEMA audit;\nCREATE TABLE audit.runs (version int NOT NULL, at timestamptz NOT NULL DEFAULT now());\nINSERT INTO audit.runs (version) VALUES (4);\n",
        );
        repo.write("schemas/seeds/audit.sql", AUDIT_SEED);
        for spec in ["environments/main.yaml", "environments/preview.yaml"] {
            repo.replace_in(
                spec,
                "seeds: [schemas/seeds/dummy.sql]",
                "seeds: [schemas/seeds/dummy.sql, schemas/seeds/audit.sql]",
            );
        }
        repo.commit("an audit table and seed");
        repo.git(&["push", "-q", "origin", "main"]);
        let mut branches = vec!["main".to_owned()];
        for i in 1..=features {
            let branch = format!("feature/r{i}");
            repo.branch(&branch, 1, true);
            branches.push(branch);
        }
        branches.sort();
        Bed {
            repo,
            _origin: origin,
            place,
            branches,
            added: 0,
            ignored: Vec::new(),
        }
    }

    fn local(name: &str, features: usize) -> Bed {
        Bed::new(name, Where::Local, features)
    }

    fn aws(name: &str, features: usize, flags: &[&str]) -> Bed {
        let place = Where::Aws {
            peer: Peer::start(flags),
            prefix: run_prefix(),
        };
        Bed::new(name, place, features)
    }

    fn provider(&self) -> &'static str {
        match self.place {
            Where::Local => "local",
            Where::Aws { .. } => "aws",
        }
    }

    /// envctl in the repository, as CI runs it (no terminal, no GitHub variables).
    fn command(&self, args: &[&str]) -> Process {
        match &self.place {
            Where::Local => self.repo.process(args),
            Where::Aws { peer, prefix } => {
                let mut cmd = peer.process(self.repo.path(), &self.repo.repo);
                cmd.env("ENVCTL_PREFIX", prefix).args(args);
                cmd
            }
        }
    }

    /// Runs envctl to the end (at most five minutes: a hang fails the test).
    fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        support::wait_at_most(child, Duration::from_secs(300), &format!("{args:?}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{} {args:?} failed ({:?}):\n{}",
            self.provider(),
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn prefix(&self) -> &str {
        match &self.place {
            Where::Local => "envctl",
            Where::Aws { prefix, .. } => prefix,
        }
    }

    fn id(&self, branch: &str) -> String {
        support::cluster_id(self.prefix(), &self.repo.repo, branch).to_string()
    }

    fn expected_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.branches.iter().map(|b| self.id(b)).collect();
        ids.sort();
        ids
    }

    /// The environments that exist, as the provider itself lists them (not through envctl).
    fn live_ids(&self) -> Vec<String> {
        let ids = match &self.place {
            Where::Local => self.repo.database_names(),
            Where::Aws { peer, .. } => peer.cluster_ids(),
        };
        ids.into_iter()
            .filter(|id| !self.ignored.contains(id))
            .collect()
    }

    /// Makes a branch's environment look applied ten minutes ago, before anything git did in the
    /// test: prune does not trust git's reasons for what was applied after the clone last learned
    /// origin's branches (within a minute), and in a test that is seconds.
    fn backdate(&self, branch: &str) {
        let id = self.id(branch);
        match &self.place {
            Where::Local => support::applied_ten_minutes_ago(&id),
            Where::Aws { peer, .. } => peer.applied_ten_minutes_ago(&id),
        }
    }

    /// Whatever an interrupted run could leave beside the environments: `-creating` databases of
    /// our ids (local); instances of no live cluster, and data-plane databases of no cluster
    /// (AWS).
    fn leftovers(&self) -> Vec<String> {
        let creating: Vec<String> = support::admin_sql(
            "SELECT datname FROM pg_database WHERE datname LIKE '%-creating' ORDER BY 1",
        )
        .lines()
        .filter(|name| {
            let id = name.trim_end_matches("-creating");
            self.branches.iter().any(|b| self.id(b) == id)
        })
        .map(str::to_owned)
        .collect();
        let mut found = creating;
        if let Where::Aws { peer, .. } = &self.place {
            let clusters = peer.cluster_ids();
            for (instance, cluster) in peer.instances() {
                if !clusters.contains(&cluster) || instance != format!("{cluster}-instance-1") {
                    found.push(format!("instance {instance} of {cluster:?}"));
                }
            }
            // The data plane of a cluster that is gone (the test server stands in for it).
            for id in self.branches.iter().map(|b| self.id(b)) {
                if support::database_count(&id) == "1" && !clusters.contains(&id) {
                    found.push(format!("data-plane database {id}"));
                }
            }
        }
        found
    }

    /// SQL as the server's admin in an environment's database (local: the database; AWS: the
    /// override database of its cluster), `-At` output.
    fn db_sql(&self, branch: &str, sql: &str) -> String {
        let mut url = url::Url::parse(support::server_url()).unwrap();
        url.set_path(&format!("/{}", self.id(branch)));
        support::psql_at(url.as_str(), sql).trim().to_owned()
    }

    /// Adds migration `NNNN` (a row in the audit table and a table of its own) on `main` and
    /// merges it into every feature branch, all pushed: every environment has it to run.
    fn add_migration(&mut self) {
        self.added += 1;
        let version = 4 + self.added;
        self.repo.write(
            &format!("schemas/migrations/{version:04}_step.sql"),
            &format!(
                "INSERT INTO audit.runs (version) VALUES ({version});\nCREATE TABLE audit.t{version} (id int);\n"
            ),
        );
        self.repo.commit(&format!("migration {version}"));
        self.repo.git(&["push", "-q", "origin", "main"]);
        for branch in self.branches.iter().filter(|b| *b != "main") {
            self.repo.git(&["checkout", "-q", branch]);
            self.repo
                .git(&["merge", "-q", "--no-edit", "-m", "merge main", "main"]);
            self.repo.git(&["push", "-q", "origin", branch]);
        }
        self.repo.git(&["checkout", "-q", "main"]);
    }

    /// Every invariant of a converged repository: exactly one environment per branch and nothing
    /// else, each ledger equal to the files, each migration and seed run once, a plan with
    /// nothing to do, nothing left over.
    fn assert_converged(&self, context: &str) {
        let status: serde_json::Value = serde_json::from_str(&self.ok(&["status", "--json"]))
            .unwrap_or_else(|e| panic!("{context}: status is not JSON: {e}"));
        let mut per_branch: BTreeMap<String, usize> = BTreeMap::new();
        for env in status["environments"].as_array().unwrap() {
            if self
                .ignored
                .iter()
                .any(|id| env["cluster_id"] == id.as_str())
            {
                continue;
            }
            *per_branch
                .entry(env["branch"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        let expected: BTreeMap<String, usize> =
            self.branches.iter().map(|b| (b.clone(), 1)).collect();
        assert_eq!(per_branch, expected, "{context}: environments per branch");
        assert_eq!(self.live_ids(), self.expected_ids(), "{context}: live ids");
        assert_eq!(
            self.leftovers(),
            Vec::<String>::new(),
            "{context}: leftovers"
        );
        let files = envctl::source::read_working_tree(self.repo.path()).unwrap();
        let catalog = envctl::spec::load(&files).unwrap();
        let want_ledger: Vec<String> = catalog
            .migrations
            .iter()
            .map(|m| format!("{}|{}", m.version, m.checksum))
            .collect();
        let seed_sum = &catalog.seeds["schemas/seeds/audit.sql"].checksum;
        for branch in &self.branches {
            let ledger = self.db_sql(
                branch,
                "SELECT string_agg(version || '|' || checksum, ',' ORDER BY version) FROM envctl.migrations",
            );
            assert_eq!(
                ledger,
                want_ledger.join(","),
                "{context}: {branch}'s ledger against its files"
            );
            let runs = self.db_sql(
                branch,
                "SELECT coalesce(string_agg(version || ':' || n, ',' ORDER BY version), '') FROM (SELECT version, count(*) n FROM audit.runs GROUP BY version) r",
            );
            let want_runs: Vec<String> = std::iter::once("-1:1".to_owned())
                .chain((4..=4 + self.added).map(|v| format!("{v}:1")))
                .collect();
            assert_eq!(
                runs,
                want_runs.join(","),
                "{context}: {branch}: each migration and the seed ran once (version:times)"
            );
            let seeded = self.db_sql(
                branch,
                &format!(
                    "SELECT count(*) FROM envctl.seeds WHERE path = 'schemas/seeds/audit.sql' AND checksum = '{seed_sum}'"
                ),
            );
            assert_eq!(seeded, "1", "{context}: {branch}'s seed ledger");
            assert_eq!(
                self.db_sql(branch, support::DUMMY_ROWS),
                "3",
                "{context}: {branch}'s seed data"
            );
        }
        let plan = self.run(&["plan", "--all", "--detailed-exitcode"]);
        assert_eq!(
            plan.status.code(),
            Some(0),
            "{context}: a plan after convergence has nothing to do:\n{}{}",
            String::from_utf8_lossy(&plan.stdout),
            String::from_utf8_lossy(&plan.stderr)
        );
    }
}

/// What a killed apply was doing, from its last progress line.
fn phase_of(stderr: &str) -> &'static str {
    let last = stderr
        .lines()
        .rev()
        .find_map(|line| {
            [
                ("checking again", "checking again"),
                ("creating", "creating"),
                ("repairing", "repairing"),
                ("waiting until ready", "waiting"),
                ("migrating", "migrating"),
                ("seeding", "seeding"),
                ("updating", "updating"),
                ("deleting", "deleting"),
            ]
            .into_iter()
            .find(|(needle, _)| line.contains(&format!(": {needle}")))
            .map(|(_, phase)| phase)
        })
        .unwrap_or("observing or planning");
    // The closing line (prune's plan also starts with `Prune:`, its results say `deleted,`).
    let reported = stderr.lines().any(|l| {
        l.starts_with("Apply:")
            || l.starts_with("Destroy:")
            || (l.starts_with("Prune:") && l.contains(" deleted,"))
    });
    if reported { "reporting" } else { last }
}

/// SIGKILL at a random moment during `apply --all`, then apply again; `iterations` times.
fn kill_at_any_point(mut bed: Bed, iterations: u64) {
    let suite = format!("kill-{}", bed.provider());
    let mut rng = Rng::for_suite(&suite);
    let started = Instant::now();
    // The first apply from nothing: how long a whole run takes here.
    let first = Instant::now();
    bed.ok(&["apply", "--all"]);
    // Kill moments are drawn within this window, narrowed to runs that ended before their kill.
    let whole = first.elapsed();
    let mut window = whole;
    bed.assert_converged("after the first apply");
    let mut phases: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut finished_first = 0;
    let mut destroyed = 0;
    for iteration in 1..=iterations {
        // Give the next apply work: new environments, a new migration, or both.
        let change = rng.below(3);
        if change != 1 {
            let features: Vec<String> = bed
                .branches
                .iter()
                .filter(|b| *b != "main")
                .cloned()
                .collect();
            let victim = features[rng.below(features.len() as u64) as usize].clone();
            bed.ok(&["destroy", "--yes", "--branch", &victim]);
            destroyed += 1;
        }
        if change != 0 {
            bed.add_migration();
        }
        let after = Duration::from_secs_f64(window.as_secs_f64() * rng.unit());
        let spawned = Instant::now();
        let mut child = bed
            .command(&["apply", "--all"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut finished = None;
        while spawned.elapsed() < after {
            if child.try_wait().unwrap().is_some() {
                finished = Some(spawned.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let early = finished.or_else(|| child.try_wait().unwrap().map(|_| after));
        let phase = match early {
            Some(took) => {
                let _ = child.wait_with_output();
                // The window was longer than this kind of run: aim within it next time.
                window = took.max(Duration::from_millis(200));
                finished_first += 1;
                "finished before the kill"
            }
            None => {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                let output = child.wait_with_output().unwrap();
                // Widen again slowly: later runs may have more to do.
                window = window.mul_f64(1.15).min(whole.mul_f64(1.5));
                phase_of(&String::from_utf8_lossy(&output.stderr))
            }
        };
        *phases.entry(phase).or_default() += 1;
        let context = format!(
            "{suite} iteration {iteration} (killed after {:.2}s, {phase})",
            after.as_secs_f64()
        );
        // One apply after the kill converges.
        let again = bed.run(&["apply", "--all"]);
        assert!(
            again.status.success(),
            "{context}: the apply after the kill failed:\n{}",
            String::from_utf8_lossy(&again.stderr)
        );
        bed.assert_converged(&context);
        // A prune has nothing to delete (every branch is live) and leaves nothing behind.
        let pruned = bed.ok(&["prune", "--yes", "--json", "--wait-timeout", "1s"]);
        let pruned: serde_json::Value = serde_json::from_str(&pruned).unwrap();
        assert_eq!(
            pruned["actions"],
            serde_json::json!([]),
            "{context}: prune found something to delete: {pruned}"
        );
        assert_eq!(bed.leftovers(), Vec::<String>::new(), "{context}");
        assert_eq!(bed.live_ids(), bed.expected_ids(), "{context}");
    }
    let killed = iterations - finished_first;
    eprintln!(
        "{suite}: {iterations} iterations over {} branches in {:.0}s ({} environments destroyed and {} migrations added between them); {killed} applies SIGKILLed mid-run, {finished_first} finished before the kill; killed while: {phases:?}; after each, one apply converged: {} environments, ledgers equal to the files, every migration and seed once, 0 leftovers after prune",
        bed.branches.len(),
        started.elapsed().as_secs_f64(),
        destroyed,
        bed.added,
        bed.branches.len(),
    );
    assert!(
        killed > 0 || iterations < 3,
        "no apply was killed mid-run: the kill moments are wrong"
    );
}

#[test]
fn kill_at_any_point_local() {
    let iterations = count("ENVCTL_KILL_ITERATIONS", 2, 50);
    kill_at_any_point(Bed::local("rel-kill", 3), iterations);
}

#[test]
fn kill_at_any_point_aws() {
    let iterations = count("ENVCTL_KILL_ITERATIONS", 2, 50);
    let bed = Bed::aws(
        "rel-kill-aws",
        3,
        &["--create-delay", "0.5", "--delete-delay", "0.3"],
    );
    kill_at_any_point(bed, iterations);
}

/// What a delete may never touch, made beside a repository's environments on the peer: a
/// cluster outside the prefix carrying the repository's ownership tags (for a branch that is
/// gone, so prune's reason holds for it), another repository's cluster under the prefix, and a
/// cluster of another prefix. Their ids.
fn bystanders(bed: &Bed) -> Vec<String> {
    let Where::Aws { peer, prefix } = &bed.place else {
        unreachable!("bystanders live on the peer")
    };
    let repo = &bed.repo.repo;
    let applied = support::ten_minutes_ago();
    let made = [
        (
            "prod-orders".to_owned(),
            format!(
                "[{{'Key': 'envctl:managed', 'Value': 'true'}}, {{'Key': 'envctl:repo', 'Value': {repo:?}}}, {{'Key': 'envctl:prefix', 'Value': {prefix:?}}}, {{'Key': 'envctl:branch', 'Value': 'feature/gone'}}, {{'Key': 'envctl:last-applied', 'Value': {applied:?}}}]"
            ),
        ),
        (
            format!("{prefix}-someone-elses-00000000"),
            format!(
                "[{{'Key': 'envctl:managed', 'Value': 'true'}}, {{'Key': 'envctl:repo', 'Value': 'someone/else'}}, {{'Key': 'envctl:prefix', 'Value': {prefix:?}}}, {{'Key': 'envctl:branch', 'Value': 'feature/r1'}}]"
            ),
        ),
        (
            "zz-other-prefix-00000000".to_owned(),
            format!(
                "[{{'Key': 'envctl:managed', 'Value': 'true'}}, {{'Key': 'envctl:repo', 'Value': {repo:?}}}, {{'Key': 'envctl:prefix', 'Value': 'zz'}}, {{'Key': 'envctl:branch', 'Value': 'feature/r1'}}]"
            ),
        ),
    ];
    for (id, tags) in &made {
        peer.boto3(&format!(
            "rds.create_db_cluster(DBClusterIdentifier={id:?}, Engine='aurora-postgresql', WithExpressConfiguration=True, Tags={tags})"
        ));
    }
    made.into_iter().map(|(id, _)| id).collect()
}

/// What a delete must leave as it was: the bystanders, every one still there and never the
/// subject of a change in the calls from `since` on; and no cluster of the live branches but
/// `doomed` deleted by those calls.
fn assert_untouched(
    bed: &Bed,
    bystanders: &[String],
    since: usize,
    doomed: &[String],
    context: &str,
) {
    let Where::Aws { peer, .. } = &bed.place else {
        unreachable!()
    };
    let ids = peer.cluster_ids();
    for id in bystanders {
        assert!(ids.contains(id), "{context}: {id} was deleted");
    }
    let calls = peer.control(
        "GET",
        &format!("/_peer/calls?since={since}"),
        &serde_json::Value::Null,
    );
    let live: Vec<String> = bed.branches.iter().map(|b| bed.id(b)).collect();
    for call in calls.as_array().into_iter().flatten() {
        let action = call["action"].as_str().unwrap_or_default();
        let changes = ["Delete", "Modify", "AddTags", "RemoveTags", "Create"]
            .iter()
            .any(|verb| action.starts_with(verb));
        if !changes || call["status"] != 200 {
            continue;
        }
        let params = call["params"].to_string();
        for id in bystanders {
            assert!(
                !params.contains(id.as_str()),
                "{context}: {action} on {id}: {call}"
            );
        }
        if action == "DeleteDBCluster" {
            let deleted = call["params"]["DBClusterIdentifier"]
                .as_str()
                .unwrap_or_default();
            assert!(
                !live.iter().any(|id| id == deleted) || doomed.iter().any(|id| id == deleted),
                "{context}: a live branch's cluster {deleted} was deleted: {call}"
            );
        }
    }
}

/// The calls the peer has logged so far.
fn calls_so_far(bed: &Bed) -> usize {
    let Where::Aws { peer, .. } = &bed.place else {
        unreachable!()
    };
    peer.calls().len()
}

/// Ids of our clusters that list no writer (what a converging apply must repair).
fn writerless(bed: &Bed) -> Vec<String> {
    let Where::Aws { peer, .. } = &bed.place else {
        unreachable!()
    };
    let out = peer.boto3(
        "out = []\n\
         for page in rds.get_paginator('describe_db_clusters').paginate():\n    \
         out += [c['DBClusterIdentifier'] for c in page['DBClusters'] if not c['DBClusterMembers'] and c['Status'] != 'deleting']\n\
         print(json.dumps(sorted(out)))",
    );
    let all: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    let ours: Vec<String> = bed.branches.iter().map(|b| bed.id(b)).collect();
    all.into_iter().filter(|id| ours.contains(id)).collect()
}

/// Deletes a live branch's writer by hand, as a destroy cut off half-way by an older envctl
/// left it: the next apply must repair it.
fn break_a_writer(bed: &Bed, branch: &str) {
    let Where::Aws { peer, .. } = &bed.place else {
        unreachable!()
    };
    let id = bed.id(branch);
    peer.boto3(&format!(
        "import time\nrds.delete_db_instance(DBInstanceIdentifier='{id}-instance-1')\n\
         while rds.describe_db_clusters(DBClusterIdentifier={id:?})['DBClusters'][0]['DBClusterMembers']:\n    time.sleep(0.05)"
    ));
}

/// Spawns envctl with `args` and SIGKILLs it `after` in (unless it finished first): the phase
/// it was in, or that it finished.
fn run_and_kill(bed: &Bed, args: &[&str], after: Duration) -> (&'static str, Option<Duration>) {
    let spawned = Instant::now();
    let mut child = bed
        .command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while spawned.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            let took = spawned.elapsed();
            let _ = child.wait_with_output();
            return ("finished before the kill", Some(took));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if child.try_wait().unwrap().is_some() {
        let _ = child.wait_with_output();
        return ("finished before the kill", Some(after));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    (phase_of(&String::from_utf8_lossy(&output.stderr)), None)
}

/// Waits (at most a minute) until the peer no longer holds `id`: a delete killed after AWS took
/// it goes on in AWS.
fn wait_gone(bed: &Bed, id: &str, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while bed.live_ids().contains(&id.to_owned()) {
        assert!(Instant::now() < deadline, "{context}: {id} is still there");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command a delete suite kills.
#[derive(Clone, Copy, PartialEq)]
enum Killed {
    Destroy,
    Prune,
}

/// SIGKILL `destroy` (of a live branch's environment) or `prune` (with a deleted branch's
/// environment to delete) at a random moment, `iterations` times; then apply and prune again.
/// Sometimes a live branch's writer is deleted by hand first. After each: apply converges, no
/// cluster of ours is writerless, prune deletes what it should and nothing else, and the
/// bystanders are untouched.
fn kill_a_delete_at_any_point(mut bed: Bed, killed: Killed, iterations: u64) {
    let name = match killed {
        Killed::Destroy => "destroy",
        Killed::Prune => "prune",
    };
    let suite = format!("kill-{name}-{}", bed.provider());
    let mut rng = Rng::for_suite(&suite);
    let started = Instant::now();
    bed.ok(&["apply", "--all"]);
    let bystanders = bystanders(&bed);
    bed.ignored = bystanders.clone();
    bed.repo.fetch_as_ci();
    bed.assert_converged("after the first apply");
    let mut window: Option<Duration> = None;
    let mut phases: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut finished_first, mut repaired, mut recreated) = (0, 0, 0);
    for iteration in 1..=iterations {
        let since = calls_so_far(&bed);
        let features: Vec<String> = bed
            .branches
            .iter()
            .filter(|b| *b != "main")
            .cloned()
            .collect();
        // Sometimes a writer is gone already (an older envctl's cut-off destroy, or by hand).
        if rng.below(4) == 0 {
            let broken = &features[rng.below(features.len() as u64) as usize];
            break_a_writer(&bed, broken);
            repaired += 1;
        }
        let (args, doomed): (Vec<String>, Vec<String>) = match killed {
            Killed::Destroy => {
                let victim = features[rng.below(features.len() as u64) as usize].clone();
                let doomed = vec![bed.id(&victim)];
                (
                    vec!["destroy".into(), "--yes".into(), "--branch".into(), victim],
                    doomed,
                )
            }
            Killed::Prune => {
                let dead = format!("feature/dead{iteration}");
                bed.repo.branch(&dead, 1, true);
                bed.ok(&["apply", "--branch", &dead]);
                bed.backdate(&dead);
                bed.repo.delete_branch(&dead);
                bed.repo.fetch_as_ci();
                (vec!["prune".into(), "--yes".into()], vec![bed.id(&dead)])
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let whole = match window {
            Some(window) => window,
            None => {
                // The first time, a whole run tells how long one takes; it is not killed.
                let took = Instant::now();
                bed.ok(&args);
                let took = took.elapsed();
                window = Some(took);
                took
            }
        };
        let after = Duration::from_secs_f64(whole.as_secs_f64() * rng.unit());
        let (phase, finished) = match iteration == 1 {
            true => ("finished before the kill", Some(whole)),
            false => run_and_kill(&bed, &args, after),
        };
        if let Some(took) = finished {
            finished_first += 1;
            window = Some(took.max(Duration::from_millis(200)));
        } else {
            window = window.map(|w| w.mul_f64(1.1).min(whole.mul_f64(1.5)));
        }
        *phases.entry(phase).or_default() += 1;
        let context = format!(
            "{suite} iteration {iteration} (killed after {:.2}s, {phase})",
            after.as_secs_f64()
        );
        // Apply converges: every live branch has its environment, with its writer.
        let again = bed.run(&["apply", "--all"]);
        assert!(
            again.status.success(),
            "{context}: the apply after the kill failed:\n{}",
            String::from_utf8_lossy(&again.stderr)
        );
        if String::from_utf8_lossy(&again.stderr).contains("created") {
            recreated += 1;
        }
        assert_eq!(
            writerless(&bed),
            Vec::<String>::new(),
            "{context}: writerless after apply"
        );
        // A prune killed before its delete leaves the dead branch's environment: the next
        // prune's to delete, not the apply's, so the converged repository is the rest.
        let kept = bed.ignored.clone();
        if killed == Killed::Prune {
            bed.ignored.extend(doomed.iter().cloned());
        }
        bed.assert_converged(&context);
        bed.ignored = kept;
        // Prune deletes the dead branch's environment (unless the killed one did: then AWS
        // finishes it), and nothing else.
        let pruned = bed.ok(&["prune", "--yes", "--json", "--wait-timeout", "60s"]);
        let pruned: serde_json::Value = serde_json::from_str(&pruned).unwrap();
        for action in pruned["actions"].as_array().into_iter().flatten() {
            assert!(
                doomed.iter().any(|id| action["cluster_id"] == id.as_str()),
                "{context}: prune planned to delete {action}"
            );
        }
        if killed == Killed::Prune {
            wait_gone(&bed, &doomed[0], &context);
        }
        assert_eq!(
            writerless(&bed),
            Vec::<String>::new(),
            "{context}: writerless after prune"
        );
        assert_eq!(bed.live_ids(), bed.expected_ids(), "{context}");
        assert_untouched(&bed, &bystanders, since, &doomed, &context);
    }
    let killed_count = iterations - finished_first;
    eprintln!(
        "{suite}: {iterations} iterations over {} branches in {:.0}s; {killed_count} {name}s SIGKILLed mid-run, {finished_first} finished before the kill; killed while: {phases:?}; {repaired} writers deleted by hand beforehand; after each, apply converged ({recreated} recreating an environment): no writerless cluster, no live branch's cluster deleted, the 3 bystanders (outside the prefix, another repository's, another prefix's) untouched",
        bed.branches.len(),
        started.elapsed().as_secs_f64(),
    );
    assert!(
        killed_count > 0 || iterations < 3,
        "no {name} was killed mid-run: the kill moments are wrong"
    );
}

#[test]
fn kill_destroy_at_any_point_aws() {
    let iterations = count("ENVCTL_DELETE_KILL_ITERATIONS", 2, 50);
    let bed = Bed::aws(
        "rel-kill-destroy",
        3,
        &["--create-delay", "0.5", "--delete-delay", "1"],
    );
    kill_a_delete_at_any_point(bed, Killed::Destroy, iterations);
}

#[test]
fn kill_prune_at_any_point_aws() {
    let iterations = count("ENVCTL_DELETE_KILL_ITERATIONS", 2, 50);
    let bed = Bed::aws(
        "rel-kill-prune",
        3,
        &["--create-delay", "0.5", "--delete-delay", "1"],
    );
    kill_a_delete_at_any_point(bed, Killed::Prune, iterations);
}

/// Two `apply --branch B` at once for a branch with no environment, `iterations` times: one
/// environment afterwards, and both runs succeed (a failure would have to be a clear `error:`;
/// none is expected: every step is idempotent and the migrations run under the lock once).
fn two_applies_at_once(mut bed: Bed, iterations: u64) {
    let suite = format!("race-two-applies-{}", bed.provider());
    let started = Instant::now();
    bed.ok(&["apply", "--all"]);
    let branch = bed.branches.iter().find(|b| *b != "main").unwrap().clone();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for iteration in 1..=iterations {
        bed.ok(&["destroy", "--yes", "--branch", &branch]);
        if iteration % 2 == 0 {
            // Every other time there is a migration to run too.
            bed.add_migration();
        }
        let spawn = || {
            bed.command(&["apply", "--branch", &branch])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let args = ["apply", "--branch", branch.as_str()];
        let results = [
            support::wait_at_most(a, Duration::from_secs(300), &format!("{args:?}")),
            support::wait_at_most(b, Duration::from_secs(300), &format!("{args:?}")),
        ];
        let mut codes = Vec::new();
        for output in &results {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let code = output.status.code();
            assert!(
                !stderr.contains("panicked"),
                "{suite} {iteration}: a panic:\n{stderr}"
            );
            match code {
                Some(0) => assert!(
                    stderr.contains("Apply: 1 environment done, 0 failed"),
                    "{stderr}"
                ),
                Some(1) => assert!(
                    stderr.contains("error:") || stderr.contains("failed"),
                    "{suite} {iteration}: exit 1 without saying why:\n{stderr}"
                ),
                other => panic!("{suite} {iteration}: exit {other:?}:\n{stderr}"),
            }
            codes.push(code.unwrap());
        }
        // Both succeed: the second finds the cluster (AlreadyExists: ours), waits, and has
        // nothing left to migrate under the lock. (Before the fix, the second failed half the
        // time on the data plane's `CREATE DATABASE` racing the first's: SQLSTATE 23505.)
        assert_eq!(
            codes,
            [0, 0],
            "{suite} {iteration}: both applies end well: {:?}",
            results
                .iter()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .collect::<Vec<_>>()
        );
        // Count the clear errors by what they say (ids and times taken out).
        let said: Vec<String> = results
            .iter()
            .filter(|o| !o.status.success())
            .map(|o| {
                let stderr = String::from_utf8_lossy(&o.stderr);
                let line = stderr
                    .lines()
                    .find(|l| l.starts_with("failed") || l.starts_with("error:"))
                    .unwrap_or("")
                    .replace(&bed.id(&branch), "<id>")
                    .replace(&branch, "<branch>");
                line.split(" after ").next().unwrap().to_owned()
            })
            .collect();
        *outcomes
            .entry(match said.as_slice() {
                [] => "both ok".to_owned(),
                [one] => format!("one ok, one said: {one}"),
                _ => unreachable!("one succeeded"),
            })
            .or_default() += 1;
        assert_eq!(
            bed.live_ids(),
            bed.expected_ids(),
            "{suite} {iteration}: one environment per branch right after the race"
        );
        bed.ok(&["apply", "--all"]);
        bed.assert_converged(&format!("{suite} {iteration}"));
    }
    eprintln!(
        "{suite}: {iterations} races of two applies of one branch in {:.0}s: {outcomes:?}; one environment afterwards every time, converged",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn two_applies_of_one_branch_at_once_both_succeed_aws() {
    let iterations = count("ENVCTL_RACE_ITERATIONS", 2, 20);
    let bed = Bed::aws("rel-race-aws", 1, &["--create-delay", "0.5"]);
    two_applies_at_once(bed, iterations);
}

#[test]
fn two_applies_of_one_branch_at_once_both_succeed_local() {
    let iterations = count("ENVCTL_RACE_ITERATIONS", 2, 20);
    two_applies_at_once(Bed::local("rel-race", 1), iterations);
}

/// `apply --branch NEW` for a live branch while prune runs again and again with a deleted
/// branch's environment to delete: prune deletes that one only, never what apply is creating.
fn apply_racing_prune(mut bed: Bed, iterations: u64) {
    let suite = format!("race-apply-prune-{}", bed.provider());
    let started = Instant::now();
    bed.ok(&["apply", "--all"]);
    let mut prunes = 0;
    let mut deleted_dead = 0;
    for iteration in 1..=iterations {
        let live = format!("feature/new{iteration}");
        let dead = format!("feature/dead{iteration}");
        bed.repo.branch(&live, 1, true);
        bed.repo.branch(&dead, 1, true);
        bed.ok(&["apply", "--branch", &dead]);
        bed.backdate(&dead);
        bed.repo.delete_branch(&dead);
        bed.repo.fetch_as_ci();
        let (dead_id, live_id) = (bed.id(&dead), bed.id(&live));
        let mut apply = bed
            .command(&["apply", "--branch", &live])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reports = Vec::new();
        loop {
            let output = bed.run(&["prune", "--yes", "--json", "--wait-timeout", "1s"]);
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert_eq!(
                output.status.code(),
                Some(0),
                "{suite} {iteration}: prune failed:\n{stderr}"
            );
            reports.push(serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap());
            prunes += 1;
            // Prune at least twice, the last one after the apply ended.
            if reports.len() >= 2 && apply.try_wait().unwrap().is_some() {
                break;
            }
        }
        let output = support::wait_at_most(apply, Duration::from_secs(300), "apply");
        assert!(
            output.status.success(),
            "{suite} {iteration}: the apply racing prune failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for report in &reports {
            for result in report["results"].as_array().into_iter().flatten() {
                if result["status"] == "deleted" {
                    assert_eq!(
                        result["cluster_id"], dead_id,
                        "{suite} {iteration}: prune deleted something else: {report}"
                    );
                    deleted_dead += 1;
                }
            }
            for action in report["actions"].as_array().into_iter().flatten() {
                assert_ne!(
                    action["cluster_id"], live_id,
                    "{suite} {iteration}: prune planned to delete what apply creates: {report}"
                );
            }
        }
        bed.branches.push(live);
        bed.branches.sort();
        bed.assert_converged(&format!("{suite} {iteration}"));
    }
    assert_eq!(
        deleted_dead, iterations,
        "each dead environment deleted once"
    );
    eprintln!(
        "{suite}: {iterations} applies of a new live branch raced {prunes} prunes in {:.0}s; prune deleted the {deleted_dead} deleted branches' environments and never what apply was creating",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn apply_racing_prune_local() {
    let iterations = count("ENVCTL_RACE_ITERATIONS", 2, 20);
    apply_racing_prune(Bed::local("rel-prune-race", 1), iterations);
}

#[test]
fn apply_racing_prune_aws() {
    let iterations = count("ENVCTL_RACE_ITERATIONS", 2, 20);
    let bed = Bed::aws("rel-prune-race-aws", 1, &["--create-delay", "0.5"]);
    apply_racing_prune(bed, iterations);
}

/// A delete decided on tags (prune's) and a tag change (an apply's touch) on one environment at
/// once, through the local provider: exactly one wins, and the delete never goes through once
/// the tag changed (both take the id's lock; the delete re-reads the live tags under it).
#[test]
fn a_delete_racing_a_tag_change_loses_to_the_live_recheck() {
    use envctl::model::{TagUpdate, tags};
    use envctl::provider::{DeleteOptions, Provider, ProviderError};
    use support::provider::{local_provider, owner, runtime};
    let iterations = count("ENVCTL_RACE_ITERATIONS", 5, 100);
    let bed = Bed::local("rel-delete-race", 1);
    let branch = "feature/r1".to_owned();
    let owner = owner(&bed.repo.repo, "envctl");
    let id = envctl::model::ClusterId::from_live(bed.id(&branch));
    let runtime = runtime();
    let provider = runtime.block_on(local_provider());
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    for iteration in 0..iterations {
        if !bed.live_ids().contains(&id.to_string()) {
            bed.ok(&["apply", "--branch", &branch]);
        }
        let (deleted, touched) = runtime.block_on(async {
            let live = provider.observe(&owner).await.unwrap();
            let decided = live
                .iter()
                .find(|o| o.cluster_id == id)
                .unwrap()
                .tag(tags::LAST_APPLIED)
                .map(str::to_owned);
            let options = DeleteOptions {
                unchanged: [(tags::LAST_APPLIED.to_owned(), decided)].into(),
                ..DeleteOptions::default()
            };
            let touch = TagUpdate::set(
                tags::LAST_APPLIED,
                format!("2099-01-01T00:00:{:02}Z", iteration % 60),
            );
            // Alternate who starts first; both are in flight together.
            if iteration % 2 == 0 {
                tokio::join!(
                    provider.delete(&owner, &id, options),
                    provider.update_tags(&owner, &id, &touch)
                )
            } else {
                let (t, d) = tokio::join!(
                    provider.update_tags(&owner, &id, &touch),
                    provider.delete(&owner, &id, options)
                );
                (d, t)
            }
        });
        let exists = bed.live_ids().contains(&id.to_string());
        let outcome = match (&deleted, &touched) {
            (Ok(()), Err(ProviderError::NotFound(_))) => {
                assert!(!exists, "deleted, yet it exists");
                "deleted first; the tag change found it gone"
            }
            (Err(ProviderError::Changed { .. }), Ok(())) => {
                assert!(exists, "kept, yet it is gone");
                "tag changed first; the delete saw it and kept it"
            }
            other => panic!("iteration {iteration}: both or neither went through: {other:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!(
        "race-delete-tag-local: {iterations} deletes raced a tag change: {outcomes:?}; never both"
    );
}
