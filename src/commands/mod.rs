//! One function per command: resolve settings, call the core and the providers, print, and say how
//! the command ended ([`Exit`]). The only layer besides `lib.rs` that uses `anyhow`.
//!
//! - `reconcile`: plan, apply, destroy, reset (observe → plan → policy → execute);
//! - `prune`: what git says no longer needs an environment, re-checked before each delete;
//! - `policy`: what must hold before anything changes (limits, confirmation);
//! - `saved_plan`: `plan --out` files and the staleness check of `apply PLANFILE`;
//! - `outputs`: the closing report, `--json` and `$GITHUB_OUTPUT`;
//! - `inspect`: status, url, exec;
//! - `aws`: token, iam-policy;
//! - `proxy`: proxy, and `exec --proxy`'s proxy;
//! - `init`: scaffold a repository.

mod aws;
mod init;
mod inspect;
mod outputs;
mod policy;
mod proxy;
mod prune;
mod reconcile;
pub mod saved_plan;

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::cancel::Cancel;
use crate::cli::{Cli, Command, LocalCommand, ProviderKind};
use crate::model::ObservedEnv;
use crate::provider::aws::AwsProvider;
use crate::provider::local::{LocalProvider, Server};
use crate::provider::{AnyProvider, Provider, ProviderError, local_server};
use crate::report::{Exit, Reporter, UserError};
use crate::settings::Settings;
use crate::spec;

/// How long commands without `--wait-timeout` wait for a server to answer.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Runs the parsed command line.
pub fn run(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    match &cli.command {
        Command::Validate => validate(cli, reporter),
        Command::Schema => {
            print_stdout(&spec::raw::json_schema())?;
            Ok(Exit::Success)
        }
        Command::Local(args) => match args.command {
            LocalCommand::Stop => local_stop(cli, reporter),
            LocalCommand::Url => local_url(cli, reporter),
        },
        Command::Plan(args) => block_on(reporter, |cancel| {
            reconcile::plan(cli, args, reporter, cancel)
        }),
        Command::Apply(args) => block_on(reporter, |cancel| {
            reconcile::apply(cli, args, reporter, cancel)
        }),
        Command::Prune(args) => {
            block_on(reporter, |cancel| prune::prune(cli, args, reporter, cancel))
        }
        Command::Destroy(args) => block_on(reporter, |cancel| {
            reconcile::destroy(cli, args, reporter, cancel)
        }),
        Command::Reset(args) => block_on(reporter, |cancel| {
            reconcile::reset(cli, args, reporter, cancel)
        }),
        Command::Status(args) => block_on(reporter, |_| inspect::status(cli, args, reporter)),
        Command::Url(args) => block_on(reporter, |_| inspect::url(cli, args, reporter)),
        Command::Exec(args) => inspect::exec(cli, args, reporter),
        Command::Proxy(args) => proxy::proxy(cli, args, reporter),
        Command::Token(args) => block_on(reporter, |_| aws::token(cli, args, reporter)),
        Command::IamPolicy(args) => aws::iam_policy(cli, args, reporter),
        Command::Init(args) => init::init(cli, args, reporter),
    }
}

/// A multi-threaded runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs an async command on a runtime. SIGINT and SIGTERM set the cancel flag: no new step
/// starts, the steps in flight finish, and the command exits 130 or 143 however it ended (an
/// error it ended with is printed first). A second signal stops at once: the command's future is
/// dropped, which closes its connections (the server rolls back what was in flight).
fn block_on<F, Fut>(reporter: &Reporter, command: F) -> anyhow::Result<Exit>
where
    F: FnOnce(Cancel) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Exit>>,
{
    let runtime = runtime()?;
    let cancel = Cancel::new();
    let result = runtime.block_on(async {
        let flag = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut interrupt), Ok(mut terminate)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            else {
                return;
            };
            loop {
                let code = tokio::select! {
                    _ = interrupt.recv() => 130,
                    _ = terminate.recv() => 143,
                };
                if flag.signal(code) == 1 {
                    say!(
                        "stopping: no new steps start; the steps in flight finish (signal again to stop at once)"
                    );
                }
            }
        });
        tokio::select! {
            exit = command(cancel.clone()) => exit,
            code = cancel.forced() => {
                say!("stopped at once; run the command again to converge");
                Ok(Exit::Interrupted(code))
            }
        }
    });
    // A blocking read (a confirmation prompt) must not keep the process alive.
    runtime.shutdown_background();
    match (cancel.requested(), result) {
        (None, result) => result,
        (Some(code), Ok(_)) => Ok(Exit::Interrupted(code)),
        (Some(code), Err(error)) => {
            if !crate::is_broken_pipe(&error) {
                reporter.error(&error);
            }
            Ok(Exit::Interrupted(code))
        }
    }
}

