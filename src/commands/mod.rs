//! One function per command: resolve settings, call the core and the providers, print, and say how
//! the command ended ([`Exit`]). The only layer besides `lib.rs` that uses `anyhow`.
//!
//! - `reconcile`: plan, apply, destroy, reset (observe → plan → policy → execute);
//! - `prune`: what git says no longer needs an environment, re-checked before each delete;
//! - `policy`: what must hold before anything changes (limits, confirmation);
//! - `stale`: a plan from an older commit of a branch than its environment was applied from;
//! - `saved_plan`: `plan --out` files and the staleness check of `apply PLANFILE`;
//! - `outputs`: the closing report, `--json` and `$GITHUB_OUTPUT`;
//! - `inspect`: status, url, exec;
//! - `mask_gate`: whether a data branch's copy is masked as its spec says now (url, exec, token,
//!   proxy);
//! - `aws`: token, iam-policy;
//! - `init`: scaffold a repository;
//! - `doctor`: read-only checks of git, specs and the provider;
//! - `proxy`: proxy, and `exec --proxy`'s proxy.

mod aws;
mod diff;
mod doctor;
mod init;
mod inspect;
mod ledgers;
mod mask_gate;
mod outputs;
mod policy;
mod proxy;
mod prune;
mod reconcile;
mod review;
pub mod saved_plan;
mod stale;

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::cancel::Cancel;
use crate::cli::{Cli, Command, LocalCommand};
use crate::model::ObservedEnv;
use crate::provider::{AnyProvider, OpenContext, Provider, SetupError, local_setup};
use crate::report::{Exit, Reporter, UserError};
use crate::settings::Settings;
use crate::spec;

