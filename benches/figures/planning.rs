//! Item 3, planning scale: `envctl plan --all --json` in a repository whose spec
//! (`environments/preview.yaml` of the example, `feature/*`) covers N remote branches and nothing
//! is live, beside `git for-each-ref --format='%(refname) %(objectname) %(tree)'
//! refs/remotes/origin`, the floor: reading every branch's ref and commit. Wall time and peak RSS
//! (`wait4`), run alternately.
//!
//! Two shapes of repository, each with a base commit holding the example `environments/` and
//! `schemas/`, and refs written by `git update-ref --stdin` (loose, as fetches leave them):
//! - *distinct*, what a busy repository looks like: every branch has a commit of its own (a file
//!   of its own under `notes/`, so its root tree differs too) on top of the base, all sharing the
//!   base's `environments/` and `schemas/` subtrees; `git fast-import` writes the commits;
//! - *shared*: every branch points at the base commit itself.
//!
//! The plan runs on the local provider against the benchmarks' PostgreSQL server (observing it
//! lists no database of this repository).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::measure::{self, Run, Stats, mib, verdict};
use crate::{Ctx, clean_env, copy_dir, git};

const REPO: &str = "bench/plan";

/// How the branches' commits relate.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// A commit of its own per branch.
    Distinct,
    /// Every branch at the base commit.
    Shared,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Distinct => "distinct",
            Shape::Shared => "shared",
        }
    }
}

/// A repository with `n` branches under `refs/remotes/origin/feature/`.
fn make_repository(ctx: &Ctx, n: usize, shape: Shape) -> PathBuf {
    let repo = ctx.dir(&format!("plan-{n}-{}", shape.name()));
    git(&repo, &["init", "-q", "-b", "trunk"]);
    git(
        &repo,
        &[
            "remote",
            "add",
            "origin",
            "https://example.invalid/bench/plan.git",
        ],
    );
    copy_dir(&ctx.root.join("environments"), &repo.join("environments"));
    copy_dir(&ctx.root.join("schemas"), &repo.join("schemas"));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "example repository"]);
    let base = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();
    if shape == Shape::Shared {
        let refs: String = (1..=n)
            .map(|i| format!("create refs/remotes/origin/feature/b{i:06} {base}\n"))
            .collect();
        update_refs(&repo, &refs);
        return repo;
    }
    // One commit per branch, each with its parent `base` and a file of its own.
    let marks = repo.join(".git/bench-marks");
    let mut import = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["fast-import", "--quiet", "--done"])
        .arg(format!("--export-marks={}", marks.display()))
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import runs");
    {
        let mut stdin = std::io::BufWriter::new(import.stdin.take().unwrap());
        for i in 1..=n {
            let message = format!("work on feature/b{i:06}\n");
            let note = format!("notes of branch {i}\n");
            write!(
                stdin,
                "commit refs/bench/scratch\nmark :{i}\ncommitter bench <bench@example.com> 1764000000 +0000\ndata {}\n{message}from {base}\nM 100644 inline notes/b{i:06}.txt\ndata {}\n{note}\n",
                message.len(),
                note.len()
            )
            .unwrap();
        }
        writeln!(stdin, "done").unwrap();
    }
    assert!(import.wait().unwrap().success(), "git fast-import failed");
    let mut refs = String::new();
    for line in std::fs::read_to_string(&marks).unwrap().lines() {
        let (mark, oid) = line.split_once(' ').unwrap();
        let i: usize = mark.trim_start_matches(':').parse().unwrap();
        refs.push_str(&format!(
            "create refs/remotes/origin/feature/b{i:06} {oid}\n"
        ));
    }
    refs.push_str("delete refs/bench/scratch\n");
    update_refs(&repo, &refs);
    std::fs::remove_file(&marks).unwrap();
    repo
}

/// `git update-ref --stdin` with these commands.
fn update_refs(repo: &Path, refs: &str) {
    let mut update = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["update-ref", "--stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git update-ref runs");
    update
        .stdin
        .take()
        .unwrap()
        .write_all(refs.as_bytes())
        .unwrap();
    assert!(update.wait().unwrap().success(), "git update-ref failed");
}

/// `"create": N` in the plan's summary, the last `"summary"` of the output, streamed (a
/// 100 000-branch plan is large, and the harness keeps its own memory small: see `measure`).
fn planned_creates(run: &Run) -> Option<usize> {
    let mut file = BufReader::new(File::open(&run.stdout).ok()?);
    let mut summary = None;
    let mut line = String::new();
    let mut in_summary = false;
    while file.read_line(&mut line).ok()? > 0 {
        let text = line.trim();
        if text.starts_with("\"summary\"") {
            in_summary = true;
        }
        if in_summary && let Some(rest) = text.strip_prefix("\"create\":") {
            summary = rest.trim().trim_end_matches(',').parse().ok();
            in_summary = false;
        }
        line.clear();
    }
    summary
}