/// Refuses a private server whose files a commit brought: a pull request could ship a data
/// directory whose configuration runs commands when the server starts.
fn refuse_committed_server(git: Option<&crate::git::Git>) -> anyhow::Result<()> {
    let Some(git) = git else { return Ok(()) };
    let otherwise = "or set ENVCTL_LOCAL_URL to a server you have";
    let tracked = git.tracked_under(".envctl", 3).map_err(|e| {
        anyhow::Error::new(e).context(UserError::with_hint(
            "cannot tell whether git tracks files under `.envctl/`, so envctl will not start its private server there",
            format!("check the repository (`git status`; a sparse index cannot be read: `git sparse-checkout disable`), {otherwise}"),
        ))
    })?;
    if let Some(first) = tracked.first() {
        return Err(UserError::with_hint(
            format!(
                "git tracks `{first}`{}; envctl's private server is never committed, and will not start from files a commit brought",
                if tracked.len() > 1 { " and more under `.envctl/`" } else { "" }
            ),
            format!("remove it from git (`git rm -r --cached .envctl`) and from the working tree, {otherwise}"),
        )
        .into());
    }
    if let Some(root) = git.workdir()
        && std::fs::symlink_metadata(root.join(".envctl/.git")).is_ok()
    {
        return Err(UserError::with_hint(
            "`.envctl` is a git repository of its own (a submodule?); envctl will not start its private server from files someone else brought",
            format!("remove `.envctl` (it holds only the private server's data), {otherwise}"),
        )
        .into());
    }
    Ok(())
}

/// The local provider: `ENVCTL_LOCAL_URL`, else the private server of this repository.
async fn local_provider(
    settings: &Settings,
    timeout: Duration,
    reporter: &Reporter,
) -> anyhow::Result<LocalProvider> {
    let server = match std::env::var("ENVCTL_LOCAL_URL") {
        Ok(url) if !url.is_empty() => {
            let why = match url::Url::parse(&url) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "postgres" | "postgresql")
                        && parsed.has_host() =>
                {
                    None
                }
                Ok(parsed) if !parsed.has_host() => Some("it names no host after `//`".into()),
                Ok(parsed) => Some(format!("its scheme is `{}:`", parsed.scheme())),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                return Err(UserError::with_hint(
                    format!("ENVCTL_LOCAL_URL is not a PostgreSQL URL ({why})"),
                    "write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE, or unset it to let envctl run a private server",
                )
                .into());
            }
            Server {
                url,
                private: false,
            }
        }
        _ => {
            refuse_committed_server(settings.git.as_ref())?;
            let dir = local_server::locate(&settings.root).map_err(|e| {
                let hint = server_hint(&e, None);
                anyhow::Error::new(e).context(UserError::with_hint(
                    "cannot find a place for the private PostgreSQL server",
                    hint,
                ))
            })?;
            let path = dir.path.clone();
            let info = tokio::task::spawn_blocking(move || local_server::ensure_running(&path))
                .await
                .context("the server task failed")?
                .map_err(|e| {
                    let hint = server_hint(&e, Some(&dir.path));
                    anyhow::Error::new(e).context(UserError::with_hint(
                        "cannot start the private PostgreSQL server",
                        hint,
                    ))
                })?;
            if info.started {
                if let Some(note) = &dir.relocated {
                    reporter.note(note);
                }
                reporter.note(&format!(
                    "note: started the private PostgreSQL server in `{}` on {}:{}; it keeps running for later commands (`envctl local stop` stops it)",
                    dir.path.display(),
                    info.host,
                    info.port
                ));
            }
            Server {
                url: info.url(),
                private: true,
            }
        }
    };
    LocalProvider::connect(&server, timeout).await.map_err(|e| {
        without_provider_layer(e).context(UserError::with_hint(
            format!(
                "cannot connect to the local server at {}",
                crate::report::redact_url(&server.url)
            ),
            "check that the server runs and ENVCTL_LOCAL_URL is right, or unset ENVCTL_LOCAL_URL to let envctl run a private server",
        ))
    })
}

/// What to do when the private server cannot be set up, for each reason.
fn server_hint(e: &local_server::ServerError, dir: Option<&std::path::Path>) -> String {
    use local_server::ServerError;
    let otherwise = "or set ENVCTL_LOCAL_URL to a server you have";
    match e {
        ServerError::BinariesNotFound => format!(
            "install PostgreSQL's server package (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql`), {otherwise}"
        ),
        ServerError::NoPostgresUser => format!(
            "create that user (`useradd --system --home-dir /var/lib/postgresql postgres`), {otherwise}"
        ),
        ServerError::DirectoryUnreachable(path) => format!(
            "let other users pass through `{}` (`chmod o+x`), {otherwise}",
            path.display()
        ),
        ServerError::Files { path, .. } => {
            format!(
                "check who owns `{}` and its permissions, {otherwise}",
                path.display()
            )
        }
        ServerError::Command { .. } => match dir {
            Some(dir) => format!("see `{}`, {otherwise}", dir.join("server.log").display()),
            None => otherwise.to_owned(),
        },
    }
}

