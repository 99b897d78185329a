//! The figures of BENCHMARKS.md (issue 10): each measured beside its reference in the same run,
//! because absolute times on a shared machine drift. It drives the real `envctl` binary (the
//! release build that `scripts/bench.sh` makes) as a subprocess, as users run it, and prints
//! Markdown tables on stdout (progress on stderr).
//!
//! 1. `observe`: `envctl status --json` against the AWS peer holding N managed and N unmanaged
//!    clusters, beside a bare boto3 script making the same calls; API calls and database
//!    connections counted.
//! 2. `creates`: `apply --all` of 20 new branches against the peer with a 2 s create delay at
//!    several `--concurrency`, beside the bound the target sets and the same apply with no delay.
//! 3. `plan`: `plan --all --json` over N remote branches, beside `git for-each-ref`; peak RSS.
//! 4. `migrations`: 20 databases × 30 migrations + seeds on the local provider, beside `psql`
//!    applying the same files with the same parallelism.
//! 5. `startup`: `validate` on the example repository and `--help`, beside `true`.
//! 6. `diff`: `envctl diff` of two databases of 1 000 tables, beside `pg_dump --schema-only` of
//!    both plus `diff -u` (`review.rs`).
//! 7. `lint`: what 200 migrations with lint findings add to `plan` (`review.rs`).
//! 8. `clone`: a data branch of a 1 GiB source on the local provider, copied and masked, with
//!    nobody connected to the source (beside `createdb -T`) and with a session connected (beside
//!    `pg_dump | pg_restore`) (`clones.rs`).
//! 9. `clone-calls`: the AWS API calls of an apply that clones, against the peer (`clones.rs`).
//! 10. `proxy`: `pgbench -S` through `envctl proxy`, directly and through socat; connection
//!     set-up; token signing; the proxy's RSS with 1 000 idle clients.
//!
//! Everything it starts (AWS peers, a private PostgreSQL server) runs on loopback under a temp
//! directory and is stopped when the harness ends, also after a failure or SIGINT/SIGTERM.
//! `scripts/bench.sh --help` lists the options.

// The tests' AWS peer start-up and control calls (its own `#![allow(dead_code)]` covers what
// the benchmarks do not use).
#[path = "../../tests/support/mod.rs"]
mod support;

mod clones;
mod creates;
mod measure;
mod migrations;
mod observe;
mod planning;
mod proxy;
mod review;
mod startup;

use std::cell::OnceCell;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT/SIGTERM; checked after every measured process so the harness unwinds and stops
/// what it started.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn check_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted: stopping what the benchmarks started");
    }
}

const USAGE: &str = "\
figures: the benchmarks of BENCHMARKS.md, each beside its reference

options:
  --only ITEMS         comma-separated: observe,creates,plan,migrations,startup,diff,lint,clone,
                       clone-calls,proxy (or 1-10); default all
  --observe-n LIST     managed clusters for item 1 (default 100,1000,2500)
  --concurrency LIST   --concurrency values for item 2 (default 1,5,10,20)
  --plan-n LIST        remote branches for item 3 (default 1000,10000,100000)
  --clone-mib N        size of item 8's source database in MiB (default 1024); its masked table
                       has 1M rows at 1024, proportionally fewer below
  --repeat K           runs of each figure and of its reference (default per item: 5, 3, 3, 3, 40,
                       5, 20, 3, 1, 3; item 9 runs once)
  --envctl PATH        the envctl binary to measure (scripts/bench.sh passes the release build)
";

/// What the command line asked for.
pub struct Options {
    pub items: Vec<u8>,
    pub observe_n: Vec<usize>,
    pub concurrency: Vec<usize>,
    pub plan_n: Vec<usize>,
    pub clone_mib: u64,
    pub repeat: Option<usize>,
    pub envctl: PathBuf,
}

fn list(text: &str, what: &str) -> Vec<usize> {
    text.split(',')
        .map(|n| {
            n.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{what}: `{n}` is not a number"))
        })
        .collect()
}

