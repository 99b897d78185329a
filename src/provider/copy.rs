//! Copying one database into a new one on the same PostgreSQL server (a data branch on the local
//! provider, and on the AWS provider's test data plane):
//! - `CREATE DATABASE … TEMPLATE source`: a copy of its files, the fastest there is; for a source
//!   of [`FILE_COPY_FROM`] or more on PostgreSQL 15 or later, with `STRATEGY = FILE_COPY` (the
//!   default `WAL_LOG` also writes every page to the write-ahead log, about twice the time at
//!   1 GiB; `FILE_COPY` costs two checkpoints instead, which small databases do not repay);
//! - when other sessions are connected to the source, PostgreSQL refuses a template (SQLSTATE
//!   55006), after waiting up to 5 seconds for them to leave: so the sessions are counted first,
//!   and with any there (or on that refusal, if one came in between) it is
//!   `pg_dump --format=custom | pg_restore` with the server's own binaries, which reads a
//!   consistent snapshot while they stay connected, masking a data branch's tables as it copies
//!   them where it can ([`super::masked_copy`]). The source is only read either way.
//!
//! The copy then gets the source's database settings and privileges, which neither way copies
//! ([`super::database_settings`]). The password travels in `PGPASSWORD`, never on a command
//! line.

use std::process::Stdio;

use sqlx::{AssertSqlSafe, PgConnection};

use super::BoxError;
use super::masked_copy::{MaskInCopy, dump_and_restore_masked};
use crate::sql::{SqlError, quote_ident};

/// How to reach the server as its admin, for `pg_dump` and `pg_restore`.
pub struct Admin<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    /// `PGSSLMODE` for the tools; `None` leaves libpq's default.
    pub ssl_mode: Option<&'a str>,
    /// How long `pg_dump` waits for a table's lock (a session holding one in the source, a
    /// forgotten `idle in transaction` after DDL, would keep it waiting without end).
    pub lock_wait: std::time::Duration,
}

/// The database a copy makes.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// Its name.
    pub name: &'a str,
    /// What `CREATE DATABASE` adds after the name (` CONNECTION LIMIT …`, ` OWNER …`).
    pub options: &'a str,
    /// A statement run as soon as the database exists, before its rows come (the local
    /// provider's tags, so a copy cut off half-way is still known as whose).
    pub once_made: Option<&'a str>,
}

/// How a copy was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// A template copy.
    Template,
    /// A dump and restore (someone was connected to the source).
    DumpAndRestore,
    /// A dump and restore that masked the rules' tables as it copied them
    /// ([`super::masked_copy`]).
    DumpAndRestoreMasked,
}

/// Sources from this size on (bytes) are copied with `STRATEGY = FILE_COPY` where the server has
/// it (PostgreSQL 15 and later).
pub const FILE_COPY_FROM: i64 = 256 << 20;

/// What decides how a source is copied, read in one query.
#[derive(Clone, Copy, Debug)]
pub struct SourceFacts {
    /// Other sessions connected to it, and transactions prepared in it: PostgreSQL refuses it as
    /// a template while there are any (autovacuum workers it stops itself, so they do not count).
    pub sessions: i64,
    /// Its size in bytes, when the admin may read it.
    pub size: Option<i64>,
    /// The server's `server_version_num` (150000 for 15.0).
    pub server_version: i32,
}

const SOURCE_FACTS: &str = "SELECT
    (SELECT count(*) FROM pg_stat_activity
      WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type <> 'autovacuum worker')
    + (SELECT count(*) FROM pg_prepared_xacts WHERE database = $1),
    CASE WHEN has_database_privilege($1, 'CONNECT') THEN pg_database_size($1) END,
    current_setting('server_version_num')::int";

async fn source_facts(conn: &mut PgConnection, source: &str) -> Result<SourceFacts, sqlx::Error> {
    let (sessions, size, server_version): (i64, Option<i64>, i32) = sqlx::query_as(SOURCE_FACTS)
        .bind(source)
        .fetch_one(&mut *conn)
        .await?;
    Ok(SourceFacts {
        sessions,
        size,
        server_version,
    })
}

