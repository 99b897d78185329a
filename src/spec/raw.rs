//! The environment file format (version 1) as serde types: what users write, field for field.
//!
//! The JSON Schema committed as `schemas/environment.schema.json` is generated from these types
//! (`envctl schema`), so their `///` comments are the descriptions editors show. Semantic rules
//! (ranges, globs, files that must exist) live in `validate.rs`, not here. Pure: no IO.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

/// An envctl environment file: which branches get a database, and how.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "envctl environment")]
pub struct RawSpec {
    /// Format version of this file; only `1` exists.
    pub version: u32,
    /// Unique name of this class of environment across `environments/`, e.g. `preview`.
    pub name: String,
    /// Git branch names or globs this spec covers: `*` stays within one `/` segment, `**` crosses
    /// them. An exact name beats a glob; among globs the longest literal prefix wins. A pattern
    /// that starts with `!` excludes the branches it matches, wherever it is listed:
    /// `["**", "!dependabot/**", "!renovate/**"]` covers every branch but the bots'.
    pub branches: Vec<String>,
    /// The Aurora cluster.
    pub cluster: RawCluster,
    /// The database inside the cluster.
    #[serde(default)]
    pub database: RawDatabase,
    /// When the environment goes away.
    #[serde(default)]
    pub lifecycle: RawLifecycle,
}

/// Cluster settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCluster {
    /// Database engine; version 1 supports `aurora-postgresql` only.
    #[serde(default = "default_engine")]
    #[schemars(extend("enum" = ["aurora-postgresql"]))]
    pub engine: String,
    /// Engine version, e.g. `"16.6"`; the provider's default when absent. Changing it replaces
    /// the cluster.
    #[serde(default)]
    pub engine_version: Option<String>,
    /// Create with Aurora express configuration; version 1 supports `true` only.
    #[serde(default = "default_true")]
    pub express: bool,
    /// Serverless v2 capacity range in ACU.
    pub scaling: RawScaling,
    /// Turn on the cluster's deletion protection.
    #[serde(default)]
    pub deletion_protection: bool,
    /// Extra tags for the cluster. Keys starting with `envctl:` or `aws:` are reserved.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Serverless v2 scaling.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawScaling {
    /// Minimum capacity: 0 to 256 in steps of 0.5 (0 lets the cluster pause when idle).
    #[schemars(range(min = 0, max = 256), extend("multipleOf" = 0.5))]
    pub min_acu: f64,
    /// Maximum capacity: 1 to 256 in steps of 0.5, at least `minAcu` (AWS refuses a maximum
    /// under 1 ACU; above 128 needs a recent engine version).
    #[schemars(range(min = 1, max = 256), extend("multipleOf" = 0.5))]
    pub max_acu: f64,
}

/// Database settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDatabase {
    /// Database name (AWS only; the local provider names databases after the cluster id).
    #[serde(default = "default_postgres")]
    pub name: String,
    /// The user migrations, seeds and connections use; not a built-in or reserved role
    /// (`pg_*`, `rds*`, `public`, `envctl_reader`).
    #[serde(default = "default_postgres")]
    pub user: String,
    /// `latest`, or the highest migration version to apply.
    #[serde(default)]
    pub schema_version: SchemaVersion,
    /// Seed files (repository-relative, under `schemas/seeds/`), applied in this order after
    /// migrations.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Start as a masked copy of another environment's data (a data branch) instead of empty.
    #[serde(default)]
    pub from: Option<RawFrom>,
}

