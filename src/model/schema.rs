//! A database's schema as `envctl diff` reads it from the catalogs ([`Schema`]), and the
//! difference of two ([`SchemaDiff`], the diff JSON). Objects are keyed by kind and name (names
//! quoted as PostgreSQL would print them, functions with their argument types), never by oid or
//! position, so the same schema created in another order reads the same. Each object is a set of
//! properties (text), and a table or materialised view has parts (columns, constraints, indexes,
//! triggers, policies) keyed the same way.
//!
//! Architecture invariant: no IO (see `model/mod.rs`). `db::catalog` reads it, `plan::diff`
//! compares and renders it.

use std::collections::BTreeMap;

use serde::Serialize;

/// Version of the diff JSON; it changes only when a field changes meaning or goes.
pub const DIFF_FORMAT_VERSION: u32 = 1;

/// The kinds of objects, in the order a diff lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Extension,
    Schema,
    Enum,
    Domain,
    Sequence,
    Table,
    View,
    MaterializedView,
    Function,
    Procedure,
}

impl ObjectKind {
    /// As users read it: `materialized view`.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Extension => "extension",
            ObjectKind::Schema => "schema",
            ObjectKind::Enum => "enum",
            ObjectKind::Domain => "domain",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Table => "table",
            ObjectKind::View => "view",
            ObjectKind::MaterializedView => "materialized view",
            ObjectKind::Function => "function",
            ObjectKind::Procedure => "procedure",
        }
    }
}

/// The parts of a table (or materialised view), in the order a diff lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    Column,
    Constraint,
    Index,
    Trigger,
    Policy,
}

impl PartKind {
    pub fn label(self) -> &'static str {
        match self {
            PartKind::Column => "column",
            PartKind::Constraint => "constraint",
            PartKind::Index => "index",
            PartKind::Trigger => "trigger",
            PartKind::Policy => "policy",
        }
    }
}

/// Property name → value, as text. A property that does not apply is absent.
pub type Properties = BTreeMap<String, String>;

/// One object and, for a table or materialised view, its parts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaObject {
    pub properties: Properties,
    pub parts: BTreeMap<(PartKind, String), Properties>,
}

/// Every object of a database that `envctl diff` compares, by kind and name. System schemas and
/// envctl's own ledger schema (`envctl`) are not in it, nor what an extension brings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    pub objects: BTreeMap<(ObjectKind, String), SchemaObject>,
}

/// Whether something is in the branch's database only, in the other's only, or in both but
/// different.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

impl Change {
    /// `+`, `-`, `~`.
    pub fn marker(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Changed => '~',
        }
    }
}

/// One property's values on each side (`None`: absent there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PropertyChange {
    pub property: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A part of a table that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartDiff {
    pub change: Change,
    pub kind: PartKind,
    pub name: String,
    /// Every property of an added or removed part; the ones that differ of a changed one.
    pub properties: Vec<PropertyChange>,
}

/// An object that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectDiff {
    pub change: Change,
    pub kind: ObjectKind,
    pub name: String,
    /// Every property of an added or removed object; the ones that differ of a changed one.
    pub properties: Vec<PropertyChange>,
    pub parts: Vec<PartDiff>,
}

/// Counts of objects that differ.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// One side of a diff: a branch and its environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffSide {
    pub branch: String,
    pub cluster_id: String,
}

/// The schema of `branch`'s database against `against`'s: `+` is in the branch's only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SchemaDiff {
    pub format_version: u32,
    pub branch: DiffSide,
    pub against: DiffSide,
    /// Sorted by kind, then name; parts by kind, then name.
    pub changes: Vec<ObjectDiff>,
    pub summary: DiffSummary,
}

impl SchemaDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}
