//! Migrations, seeds and the ledger, over one sqlx connection to an environment's database.
//!
//! The ledger lives in schema `envctl`: `envctl.migrations` (version, name, checksum, sql,
//! applied_at) and `envctl.seeds` (path, checksum, applied_at). [`lock`] takes a per-database
//! advisory lock and gives a [`Locked`] session: under it, [`Locked::converge`] re-reads the
//! ledger (another apply may have run meanwhile), resets if asked, runs each pending migration in
//! its own transaction with its ledger row (or, for `-- envctl:no-transaction` files, outside one
//! with the row written after), and runs changed seeds in a transaction with their row. Session
//! state a step sets (`SET search_path`, `SET ROLE`) is reset before the next one. The caller
//! writes the ledger tags from [`Locked::ledger`] while still holding the lock, so tags never say
//! more than the ledger. Provider-independent: the local and AWS providers share it.

pub mod catalog;
pub mod mask;
pub mod mask_checks;
pub mod mask_rewrite;
pub mod mask_statistics;

use std::time::{Duration, Instant};

use sqlx::postgres::PgDatabaseError;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};

use crate::cancel::Cancel;
use crate::model::{AppliedMigration, AppliedSeed, DesiredEnv, Ledger, Migration, Seed};
use crate::sql::{Connection, SqlError, quote_ident};

/// Key of the advisory lock held while migrating (advisory locks are per database).
pub const LOCK_KEY: i64 = 0x656e_7663_746c; // "envctl"

const LEDGER_DDL: &str = "\
CREATE SCHEMA IF NOT EXISTS envctl;
CREATE TABLE IF NOT EXISTS envctl.migrations (
    version    bigint PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    sql        text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS envctl.seeds (
    path       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (path, checksum)
);
DO $$
BEGIN
    -- The ledger reader (made on AWS environments) reads the ledger and nothing else.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'envctl_reader') THEN
        GRANT USAGE ON SCHEMA envctl TO envctl_reader;
        GRANT SELECT ON envctl.migrations, envctl.seeds TO envctl_reader;
    END IF;
END
$$;";

/// Database work that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Opening a connection failed.
    #[error("cannot connect to `{database}` on {host}:{port} as `{user}`")]
    ConnectFailed {
        host: String,
        port: u16,
        database: String,
        user: String,
        #[source]
        source: SqlError,
    },
    /// Opening a connection took longer than the wait timeout.
    #[error(
        "cannot connect to `{database}` on {host}:{port} as `{user}`: no answer within {}",
        crate::model::duration_text(*waited)
    )]
    ConnectTimedOut {
        host: String,
        port: u16,
        database: String,
        user: String,
        waited: Duration,
    },
    /// Reading the ledger failed.
    #[error("cannot read the ledger (schema `envctl`)")]
    ReadLedgerFailed(#[source] SqlError),
    /// Taking the advisory lock failed.
    #[error("cannot lock the database for migrating")]
    LockFailed(#[source] SqlError),
    /// Another envctl held the lock for longer than the wait timeout.
    #[error(
        "another envctl has been migrating this database for over {}; nothing was changed",
        crate::model::duration_text(*waited)
    )]
    LockTimedOut { waited: Duration },
    /// Creating the ledger schema and tables failed.
    #[error("cannot create the ledger (schema `envctl`)")]
    LedgerSetupFailed(#[source] SqlError),
    /// A migration failed; nothing of it stays applied (unless it ran outside a transaction).
    #[error("migration `{path}` failed{}: {message}", at_line(*line))]
    MigrationFailed {
        path: String,
        line: Option<usize>,
        message: String,
    },
    /// A seed failed; nothing of it stays applied.
    #[error("seed `{path}` failed{}: {message}", at_line(*line))]
    SeedFailed {
        path: String,
        line: Option<usize>,
        message: String,
    },
    /// Masking a data branch's copy failed; nothing of it stays applied.
    #[error("masking failed in {what}{}: {message}", at_line(*line))]
    MaskFailed {
        what: String,
        line: Option<usize>,
        message: String,
    },
    /// Resetting session state after a step failed.
    #[error("cannot reset the session after `{path}`")]
    SessionResetFailed {
        path: String,
        #[source]
        source: SqlError,
    },
    /// Emptying the database for a reset failed.
    #[error("cannot reset the database")]
    ResetFailed(#[source] SqlError),
    /// The ledger changed since the plan was made in a way that needs a reset.
    #[error(
        "the migration history diverged since the plan was made ({0}); run `envctl plan` again"
    )]
    DivergedSincePlan(String),
    /// Reading the schema from the catalogs failed (`envctl diff`).
    #[error("cannot read {what} of the database")]
    ReadCatalogFailed {
        what: &'static str,
        #[source]
        source: SqlError,
    },
    /// A signal stopped the work between two steps.
    #[error("interrupted before all migrations and seeds ran")]
    Interrupted,
    /// A signal ended the wait to connect (a wait ends at once on the first signal).
    #[error("stopped waiting to connect to {host}:{port} (database `{database}`) on a signal")]
    ConnectInterrupted {
        host: String,
        port: u16,
        database: String,
    },
}