/// A data branch's source and masking.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFrom {
    /// The branch whose environment's live data is copied [default: the default branch].
    #[serde(default)]
    pub branch: Option<String>,
    /// Instead of `branch`: a cluster envctl does not manage, in the same account and Region (on
    /// the local provider, a database on the same server). envctl only reads it: never modifies,
    /// deletes or tags it.
    #[serde(default)]
    pub cluster: Option<String>,
    /// With `cluster`: its master user, which a copy keeps and masking logs in as [default:
    /// `postgres`, as express clusters have it]. `envctl iam-policy` grants the apply role that
    /// login; a plan blocks the copy when the cluster's says otherwise.
    #[serde(default)]
    pub master_user: Option<String>,
    /// Masking rules, run on the copy before anything else may connect: `schema.table.column`
    /// → `null`, `email` (a fake address, unique per input), `name` (a fake name), `hash` (stable
    /// per value, so joins still match), or `fixed:<literal>`.
    #[serde(default)]
    pub mask: BTreeMap<String, Option<String>>,
    /// Masking SQL files (under `schemas/mask/`), run after the rules in the same transaction,
    /// for what the rules cannot say.
    #[serde(default)]
    pub mask_sql: Vec<String>,
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            name: default_postgres(),
            user: default_postgres(),
            schema_version: SchemaVersion::Latest,
            seeds: Vec::new(),
            from: None,
        }
    }
}

/// Lifecycle settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLifecycle {
    /// Delete the environment when no apply has touched it for this long: `30m`, `12h`, `7d`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[1-9][0-9]*[mhd]$"))]
    pub ttl: Option<String>,
    /// Never delete this environment from prune or apply; `destroy` needs `--force`, and a
    /// diverged history blocks instead of resetting.
    #[serde(default)]
    pub protect: bool,
}

/// `latest` or a migration version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(untagged)]
pub enum SchemaVersion {
    /// Every migration.
    #[default]
    #[schemars(with = "LatestLiteral")]
    Latest,
    /// Migrations up to and including this version.
    Version(u64),
}

#[derive(JsonSchema)]
#[schemars(extend("const" = "latest"))]
#[allow(dead_code)]
struct LatestLiteral(String);

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SchemaVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`latest` or a migration version (a whole number)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SchemaVersion, E> {
                Ok(SchemaVersion::Version(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SchemaVersion, E> {
                u64::try_from(v)
                    .map(SchemaVersion::Version)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SchemaVersion, E> {
                if v == "latest" {
                    Ok(SchemaVersion::Latest)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn default_engine() -> String {
    "aurora-postgresql".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_postgres() -> String {
    "postgres".to_owned()
}

/// Keys each mapping of the format accepts, by path; `None` for free-form maps (`cluster.tags`).
/// A test checks this against the generated JSON Schema.
pub fn known_keys(path: &str) -> Option<&'static [&'static str]> {
    Some(match path {
        "" => &[
            "version",
            "name",
            "branches",
            "cluster",
            "database",
            "lifecycle",
        ],
        "cluster" => &[
            "engine",
            "engineVersion",
            "express",
            "scaling",
            "deletionProtection",
            "tags",
        ],
        "cluster.scaling" => &["minAcu", "maxAcu"],
        "database" => &["name", "user", "schemaVersion", "seeds", "from"],
        "database.from" => &["branch", "cluster", "masterUser", "mask", "maskSql"],
        "lifecycle" => &["ttl", "protect"],
        _ => return None,
    })
}

/// The JSON Schema of the format, pretty-printed with a trailing newline.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawSpec);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_match_the_schema() {
        let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
        let props = |v: &serde_json::Value| -> Vec<String> {
            let mut keys: Vec<String> = v["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let sorted = |keys: &[&str]| -> Vec<String> {
            let mut keys: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
            keys.sort();
            keys
        };
        let defs = &schema["$defs"];
        assert_eq!(props(&schema), sorted(known_keys("").unwrap()));
        assert_eq!(
            props(&defs["RawCluster"]),
            sorted(known_keys("cluster").unwrap())
        );
        assert_eq!(
            props(&defs["RawScaling"]),
            sorted(known_keys("cluster.scaling").unwrap())
        );
        assert_eq!(
            props(&defs["RawDatabase"]),
            sorted(known_keys("database").unwrap())
        );
        assert_eq!(
            props(&defs["RawLifecycle"]),
            sorted(known_keys("lifecycle").unwrap())
        );
    }
}