/// Lines of a file, streamed.
fn lines(path: &Path) -> usize {
    let Ok(file) = File::open(path) else { return 0 };
    BufReader::new(file).split(b'\n').count()
}

pub fn run(ctx: &Ctx) -> String {
    let repeat = ctx.repeat(3);
    let out = ctx.out();
    let server = ctx.server();
    let mut rows = Vec::new();
    let mut all_met = true;
    let mut rss_per_branch = Vec::new();
    let mut floor: f64 = 0.0;
    for (n, shape) in ctx
        .options
        .plan_n
        .iter()
        .flat_map(|&n| [(n, Shape::Distinct), (n, Shape::Shared)])
    {
        eprintln!(
            "item 3: making a repository with {n} remote branches ({})",
            shape.name()
        );
        let repo = make_repository(ctx, n, shape);
        let mut envctl_runs = Vec::new();
        let mut git_runs = Vec::new();
        for round in 0..repeat {
            eprintln!(
                "item 3: N = {n} ({}), round {}/{repeat}",
                shape.name(),
                round + 1
            );
            let mut order = [true, false];
            if round % 2 == 1 {
                order.reverse();
            }
            for is_envctl in order {
                if is_envctl {
                    let mut command = ctx.envctl();
                    command
                        .env("ENVCTL_LOCAL_URL", &server.url)
                        .arg("-C")
                        .arg(&repo)
                        .args(["--repo", REPO, "plan", "--all", "--json"]);
                    let run = measure::run(&mut command, &out, "plan-envctl");
                    run.expect_success("envctl plan --all --json");
                    assert_eq!(planned_creates(&run), Some(n), "a create per branch");
                    envctl_runs.push(run);
                } else {
                    let mut command = Command::new("git");
                    clean_env(&mut command);
                    command.arg("-C").arg(&repo).args([
                        "for-each-ref",
                        "--format=%(refname) %(objectname) %(tree)",
                        "refs/remotes/origin",
                    ]);
                    let run = measure::run(&mut command, &out, "plan-git");
                    run.expect_success("git for-each-ref");
                    assert_eq!(lines(&run.stdout), n, "a line per branch");
                    git_runs.push(run);
                }
            }
        }
        let envctl_wall = Stats::of_walls(&envctl_runs);
        let git_wall = Stats::of_walls(&git_runs);
        let envctl_rss = Stats::of_rss_mib(&envctl_runs);
        let git_rss = Stats::of_rss_mib(&git_runs);
        floor = floor.max(Stats::of_floor_mib(&envctl_runs).max);
        let ratio = envctl_wall.median / git_wall.median;
        let wall_met = ratio <= 1.5;
        // 40 MB, not MiB.
        let rss_met = n != 10_000 || envctl_rss.median * 1024.0 * 1024.0 < 40e6;
        all_met &= wall_met && rss_met;
        rss_per_branch.push(format!(
            "{:.1} KiB a branch at N = {n} ({})",
            envctl_rss.median * 1024.0 / n as f64,
            shape.name()
        ));
        rows.push(format!(
            "| {n} | {} | {} | {} | {ratio:.2}× | {} | {} | {} | {} |",
            shape.name(),
            envctl_wall.seconds(),
            git_wall.seconds(),
            mib(envctl_rss.median),
            mib(git_rss.median),
            verdict(wall_met),
            if n == 10_000 { verdict(rss_met) } else { "" },
        ));
        std::fs::remove_dir_all(&repo).unwrap();
    }
    format!(
        "## 3. Planning scale\n\n\
         `envctl plan --all --json` (local provider, nothing live) over N remote branches that\n\
         `environments/preview.yaml` covers, refs written by `git update-ref --stdin` (loose); in\n\
         the *distinct* shape each branch has a commit of its own over shared `environments/` and\n\
         `schemas/` subtrees, in the *shared* shape every branch is at one commit. Beside it: `git for-each-ref --format='%(refname) %(objectname) %(tree)' refs/remotes/origin`.\n\
         {repeat} runs each, alternately: median (min–max); peak RSS from `wait4` (median).\n\
         Targets: ≤ 1.5× `git for-each-ref` at every N; memory linear, under 40 MB at 10 000.\n\n\
         | N | commits | envctl | git for-each-ref | ratio | envctl peak RSS | git peak RSS | wall | < 40 MB |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         {}\n\n\
         Memory: {}. No RSS figure reads below the harness's own RSS when it started the\n\
         process, at most {} here.\n\n\
         Item 3: {}.\n",
        rows.join("\n"),
        rss_per_branch.join(", "),
        mib(floor),
        if all_met {
            "all targets met"
        } else {
            "**a target missed** (see the rows)"
        }
    )
}
