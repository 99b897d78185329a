//! Masking a data branch's copy: the spec's rules as SQL (one statement per table, every name
//! quoted, every literal a literal: a column path never reaches SQL as text; a plain table is
//! rewritten, [`super::mask_rewrite`], any other updated), then its masking
//! files, in one transaction on the copy, as the master user, recorded in `envctl.masking` with
//! the copy's own cluster id so that it happens exactly once in effect: a rerun after a crash
//! either finds the record (masking committed) or masks again (nothing of it committed).
//!
//! The record is keyed by cluster id because a copy carries its source's `envctl` schema: a
//! source that is itself a masked copy has a record of its own id, not of this one. Records count
//! only in ordinary tables of the master user's: an `envctl.masking` that is not one fails the
//! masking (a record envctl did not write could say it is done), and tables recorded in this
//! database's `envctl.masked_in_copy` (masked as they were copied,
//! on the local provider) are skipped; a record counts only if it carries the copy's
//! `envctl:mask-id`, made with the copy and kept in its tags, which no source's data can carry.
//!
//! `hash`, `email` and `name` are keyed: every digest is `md5(key || value)` with a key of 244
//! random bits made on the server for this masking alone ([`SET_MASK_KEY`], a transaction-local
//! setting: never sent over the wire, stored or logged, gone at commit). Within one copy a value
//! always masks the same way (joins on masked columns still match); nobody holding the copy can
//! test a guess (is `alice@example.com` a customer?) or brute-force a short value by hashing it.

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

use super::{DbError, locate};
use crate::model::{ClusterId, ColumnPath, DataSource, MaskRule};
use crate::sql::mask::{SET_MASK_KEY, TableRules, by_table};
use crate::sql::without_values;

/// How masking ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Masked {
    /// Masked now.
    Now,
    /// A committed masking of this copy was found: nothing to do.
    Already,
}

/// An SQL condition on `c` (a `pg_class` row): an ordinary table of the current user's, as
/// envctl's records are (a view or someone else's table is not a record envctl wrote).
const OURS: &str =
    "c.relkind = 'r' AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)";

const MASKING_DDL: &str = "\
CREATE SCHEMA IF NOT EXISTS envctl;
CREATE TABLE IF NOT EXISTS envctl.masking (
    cluster_id text PRIMARY KEY,
    digest     text NOT NULL,
    masked_at  timestamptz NOT NULL DEFAULT now(),
    mask_id    text
);";

/// Makes envctl's masking record where there is none, refuses one envctl did not make (a table
/// someone else created first, in the source, say, could say masking is done when it is not),
/// and gives one made before mask ids its column.
async fn prepare_record(conn: &mut PgConnection) -> Result<(), DbError> {
    let setup = |e| DbError::MaskFailed {
        what: "envctl's masking record".into(),
        line: None,
        message: without_values(&e),
    };
    sqlx::raw_sql(MASKING_DDL)
        .execute(&mut *conn)
        .await
        .map_err(setup)?;
    let ours: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT {OURS} FROM pg_class c WHERE c.oid = 'envctl.masking'::regclass::oid"
    )))
    .fetch_one(&mut *conn)
    .await
    .map_err(setup)?;
    if !ours {
        return Err(DbError::MaskFailed {
            what: "envctl's masking record".into(),
            line: None,
            message:
                "`envctl.masking` is not a table of the master user's, who makes it: a record \
                      envctl did not write could say masking is done when it is not; drop it in \
                      the source this copy was made from, then destroy this copy and apply again"
                    .into(),
        });
    }
    // A record made by an envctl before `mask_id` has none (and is never taken as said).
    sqlx::raw_sql("ALTER TABLE envctl.masking ADD COLUMN IF NOT EXISTS mask_id text")
        .execute(&mut *conn)
        .await
        .map_err(setup)?;
    Ok(())
}

