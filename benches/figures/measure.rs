//! Running a whole process and measuring it: wall time from spawn to reaping, and the child's
//! peak resident set size from `wait4`'s rusage (`ru_maxrss`, this child only, not the
//! high-water mark of every child the harness ever had). Plus the few statistics the tables use.
//!
//! Linux counts in a child's `ru_maxrss` the peak RSS of the memory it ran in before `exec`,
//! which is the harness's own (posix_spawn shares it, fork copies it): a child's figure is never
//! below the harness's peak. So the harness resets its peak to its current RSS
//! (`/proc/self/clear_refs`) before each spawn, keeps that small (large outputs are streamed,
//! never read whole), and records it as the floor of the figure.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One finished process.
#[derive(Clone, Debug)]
pub struct Run {
    pub wall: Duration,
    /// Peak resident set size in KiB (Linux reports `ru_maxrss` in KiB).
    pub max_rss_kib: u64,
    /// The harness's RSS when it spawned the process, in KiB: no figure reads below it.
    pub floor_kib: u64,
    /// User + system CPU time of the process (its own threads; not its children).
    pub cpu: Duration,
    pub code: Option<i32>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panics with what the process said unless it exited with one of `codes`.
    pub fn expect_code(&self, codes: &[i32], what: &str) -> &Run {
        if !self.code.is_some_and(|c| codes.contains(&c)) {
            let stderr = self.stderr_text();
            let tail: String = stderr
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("{what} exited with {:?}:\n{tail}", self.code);
        }
        self
    }

    pub fn expect_success(&self, what: &str) -> &Run {
        self.expect_code(&[0], what)
    }
}

/// Runs `command` to the end with stdin closed and stdout/stderr in files under `dir` named
/// after `name`, and measures it.
pub fn run(command: &mut Command, dir: &Path, name: &str) -> Run {
    run_inner(command, dir, name, None)
}

/// Like [`run`], and when each line of its stderr arrived (from the spawn): envctl's progress
/// lines say when each step of an environment began. The lines still go to the stderr file.
pub fn run_with_lines(command: &mut Command, dir: &Path, name: &str) -> (Run, Vec<(f64, String)>) {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let run = run_inner(command, dir, name, Some(lines.clone()));
    let lines = std::mem::take(&mut *lines.lock().unwrap());
    (run, lines)
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<(f64, String)>>>;

fn run_inner(command: &mut Command, dir: &Path, name: &str, lines: Option<Lines>) -> Run {
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    command
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("stdout file"));
    if lines.is_some() {
        command.stderr(Stdio::piped());
    } else {
        command.stderr(File::create(&stderr).expect("stderr file"));
    }
    // Reset the harness's peak RSS to its current RSS: the child's figure starts from there.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let floor_kib = own_rss_kib();
    let start = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    // The reader ends when the pipe closes (the child and whatever it started are gone).
    let reader = lines.map(|lines| {
        let pipe = child.stderr.take().expect("a piped stderr");
        let mut file = File::create(&stderr).expect("stderr file");
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let at = start.elapsed().as_secs_f64();
                let _ = writeln!(file, "{line}");
                lines.lock().unwrap().push((at, line));
            }
        })
    });
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value, and wait4 writes into the two locals only. The
    // child is reaped here, so `child` (whose Drop neither waits nor kills) is never waited on.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let wall = start.elapsed();
    drop(child);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    crate::check_interrupted();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Run {
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
        floor_kib,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        code,
        stdout,
        stderr,
    }
}

/// The harness's resident set size in KiB.
pub fn own_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p90: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        assert!(!values.is_empty(), "no measurements");
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let p90 = sorted[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1];
        Stats {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            p90,
            n,
        }
    }

    pub fn of_walls(runs: &[Run]) -> Stats {
        Stats::of(
            &runs
                .iter()
                .map(|r| r.wall.as_secs_f64())
                .collect::<Vec<_>>(),
        )
    }

    pub fn of_floor_mib(runs: &[Run]) -> Stats {
        Stats::of(
            &runs
                .iter()
                .map(|r| r.floor_kib as f64 / 1024.0)
                .collect::<Vec<_>>(),
        )
    }

    pub fn of_rss_mib(runs: &[Run]) -> Stats {
        Stats::of(
            &runs
                .iter()
                .map(|r| r.max_rss_kib as f64 / 1024.0)
                .collect::<Vec<_>>(),
        )
    }

    /// `1.23 s (1.20–1.31)`.
    pub fn seconds(&self) -> String {
        if self.n == 1 {
            return secs(self.median);
        }
        format!(
            "{} ({}–{})",
            secs(self.median),
            secs_bare(self.min),
            secs_bare(self.max)
        )
    }
}

/// Seconds with a unit, at a precision that suits the size.
pub fn secs(s: f64) -> String {
    if s < 0.1 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn secs_bare(s: f64) -> String {
    if s < 0.1 {
        format!("{:.1}", s * 1000.0)
    } else {
        format!("{s:.2}")
    }
}

pub fn mib(m: f64) -> String {
    format!("{m:.1} MiB")
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU seconds (user + system) a live process has used so far.
pub fn process_cpu(pid: u32) -> f64 {
    proc_cpu(pid, false)
}

/// CPU seconds a live process and its children that it has reaped have used so far (a
/// PostgreSQL postmaster: its backends, one per connection, are its children).
pub fn process_tree_cpu(pid: u32) -> f64 {
    proc_cpu(pid, true)
}

fn proc_cpu(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime, stime, cutime and cstime are fields 14 to 17 of the line: 11 to 14 after the name.
    let children = if children { field(13) + field(14) } else { 0.0 };
    (field(11) + field(12) + children) / ticks_per_second()
}

/// CPU seconds the whole machine has been busy so far (every CPU, all but idle and iowait).
pub fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    (total - idle) / ticks_per_second()
}
