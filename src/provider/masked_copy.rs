//! A dump and restore that masks as it copies: while sessions hold the source, a data branch's
//! copy is `pg_dump | pg_restore` ([`super::copy`]), and masking it afterwards would write every
//! masked row a second time. Here the masked tables' rows never leave the source unmasked:
//!
//! 1. one read-only, repeatable-read transaction on the source sets this masking's key
//!    ([`MASK_KEY_SETTING`], transaction-local) and exports its snapshot;
//! 2. `pg_dump --snapshot` of the schema (`pre-data`), restored into the target;
//! 3. beside each other: `pg_dump --snapshot` of every table's data but the masked tables'
//!    (`--exclude-table-data`), restored, and per masked table `COPY (SELECT <each column, masked
//!    where a rule says>) TO STDOUT` in that transaction, streamed into `COPY … FROM STDIN` on the
//!    target (the restore alone leaves a CPU idle at times, which the masking fills);
//! 4. each masked table checked to hold exactly the rows its `COPY` took (rows the dump carried,
//!    a pattern that matched nothing, would be unmasked, and refuse the copy), then recorded in
//!    the target's `envctl.masked_in_copy` by its cluster id, the copy's `envctl:mask-id` and the
//!    `UPDATE` it stands for, which masking then skips (`db::mask` trusts only such rows, in a
//!    table of the master user's): the key, the rules and the record all belong to the one copy;
//! 5. `pg_dump --snapshot` of the rest (indexes, constraints, triggers), restored after the data,
//!    as `pg_restore` itself orders them.
//!
//! The three dumps start together: each reads the catalogs while the one before it restores,
//! then waits on its pipe.
//!
//! All or none: only when every masked table is plain ([`PLAIN_TABLE`],
//! so no trigger or rule of its own would have seen the `UPDATE`) and every keyed strategy writes
//! a string column; otherwise the copy is a plain dump and restore and masking runs as for any
//! copy, one key for all its rules either way, so joins on masked columns still match.

use futures_util::StreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, PgConnection};

use super::copy::{Admin, restore, start_dump};
use super::{BoxError, sql_failed};
use crate::model::{ClusterId, MaskRule};
use crate::sql::mask::{
    MASK_KEY_SETTING, MASKED_IN_COPY_DDL, PLAIN_TABLE, TableRules, by_table, expression,
    writes_as_update,
};
use crate::sql::{SqlError, quote_ident};

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
/// filtered by a policy silently (an error instead), and dates, intervals and floats travel in
/// forms that read back exactly.
const SESSION: &str = "SET row_security = off; SET DateStyle = ISO; \
    SET IntervalStyle = postgres; SET extra_float_digits = 3";

