//! `envctl::provider::aws::token` against the real botocore: the token must be byte for byte what
//! `aws rds generate-db-auth-token` prints (botocore's `RDS.Client.generate_db_auth_token`), for
//! any user name, with and without a session token, in any region, host and port.
//!
//! botocore runs in one long-lived Python process (`$ENVCTL_VENV/bin/python`, default
//! `$HOME/.cache/envctl-venv/bin/python`, made by `scripts/aws-peer/setup.sh`) that reads a JSON
//! array of cases per line and answers a JSON array of tokens per line. Its clock is frozen by
//! replacing `botocore.auth.get_current_datetime`, which `SigV4Auth.add_auth` reads for the
//! signing time, with a function returning each case's time.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use envctl::provider::aws::token::{TokenError, generate_auth_token};
use proptest::prelude::*;
use serde_json::{Value, json};

const SETUP_HINT: &str = "run scripts/aws-peer/setup.sh to create the botocore venv \
     (or point ENVCTL_VENV at a venv with botocore)";

/// Reads cases, answers tokens; freezes botocore's clock at each case's time.
const BOTOCORE_PEER: &str = r#"
import datetime, json, sys

def reply(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()

try:
    import botocore, botocore.auth, botocore.session
except ImportError as error:
    reply({"fatal": "cannot import botocore (%s)" % error})
    sys.exit(0)

# SigV4Auth.add_auth takes its signing time from botocore.auth.get_current_datetime (a naive UTC
# datetime, formatted with strftime, so microseconds are dropped). Replace it, and say so loudly
# if this botocore reads its clock some other way.
if not hasattr(botocore.auth, "get_current_datetime"):
    reply({"fatal": "botocore %s has no botocore.auth.get_current_datetime to freeze"
           % botocore.__version__})
    sys.exit(0)

frozen = None

def get_current_datetime(remove_tzinfo=True):
    return frozen if remove_tzinfo else frozen.replace(tzinfo=datetime.timezone.utc)

botocore.auth.get_current_datetime = get_current_datetime
session = botocore.session.get_session()
clients = {}

def token(case):
    global frozen
    frozen = datetime.datetime(1970, 1, 1) + datetime.timedelta(
        seconds=case["secs"], microseconds=case["micros"])
    key = (case["region"], case["access_key"], case["secret_key"], case["session_token"])
    try:
        if key not in clients:
            # What `aws --region R rds generate-db-auth-token` does with these credentials.
            clients[key] = session.create_client(
                "rds", region_name=case["region"], aws_access_key_id=case["access_key"],
                aws_secret_access_key=case["secret_key"], aws_session_token=case["session_token"])
        signed = clients[key].generate_db_auth_token(
            DBHostname=case["hostname"], Port=case["port"], DBUsername=case["user"])
    except Exception as error:
        return {"error": "%s: %s" % (type(error).__name__, error)}
    if "&X-Amz-Date=%s&" % frozen.strftime("%Y%m%dT%H%M%SZ") not in signed:
        return {"fatal": "botocore's clock was not frozen: " + signed}
    return {"token": signed}

reply({"ready": botocore.__version__})
for line in iter(sys.stdin.readline, ""):
    reply([token(case) for case in json.loads(line)])
"#;

/// One token to generate, on both sides.
#[derive(Clone, Debug)]
struct Case {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    region: String,
    hostname: String,
    port: u16,
    user: String,
    secs: u64,
    micros: u32,
}

impl Case {
    fn new(user: &str) -> Case {
        Case {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            region: "us-east-1".into(),
            hostname: "envctl-main-0a1b2c3d.cluster-abcdefghijkl.us-east-1.rds.amazonaws.com"
                .into(),
            port: 5432,
            user: user.into(),
            // 2025-03-14T15:09:26.535897Z
            secs: 1_741_964_966,
            micros: 535_897,
        }
    }

    fn ours(&self) -> Result<String, TokenError> {
        let credentials = Credentials::new(
            &self.access_key,
            &self.secret_key,
            self.session_token.clone(),
            None,
            "test",
        );
        let now =
            UNIX_EPOCH + Duration::from_secs(self.secs) + Duration::from_micros(self.micros.into());
        generate_auth_token(
            &credentials,
            &self.region,
            &self.hostname,
            self.port,
            &self.user,
            now,
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "access_key": self.access_key, "secret_key": self.secret_key,
            "session_token": self.session_token, "region": self.region,
            "hostname": self.hostname, "port": self.port, "user": self.user,
            "secs": self.secs, "micros": self.micros,
        })
    }
}