/// The `CREATE DATABASE … TEMPLATE` that copies `source` into `target`, given its facts.
pub fn template_statement(
    source: &str,
    target: &str,
    options: &str,
    facts: &SourceFacts,
) -> String {
    let file_copy =
        facts.server_version >= 150_000 && facts.size.is_some_and(|size| size >= FILE_COPY_FROM);
    format!(
        "CREATE DATABASE {} TEMPLATE {}{}{options}",
        quote_ident(target),
        quote_ident(source),
        if file_copy { " STRATEGY FILE_COPY" } else { "" }
    )
}

/// Makes `target` a copy of `source`; `options` follow the `CREATE DATABASE` (owner, connection
/// limit). On `conn`, the admin's. With `mask`, a dump and restore masks as it copies where it
/// can ([`super::masked_copy`]); a template copy is masked afterwards, like any. Either way the
/// copy then gets the source's own settings and privileges, which live outside its files
/// ([`super::database_settings`]).
pub async fn copy_database(
    conn: &mut PgConnection,
    admin: &Admin<'_>,
    target: &Target<'_>,
    source: &str,
    mask: Option<&MaskInCopy<'_>>,
) -> Result<Copied, BoxError> {
    let copied = copy_contents(conn, admin, source, target, mask).await?;
    let target = target.name;
    super::database_settings::carry_over(conn, source, target).await?;
    Ok(copied)
}

/// The copy's schema and rows, by a template or a dump and restore.
async fn copy_contents(
    conn: &mut PgConnection,
    admin: &Admin<'_>,
    source: &str,
    target: &Target<'_>,
    mask: Option<&MaskInCopy<'_>>,
) -> Result<Copied, BoxError> {
    let Target {
        name: target,
        options,
        once_made,
    } = *target;
    let made = async |conn: &mut PgConnection| match once_made {
        Some(sql) => sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map(drop)
            .map_err(|e| Box::new(SqlError(e)) as BoxError),
        None => Ok(()),
    };
    let facts = source_facts(conn, source)
        .await
        .map_err(|e| Box::new(SqlError(e)) as BoxError)?;
    // With sessions there, a template would be refused, after waiting 5 seconds for them.
    if facts.sessions == 0 {
        let template = template_statement(source, target, options, &facts);
        match sqlx::raw_sql(AssertSqlSafe(template))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => {
                made(conn).await?;
                return Ok(Copied::Template);
            }
            // Someone connected since they were counted.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => {}
            Err(e) => return Err(Box::new(SqlError(e))),
        }
    }
    let empty = format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'{options}",
        quote_ident(target)
    );
    sqlx::raw_sql(AssertSqlSafe(empty))
        .execute(&mut *conn)
        .await
        .map_err(|e| Box::new(SqlError(e)) as BoxError)?;
    // Tagged before its rows come: a copy cut off half-way is a leftover prune can attribute.
    made(conn).await?;
    if let Some(mask) = mask
        && dump_and_restore_masked(admin, source, target, mask).await?
    {
        return Ok(Copied::DumpAndRestoreMasked);
    }
    let how = match mask {
        Some(mask) => restore_for(mask, source).await?,
        None => Restore::PerStatement,
    };
    pipe_dump(admin, source, target, &[], how).await?;
    Ok(Copied::DumpAndRestore)
}

/// How a restore of `source` runs ([`ONE_TRANSACTION`]), asked on a session of its own there.
async fn restore_for(mask: &MaskInCopy<'_>, source: &str) -> Result<Restore, BoxError> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let mut conn = (mask.connect)(source)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the source `{source}`: {}", SqlError(e)))?;
    // The source's own `search_path` could shadow the functions and operators below.
    crate::sql::mask::prepare_session(&mut conn)
        .await
        .map_err(|e| Box::new(SqlError(e)) as BoxError)?;
    let how = restore_wanted(&mut conn)
        .await
        .map_err(|e| Box::new(SqlError(e)) as BoxError)?;
    let _ = conn.close().await;
    Ok(how)
}

/// How a restore of the source that `conn` is connected to runs ([`ONE_TRANSACTION`]).
pub async fn restore_wanted(conn: &mut PgConnection) -> Result<Restore, sqlx::Error> {
    let one: bool = sqlx::query_scalar(ONE_TRANSACTION).fetch_one(conn).await?;
    Ok(if one {
        Restore::OneTransaction
    } else {
        Restore::PerStatement
    })
}

