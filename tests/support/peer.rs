//! The offline AWS API peer (`scripts/aws-peer/peer.py`: moto's server extended with Aurora
//! express behaviour, faults and a call log), started per test on a free loopback port, and the
//! envctl command line pointed at it the way a user's AWS would be reached: AWS_ENDPOINT_URL, the
//! standard credential variables, `--provider aws`. Data planes go to the shared test PostgreSQL
//! server through ENVCTL_DATA_PLANE_OVERRIDE. Nothing is mocked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;

/// Recognisable credentials: a test fails if they appear in any output.
pub const SECRET_KEY: &str = "envctlTESTsecretKEYdoNOTprint0123456789";
pub const SESSION_TOKEN: &str = "envctlTESTsessionTOKENdoNOTprint9876543210";

/// The peer's virtualenv python (scripts/aws-peer/setup.sh makes it; scripts/test.sh runs that).
pub fn python() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Process::new("bash")
        .arg(root.join("scripts/aws-peer/setup.sh"))
        .arg("--print-python")
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "the AWS peer's virtualenv is missing and could not be made: {}\nrun `scripts/aws-peer/setup.sh`",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A running peer; stopped on drop.
pub struct Peer {
    child: Child,
    pub url: String,
    /// Where the peer logs (kept when a test fails).
    pub log: std::path::PathBuf,
}

