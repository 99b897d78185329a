//! A dump and restore that masks as it copies: while sessions hold the source, a data branch's
//! copy is `pg_dump | pg_restore` ([`super::copy`]), and masking it afterwards would write every
//! masked row a second time. Here the masked tables' rows never leave the source unmasked:
//!
//! 1. one read-only, repeatable-read transaction on the source sets this masking's key
//!    ([`SET_MASK_KEY`], made on the server, transaction-local) and exports its snapshot;
//! 2. `pg_dump --snapshot` of the schema and of every table's data but the masked tables'
//!    (`--exclude-table-data`), restored into the target;
//! 3. per masked table, `COPY (SELECT <each column, masked where a rule says>) TO STDOUT` in that
//!    transaction, streamed into `COPY … FROM STDIN` on the target, then recorded in the target's
//!    `envctl.masked_in_copy` by its cluster id, the copy's `envctl:mask-id` and the `UPDATE` it
//!    stands for, which masking then skips (`db::mask` trusts only such rows, in a table
//!    of the master user's): the key, the rules and the record all belong to the one copy;
//! 4. `pg_dump --snapshot` of the rest (indexes, constraints, triggers), restored after the data,
//!    as `pg_restore` itself orders them (started with the first dump: it reads the catalogs
//!    meanwhile, then waits on its pipe).
//!
//! Before each table's rows go in, the table is checked empty: rows the dump carried (a pattern
//! that matched nothing) would be unmasked, and refuse the copy.
//!
//! All or none: only when every masked table is plain ([`PLAIN_TABLE`],
//! so no trigger or rule of its own would have seen the `UPDATE`) and every keyed strategy writes
//! a string column; otherwise the copy is a plain dump and restore and masking runs as for any
//! copy, one key for all its rules either way, so joins on masked columns still match.

use futures_util::StreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, PgConnection};

use super::copy::{Admin, Restore, pipe_dump, restore, restore_wanted, start_dump};
use super::{BoxError, sql_failed};
use crate::model::{ClusterId, MaskRule};
use crate::sql::mask::{
    MASKED_IN_COPY_DDL, PLAIN_TABLE, SET_MASK_KEY, TableRules, by_table, expression,
    writes_as_update,
};
use crate::sql::{SqlError, quote_ident, without_values};

/// What masking in the copy needs: whose copy it is, its rules, and how to reach a database of
/// the server as its admin.
pub struct MaskInCopy<'a> {
    pub cluster_id: &'a ClusterId,
    /// The copy's `envctl:mask-id`, which its records carry.
    pub mask_id: &'a str,
    pub rules: &'a [MaskRule],
    pub connect: &'a (dyn Fn(&str) -> PgConnectOptions + Send + Sync),
}

/// How many bytes of a masked table's rows go to the target in one message.
const COPY_BATCH: usize = 256 << 10;

/// One masked table's copy.
struct TableCopy {
    /// Its masking rules' columns, for messages.
    columns: String,
    /// `"schema"."table"` as a pattern for `pg_dump --exclude-table-data`.
    pattern: String,
    /// The masked rows, read on the source.
    select: String,
    /// `COPY … FROM STDIN` on the target.
    copy_in: String,
    /// The `UPDATE` it stands for (the record).
    update: String,
    /// `"schema"."table"`.
    qualified: String,
}

/// Settings for both ends of a masked table's `COPY`, as pg_dump sets them: rows are never
/// filtered by a policy silently (an error instead), dates, intervals and floats travel in
/// forms that read back exactly. Both sessions were prepared first
/// ([`crate::sql::mask::prepare_session`]: PostgreSQL's own functions, literals as written).
const SESSION: &str = "SET row_security = off; SET DateStyle = ISO; \
    SET IntervalStyle = postgres; SET extra_float_digits = 3";