/// How long commands without `--wait-timeout` wait for a server to answer.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Runs the parsed command line.
pub fn run(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    for (name, meant) in misspelled_variables(std::env::vars_os().map(|(k, _)| k)) {
        reporter.warn(&format!(
            "`{name}` is not a variable envctl reads (did you mean `{meant}`?); it is ignored"
        ));
    }
    match &cli.command {
        Command::Validate(args) => validate(cli, args.strict, reporter),
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
        Command::Review(args) => {
            block_on_reading(reporter, |_| review::review(cli, args, reporter))
        }
        Command::Diff(args) => block_on_reading(reporter, |_| diff::diff(cli, args, reporter)),
        Command::Status(args) => {
            block_on_reading(reporter, |_| inspect::status(cli, args, reporter))
        }
        Command::Url(args) => block_on_reading(reporter, |_| inspect::url(cli, args, reporter)),
        Command::Exec(args) => inspect::exec(cli, args, reporter),
        Command::Proxy(args) => proxy::proxy(cli, args, reporter),
        Command::Token(args) => block_on_reading(reporter, |_| aws::token(cli, args, reporter)),
        Command::IamPolicy(args) => aws::iam_policy(cli, args, reporter),
        Command::Init(args) => init::init(cli, args, reporter),
        Command::Doctor(args) => {
            block_on_reading(reporter, |_| doctor::doctor(cli, args, reporter))
        }
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

/// Runs an async command on a runtime. SIGINT and SIGTERM set the process's cancel flag: no new
/// step starts, the steps in flight finish, waits end at once (the provider's too: they share the
/// flag), and the command exits 130 or 143 however it ended (an
/// error it ended with is printed first). A second signal stops at once: the command's future is
/// dropped, which closes its connections (the server rolls back what was in flight).
fn block_on<F, Fut>(reporter: &Reporter, command: F) -> anyhow::Result<Exit>
where
    F: FnOnce(Cancel) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Exit>>,
{
    run_until_signalled(reporter, command, false)
}

/// The `ENVCTL_*` variables the binary reads.
const VARIABLES: &[&str] = &[
    "ENVCTL_AWS_POLL_INTERVAL",
    "ENVCTL_DATA_PLANE_OVERRIDE",
    "ENVCTL_DATA_PLANE_OVERRIDE_AUTH",
    "ENVCTL_DEFAULT_BRANCH",
    "ENVCTL_LOCAL_URL",
    "ENVCTL_MAX_ENVIRONMENTS",
    "ENVCTL_PREFIX",
    "ENVCTL_PROVIDER",
    "ENVCTL_RDS_CA_BUNDLE",
    "ENVCTL_RDS_CA_BUNDLE_URL",
    "ENVCTL_REPO",
];

/// Names in `names` that look like a misspelling of a variable envctl reads (`ENVCTL_PROVDER`),
/// each with the one it likely meant: within two edits of it and not one itself. Others of the
/// prefix (the workflow's `ENVCTL_AWS_ROLE_ARN`, a script's own) are far from every one read.
fn misspelled_variables(
    names: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<(String, &'static str)> {
    let mut found: Vec<(String, &'static str)> = names
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.starts_with("ENVCTL_") && !VARIABLES.contains(&name.as_str()))
        .filter_map(|name| {
            let meant = VARIABLES
                .iter()
                .map(|known| (strsim::osa_distance(&name, known), *known))
                .filter(|(distance, _)| *distance <= 2)
                .min()?
                .1;
            Some((name, meant))
        })
        .collect();
    found.sort();
    found
}

/// [`block_on`] for a command that only reads (status, url, token, diff, review, doctor): it has
/// no step to finish, so the first signal stops it at once, however long its calls would still
/// take (an endpoint that never answers, retried for minutes).
fn block_on_reading<F, Fut>(reporter: &Reporter, command: F) -> anyhow::Result<Exit>
where
    F: FnOnce(Cancel) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Exit>>,
{
    run_until_signalled(reporter, command, true)
}

fn run_until_signalled<F, Fut>(
    reporter: &Reporter,
    command: F,
    reading: bool,
) -> anyhow::Result<Exit>
where
    F: FnOnce(Cancel) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Exit>>,
{
    let runtime = runtime()?;
    let cancel = Cancel::process();
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
                if reading {
                    // Nothing to finish: as a second signal would.
                    flag.signal(code);
                    flag.signal(code);
                } else if flag.signal(code) == 1 {
                    say!(
                        "stopping: no new steps start, the steps in flight finish, and waits end now (what they wait for carries on); signal again to stop at once"
                    );
                }
            }
        });
        tokio::select! {
            exit = command(cancel.clone()) => exit,
            code = cancel.forced() => {
                if !reading {
                    say!("stopped at once; run the command again to converge");
                }
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

/// The provider `--provider` names, opened (`AnyProvider::open` is the one place a provider is
/// chosen).
pub(crate) async fn open_provider(
    cli: &Cli,
    settings: &Settings,
    timeout: Duration,
    reporter: &Reporter,
) -> anyhow::Result<AnyProvider> {
    let note = |text: &str| reporter.note(text);
    let context = OpenContext {
        root: &settings.root,
        git: settings.git.as_ref(),
        timeout,
        note: &note,
    };
    AnyProvider::open(cli.provider, &context)
        .await
        .map_err(setup_failed)
}

/// A provider's set-up error as users read it: its message and hint, then its causes.
fn setup_failed(e: SetupError) -> anyhow::Error {
    let user = UserError::with_hint(e.message, e.hint);
    match e.source {
        Some(source) => anyhow::Error::from_boxed(source).context(user),
        None => user.into(),
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

/// In GitHub Actions (`GITHUB_ACTIONS=true`), tells the runner to mask each secret (and its
/// URL-encoded form) in every log line from now on: `::add-mask::` lines on stdout, before the
/// command prints anything else.
pub(crate) fn mask_in_actions(secrets: &[&str]) -> anyhow::Result<()> {
    if std::env::var("GITHUB_ACTIONS").as_deref() != Ok("true") {
        return Ok(());
    }
    let mut lines = String::new();
    let mut masked = std::collections::BTreeSet::new();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        for form in [secret.to_string(), crate::sql::percent_encode(secret)] {
            // A workflow command ends at a line break: a secret holding one is masked per line.
            for part in form.lines().filter(|p| !p.is_empty()) {
                if masked.insert(part.to_owned()) {
                    lines.push_str(&format!("::add-mask::{part}\n"));
                }
            }
        }
    }
    print_stdout(&lines)
}

/// Writes data to stdout.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn validate(cli: &Cli, strict: bool, reporter: &Reporter) -> anyhow::Result<Exit> {
    let (root, _) = crate::settings::repository_root(&cli.directory)?;
    let files = crate::settings::read_working_tree(&root)?;
    match spec::load(&files) {
        Ok(catalog) => {
            let findings: Vec<crate::model::LintFinding> = catalog
                .migrations
                .iter()
                .flat_map(|m| m.lint.iter().cloned())
                .collect();
            if !findings.is_empty() {
                reporter.lint_findings(&findings, strict);
                let count = findings.len();
                let text = format!(
                    "{count} migration lint finding{}{}",
                    plural(count),
                    if strict {
                        " (--strict): silence one with `-- squawk-ignore RULE` on the line before its statement"
                    } else {
                        ""
                    }
                );
                if strict {
                    say!("{text}");
                    return Ok(Exit::Failed);
                }
                reporter.note(&text);
            }
            // Migrations kept elsewhere (`migrations/`, `db/migrations/`) would leave every
            // database empty, and the first seed failing on a missing table.
            if catalog.migrations.is_empty()
                && !root.join(spec::migrations::MIGRATIONS_DIR).is_dir()
            {
                reporter.warn(&format!(
                    "there is no `{}` directory, so environments get no migrations: envctl reads `{}NNNN_name.sql`",
                    spec::migrations::MIGRATIONS_DIR.trim_end_matches('/'),
                    spec::migrations::MIGRATIONS_DIR
                ));
            }
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
    let (stopped, dir) = local_setup::stop_private(&root, git.as_ref()).map_err(setup_failed)?;
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

fn local_url(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    let (root, git) = crate::settings::repository_root(&cli.directory)?;
    let url = local_setup::private_url(&root, git.as_ref(), &|text| reporter.note(text))
        .map_err(setup_failed)?;
    print_stdout(&format!("{url}\n"))?;
    Ok(Exit::Success)
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod variable_tests {
    use super::misspelled_variables;

    #[test]
    fn misspelled_envctl_variables_are_told_from_others_of_the_prefix() {
        let names = [
            "ENVCTL_PROVDER",
            "ENVCTL_PROVIDER",
            "ENVCTL_REP",
            "ENVCTL_AWS_ROLE_ARN",
            "ENVCTL_AWS_PLAN_ROLE_ARN",
            "ENVCTL_VERSION",
            "ENVCTL_VENV",
            "ENVCTL_BOT_BRANCHES",
            "PATH",
        ]
        .map(std::ffi::OsString::from);
        assert_eq!(
            misspelled_variables(names.into_iter()),
            [
                ("ENVCTL_PROVDER".to_owned(), "ENVCTL_PROVIDER"),
                ("ENVCTL_REP".to_owned(), "ENVCTL_REPO"),
            ]
        );
    }
}
