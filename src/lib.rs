//! envctl: a declarative GitOps reconciler for per-branch PostgreSQL databases.
//!
//! Layout (see ARCHITECTURE.md):
//! - `cli` (clap types) → `commands` (one function per command, the only place that decides exit
//!   codes besides `main_with_args`);
//! - the pure core: `spec` (files → validated desired state), `model` (domain values), `plan`
//!   (desired + observed → plan, and its renderings). These do no IO and import no tokio, sqlx,
//!   git2 or AWS crates;
//! - the edges that do IO: `source` (working tree), `git` (other branches' trees), `provider`
//!   (where environments live), `db` (migrations, seeds, ledger), `proxy` (the PostgreSQL
//!   endpoint of `envctl proxy`), `report` (stderr);
//! - `apply` executes a plan through the `Provider` trait; `settings` resolves arguments.
//!
//! `anyhow` is used only in `commands` and here; modules below return their own error types.

/// `eprintln!` that does not panic when stderr is closed (`envctl … 2>&1 | head`): a message that
/// cannot be shown is dropped, the command goes on and exits as it would have.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod apply;
pub mod cancel;
pub mod cli;
pub mod commands;
pub mod db;
pub mod git;
pub mod model;
pub mod plan;
pub mod provider;
pub mod proxy;
pub mod report;
pub mod settings;
pub mod source;
pub mod spec;
pub mod sql;

use clap::Parser;

use report::{Exit, Reporter};

/// Parses `args`, runs the command and returns the process exit code.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            match from_environment(&e, &args) {
                Some(var) => {
                    // clap names the flag; the value came from a variable the user may not see.
                    let text = e.to_string();
                    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
                    eprint!("{first} (set by the environment variable {var})\n{rest}");
                }
                None => {
                    let _ = e.print();
                }
            }
            return code;
        }
    };
    let reporter = Reporter::new(cli.color, cli.quiet, cli.verbose);
    match commands::run(&cli, &reporter) {
        Ok(exit) => exit.code(),
        Err(error) => {
            if is_broken_pipe(&error) {
                return 0;
            }
            reporter.error(&error);
            Exit::Failed.code()
        }
    }
}

/// The variable a refused value came from: a flag that reads one ([`cli::ENV_FLAGS`]) and is not
/// on the command line.
fn from_environment(error: &clap::Error, args: &[std::ffi::OsString]) -> Option<&'static str> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split(' ').next()?;
    let (_, var) = cli::ENV_FLAGS.iter().find(|(f, _)| *f == flag)?;
    let given = args.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    });
    (!given).then_some(*var)
}

/// `envctl plan | head` must exit quietly (ripgrep does the same).
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