impl DbError {
    /// A connection refused because its database does not exist (SQLSTATE 3D000).
    pub fn is_missing_database(&self) -> bool {
        matches!(self, DbError::ConnectFailed { source, .. } if source.code().as_deref() == Some("3D000"))
    }

    /// A login refused (no such role, a wrong password or token: SQLSTATE 28000, 28P01), or a
    /// ledger this login may not read (42501): another login may do.
    pub fn is_refused(&self) -> bool {
        let code = match self {
            DbError::ConnectFailed { source, .. } | DbError::ReadLedgerFailed(source) => {
                source.code()
            }
            _ => None,
        };
        matches!(code.as_deref(), Some("28000" | "28P01" | "42501"))
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

/// Opens a connection for database work, giving up after `timeout`.
pub async fn connect(connection: &Connection, timeout: Duration) -> Result<PgConnection, DbError> {
    let options = crate::sql::own_session(&connection.options);
    let attempt = PgConnection::connect_with(&options);
    // A wait ends at once on the first signal (a server that takes the connection and never
    // answers would otherwise hold it for the whole timeout).
    let cancel = crate::cancel::Cancel::process();
    let Some(connected) = cancel
        .or_signal(tokio::time::timeout(timeout, attempt))
        .await
    else {
        return Err(DbError::ConnectInterrupted {
            host: connection.host.clone(),
            port: connection.port,
            database: connection.database.clone(),
        });
    };
    match connected {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(DbError::ConnectFailed {
            host: connection.host.clone(),
            port: connection.port,
            database: connection.database.clone(),
            user: connection.user.clone(),
            source: SqlError(source),
        }),
        Err(_) => Err(DbError::ConnectTimedOut {
            host: connection.host.clone(),
            port: connection.port,
            database: connection.database.clone(),
            user: connection.user.clone(),
            waited: timeout,
        }),
    }
}

/// Reads the ledger; an empty one when the `envctl` schema does not exist yet.
/// Which of `columns` the database has (a column of a table, view or other relation, not
/// dropped), read from pg_catalog alone: any login may, whatever its privileges.
pub async fn present_columns(
    conn: &mut PgConnection,
    columns: &[crate::model::ColumnPath],
) -> Result<std::collections::BTreeSet<crate::model::ColumnPath>, DbError> {
    let part = |f: fn(&crate::model::ColumnPath) -> &String| -> Vec<String> {
        columns.iter().map(|c| f(c).clone()).collect()
    };
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.s, c.t, c.col FROM ROWS FROM (pg_catalog.unnest($1::text[]), \
         pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS c (s, t, col) \
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) c.s AND r.relname OPERATOR(pg_catalog.=) c.t \
         AND a.attname OPERATOR(pg_catalog.=) c.col AND a.attnum OPERATOR(pg_catalog.>) 0 \
         AND NOT a.attisdropped)",
    )
    .bind(part(|c| &c.schema))
    .bind(part(|c| &c.table))
    .bind(part(|c| &c.column))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| DbError::ReadLedgerFailed(SqlError(e)))?;
    Ok(rows
        .into_iter()
        .map(|(schema, table, column)| crate::model::ColumnPath {
            schema,
            table,
            column,
        })
        .collect())
}

