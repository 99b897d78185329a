//! The secrets sweep (RELIABILITY.md): every command on both providers, with recognisable
//! credentials (an AWS secret key and session token, the test server's admin password, the
//! passwords of the spec's own users), and the output of each searched for any of them and for
//! any IAM auth token: stdout, stderr, plan files, JSON, Markdown and `$GITHUB_OUTPUT` (envctl
//! writes no step summary itself: the Markdown on stdout is what the workflow puts there). Only
//! `token`, `url`, `local url` and `exec`'s child print a secret, on stdout, because the user
//! asked for it; `proxy` (its listening line and JSON, its `-v` log of each connection) and the
//! child of `exec --proxy` never. Runs with `-v` too, and through failures (a server that
//! refuses, an endpoint that does not answer).

mod support;

use std::path::Path;

use support::TestRepo;
use support::peer::{Peer, SECRET_KEY, SESSION_TOKEN, run_prefix};
use support::proxy::ProxyProcess;

/// What a token looks like wherever it appears (a presigned IAM auth token).
const TOKEN_MARKERS: [&str; 3] = ["X-Amz-Signature", "X-Amz-Security-Token", "Action=connect"];

/// A spec whose user is not the admin: its password is envctl's to make, and must not leak.
fn user_spec(user: &str) -> String {
    format!(
        "version: 1\nname: app\nbranches: [\"app/*\"]\ncluster:\n  engine: aurora-postgresql\n  express: true\n  scaling: {{ minAcu: 0, maxAcu: 2 }}\ndatabase:\n  user: {user}\n  schemaVersion: latest\n  seeds: [schemas/seeds/dummy.sql]\nlifecycle:\n  ttl: 1d\n"
    )
}

struct Sweep {
    secrets: Vec<String>,
    /// Outputs searched: (label, bytes).
    searched: usize,
    bytes: usize,
    commands: usize,
}

impl Sweep {
    fn check(&mut self, label: &str, text: &str, asked: bool) {
        self.searched += 1;
        self.bytes += text.len();
        if asked {
            return;
        }
        for secret in &self.secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret ({}…) appears in {label}:\n{text}",
                &secret[..4.min(secret.len())]
            );
        }
        for marker in TOKEN_MARKERS {
            assert!(
                !text.contains(marker),
                "a token ({marker}) appears in {label}:\n{text}"
            );
        }
    }

    /// Runs one command; checks its stderr always, its stdout unless the user asked for a secret
    /// there; files it wrote are checked by the caller. Returns stdout.
    fn run(&mut self, label: &str, mut cmd: assert_cmd::Command, args: &[&str]) -> String {
        let output = cmd.args(args).output().unwrap();
        self.commands += 1;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let verb = args.iter().find(|a| !a.starts_with('-')).copied();
        let asked = matches!(verb, Some("token" | "url" | "exec"));
        self.check(&format!("{label} {args:?} stderr"), &stderr, false);
        self.check(&format!("{label} {args:?} stdout"), &stdout, asked);
        assert!(
            !stderr.contains("panicked"),
            "{label} {args:?} panicked:\n{stderr}"
        );
        stdout
    }

    /// Runs `envctl … proxy ARGS` until one client connected through it and ran a query, then
    /// stops it with SIGTERM; checks its stdout line and its whole stderr.
    fn proxy(
        &mut self,
        label: &str,
        mut cmd: std::process::Command,
        args: &[&str],
        database: &str,
    ) {
        cmd.args(args);
        let mut proxy = ProxyProcess::start(cmd);
        self.commands += 1;
        let url = format!(
            "postgres://x@127.0.0.1:{}/{}?sslmode=disable",
            proxy.port,
            percent_encoding::utf8_percent_encode(database, percent_encoding::NON_ALPHANUMERIC)
        );
        let psql = std::process::Command::new("psql")
            .arg(&url)
            .args(["-Atc", "SELECT current_user"])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap();
        assert!(
            psql.status.success(),
            "{label} {args:?}: {}",
            String::from_utf8_lossy(&psql.stderr)
        );
        proxy.signal(nix::sys::signal::Signal::SIGTERM);
        let status = proxy
            .wait(std::time::Duration::from_secs(20))
            .expect("the proxy stops");
        assert_eq!(status.code(), Some(143), "{label} {args:?}");
        self.check(&format!("{label} {args:?} stdout"), &proxy.line, false);
        let stderr = proxy.stderr();
        self.check(&format!("{label} {args:?} stderr"), &stderr, false);
        assert!(
            !stderr.contains("panicked"),
            "{label} {args:?} panicked:\n{stderr}"
        );
    }

    fn file(&mut self, label: &str, path: &Path) {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{label}: {} was not written: {e}", path.display()));
        assert!(!text.is_empty(), "{label}: {} is empty", path.display());
        self.check(label, &text, false);
    }
}

