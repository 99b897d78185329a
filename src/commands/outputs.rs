//! What apply, destroy and reset print when they are done: one line per environment on stderr,
//! `--json` on stdout, and in GitHub Actions `$GITHUB_OUTPUT`. Connection details only, never a
//! password or token.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::json;

use crate::model::{EnvOutcome, OutcomeStatus, Plan, Wanted};
use crate::plan::render::{self, Style};
use crate::provider::{AnyProvider, Connection, Provider};
use crate::report::{Exit, Reporter};

use super::print_stdout;

/// The plan, on stderr, before apply or destroy acts on it (not with `--quiet`).
pub(super) fn show_plan(plan: &Plan, reporter: &Reporter) {
    if reporter.quiet {
        return;
    }
    let style = Style {
        color: reporter.color,
    };
    let _ = std::io::stderr().write_all(render::text(plan, style).as_bytes());
}

/// How many environments' endpoints are read at once when apply is done (a burst well inside
/// RDS's request bucket).
const ENDPOINT_READS: usize = 8;

/// Prints the report (and JSON, and GitHub outputs) and decides the exit code. `verb` names the
/// command in the closing line.
pub(super) async fn finish(
    provider: &AnyProvider,
    scope: &BTreeMap<String, Wanted>,
    outcomes: &[EnvOutcome],
    json: bool,
    verb: &str,
    reporter: &Reporter,
) -> anyhow::Result<Exit> {
    let mut failed = 0;
    let mut records = Vec::new();
    // The endpoints, read for every environment together: one after the other, a run of fifty
    // environments would wait out fifty describe round trips here.
    let endpoints: Vec<Option<Connection>> =
        futures_util::stream::iter(outcomes.iter().map(|outcome| async move {
            let desired = scope.get(&outcome.branch).and_then(Wanted::desired)?;
            if !outcome.exists {
                return None;
            }
            provider
                .connection(&outcome.cluster_id, &desired.database)
                .await
                .ok()
        }))
        .buffered(ENDPOINT_READS)
        .collect()
        .await;
    for (outcome, endpoint) in outcomes.iter().zip(endpoints) {
        let mut record = json!({
            "branch": outcome.branch,
            "env": outcome.env,
            "cluster_id": outcome.cluster_id,
            "done": outcome.done,
        });
        let line = render::outcome(outcome);
        match &outcome.status {
            OutcomeStatus::Ok => {
                record["status"] = "ok".into();
                reporter.note(&line);
            }
            OutcomeStatus::Failed(failure) => {
                failed += 1;
                record["status"] = "failed".into();
                record["error"] = failure.one_line().into();
                say!("{line}");
            }
            OutcomeStatus::NotStarted => {
                failed += 1;
                record["status"] = "not_started".into();
                say!("{line}");
            }
        }
        if let Some(connection) = endpoint {
            record["endpoint"] = json!({
                "host": connection.host,
                "port": connection.port,
                "database": connection.database,
                "user": connection.user,
            });
        }
        records.push(record);
    }
    reporter.note(&render::outcome_summary(verb, outcomes));
    if json {
        let text = serde_json::to_string_pretty(&json!({ "environments": records })).expect("json");
        print_stdout(&format!("{text}\n"))?;
    }
    write_github_outputs(&records)?;
    Ok(if failed > 0 {
        Exit::Failed
    } else {
        Exit::Success
    })
}

/// In GitHub Actions, `$GITHUB_OUTPUT` gets `environments` (JSON) and, for one environment, its
/// `cluster_id`, `host`, `port`, `database` and `user`. Never a secret.
fn write_github_outputs(records: &[serde_json::Value]) -> anyhow::Result<()> {
    let Ok(path) = std::env::var("GITHUB_OUTPUT") else {
        return Ok(());
    };
    if path.is_empty() {
        return Ok(());
    }
    let mut text = format!(
        "environments={}\n",
        serde_json::to_string(records).expect("json")
    );
    if let [record] = records {
        text.push_str(&format!(
            "cluster_id={}\n",
            record["cluster_id"].as_str().unwrap_or("")
        ));
        if let Some(endpoint) = record.get("endpoint") {
            for key in ["host", "port", "database", "user"] {
                let value = match &endpoint[key] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                text.push_str(&format!("{key}={value}\n"));
            }
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write GITHUB_OUTPUT `{path}`"))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