pub async fn read_ledger(conn: &mut PgConnection) -> Result<Ledger, DbError> {
    // Each ledger relation and its kind (`r`, a table), named by pg_catalog's own functions.
    let kinds: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT r.name, (SELECT c.relkind::text FROM pg_catalog.pg_class c \
         WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(r.name)) \
         FROM (VALUES ('envctl.migrations'::text), ('envctl.seeds'::text)) AS r (name)",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| DbError::ReadLedgerFailed(SqlError(e)))?;
    if kinds.iter().any(|(_, kind)| kind.is_none()) {
        return Ok(Ledger::default());
    }
    // A view (or anything but a table) in its place would run its own code as whoever reads
    // the ledger (an admin, on the local provider).
    if let Some((name, kind)) = kinds.iter().find(|(_, kind)| kind.as_deref() != Some("r")) {
        return Err(DbError::ReadLedgerFailed(SqlError(sqlx::Error::Protocol(
            format!(
                "{name} is not a table (pg_class.relkind `{}`): the ledger was altered, and envctl does not read it",
                kind.as_deref().unwrap_or_default()
            ),
        ))));
    }
    // Every value is checked: a ledger someone altered (a column's type, a NULL, a negative
    // version) is unreadable, which blocks this environment only, and never panics.
    let failed = |e: sqlx::Error| DbError::ReadLedgerFailed(SqlError(e));
    let mut migrations = Vec::new();
    for row in
        sqlx::query("SELECT version, name, checksum, sql FROM envctl.migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(failed)?
    {
        let version: i64 = row.try_get("version").map_err(failed)?;
        migrations.push(AppliedMigration {
            version: u64::try_from(version).map_err(|_| {
                failed(sqlx::Error::Protocol(format!(
                    "envctl.migrations holds version {version}"
                )))
            })?,
            name: row.try_get("name").map_err(failed)?,
            checksum: row.try_get("checksum").map_err(failed)?,
            sql: row.try_get("sql").map_err(failed)?,
        });
    }
    let mut seeds = Vec::new();
    for row in sqlx::query(
        "SELECT DISTINCT ON (path) path, checksum FROM envctl.seeds ORDER BY path, applied_at DESC, checksum",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(failed)?
    {
        seeds.push(AppliedSeed {
            path: row.try_get("path").map_err(failed)?,
            checksum: row.try_get("checksum").map_err(failed)?,
        });
    }
    Ok(Ledger { migrations, seeds })
}

/// How long and how to wait for the advisory lock.
pub struct LockWait<'a> {
    pub timeout: Duration,
    pub cancel: &'a Cancel,
}

/// A session that holds the database's advisory lock. Dropping it closes the connection, which
/// releases the lock on the server too (a cancelled future never leaves the lock behind).
pub struct Locked {
    conn: PgConnection,
}

/// Takes the advisory lock by polling `pg_try_advisory_lock`. Blocking in `pg_advisory_lock`
/// would keep a transaction open while waiting, and the lock holder's `CREATE INDEX CONCURRENTLY`
/// waits for every open transaction: the two would deadlock. `on_wait` is told once when another
/// envctl holds it.
pub async fn lock(
    mut conn: PgConnection,
    wait: &LockWait<'_>,
    mut on_wait: impl FnMut(&str),
) -> Result<Locked, DbError> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| DbError::LockFailed(SqlError(e)))?;
        if locked {
            return Ok(Locked { conn });
        }
        if wait.cancel.is_requested() {
            return Err(DbError::Interrupted);
        }
        if start.elapsed() >= wait.timeout {
            return Err(DbError::LockTimedOut {
                waited: start.elapsed(),
            });
        }
        if !said {
            on_wait("waiting for another envctl that is migrating this database");
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = wait.cancel.requested_wait() => {}
        }
    }
}

impl Locked {
    /// The ledger as it is now (read under the lock).
    pub async fn ledger(&mut self) -> Result<Ledger, DbError> {
        read_ledger(&mut self.conn).await
    }

