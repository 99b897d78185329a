//! What users see on stderr: errors (`error:`, `caused by:`, `hint:`), spec diagnostics (with
//! GitHub Actions annotations in CI), progress lines and notes. stdout is only for data (plans,
//! JSON, URLs) and is written by the commands themselves.
//!
//! Colour is decided once here: `--color`, then NO_COLOR, then whether stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use crate::cli::ColorChoice;
use crate::spec::Diagnostic;

/// An error whose message is for users, with an optional hint saying what to do next.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
}

impl UserError {
    pub fn new(message: impl Into<String>) -> UserError {
        UserError {
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(message: impl Into<String>, hint: impl Into<String>) -> UserError {
        UserError {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// How a command ended, when it did not fail with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// Success with changes (exit 2 under `--detailed-exitcode`).
    Changes,
    /// Failure already reported to the user (exit 1).
    Failed,
    /// Stopped by a signal: 130 for SIGINT, 143 for SIGTERM.
    Interrupted(i32),
    /// The exit status of a command envctl ran for the user (`exec`).
    Child(i32),
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Changes => 2,
            Exit::Failed => 1,
            Exit::Interrupted(code) | Exit::Child(code) => code,
        }
    }
}

/// The stderr printer.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub color: bool,
    pub quiet: bool,
    pub verbose: u8,
    /// stderr is a terminal: progress may redraw, and we may ask questions.
    pub interactive: bool,
    pub github_actions: bool,
}

impl Reporter {
    pub fn new(choice: ColorChoice, quiet: bool, verbose: u8) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && !no_color,
        };
        Reporter {
            color,
            quiet,
            verbose,
            interactive: terminal && std::io::stdin().is_terminal(),
            github_actions: std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true"),
        }
    }

    /// Whether stdout should be coloured (plans printed to a terminal).
    pub fn stdout_color(&self, choice: ColorChoice) -> bool {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stdout().is_terminal() && !no_color,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// An error with its causes and hint.
    pub fn error(&self, error: &anyhow::Error) {
        let mut out = format!("{} {error}\n", self.paint("1;31", "error:"));
        for cause in error.chain().skip(1) {
            out.push_str(&format!("  caused by: {cause}\n"));
        }
        // A UserError given as context is found by anyhow's own downcast, not in the chain.
        let user_error = error
            .downcast_ref::<UserError>()
            .or_else(|| error.chain().find_map(|e| e.downcast_ref::<UserError>()));
        let hint = user_error.and_then(|e| e.hint.as_ref());
        if let Some(hint) = hint {
            out.push_str(&format!("{} {hint}\n", self.paint("1;36", "hint:")));
        }
        // In GitHub Actions the run's page shows it too, not only the log.
        if self.github_actions {
            let mut message = error.to_string();
            if let Some(hint) = hint {
                message.push_str(&format!(" (hint: {hint})"));
            }
            out.push_str(&format!(
                "::error title=envctl::{}\n",
                escape_data(&message)
            ));
        }
        let _ = std::io::stderr().write_all(out.as_bytes());
    }

    /// Spec diagnostics, then a count (saying nothing was changed when `stopped` a command that
    /// would have); in GitHub Actions also `::error` annotations.
    pub fn diagnostics(&self, diagnostics: &[Diagnostic], stopped: bool) {
        let mut out = String::new();
        for d in diagnostics {
            out.push_str(&format!(
                "{} {}:{}:{}: {}\n",
                self.paint("1;31", "error:"),
                visible(&d.file),
                d.line,
                d.column,
                visible(&d.message)
            ));
            if let Some(hint) = &d.hint {
                out.push_str(&format!(
                    "  {} {}\n",
                    self.paint("1;36", "hint:"),
                    visible(hint)
                ));
            }
        }
        if self.github_actions {
            for d in diagnostics {
                out.push_str(&github_annotation(d));
                out.push('\n');
            }
        }
        let count = diagnostics.len();
        out.push_str(&format!(
            "{count} error{} found{}\n",
            if count == 1 { "" } else { "s" },
            if stopped { "; nothing was changed" } else { "" }
        ));
        let _ = std::io::stderr().write_all(out.as_bytes());
    }

    /// A status line (suppressed by `--quiet`).
    pub fn note(&self, text: &str) {
        if !self.quiet {
            say!("{text}");
        }
    }

    /// Detail shown with `-v`.
    pub fn detail(&self, text: &str) {
        if self.verbose > 0 && !self.quiet {
            say!("{} {text}", self.paint("2", "debug:"));
        }
    }

    /// A warning (never suppressed).
    pub fn warn(&self, text: &str) {
        say!("{} {text}", self.paint("1;33", "warning:"));
    }

    /// A timestamped progress line for logs (on a terminal, [`Progress`] draws spinners instead).
    pub fn progress(&self, subject: &str, text: &str) {
        if !self.quiet {
            let now = humantime::format_rfc3339_seconds(SystemTime::now());
            say!("{now} {subject}: {text}");
        }
    }
}