/// `$ENVCTL_VENV/bin/python`, by default `$HOME/.cache/envctl-venv/bin/python`.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("ENVCTL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/envctl-venv")
        });
    venv.join("bin/python")
}

/// The botocore process, shared by every test of this file.
struct Botocore {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Botocore {
    fn start() -> Botocore {
        Botocore::start_with(&venv_python(), &[])
    }

    /// Starts the peer with `python`, or panics saying how to install it.
    fn start_with(python: &Path, python_args: &[&str]) -> Botocore {
        let mut command = Command::new(python);
        // Nothing from the developer's AWS setup may change what botocore signs.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|name| name.starts_with("AWS_")) {
                command.env_remove(name);
            }
        }
        command
            .args(python_args)
            .args(["-c", BOTOCORE_PEER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("PYTHONUTF8", "1")
            .env("PYTHONIOENCODING", "utf-8")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}\n{SETUP_HINT}", python.display()));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let hello = read_reply(&mut stdout, python);
        assert!(
            hello.get("ready").is_some(),
            "{} cannot sign with botocore: {}\n{SETUP_HINT}",
            python.display(),
            hello.get("fatal").unwrap_or(&hello)
        );
        Botocore {
            _child: child,
            stdin,
            stdout,
        }
    }

    /// botocore's token (or its error) for each case, in one round trip.
    fn tokens(&mut self, cases: &[Case]) -> Vec<Result<String, String>> {
        let request = Value::Array(cases.iter().map(Case::to_json).collect());
        writeln!(self.stdin, "{request}").expect("botocore peer is running");
        self.stdin.flush().unwrap();
        let reply = read_reply(&mut self.stdout, "the botocore peer");
        let answers = reply
            .as_array()
            .unwrap_or_else(|| panic!("botocore peer: {reply}"));
        assert_eq!(answers.len(), cases.len());
        answers
            .iter()
            .map(|answer| {
                if let Some(fatal) = answer.get("fatal") {
                    panic!("botocore peer: {fatal}\n{SETUP_HINT}");
                }
                match (answer.get("token"), answer.get("error")) {
                    (Some(Value::String(token)), _) => Ok(token.clone()),
                    (_, Some(Value::String(error))) => Err(error.clone()),
                    _ => panic!("botocore peer answered {answer}"),
                }
            })
            .collect()
    }
}

fn read_reply(stdout: &mut impl BufRead, who: impl std::fmt::Debug) -> Value {
    let mut line = String::new();
    let read = stdout.read_line(&mut line);
    if !matches!(read, Ok(n) if n > 0) {
        panic!("{who:?} exited without answering ({read:?}): see its stderr above\n{SETUP_HINT}");
    }
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{who:?} answered {line:?}: {e}"))
}

