//! `envctl doctor`: one line per check, a fix for each failure, exit 1 when any failed, and
//! nothing created, changed or connected to. On AWS against the peer, with a role made in its IAM
//! and assumed as GitHub Actions would: the role's policy is what `envctl iam-policy` prints,
//! simulated by IAM's rules.

mod support;

use serde_json::Value;
use support::TestRepo;
use support::certs::TestCa;
use support::peer::{Peer, run_prefix};

fn checks(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn status_of<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no `{check}` in {report}"))
}

#[test]
fn on_the_local_provider_each_check_says_what_it_found_and_a_failure_its_fix() {
    let repo = TestRepo::new("doctor-local");
    let output = repo
        .envctl()
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(
        checks(&report)
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>(),
        [
            "git repository",
            "git origin",
            "default branch",
            "git history",
            "specs",
            "provider",
            "local server"
        ]
    );
    assert_eq!(status_of(&report, "git origin")["status"], "skipped");
    assert_eq!(status_of(&report, "local server")["status"], "ok");
    assert!(
        status_of(&report, "specs")["detail"]
            .as_str()
            .unwrap()
            .starts_with("2 environment files, 3 migrations"),
        "{report}"
    );

    // A default branch git does not know (a typo, or a full ref name) is a failure with its fix.
    for wrong in ["mian", "refs/heads/main"] {
        let output = repo
            .envctl()
            .env("ENVCTL_DEFAULT_BRANCH", wrong)
            .args(["doctor", "--json"])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(output.status.code(), Some(1), "{report}");
        let check = status_of(&report, "default branch");
        assert_eq!(check["status"], "failed", "{report}");
        assert!(
            check["detail"].as_str().unwrap().contains(&format!(
                "`{wrong}` is neither on `origin` nor a local branch"
            )),
            "{report}"
        );
    }

    // An invalid spec and no default branch: two failures, each with its fix; text lines.
    repo.replace_in("environments/preview.yaml", "maxAcu: 4", "maxAcus: 4");
    let output = repo
        .envctl()
        .env_remove("ENVCTL_DEFAULT_BRANCH")
        .args(["doctor"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("✗ default branch"), "{text}");
    assert!(
        text.contains("fix: set ENVCTL_DEFAULT_BRANCH (e.g. `main`)"),
        "{text}"
    );
    assert!(
        text.contains("environments/preview.yaml:9:25: unknown key `maxAcus`"),
        "{text}"
    );
    assert!(
        text.contains("fix: `envctl validate` shows every error"),
        "{text}"
    );
    assert!(text.contains("Doctor: 2 checks failed."), "{text}");
}

/// A role made in the peer's IAM with `policy` inline, assumed as GitHub Actions would: its
/// temporary credentials.
fn assume_role_with(peer: &Peer, name: &str, policy: &str) -> (String, String, String) {
    let out = peer.boto3(&format!(
        "iam = boto3.client('iam', **kw)\n\
         sts = boto3.client('sts', **kw)\n\
         trust = json.dumps({{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Principal': {{'Federated': 'arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com'}}, 'Action': 'sts:AssumeRoleWithWebIdentity'}}]}})\n\
         role = iam.create_role(RoleName={name:?}, AssumeRolePolicyDocument=trust)['Role']\n\
         iam.put_role_policy(RoleName={name:?}, PolicyName='envctl', PolicyDocument={policy:?})\n\
         c = sts.assume_role(RoleArn=role['Arn'], RoleSessionName='GitHubActions')['Credentials']\n\
         print(json.dumps([c['AccessKeyId'], c['SecretAccessKey'], c['SessionToken']]))"
    ));
    let creds: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    (creds[0].clone(), creds[1].clone(), creds[2].clone())
}

#[test]
fn on_aws_the_account_role_and_region_are_checked_read_only() {
    let repo = TestRepo::new("doctor-aws");
    let peer = Peer::start(&[]);
    let prefix = run_prefix();
    let ca = TestCa::new();
    let envctl = |creds: &(String, String, String)| {
        let mut cmd = peer.envctl(repo.path(), &repo.repo);
        cmd.env("ENVCTL_PREFIX", &prefix)
            .env("ENVCTL_DEFAULT_BRANCH", "main")
            .env("ENVCTL_RDS_CA_BUNDLE", ca.ca())
            .env("AWS_ACCESS_KEY_ID", &creds.0)
            .env("AWS_SECRET_ACCESS_KEY", &creds.1)
            .env("AWS_SESSION_TOKEN", &creds.2)
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLROOTCERT");
        cmd
    };
    let policy = |role: &str| {
        let output = peer
            .envctl(repo.path(), &repo.repo)
            .env("ENVCTL_PREFIX", &prefix)
            .args([
                "iam-policy",
                "--role",
                role,
                "--region",
                "us-east-1",
                "--account",
                "123456789012",
                "--json",
            ])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let apply = assume_role_with(&peer, "envctl-apply", &policy("apply"));
    peer.reset_calls();
    let output = envctl(&apply).args(["doctor", "--json"]).output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{report}");
    let names: Vec<String> = checks(&report).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        names,
        [
            "git repository",
            "git origin",
            "default branch",
            "git history",
            "specs",
            "provider",
            "aws credentials",
            "aws region",
            "rds cluster quota",
            "spec main",
            "spec preview",
            "rds ca bundle",
            "permissions"
        ],
        "{report}"
    );
    assert!(
        status_of(&report, "aws credentials")["detail"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:sts::123456789012:assumed-role/envctl-apply/GitHubActions"),
        "{report}"
    );
    assert_eq!(
        status_of(&report, "rds cluster quota")["detail"],
        "0 of 40 DB clusters in use, 40 left (an environment takes one)"
    );
    assert_eq!(
        status_of(&report, "permissions")["detail"],
        "`arn:aws:iam::123456789012:role/envctl-apply` allows every call of the apply role"
    );
    // Read-only: describes, the caller's identity, simulations; nothing created.
    let actions: std::collections::BTreeSet<String> = peer
        .calls()
        .iter()
        .map(|c| c["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        actions.iter().all(|a| a.starts_with("Describe")
            || a == "GetCallerIdentity"
            || a == "SimulatePrincipalPolicy"),
        "{actions:?}"
    );
    assert!(peer.cluster_ids().is_empty());

    // The plan role: reads only, said so; a role missing a call fails with the fix.
    let plan = assume_role_with(&peer, "envctl-plan", &policy("plan"));
    let output = envctl(&plan).args(["doctor", "--json"]).output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(
        status_of(&report, "permissions")["detail"]
            .as_str()
            .unwrap()
            .contains("allows the plan role's calls only"),
        "{report}"
    );
    let short = policy("apply").replace("\"rds:DeleteDBCluster\",", "");
    let partial = assume_role_with(&peer, "envctl-short", &short);
    let output = envctl(&partial)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{report}");
    let permissions = status_of(&report, "permissions");
    assert_eq!(permissions["status"], "failed");
    assert_eq!(
        permissions["detail"],
        "`arn:aws:iam::123456789012:role/envctl-short` does not allow rds:DeleteDBCluster"
    );
    assert!(
        permissions["fix"]
            .as_str()
            .unwrap()
            .contains("envctl iam-policy --role apply")
    );

    // A spec the account's engine cannot scale, and a full quota.
    repo.replace_in(
        "environments/preview.yaml",
        "  express: true\n",
        "  express: true\n  engineVersion: \"15.4\"\n",
    );
    peer.config(serde_json::json!({"cluster_quota": 0}));
    let output = envctl(&apply).args(["doctor"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("✗ spec preview")
            && text.contains("`minAcu: 0` needs an engine version that can pause"),
        "{text}"
    );
    assert!(text.contains("✗ rds cluster quota"), "{text}");
    assert!(
        text.contains("0 of 0 DB clusters in use: none left"),
        "{text}"
    );
}