fn parse_options() -> Options {
    let mut options = Options {
        items: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        observe_n: vec![100, 1_000, 2_500],
        concurrency: vec![1, 5, 10, 20],
        plan_n: vec![1_000, 10_000, 100_000],
        clone_mib: 1024,
        repeat: None,
        envctl: PathBuf::from(env!("CARGO_BIN_EXE_envctl")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            // `cargo bench` passes this to every bench binary.
            "--bench" => {}
            "--only" => {
                options.items = value("--only")
                    .split(',')
                    .map(|item| match item.trim() {
                        "1" | "observe" => 1,
                        "2" | "creates" => 2,
                        "3" | "plan" => 3,
                        "4" | "migrations" => 4,
                        "5" | "startup" => 5,
                        "6" | "diff" => 6,
                        "7" | "lint" => 7,
                        "8" | "clone" => 8,
                        "9" | "clone-calls" => 9,
                        "10" | "proxy" => 10,
                        other => panic!("--only: unknown item `{other}`\n{USAGE}"),
                    })
                    .collect()
            }
            "--observe-n" => options.observe_n = list(&value("--observe-n"), "--observe-n"),
            "--concurrency" => options.concurrency = list(&value("--concurrency"), "--concurrency"),
            "--plan-n" => options.plan_n = list(&value("--plan-n"), "--plan-n"),
            "--clone-mib" => {
                options.clone_mib =
                    list(&value("--clone-mib"), "--clone-mib")[0].clamp(16, 65_536) as u64
            }
            "--repeat" => options.repeat = Some(list(&value("--repeat"), "--repeat")[0].max(1)),
            "--envctl" => options.envctl = PathBuf::from(value("--envctl")),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => panic!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    options
}

/// A private PostgreSQL server for the benchmarks (envctl's own local-server code), stopped and
/// removed on drop.
pub struct Server {
    dir: PathBuf,
    pub url: String,
}

impl Server {
    fn start(dir: PathBuf) -> Server {
        let info = envctl::provider::local_server::ensure_running(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot start a PostgreSQL server under {}: {e:?}\ninstall PostgreSQL's server binaries (Debian: `apt-get install postgresql`)",
                dir.display()
            )
        });
        Server {
            dir,
            url: info.url(),
        }
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok())
            .expect("the server's postmaster.pid")
    }

    /// The admin URL of another database on the server.
    pub fn url_of(&self, database: &str) -> String {
        format!(
            "{}/{database}",
            self.url.rsplit_once('/').expect("a URL with a path").0
        )
    }

    /// Runs SQL as the admin on `postgres`; psql's `-At` output.
    pub fn sql(&self, sql: &str) -> String {
        let output = Command::new("psql")
            .arg(&self.url)
            .args(["-v", "ON_ERROR_STOP=1", "-Atqc", sql])
            .output()
            .expect("psql runs (install postgresql-client)");
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Drops every database but the server's own.
    pub fn drop_all_databases(&self) {
        for name in self
            .sql("SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')")
            .lines()
        {
            self.sql(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                name.replace('"', "\"\"")
            ));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = envctl::provider::local_server::stop(&self.dir) {
            eprintln!("could not stop the benchmarks' PostgreSQL server: {e}");
        }
    }
}

/// What every item shares.
pub struct Ctx {
    pub options: Options,
    /// The envctl repository (its `environments/` and `schemas/` are the example).
    pub root: PathBuf,
    /// Declared before `work`: the server stops before its directory is removed.
    server: OnceCell<Server>,
    work: tempfile::TempDir,
}

impl Ctx {
    /// A scratch directory for one item.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Where measured processes write their output.
    pub fn out(&self) -> PathBuf {
        self.dir("out")
    }

    pub fn server(&self) -> &Server {
        self.server.get_or_init(|| {
            eprintln!("starting a private PostgreSQL server");
            Server::start(self.work.path().join("postgres"))
        })
    }

    pub fn repeat(&self, default: usize) -> usize {
        self.options.repeat.unwrap_or(default)
    }

    /// The measured envctl, with a clean environment (nothing from the user's AWS or envctl
    /// settings leaks in).
    pub fn envctl(&self) -> Command {
        let mut command = Command::new(&self.options.envctl);
        clean_env(&mut command);
        command
    }
}

/// PATH, HOME and TMPDIR only, plus NO_COLOR.
pub fn clean_env(command: &mut Command) {
    command.env_clear();
    for key in ["PATH", "HOME", "TMPDIR", "LANG"] {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    command.env("NO_COLOR", "1");
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `git -C dir ARGS`, which must succeed; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=envctl bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn first_line(command: &mut Command) -> String {
    command
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Where the figures come from: the commit and the machine.
fn header(ctx: &Ctx) -> String {
    let root = &ctx.root;
    let commit = first_line(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["rev-parse", "HEAD"]),
    );
    let dirty = !first_line(Command::new("git").arg("-C").arg(root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_empty();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = first_line(&mut Command::new("nproc"));
    let memory = first_line(Command::new("sh").args([
        "-c",
        "free -g | awk '/^Mem:/ {print $2 \" GiB total, \" $7 \" GiB available\"}'",
    ]));
    let uname = first_line(Command::new("uname").args(["-srm"]));
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%MZ"]));
    let release = ctx
        .options
        .envctl
        .components()
        .any(|c| c.as_os_str() == "release");
    format!(
        "Commit `{commit}`{}, measured {date}.\n\
         Machine: {nproc} CPUs ({cpu}), {memory}, {uname}.\n\
         envctl: `{}`{}.\n",
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        },
        ctx.options.envctl.display(),
        if release {
            " (release build)"
        } else {
            " (**not a release build**: figures are not comparable)"
        },
    )
}

fn main() {
    let options = parse_options();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
    assert!(
        options.envctl.is_file(),
        "no envctl binary at {}: run scripts/bench.sh, which builds it",
        options.envctl.display()
    );
    let work = tempfile::Builder::new()
        .prefix("envctl-bench-")
        .tempdir()
        .expect("a temp dir");
    // The PostgreSQL server runs as `postgres` when the harness is root: it must get through.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctx = Ctx {
        options,
        root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        server: OnceCell::new(),
        work,
    };
    // Sections go out as they are done: a long run shows its figures early.
    println!("{}", header(&ctx));
    let items = ctx.options.items.clone();
    for item in items {
        let section = match item {
            1 => observe::run(&ctx),
            2 => creates::run(&ctx),
            3 => planning::run(&ctx),
            4 => migrations::run(&ctx),
            5 => startup::run(&ctx),
            6 => review::run_diff(&ctx),
            7 => review::run_lint(&ctx),
            8 => clones::run_local(&ctx),
            9 => clones::run_calls(&ctx),
            10 => proxy::run(&ctx),
            _ => unreachable!(),
        };
        println!("{section}");
    }
}
