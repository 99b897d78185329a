//! Setting up the local provider: which server it uses (`ENVCTL_LOCAL_URL`, else the
//! repository's private server, started on demand), the refusals that protect the private server
//! (never started from files a commit brought), and `envctl local stop` / `local url`.
//!
//! Every failure is a [`SetupError`]: what could not be done, what to do about it, and the cause.

use std::path::Path;
use std::time::Duration;

use super::local::{LocalProvider, Server};
use super::local_server::{self, ServerError};
use super::{SetupError, without_provider_layer};
use crate::git::Git;

/// What a failure to set the private server up says to do, besides pointing elsewhere.
const OTHERWISE: &str = "or set ENVCTL_LOCAL_URL to a server you have";

/// Opens the local provider: `ENVCTL_LOCAL_URL`, else the private server of the repository at
/// `root` (started when it is not running; `note` is told so).
pub async fn open(
    root: &Path,
    git: Option<&Git>,
    timeout: Duration,
    note: &(dyn Fn(&str) + Send + Sync),
) -> Result<LocalProvider, SetupError> {
    let server = match std::env::var("ENVCTL_LOCAL_URL") {
        Ok(url) if !url.is_empty() => user_server(url)?,
        _ => {
            refuse_committed(git)?;
            let root = root.to_owned();
            let (server, notes) = tokio::task::spawn_blocking(move || private_server(&root))
                .await
                .map_err(|e| SetupError::new("the server task failed", OTHERWISE, Some(e)))??;
            for text in notes {
                note(&text);
            }
            server
        }
    };
    LocalProvider::connect(&server, timeout)
        .await
        .map_err(|e| SetupError {
            message: format!(
                "cannot connect to the local server at {}",
                crate::report::redact_url(&server.url)
            ),
            hint: "check that the server runs and ENVCTL_LOCAL_URL is right, or unset ENVCTL_LOCAL_URL to let envctl run a private server".into(),
            source: Some(without_provider_layer(e)),
        })
}

/// `ENVCTL_LOCAL_URL`, checked to be a PostgreSQL URL with a host.
fn user_server(url: String) -> Result<Server, SetupError> {
    let why = match url::Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "postgres" | "postgresql") && parsed.has_host() => {
            return Ok(Server {
                url,
                private: false,
            });
        }
        Ok(parsed) if !parsed.has_host() => "it names no host after `//`".to_owned(),
        Ok(parsed) => format!("its scheme is `{}:`", parsed.scheme()),
        Err(e) => e.to_string(),
    };
    Err(SetupError::new(
        format!("ENVCTL_LOCAL_URL is not a PostgreSQL URL ({why})"),
        "write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE, or unset it to let envctl run a private server",
        None::<ServerError>,
    ))
}

/// Refuses a private server outside a repository (no git, no `environments/`): a command run
/// in the wrong directory would start a server there and leave it running.
fn refuse_outside_a_repository(root: &Path) -> Result<(), SetupError> {
    if root.join(".git").exists() || root.join("environments").is_dir() {
        return Ok(());
    }
    Err(SetupError::new(
        format!(
            "`{}` is not a repository (no git, no `environments/`), and envctl keeps its private server in a repository's `.envctl/`",
            root.display()
        ),
        format!("run envctl inside your repository, or pass `-C DIR`, {OTHERWISE}"),
        None::<ServerError>,
    ))
}

/// The repository's private server, started if it is not running, with the notes to show.
fn private_server(root: &Path) -> Result<(Server, Vec<String>), SetupError> {
    refuse_outside_a_repository(root)?;
    let dir = local_server::locate(root).map_err(|e| {
        let hint = server_hint(&e, None);
        SetupError::new(
            "cannot find a place for the private PostgreSQL server",
            hint,
            Some(e),
        )
    })?;
    let info = local_server::ensure_running(&dir.path).map_err(|e| {
        let hint = server_hint(&e, Some(&dir.path));
        SetupError::new("cannot start the private PostgreSQL server", hint, Some(e))
    })?;
    let mut notes = Vec::new();
    if info.started {
        notes.extend(dir.relocated.clone());
        notes.push(format!(
            "note: started the private PostgreSQL server in `{}` on {}:{}; it keeps running for later commands (`envctl local stop` stops it)",
            dir.path.display(),
            info.host,
            info.port
        ));
    }
    Ok((
        Server {
            url: info.url(),
            private: true,
        },
        notes,
    ))
}

/// Refuses a private server whose files a commit brought: a pull request could ship a data
/// directory whose configuration runs commands when the server starts.
pub fn refuse_committed(git: Option<&Git>) -> Result<(), SetupError> {
    let Some(git) = git else { return Ok(()) };
    let tracked = git.tracked_under(".envctl", 3).map_err(|e| {
        SetupError::new(
            "cannot tell whether git tracks files under `.envctl/`, so envctl will not start its private server there",
            format!("check the repository (`git status`; a sparse index cannot be read: `git sparse-checkout disable`), {OTHERWISE}"),
            Some(e),
        )
    })?;
    if let Some(first) = tracked.first() {
        return Err(SetupError::new(
            format!(
                "git tracks `{first}`{}; envctl's private server is never committed, and will not start from files a commit brought",
                if tracked.len() > 1 {
                    " and more under `.envctl/`"
                } else {
                    ""
                }
            ),
            format!(
                "remove it from git (`git rm -r --cached .envctl`) and from the working tree, {OTHERWISE}"
            ),
            None::<ServerError>,
        ));
    }
    if let Some(root) = git.workdir()
        && std::fs::symlink_metadata(root.join(".envctl/.git")).is_ok()
    {
        return Err(SetupError::new(
            "`.envctl` is a git repository of its own (a submodule?); envctl will not start its private server from files someone else brought",
            format!("remove `.envctl` (it holds only the private server's data), {OTHERWISE}"),
            None::<ServerError>,
        ));
    }
    Ok(())
}

