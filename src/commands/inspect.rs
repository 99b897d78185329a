//! `status`, `url` and `exec`: read-only views of live environments, and the data-plane details a
//! developer or a test suite needs to connect (`exec --proxy`: through a proxy, `proxy.rs`).

use std::time::SystemTime;

use super::{DEFAULT_WAIT, open_provider, print_stdout};
use crate::cli::{BranchArg, Cli, ExecArgs, StatusArgs};
use crate::model::{DatabaseSettings, ObservedEnv};
use crate::plan::render;
use crate::provider::{Connection, Provider};
use crate::report::{Exit, Reporter, UserError};
use crate::settings::Settings;

pub async fn status(cli: &Cli, args: &StatusArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let super::Live {
        settings,
        mut observed,
        provider,
    } = super::observe_live(cli, DEFAULT_WAIT, reporter).await?;
    observed.sort_by_key(|o| (o.branch(), o.cluster_id.clone()));
    if !args.json {
        note_leftovers(&provider, &settings, reporter).await;
    }
    let default_branch = settings
        .git
        .as_ref()
        .and_then(crate::settings::default_branch);
    let default_branch = default_branch.as_deref();
    if args.json {
        let text = serde_json::to_string_pretty(&render::status_json(&observed, default_branch))
            .expect("json");
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
    print_stdout(&render::status_table(
        &observed,
        default_branch,
        SystemTime::now(),
    ))?;
    Ok(Exit::Success)
}

/// Says what interrupted creates left (a copy cut off can hold unmasked rows), and what removes
/// it. A failure to list them is said too, and changes nothing else.
async fn note_leftovers(
    provider: &crate::provider::AnyProvider,
    settings: &Settings,
    reporter: &Reporter,
) {
    use crate::provider::Provider as _;
    let leftovers = match provider.leftovers(&settings.owner()).await {
        Ok(leftovers) => leftovers,
        Err(e) => {
            reporter.warn(&format!(
                "cannot list the leftovers of interrupted creates: {}",
                crate::report::error_chain(&e)
            ));
            return;
        }
    };
    // Untagged ones name no owner (another repository's under the same prefix, perhaps):
    // prune tells those of git's branches apart.
    for leftover in leftovers.into_iter().filter(|l| !l.at_work) {
        let Some(branch) = &leftover.branch else {
            continue;
        };
        reporter.note(&format!(
            "`{}` is not an environment but what an apply of `{branch}` left when it was cut off (a copy's may hold unmasked rows): `envctl destroy --branch {branch}` deletes it now, `envctl prune` once it is older than prune's --wait-timeout, and the branch's next apply replaces it",
            leftover.name
        ));
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
    let env = env_to_connect(&settings, &observed, &branch)?.env;
    let database = database_of(env);
    Ok(provider.connection(&env.cluster_id, &database).await?)
}

/// The database settings a live environment was made with (its tags say; `postgres` where
/// unknown).
pub(super) fn database_of(env: &ObservedEnv) -> DatabaseSettings {
    DatabaseSettings {
        name: env
            .database_name
            .clone()
            .unwrap_or_else(|| "postgres".into()),
        user: env
            .database_user
            .clone()
            .unwrap_or_else(|| "postgres".into()),
    }
}

/// A branch's live environment that may be connected to ([`env_to_connect`]).
pub(super) struct ToConnect<'a> {
    pub env: &'a ObservedEnv,
    /// The digest of the masking its spec, read now, names, where it is a copy whose spec names
    /// one: a proxy's gate holds the copy to it while the proxy runs.
    pub mask_digest: Option<String>,
}

/// The branch's live environment, for a connection to it: refused while it is a copy whose
/// masking has not committed, or whose masking committed with other rules or files than its
/// spec's now ([`super::mask_gate`]): nobody is handed an unmasked copy.
pub(super) fn env_to_connect<'a>(
    settings: &Settings,
    observed: &'a [ObservedEnv],
    branch: &str,
) -> Result<ToConnect<'a>, UserError> {
    let Some(env) = super::reconcile::the_live_env(observed, branch)? else {
        return Err(no_environment(settings, branch));
    };
    // Seen, but not envctl's to touch (outside the prefix, …): not handed out either.
    if let Some(why) = &env.refused {
        return Err(UserError::with_hint(
            format!(
                "the environment of branch `{branch}` is `{}`, which envctl does not hand out: {why}",
                env.cluster_id
            ),
            "connect to it with credentials of your own if it is yours",
        ));
    }
    if env.masking_pending() {
        return Err(UserError::with_hint(
            format!(
                "the environment of branch `{branch}` is a copy of another's data whose masking has not committed: envctl hands out no connection to it yet"
            ),
            format!("`envctl apply --branch {branch}` masks it (again, if an apply was cut off)"),
        ));
    }
    let spec = super::mask_gate::spec_masking_of(settings, env, branch);
    if let Some(refused) = super::mask_gate::refusal(env.masked_with(), spec.as_ref()) {
        return Err(refused.for_branch(branch));
    }
    Ok(ToConnect {
        env,
        mask_digest: spec.as_ref().and_then(|s| s.digest()).map(str::to_owned),
    })
}