/// Masks the copy `id` on `conn` (the master user's): the rules, then the files, and the record,
/// in one transaction. A statement that fails rolls everything back and names itself. `mask_id`
/// is the copy's `envctl:mask-id`: only a record that carries it says masking is done (`None`,
/// a copy made before envctl made one: masked again).
pub async fn mask(
    conn: &mut PgConnection,
    id: &ClusterId,
    data: &DataSource,
    mask_id: Option<&str>,
) -> Result<Masked, DbError> {
    let setup = |e| DbError::MaskFailed {
        what: "envctl's masking record".into(),
        line: None,
        message: without_values(&e),
    };
    crate::sql::mask::prepare_session(conn)
        .await
        .map_err(|e| DbError::MaskFailed {
            what: "the masking session's settings".into(),
            line: None,
            message: without_values(&e),
        })?;
    prepare_record(conn).await?;
    let mut tx = conn.begin().await.map_err(setup)?;
    // Two applies of one branch at once: the second waits here, then finds the record.
    sqlx::query("LOCK TABLE envctl.masking IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .map_err(setup)?;
    // The copy's own record: one the source's data carried along (or a forged one) lacks the id
    // made with this copy, which lives in its tags, not in any database. A record of other rules
    // or files (changed between a masking that committed and the apply that would have said
    // so) does not count: the copy is masked again, with these (masked values mask to masked
    // values; a rule added since is applied).
    let done: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM envctl.masking
                         WHERE cluster_id::text = $1::text AND mask_id::text = $2::text
                           AND digest::text = $3::text)",
    )
    .bind(id.as_str())
    .bind(mask_id)
    .bind(data.mask_digest())
    .fetch_one(&mut *tx)
    .await
    .map_err(setup)?;
    if done {
        tx.commit().await.map_err(setup)?;
        return Ok(Masked::Already);
    }
    // The key is made on the server and lives in this transaction only (`is_local`).
    sqlx::raw_sql(SET_MASK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(setup)?;
    super::mask_rewrite::raise_maintenance_memory(&mut tx)
        .await
        .map_err(setup)?;
    let in_copy = masked_in_copy(&mut tx, id, mask_id).await.map_err(setup)?;
    let began = super::mask_checks::transaction_id(&mut tx)
        .await
        .map_err(setup)?;
    sqlx::raw_sql(super::mask_checks::NO_HIDDEN_ROWS)
        .execute(&mut *tx)
        .await
        .map_err(setup)?;
    let tables = by_table(&data.rules);
    for table in &tables {
        mask_table(&mut tx, table, &in_copy).await?;
    }
    run_files(&mut tx, data).await?;
    // A file may have changed the path: envctl's statements that follow find PostgreSQL's own.
    crate::sql::mask::prepare_session(&mut tx)
        .await
        .map_err(setup)?;
    // A file that ended the transaction (and began another) would have the record say masked
    // what was rolled back.
    if super::mask_checks::transaction_id(&mut tx)
        .await
        .map_err(setup)?
        != began
    {
        return Err(DbError::MaskFailed {
            what: "the masking files".into(),
            line: None,
            message: "a masking file ended envctl's transaction (a COMMIT or ROLLBACK), so what \
                      the rules and files did before it is not what would be recorded; remove it"
                .into(),
        });
    }
    // The source's values in the planner's statistics go with its rows.
    if let Err(unsafe_) = super::mask_statistics::refresh(&mut tx, &tables)
        .await
        .map_err(|e| DbError::MaskFailed {
            what: "the planner's statistics of the masked tables".into(),
            line: None,
            // Its detail names what depends on a column (a view), never a row.
            message: crate::sql::SqlError(e).to_string(),
        })?
    {
        return Err(DbError::MaskFailed {
            what: format!("the planner's statistics of {}", unsafe_.table),
            line: None,
            message: unsafe_.message,
        });
    }
    // Rows for this id that are not this copy's go: the record is this copy's alone.
    sqlx::query("DELETE FROM envctl.masking WHERE cluster_id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(setup)?;
    sqlx::query("INSERT INTO envctl.masking (cluster_id, digest, mask_id) VALUES ($1, $2, $3)")
        .bind(id.as_str())
        .bind(data.mask_digest())
        .bind(mask_id)
        .execute(&mut *tx)
        .await
        .map_err(setup)?;
    tx.commit().await.map_err(setup)?;
    Ok(Masked::Now)
}

/// Masks one table: skipped when the copy masked it as it copied, rewritten when it is plain,
/// else updated and then checked row by row; refused when it is not a table of this database.
async fn mask_table(
    tx: &mut PgConnection,
    table: &TableRules<'_>,
    in_copy: &std::collections::BTreeSet<String>,
) -> Result<(), DbError> {
    let failed = |message: String| DbError::MaskFailed {
        what: format!("the masking rule of {}", table.columns()),
        line: None,
        message,
    };
    let statement = table.update();
    // Masked as it was copied, by these very rules (the local provider's masked copy).
    if in_copy.contains(&statement) {
        return Ok(());
    }
    // The server's detail may quote a row, and the rows are the source's until masking commits.
    let sql_failed = |e| {
        failed(format!(
            "{} (in `{statement}`)",
            crate::sql::without_values(&e)
        ))
    };
    if let Some(refused) = super::mask_checks::refused_target(tx, table)
        .await
        .map_err(sql_failed)?
    {
        return Err(failed(refused));
    }
    // A plain table is rewritten (a new file, written once); any other is updated.
    if super::mask_rewrite::rewrite(tx, table)
        .await
        .map_err(sql_failed)?
    {
        return Ok(());
    }
    sqlx::raw_sql(AssertSqlSafe(statement.clone()))
        .execute(&mut *tx)
        .await
        .map_err(sql_failed)?;
    let left = super::mask_checks::rows_left_unmasked(tx, table)
        .await
        .map_err(sql_failed)?;
    if !left.unchecked.is_empty() {
        return Err(failed(format!(
            "{} {} of a type that takes the rule's text its own way (an assignment cast \
             outside the string types), so what `{statement}` left in {} cannot be checked, and \
             {} is not a plain table that envctl rewrites: mask {} with `null` or `fixed:`, or \
             in a masking file",
            left.unchecked.join(", "),
            if left.unchecked.len() == 1 {
                "is"
            } else {
                "are"
            },
            if left.unchecked.len() == 1 {
                "it"
            } else {
                "them"
            },
            table.written(),
            if left.unchecked.len() == 1 {
                "it"
            } else {
                "them"
            },
        )));
    }
    let left = left.rows;
    if left > 0 {
        return Err(failed(format!(
            "{left} row{} of {} still {} other values than the rules write after `{statement}`: \
             a rule on the table (`DO INSTEAD`) or a trigger (returning `OLD` or `NULL`, or \
             changing the row) kept the masked values from being written; drop or disable it in \
             the source, or in a masking file",
            if left == 1 { "" } else { "s" },
            table.written(),
            if left == 1 { "holds" } else { "hold" },
        )));
    }
    Ok(())
}

/// The masking files, in order, each lexed as its lint lexed it.
async fn run_files(tx: &mut PgConnection, data: &DataSource) -> Result<(), DbError> {
    for file in data.files.iter() {
        sqlx::raw_sql(super::mask_checks::LEXING_RESET)
            .execute(&mut *tx)
            .await
            .map_err(|e| DbError::MaskFailed {
                what: format!("masking file `{}`", file.path),
                line: None,
                message: without_values(&e),
            })?;
        sqlx::raw_sql(AssertSqlSafe(file.sql.to_string()))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                let (line, message) = locate(&e, &file.sql);
                DbError::MaskFailed {
                    what: format!("masking file `{}`", file.path),
                    line,
                    message,
                }
            })?;
    }
    Ok(())
}

