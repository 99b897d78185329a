//! Masking a table by rewriting it: `ALTER TABLE … ALTER COLUMN c TYPE <its own type> USING
//! <mask>` writes each row once into a new file, where the `UPDATE` that says the same thing
//! writes a new version of every row beside the old one, logs both, updates every index entry,
//! and leaves half the table dead (measured by hand on 1M rows: about 3 s against 16–18 s; the
//! rest is the indexes rebuilt on the masked values, BENCHMARKS.md item 8).
//!
//! The two are the same only for a plain table, so a table is rewritten only when:
//! - it is an ordinary table, neither partitioned nor a partition, with no inheritance parent or
//!   child, no rules and no triggers of its own (an `UPDATE` fires them; a rewrite does not), no
//!   foreign key into it that an update cascades (`ON UPDATE CASCADE`, `SET NULL`, `SET DEFAULT`),
//!   and no generated columns ([`crate::sql::mask::PLAIN_TABLE`]); and the database has no
//!   enabled event trigger (a rewrite would fire it, an `UPDATE` does not);
//! - every masked column keeps what a new type definition would reset: its storage and
//!   compression are the type's defaults, and its collation is said again (`COLLATE`);
//! - every keyed strategy (`hash`, `email`, `name`) writes a column of the string category, so
//!   the text it makes is taken as the `UPDATE` would take it.
//!
//! Anything else the rewrite refuses (a view or a foreign key on the column, a constraint the
//! masked values break) rolls back to a savepoint and the table is masked by `UPDATE`, whose
//! error, if it fails too, is the one reported.

use sqlx::{AssertSqlSafe, PgConnection};

use crate::sql::mask::{PLAIN_TABLE, TableRules, expression, writes_as_update};
use crate::sql::{quote_ident, quote_literal};

/// What a rewrite needs of each masked column: its type as SQL, its collation where it is not the
/// type's, whether its storage and compression are the type's, and its type's category.
const COLUMNS: &str = "SELECT a.attname::text,
        format_type(a.atttypid, a.atttypmod),
        CASE WHEN a.attcollation <> t.typcollation
             THEN pg_catalog.quote_ident(cn.nspname::text) || '.' || pg_catalog.quote_ident(co.collname::text) END,
        a.attstorage = t.typstorage AND a.attcompression = '',
        t.typcategory::text
   FROM pg_attribute a
   JOIN pg_type t ON t.oid = a.atttypid
   LEFT JOIN pg_collation co ON co.oid = a.attcollation
   LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
  WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY($2)";

/// Rewrites would rebuild the table's indexes: with less than this, in a large table, sorting
/// each spills to disk.
const MAINTENANCE_WORK_MEM: &str = "256MB";

/// The `ALTER TABLE` that masks `table` by rewriting it, when it can stand for the `UPDATE`;
/// `None` otherwise (or when a column is missing: the `UPDATE` then names it).
pub async fn statement(
    conn: &mut PgConnection,
    table: &TableRules<'_>,
) -> Result<Option<String>, sqlx::Error> {
    if !no_event_triggers(conn).await? {
        return Ok(None);
    }
    let qualified = table.qualified();
    let plain: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT c.oid::bigint FROM pg_class c
          WHERE c.oid = to_regclass($1)::oid AND {PLAIN_TABLE}"
    )))
    .bind(&qualified)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(oid) = plain else {
        return Ok(None);
    };
    alter(conn, oid, table, true).await
}

/// Whether the server can take a column's type change as envctl means it: PostgreSQL 14 or later
/// (`attcompression`; an older server masks by `UPDATE`), and no enabled event trigger (a
/// rewrite would fire it, an `UPDATE` does not).
async fn no_event_triggers(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let (version, event_triggers): (i32, bool) = sqlx::query_as(
        "SELECT current_setting('server_version_num')::int,
                EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtenabled <> 'D')",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(version >= 140_000 && !event_triggers)
}