fn botocore() -> MutexGuard<'static, Botocore> {
    static PEER: OnceLock<Mutex<Botocore>> = OnceLock::new();
    PEER.get_or_init(|| Mutex::new(Botocore::start()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A token split into what precedes `?` and its query parameters, in order.
fn parse(token: &str) -> (&str, Vec<(&str, &str)>) {
    let (endpoint, query) = token.split_once('?').unwrap_or((token, ""));
    let params = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    (endpoint, params)
}

/// Where two tokens first differ, by parameter.
fn difference(ours: &str, theirs: &str) -> Option<String> {
    let (our_endpoint, our_params) = parse(ours);
    let (their_endpoint, their_params) = parse(theirs);
    if our_endpoint != their_endpoint {
        return Some(format!(
            "endpoint: ours `{our_endpoint}`, botocore's `{their_endpoint}`"
        ));
    }
    for i in 0..our_params.len().max(their_params.len()) {
        match (our_params.get(i), their_params.get(i)) {
            (Some((k1, v1)), Some((k2, v2))) if k1 == k2 && v1 != v2 => {
                return Some(format!("parameter `{k1}`: ours `{v1}`, botocore's `{v2}`"));
            }
            (ours, theirs) if ours != theirs => {
                return Some(format!(
                    "parameter {}: ours {ours:?}, botocore's {theirs:?}",
                    i + 1
                ));
            }
            _ => {}
        }
    }
    (ours != theirs).then(|| "the strings differ".to_owned())
}

/// Asserts that envctl and botocore sign every case alike.
fn assert_same_as_botocore(cases: &[Case]) {
    let theirs = botocore().tokens(cases);
    for (case, theirs) in cases.iter().zip(theirs) {
        let theirs = theirs.unwrap_or_else(|e| panic!("botocore refused {case:?}: {e}"));
        let ours = case
            .ours()
            .unwrap_or_else(|e| panic!("envctl refused {case:?}: {e}"));
        if let Some(why) = difference(&ours, &theirs) {
            panic!("{case:?}\n{why}\nours:       {ours}\nbotocore's: {theirs}");
        }
    }
}

const USERS: [&str; 7] = [
    "postgres",
    "a+b",
    "with space",
    "a/b=c&d",
    "ünïcødé",
    "~tilde",
    "UPPER",
];

/// (region, host, port): RDS endpoints and the edges of what botocore signs as the host header.
const ENDPOINTS: [(&str, &str, u16); 6] = [
    (
        "us-east-1",
        "envctl-main-0a1b2c3d.cluster-abcdefghijkl.us-east-1.rds.amazonaws.com",
        5432,
    ),
    (
        "eu-central-1",
        "envctl-feature-login-1a2b3c4d.cluster-c9akciq32xyz.eu-central-1.rds.amazonaws.com",
        5433,
    ),
    ("ap-southeast-2", "10.0.12.34", 6543),
    ("us-gov-west-1", "db.internal", 1),
    ("cn-north-1", "Mixed-Case.Example.COM", 443),
    ("eu-west-3", "h", 65535),
];

#[test]
fn every_user_region_host_and_port_is_signed_as_botocore_signs_it() {
    let mut cases = Vec::new();
    for user in USERS {
        for session_token in [None, Some("IQoJb3JpZ2luX2VjEXAMPLE+/=//////////wEaCXVz")] {
            for (region, hostname, port) in ENDPOINTS {
                cases.push(Case {
                    session_token: session_token.map(str::to_owned),
                    region: region.into(),
                    hostname: hostname.into(),
                    port,
                    ..Case::new(user)
                });
            }
        }
    }
    assert_eq!(cases.len(), 84);
    assert_same_as_botocore(&cases);
}

#[test]
fn the_signing_time_is_read_as_botocore_reads_it() {
    let times = [
        (0, 0),
        (951_868_799, 999_999), // 2000-02-29T23:59:59.999999Z
        (1_709_251_200, 0),     // 2024-03-01T00:00:00Z
        (1_741_964_966, 1),
        (4_102_444_799, 500_000),   // 2099-12-31T23:59:59.5Z
        (253_402_300_799, 999_999), // 9999-12-31T23:59:59.999999Z
    ];
    let cases: Vec<Case> = times
        .into_iter()
        .map(|(secs, micros)| Case {
            secs,
            micros,
            session_token: Some("token".into()),
            ..Case::new("a+b")
        })
        .collect();
    assert_same_as_botocore(&cases);
}

#[test]
fn odd_credentials_are_encoded_as_botocore_encodes_them() {
    let cases = [
        Case {
            session_token: Some(String::new()),
            ..Case::new("postgres")
        },
        Case {
            access_key: "AKID/with+odd=chars&ü".into(),
            secret_key: "ü secret with spaces".into(),
            session_token: Some("a b&c=d~e%f".into()),
            ..Case::new("with space")
        },
    ];
    assert_same_as_botocore(&cases);
}

#[test]
fn regions_are_refused_where_botocore_refuses_them() {
    let refused = ["us east", "-us", "us-", "123", "us_east_1", &"a".repeat(64)];
    let cases: Vec<Case> = refused
        .iter()
        .map(|region| Case {
            region: region.to_string(),
            ..Case::new("postgres")
        })
        .collect();
    for (case, theirs) in cases.iter().zip(botocore().tokens(&cases)) {
        assert!(
            theirs.is_err(),
            "botocore signed for {:?}: {theirs:?}",
            case.region
        );
        assert_eq!(
            case.ours(),
            Err(TokenError::InvalidRegion(case.region.clone()))
        );
    }
    let accepted: Vec<Case> = ["US-EAST-1", "1a", "local", &"a".repeat(63)]
        .iter()
        .map(|region| Case {
            region: region.to_string(),
            ..Case::new("postgres")
        })
        .collect();
    assert_same_as_botocore(&accepted);
}

/// Any text: printable or not (NUL and control characters included), any plane of Unicode, and
/// ASCII heavy on the characters SigV4 encodes.
fn user_name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 1..12).prop_map(String::from_iter),
        "[ -~]{1,24}",
        "[a-zA-Z0-9+ /=&~%._üß日本🐘-]{1,16}",
    ]
    .prop_filter("a user name is not empty", |user| !user.is_empty())
}