/// Why a branch has no environment, and what to do: a spec must cover it first, or apply must
/// create it (under this prefix).
pub(super) fn no_environment(settings: &Settings, branch: &str) -> UserError {
    if let Some(short) = ["refs/heads/", "refs/remotes/origin/", "origin/"]
        .iter()
        .find_map(|p| branch.strip_prefix(p))
    {
        return UserError::with_hint(
            format!("`{branch}` looks like a ref, not a branch name"),
            format!("environments go by the short name: `--branch {short}`"),
        );
    }
    let scope = settings
        .load_scope(&[branch.to_owned()], crate::settings::InvalidSpecs::Refuse)
        .ok();
    let covered = scope.as_ref().and_then(|scope| {
        scope
            .desired
            .get(branch)
            .map(|w| !matches!(w, crate::model::Wanted::Nothing))
    });
    if covered == Some(false) {
        // A glob only where there is one to suggest (`feature/*` for `feature/x`).
        let what = match branch.split_once('/') {
            Some((first, _)) => format!("`{branch}`, or a glob such as `{first}/*`,"),
            None => format!("`{branch}`"),
        };
        return UserError::with_hint(
            format!("no spec covers branch `{branch}`, so it has no database"),
            format!("add {what} to `branches` in a file under `environments/`"),
        );
    }
    // A name git does not know is a typo more often than a branch still to push.
    if settings.git.is_some()
        && scope
            .as_ref()
            .is_some_and(|s| s.unknown_to_git.iter().any(|b| b == branch))
    {
        return UserError::with_hint(
            format!(
                "branch `{branch}` has no environment under prefix `{}`, and git knows no such branch",
                settings.prefix.as_str()
            ),
            format!(
                "check the name (`envctl status` lists the live environments; a short branch name, not `origin/…` or `refs/heads/…`), or create it with `envctl apply --branch {branch}`"
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
    super::mask_in_actions(&[connection.password.as_deref().unwrap_or("")])?;
    print_stdout(&format!("{}\n", connection.url()))?;
    Ok(Exit::Success)
}

/// Runs the user's command with the connection in its environment, the way `env` or `sudo` would:
/// - SIGINT and SIGTERM sent to envctl reach the child (a Ctrl-C on a terminal reaches it
///   already, as it is in the terminal's foreground group);
/// - envctl waits for it and exits with its status: 128 + N when a signal N killed it, 127 when
///   the command is not found, 126 when it cannot run.
pub fn exec(cli: &Cli, args: &ExecArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let runtime = match args.proxy {
        true => super::proxy::runtime()?,
        false => super::runtime()?,
    };
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
        super::mask_in_actions(&[connection.password.as_deref().unwrap_or("")])?;
        run_child(&args.command, &connection).await
    });
    runtime.shutdown_background();
    exit
}

/// libpq variables of the caller's that would take the child elsewhere than the environment
/// (`PGHOSTADDR` is used instead of `PGHOST`; a service's settings beat the `PG*` variables),
/// or refuse the way envctl connects it (a proxy asks no password): unset for the child, so
/// `exec` never sends the environment's password to another server, nor reaches another
/// database.
const REDIRECTING: [&str; 7] = [
    "PGHOSTADDR",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS",
    "PGREQUIREAUTH",
    "PGCHANNELBINDING",
];

async fn run_child(command_line: &[String], connection: &Connection) -> anyhow::Result<Exit> {
    use std::os::unix::process::ExitStatusExt;
    use tokio::signal::unix::{SignalKind, signal};

    let (program, rest) = command_line
        .split_first()
        .ok_or_else(|| UserError::new("no command to run"))?;
    let mut command = tokio::process::Command::new(program);
    for variable in REDIRECTING {
        command.env_remove(variable);
    }
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
    if let Some(root) = &connection.ssl_root_cert {
        command.env("PGSSLROOTCERT", root);
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