/// A provider error as a cause: "cannot reach the … provider" adds nothing under a context that
/// says what could not be reached, so its own cause stands in for it.
fn without_provider_layer(e: ProviderError) -> anyhow::Error {
    match e {
        ProviderError::Unavailable { source, .. } => anyhow::Error::from_boxed(source),
        other => anyhow::Error::new(other),
    }
}

/// The provider `--provider` names: the one place commands choose one.
pub(crate) async fn open_provider(
    cli: &Cli,
    settings: &Settings,
    timeout: Duration,
    reporter: &Reporter,
) -> anyhow::Result<AnyProvider> {
    match cli.provider {
        ProviderKind::Local => Ok(AnyProvider::Local(Box::new(
            local_provider(settings, timeout, reporter).await?,
        ))),
        ProviderKind::Aws => {
            let provider = AwsProvider::connect(timeout).await.map_err(|e| {
                without_provider_layer(e).context(UserError::with_hint(
                    "cannot use the aws provider",
                    "configure AWS credentials and a region as for the AWS CLI (AWS_PROFILE, AWS_REGION, or OIDC in GitHub Actions)",
                ))
            })?;
            Ok(AnyProvider::Aws(Box::new(provider)))
        }
    }
}

/// Settings, the provider, and this owner's live environments: what most commands start from.
pub(crate) struct Live {
    pub settings: Settings,
    pub provider: AnyProvider,
    pub observed: Vec<ObservedEnv>,
}

/// Resolves settings, opens the provider and observes.
pub(crate) async fn observe_live(
    cli: &Cli,
    timeout: Duration,
    reporter: &Reporter,
) -> anyhow::Result<Live> {
    let settings = Settings::resolve(cli)?;
    let provider = open_provider(cli, &settings, timeout, reporter).await?;
    let observed = observe(&provider, &settings).await?;
    Ok(Live {
        settings,
        provider,
        observed,
    })
}

/// This owner's live environments, from tags alone.
pub(crate) async fn observe(
    provider: &AnyProvider,
    settings: &Settings,
) -> anyhow::Result<Vec<ObservedEnv>> {
    provider
        .observe(&settings.owner())
        .await
        .context("cannot observe the live environments")
}

/// Writes data to stdout.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn validate(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    let (root, _) = crate::settings::repository_root(&cli.directory)?;
    let files = crate::settings::read_working_tree(&root)?;
    match spec::load(&files) {
        Ok(catalog) => {
            reporter.note(&format!(
                "ok: {} environment file{}, {} migration{}, {} seed file{}",
                catalog.specs.len(),
                plural(catalog.specs.len()),
                catalog.migrations.len(),
                plural(catalog.migrations.len()),
                catalog.seeds.len(),
                plural(catalog.seeds.len()),
            ));
            Ok(Exit::Success)
        }
        Err(diagnostics) => {
            reporter.diagnostics(&diagnostics, false);
            Ok(Exit::Failed)
        }
    }
}

fn local_stop(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    let (root, git) = crate::settings::repository_root(&cli.directory)?;
    refuse_committed_server(git.as_ref())?;
    let failed = |e| anyhow::Error::new(e).context("cannot stop the private PostgreSQL server");
    let dir = local_server::locate(&root).map_err(failed)?;
    if local_server::stop(&dir.path).map_err(failed)? {
        reporter.note(&format!(
            "stopped the private PostgreSQL server under `{}`",
            dir.path.display()
        ));
    } else {
        reporter.note("the private PostgreSQL server is not running");
    }
    Ok(Exit::Success)
}

fn local_url(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    let (root, git) = crate::settings::repository_root(&cli.directory)?;
    refuse_committed_server(git.as_ref())?;
    let failed = |e: local_server::ServerError| {
        let hint = server_hint(&e, None);
        anyhow::Error::new(e).context(UserError::with_hint(
            "cannot start the private PostgreSQL server",
            hint,
        ))
    };
    let dir = local_server::locate(&root).map_err(failed)?;
    let info = local_server::ensure_running(&dir.path).map_err(failed)?;
    if info.started {
        reporter.note(&format!(
            "note: started the private PostgreSQL server in `{}`; `envctl local stop` stops it",
            dir.path.display()
        ));
    }
    print_stdout(&format!("{}?sslmode=disable\n", info.url()))?;
    Ok(Exit::Success)
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
