//! The masking rules as SQL, shared by `db` (which masks a copy) and the local provider (which
//! masks as it copies): each strategy's expression (every name quoted, every literal a literal: a
//! column path never reaches SQL as text), the rules by table, what makes a table plain enough
//! to be rewritten or copied through a query instead of updated, and the record of a copy that
//! masked as it copied.
//!
//! `hash`, `email` and `name` are keyed: every digest is `md5(key || value)` with a key of 244
//! random bits made on the server for each masking alone ([`SET_MASK_KEY`], a transaction-local
//! setting: never sent, stored or logged, gone at commit).

use std::collections::BTreeMap;

use super::{quote_ident, quote_literal};
use crate::model::{MaskRule, MaskStrategy};

/// Names `name` masking picks from, by a hash of the value.
const FIRST_NAMES: [&str; 16] = [
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Dorothy",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "John",
    "Katherine",
    "Linus",
    "Margaret",
    "Niklaus",
    "Radia",
    "Tim",
];
const LAST_NAMES: [&str; 16] = [
    "Allen",
    "Babbage",
    "Codd",
    "Dijkstra",
    "Engelbart",
    "Floyd",
    "Gray",
    "Hopper",
    "Knuth",
    "Lamport",
    "Liskov",
    "Lovelace",
    "Perlman",
    "Ritchie",
    "Shannon",
    "Turing",
];

/// The transaction-local setting that holds this masking's key.
pub const MASK_KEY_SETTING: &str = "envctl.mask_key";

/// Sets this masking's key ([`MASK_KEY_SETTING`], transaction-local), made on the server from
/// its strong random source (two version-4 UUIDs: 244 random bits), so it never crosses the
/// wire: not in a statement, not as a parameter a statement log would record, not in the result
/// (a boolean).
pub const SET_MASK_KEY: &str = "SELECT set_config('envctl.mask_key',
        replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), true) IS NOT NULL";

/// The keyed digest of `text` (an SQL expression): hex, 32 characters.
fn keyed(text: &str) -> String {
    format!("md5(current_setting('{MASK_KEY_SETTING}') || {text})")
}

/// The SQL expression that replaces `column` (quoted) by `strategy`. NULL stays NULL (a rule
/// hides values, it does not invent them), but for `fixed` and `null`.
pub fn expression(column: &str, strategy: &MaskStrategy) -> String {
    // A 32-bit number from the value, the same on every PostgreSQL version (md5, not hashtext).
    let bucket = |salt: &str, size: usize| {
        format!(
            "1 + ((('x' || substr({}, 1, 8))::bit(32)::bigint) % {size}::bigint)",
            keyed(&format!("{salt}{column}::text"))
        )
    };
    let array = |names: &[&str]| {
        let items: Vec<String> = names.iter().map(|n| quote_literal(n)).collect();
        format!("(ARRAY[{}])", items.join(", "))
    };
    let unless_null =
        |expr: String| format!("CASE WHEN {column} IS NULL THEN NULL ELSE {expr} END");
    match strategy {
        MaskStrategy::Null => "NULL".to_owned(),
        MaskStrategy::Fixed(literal) => quote_literal(literal),
        MaskStrategy::Hash => unless_null(keyed(&format!("{column}::text"))),
        MaskStrategy::Email => unless_null(format!(
            "'user-' || {} || '@example.invalid'",
            keyed(&format!("{column}::text"))
        )),
        MaskStrategy::Name => unless_null(format!(
            "{}[{}] || ' ' || {}[{}]",
            array(&FIRST_NAMES),
            bucket("'first:' || ", FIRST_NAMES.len()),
            array(&LAST_NAMES),
            bucket("'last:' || ", LAST_NAMES.len()),
        )),
    }
}