impl Peer {
    /// Starts a peer with these flags (e.g. `--create-delay 1`).
    pub fn start(flags: &[&str]) -> Peer {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let log = std::env::temp_dir().join(format!(
            "envctl-peer-{}-{}.log",
            std::process::id(),
            rand_suffix()
        ));
        let mut child = Process::new(python())
            .arg(root.join("scripts/aws-peer/peer.py"))
            .args(["--port", "0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the peer starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("the peer says where it listens within 60 s");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "the peer did not start: {line:?}; its log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Peer { child, url, log }
    }

    /// The peer's process id (the benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A control request (`GET /_peer/calls`, `POST /_peer/config`, …); the JSON answer.
    pub fn control(&self, method: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let address = self.url.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let body = body.to_string();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(
            head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"),
            "{method} {path}: {head}\n{body}"
        );
        // The peer may answer chunked.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    /// Every AWS call so far.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        self.control("GET", "/_peer/calls", &serde_json::Value::Null)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The calls of one action.
    pub fn calls_of(&self, action: &str) -> Vec<serde_json::Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["action"] == action)
            .collect()
    }

    pub fn reset_calls(&self) {
        self.control("POST", "/_peer/calls/reset", &serde_json::json!({}));
    }

    pub fn config(&self, config: serde_json::Value) {
        self.control("POST", "/_peer/config", &config);
    }

    /// Keeps the next AWS call of `action` whose parameters contain `matching` waiting, after
    /// `skip` such calls went through, until [`Peer::release`]: a test changes things between
    /// two of envctl's calls. The hold's id.
    pub fn hold(&self, action: &str, matching: &str, skip: u32) -> u64 {
        let hold = self.control(
            "POST",
            "/_peer/hold",
            &serde_json::json!({"action": action, "match": matching, "skip": skip}),
        );
        hold["id"].as_u64().expect("a hold id")
    }

    /// Waits until the hold `id` keeps a call waiting (at most a minute).
    pub fn wait_held(&self, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let holds = self.control("GET", "/_peer/holds", &serde_json::Value::Null);
            let held = holds
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["id"] == id && h["holding"] == true);
            if held {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no call came to hold {id} within a minute: {holds}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets the call the hold `id` keeps go on.
    pub fn release(&self, id: u64) {
        self.control("POST", "/_peer/release", &serde_json::json!({"id": id}));
    }

    /// Sets a cluster's status as AWS would show it (see `POST /_peer/set-status`).
    pub fn set_status(&self, body: serde_json::Value) {
        self.control("POST", "/_peer/set-status", &body);
    }

    /// Runs a boto3 snippet against the peer (`rds` and `tagging` are clients); its stdout.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json\n\
             from botocore.config import Config\n\
             kw = dict(endpoint_url={url:?}, region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test', config=Config(retries={{'mode': 'standard', 'max_attempts': 12}}))\n\
             rds = boto3.client('rds', **kw)\n\
             tagging = boto3.client('resourcegroupstaggingapi', **kw)\n\
             {code}\n",
            url = self.url
        );
        let output = Process::new(python())
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The live tags of a cluster, as AWS lists them.
    pub fn tags_of(&self, id: &str) -> serde_json::Value {
        let out = self.boto3(&format!(
            "c = rds.describe_db_clusters(DBClusterIdentifier={id:?})['DBClusters'][0]\n\
             print(json.dumps({{t['Key']: t['Value'] for t in c.get('TagList', [])}}))"
        ));
        serde_json::from_str(out.trim()).unwrap()
    }

    /// Sets one tag on a live cluster, as someone with AWS access would.
    pub fn tag(&self, id: &str, key: &str, value: &str) {
        self.boto3(&format!(
            "arn = rds.describe_db_clusters(DBClusterIdentifier={id:?})['DBClusters'][0]['DBClusterArn']\n\
             rds.add_tags_to_resource(ResourceName=arn, Tags=[{{'Key': {key:?}, 'Value': {value:?}}}])"
        ));
    }

    /// Makes a cluster look last applied ten minutes ago (see `support::applied_ten_minutes_ago`).
    pub fn applied_ten_minutes_ago(&self, id: &str) {
        self.tag(id, "envctl:last-applied", &super::ten_minutes_ago());
    }

    /// Every instance the peer holds with its cluster's id, sorted by instance id.
    pub fn instances(&self) -> Vec<(String, String)> {
        let out = self.boto3(
            "out = []\n\
             for page in rds.get_paginator('describe_db_instances').paginate():\n    \
             out += [(i['DBInstanceIdentifier'], i.get('DBClusterIdentifier', '')) for i in page['DBInstances']]\n\
             print(json.dumps(sorted(out)))",
        );
        serde_json::from_str(out.trim()).unwrap()
    }

    /// Ids of every cluster the peer holds.
    pub fn cluster_ids(&self) -> Vec<String> {
        let out = self.boto3(
            "ids = []\n\
             for page in rds.get_paginator('describe_db_clusters').paginate():\n    ids += [c['DBClusterIdentifier'] for c in page['DBClusters']]\n\
             print(json.dumps(sorted(ids)))",
        );
        serde_json::from_str(out.trim()).unwrap()
    }

    /// `envctl --provider aws` in `dir` against this peer, the data planes on the test server.
    pub fn envctl(&self, dir: &Path, repo: &str) -> Command {
        Command::from_std(self.process(dir, repo))
    }

    /// The same as a `std::process::Command`, to spawn.
    pub fn process(&self, dir: &Path, repo: &str) -> Process {
        let mut cmd = super::envctl_at(dir);
        cmd.args(["--repo", repo, "--provider", "aws"]);
        for (key, value) in self.environment() {
            cmd.env(key, value);
        }
        cmd
    }

    /// The environment envctl runs with against this peer.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", "AKIAENVCTLTESTKEY".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_CONFIG_FILE", "/dev/null".to_owned()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_owned()),
            ("AWS_MAX_ATTEMPTS", "10".to_owned()),
            ("ENVCTL_AWS_POLL_INTERVAL", "100ms".to_owned()),
            ("ENVCTL_DATA_PLANE_OVERRIDE", super::server_url().to_owned()),
            ("NO_COLOR", "1".to_owned()),
        ]
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                if !std::thread::panicking() {
                    let _ = std::fs::remove_file(&self.log);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// A prefix of this test process: ids differ from any earlier run's, whose override databases
/// on the shared server are dropped here (a failed run can leave some). Those of a test process
/// still running (another `cargo test` at the same time) are left alone.
pub fn run_prefix() -> String {
    let prefix = format!("awsp{}", std::process::id());
    static CLEANED: std::sync::Once = std::sync::Once::new();
    CLEANED.call_once(|| {
        for name in super::admin_sql(&format!(
            "SELECT datname FROM pg_database WHERE datname LIKE 'awsp%' AND datname NOT LIKE '{prefix}-%'"
        ))
        .lines()
        {
            let pid = name
                .trim_start_matches("awsp")
                .split('-')
                .next()
                .unwrap_or_default();
            if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
                continue;
            }
            super::admin_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        }
    });
    prefix
}

/// A logged call's parameter `key`.
pub fn param<'a>(call: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    &call["params"][key]
}

/// A logged call's `Tags` parameter as one object, key to value.
pub fn tag_list(call: &serde_json::Value) -> serde_json::Value {
    let mut tags = serde_json::Map::new();
    for tag in param(call, "Tags").as_array().into_iter().flatten() {
        tags.insert(
            tag["Key"].as_str().unwrap().to_owned(),
            tag["Value"].clone(),
        );
    }
    serde_json::Value::Object(tags)
}