/// The `UPDATE`s the copy `id` stood for when it was made, masking as it copied: none when it
/// was not made that way. Only a record this copy made counts: an ordinary table of the master
/// user's, its rows for this id and this copy's `mask_id`.
async fn masked_in_copy(
    conn: &mut PgConnection,
    id: &ClusterId,
    mask_id: Option<&str>,
) -> Result<std::collections::BTreeSet<String>, sqlx::Error> {
    let recorded: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM pg_class c
                         WHERE c.oid = to_regclass('envctl.masked_in_copy')::oid AND {OURS})"
    )))
    .fetch_one(&mut *conn)
    .await?;
    let Some(mask_id) = mask_id.filter(|_| recorded) else {
        return Ok(Default::default());
    };
    // This copy's rows: a row carried over from a source, or from an earlier copy of this id,
    // lacks the id made with this copy.
    let statements: Vec<String> = sqlx::query_scalar(
        "SELECT statement FROM envctl.masked_in_copy WHERE cluster_id = $1 AND mask_id = $2",
    )
    .bind(id.as_str())
    .bind(mask_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(statements.into_iter().collect())
}

/// The column paths a rule set names, for messages.
pub fn columns(rules: &[MaskRule]) -> Vec<&ColumnPath> {
    rules.iter().map(|r| &r.column).collect()
}
