//! envctl as a running process: spawned with piped output and signalled once it printed a line,
//! or run on a pseudo-terminal (util-linux `script`) and answered when it asks. Every wait is
//! bounded or ends with the process's output, so a hang fails the test instead of blocking it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::TestRepo;

/// Reads lines from `from` until one contains `needle`; everything read so far. Fails if the
/// stream ends first.
pub fn read_until(from: &mut impl BufRead, needle: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = from.read_line(&mut line).unwrap();
        seen.push_str(&line);
        if seen.contains(needle) {
            return seen;
        }
        assert!(n > 0, "ended before {needle:?}: {seen}");
    }
}

/// Sends `signal` to a child.
pub fn kill(child: &Child, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// Spawns envctl in `repo` with `args`, stdout and stderr piped.
pub fn spawn(repo: &TestRepo, args: &[&str]) -> Child {
    repo.process(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Spawns envctl in `repo` with `args`; once its stderr shows `needle`, sends `signal` and reads
/// the rest of stderr. Returns what it printed after the signal and how it exited.
pub fn signal_when_said(
    repo: &TestRepo,
    args: &[&str],
    needle: &str,
    signal: Signal,
) -> (String, std::process::ExitStatus) {
    let mut child = repo
        .process(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    read_until(&mut stderr, needle);
    kill(&child, signal);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    (rest, child.wait().unwrap())
}

/// Runs `script` under `envctl exec --branch <branch> -- sh -c`; once it prints `ready`, sends
/// envctl `signal`. Returns what the script printed after that, and envctl's output (waited for
/// at most 20 s).
pub fn signal_an_exec(
    repo: &TestRepo,
    branch: &str,
    script: &str,
    signal: Signal,
) -> (String, Output) {
    let mut child = spawn(
        repo,
        &["exec", "--branch", branch, "--", "sh", "-c", script],
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut stdout, "ready");
    kill(&child, signal);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let output = super::wait_at_most(child, Duration::from_secs(20), "envctl");
    (rest, output)
}

/// What envctl printed on a pseudo-terminal, and how it ended.
pub struct TerminalRun {
    /// Everything it printed.
    pub output: String,
    /// What it printed after the prompt was answered.
    pub after_answer: String,
    pub code: Option<i32>,
}

/// Runs envctl in `repo` on a pseudo-terminal (util-linux `script`); when its output shows
/// `wait_for` (within 60 s), runs `meanwhile`, then types `answer`.
pub fn on_terminal_after(
    repo: &TestRepo,
    args: &str,
    wait_for: &str,
    meanwhile: impl FnOnce(),
    answer: &str,
) -> TerminalRun {
    let command = format!(
        "{} -C {} --repo {} {args}",
        assert_cmd::cargo::cargo_bin("envctl").display(),
        repo.path().display(),
        repo.repo
    );
    let mut script = std::process::Command::new("script");
    for key in super::CALLER_VARIABLES {
        script.env_remove(key);
    }
    let mut child = script
        .args(["-qec", &command, "/dev/null"])
        .env("ENVCTL_LOCAL_URL", super::server_url())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) runs");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 || tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains(wait_for) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never saw {wait_for:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend(chunk);
        }
    }
    meanwhile();
    let answered = seen.len();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    while let Ok(chunk) = rx.try_recv() {
        seen.extend(chunk);
    }
    TerminalRun {
        output: String::from_utf8_lossy(&seen).into_owned(),
        after_answer: String::from_utf8_lossy(&seen[answered..]).into_owned(),
        code: status.code(),
    }
}

/// Runs envctl in `repo` on a pseudo-terminal and types `answer` at its confirmation prompt.
pub fn on_terminal(repo: &TestRepo, args: &str, answer: &str) -> TerminalRun {
    on_terminal_after(repo, args, "Continue?", || {}, answer)
}

/// Starts psql on `url` running `sql` in the background (e.g. holding a lock while it sleeps);
/// its output goes nowhere. Kill it when done.
pub fn psql_in_background(url: &str, sql: &str) -> Child {
    std::process::Command::new("psql")
        .arg(url.trim())
        .args(["-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
