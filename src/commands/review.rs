//! `review`: a branch's review for its pull request, as the GitHub workflow comments it and
//! writes it to the run's summary. Makes the branch's plan (read only, as `plan` does), reads the
//! branch's and the default branch's databases (schema diff, and the default branch's ledger for
//! the lint of what merging would run), and hands the sections to `plan::review`, which fits them
//! in GitHub's size. A part that cannot be read says so in its section; the review still prints.

use super::diff::{against_branch, compare};
use super::reconcile::{Branches, live_env, make_plan};
use super::{DEFAULT_WAIT, print_stdout};
use crate::cli::{Cli, ReviewArgs};
use crate::model::{ActionKind, DesiredEnv, Ledger, LintFinding, ObservedEnv, Plan, tags};
use crate::plan::render::{self, code};
use crate::plan::review::{Code, Review, Section};
use crate::plan::{PlanOptions, diff as schema_diff};
use crate::provider::AnyProvider;
use crate::report::{Exit, Reporter, error_chain};

/// A branch name in single quotes for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The result said before anything else: a failed apply, or blocked environments with why.
fn result(plan: &Plan, applied: Option<&str>, commit: &str) -> Option<String> {
    let mut lines = Vec::new();
    if applied == Some("failure") {
        lines.push(format!(
            "**The apply of {commit} failed.** Its log in the run says why; below is the state it left."
        ));
    }
    for action in &plan.actions {
        if let ActionKind::Blocked { reason, .. } = &action.kind {
            let reason: String = reason.chars().take(500).collect();
            lines.push(format!(
                "**Blocked:** {} ({}): {}",
                code(&action.branch),
                action.cluster_id,
                render::cell(&reason)
            ));
        }
    }
    (!lines.is_empty()).then(|| {
        let body: Vec<String> = lines.iter().map(|l| format!("> {l}")).collect();
        format!("> [!CAUTION]\n{}", body.join("\n>\n"))
    })
}

/// The plan's Markdown without its own heading.
fn plan_section(plan: &Plan, branch: &str) -> Section {
    let markdown = render::markdown(plan);
    let text = markdown
        .split_once("\n\n")
        .map_or(markdown.as_str(), |(_, rest)| rest);
    Section {
        title: "Plan".into(),
        text: text.to_owned(),
        code: None,
        elsewhere: format!("`envctl plan --branch {}`", shell_quote(branch)),
    }
}

/// Findings of the branch's migrations that `against`'s database has not run (by version and
/// checksum): what merging would run there. Without its ledger (no environment to read), every
/// migration of the branch.
fn lint_section(desired: &DesiredEnv, against: &str, ledger: Option<&Ledger>) -> Section {
    let new: Vec<_> = desired
        .migrations
        .iter()
        .filter(|m| {
            !ledger.is_some_and(|ledger| {
                ledger
                    .migrations
                    .iter()
                    .any(|a| a.version == m.version && a.checksum == m.checksum)
            })
        })
        .collect();
    let findings: Vec<&LintFinding> = new.iter().flat_map(|m| m.lint.iter()).collect();
    let unread = match ledger {
        Some(_) => String::new(),
        None => format!(" (`{against}` has no database to read, so: all of this branch's)"),
    };
    let text = match (new.len(), findings.len()) {
        (0, _) => format!("`{against}`'s database has run every migration of this branch."),
        (n, 0) => format!(
            "No findings in the {n} migration{} that `{against}`'s database has not run{unread}.",
            super::plural(n)
        ),
        (n, f) => format!(
            "{f} finding{} in the {n} migration{} that `{against}`'s database has not run{unread} (silence one with `-- squawk-ignore RULE` on the line before its statement):",
            super::plural(f),
            super::plural(n)
        ),
    };
    Section {
        title: format!("Migration lint: what merging runs on `{against}`"),
        text,
        code: (!findings.is_empty()).then(|| Code {
            fence: None,
            header: render::LINT_TABLE_HEADER.into(),
            items: findings.into_iter().map(render::lint_row).collect(),
            fold: None,
            noun: "findings".into(),
        }),
        elsewhere: "`envctl validate`".into(),
    }
}

/// Whether the environment has run this commit's migrations and seeds, and when it was applied.
fn as_of(env: &ObservedEnv, desired: Option<&DesiredEnv>, commit: &str) -> String {
    let when = env
        .tag(tags::LAST_APPLIED)
        .map_or_else(String::new, |t| format!(" at {t}"));
    match desired {
        Some(d) if env.tag(tags::LEDGER_DIGEST) == Some(d.ledger_digest().as_str()) => {
            format!("as of its last apply{when}, with the migrations and seeds of {commit}")
        }
        _ => format!(
            "as of its last apply{when}, which has not run every migration and seed of {commit} (the plan says what the next apply runs)"
        ),
    }
}