/// The password in a `postgres://` URL.
fn password_of(url: &str) -> String {
    let url = url::Url::parse(url.trim()).unwrap();
    percent_encoding::percent_decode_str(url.password().expect("a password"))
        .decode_utf8()
        .unwrap()
        .into_owned()
}

/// Every command, in the order a user meets them, against one provider.
fn sweep_all_commands(
    sweep: &mut Sweep,
    label: &str,
    repo: &TestRepo,
    cmd: &dyn Fn() -> assert_cmd::Command,
    process: &dyn Fn() -> std::process::Command,
) {
    let dir = repo.path();
    let plan_file = dir.join("plan.json");
    let outputs = dir.join("github-output");
    let summary = dir.join("github-summary");
    sweep.run(label, cmd(), &["validate"]);
    sweep.run(label, cmd(), &["schema"]);
    sweep.run(label, cmd(), &["iam-policy"]);
    sweep.run(label, cmd(), &["iam-policy", "--json"]);
    sweep.run(label, cmd(), &["-v", "plan", "--branch", "app/x"]);
    sweep.run(label, cmd(), &["plan", "--all", "--json"]);
    sweep.run(label, cmd(), &["plan", "--all", "--markdown"]);
    sweep.run(
        label,
        cmd(),
        &[
            "plan",
            "--branch",
            "app/x",
            "--out",
            plan_file.to_str().unwrap(),
        ],
    );
    sweep.file(&format!("{label} plan --out"), &plan_file);
    sweep.run(
        label,
        cmd(),
        &["-v", "apply", "--yes", plan_file.to_str().unwrap()],
    );
    let mut github = cmd();
    github
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &outputs)
        .env("GITHUB_STEP_SUMMARY", &summary);
    sweep.run(label, github, &["-v", "apply", "--all", "--json", "--yes"]);
    sweep.file(&format!("{label} $GITHUB_OUTPUT"), &outputs);
    let mut github = cmd();
    github
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &outputs)
        .env("GITHUB_STEP_SUMMARY", &summary);
    sweep.run(label, github, &["apply", "--branch", "feature/s"]);
    sweep.run(label, cmd(), &["apply", "--branch", "feature/s", "--json"]);
    // The secrets the user asks for: each URL's password joins the list to look for elsewhere.
    for branch in ["app/x", "feature/s"] {
        let url = sweep.run(label, cmd(), &["url", "--branch", branch]);
        sweep.secrets.push(password_of(&url));
        let env = sweep.run(label, cmd(), &["exec", "--branch", branch, "--", "env"]);
        assert!(env.contains("PGPASSWORD="), "{env}");
    }
    // The proxy, and the child of `exec --proxy`, never see or print a secret.
    sweep.proxy(
        label,
        process(),
        &["-v", "proxy", "--branch", "app/x", "--port", "0", "--json"],
        "anything",
    );
    sweep.proxy(
        label,
        process(),
        &["-v", "proxy", "--all", "--port", "0"],
        "feature/s",
    );
    let child = sweep.run(
        label,
        cmd(),
        &[
            "exec",
            "--proxy",
            "--branch",
            "app/x",
            "--",
            "sh",
            "-c",
            "echo \"$DATABASE_URL ${PGPASSWORD-none}\"",
        ],
    );
    assert!(child.ends_with(" none\n"), "{child}");
    sweep.check(&format!("{label} exec --proxy's child"), &child, false);
    sweep.run(label, cmd(), &["token", "--branch", "app/x"]);
    sweep.run(
        label,
        cmd(),
        &[
            "token",
            "--hostname",
            "db.example.com",
            "--port",
            "5432",
            "--username",
            "u",
            "--region",
            "eu-west-1",
        ],
    );
    sweep.run(label, cmd(), &["status"]);
    sweep.run(label, cmd(), &["-v", "status", "--json"]);
    sweep.run(label, cmd(), &["reset", "--branch", "app/x", "--yes"]);
    sweep.run(label, cmd(), &["-v", "apply", "--all", "--reset", "--yes"]);
    repo.git(&["branch", "-q", "-D", "feature/gone"]);
    repo.git(&["push", "-q", "origin", "--delete", "feature/gone"]);
    sweep.run(label, cmd(), &["prune", "--dry-run"]);
    sweep.run(label, cmd(), &["prune", "--dry-run", "--json"]);
    let mut github = cmd();
    github
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary);
    // What the workflow appends to `$GITHUB_STEP_SUMMARY`.
    let markdown = sweep.run(label, github, &["-v", "prune", "--yes", "--markdown"]);
    assert!(
        markdown.contains("deleted"),
        "{label}: prune deleted nothing:\n{markdown}"
    );
    sweep.run(label, cmd(), &["destroy", "--branch", "app/x", "--yes"]);
    sweep.run(
        label,
        cmd(),
        &["-v", "destroy", "--branch", "feature/s", "--yes"],
    );
    sweep.run(
        label,
        cmd(),
        &["destroy", "--branch", "main", "--yes", "--force"],
    );
    let fresh = tempfile::tempdir().unwrap();
    let mut init = assert_cmd::Command::cargo_bin("envctl").unwrap();
    init.arg("-C").arg(fresh.path()).env("NO_COLOR", "1");
    sweep.run(label, init, &["init"]);
}