/// `envctl local stop`: stops the repository's private server; `false` when it was not running.
/// Returns where it lives.
pub fn stop_private(
    root: &Path,
    git: Option<&Git>,
) -> Result<(bool, std::path::PathBuf), SetupError> {
    refuse_committed(git)?;
    let failed = |e: ServerError| {
        let hint = server_hint(&e, None);
        SetupError::new("cannot stop the private PostgreSQL server", hint, Some(e))
    };
    let dir = local_server::locate(root).map_err(failed)?;
    let stopped = local_server::stop(&dir.path).map_err(failed)?;
    Ok((stopped, dir.path))
}

/// `envctl local url`: the private server's admin URL (with `sslmode=disable`), starting it if
/// needed (`note` is told so).
pub fn private_url(
    root: &Path,
    git: Option<&Git>,
    note: &dyn Fn(&str),
) -> Result<String, SetupError> {
    refuse_committed(git)?;
    refuse_outside_a_repository(root)?;
    let failed = |e: ServerError| {
        let hint = server_hint(&e, None);
        SetupError::new("cannot start the private PostgreSQL server", hint, Some(e))
    };
    let dir = local_server::locate(root).map_err(failed)?;
    let info = local_server::ensure_running(&dir.path).map_err(failed)?;
    if info.started {
        note(&format!(
            "note: started the private PostgreSQL server in `{}`; `envctl local stop` stops it",
            dir.path.display()
        ));
    }
    Ok(format!("{}?sslmode=disable", info.url()))
}

/// What to do when the private server cannot be set up, for each reason.
fn server_hint(e: &ServerError, dir: Option<&Path>) -> String {
    match e {
        ServerError::BinariesNotFound => format!(
            "install PostgreSQL's server package (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql`), {OTHERWISE}"
        ),
        ServerError::NoPostgresUser => format!(
            "create that user (`useradd --system --home-dir /var/lib/postgresql postgres`), {OTHERWISE}"
        ),
        ServerError::DirectoryUnreachable(path) => format!(
            "let other users pass through `{}` (`chmod o+x`), {OTHERWISE}",
            path.display()
        ),
        ServerError::Files { path, .. } => {
            format!(
                "check who owns `{}` and its permissions, {OTHERWISE}",
                path.display()
            )
        }
        ServerError::Command { .. } => match dir {
            Some(dir) => format!("see `{}`, {OTHERWISE}", dir.join("server.log").display()),
            None => OTHERWISE.to_owned(),
        },
    }
}

/// `envctl doctor` on the local provider: which server, and whether it can run and is up,
/// changing nothing (never starting, creating or logging in).
pub fn doctor(root: &Path, git: Option<&Git>) -> Vec<crate::model::Check> {
    use crate::model::Check;
    if let Ok(url) = std::env::var("ENVCTL_LOCAL_URL")
        && !url.is_empty()
    {
        let name = "local server";
        let shown = crate::report::redact_url(&url);
        return vec![match user_server(url.clone()) {
            Err(e) => Check::failed(name, e.message, e.hint),
            Ok(_) => {
                let parsed = url::Url::parse(&url).ok();
                let host = parsed
                    .as_ref()
                    .and_then(|u| u.host_str().map(str::to_owned));
                let port = parsed.as_ref().and_then(url::Url::port).unwrap_or(5432);
                let reachable = host.as_deref().is_some_and(|host| {
                    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                        .ok()
                        .and_then(|mut a| a.next())
                        .is_some_and(|addr| {
                            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                                .is_ok()
                        })
                });
                match reachable {
                    true => Check::ok(name, format!("ENVCTL_LOCAL_URL: {shown} answers")),
                    false => Check::failed(
                        name,
                        format!("ENVCTL_LOCAL_URL: nothing answers at {shown}"),
                        "start that server, or unset ENVCTL_LOCAL_URL to let envctl run a private one",
                    ),
                }
            }
        }];
    }
    let mut checks = Vec::new();
    if let Err(e) = refuse_committed(git) {
        checks.push(Check::failed("private server", e.message, e.hint));
        return checks;
    }
    let dir = match local_server::locate(root) {
        Ok(dir) => dir,
        Err(e) => {
            let hint = server_hint(&e, None);
            checks.push(Check::failed("private server", e.to_string(), hint));
            return checks;
        }
    };
    let seen = local_server::inspect(&dir.path);
    match &seen.binaries {
        Ok(bin) => checks.push(Check::ok("server binaries", bin.display().to_string())),
        Err(e) => checks.push(Check::failed(
            "server binaries",
            e.to_string(),
            server_hint(e, None),
        )),
    }
    match &seen.runs_as {
        Ok(Some(user)) => checks.push(Check::ok(
            "server user",
            format!("envctl is root: the server runs as `{user}`"),
        )),
        Ok(None) => {}
        Err(e) => checks.push(Check::failed(
            "server user",
            e.to_string(),
            server_hint(e, None),
        )),
    }
    let place = dir.path.display();
    checks.push(match (seen.initialized, seen.running_on) {
        (false, _) => Check::ok(
            "private server",
            format!("not made yet: the first command that needs it makes it in `{place}`"),
        ),
        (true, None) => Check::ok(
            "private server",
            format!("`{place}`, stopped: the next command that needs it starts it"),
        ),
        (true, Some(port)) => Check::ok(
            "private server",
            format!("`{place}`, running on 127.0.0.1:{port}"),
        ),
    });
    checks
}