/// A program of the server's binaries (beside its `initdb`), else from PATH.
fn program(name: &str) -> std::path::PathBuf {
    super::local_server::binary_dir()
        .map(|dir| dir.join(name))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| name.into())
}

/// One of the server's programs, set to reach it as the admin (the password in `PGPASSWORD`).
fn tool(admin: &Admin<'_>, name: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program(name));
    // It dies with envctl: a `kill -9` of envctl would otherwise leave pg_dump waiting on a
    // source's lock for the whole --wait-timeout, then copying the source into a leftover.
    let envctl = std::process::id();
    // The signal comes when the *thread* that spawned the tool ends: copies are spawned from the
    // futures the runtime's own threads poll (never from `spawn_blocking`, whose threads come
    // and go), which live as long as envctl.
    // SAFETY: between fork and exec the closure makes two system calls (prctl, getppid) and
    // allocates nothing (an `Errno` converts to an `io::Error` without allocating).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // envctl died before the request took: nobody would send the signal.
            if nix::unistd::getppid().as_raw().cast_unsigned() != envctl {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
    command
        .args(["--host", admin.host, "--port", &admin.port.to_string()])
        .args(["--username", admin.user, "--no-password"])
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        // As the admin, whatever default `role` the database's owner gave it.
        .env("PGOPTIONS", "-c role=none")
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(password) = admin.password {
        command.env("PGPASSWORD", password);
    }
    if let Some(mode) = admin.ssl_mode {
        command.env("PGSSLMODE", mode);
    }
    command
}

/// A `pg_dump --format=custom` running, its output not read yet: it waits on the pipe until
/// [`restore`] reads it (killed if dropped).
pub struct Dump(tokio::process::Child);

/// Starts `pg_dump --format=custom --compress=0 <dump_args> source`.
pub fn start_dump(admin: &Admin<'_>, source: &str, dump_args: &[String]) -> Result<Dump, BoxError> {
    let dump = tool(admin, "pg_dump")
        .args(["--format=custom", "--compress=0"])
        .arg(format!(
            "--lock-wait-timeout={}",
            admin.lock_wait.as_millis().max(1)
        ))
        .args(dump_args)
        .args(["--dbname", source])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run pg_dump: {e}"))?;
    Ok(Dump(dump))
}

/// Whether a restore into a new database is worth running as one transaction, asked on a session
/// in the source: on a server whose `wal_level` is `minimal` (envctl's private server), rows
/// copied into a table made in the same transaction skip the write-ahead log, about a tenth of a
/// 1 GiB restore's time. The transaction holds a lock on each object it makes or gives an owner
/// until it commits, so only where the source's objects fit an eighth of the server's lock table
/// (other copies may run beside it, and each `pg_dump` locks every table it reads): its
/// relations, large objects, functions, types and schemas are counted; other kinds, rarely many,
/// are not, and a restore that runs out of locks is run again statement by statement
/// ([`pipe_dump`]).
const ONE_TRANSACTION: &str = "SELECT current_setting('wal_level') = 'minimal'
    AND ((SELECT count(*) FROM pg_catalog.pg_class WHERE oid >= 16384::oid)
         + (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)
         + (SELECT count(*) FROM pg_catalog.pg_proc WHERE oid >= 16384::oid)
         + (SELECT count(*) FROM pg_catalog.pg_type WHERE oid >= 16384::oid)
         + (SELECT count(*) FROM pg_catalog.pg_namespace WHERE oid >= 16384::oid)) * 8
        <= current_setting('max_locks_per_transaction')::bigint
         * (current_setting('max_connections')::bigint
            + current_setting('max_prepared_transactions')::bigint)";

/// How [`restore`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restore {
    /// `pg_restore`'s default: a transaction per statement.
    PerStatement,
    /// `--single-transaction` (see [`ONE_TRANSACTION`]): all or nothing, so a failure leaves
    /// the target as empty as it was.
    OneTransaction,
}

