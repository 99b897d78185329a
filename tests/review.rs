//! `envctl review` (what the GitHub workflow comments on a pull request and writes to the run's
//! summary): the result first, the plan with its lint, the lint of what merging runs on the
//! default branch's database, the schema diff, how to connect; and `plan::review::render`, which
//! keeps it within GitHub's 65 536 characters with every fence and `<details>` closed.

mod support;

use envctl::plan::review::{Code, GITHUB_COMMENT_LIMIT, Review, Section, length, render};
use support::TestRepo;

/// Every fence that opens closes, and so does every `<details>`.
fn assert_closed(markdown: &str) {
    let mut open: Option<String> = None;
    for line in markdown.lines() {
        let ticks: String = line.chars().take_while(|c| *c == '`').collect();
        if ticks.len() >= 3 {
            match &open {
                None => open = Some(ticks),
                Some(fence) if line.trim_end() == fence.as_str() => open = None,
                Some(_) => {}
            }
        }
    }
    assert_eq!(open, None, "a fence is left open in\n{markdown}");
    assert_eq!(
        markdown.matches("<details>").count(),
        markdown.matches("</details>").count(),
        "{markdown}"
    );
}

fn sample(objects: usize) -> Review {
    Review {
        title: "### envctl: `feature/x` at `0123456789ab`".into(),
        result: Some("> [!CAUTION]\n> **Blocked:** `feature/x` (envctl-feature-x-1d260117): the history diverged".into()),
        sections: vec![
            Section {
                title: "Plan".into(),
                text: "| | action |\n|---|---|\n| `x` | blocked |".into(),
                code: None,
                elsewhere: "`envctl plan --branch 'feature/x'`".into(),
            },
            Section {
                title: "Migration lint: what merging runs on `main`".into(),
                text: "1 finding:".into(),
                code: Some(Code {
                    fence: None,
                    header: "| migration | line |\n|---|---|\n".into(),
                    items: vec!["| `0004_x` | 2 |".into()],
                    fold: None,
                    noun: "findings".into(),
                }),
                elsewhere: "`envctl validate`".into(),
            },
            Section {
                title: "Schema diff against `main`".into(),
                text: "**Diff: many added.**".into(),
                code: Some(Code {
                    fence: Some("diff".into()),
                    header: String::new(),
                    items: (0..objects)
                        .map(|n| format!("+ table public.t{n:05}\n+     column ```x```: text"))
                        .collect(),
                    fold: Some(format!("The diff ({} lines)", objects * 2)),
                    noun: "objects".into(),
                }),
                elsewhere: "`envctl diff --branch 'feature/x'`".into(),
            },
            Section {
                title: "Connect".into(),
                text: "```sh\nenvctl exec --branch 'feature/x' -- psql\n```".into(),
                ..Section::default()
            },
        ],
    }
}

#[test]
fn a_review_that_fits_is_whole() {
    let text = render(&sample(3), GITHUB_COMMENT_LIMIT);
    insta::assert_snapshot!("review_whole", text);
    assert_closed(&text);
}

/// A diff too big for a comment is cut between objects, inside its folded block, which closes;
/// the result is still first, and the sections after it still come.
#[test]
fn a_big_review_is_cut_between_items_with_everything_closed() {
    let review = sample(5_000);
    let text = render(&review, GITHUB_COMMENT_LIMIT);
    assert!(length(&text) <= GITHUB_COMMENT_LIMIT, "{}", length(&text));
    assert!(
        length(&text) > GITHUB_COMMENT_LIMIT - 1_000,
        "{}",
        length(&text)
    );
    assert_closed(&text);
    assert!(
        text.starts_with(
            "### envctl: `feature/x` at `0123456789ab`\n\n> [!CAUTION]\n> **Blocked:**"
        ),
        "{}",
        &text[..200]
    );
    let cut = regex_free_count(&text, "+ table public.t");
    assert!(cut > 100 && cut < 5_000, "{cut}");
    assert!(
        text.contains(&format!(
            "_{} more objects not shown here (this comment holds at most 65536 characters): `envctl diff --branch 'feature/x'`._",
            5_000 - cut
        )),
        "{}",
        &text[text.len() - 2_000..]
    );
    assert!(text.ends_with("envctl exec --branch 'feature/x' -- psql\n```\n\n"));
    // Any limit: never over it, always closed, the result always whole.
    for limit in [1_500, 3_000, 10_000, 40_000] {
        let text = render(&review, limit);
        assert!(length(&text) <= limit, "{limit}: {}", length(&text));
        assert_closed(&text);
        assert!(text.contains("the history diverged"), "{limit}");
    }
}

