//! Migration lint findings: what a migration does that is unsafe on a live database (a rewrite
//! under an `ACCESS EXCLUSIVE` lock, an index built without `CONCURRENTLY`, a dropped column the
//! default branch's code may still read…), placed at its line and column, with the safer way.
//! Found by `spec::lint` when migrations are loaded; carried by `migrate` actions into the plan.
//!
//! Architecture invariant: no IO (see `model/mod.rs`).

use serde::Serialize;

/// One finding of the migration linter in one migration.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LintFinding {
    /// The migration's name (`0004_add_orders`).
    pub migration: String,
    /// The migration's repository-relative path.
    pub file: String,
    /// 1-based line and column (in characters) where the operation starts.
    pub line: usize,
    pub column: usize,
    /// The rule's name, as squawk names it (`require-concurrent-index-creation`).
    pub rule: String,
    /// What is unsafe.
    pub message: String,
    /// The safer way.
    pub help: String,
}

impl LintFinding {
    /// `0004_add_orders:3:1: require-concurrent-index-creation: …`, on one line.
    pub fn one_line(&self) -> String {
        format!(
            "{}:{}:{}: {}: {} ({})",
            self.migration, self.line, self.column, self.rule, self.message, self.help
        )
    }
}
