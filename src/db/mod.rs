//! Migrations, seeds and the ledger, over one sqlx connection to an environment's database.
//!
//! The ledger lives in schema `envctl`: `envctl.migrations` (version, name, checksum, sql,
//! applied_at) and `envctl.seeds` (path, checksum, applied_at). [`converge`] holds a per-database
//! advisory lock for all of its work, re-reads the ledger under it (another apply may have run
//! meanwhile), then resets if asked, runs each pending migration in its own transaction with its
//! ledger row (or, for `-- envctl:no-transaction` files, outside one with the row written after),
//! and runs changed seeds in a transaction with their row. Provider-independent: the local and AWS
//! providers share it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use sqlx::postgres::PgDatabaseError;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};

use crate::model::{AppliedMigration, AppliedSeed, DesiredEnv, Ledger, Migration, Seed};
use crate::provider::Connection;

/// Key of the advisory lock held while migrating (advisory locks are per database).
const LOCK_KEY: i64 = 0x656e_7663_746c; // "envctl"

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
);";

/// Set to an exit code (130, 143) when a signal asks envctl to stop: no new step starts, the one in
/// flight finishes.
pub type Cancel = Arc<AtomicI32>;

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
        source: sqlx::Error,
    },
    /// Reading the ledger failed.
    #[error("cannot read the ledger (schema `envctl`)")]
    ReadLedgerFailed(#[source] sqlx::Error),
    /// Taking the advisory lock failed.
    #[error("cannot lock the database for migrating")]
    LockFailed(#[source] sqlx::Error),
    /// Creating the ledger schema and tables failed.
    #[error("cannot create the ledger (schema `envctl`)")]
    LedgerSetupFailed(#[source] sqlx::Error),
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
    /// Emptying the database for a reset failed.
    #[error("cannot reset the database")]
    ResetFailed(#[source] sqlx::Error),
    /// The ledger changed since the plan was made in a way that needs a reset.
    #[error(
        "the migration history diverged since the plan was made ({0}); run `envctl plan` again"
    )]
    DivergedSincePlan(String),
    /// A signal stopped the work between two steps.
    #[error("interrupted before all migrations and seeds ran")]
    Interrupted,
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

/// Opens a connection for database work.
pub async fn connect(connection: &Connection) -> Result<PgConnection, DbError> {
    PgConnection::connect_with(&connection.options)
        .await
        .map_err(|source| DbError::ConnectFailed {
            host: connection.host.clone(),
            port: connection.port,
            database: connection.database.clone(),
            user: connection.user.clone(),
            source,
        })
}

/// Reads the ledger; an empty one when the `envctl` schema does not exist yet.
pub async fn read_ledger(conn: &mut PgConnection) -> Result<Ledger, DbError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT to_regclass('envctl.migrations') IS NOT NULL AND to_regclass('envctl.seeds') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DbError::ReadLedgerFailed)?;
    if !exists {
        return Ok(Ledger::default());
    }
    let migrations =
        sqlx::query("SELECT version, name, checksum, sql FROM envctl.migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(DbError::ReadLedgerFailed)?
            .into_iter()
            .map(|row| AppliedMigration {
                version: row.get::<i64, _>("version") as u64,
                name: row.get("name"),
                checksum: row.get("checksum"),
                sql: row.get("sql"),
            })
            .collect();
    let seeds = sqlx::query(
        "SELECT DISTINCT ON (path) path, checksum FROM envctl.seeds ORDER BY path, applied_at DESC, checksum",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(DbError::ReadLedgerFailed)?
    .into_iter()
    .map(|row| AppliedSeed {
        path: row.get("path"),
        checksum: row.get("checksum"),
    })
    .collect();
    Ok(Ledger { migrations, seeds })
}

/// What [`converge`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Converged {
    pub reset: bool,
    /// Names of the migrations that ran.
    pub migrations: Vec<String>,
    /// Paths of the seeds that ran.
    pub seeds: Vec<String>,
    /// Highest applied migration version afterwards.
    pub schema_version: u64,
}

/// Brings the database to the desired migrations and seeds, under the advisory lock. `done`
/// records what ran as it runs, so a caller knows it even when a later step fails.
pub async fn converge(
    conn: &mut PgConnection,
    desired: &DesiredEnv,
    reset: bool,
    cancel: &Cancel,
    mut on_step: impl FnMut(&str),
    done: &mut Converged,
) -> Result<(), DbError> {
    lock(conn, cancel, &mut on_step).await?;
    let result = converge_locked(conn, desired, reset, cancel, &mut on_step, done).await;
    // Closing the connection would release it too; unlock explicitly so a reused one is clean.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    result
}

/// Takes the advisory lock by polling `pg_try_advisory_lock`. Blocking in `pg_advisory_lock`
/// would keep a transaction open while waiting, and the lock holder's `CREATE INDEX CONCURRENTLY`
/// waits for every open transaction: the two would deadlock.
async fn lock(
    conn: &mut PgConnection,
    cancel: &Cancel,
    on_step: &mut impl FnMut(&str),
) -> Result<(), DbError> {
    let mut said = false;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
            .map_err(DbError::LockFailed)?;
        if locked {
            return Ok(());
        }
        if cancel.load(Ordering::SeqCst) != 0 {
            return Err(DbError::Interrupted);
        }
        if !said {
            on_step("waiting for another envctl that is migrating this database");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn converge_locked(
    conn: &mut PgConnection,
    desired: &DesiredEnv,
    reset: bool,
    cancel: &Cancel,
    on_step: &mut impl FnMut(&str),
    done: &mut Converged,
) -> Result<(), DbError> {
    if reset {
        on_step("resetting: dropping every schema");
        reset_database(conn).await?;
        done.reset = true;
    }
    sqlx::raw_sql(LEDGER_DDL)
        .execute(&mut *conn)
        .await
        .map_err(DbError::LedgerSetupFailed)?;
    let ledger = read_ledger(conn).await?;
    if let Some((reason, _)) = crate::plan::divergence(desired, &ledger) {
        return Err(DbError::DivergedSincePlan(reason));
    }
    let applied = ledger.max_version();
    done.schema_version = applied;
    for migration in desired.migrations.iter().filter(|m| m.version > applied) {
        if cancel.load(Ordering::SeqCst) != 0 {
            return Err(DbError::Interrupted);
        }
        on_step(&format!("migrating {}", migration.name));
        run_migration(conn, migration).await?;
        done.migrations.push(migration.name.clone());
        done.schema_version = migration.version;
    }
    for seed in &desired.seeds {
        if ledger
            .seeds
            .iter()
            .any(|a| a.path == seed.path && a.checksum == seed.checksum)
        {
            continue;
        }
        if cancel.load(Ordering::SeqCst) != 0 {
            return Err(DbError::Interrupted);
        }
        on_step(&format!("seeding {}", seed.path));
        run_seed(conn, seed).await?;
        done.seeds.push(seed.path.clone());
    }
    Ok(())
}

/// Drops every non-system schema (the ledger included) with CASCADE and recreates `public`, in
/// one transaction.
async fn reset_database(conn: &mut PgConnection) -> Result<(), DbError> {
    let mut tx = conn.begin().await.map_err(DbError::ResetFailed)?;
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname FROM pg_namespace WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' ORDER BY nspname",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(DbError::ResetFailed)?;
    for schema in schemas {
        let sql = format!("DROP SCHEMA \"{}\" CASCADE", schema.replace('"', "\"\""));
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(DbError::ResetFailed)?;
    }
    sqlx::raw_sql("CREATE SCHEMA public; GRANT USAGE ON SCHEMA public TO PUBLIC;")
        .execute(&mut *tx)
        .await
        .map_err(DbError::ResetFailed)?;
    tx.commit().await.map_err(DbError::ResetFailed)
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
        // EXISTS` would skip: drop the ones this migration names, so running it again builds them.
        for (schema, index) in invalid_indexes(conn).await.map_err(failed)? {
            if mentions(&migration.sql, &index) {
                let sql = format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS \"{}\".\"{}\"",
                    schema.replace('"', "\"\""),
                    index.replace('"', "\"\"")
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
        let left_invalid: Vec<String> = invalid_indexes(conn)
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|(_, index)| mentions(&migration.sql, index))
            .map(|(schema, index)| format!("{schema}.{index}"))
            .collect();
        if !left_invalid.is_empty() {
            return Err(DbError::MigrationFailed {
                path: migration.path.clone(),
                line: Some(statement_line(&migration.sql)),
                message: format!(
                    "index {} is INVALID after the migration (a concurrent build failed); fix the cause and apply again",
                    left_invalid.join(", ")
                ),
            });
        }
        record.execute(&mut *conn).await.map_err(failed)?;
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(failed)?;
    sqlx::raw_sql(AssertSqlSafe(migration.sql.clone()))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    record.execute(&mut *tx).await.map_err(failed)?;
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
    let mut tx = conn.begin().await.map_err(failed)?;
    sqlx::raw_sql(AssertSqlSafe(seed.sql.clone()))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    sqlx::query(
        "INSERT INTO envctl.seeds (path, checksum) VALUES ($1, $2) \
         ON CONFLICT (path, checksum) DO UPDATE SET applied_at = now()",
    )
    .bind(&seed.path)
    .bind(&seed.checksum)
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

/// The line of `sql` a server error points at (from its character position), and its message.
/// Indexes a failed concurrent build left INVALID, as (schema, name).
async fn invalid_indexes(conn: &mut PgConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT n.nspname, c.relname FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT i.indisvalid AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get::<String, _>(0), row.get::<String, _>(1)))
        .collect())
}

/// Whether `sql` names `identifier` as a whole word (case-insensitively, as unquoted SQL does).
fn mentions(sql: &str, identifier: &str) -> bool {
    let sql = sql.to_lowercase();
    let identifier = identifier.to_lowercase();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
    sql.match_indices(&identifier).any(|(at, _)| {
        !word(sql[..at].chars().next_back()) && !word(sql[at + identifier.len()..].chars().next())
    })
}

/// The line of the first statement of `sql` (where a one-statement migration starts).
fn statement_line(sql: &str) -> usize {
    crate::spec::migrations::split_statements(sql)
        .first()
        .map_or(1, |(offset, _)| sql[..*offset].matches('\n').count() + 1)
}

fn locate(error: &sqlx::Error, sql: &str) -> (Option<usize>, String) {
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