/// Progress of long work, one line per subject (an environment): an indicatif spinner per subject
/// on a terminal, timestamped plain lines otherwise (CI logs).
pub struct Progress {
    reporter: Reporter,
    multi: Option<indicatif::MultiProgress>,
    bars: std::sync::Mutex<std::collections::BTreeMap<String, indicatif::ProgressBar>>,
}

impl Progress {
    pub fn new(reporter: &Reporter) -> Progress {
        let multi = (reporter.interactive && !reporter.quiet).then(indicatif::MultiProgress::new);
        Progress {
            reporter: reporter.clone(),
            multi,
            bars: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// The subject is now doing `text`.
    pub fn step(&self, subject: &str, text: &str) {
        let Some(multi) = &self.multi else {
            self.reporter.progress(subject, text);
            return;
        };
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(subject.to_owned()).or_insert_with(|| {
            let bar = multi.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template(if self.reporter.color {
                    "{spinner} {prefix:.bold} {elapsed:>4} {msg}"
                } else {
                    "{spinner} {prefix} {elapsed:>4} {msg}"
                })
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_prefix(subject.to_owned());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        bar.set_message(text.to_owned());
    }

    /// The subject is done: its spinner goes away (the final report says how it ended).
    pub fn finish(&self, subject: &str) {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = bars.get(subject) {
            bar.finish_and_clear();
        }
    }
}

pub use crate::plan::render::visible;

/// A workflow command's data with GitHub's escaping.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// `::error file=…,line=…,col=…::message` with GitHub's escaping.
pub fn github_annotation(d: &Diagnostic) -> String {
    let escape_property = |s: &str| escape_data(s).replace(':', "%3A").replace(',', "%2C");
    let mut message = d.message.clone();
    if let Some(hint) = &d.hint {
        message.push_str(&format!(" (hint: {hint})"));
    }
    format!(
        "::error file={},line={},col={}::{}",
        escape_property(&d.file),
        d.line,
        d.column,
        escape_data(&message)
    )
}

/// A connection URL fit for messages: the password (in the user part or a `password=` query
/// parameter) becomes `***`; text that is not a URL is not echoed at all.
pub fn redact_url(text: &str) -> String {
    // A URL without `//` has no user part to redact: its whole text may be a secret.
    let Ok(mut url) = url::Url::parse(text).map_err(|_| ()).and_then(|u| {
        if u.has_host() && !u.cannot_be_a_base() {
            Ok(u)
        } else {
            Err(())
        }
    }) else {
        return "(the configured server URL)".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret =
                    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
                (
                    k.into_owned(),
                    if secret {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Renders an error with its causes on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_escape_properties() {
        let d = Diagnostic {
            file: "environments/a,b.yaml".into(),
            line: 3,
            column: 7,
            message: "bad: 100%".into(),
            hint: None,
        };
        assert_eq!(
            github_annotation(&d),
            "::error file=environments/a%2Cb.yaml,line=3,col=7::bad: 100%25"
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:s3cr%40t@localhost:5432/db"),
            "postgres://u:***@localhost:5432/db"
        );
        assert_eq!(
            redact_url("postgres://localhost/db"),
            "postgres://localhost/db"
        );
        for opaque in [
            "user:S3cretPassw0rd@localhost:5432/postgres",
            "postgres:u:S3cret@host/db",
            "postgres:/u:S3cret@host/db",
        ] {
            assert_eq!(
                redact_url(opaque),
                "(the configured server URL)",
                "{opaque}"
            );
        }
    }
}