/// The copy of `table`, if it can be masked in the copy: a plain table whose masked columns all
/// exist, keyed strategies writing string columns.
async fn table_copy(
    source: &mut PgConnection,
    table: &TableRules<'_>,
) -> Result<Option<TableCopy>, sqlx::Error> {
    let qualified = format!("{}.{}", quote_ident(table.schema), quote_ident(table.table));
    let columns: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT a.attname::text, t.typcategory::text
           FROM pg_class c
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           JOIN pg_type t ON t.oid = a.atttypid
          WHERE c.oid = to_regclass($1) AND {PLAIN_TABLE}
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
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut from)
        .await
        .map_err(sql_failed)?;
    sqlx::raw_sql(SESSION)
        .execute(&mut from)
        .await
        .map_err(sql_failed)?;
    let mut copies = Vec::new();
    for table in &tables {
        match table_copy(&mut from, table).await.map_err(sql_failed)? {
            Some(copy) => copies.push(copy),
            None => return Ok(false),
        }
    }
    // The key lives in this transaction only (`is_local`), bound, never in the SQL text.
    let key: [u8; 32] = rand::random();
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(MASK_KEY_SETTING)
        .bind(hex::encode(key))
        .execute(&mut from)
        .await
        .map_err(sql_failed)?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut from)
        .await
        .map_err(sql_failed)?;
    let dump = |sections: &[&str], exclude: bool| -> Vec<String> {
        let mut args = vec![format!("--snapshot={snapshot}")];
        args.extend(sections.iter().map(|s| format!("--section={s}")));
        // The patterns are UTF-8: read the names in it too (else a name in another encoding
        // would match nothing, and the check after the data would refuse the copy).
        args.push("--encoding=UTF8".into());
        if exclude {
            args.extend(
                copies
                    .iter()
                    .map(|c| format!("--exclude-table-data={}", c.pattern)),
            );
        }
        args
    };
    // All three dumps start now: each reads the catalogs while the one before it restores, then
    // waits on its pipe.
    let pre_data = start_dump(admin, source, &dump(&["pre-data"], false))?;
    let data = start_dump(admin, source, &dump(&["data"], true))?;
    let post_data = start_dump(admin, source, &dump(&["post-data"], false))?;
    restore(admin, target, pre_data).await?;
    let mut to = (mask.connect)(target).connect().await.map_err(sql_failed)?;
    // The masked rows move beside the other tables' (the restore leaves a CPU idle at times;
    // the masking expression is the source's work, the COPY the target's).
    let (restored, copied) = tokio::join!(
        restore(admin, target, data),
        copy_masked_rows(&mut from, &mut to, &copies)
    );
    restored?;
    record_masked_rows(&mut to, mask, &copies, &copied?).await?;
    let _ = to.close().await;
    restore(admin, target, post_data).await?;
    let _ = from.close().await;
    Ok(true)
}

/// Streams each masked table's rows from `from` (in the snapshot's transaction) into `to`: how
/// many rows each took.
async fn copy_masked_rows(
    from: &mut PgConnection,
    to: &mut PgConnection,
    copies: &[TableCopy],
) -> Result<Vec<u64>, BoxError> {
    // COPY's text as pg_dump reads and writes it, whatever the database's defaults.
    sqlx::raw_sql(SESSION)
        .execute(&mut *to)
        .await
        .map_err(sql_failed)?;
    let mut counts = Vec::with_capacity(copies.len());
    for copy in copies {
        let failed = |e: sqlx::Error| -> BoxError {
            format!(
                "masking failed in the masking rule of {}: {} (in `{}`)",
                copy.columns,
                SqlError(e),
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
            Ok(()) => counts.push(sink.finish().await.map_err(failed)?),
            Err(e) => {
                let _ = sink
                    .abort("envctl: the masked rows could not be read")
                    .await;
                return Err(failed(e));
            }
        }
    }
    Ok(counts)
}

/// Once the other tables' rows are in, checks that each masked table holds exactly the rows its
/// `COPY` took (the dump left its rows out: its pattern matched; else they would be there,
/// unmasked, and are refused), then records each in `to`'s `envctl.masked_in_copy`.
async fn record_masked_rows(
    to: &mut PgConnection,
    mask: &MaskInCopy<'_>,
    copies: &[TableCopy],
    counts: &[u64],
) -> Result<(), BoxError> {
    for (copy, &count) in copies.iter().zip(counts) {
        let held: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM ONLY {}",
            copy.qualified
        )))
        .fetch_one(&mut *to)
        .await
        .map_err(sql_failed)?;
        if u64::try_from(held).ok() != Some(count) {
            return Err(format!(
                "the copy of {} holds {held} rows, {count} of them masked as they were copied: \
                 the others came with the dump, unmasked (the table's own rows, or rows a \
                 function the restore ran wrote there), so the copy is not handed out; apply \
                 again, and if it recurs, report it",
                copy.qualified
            )
            .into());
        }
    }
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
    for copy in copies {
        sqlx::query(
            "INSERT INTO envctl.masked_in_copy (cluster_id, mask_id, statement) VALUES ($1, $2, $3)",
        )
        .bind(mask.cluster_id.as_str())
        .bind(mask.mask_id)
        .bind(&copy.update)
        .execute(&mut *to)
        .await
        .map_err(sql_failed)?;
    }
    Ok(())
}
