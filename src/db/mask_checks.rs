//! What masking checks around its statements, so that it either masks or fails, never reports
//! masked what it did not mask:
//! - a rule's table is a table of this database: an ordinary or partitioned table, with no
//!   foreign table among its partitions or children (an `UPDATE` of one writes to another
//!   server, which may be the source itself);
//! - after an `UPDATE`, every row holds what the rules write: a rule of the user's (`DO INSTEAD
//!   NOTHING`), or a trigger returning `OLD` or `NULL`, can keep the statement from writing, and
//!   the `UPDATE` succeeds all the same;
//! - the masking's transaction is the one it began: a masking file that ends it (a `ROLLBACK;
//!   BEGIN;` its lint did not see, say, after another file changed `standard_conforming_strings`)
//!   would have the record say masked what was rolled back.

use sqlx::{AssertSqlSafe, PgConnection};

use crate::sql::mask::{TableRules, masked_shape};
use crate::sql::quote_ident;

/// Why `table` may not be masked, if it may not: not a table (a view, a foreign table, a
/// sequence…), or a table with a foreign table among its partitions or children. `None` also
/// when it does not exist (the `UPDATE` then names it).
pub async fn refused_target(
    conn: &mut PgConnection,
    table: &TableRules<'_>,
) -> Result<Option<String>, sqlx::Error> {
    let qualified = table.qualified();
    let (kind, foreign): (Option<String>, Option<String>) = sqlx::query_as(
        "WITH RECURSIVE tree(oid) AS (
             SELECT to_regclass($1)::oid
             UNION
             SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid)
         SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)::oid),
                (SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid::regclass::text)
                   FROM tree JOIN pg_class c ON c.oid = tree.oid WHERE c.relkind = 'f')",
    )
    .bind(&qualified)
    .fetch_one(&mut *conn)
    .await?;
    let what = match kind.as_deref() {
        None | Some("r" | "p") => {
            return Ok(foreign.map(|tables| {
                format!(
                    "{} has foreign tables among its partitions or children ({tables}), whose \
                     rows live on another server: masking would write there",
                    table.written()
                )
            }));
        }
        Some("f") => {
            "a foreign table, whose rows live on another server: masking would write there"
        }
        Some("v") => "a view: name the table it reads",
        Some("m") => {
            "a materialized view: mask the tables it reads, then refresh it in a masking file"
        }
        Some(_) => "not a table",
    };
    Ok(Some(format!("{} is {what}", table.written())))
}

/// After a table's `UPDATE`: what its rows hold that its rules do not write.
#[derive(Debug, Default)]
pub struct LeftUnmasked {
    /// Rows (its partitions and children with them) holding other values than the rules write.
    pub rows: i64,
    /// Masked columns (as specs write them) whose written values have no shape to check: a
    /// keyed rule into a column outside the string category that takes text by an assignment
    /// cast of its own (`"char"`, a user's cast). What a trigger or rule did to them cannot be
    /// told from what they hold.
    pub unchecked: Vec<String>,
}

/// What of `table` its rules did not write, after its `UPDATE` ([`LeftUnmasked`]).
pub async fn rows_left_unmasked(
    conn: &mut PgConnection,
    table: &TableRules<'_>,
) -> Result<LeftUnmasked, sqlx::Error> {
    let qualified = table.qualified();
    let names: Vec<&str> = table
        .rules
        .iter()
        .map(|r| r.column.column.as_str())
        .collect();
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
          WHERE a.attrelid = to_regclass($1)::oid AND a.attnum > 0 AND NOT a.attisdropped
            AND a.attname = ANY($2)",
    )
    .bind(&qualified)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    let mut left = LeftUnmasked::default();
    let mut shapes = Vec::new();
    for rule in &table.rules {
        let Some((_, type_sql, category)) = columns.iter().find(|c| c.0 == rule.column.column)
        else {
            continue;
        };
        let column = quote_ident(&rule.column.column);
        match masked_shape(&column, &rule.strategy, type_sql, category) {
            Some(shape) => shapes.push(shape),
            None => left.unchecked.push(rule.column.to_string()),
        }
    }
    if !shapes.is_empty() {
        left.rows = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {qualified} WHERE NOT ({})",
            shapes.join(" AND ")
        )))
        .fetch_one(&mut *conn)
        .await?;
    }
    Ok(left)
}

/// The transaction's id, given one if it has none yet: the same before and after the masking's
/// statements when nothing ended the transaction in between.
pub async fn transaction_id(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(&mut *conn)
        .await
}

/// Run before each masking file: the lexing its lint assumed (a file before it may have changed
/// it, and PostgreSQL lexes each file with the setting the last one left).
pub const LEXING_RESET: &str = "SET LOCAL standard_conforming_strings = on";

/// Run as the masking begins: a row-level security policy that would hide rows from the master
/// user (`FORCE ROW LEVEL SECURITY`, a master user that is not a superuser, as on AWS) makes a
/// statement fail instead of leaving those rows unmasked; and the rules' literals (`fixed:`)
/// are read as written, whatever the copy's settings (a source database's
/// `standard_conforming_strings = off`, which the copy keeps, would read `\n` in one as a
/// newline, and a `\'` as the literal's end). The session itself was prepared first
/// ([`crate::sql::mask::prepare_session`]).
pub const NO_HIDDEN_ROWS: &str =
    "SET LOCAL row_security = off; SET LOCAL standard_conforming_strings = on";