    /// Brings the database to the desired migrations and seeds. `done` records what ran as it
    /// runs, so a caller knows it even when a later step fails. A reset runs only while the
    /// ledger is still `planned`, the one it was planned from (read again under the lock):
    /// another apply that migrated meanwhile (a newer commit's) is never undone.
    pub async fn converge(
        &mut self,
        desired: &DesiredEnv,
        reset: bool,
        planned: Option<&Ledger>,
        cancel: &Cancel,
        mut on_step: impl FnMut(&str),
        done: &mut Converged,
    ) -> Result<(), DbError> {
        let conn = &mut self.conn;
        if reset
            && let Some(planned) = planned
            && read_ledger(conn).await? != *planned
        {
            return Err(DbError::DivergedSincePlan(
                "the ledger changed since the reset was planned: another apply ran meanwhile"
                    .to_owned(),
            ));
        }
        if reset {
            on_step("resetting: dropping every schema");
            reset_database(conn).await?;
            done.reset = true;
        }
        sqlx::raw_sql(LEDGER_DDL)
            .execute(&mut *conn)
            .await
            .map_err(|e| DbError::LedgerSetupFailed(SqlError(e)))?;
        let ledger = read_ledger(conn).await?;
        if let Some((reason, _)) = crate::plan::divergence(desired, &ledger) {
            return Err(DbError::DivergedSincePlan(reason));
        }
        let applied = ledger.max_version();
        for migration in desired.migrations.iter().filter(|m| m.version > applied) {
            if cancel.is_requested() {
                return Err(DbError::Interrupted);
            }
            on_step(&format!("migrating {}", migration.name));
            let result = run_migration(conn, migration).await;
            reset_session(conn, &migration.path).await?;
            result?;
            done.migrations.push(migration.name.clone());
        }
        for seed in desired.seeds.iter() {
            if ledger
                .seeds
                .iter()
                .any(|a| a.path == seed.path && a.checksum == seed.checksum)
            {
                continue;
            }
            if cancel.is_requested() {
                return Err(DbError::Interrupted);
            }
            on_step(&format!("seeding {}", seed.path));
            let result = run_seed(conn, seed).await;
            reset_session(conn, &seed.path).await?;
            result?;
            done.seeds.push(seed.path.clone());
        }
        Ok(())
    }

