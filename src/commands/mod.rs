//! One function per command: resolve settings, call the core and the providers, print, and say how
//! the command ended ([`Exit`]). The only layer besides `lib.rs` that uses `anyhow`.

mod inspect;
mod reconcile;

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;

use crate::cli::{Cli, Command, LocalCommand, ProviderKind};
use crate::db::Cancel;
use crate::provider::local::LocalProvider;
use crate::provider::local_server;
use crate::report::{Exit, Reporter, UserError};
use crate::settings::Settings;
use crate::spec;

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
        },
        Command::Plan(args) => block_on(|cancel| reconcile::plan(cli, args, reporter, cancel)),
        Command::Apply(args) => block_on(|cancel| reconcile::apply(cli, args, reporter, cancel)),
        Command::Destroy(args) => {
            block_on(|cancel| reconcile::destroy(cli, args, reporter, cancel))
        }
        Command::Reset(args) => block_on(|cancel| reconcile::reset(cli, args, reporter, cancel)),
        Command::Status(args) => block_on(|_| inspect::status(cli, args)),
        Command::Url(args) => block_on(|_| inspect::url(cli, args)),
        Command::Exec(args) => block_on(|_| inspect::exec(cli, args)),
        other => Err(UserError::with_hint(
            format!(
                "`envctl {}` is not available in this version yet",
                command_name(other)
            ),
            "see README.md for what works today",
        )
        .into()),
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Validate => "validate",
        Command::Plan(_) => "plan",
        Command::Apply(_) => "apply",
        Command::Prune(_) => "prune",
        Command::Destroy(_) => "destroy",
        Command::Reset(_) => "reset",
        Command::Status(_) => "status",
        Command::Token(_) => "token",
        Command::Url(_) => "url",
        Command::Exec(_) => "exec",
        Command::Schema => "schema",
        Command::IamPolicy => "iam-policy",
        Command::Init(_) => "init",
        Command::Local(_) => "local",
    }
}

/// Runs an async command on a runtime, with SIGINT and SIGTERM setting the cancel flag (a second
/// signal exits at once).
fn block_on<F, Fut>(command: F) -> anyhow::Result<Exit>
where
    F: FnOnce(Cancel) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Exit>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cancel: Cancel = Arc::new(AtomicI32::new(0));
    runtime.block_on(async {
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
                if flag.swap(code, Ordering::SeqCst) != 0 {
                    std::process::exit(code);
                }
                eprintln!("stopping: no new steps start; the steps in flight finish (signal again to stop at once)");
            }
        });
        let exit = command(cancel.clone()).await;
        match (cancel.load(Ordering::SeqCst), exit) {
            (0, exit) => exit,
            (code, Ok(Exit::Success | Exit::Changes | Exit::Failed)) => Ok(Exit::Interrupted(code)),
            (_, exit) => exit,
        }
    })
}

/// The local provider: `ENVCTL_LOCAL_URL`, else the private server under `.envctl/postgres/`.
pub(crate) async fn local_provider(settings: &Settings) -> anyhow::Result<LocalProvider> {
    let url = match std::env::var("ENVCTL_LOCAL_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let dir = local_server::server_dir(&settings.root);
            let info = tokio::task::spawn_blocking(move || local_server::ensure_running(&dir))
                .await
                .context("the server task failed")?
                .map_err(|e| {
                    let hint = match &e {
                        local_server::ServerError::BinariesNotFound => {
                            "install PostgreSQL's server package (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql`), or set ENVCTL_LOCAL_URL to a server you have"
                        }
                        local_server::ServerError::DirectoryUnreachable(_) => {
                            "move the repository where other users can reach it, or set ENVCTL_LOCAL_URL to a server you have"
                        }
                        _ => "see `.envctl/postgres/server.log`, or set ENVCTL_LOCAL_URL to a server you have",
                    };
                    anyhow::Error::new(e).context(UserError::with_hint("cannot start the private PostgreSQL server", hint))
                })?;
            info.url()
        }
    };
    LocalProvider::connect(&url).await.map_err(|e| {
        anyhow::Error::new(e).context(UserError::with_hint(
            format!(
                "cannot connect to the local server at {}",
                crate::report::redact_url(&url)
            ),
            "check ENVCTL_LOCAL_URL, or unset it to let envctl run a private server",
        ))
    })
}

/// Settings, the provider, and the repository's live environments: what most commands start from.
pub(crate) struct Live {
    pub settings: Settings,
    pub provider: LocalProvider,
    pub observed: Vec<crate::model::ObservedEnv>,
}

/// Resolves settings, connects to the provider and observes.
pub(crate) async fn observe_live(cli: &Cli) -> anyhow::Result<Live> {
    require_local(cli)?;
    let settings = Settings::resolve(cli)?;
    let provider = local_provider(&settings).await?;
    let observed = observe(&provider, &settings).await?;
    Ok(Live {
        settings,
        provider,
        observed,
    })
}

/// The repository's live environments, from tags alone.
pub(crate) async fn observe(
    provider: &LocalProvider,
    settings: &Settings,
) -> anyhow::Result<Vec<crate::model::ObservedEnv>> {
    use crate::provider::Provider;
    provider
        .observe(&settings.repo)
        .await
        .context("cannot observe the live environments")
}

/// Refuses providers that are not built yet.
pub(crate) fn require_local(cli: &Cli) -> anyhow::Result<()> {
    match cli.provider {
        ProviderKind::Local => Ok(()),
        ProviderKind::Aws => Err(UserError::with_hint(
            "the aws provider is not available in this version yet",
            "use `--provider local` (the default)",
        )
        .into()),
    }
}

/// Writes data to stdout.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Asks on the terminal; true only for `y` or `yes`.
pub(crate) fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_lowercase().as_str(), "y" | "yes")
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
            reporter.diagnostics(&diagnostics);
            Ok(Exit::Failed)
        }
    }
}

fn local_stop(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    let (root, _) = crate::settings::repository_root(&cli.directory)?;
    let dir = local_server::server_dir(&root);
    let stopped = local_server::stop(&dir)
        .map_err(|e| anyhow::Error::new(e).context("cannot stop the private PostgreSQL server"))?;
    if stopped {
        reporter.note(&format!(
            "stopped the private PostgreSQL server under `{}`",
            dir.display()
        ));
    } else {
        reporter.note("the private PostgreSQL server is not running");
    }
    Ok(Exit::Success)
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