/// `pg_restore --exit-on-error --dbname target` of `dump`, failing with what either said.
pub async fn restore(
    admin: &Admin<'_>,
    target: &str,
    dump: Dump,
    how: Restore,
) -> Result<(), BoxError> {
    let mut dump = dump.0;
    let pipe: Stdio = dump
        .stdout
        .take()
        .ok_or("pg_dump has no output")?
        .try_into()
        .map_err(|e| format!("cannot pipe pg_dump into pg_restore: {e}"))?;
    let mut command = tool(admin, "pg_restore");
    command.args(["--exit-on-error", "--dbname", target]);
    if how == Restore::OneTransaction {
        command.arg("--single-transaction");
    }
    command.stdin(pipe).stdout(Stdio::null());
    let spawned = command.spawn();
    // The command holds its own copy of the pipe's read end until it is dropped: kept open, it
    // would leave a pg_dump whose reader failed blocked on a full pipe, and this wait without end.
    drop(command);
    let restore = spawned.map_err(|e| format!("cannot run pg_restore: {e}"))?;
    let (dumped, restored) = tokio::join!(dump.wait_with_output(), restore.wait_with_output());
    let dumped = dumped.map_err(|e| format!("pg_dump: {e}"))?;
    let restored = restored.map_err(|e| format!("pg_restore: {e}"))?;
    // The cause first: pg_dump's broken pipe is only what follows from pg_restore's failure,
    // and pg_restore's input that ended early only what follows from pg_dump's (a lock it
    // waited for, a connection it lost).
    let broken_pipe = {
        use std::os::unix::process::ExitStatusExt as _;
        dumped.status.signal() == Some(nix::sys::signal::Signal::SIGPIPE as i32)
            || String::from_utf8_lossy(&dumped.stderr).contains("Broken pipe")
    };
    let order = match dumped.status.success() || broken_pipe {
        true => [("pg_restore", &restored), ("pg_dump", &dumped)],
        false => [("pg_dump", &dumped), ("pg_restore", &restored)],
    };
    for (name, output) in order {
        if !output.status.success() {
            let said = without_rows(&String::from_utf8_lossy(&output.stderr));
            let message = match locked_table(&said).filter(|_| name == "pg_dump") {
                Some(table) => format!(
                    "another session holds a lock on {table} in the source, and pg_dump gave up waiting for it after {} (--wait-timeout); end that session's transaction, or wait for it, then apply again. pg_dump said: {said}",
                    crate::model::duration_text(admin.lock_wait)
                ),
                None => format!("{name} failed: {said}"),
            };
            return Err(Box::new(ToolFailed {
                // The hint names the setting, in any language the server speaks.
                out_of_locks: name == "pg_restore" && said.contains("max_locks_per_transaction"),
                message,
            }));
        }
    }
    Ok(())
}

/// The table whose lock pg_dump gave up on, from what it said (`Query was: LOCK TABLE <name> IN
/// ACCESS SHARE MODE`, the query text, in any language the server speaks).
fn locked_table(said: &str) -> Option<&str> {
    let rest = &said[said.find("LOCK TABLE ")? + "LOCK TABLE ".len()..];
    let table = &rest[..rest.find(" IN ACCESS SHARE MODE")?];
    (!table.is_empty() && !table.contains('\n')).then_some(table)
}

/// pg_dump or pg_restore failed: what it said, and whether pg_restore ran out of the server's
/// lock table (the one failure a restore statement by statement does not share).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct ToolFailed {
    message: String,
    out_of_locks: bool,
}

/// What pg_dump or pg_restore said, but the server's DETAIL and CONTEXT lines, which may quote a
/// row of the source (`Failing row contains (…)`, `COPY users, line 1: "…"`): the copy is of
/// data not masked yet.
fn without_rows(stderr: &str) -> String {
    let mut left_out = false;
    // A DETAIL or CONTEXT goes on over the lines that follow (a row holding a newline, which
    // may hold anything, a line that looks like the program's own too): nothing after the first
    // is kept (with --exit-on-error, the error it belongs to is the last one said).
    let mut quoting = false;
    let kept: Vec<&str> = stderr
        .trim()
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            quoting |= ["DETAIL:", "CONTEXT:"].iter().any(|p| line.starts_with(p));
            left_out |= quoting;
            !quoting
        })
        .collect();
    let mut text = kept.join("\n");
    if left_out {
        text.push_str("\n(the server's DETAIL and CONTEXT lines are left out: they may show the source's rows)");
    }
    text
}