/// The schema diff against `against`'s database, and that database's ledger.
async fn diff_section(
    provider: &AnyProvider,
    mine: Option<&ObservedEnv>,
    theirs: Option<&ObservedEnv>,
    (branch, against, commit): (&str, &str, &str),
    desired: Option<&DesiredEnv>,
) -> (Section, Option<Ledger>) {
    let mut section = Section {
        title: format!("Schema diff against `{against}`"),
        elsewhere: format!(
            "`envctl diff --branch {} --against {}`",
            shell_quote(branch),
            shell_quote(against)
        ),
        ..Section::default()
    };
    let (Some(mine), Some(theirs)) = (mine, theirs) else {
        section.text = match mine {
            None => format!(
                "{} has no environment yet: the diff comes after its first apply.",
                crate::model::code(branch)
            ),
            Some(_) => format!(
                "{} has no environment to compare with.",
                crate::model::code(against)
            ),
        };
        return (section, None);
    };
    match compare(provider, mine, theirs, true).await {
        Ok((diff, ledger)) => {
            let chunks: Vec<String> = schema_diff::object_chunks(&diff)
                .into_iter()
                .map(|lines| lines.join("\n"))
                .collect();
            let lines: usize = chunks.iter().map(|c| c.lines().count()).sum();
            section.text = format!(
                "{}'s database ({}) {}, against {}'s ({}). **{}**",
                crate::model::code(branch),
                mine.cluster_id,
                as_of(mine, desired, commit),
                crate::model::code(against),
                theirs.cluster_id,
                schema_diff::summary_line(&diff)
            );
            section.code = (!chunks.is_empty()).then(|| Code {
                fence: Some("diff".into()),
                header: String::new(),
                items: chunks,
                fold: (lines > schema_diff::FOLD_LINES)
                    .then(|| format!("The diff ({lines} lines)")),
                noun: "objects".into(),
            });
            (section, ledger)
        }
        Err(e) => {
            section.text = format!(
                "Could not read the schemas: {}",
                render::cell(&error_chain(e.as_ref()))
            );
            (section, None)
        }
    }
}

pub async fn review(cli: &Cli, args: &ReviewArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let branches = match &args.branch {
        Some(branch) => Branches::Named(vec![branch.clone()]),
        None => Branches::Current,
    };
    let planned = match make_plan(
        cli,
        branches,
        &PlanOptions::default(),
        DEFAULT_WAIT,
        reporter,
    )
    .await?
    {
        Ok(planned) => planned,
        Err(exit) => return Ok(exit),
    };
    let settings = &planned.settings;
    let branch = planned.plan.scope.first().cloned().unwrap_or_default();
    let commit = args.commit.as_deref().map_or_else(
        || "this commit".to_owned(),
        |c| format!("`{}`", c.get(..12).unwrap_or(c)),
    );
    let desired = planned.scope.desired.get(&branch).and_then(|w| w.desired());
    let mut review = Review {
        title: match &args.applied {
            Some(_) => format!("### envctl: {} after the apply of {commit}", code(&branch)),
            None => format!("### envctl: {} at {commit}", code(&branch)),
        },
        result: result(&planned.plan, args.applied.as_deref(), &commit),
        sections: vec![plan_section(&planned.plan, &branch)],
    };
    // A branch named by `--against` must be one; the default branch is compared with if known.
    let against = match args.against.as_deref() {
        Some(named) => Some(against_branch(settings, Some(named))?),
        None => against_branch(settings, None).ok(),
    };
    match against.as_deref() {
        Some(against) if against != branch => {
            let mine = super::reconcile::the_live_env(&planned.observed, &branch);
            let theirs = super::reconcile::the_live_env(&planned.observed, against);
            let (diff, ledger) = match (mine, theirs) {
                (Ok(mine), Ok(theirs)) => {
                    diff_section(
                        &planned.provider,
                        mine,
                        theirs,
                        (&branch, against, &commit),
                        desired,
                    )
                    .await
                }
                // Two live environments for one branch: no diff of either.
                (Err(e), _) | (_, Err(e)) => (
                    Section {
                        title: format!("Schema diff against `{against}`"),
                        text: format!("No diff: {e}."),
                        ..Section::default()
                    },
                    None,
                ),
            };
            if let Some(desired) = desired {
                review
                    .sections
                    .push(lint_section(desired, against, ledger.as_ref()));
            }
            review.sections.push(diff);
        }
        Some(_) => {}
        None => review.sections.push(Section {
            title: "Schema diff".into(),
            text:
                "envctl cannot tell the default branch to compare with (set ENVCTL_DEFAULT_BRANCH)."
                    .into(),
            ..Section::default()
        }),
    }
    if live_env(&planned.observed, &branch).is_some() || desired.is_some() {
        let quoted = shell_quote(&branch);
        review.sections.push(Section {
            title: "Connect".into(),
            text: format!(
                "From a checkout of the repository, with the workflow's `ENVCTL_PROVIDER` and credentials that may connect (`envctl iam-policy`):\n\n```sh\nenvctl exec --branch {quoted} -- psql\nenvctl url --branch {quoted}\n```"
            ),
            ..Section::default()
        });
    }
    print_stdout(&crate::plan::review::render(
        &review,
        args.max_chars as usize,
    ))?;
    Ok(if args.applied.is_none() && planned.plan.has_blocked() {
        Exit::Failed
    } else {
        Exit::Success
    })
}