/// An SQL condition that holds when `column` (quoted) holds what `strategy` writes, for a
/// column of the type `type_sql` and category `category` (`pg_type.typcategory`): `None` where
/// the written value has no shape of its own to check (a keyed strategy into a column that is
/// not of the string category, which takes the text its own way).
pub fn masked_shape(
    column: &str,
    strategy: &MaskStrategy,
    type_sql: &str,
    category: &str,
) -> Option<String> {
    let names = |names: &[&str]| names.join("|");
    let keyed = |pattern: String| {
        (category == "S").then(|| format!("({column} IS NULL OR {column}::text ~ '{pattern}')"))
    };
    match strategy {
        MaskStrategy::Null => Some(format!("{column} IS NULL")),
        MaskStrategy::Fixed(literal) => Some(format!(
            "{column}::text IS NOT DISTINCT FROM CAST({} AS {type_sql})::text",
            quote_literal(literal)
        )),
        MaskStrategy::Hash => keyed("^[0-9a-f]{32}$".into()),
        MaskStrategy::Email => keyed("^user-[0-9a-f]{32}@example\\.invalid$".into()),
        MaskStrategy::Name => keyed(format!(
            "^({}) ({})$",
            names(&FIRST_NAMES),
            names(&LAST_NAMES)
        )),
    }
}

/// One table's rules.
pub struct TableRules<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub rules: Vec<&'a MaskRule>,
}

impl TableRules<'_> {
    /// The table in SQL: `"schema"."table"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(self.schema), quote_ident(self.table))
    }

    /// The table for messages, as a spec would write it: `app.users`.
    pub fn written(&self) -> String {
        self.rules[0].column.table_written()
    }

    /// The columns it masks, for messages: `app.users.email, app.users.phone`.
    pub fn columns(&self) -> String {
        let columns: Vec<String> = self.rules.iter().map(|r| r.column.to_string()).collect();
        columns.join(", ")
    }

    /// `UPDATE "schema"."table" SET "a" = …, "b" = …`.
    pub fn update(&self) -> String {
        let sets: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                let column = quote_ident(&r.column.column);
                format!("{column} = {}", expression(&column, &r.strategy))
            })
            .collect();
        format!("UPDATE {} SET {}", self.qualified(), sets.join(", "))
    }
}

/// The rules by table, tables in order.
pub fn by_table(rules: &[MaskRule]) -> Vec<TableRules<'_>> {
    let mut by_table: BTreeMap<(&str, &str), Vec<&MaskRule>> = BTreeMap::new();
    for rule in rules {
        by_table
            .entry((&rule.column.schema, &rule.column.table))
            .or_default()
            .push(rule);
    }
    by_table
        .into_iter()
        .map(|((schema, table), rules)| TableRules {
            schema,
            table,
            rules,
        })
        .collect()
}

/// One statement per table: `UPDATE "schema"."table" SET "a" = …, "b" = …`, tables in order,
/// each with the columns it masks.
pub fn statements(rules: &[MaskRule]) -> Vec<(String, String)> {
    by_table(rules)
        .iter()
        .map(|table| (table.columns(), table.update()))
        .collect()
}

/// Whether `strategy`'s value is taken by a column of the type category `category`
/// (`pg_type.typcategory`) as an `UPDATE` would take it, when it is written another way (a
/// rewrite, a copy's text): `null` and `fixed:` anywhere, the keyed strategies' text only by a
/// string column.
pub fn writes_as_update(strategy: &MaskStrategy, category: &str) -> bool {
    matches!(strategy, MaskStrategy::Null | MaskStrategy::Fixed(_)) || category == "S"
}

/// An SQL condition on `c` (a `pg_class` row): the table is plain enough that a rewrite of it, or
/// a copy of its rows through a query, does what an `UPDATE` of it would: an ordinary table,
/// neither partitioned nor a partition, no inheritance parent or child, no rules and no triggers
/// of its own, no foreign key into it that an update cascades, no generated columns.
pub const PLAIN_TABLE: &str = "c.relkind = 'r' AND NOT c.relispartition AND NOT c.relhasrules
    AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid OR i.inhrelid = c.oid)
    AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
    AND NOT EXISTS (SELECT 1 FROM pg_constraint f
                     WHERE f.contype = 'f' AND f.confrelid = c.oid AND f.confupdtype IN ('c', 'n', 'd'))
    AND NOT EXISTS (SELECT 1 FROM pg_attribute g
                     WHERE g.attrelid = c.oid AND g.attnum > 0 AND g.attgenerated <> '')";