    /// Releases the lock and closes the connection.
    pub async fn unlock(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

/// What [`Locked::converge`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Converged {
    pub reset: bool,
    /// Names of the migrations that ran.
    pub migrations: Vec<String>,
    /// Paths of the seeds that ran.
    pub seeds: Vec<String>,
}

/// Undoes session state a migration or seed may have set (`SET search_path`, `SET ROLE`, `SET
/// SESSION AUTHORIZATION`, temporary tables, listeners), so it does not leak into the next step.
/// Not `DISCARD ALL`: it would release the advisory lock.
async fn reset_session(conn: &mut PgConnection, path: &str) -> Result<(), DbError> {
    let failed = |e: sqlx::Error| DbError::SessionResetFailed {
        path: path.to_owned(),
        source: SqlError(e),
    };
    // Prepared statements too: sqlx's own first (it would reuse them), then the file's.
    conn.clear_cached_statements().await.map_err(failed)?;
    sqlx::raw_sql("DEALLOCATE ALL")
        .execute(&mut *conn)
        .await
        .map_err(failed)?;
    sqlx::raw_sql(
        "RESET SESSION AUTHORIZATION; RESET ALL; CLOSE ALL; UNLISTEN *; DISCARD TEMP; DISCARD SEQUENCES",
    )
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(failed)
}

/// Drops every non-system schema (the ledger included) with CASCADE and recreates `public`, in
/// one transaction.
async fn reset_database(conn: &mut PgConnection) -> Result<(), DbError> {
    let failed = |e: sqlx::Error| DbError::ResetFailed(SqlError(e));
    let mut tx = conn.begin().await.map_err(failed)?;
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname FROM pg_namespace WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' ORDER BY nspname",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(failed)?;
    for schema in schemas {
        let sql = format!("DROP SCHEMA {} CASCADE", quote_ident(&schema));
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
    }
    sqlx::raw_sql("CREATE SCHEMA public; GRANT USAGE ON SCHEMA public TO PUBLIC;")
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

async fn run_migration(conn: &mut PgConnection, migration: &Migration) -> Result<(), DbError> {
    let failed = |e: sqlx::Error| {
        let (line, message) = locate(&e, &migration.sql);
        DbError::MigrationFailed {
            path: migration.path.clone(),
            line,
            message,
        }
    };
    let record = sqlx::query(
        "INSERT INTO envctl.migrations (version, name, checksum, sql) VALUES ($1, $2, $3, $4)",
    )
    .bind(migration.version as i64)
    .bind(&migration.name)
    .bind(&migration.checksum)
    .bind(&migration.sql);
    if migration.no_transaction {
        // One statement, written to be safe to run again; its row is written after it succeeds.
        // A CREATE INDEX CONCURRENTLY that failed before left an INVALID index that `IF NOT
        // EXISTS` would skip: drop the one this statement names (and only it), so running the
        // statement again builds it.
        let target = crate::spec::migrations::concurrent_index_target(&migration.sql);
        if let Some(target) = &target {
            for (schema, index) in invalid_index(conn, target).await.map_err(failed)? {
                let sql = format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                    quote_ident(&schema),
                    quote_ident(&index)
                );
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await
                    .map_err(failed)?;
            }
        }
        sqlx::raw_sql(AssertSqlSafe(migration.sql.clone()))
            .execute(&mut *conn)
            .await
            .map_err(failed)?;
        if let Some(target) = &target {
            let left_invalid = invalid_index(conn, target).await.map_err(failed)?;
            if let Some((schema, index)) = left_invalid.first() {
                return Err(DbError::MigrationFailed {
                    path: migration.path.clone(),
                    line: Some(statement_line(&migration.sql)),
                    message: format!(
                        "index {schema}.{index} is INVALID after the migration (a concurrent build failed); fix the cause and apply again"
                    ),
                });
            }
        }
        record.execute(&mut *conn).await.map_err(failed)?;
        return Ok(());
    }
    // The ledger row first: whatever role or settings the migration leaves cannot stop it, and
    // the transaction keeps both or neither.
    let mut tx = conn.begin().await.map_err(failed)?;
    record.execute(&mut *tx).await.map_err(failed)?;
    sqlx::raw_sql(AssertSqlSafe(migration.sql.clone()))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

async fn run_seed(conn: &mut PgConnection, seed: &Seed) -> Result<(), DbError> {
    let failed = |e: sqlx::Error| {
        let (line, message) = locate(&e, &seed.sql);
        DbError::SeedFailed {
            path: seed.path.clone(),
            line,
            message,
        }
    };
    // The ledger row first, as for migrations.
    let mut tx = conn.begin().await.map_err(failed)?;
    sqlx::query(
        "INSERT INTO envctl.seeds (path, checksum) VALUES ($1, $2) \
         ON CONFLICT (path, checksum) DO UPDATE SET applied_at = now()",
    )
    .bind(&seed.path)
    .bind(&seed.checksum)
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    sqlx::raw_sql(AssertSqlSafe(seed.sql.clone()))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

/// The INVALID index a failed concurrent build of `target` left, as (schema, name): the index of
/// that name on that table, nothing else.
async fn invalid_index(
    conn: &mut PgConnection,
    target: &crate::spec::migrations::IndexTarget,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let table = target
        .table
        .iter()
        .map(|part| quote_ident(part))
        .collect::<Vec<_>>()
        .join(".");
    let rows = sqlx::query(
        "SELECT n.nspname, c.relname FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT i.indisvalid AND c.relname = $1 AND i.indrelid = to_regclass($2)",
    )
    .bind(&target.index)
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get::<String, _>(0), row.get::<String, _>(1)))
        .collect())
}

/// The line of the first statement of `sql` (where a one-statement migration starts).
fn statement_line(sql: &str) -> usize {
    crate::spec::migrations::split_statements(sql)
        .first()
        .map_or(1, |(offset, _)| sql[..*offset].matches('\n').count() + 1)
}

/// The line of `sql` a server error points at (from its character position), and its message.
pub(crate) fn locate(error: &sqlx::Error, sql: &str) -> (Option<usize>, String) {
    if let sqlx::Error::Database(db) = error
        && let Some(pg) = db.try_downcast_ref::<PgDatabaseError>()
    {
        let line = match pg.position() {
            Some(sqlx::postgres::PgErrorPosition::Original(position)) => Some(
                sql.chars()
                    .take(position.saturating_sub(1))
                    .filter(|c| *c == '\n')
                    .count()
                    + 1,
            ),
            // No position (not a syntax error): exact only when there is one statement.
            _ if crate::spec::migrations::split_statements(sql).len() == 1 => {
                Some(statement_line(sql))
            }
            _ => None,
        };
        return (line, pg.message().to_owned());
    }
    (None, error.to_string())
}