/// The copy of `table`, if it can be masked in the copy: a plain table whose masked columns all
/// exist, keyed strategies writing string columns.
async fn table_copy(
    source: &mut PgConnection,
    table: &TableRules<'_>,
) -> Result<Option<TableCopy>, sqlx::Error> {
    let qualified = table.qualified();
    let columns: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT a.attname::text, t.typcategory::text
           FROM pg_class c
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           JOIN pg_type t ON t.oid = a.atttypid
          WHERE c.oid = to_regclass($1)::oid AND {PLAIN_TABLE}
          ORDER BY a.attnum"
    )))
    .bind(&qualified)
    .fetch_all(&mut *source)
    .await?;
    let mut select = Vec::new();
    for (name, _) in &columns {
        let column = quote_ident(name);
        match table.rules.iter().find(|r| &r.column.column == name) {
            Some(rule) => select.push(expression(&column, &rule.strategy)),
            None => select.push(column),
        }
    }
    for rule in &table.rules {
        let Some((_, category)) = columns.iter().find(|(n, _)| n == &rule.column.column) else {
            return Ok(None);
        };
        if !writes_as_update(&rule.strategy, category) {
            return Ok(None);
        }
    }
    let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
    Ok(Some(TableCopy {
        columns: table.columns(),
        // Quoted, each part is an exact pattern for `pg_dump`: nothing in it is a wildcard.
        pattern: qualified.clone(),
        select: format!(
            "COPY (SELECT {} FROM ONLY {qualified}) TO STDOUT",
            select.join(", ")
        ),
        copy_in: format!("COPY {qualified} ({}) FROM STDIN", names.join(", ")),
        update: table.update(),
        qualified,
    }))
}

/// Copies `source` into `target` (an empty database) masking as it copies: `Ok(false)`, having
/// changed nothing, when the rules cannot all be applied that way (the caller then copies it
/// plainly and masking runs after).
pub async fn dump_and_restore_masked(
    admin: &Admin<'_>,
    source: &str,
    target: &str,
    mask: &MaskInCopy<'_>,
) -> Result<bool, BoxError> {
    let tables = by_table(mask.rules);
    if tables.is_empty() {
        return Ok(false);
    }
    let mut from = (mask.connect)(source)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the source `{source}`: {}", SqlError(e)))?;
    crate::sql::mask::prepare_session(&mut from)
        .await
        .map_err(sql_failed)?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut from)
        .await
        .map_err(sql_failed)?;
    sqlx::raw_sql(SESSION)
        .execute(&mut from)
        .await
        .map_err(sql_failed)?;
    // A session holding a masked table's lock in the source fails the copy in time, as it
    // fails pg_dump (`--lock-wait-timeout`).
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET lock_timeout = {}",
        admin.lock_wait.as_millis().max(1)
    )))
    .execute(&mut from)
    .await
    .map_err(sql_failed)?;
    let how = restore_wanted(&mut from).await.map_err(sql_failed)?;
    let mut copies = Vec::new();
    for table in &tables {
        match table_copy(&mut from, table).await.map_err(sql_failed)? {
            Some(copy) => copies.push(copy),
            None => return Ok(false),
        }
    }
    // The key is made on the server and lives in this transaction only (`is_local`).
    sqlx::raw_sql(SET_MASK_KEY)
        .execute(&mut from)
        .await
        .map_err(sql_failed)?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut from)
        .await
        .map_err(sql_failed)?;
    let mut args = vec![
        format!("--snapshot={snapshot}"),
        "--section=pre-data".into(),
        "--section=data".into(),
        // The patterns are UTF-8: read the names in it too (else a name in another encoding
        // would match nothing, and the check before each COPY would refuse the copy).
        "--encoding=UTF8".into(),
        // A source's own record (a copy itself, or a table its user made under that name, with
        // triggers that would fire as the admin) says nothing of this copy: the copy's is
        // made anew.
        format!("--exclude-table={RECORD_TABLE}"),
    ];
    args.extend(
        copies
            .iter()
            .map(|c| format!("--exclude-table-data={}", c.pattern)),
    );
    // The rest's dump starts now, beside the data's: it reads the catalogs while the rows move,
    // then waits on its pipe until they are in.
    let post_data = [
        format!("--snapshot={snapshot}"),
        "--section=post-data".into(),
        "--encoding=UTF8".into(),
        format!("--exclude-table={RECORD_TABLE}"),
    ];
    let post_data = start_dump(admin, source, &post_data)?;
    pipe_dump(admin, source, target, &args, how).await?;
    let mut to = (mask.connect)(target).connect().await.map_err(sql_failed)?;
    crate::sql::mask::prepare_session(&mut to)
        .await
        .map_err(sql_failed)?;
    copy_masked_rows(&mut from, &mut to, mask, &copies, how).await?;
    let _ = to.close().await;
    restore(admin, target, post_data, Restore::PerStatement).await?;
    let _ = from.close().await;
    Ok(true)
}