/// The record of a copy that masked as it copied: a table masked so, by the copy's cluster id,
/// its `envctl:mask-id` and the `UPDATE` it stands for. No key: a copy records each table once,
/// and an index over the statement would refuse one for a table of some hundred masked columns
/// (a B-tree entry holds at most 2704 bytes).
pub const MASKED_IN_COPY_DDL: &str = "\
CREATE SCHEMA IF NOT EXISTS envctl;
CREATE TABLE IF NOT EXISTS envctl.masked_in_copy (
    cluster_id   text NOT NULL,
    mask_id      text NOT NULL,
    statement    text NOT NULL
);";

/// Prepares a session that masks (on the copy) or reads rows to mask (on the source) for
/// envctl's own statements, whatever the database's settings say, which its owner chose (and a
/// copy keeps):
/// - `pg_catalog` is put first in `search_path`: a path naming a schema of the owner's before it
///   would give the statements' unqualified `md5`, `current_setting`, `gen_random_uuid`, `||` or
///   `bit` the owner's meaning, run by the master user. The rest of the path stays, for the
///   user's own triggers and functions that the masking fires. Until it is set, only utility
///   statements run (`SET`, `SHOW`), which look nothing up in the path.
/// - literals read as written (`standard_conforming_strings`), and no timeout or read-only
///   default of the database's stops the masking half-way.
pub async fn prepare_session(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    // `SET ROLE NONE` first: a database's default `role` (its owner may set one, and a copy
    // keeps its source's) would have the master user mask as that role, trusting its tables.
    sqlx::raw_sql(
        "SET ROLE NONE; SET standard_conforming_strings = on; SET statement_timeout = 0; \
         SET idle_in_transaction_session_timeout = 0; SET default_transaction_read_only = off",
    )
    .execute(&mut *conn)
    .await?;
    let shown: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut *conn)
        .await?;
    let elements = super::split_identifiers(&shown).ok_or_else(|| {
        sqlx::Error::Protocol(format!(
            "the database's search_path cannot be read as a list of names: {shown}"
        ))
    })?;
    let listed: Vec<String> = std::iter::once("pg_catalog".to_owned())
        .chain(elements)
        .map(|e| quote_literal(&e))
        .collect();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path TO {}",
        listed.join(", ")
    )))
    .execute(&mut *conn)
    .await?;
    // PostgreSQL 17's, where there is one.
    sqlx::raw_sql(
        "SELECT pg_catalog.set_config('transaction_timeout', '0', false)
           FROM pg_catalog.pg_settings WHERE name = 'transaction_timeout'",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ColumnPath;

    fn rule(path: &str, strategy: MaskStrategy) -> MaskRule {
        MaskRule {
            column: ColumnPath::parse(path).unwrap(),
            strategy,
        }
    }

    #[test]
    fn the_key_is_set_in_the_setting_the_expressions_read() {
        assert!(SET_MASK_KEY.contains(&format!("set_config('{MASK_KEY_SETTING}',")));
        assert!(keyed("x").contains(&format!("current_setting('{MASK_KEY_SETTING}')")));
    }

    #[test]
    fn one_update_per_table_with_every_name_quoted_and_every_literal_a_literal() {
        let rules = vec![
            rule("app.users.email", MaskStrategy::Email),
            rule(r#""My Schema"."t;drop"."x""y""#, MaskStrategy::Hash),
            rule("app.users.phone", MaskStrategy::Null),
            rule(
                "app.cards.last4",
                MaskStrategy::Fixed("00'; DROP TABLE x; --".into()),
            ),
        ];
        let statements = statements(&rules);
        let sql: Vec<&str> = statements.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(sql.len(), 3);
        assert_eq!(
            sql[0],
            r#"UPDATE "My Schema"."t;drop" SET "x""y" = CASE WHEN "x""y" IS NULL THEN NULL ELSE md5(current_setting('envctl.mask_key') || "x""y"::text) END"#
        );
        assert_eq!(
            sql[1],
            r#"UPDATE "app"."cards" SET "last4" = '00''; DROP TABLE x; --'"#
        );
        assert_eq!(
            sql[2],
            r#"UPDATE "app"."users" SET "email" = CASE WHEN "email" IS NULL THEN NULL ELSE 'user-' || md5(current_setting('envctl.mask_key') || "email"::text) || '@example.invalid' END, "phone" = NULL"#
        );
    }
}
