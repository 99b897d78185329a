//! `status`, `url` and `exec`: read-only views of live environments, and the data-plane details a
//! developer or a test suite needs to connect (`exec --proxy`: through a proxy, `proxy.rs`).

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::reconcile::live_env;
use super::{DEFAULT_WAIT, open_provider, print_stdout};
use crate::cli::{BranchArg, Cli, ExecArgs, StatusArgs};
use crate::model::{ObservedEnv, tags};
use crate::provider::{Connection, Provider};
use crate::report::{Exit, Reporter, UserError};
use crate::settings::Settings;

pub async fn status(cli: &Cli, args: &StatusArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let super::Live {
        settings,
        mut observed,
        ..
    } = super::observe_live(cli, DEFAULT_WAIT, reporter).await?;
    observed.sort_by_key(|o| (o.branch(), o.cluster_id.clone()));
    let now = SystemTime::now();
    let rows: Vec<serde_json::Value> = observed
        .iter()
        .map(|o| {
            json!({
                "branch": o.branch(),
                "env": o.tag(tags::ENV),
                "cluster_id": o.cluster_id,
                "state": o.status,
                "min_acu": o.scaling.map(|s| s.min_acu),
                "max_acu": o.scaling.map(|s| s.max_acu),
                "schema_version": o.schema_version(),
                "last_applied": o.tag(tags::LAST_APPLIED),
                "expires_at": expires_at(o),
                "endpoint": o.endpoint,
            })
        })
        .collect();
    if args.json {
        let text = serde_json::to_string_pretty(&json!({ "environments": rows })).expect("json");
        print_stdout(&format!("{text}\n"))?;
        return Ok(Exit::Success);
    }
    if observed.is_empty() {
        reporter.note(&format!(
            "no live environments for `{}` under prefix `{}`",
            settings.repo,
            settings.prefix.as_str()
        ));
        return Ok(Exit::Success);
    }
    let mut table = vec![[
        "BRANCH".to_owned(),
        "ENV".to_owned(),
        "CLUSTER ID".to_owned(),
        "STATE".to_owned(),
        "SCALING".to_owned(),
        "SCHEMA".to_owned(),
        "AGE".to_owned(),
        "EXPIRES".to_owned(),
        "ENDPOINT".to_owned(),
    ]];
    for o in &observed {
        let age = o
            .created_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| now.duration_since(t).ok())
            .map(short_duration)
            .unwrap_or_else(|| "-".into());
        let expires = expires_at(o)
            .and_then(|t| humantime::parse_rfc3339(&t).ok())
            .map(|t| match t.duration_since(now) {
                Ok(left) if left.as_secs() >= 86_400 => format!(
                    "in {}d{}h",
                    left.as_secs() / 86_400,
                    left.as_secs() % 86_400 / 3600
                ),
                Ok(left) => format!("in {}", short_duration(left)),
                Err(_) => "expired".into(),
            })
            .unwrap_or_else(|| {
                if o.protected() {
                    "never (protected)".into()
                } else {
                    "-".into()
                }
            });
        table.push([
            o.branch().unwrap_or_else(|| "?".into()),
            o.env_name(),
            o.cluster_id.to_string(),
            o.status.clone(),
            o.scaling
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            o.schema_version()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            age,
            expires,
            o.endpoint.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    print_stdout(&text)?;
    Ok(Exit::Success)
}

/// `last-applied` + ttl, RFC 3339. `None` when either tag is missing or makes no sense (tags can
/// be edited by hand: a huge ttl must not crash `status`).
/// When prune may delete it for its ttl: never while it is protected.
fn expires_at(o: &ObservedEnv) -> Option<String> {
    if o.protected() {
        return None;
    }
    o.expires_at()
        .map(|at| humantime::format_rfc3339_seconds(at).to_string())
}

fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The connection details of a branch's live environment.
async fn branch_connection(
    cli: &Cli,
    branch: Option<&str>,
    reporter: &Reporter,
) -> anyhow::Result<Connection> {
    let settings = Settings::resolve(cli)?;
    let branch = settings.branch_or_current(branch)?;
    let provider = open_provider(cli, &settings, DEFAULT_WAIT, reporter).await?;
    let observed = super::observe(&provider, &settings).await?;
    let Some(env) = live_env(&observed, &branch) else {
        return Err(no_environment(&settings, &branch).into());
    };
    let database = super::proxy::database_of(env);
    Ok(provider.connection(&env.cluster_id, &database).await?)
}

/// Why a branch has no environment, and what to do: a spec must cover it first, or apply must
/// create it (under this prefix).
pub(super) fn no_environment(settings: &Settings, branch: &str) -> UserError {
    let covered = settings
        .load_scope(&[branch.to_owned()], crate::settings::InvalidSpecs::Refuse)
        .ok()
        .and_then(|scope| {
            scope
                .desired
                .get(branch)
                .map(|w| !matches!(w, crate::model::Wanted::Nothing))
        });
    if covered == Some(false) {
        let glob = match branch.split_once('/') {
            Some((first, _)) => format!("`{first}/*`"),
            None => format!("`{branch}`"),
        };
        return UserError::with_hint(
            format!("no spec covers branch `{branch}`, so it has no database"),
            format!(
                "add it, or a glob such as {glob}, to `branches` in a file under `environments/`"
            ),
        );
    }
    UserError::with_hint(
        format!(
            "branch `{branch}` has no environment under prefix `{}`",
            settings.prefix.as_str()
        ),
        format!("create it with `envctl apply --branch {branch}`"),
    )
}

pub async fn url(cli: &Cli, args: &BranchArg, reporter: &Reporter) -> anyhow::Result<Exit> {
    let connection = branch_connection(cli, args.branch.as_deref(), reporter).await?;
    print_stdout(&format!("{}\n", connection.url()))?;
    Ok(Exit::Success)
}

/// Runs the user's command with the connection in its environment, the way `env` or `sudo` would:
/// SIGINT and SIGTERM sent to envctl reach the child (a Ctrl-C on a terminal reaches it already,
/// as it is in the terminal's foreground group), envctl waits for it, and exits with its status:
/// 128 + N when a signal N killed it, 127 when the command is not found, 126 when it cannot run.
pub fn exec(cli: &Cli, args: &ExecArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let runtime = super::runtime()?;
    let exit = runtime.block_on(async {
        if args.proxy {
            return super::proxy::with_proxy(
                cli,
                args.branch.as_deref(),
                reporter,
                |connection| async move { run_child(&args.command, &connection).await },
            )
            .await;
        }
        let connection = branch_connection(cli, args.branch.as_deref(), reporter).await?;
        run_child(&args.command, &connection).await
    });
    runtime.shutdown_background();
    exit
}

async fn run_child(command_line: &[String], connection: &Connection) -> anyhow::Result<Exit> {
    use std::os::unix::process::ExitStatusExt;
    use tokio::signal::unix::{SignalKind, signal};

    let (program, rest) = command_line
        .split_first()
        .ok_or_else(|| UserError::new("no command to run"))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .env("DATABASE_URL", connection.url())
        .env("PGHOST", &connection.host)
        .env("PGPORT", connection.port.to_string())
        .env("PGUSER", &connection.user)
        .env("PGDATABASE", &connection.database);
    if let Some(mode) = &connection.ssl_mode {
        command.env("PGSSLMODE", mode);
    }
    match &connection.password {
        Some(password) => command.env("PGPASSWORD", password),
        None => command.env_remove("PGPASSWORD"),
    };
    // Listen before the child exists, so no signal between spawn and wait is lost.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let (code, why, hint) = match e.kind() {
                std::io::ErrorKind::NotFound => (
                    127,
                    "command not found".to_owned(),
                    "check that it is installed and on PATH",
                ),
                std::io::ErrorKind::PermissionDenied => (
                    126,
                    "permission denied".to_owned(),
                    "check that it is an executable file",
                ),
                _ => (126, e.to_string(), "check that it is an executable file"),
            };
            say!("error: cannot run `{program}`: {why}\nhint: {hint}");
            return Ok(Exit::Child(code));
        }
    };
    let pid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let status = loop {
        let forward = tokio::select! {
            status = child.wait() => break status?,
            _ = interrupt.recv() => {
                // From a terminal the child got this Ctrl-C itself; from `kill` it did not.
                (!in_terminal_foreground()).then_some(nix::sys::signal::Signal::SIGINT)
            }
            _ = terminate.recv() => Some(nix::sys::signal::Signal::SIGTERM),
            // A closed terminal or a quit: the child gets them too, and envctl waits for it.
            _ = hangup.recv() => Some(nix::sys::signal::Signal::SIGHUP),
            _ = quit.recv() => {
                (!in_terminal_foreground()).then_some(nix::sys::signal::Signal::SIGQUIT)
            }
        };
        if let (Some(signal), Some(pid)) = (forward, pid) {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    };
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(1));
    Ok(Exit::Child(code))
}

/// Whether envctl runs in the foreground process group of its terminal, where a Ctrl-C is sent to
/// the whole group (the child included).
fn in_terminal_foreground() -> bool {
    // The controlling terminal, whatever stdin is (`envctl exec … < file` on a terminal).
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return false;
    };
    let Ok(foreground) = nix::unistd::tcgetpgrp(&tty) else {
        return false;
    };
    foreground == nix::unistd::getpgrp()
}
