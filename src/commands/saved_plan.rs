//! Saved plans: `plan --out FILE` writes the plan JSON; `apply FILE` reads it back, plans again
//! with the same scope and flags, and refuses (nothing applied) unless the live and desired state
//! are what they were. A plan file is input like any other: bounded, and every field checked.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::model::{Plan, PlanFlags};
use crate::report::UserError;

/// Largest plan file read.
const MAX_PLAN_BYTES: u64 = 64 << 20;

/// The fields of a saved plan that apply checks.
#[derive(Debug, Deserialize)]
pub struct SavedPlan {
    format_version: u32,
    pub provider: String,
    pub repo: String,
    pub prefix: String,
    pub scope: Vec<String>,
    pub options: PlanFlags,
    observed_fingerprint: String,
    actions: serde_json::Value,
}

fn not_a_plan(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    UserError::with_hint(
        format!("`{}` is not an envctl plan: {why}", path.display()),
        "make one with `envctl plan --out FILE`",
    )
    .into()
}

/// Reads and checks the shape of a saved plan.
pub fn read(path: &Path) -> anyhow::Result<SavedPlan> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the plan `{}`", path.display()))?;
    let mut text = String::new();
    file.take(MAX_PLAN_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the plan `{}`", path.display()))?;
    if text.len() as u64 > MAX_PLAN_BYTES {
        return Err(not_a_plan(
            path,
            format!("it is larger than {MAX_PLAN_BYTES} bytes"),
        ));
    }
    let saved: SavedPlan = serde_json::from_str(&text).map_err(|e| not_a_plan(path, e))?;
    if saved.format_version != crate::plan::FORMAT_VERSION {
        return Err(not_a_plan(
            path,
            format!(
                "its format_version is {}; this envctl reads {}",
                saved.format_version,
                crate::plan::FORMAT_VERSION
            ),
        ));
    }
    Ok(saved)
}

/// Refuses a saved plan that is not what apply would do now.
pub fn check(saved: &SavedPlan, now: &Plan) -> anyhow::Result<()> {
    if saved.provider != now.provider || saved.repo != now.repo.as_str() {
        return Err(UserError::new(format!(
            "the plan was made for {} on the {} provider, not {} on {}; nothing was applied",
            saved.repo, saved.provider, now.repo, now.provider
        ))
        .into());
    }
    if saved.prefix != now.prefix {
        return Err(UserError::with_hint(
            format!(
                "the plan was made under prefix `{}`, not `{}`; nothing was applied",
                saved.prefix, now.prefix
            ),
            format!("set ENVCTL_PREFIX={} to apply it", saved.prefix),
        )
        .into());
    }
    let actions = serde_json::to_value(&now.actions).expect("actions serialize");
    if saved.observed_fingerprint != now.observed_fingerprint || actions != saved.actions {
        return Err(UserError::with_hint(
            "stale plan: the live state or the desired state changed since the plan was made; nothing was applied",
            "make a new plan with `envctl plan --out FILE` and review it",
        )
        .into());
    }
    Ok(())
}