/// `pg_dump --format=custom <dump_args> source | pg_restore --dbname target`, failing with what
/// either said; a restore in one transaction that fails is made again a transaction per
/// statement.
pub async fn pipe_dump(
    admin: &Admin<'_>,
    source: &str,
    target: &str,
    dump_args: &[String],
    how: Restore,
) -> Result<(), BoxError> {
    match restore(admin, target, start_dump(admin, source, dump_args)?, how).await {
        // One transaction that ran out of locks undid all it did, so the target is as empty as
        // it was: again, a transaction per statement, which needs no lock table to hold the
        // whole restore. Not after a signal (a Ctrl-C reaches the tools too, and envctl is
        // stopping), nor after any other error, which would only come again.
        Err(e)
            if how == Restore::OneTransaction
                && !crate::cancel::Cancel::process().is_requested()
                && e.downcast_ref::<ToolFailed>()
                    .is_some_and(|f| f.out_of_locks) =>
        {
            let dump = start_dump(admin, source, dump_args)?;
            restore(admin, target, dump, Restore::PerStatement).await
        }
        done => done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(size: Option<i64>, server_version: i32) -> SourceFacts {
        SourceFacts {
            sessions: 0,
            size,
            server_version,
        }
    }

    #[test]
    fn the_table_pg_dump_waited_for_is_named() {
        let said = "pg_dump: error: query failed: ERROR:  canceling statement due to lock timeout\npg_dump: detail: Query was: LOCK TABLE \"my app\".\"Orders\" IN ACCESS SHARE MODE";
        assert_eq!(locked_table(said), Some("\"my app\".\"Orders\""));
        assert_eq!(locked_table("pg_dump: error: connection failed"), None);
        assert_eq!(locked_table("LOCK TABLE  IN ACCESS SHARE MODE"), None);
    }

    #[test]
    fn what_the_programs_say_keeps_no_quoted_row() {
        let said = "pg_restore: error: COPY failed for table \"cust\": ERROR:  new row for relation \"cust\" violates check constraint \"ok\"\nDETAIL:  Failing row contains (1, frank@real.com).\nCONTEXT:  COPY cust, line 1: \"1\tfrank@real.com\"\n";
        let kept = without_rows(said);
        assert!(!kept.contains("frank"), "{kept}");
        assert!(
            kept.starts_with("pg_restore: error: COPY failed for table \"cust\""),
            "{kept}"
        );
        assert!(kept.ends_with("they may show the source's rows)"), "{kept}");
        assert_eq!(
            without_rows("pg_dump: error: no such table\n"),
            "pg_dump: error: no such table"
        );
        // A row holding a newline goes on over lines of its own, one that looks like
        // pg_restore's own included.
        let said = "pg_restore: error: COPY failed for table \"cust\": ERROR:  bad\nDETAIL:  Failing row contains (1, frank@real.com, 221B Baker\nStreet London\npg_restore: x, secret-value).\nCONTEXT:  COPY cust, line 1\n";
        let kept = without_rows(said);
        assert!(
            !kept.contains("Street") && !kept.contains("secret"),
            "{kept}"
        );
        assert!(kept.starts_with("pg_restore: error: COPY failed"), "{kept}");
    }

    #[test]
    fn large_sources_on_postgresql_15_are_copied_file_by_file_and_the_rest_by_the_default() {
        let statement = |facts: &SourceFacts| {
            template_statement("my \"src\"", "copy", " CONNECTION LIMIT 0", facts)
        };
        assert_eq!(
            statement(&facts(Some(FILE_COPY_FROM), 150_000)),
            r#"CREATE DATABASE "copy" TEMPLATE "my ""src""" STRATEGY FILE_COPY CONNECTION LIMIT 0"#
        );
        assert_eq!(
            statement(&facts(Some(1 << 40), 170_002)),
            r#"CREATE DATABASE "copy" TEMPLATE "my ""src""" STRATEGY FILE_COPY CONNECTION LIMIT 0"#
        );
        // Smaller, unknown, or a server without STRATEGY (14 and older): the server's default.
        for (size, version) in [
            (Some(FILE_COPY_FROM - 1), 150_000),
            (None, 160_000),
            (Some(1 << 40), 140_011),
        ] {
            assert_eq!(
                statement(&facts(size, version)),
                r#"CREATE DATABASE "copy" TEMPLATE "my ""src""" CONNECTION LIMIT 0"#,
                "{size:?} on {version}"
            );
        }
    }
}
