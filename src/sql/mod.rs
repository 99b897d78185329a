//! What every piece that speaks SQL shares, whichever side it is on: how to connect
//! ([`Connection`]), quoting identifiers and literals (the one place they are quoted), and
//! [`SqlError`], a driver error as users should read it, and the masking rules as SQL
//! ([`mask`]). `db` (migrations, ledger, masking) and the providers (databases, roles, a copy
//! that masks as it copies) both build on it, and neither imports the other.

pub mod mask;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sqlx::postgres::{PgConnectOptions, PgDatabaseError};

/// A quoted SQL identifier: `"name"` with inner quotes doubled. The one place identifiers built
/// from names (cluster ids, users, schemas) are quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal (standard_conforming_strings): `'text'` with inner quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A stored list setting's elements (`app, "$user", "We,ird"` → `app`, `$user`, `We,ird`):
/// names separated by commas, each bare or double-quoted with `""` for a quote, as PostgreSQL's
/// `SplitGUCList` reads them. `None` when the text is not such a list.
pub fn split_identifiers(list: &str) -> Option<Vec<String>> {
    let mut elements = Vec::new();
    let mut chars = list.chars().peekable();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
    };
    skip_spaces(&mut chars);
    if chars.peek().is_none() {
        return Some(elements);
    }
    loop {
        let mut element = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' if chars.next_if_eq(&'"').is_some() => element.push('"'),
                    '"' => break,
                    c => element.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !c.is_whitespace()) {
                element.push(c);
            }
            if element.is_empty() {
                return None;
            }
        }
        elements.push(element);
        skip_spaces(&mut chars);
        match chars.next() {
            None => return Some(elements),
            Some(',') => skip_spaces(&mut chars),
            Some(_) => return None,
        }
    }
}

/// A sqlx error as users should read it: a server error is its message and SQLSTATE (sqlx's own
/// text adds "at line N", a line of PostgreSQL's C source that users take for their file's).
#[derive(Debug)]
pub struct SqlError(pub sqlx::Error);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            sqlx::Error::Database(db) => match db.try_downcast_ref::<PgDatabaseError>() {
                Some(pg) => {
                    write!(f, "{} (SQLSTATE {})", pg.message(), pg.code())?;
                    if let Some(detail) = pg.detail() {
                        write!(f, ": {detail}")?;
                    }
                    Ok(())
                }
                None => f.write_str(db.message()),
            },
            other => f.write_str(&SqlError::describe(other)),
        }
    }
}

impl std::error::Error for SqlError {}

/// A server error as [`SqlError`] says it, but with no part that may quote a row: the message,
/// its SQLSTATE and the names of the constraint, table and column it concerns, never the
/// server's DETAIL (`Key (email)=(…)`, `Failing row contains (…)`). For errors about data
/// that must not be shown, such as a masked copy's before masking commits.
pub fn without_values(error: &sqlx::Error) -> String {
    let sqlx::Error::Database(db) = error else {
        return SqlError::describe(error);
    };
    let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
        return db.message().to_owned();
    };
    let mut text = format!("{} (SQLSTATE {})", pg.message(), pg.code());
    let names: Vec<String> = [
        ("constraint", pg.constraint()),
        ("table", pg.table()),
        ("column", pg.column()),
    ]
    .into_iter()
    .filter_map(|(what, name)| name.map(|n| format!("{what} `{n}`")))
    .collect();
    if !names.is_empty() {
        text.push_str(&format!(": {}", names.join(", ")));
    }
    if pg.detail().is_some() {
        text.push_str(" (the server's detail is left out: it may show the rows' values)");
    }
    text
}

impl From<sqlx::Error> for SqlError {
    fn from(e: sqlx::Error) -> SqlError {
        SqlError(e)
    }
}

impl SqlError {
    /// `error`, not a server's, as users should read it: sqlx's own wording ("error
    /// communicating with database: …") says less than the operating system's.
    fn describe(error: &sqlx::Error) -> String {
        match error {
            sqlx::Error::Io(io) => io.to_string(),
            sqlx::Error::Protocol(text) => text.clone(),
            other => other.to_string(),
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<String> {
        match &self.0 {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// How to connect to an environment's database. `Debug` never shows the password.
#[derive(Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    /// A password or IAM token: only for `url`, `exec` and the connection itself.
    pub password: Option<String>,
    /// libpq `sslmode` for URLs and `PGSSLMODE` handed to users; `None` leaves it to the client.
    pub ssl_mode: Option<String>,
    /// The CA bundle a verifying `sslmode` checks the server against (`sslrootcert`,
    /// `PGSSLROOTCERT`), where envctl chose one.
    pub ssl_root_cert: Option<std::path::PathBuf>,
    pub options: PgConnectOptions,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

/// Everything but RFC 3986 unreserved characters is percent-encoded in URL parts.
const URL_PART: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a URL part (user, password, database).
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, URL_PART).to_string()
}

impl Connection {
    /// `postgres://user:password@host:port/database?sslmode=…`, percent-encoded. Holds the secret:
    /// print it only where the user asked for it.
    pub fn url(&self) -> String {
        let auth = match &self.password {
            Some(p) => format!("{}:{}", percent_encode(&self.user), percent_encode(p)),
            None => percent_encode(&self.user),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut query = match &self.ssl_mode {
            Some(mode) => format!("?sslmode={}", percent_encode(mode)),
            None => String::new(),
        };
        if let Some(root) = &self.ssl_root_cert {
            query.push(if query.is_empty() { '?' } else { '&' });
            query.push_str(&format!(
                "sslrootcert={}",
                percent_encode(&root.to_string_lossy())
            ));
        }
        format!(
            "postgres://{auth}@{host}:{}/{}{query}",
            self.port,
            percent_encode(&self.database)
        )
    }
}

/// What a session of envctl's own (never one handed to a user) sets at its start, over the
/// database's defaults (which its owner chooses, and a copy keeps its source's):
/// - it writes (the ledger, migrations, seeds, a user's grants) whatever
///   `default_transaction_read_only` says: a source made read-only for its users' sessions must
///   not fail its copies' first apply;
/// - it acts as the user it logged in as: a default `role` would have the admin act as the
///   database owner's role (trusting that role's tables as its own).
pub const OWN_SESSION: [(&str, &str); 2] =
    [("default_transaction_read_only", "off"), ("role", "none")];

/// The options of a session of envctl's own ([`OWN_SESSION`]).
pub fn own_session(options: &sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgConnectOptions {
    options.clone().options(OWN_SESSION)
}