/// A small limit keeps the small sections whole before a diff gets room: before, the room kept
/// for later sections and for the note made the plan and the lint go first (at 1 300
/// characters, a review of 1 419 kept only how to connect, 507 characters).
#[test]
fn a_small_limit_cuts_the_diff_before_any_small_section() {
    let review = sample(8);
    let whole = length(&render(&review, GITHUB_COMMENT_LIMIT));
    let mut without_diff = review.clone();
    without_diff.sections.remove(2);
    let small = length(&render(&without_diff, GITHUB_COMMENT_LIMIT));
    // From the small sections and a note naming the diff, up to just under the whole.
    for limit in [small + 150, small + 250, (small + whole) / 2, whole - 1] {
        let text = render(&review, limit);
        assert!(length(&text) <= limit, "{limit}: {}", length(&text));
        assert_closed(&text);
        for title in ["#### Plan", "#### Migration lint", "#### Connect"] {
            assert!(text.contains(title), "{limit}: no {title} in\n{text}");
        }
        assert!(
            text.contains("Schema diff against `main`"),
            "{limit}: the diff, cut or named\n{text}"
        );
    }
}

/// A section that does not fit at all, even cut, is named at the end.
#[test]
fn a_section_too_big_to_cut_is_named() {
    let mut review = sample(1);
    review.sections[0].text = "x".repeat(70_000);
    let text = render(&review, GITHUB_COMMENT_LIMIT);
    assert!(length(&text) <= GITHUB_COMMENT_LIMIT);
    assert!(!text.contains("#### Plan"));
    assert!(
        text.ends_with("_Not shown here, to keep within 65536 characters: Plan (`envctl plan --branch 'feature/x'`)._\n"),
        "{text}"
    );
    assert!(text.contains("#### Schema diff against `main`"));
    // The note names the limit the comment was cut to, not GitHub's.
    let text = render(&review, 20_000);
    assert!(length(&text) <= 20_000);
    assert!(
        text.ends_with("_Not shown here, to keep within 20000 characters: Plan (`envctl plan --branch 'feature/x'`)._\n"),
        "{text}"
    );
    // Characters GitHub counts twice (UTF-16) count twice here.
    review.sections[0].text = "😀".repeat(40_000);
    assert!(length(&render(&review, GITHUB_COMMENT_LIMIT)) <= GITHUB_COMMENT_LIMIT);
}