/// The copy's record of what it masked as it copied (`pg_dump`'s pattern for it).
const RECORD_TABLE: &str = "envctl.masked_in_copy";

/// Streams each masked table's rows from `from` (in the snapshot's transaction) into `to`, and
/// records each there. With [`Restore::OneTransaction`] (a server that skips the write-ahead log
/// for a table emptied in the same transaction), each table's rows go in within a transaction
/// that first empties it, where the admin may.
async fn copy_masked_rows(
    from: &mut PgConnection,
    to: &mut PgConnection,
    mask: &MaskInCopy<'_>,
    copies: &[TableCopy],
    how: Restore,
) -> Result<(), BoxError> {
    sqlx::raw_sql(MASKED_IN_COPY_DDL)
        .execute(&mut *to)
        .await
        .map_err(sql_failed)?;
    // Only this copy says what it masked (a source's rows for this id are not taken as said).
    sqlx::query("DELETE FROM envctl.masked_in_copy WHERE cluster_id = $1")
        .bind(mask.cluster_id.as_str())
        .execute(&mut *to)
        .await
        .map_err(sql_failed)?;
    // COPY's text as pg_dump reads and writes it, whatever the database's defaults.
    sqlx::raw_sql(SESSION)
        .execute(&mut *to)
        .await
        .map_err(sql_failed)?;
    for copy in copies {
        // The dump left this table's rows out (its pattern matched): else they would be here,
        // unmasked, and are refused.
        if how == Restore::OneTransaction {
            sqlx::raw_sql("BEGIN")
                .execute(&mut *to)
                .await
                .map_err(sql_failed)?;
        }
        let (carried, may_truncate): (bool, bool) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM ONLY {}), has_table_privilege($1, 'TRUNCATE')",
            copy.qualified
        )))
        .bind(&copy.qualified)
        .fetch_one(&mut *to)
        .await
        .map_err(sql_failed)?;
        if carried {
            return Err(format!(
                "{} held rows before its rows were copied masked: they came with the dump, \
                 unmasked (the table's own rows, or rows a function the restore ran wrote \
                 there), so the copy is not handed out; apply again, and if it recurs, report it",
                copy.qualified
            )
            .into());
        }
        if how == Restore::OneTransaction && may_truncate {
            // Empty already (checked above): its new file is this transaction's, so the rows
            // written into it are not logged.
            sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE ONLY {}", copy.qualified)))
                .execute(&mut *to)
                .await
                .map_err(sql_failed)?;
        }
        let failed = |e: sqlx::Error| -> BoxError {
            format!(
                "masking failed in the masking rule of {}: {} (in `{}`)",
                copy.columns,
                without_values(&e),
                copy.select
            )
            .into()
        };
        let mut sink = to.copy_in_raw(&copy.copy_in).await.map_err(failed)?;
        let mut rows = from.copy_out_raw(&copy.select).await.map_err(failed)?;
        // The server sends a message per row, and each send is a write of its own: rows go on
        // in batches (COPY's data may be split anywhere), a write per batch, not per row.
        let mut batch = Vec::with_capacity(COPY_BATCH);
        let mut result = Ok(());
        while let Some(chunk) = rows.next().await {
            let sent = async {
                batch.extend_from_slice(&chunk?);
                if batch.len() >= COPY_BATCH {
                    sink.send(batch.as_slice()).await?;
                    batch.clear();
                }
                Ok(())
            };
            if let Err(e) = sent.await {
                result = Err(e);
                break;
            }
        }
        drop(rows);
        if result.is_ok() && !batch.is_empty() {
            result = sink.send(batch.as_slice()).await.map(|_| ());
        }
        match result {
            Ok(()) => {
                sink.finish().await.map_err(failed)?;
            }
            Err(e) => {
                let _ = sink
                    .abort("envctl: the masked rows could not be read")
                    .await;
                return Err(failed(e));
            }
        }
        sqlx::query(
            "INSERT INTO envctl.masked_in_copy (cluster_id, mask_id, statement) VALUES ($1, $2, $3)",
        )
        .bind(mask.cluster_id.as_str())
        .bind(mask.mask_id)
        .bind(&copy.update)
        .execute(&mut *to)
        .await
        .map_err(sql_failed)?;
        if how == Restore::OneTransaction {
            sqlx::raw_sql("COMMIT")
                .execute(&mut *to)
                .await
                .map_err(sql_failed)?;
        }
    }
    Ok(())
}