fn prepare(name: &str, user: &str) -> (TestRepo, tempfile::TempDir) {
    let repo = TestRepo::new(name);
    repo.write("environments/app.yaml", &user_spec(user));
    repo.commit("an app spec with its own user");
    let origin = repo.with_origin();
    repo.branch("feature/s", 1, true);
    repo.branch("feature/gone", 1, true);
    repo.branch("app/x", 1, true);
    (repo, origin)
}

#[test]
fn no_secret_in_any_output_of_any_command_on_either_provider() {
    let admin_password = password_of(support::server_url());
    let mut sweep = Sweep {
        secrets: vec![
            SECRET_KEY.to_owned(),
            SESSION_TOKEN.to_owned(),
            admin_password.clone(),
        ],
        searched: 0,
        bytes: 0,
        commands: 0,
    };

    // Local provider.
    let (local, _origin) = prepare("secrets-local", "sweeplocal");
    local.apply("feature/gone");
    let local_cmd = || {
        let mut cmd = local.envctl();
        cmd.env("ENVCTL_DEFAULT_BRANCH", "main")
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN);
        cmd
    };
    let local_process = || {
        let mut cmd = local.process(&[]);
        cmd.env("ENVCTL_DEFAULT_BRANCH", "main")
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN);
        cmd
    };
    sweep_all_commands(&mut sweep, "local", &local, &local_cmd, &local_process);
    // The private server: its URL is asked for; stopping it says nothing secret.
    let private = TestRepo::new("secrets-private");
    let private_cmd = || {
        let mut cmd = private.envctl();
        cmd.env_remove("ENVCTL_LOCAL_URL");
        cmd
    };
    let url = sweep.run("local", private_cmd(), &["local", "url"]);
    sweep.secrets.push(password_of(&url));
    sweep.run("local", private_cmd(), &["local", "stop"]);
    // A server that refuses: the error names it without its password.
    let mut refused = local_cmd();
    let mut closed = url::Url::parse(support::server_url()).unwrap();
    closed.set_port(Some(9)).unwrap();
    refused.env("ENVCTL_LOCAL_URL", closed.as_str());
    sweep.run("local", refused, &["-v", "status"]);

    // AWS provider, against the peer.
    let (aws, _origin) = prepare("secrets-aws", "sweepaws");
    let peer = Peer::start(&[]);
    let prefix = run_prefix();
    let aws_cmd = || {
        let mut cmd = peer.envctl(aws.path(), &aws.repo);
        cmd.env("ENVCTL_PREFIX", &prefix)
            .env("ENVCTL_DEFAULT_BRANCH", "main");
        cmd
    };
    sweep.run("aws", aws_cmd(), &["apply", "--branch", "feature/gone"]);
    let aws_process = || {
        let mut cmd = peer.process(aws.path(), &aws.repo);
        cmd.env("ENVCTL_PREFIX", &prefix)
            .env("ENVCTL_DEFAULT_BRANCH", "main");
        cmd
    };
    sweep_all_commands(&mut sweep, "aws", &aws, &aws_cmd, &aws_process);
    // An endpoint that does not answer: the error names no credential.
    let mut dead = aws_cmd();
    dead.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_MAX_ATTEMPTS", "1");
    sweep.run("aws", dead, &["-v", "status"]);
    assert!(sweep.secrets.len() >= 8, "{} secrets", sweep.secrets.len());
    eprintln!(
        "secrets: {} commands on both providers, {} outputs and files ({} bytes) searched for {} secrets and any IAM token: none found outside token, url and exec",
        sweep.commands,
        sweep.searched,
        sweep.bytes,
        sweep.secrets.len()
    );
}
