//! Copying one database into a new one on the same PostgreSQL server (a data branch on the local
//! provider, and on the AWS provider's test data plane):
//! - `CREATE DATABASE … TEMPLATE source`: a file copy, the fastest there is;
//! - when other sessions are connected to the source, PostgreSQL refuses a template (SQLSTATE
//!   55006): then `pg_dump --format=custom | pg_restore` with the server's own binaries, which
//!   reads a consistent snapshot while they stay connected. The source is only read either way.
//!
//! The password travels in `PGPASSWORD`, never on a command line.

use std::process::Stdio;

use sqlx::{AssertSqlSafe, PgConnection};

use super::BoxError;
use crate::sql::{SqlError, quote_ident};

/// How to reach the server as its admin, for `pg_dump` and `pg_restore`.
pub struct Admin<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    /// `PGSSLMODE` for the tools; `None` leaves libpq's default.
    pub ssl_mode: Option<&'a str>,
}

/// How a copy was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// A template copy.
    Template,
    /// A dump and restore (someone was connected to the source).
    DumpAndRestore,
}

/// Makes `target` a copy of `source`; `options` follow the `CREATE DATABASE` (owner, connection
/// limit). On `conn`, the admin's.
pub async fn copy_database(
    conn: &mut PgConnection,
    admin: &Admin<'_>,
    source: &str,
    target: &str,
    options: &str,
) -> Result<Copied, BoxError> {
    let template = format!(
        "CREATE DATABASE {} TEMPLATE {}{options}",
        quote_ident(target),
        quote_ident(source)
    );
    match sqlx::raw_sql(AssertSqlSafe(template))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => return Ok(Copied::Template),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => {}
        Err(e) => return Err(Box::new(SqlError(e))),
    }
    let empty = format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'{options}",
        quote_ident(target)
    );
    sqlx::raw_sql(AssertSqlSafe(empty))
        .execute(&mut *conn)
        .await
        .map_err(|e| Box::new(SqlError(e)) as BoxError)?;
    dump_and_restore(admin, source, target).await?;
    Ok(Copied::DumpAndRestore)
}

/// A program of the server's binaries (beside its `initdb`), else from PATH.
fn program(name: &str) -> std::path::PathBuf {
    super::local_server::binary_dir()
        .map(|dir| dir.join(name))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| name.into())
}

/// `pg_dump --format=custom source | pg_restore --dbname target`, failing with what either said.
async fn dump_and_restore(admin: &Admin<'_>, source: &str, target: &str) -> Result<(), BoxError> {
    let command = |name: &str| {
        let mut command = tokio::process::Command::new(program(name));
        command
            .args(["--host", admin.host, "--port", &admin.port.to_string()])
            .args(["--username", admin.user, "--no-password"])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(password) = admin.password {
            command.env("PGPASSWORD", password);
        }
        if let Some(mode) = admin.ssl_mode {
            command.env("PGSSLMODE", mode);
        }
        command
    };
    let mut dump = command("pg_dump")
        .args(["--format=custom", "--compress=0", "--dbname", source])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run pg_dump: {e}"))?;
    let pipe: Stdio = dump
        .stdout
        .take()
        .ok_or("pg_dump has no output")?
        .try_into()
        .map_err(|e| format!("cannot pipe pg_dump into pg_restore: {e}"))?;
    let restore = command("pg_restore")
        .args(["--exit-on-error", "--dbname", target])
        .stdin(pipe)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run pg_restore: {e}"))?;
    let (dumped, restored) = tokio::join!(dump.wait_with_output(), restore.wait_with_output());
    let dumped = dumped.map_err(|e| format!("pg_dump: {e}"))?;
    let restored = restored.map_err(|e| format!("pg_restore: {e}"))?;
    for (name, output) in [("pg_dump", &dumped), ("pg_restore", &restored)] {
        if !output.status.success() {
            return Err(format!(
                "{name} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
            .into());
        }
    }
    Ok(())
}
