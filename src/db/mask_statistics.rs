//! The planner's statistics of a masked copy: a copy made whole (a template, an Aurora clone)
//! carries the source's `pg_statistic` and `pg_statistic_ext_data`, whose most common values and
//! histograms are the source's own values, readable by anyone who may read the column
//! (`pg_stats`, `pg_stats_ext`). A rewrite drops a masked column's statistics with its old
//! type; an `UPDATE`, or a masking file's changes, leave them as they were.
//!
//! So, in the masking's transaction, after the rules and files:
//! - every table whose rows the masking inserted, updated or deleted
//!   (`pg_stat_xact_user_tables`), and every table it inherits from (whose statistics cover its
//!   rows), is analyzed: `ANALYZE` samples the transaction's own rows, so the new statistics
//!   hold masked values only, its expression indexes' and extended statistics' with them;
//! - a masked table left with no rows, which `ANALYZE` leaves as it was, has its masked columns'
//!   statistics dropped by changing each column to its own type (no rewrite);
//!
//! and where either cannot be done, the masking fails: it is never committed with the source's
//! values readable.

use sqlx::{AssertSqlSafe, PgConnection};

use crate::sql::mask::TableRules;

/// Tables whose rows this transaction changed, and their ancestors, with whether the current
/// user may analyze them (their owner's or the database's privileges: PostgreSQL 15 skips any
/// other with a warning).
const CHANGED: &str = "WITH RECURSIVE changed(oid) AS (
        SELECT relid FROM pg_stat_xact_user_tables
         WHERE n_tup_ins + n_tup_upd + n_tup_del > 0
        UNION
        SELECT i.inhparent FROM pg_inherits i JOIN changed ch ON i.inhrelid = ch.oid)
    SELECT pg_catalog.quote_ident(n.nspname::text) || '.' || pg_catalog.quote_ident(c.relname::text),
           pg_has_role(c.relowner, 'USAGE')
             OR pg_has_role((SELECT datdba FROM pg_database
                              WHERE datname = current_database()), 'USAGE')
      FROM changed ch
      JOIN pg_class c ON c.oid = ch.oid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname <> 'envctl'
     ORDER BY 1";

/// Whether statistics hold values of the columns `$3` of the table `$1`.`$2`: the columns' own,
/// or those of an index or an extended statistics object that depends on them (what changing a
/// column's type rebuilds). Read through `pg_stats` and `pg_stats_ext`, which show a role that is
/// not a superuser the rows of what it may read.
const HELD: &str =
    "WITH t AS (SELECT to_regclass(quote_ident($1) || '.' || quote_ident($2))::oid AS oid),
    deps AS (
        SELECT DISTINCT d.classid, d.objid FROM pg_depend d, t
         WHERE d.refclassid = 'pg_class'::regclass::oid AND d.refobjid = t.oid
           AND d.refobjsubid IN (SELECT a.attnum FROM pg_attribute a
                                  WHERE a.attrelid = t.oid AND a.attname = ANY($3)))
    SELECT EXISTS (SELECT 1 FROM pg_stats
                    WHERE schemaname = $1 AND tablename = $2 AND attname = ANY($3))
        OR EXISTS (SELECT 1 FROM deps
                     JOIN pg_class i ON deps.classid = 'pg_class'::regclass::oid AND i.oid = deps.objid
                     JOIN pg_namespace n ON n.oid = i.relnamespace
                     JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = i.relname)
        OR EXISTS (SELECT 1 FROM deps
                     JOIN pg_statistic_ext e
                       ON deps.classid = 'pg_statistic_ext'::regclass::oid AND e.oid = deps.objid
                     JOIN pg_namespace n ON n.oid = e.stxnamespace
                     JOIN pg_stats_ext s
                       ON s.statistics_schemaname = n.nspname AND s.statistics_name = e.stxname)";

/// Why the statistics could not be made safe, for the masking's error.
pub struct Unsafe {
    pub table: String,
    pub message: String,
}

/// Analyzes what the masking changed and drops what an emptied masked table's statistics still
/// hold; `Err(Unsafe)` where it cannot (the caller fails the masking).
pub async fn refresh(
    conn: &mut PgConnection,
    tables: &[TableRules<'_>],
) -> Result<Result<(), Unsafe>, sqlx::Error> {
    for table in tables {
        if let Err(unsafe_) = clear_if_empty(conn, table).await? {
            return Ok(Err(unsafe_));
        }
    }
    let changed: Vec<(String, bool)> = sqlx::query_as(CHANGED).fetch_all(&mut *conn).await?;
    if let Some((table, _)) = changed.iter().find(|(_, may)| !may) {
        return Ok(Err(Unsafe {
            table: table.clone(),
            message: "they still hold the source's values, and only the table's owner or the \
                      database's may replace them (`ANALYZE`): make the master user the owner of \
                      the table, or of the database, in the source"
                .into(),
        }));
    }
    if !changed.is_empty() {
        let names: Vec<&str> = changed.iter().map(|(t, _)| t.as_str()).collect();
        sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", names.join(", "))))
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(()))
}

/// Whether statistics hold values of `table`'s masked columns ([`HELD`]).
async fn held(conn: &mut PgConnection, table: &TableRules<'_>) -> Result<bool, sqlx::Error> {
    let columns: Vec<&str> = table
        .rules
        .iter()
        .map(|r| r.column.column.as_str())
        .collect();
    sqlx::query_scalar(HELD)
        .bind(table.schema)
        .bind(table.table)
        .bind(&columns)
        .fetch_one(&mut *conn)
        .await
}

/// A masked table with no rows keeps whatever statistics it had (`ANALYZE` writes none from an
/// empty sample): each masked column is changed to its own type, which drops them.
async fn clear_if_empty(
    conn: &mut PgConnection,
    table: &TableRules<'_>,
) -> Result<Result<(), Unsafe>, sqlx::Error> {
    let qualified = table.qualified();
    let empty: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {qualified})"
    )))
    .fetch_one(&mut *conn)
    .await?;
    if !empty || !held(conn, table).await? {
        return Ok(Ok(()));
    }
    let refused = match super::mask_rewrite::retype_in_place(conn, table).await? {
        Ok(()) if !held(conn, table).await? => return Ok(Ok(())),
        Ok(()) => "changing its masked columns to their own types left statistics on it".into(),
        Err(reason) => reason,
    };
    Ok(Err(Unsafe {
        table: table.written(),
        message: format!(
            "the table has no rows, but they still hold values of its masked columns from when \
             it had some (`ANALYZE` writes none from an empty table), and envctl could not drop \
             them: {refused}. Analyze the table in the source while it has a row, or change the \
             column to its own type in a masking file"
        ),
    }))
}