fn regex_free_count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The real thing: two environments, a branch adding a migration that locks a table and a new
/// table; the review has the plan, the lint of what `main` has not run, the diff, how to connect.
#[test]
fn the_review_of_a_branch_has_its_lint_diff_and_connection() {
    let repo = TestRepo::new("review");
    repo.apply("main");
    repo.git(&["checkout", "-q", "-b", "feature/x"]);
    repo.write(
        "schemas/migrations/0004_orders.sql",
        "CREATE TABLE dummy.orders (id bigint PRIMARY KEY, item text);\nCREATE INDEX dummy_name_2 ON dummy.dummy_table (name);\n",
    );
    repo.commit("orders");
    repo.apply("feature/x");
    let output = repo
        .envctl()
        .args([
            "review",
            "--against",
            "main",
            "--commit",
            "0123456789abcdef",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert_closed(&text);
    assert!(
        text.starts_with("### envctl: `feature/x` at `0123456789ab`\n\n#### Plan\n\n"),
        "{text}"
    );
    assert!(
        text.contains("No changes: the live environments match"),
        "{text}"
    );
    for needle in [
        "#### Migration lint: what merging runs on `main`\n\n1 finding in the 1 migration that `main`'s database has not run",
        "| `0004_orders` | 2 | `require-concurrent-index-creation` |",
        "#### Schema diff against `main`\n\n`feature/x`'s database (envctl-feature-x-",
        "as of its last apply at ",
        ", with the migrations and seeds of `0123456789ab`",
        "**Diff: 1 added, 0 removed, 1 changed.**",
        "```diff\n~ table dummy.dummy_table\n+     index dummy_name_2\n",
        "+ table dummy.orders\n",
        "#### Connect\n",
        "envctl exec --branch 'feature/x' -- psql\n",
    ] {
        assert!(text.contains(needle), "`{needle}` in\n{text}");
    }
    // The ledger is no object of the diff.
    assert!(!text.contains("envctl.migrations"), "{text}");

    // Before its apply: the plan carries the lint beside the migration, and the diff says the
    // database has not run this commit's migrations yet.
    repo.write(
        "schemas/migrations/0005_drop.sql",
        "ALTER TABLE dummy.orders DROP COLUMN item;\n",
    );
    let output = repo
        .envctl()
        .args(["review", "--against", "main"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("| `0005_drop` | 1 | `ban-drop-column` |"),
        "{text}"
    );
    assert!(
        text.contains("which has not run every migration and seed of this commit"),
        "{text}"
    );

    // An apply that failed is said first.
    let output = repo
        .envctl()
        .args([
            "review",
            "--against",
            "main",
            "--applied",
            "failure",
            "--commit",
            "abc",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with("### envctl: `feature/x` after the apply of `abc`\n\n> [!CAUTION]\n> **The apply of `abc` failed.**"),
        "{text}"
    );
}

/// With no database of `main` to read, the lint covers every migration of the branch: a review
/// whose plan is cut (or whose default branch was never applied) still shows the findings.
#[test]
fn the_lint_is_shown_when_the_default_branch_has_no_database() {
    let repo = TestRepo::new("review-no-main");
    repo.git(&["checkout", "-q", "-b", "feature/y"]);
    repo.write(
        "schemas/migrations/0004_index.sql",
        "CREATE INDEX dummy_name_3 ON dummy.dummy_table (name);\n",
    );
    repo.commit("index");
    let output = repo
        .envctl()
        .args(["review", "--against", "main", "--max-chars", "2500"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("#### Migration lint: what merging runs on `main`"),
        "{text}"
    );
    assert!(
        text.contains("(`main` has no database to read, so: all of this branch's)"),
        "{text}"
    );
    assert!(
        text.contains("| `0004_index` | 1 | `require-concurrent-index-creation` |"),
        "{text}"
    );
    assert!(!text.contains("65536"), "{text}");
}

/// A blocked plan: said first, and the review exits 1 as the plan does (the workflow still posts
/// it, then fails the run).
#[test]
fn a_blocked_plan_is_said_first_and_exits_1() {
    let repo = TestRepo::new("review-blocked");
    repo.apply("main");
    repo.write(
        "schemas/migrations/0001_create_dummy.sql",
        "CREATE SCHEMA dummy;\nCREATE TABLE dummy.dummy_table (id bigint PRIMARY KEY, name text NOT NULL);\n",
    );
    let output = repo
        .envctl()
        .args(["review", "--branch", "main", "--commit", "feedface"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with(
            "### envctl: `main` at `feedface`\n\n> [!CAUTION]\n> **Blocked:** `main` (envctl-main-"
        ),
        "{text}"
    );
    assert!(text.contains("edited after it was applied"), "{text}");
}

/// The `run:` script of the workflow step with this `id`.
fn step_script(id: &str) -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/envctl.yml");
    let workflow: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let steps = workflow["jobs"]["envctl"]["steps"].as_sequence().unwrap();
    let step = steps
        .iter()
        .find(|s| s.get("id").and_then(|i| i.as_str()) == Some(id))
        .unwrap_or_else(|| panic!("a step `{id}`"));
    step["run"].as_str().unwrap().to_owned()
}

/// Runs a workflow step's script as GitHub does (`bash -eo pipefail`), in the repository, with the
/// real `envctl` first on PATH: its exit code, the summary and the outputs it wrote.
fn run_step(repo: &TestRepo, script: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let runner = tempfile::tempdir().unwrap();
    let summary = runner.path().join("summary.md");
    let outputs = runner.path().join("outputs");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_envctl"))
        .parent()
        .unwrap();
    let mut command = std::process::Command::new("bash");
    command
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
        .current_dir(repo.path())
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("RUNNER_TEMP", runner.path())
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("GITHUB_OUTPUT", &outputs)
        .env("ENVCTL_LOCAL_URL", support::server_url())
        .env("ENVCTL_REPO", &repo.repo)
        .env("ENVCTL_DEFAULT_BRANCH", "main")
        .env("NO_COLOR", "1")
        .env_remove("ENVCTL_PROVIDER")
        .env_remove("ENVCTL_PREFIX")
        .env_remove("GITHUB_HEAD_REF")
        .env_remove("GITHUB_REF_NAME");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        std::fs::read_to_string(&summary).unwrap_or_default(),
        std::fs::read_to_string(&outputs).unwrap_or_default(),
    )
}

/// The value of a multi-line `name<<delimiter` output.
fn output_value(outputs: &str, name: &str) -> String {
    let start = outputs
        .lines()
        .position(|l| l.starts_with(&format!("{name}<<")))
        .unwrap_or_else(|| panic!("{name} in {outputs}"));
    let lines: Vec<&str> = outputs.lines().collect();
    let delimiter = lines[start].split_once("<<").unwrap().1;
    let end = start
        + 1
        + lines[start + 1..]
            .iter()
            .position(|l| *l == delimiter)
            .unwrap();
    lines[start + 1..end].join("\n")
}

/// The workflow's own steps, run as the workflow tests run them: the pull request's plan step
/// and the review after an apply write the review to the summary and to the outputs the comment
/// job posts; a diff too big for a comment is cut with every fence closed; a failed apply is
/// said first.
#[test]
fn the_workflow_steps_write_the_review_to_the_summary_and_the_comment() {
    let repo = TestRepo::new("review-workflow");
    repo.apply("main");
    repo.git(&["checkout", "-q", "-b", "feature/big"]);
    repo.write(
        "schemas/migrations/0004_many.sql",
        &(0..2_000)
            .map(|n| format!("CREATE TABLE dummy.t{n:04} (id bigint PRIMARY KEY, name text NOT NULL, created timestamptz DEFAULT now());\n"))
            .collect::<String>(),
    );
    repo.write(
        "schemas/migrations/0005_lock.sql",
        "CREATE INDEX dummy_name_3 ON dummy.dummy_table (name);\n",
    );
    repo.commit("many tables");
    repo.apply("feature/big");

    let (code, summary, outputs) = run_step(
        &repo,
        &step_script("plan"),
        &[("HEAD_SHA", "0123456789abcdef")],
    );
    assert_eq!(code, Some(0), "{summary}");
    let comment = output_value(&outputs, "markdown");
    assert_eq!(summary.trim_end(), comment.trim_end());
    assert!(outputs.ends_with("exit-code=0\n"), "{outputs}");
    assert!(length(&comment) <= 64_000, "{}", length(&comment));
    assert_closed(&comment);
    for needle in [
        "#### Migration lint: what merging runs on `main`",
        "| `0005_lock` | 1 | `require-concurrent-index-creation` |",
        "#### Schema diff against `main`",
        "**Diff: 2000 added, 0 removed, 1 changed.**",
        "<details><summary>The diff (",
        "+ table dummy.t0000\n",
        "more objects not shown here (this comment holds at most 64000 characters): `envctl diff --branch 'feature/big' --against 'main'`._",
        "#### Connect",
    ] {
        assert!(
            comment.contains(needle),
            "`{needle}` in\n{}",
            &comment[..3_000]
        );
    }

    let (code, summary, outputs) = run_step(
        &repo,
        &step_script("review"),
        &[
            ("APPLY_OUTCOME", "failure"),
            ("GITHUB_SHA", "fedcba9876543210"),
        ],
    );
    assert_eq!(code, Some(0), "{summary}");
    let comment = output_value(&outputs, "markdown");
    assert_eq!(summary.trim_end(), comment.trim_end());
    assert!(
        comment.starts_with("### envctl: `feature/big` after the apply of `fedcba987654`\n\n> [!CAUTION]\n> **The apply of `fedcba987654` failed.**"),
        "{}",
        &comment[..500]
    );
    assert!(length(&comment) <= 64_000);
    assert_closed(&comment);
}

/// A branch name with a backtick (git allows it) stays inside its code span in the diff's
/// paragraph too, as everywhere else in the review.
#[test]
fn a_branch_with_a_backtick_stays_in_its_code_span() {
    let repo = TestRepo::new("review-backtick");
    repo.apply("main");
    let branch = "feature/a`b<details>";
    repo.git(&["checkout", "-q", "-b", branch]);
    repo.apply(branch);
    let output = repo
        .envctl()
        .args(["review", "--against", "main"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("``feature/a`b<details>``'s database"),
        "{text}"
    );
    assert!(!text.contains("`feature/a`b<details>`'s"), "{text}");
}
