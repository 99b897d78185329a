//! One function per command: resolve settings, call the core and the providers, print, and say how
//! the command ended ([`Exit`]). The only layer besides `lib.rs` that uses `anyhow`.

use std::io::Write;

use anyhow::Context;

use crate::cli::{Cli, Command};
use crate::report::{Exit, Reporter, UserError};
use crate::spec;

/// Runs the parsed command line.
pub fn run(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    match &cli.command {
        Command::Validate => validate(cli, reporter),
        Command::Schema => {
            print_stdout(&spec::raw::json_schema())?;
            Ok(Exit::Success)
        }
        other => Err(UserError::with_hint(
            format!(
                "`envctl {}` is not available in this version yet",
                command_name(other)
            ),
            "`envctl validate` and `envctl schema` work today; see README.md for what is planned",
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

/// Writes data to stdout.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn validate(cli: &Cli, reporter: &Reporter) -> anyhow::Result<Exit> {
    let files = crate::source::read_working_tree(&cli.directory).with_context(|| {
        format!(
            "cannot read the repository at `{}`",
            cli.directory.display()
        )
    })?;
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

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