/// A user name with any session token, region, host name, port and time.
fn case() -> impl Strategy<Value = Case> {
    (
        user_name(),
        proptest::option::of("[!-~]{0,40}"),
        prop::sample::select(vec![
            "us-east-1",
            "eu-west-1",
            "ap-northeast-3",
            "sa-east-1",
        ]),
        "[a-zA-Z0-9][a-zA-Z0-9._-]{0,40}",
        any::<u16>(),
        0..=253_402_300_799_u64,
        0..1_000_000_u32,
    )
        .prop_map(
            |(user, session_token, region, hostname, port, secs, micros)| Case {
                session_token,
                region: region.into(),
                hostname,
                port,
                secs,
                micros,
                ..Case::new(&user)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Each proptest case is one batch of up to 32 tokens: one round trip to the botocore process.
    #[test]
    fn any_user_name_is_signed_as_botocore_signs_it(cases in prop::collection::vec(case(), 1..32)) {
        assert_same_as_botocore(&cases);
    }
}

/// The message a test fails with when `start` panics.
fn panic_message(start: impl FnOnce() -> Botocore + std::panic::UnwindSafe) -> String {
    let payload = std::panic::catch_unwind(start)
        .err()
        .expect("the peer did not start");
    payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_missing_python_or_botocore_fails_saying_how_to_install_them() {
    let no_python =
        panic_message(|| Botocore::start_with(Path::new("/nonexistent/venv/bin/python"), &[]));
    assert!(
        no_python.contains("cannot run /nonexistent/venv/bin/python"),
        "{no_python}"
    );
    assert!(
        no_python.contains("scripts/aws-peer/setup.sh"),
        "{no_python}"
    );

    // `-S`: no site-packages, so the venv's python cannot import botocore.
    let no_botocore = panic_message(|| Botocore::start_with(&venv_python(), &["-S"]));
    assert!(
        no_botocore.contains("cannot import botocore"),
        "{no_botocore}"
    );
    assert!(
        no_botocore.contains("scripts/aws-peer/setup.sh"),
        "{no_botocore}"
    );
}
