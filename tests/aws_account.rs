//! What the first real AWS account meets, against the AWS peer (as strict as AWS documents it):
//! TLS to the data plane verified against the RDS CA bundle (fetched once over verified HTTPS,
//! then cached), the engine versions an account offers and what scaling each allows, the writer
//! instance tagged like its cluster, plans reading ledgers as the read-only `envctl_reader`, and
//! what IAM refusing a protected environment's delete looks like.

mod support;

use serde_json::{Value, json};
use support::TestRepo;
use support::certs::{HttpsFiles, TestCa};
use support::peer::{Peer, run_prefix};

/// A repository and a peer, with envctl under this run's prefix.
struct Account {
    repo: TestRepo,
    peer: Peer,
    prefix: String,
    /// The user's cache directory (`XDG_CACHE_HOME`): where the RDS CA bundle is cached.
    cache: tempfile::TempDir,
}

impl Account {
    fn new(name: &str) -> Account {
        Account {
            repo: TestRepo::new(&format!("aws-account-{name}")),
            peer: Peer::start(&[]),
            prefix: run_prefix(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn envctl(&self) -> assert_cmd::Command {
        let mut cmd = self.peer.envctl(self.repo.path(), &self.repo.repo);
        cmd.env("ENVCTL_PREFIX", &self.prefix)
            .env("XDG_CACHE_HOME", self.cache.path());
        for key in [
            "PGSSLMODE",
            "PGSSLROOTCERT",
            "ENVCTL_RDS_CA_BUNDLE",
            "ENVCTL_RDS_CA_BUNDLE_URL",
            "SSL_CERT_FILE",
        ] {
            cmd.env_remove(key);
        }
        cmd
    }

    /// envctl without the data-plane override: connections go to the cluster endpoints, as on
    /// AWS (the peer's endpoints resolve nowhere, which `url` and `token` do not need).
    fn envctl_on_aws(&self) -> assert_cmd::Command {
        let mut cmd = self.envctl();
        cmd.env_remove("ENVCTL_DATA_PLANE_OVERRIDE");
        cmd
    }

    fn run(cmd: &mut assert_cmd::Command, args: &[&str]) -> (i32, String, String) {
        let output = cmd.args(args).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = Self::run(&mut self.envctl(), args);
        assert_eq!(code, 0, "{args:?} failed:\n{stderr}");
        stdout
    }

    fn id(&self, branch: &str) -> String {
        support::cluster_id(&self.prefix, &self.repo.repo, branch).to_string()
    }

    /// The tags of a cluster's instances, by instance id.
    fn instance_tags(&self, id: &str) -> Value {
        let out = self.peer.boto3(&format!(
            "out = {{}}\n\
             for i in rds.describe_db_instances(Filters=[{{'Name': 'db-cluster-id', 'Values': [{id:?}]}}])['DBInstances']:\n    \
             out[i['DBInstanceIdentifier']] = {{t['Key']: t['Value'] for t in i.get('TagList', [])}}\n\
             print(json.dumps(out))"
        ));
        serde_json::from_str(out.trim()).unwrap()
    }
}

fn url_param(url: &str, key: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The bundle AWS publishes is fetched over HTTPS verified against the system's roots (the test
/// CA stands in for them through `SSL_CERT_FILE`), once: the next run reads the cache with the
/// server gone. The URL a user gets verifies the server against it.
#[test]
fn the_rds_ca_bundle_is_fetched_once_over_verified_https_and_cached() {
    let account = Account::new("bundle");
    account.ok(&["apply", "--branch", "feature/tls"]);
    let ca = TestCa::new();
    let served = tempfile::tempdir().unwrap();
    let bundle = std::fs::read_to_string(ca.ca()).unwrap();
    std::fs::write(served.path().join("global-bundle.pem"), &bundle).unwrap();
    let server = HttpsFiles::start(&ca, served.path());
    let url = format!("https://localhost:{}/global-bundle.pem", server.port);

    // Not trusted: the system's roots do not know the test CA.
    let (code, _, stderr) = Account::run(
        account
            .envctl_on_aws()
            .env("ENVCTL_RDS_CA_BUNDLE_URL", &url)
            .env("SSL_CERT_FILE", "/dev/null"),
        &["url", "--branch", "feature/tls"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot fetch the RDS CA bundle"),
        "{stderr}"
    );
    let cached = account
        .cache
        .path()
        .join("envctl")
        .join("rds-global-bundle.pem");
    assert!(!cached.exists(), "nothing unverified is cached");

    // Trusted: fetched, cached, and named by the URL.
    let (code, stdout, stderr) = Account::run(
        account
            .envctl_on_aws()
            .env("ENVCTL_RDS_CA_BUNDLE_URL", &url)
            .env("SSL_CERT_FILE", ca.ca()),
        &["url", "--branch", "feature/tls"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&cached).unwrap(), bundle);
    let printed = stdout.trim();
    assert_eq!(
        url_param(printed, "sslmode").as_deref(),
        Some("verify-full")
    );
    assert_eq!(
        url_param(printed, "sslrootcert").map(std::path::PathBuf::from),
        Some(cached.clone())
    );

    // The server gone: the cache serves.
    drop(server);
    let (code, stdout, stderr) = Account::run(
        account
            .envctl_on_aws()
            .env("ENVCTL_RDS_CA_BUNDLE_URL", &url),
        &["url", "--branch", "feature/tls"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        url_param(stdout.trim(), "sslmode").as_deref(),
        Some("verify-full")
    );

    // Only https:// is fetched.
    std::fs::remove_file(&cached).unwrap();
    let (code, _, stderr) = Account::run(
        account.envctl_on_aws().env(
            "ENVCTL_RDS_CA_BUNDLE_URL",
            "http://localhost:1/global-bundle.pem",
        ),
        &["url", "--branch", "feature/tls"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("only an https:// URL is fetched"),
        "{stderr}"
    );
}

/// A root certificate that is set but unusable is an error naming it (never a quiet fall back to
/// unverified TLS); the user's own `PGSSLMODE` is kept, and `require` says it verifies nothing.
#[test]
fn an_unusable_root_is_an_error_and_the_users_sslmode_is_kept() {
    let account = Account::new("roots");
    account.ok(&["apply", "--branch", "feature/roots"]);
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (var, value) in [
        ("PGSSLROOTCERT", dir.path().join("missing.pem")),
        ("PGSSLROOTCERT", dir.path().to_owned()),
        ("ENVCTL_RDS_CA_BUNDLE", not_pem.clone()),
    ] {
        let (code, stdout, stderr) = Account::run(
            account.envctl_on_aws().env(var, &value),
            &["url", "--branch", "feature/roots"],
        );
        assert_eq!(code, 1, "{var}={}: {stdout}", value.display());
        assert!(
            stderr.contains(&format!("{var} names `{}`", value.display())),
            "{stderr}"
        );
        assert!(stdout.is_empty(), "nothing is printed: {stdout}");
    }
    let ca = TestCa::new();
    let (code, stdout, stderr) = Account::run(
        account
            .envctl_on_aws()
            .env("PGSSLROOTCERT", ca.ca())
            .env("PGSSLMODE", "verify-ca"),
        &["url", "--branch", "feature/roots"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        url_param(stdout.trim(), "sslmode").as_deref(),
        Some("verify-ca")
    );
    assert_eq!(
        url_param(stdout.trim(), "sslrootcert").map(std::path::PathBuf::from),
        Some(ca.ca())
    );
    let (code, stdout, stderr) = Account::run(
        account.envctl_on_aws().env("PGSSLMODE", "require"),
        &["url", "--branch", "feature/roots"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        url_param(stdout.trim(), "sslmode").as_deref(),
        Some("require")
    );
    assert!(stderr.contains("the server is not verified"), "{stderr}");
    let (code, _, stderr) = Account::run(
        account.envctl_on_aws().env("PGSSLMODE", "disable"),
        &["url", "--branch", "feature/roots"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("AWS data planes need TLS"), "{stderr}");
}

/// Minimum 0 needs a version that can pause, above 128 a recent one: a spec the account cannot
/// satisfy is blocked in the plan with the reason (one DescribeDBEngineVersions per version),
/// never a failed create. A no-op plan makes no such call.
#[test]
fn a_scaling_the_engine_version_cannot_give_is_blocked_in_the_plan() {
    let account = Account::new("engines");
    let spec = "environments/preview.yaml";
    account.repo.replace_in(
        spec,
        "  express: true\n",
        "  express: true\n  engineVersion: \"15.4\"\n",
    );
    let (code, stdout, _) = Account::run(
        &mut account.envctl(),
        &["plan", "--branch", "feature/old", "--json"],
    );
    assert_eq!(code, 1, "blocked: {stdout}");
    let plan: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["actions"][0]["type"], "blocked", "{plan}");
    assert_eq!(
        plan["actions"][0]["reason"],
        "`minAcu: 0` needs an engine version that can pause; engine version 15.4 allows a minimum of 0.5 ACU: set `minAcu: 0.5`, or a newer `cluster.engineVersion`"
    );
    assert_eq!(account.peer.calls_of("DescribeDBEngineVersions").len(), 1);
    assert!(account.peer.calls_of("CreateDBCluster").is_empty());

    account
        .repo
        .replace_in(spec, "minAcu: 0, maxAcu: 4", "minAcu: 0.5, maxAcu: 200");
    let (_, stdout, _) = Account::run(
        &mut account.envctl(),
        &["plan", "--branch", "feature/old", "--json"],
    );
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["actions"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["actions"][0]["type"], "blocked", "{json}");
    assert!(
        json["actions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("`maxAcu: 200` is above what engine version 15.4 allows (128 ACU)"),
        "{json}"
    );

    // A version the account does not offer.
    account
        .repo
        .replace_in(spec, "engineVersion: \"15.4\"", "engineVersion: \"14.99\"");
    let (_, stdout, _) = Account::run(
        &mut account.envctl(),
        &["plan", "--branch", "feature/old", "--json"],
    );
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        json["actions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("Aurora PostgreSQL 14.99 is not offered in this Region"),
        "{json}"
    );

    // The default version can pause and scale to 256: created, and later plans make no call.
    account
        .repo
        .replace_in(spec, "  engineVersion: \"14.99\"\n", "");
    account
        .repo
        .replace_in(spec, "minAcu: 0.5, maxAcu: 200", "minAcu: 0, maxAcu: 200");
    account.ok(&["apply", "--branch", "feature/old"]);
    account.peer.reset_calls();
    account.ok(&["plan", "--branch", "feature/old"]);
    assert!(account.peer.calls_of("DescribeDBEngineVersions").is_empty());
}

/// Where express refuses `EngineVersion` (a translated AWS guide says so), the error names the
/// spec's field and what to do, once, not an SDK dump.
#[test]
fn express_refusing_an_engine_version_names_the_field() {
    let account = Account::new("express-version");
    account
        .peer
        .config(json!({"express_rejects_engine_version": true}));
    account.repo.replace_in(
        "environments/preview.yaml",
        "  express: true\n",
        "  express: true\n  engineVersion: \"16.6\"\n",
    );
    let (code, _, stderr) =
        Account::run(&mut account.envctl(), &["apply", "--branch", "feature/v"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("AWS refused `cluster.engineVersion` (`16.6`) with express configuration"),
        "{stderr}"
    );
    assert!(
        stderr.contains("remove `engineVersion` from the spec"),
        "{stderr}"
    );
}

/// Express makes the writer with none of envctl's tags: apply tags it with the ownership tags (IAM
/// lets the apply role delete only writers that carry them) and mirrors `envctl:protect`.
#[test]
fn the_writer_carries_the_ownership_tags_and_protection() {
    let account = Account::new("writer");
    account.ok(&["apply", "--branch", "feature/w"]);
    let id = account.id("feature/w");
    let tags = account.instance_tags(&id);
    let writer = &tags[format!("{id}-instance-1")];
    assert_eq!(writer["envctl:managed"], "true", "{tags}");
    assert_eq!(writer["envctl:repo"], account.repo.repo.as_str());
    assert_eq!(writer["envctl:prefix"], account.prefix.as_str());
    assert!(writer.get("envctl:protect").is_none(), "{tags}");
    account.repo.replace_in(
        "environments/preview.yaml",
        "  protect: false",
        "  protect: true",
    );
    account.ok(&["apply", "--branch", "feature/w"]);
    let tags = account.instance_tags(&id);
    assert_eq!(
        tags[format!("{id}-instance-1")]["envctl:protect"],
        "true",
        "{tags}"
    );
}

/// Plans read ledgers as `envctl_reader`, the login the plan role may use: apply makes it, and it
/// reads the ledger and nothing else.
#[test]
fn plans_read_ledgers_as_the_reader_which_reads_nothing_else() {
    let account = Account::new("reader");
    account.ok(&["apply", "--branch", "feature/r"]);
    let id = account.id("feature/r");
    account.repo.write(
        "schemas/migrations/0004_more.sql",
        "CREATE TABLE dummy.more (id int);\n",
    );
    let (code, _, stderr) = Account::run(
        &mut account.envctl(),
        &["plan", "--branch", "feature/r", "-v"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("read the ledger of `{id}` as `envctl_reader`")),
        "{stderr}"
    );
    let as_reader = |sql: &str| {
        let server = support::server_url();
        let url = format!("{}/{id}", server.strip_suffix("/postgres").unwrap());
        let output = std::process::Command::new("psql")
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-qAtc"])
            .arg(format!("SET ROLE envctl_reader; {sql}"))
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = as_reader("SELECT count(*) FROM envctl.migrations");
    assert!(ok, "{err}");
    assert_eq!(out, "3");
    let (ok, _, err) = as_reader("SELECT count(*) FROM dummy.dummy_table");
    assert!(!ok, "the reader reads no application table");
    assert!(err.contains("permission denied"), "{err}");
}

/// IAM denying the apply role's delete of a protected environment (the policy's Deny) says why
/// and that a person's credentials are needed.
#[test]
fn iam_refusing_a_protected_delete_says_a_person_must_do_it() {
    let account = Account::new("protected");
    account.repo.replace_in(
        "environments/preview.yaml",
        "  protect: false",
        "  protect: true",
    );
    account.ok(&["apply", "--branch", "feature/p"]);
    account.peer.control(
        "POST",
        "/_peer/fault-next",
        &json!({"action": "DeleteDBCluster", "fault": "access-denied"}),
    );
    let (code, _, stderr) = Account::run(
        &mut account.envctl(),
        &["destroy", "--branch", "feature/p", "--force", "--yes"],
    );
    let calls: Vec<String> = account
        .peer
        .calls()
        .iter()
        .map(|c| format!("{} {}", c["action"], c["status"]))
        .collect();
    assert_eq!(code, 1, "{stderr}\n{calls:?}");
    assert!(
        stderr.contains("envctl's apply role may not delete a protected environment; run the destroy with a person's AWS credentials"),
        "{stderr}"
    );
}

/// `iam-policy --role plan` only reads; `--trust` names exactly the events each role serves.
#[test]
fn iam_policy_prints_each_roles_policy_and_trust() {
    let account = Account::new("policy");
    let plan: Value =
        serde_json::from_str(&account.ok(&["iam-policy", "--role", "plan", "--json"])).unwrap();
    let allowed = envctl::provider::aws::policy::allowed_actions(&plan);
    assert!(
        allowed.iter().all(|a| a.starts_with("rds:Describe")
            || a == "tag:GetResources"
            || a == "rds-db:connect"),
        "{allowed:?}"
    );
    let trust = |role: &str| -> Value {
        serde_json::from_str(&account.ok(&[
            "iam-policy",
            "--role",
            role,
            "--trust",
            "--account",
            "123456789012",
            "--region",
            "us-gov-west-1",
        ]))
        .unwrap()
    };
    let plan_trust = trust("plan");
    let statement = &plan_trust["Statement"][0];
    assert_eq!(
        statement["Principal"]["Federated"],
        "arn:aws-us-gov:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
    );
    assert_eq!(
        statement["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"],
        format!("repo:{}:pull_request", account.repo.repo)
    );
    let apply_trust = trust("apply");
    assert_eq!(
        apply_trust["Statement"][0]["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"],
        format!("repo:{}:ref:refs/heads/*", account.repo.repo)
    );
    let (code, _, stderr) = Account::run(&mut account.envctl(), &["iam-policy", "--account", "12"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is not an AWS account id"), "{stderr}");
}

/// In GitHub Actions every token and password envctl prints is announced with `::add-mask::`
/// first, so the runner hides it in every later log line (the URL-encoded form too).
#[test]
fn tokens_and_passwords_are_masked_in_github_actions_before_they_are_printed() {
    let account = Account::new("mask");
    account.ok(&["apply", "--branch", "feature/m"]);
    let in_actions = |args: &[&str]| {
        let (code, stdout, stderr) =
            Account::run(account.envctl().env("GITHUB_ACTIONS", "true"), args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
        let masks: Vec<String> = lines
            .iter()
            .take_while(|l| l.starts_with("::add-mask::"))
            .map(|l| l["::add-mask::".len()..].to_owned())
            .collect();
        assert!(!masks.is_empty(), "{args:?}: no mask first:\n{stdout}");
        let rest = lines[masks.len()..].to_vec();
        (masks, rest)
    };
    let (masks, rest) = in_actions(&["token", "--branch", "feature/m"]);
    assert_eq!(rest.len(), 1);
    assert!(masks.contains(&rest[0]), "{masks:?} {rest:?}");
    let (masks, rest) = in_actions(&["url", "--branch", "feature/m"]);
    let url = url::Url::parse(&rest[0]).unwrap();
    let password = url.password().unwrap();
    assert!(masks.iter().any(|m| m == password), "{masks:?}");
    let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
    assert!(masks.iter().any(|m| *m == decoded), "{masks:?}");
    let (masks, rest) = in_actions(&[
        "exec",
        "--branch",
        "feature/m",
        "--",
        "sh",
        "-c",
        "printf '%s\\n' \"$PGPASSWORD\"",
    ]);
    assert!(masks.contains(&rest[0]), "{masks:?} {rest:?}");
    // Outside Actions, no mask line.
    let (_, stdout, _) = Account::run(&mut account.envctl(), &["token", "--branch", "feature/m"]);
    assert!(!stdout.contains("::add-mask::"), "{stdout}");
}