/// `ALTER TABLE` changing each of `table`'s (`oid`'s) masked columns to its own type, collation
/// said again, `USING` the rule's mask when `masking`: `None` when a column is missing, keeps a
/// storage or compression of its own (a new type definition would reset it), or, `masking`, is
/// of a type a keyed mask's text would not be written to as an `UPDATE` writes it.
async fn alter(
    conn: &mut PgConnection,
    oid: i64,
    table: &TableRules<'_>,
    masking: bool,
) -> Result<Option<String>, sqlx::Error> {
    let names: Vec<&str> = table
        .rules
        .iter()
        .map(|r| r.column.column.as_str())
        .collect();
    let columns: Vec<(String, String, Option<String>, bool, String)> =
        sqlx::query_as(AssertSqlSafe(COLUMNS))
            .bind(oid)
            .bind(&names)
            .fetch_all(&mut *conn)
            .await?;
    let mut clauses = Vec::new();
    for rule in &table.rules {
        let Some((_, type_sql, collation, plain_storage, category)) =
            columns.iter().find(|c| c.0 == rule.column.column)
        else {
            return Ok(None);
        };
        if !plain_storage || (masking && !writes_as_update(&rule.strategy, category)) {
            return Ok(None);
        }
        let column = quote_ident(&rule.column.column);
        let collate = collation
            .as_ref()
            .map(|c| format!(" COLLATE {c}"))
            .unwrap_or_default();
        let using = if masking {
            format!(" USING {}", expression(&column, &rule.strategy))
        } else {
            String::new()
        };
        clauses.push(format!(
            "ALTER COLUMN {column} TYPE {type_sql}{collate}{using}"
        ));
    }
    Ok(Some(format!(
        "ALTER TABLE {} {}",
        table.qualified(),
        clauses.join(", ")
    )))
}

/// Changes each of `table`'s masked columns to its own type, which rewrites nothing and drops
/// the columns' planner statistics (and rebuilds the indexes and statistics objects over them),
/// inside the caller's transaction; `Err` with the reason when the server refuses it (rolled
/// back to a savepoint) or envctl would not run it (see [`alter`]).
pub async fn retype_in_place(
    conn: &mut PgConnection,
    table: &TableRules<'_>,
) -> Result<Result<(), String>, sqlx::Error> {
    if !no_event_triggers(conn).await? {
        return Ok(Err(
            "the database has an enabled event trigger, which the change would fire".into(),
        ));
    }
    let qualified = table.qualified();
    let oid: i64 = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
        .bind(&qualified)
        .fetch_one(&mut *conn)
        .await?;
    let Some(statement) = alter(conn, oid, table, false).await? else {
        return Ok(Err(
            "a masked column has a storage or compression of its own, which a change of type \
             would reset"
                .into(),
        ));
    };
    Ok(in_savepoint(conn, &statement)
        .await?
        // Only for an empty table: its detail (what depends on the column) quotes no row.
        .map_err(|e| format!("{} (in `{statement}`)", crate::sql::SqlError(e))))
}

/// Raises `maintenance_work_mem` for this transaction to [`MAINTENANCE_WORK_MEM`] where it is
/// lower (never lowers what the server was given).
pub async fn raise_maintenance_memory(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT set_config('maintenance_work_mem', {0}, true)
          WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < pg_size_bytes({0})",
        quote_literal(MAINTENANCE_WORK_MEM)
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Masks `table` by rewriting it, inside the caller's transaction: `true` when it did, `false`
/// when the table is not one to rewrite or the rewrite was refused (rolled back to a savepoint:
/// the caller then runs the `UPDATE`).
pub async fn rewrite(conn: &mut PgConnection, table: &TableRules<'_>) -> Result<bool, sqlx::Error> {
    let Some(statement) = statement(conn, table).await? else {
        return Ok(false);
    };
    Ok(in_savepoint(conn, &statement).await?.is_ok())
}

/// Runs `statement` under a savepoint: `Ok(Err)` with the server's refusal, rolled back to it.
async fn in_savepoint(
    conn: &mut PgConnection,
    statement: &str,
) -> Result<Result<(), sqlx::Error>, sqlx::Error> {
    sqlx::raw_sql("SAVEPOINT envctl_mask_rewrite")
        .execute(&mut *conn)
        .await?;
    match sqlx::raw_sql(AssertSqlSafe(statement.to_owned()))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => {
            sqlx::raw_sql("RELEASE SAVEPOINT envctl_mask_rewrite")
                .execute(&mut *conn)
                .await?;
            Ok(Ok(()))
        }
        Err(e) => {
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT envctl_mask_rewrite")
                .execute(&mut *conn)
                .await?;
            Ok(Err(e))
        }
    }
}
