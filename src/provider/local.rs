//! The local provider: each environment is a database on a PostgreSQL server, named after its
//! cluster id, with its ownership tags and settings beside it as a JSON `COMMENT ON DATABASE`.
//!
//! A database is created under a temporary name (`{id}-creating`), tagged, then renamed, so a crash
//! never leaves an untagged database with our name. A data branch's copy is tagged as soon as it
//! exists, before its rows come, and is the admin's, with no connection but a superuser's, until
//! its masking commits ([`LocalProvider::masking_committed`] hands it to its user): as its owner,
//! the user could lift the limit or rewrite the tags. Observing reads `pg_database` only. Every other
//! database on the server is ignored: only those whose comment carries `envctl:managed=true` and
//! the [`Owner`]'s repository and prefix are ever changed or dropped, checked on the live comment
//! right before each change.
//!
//! A spec's `database.user` other than the server's admin gets a role of its own: never a
//! superuser, with a password of its own derived from the admin's (HMAC-SHA-256 keyed by the
//! admin password, so nothing is stored and a role's password tells nothing of the admin's). Roles
//! envctl made carry a comment; envctl never changes a role it did not make.

use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};

use super::upstream::{Credential, Secret, TlsRules, Upstream};
use super::{
    BoxError, Connection, Created, DeleteOptions, Leftover, Provider, ProviderError, SourceStatus,
    sql_failed,
};
use crate::model::{
    Acu, ClusterId, DatabaseSettings, DesiredEnv, ObservedEnv, Owner, Scaling, TagUpdate, Tags,
    tags,
};
use crate::sql::{quote_ident, quote_literal};

/// Suffix of a database that is being created.
pub const CREATING_SUFFIX: &str = "-creating";

/// The connection limit a database is created with until it is tagged. `CREATE DATABASE` and
/// `COMMENT` cannot share a transaction: if envctl dies between them, this marker (with the
/// `{id}-creating` name, which holds a hash of the repository and branch) says the untagged
/// leftover is ours to drop.
const CREATING_CONNECTION_LIMIT: i32 = 7177;

/// The connection limit a copy is created with, and keeps until its masking commits: no
/// connection but a superuser's. Under a `{id}-creating` name, untagged, it is the creating
/// marker of a copy.
const COPY_CONNECTION_LIMIT: i32 = 0;

/// Whether an untagged `{id}-creating` database's connection limit says envctl made it.
fn creating_marker(limit: i32) -> bool {
    limit == CREATING_CONNECTION_LIMIT || limit == COPY_CONNECTION_LIMIT
}

/// The comment on roles an earlier envctl made (it named no owner).
const ROLE_COMMENT: &str =
    "envctl: a role for local environments; its password is derived from the server admin's";

/// How the comment on a role of envctl's starts.
const ROLE_COMMENT_START: &str = "envctl: a role for the local environments of ";

/// The comment on a role envctl made for `owner`'s environments.
fn role_comment(owner: &Owner) -> String {
    format!(
        "{ROLE_COMMENT_START}`{}` under prefix `{}`",
        owner.repo.as_str(),
        owner.prefix.as_str()
    )
}

/// What the comment on an environment's database holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Metadata {
    /// Format marker: envctl writes `1`.
    envctl: u32,
    tags: Tags,
    min_acu: f64,
    max_acu: f64,
    deletion_protection: bool,
    user: String,
    created_at: String,
}

/// The server to use, and how envctl found it.
pub struct Server {
    /// The admin URL (holds a password: never print it).
    pub url: String,
    /// envctl's own private server: loopback without TLS, so URLs say `sslmode=disable`
    /// (node-postgres treats `prefer` as `verify-full`). Otherwise the URL's own sslmode is kept.
    pub private: bool,
}

/// The local provider, connected to its server.
pub struct LocalProvider {
    /// The server's options (host, port, TLS) as the admin: each environment's are derived.
    options: PgConnectOptions,
    host: String,
    port: u16,
    admin_user: String,
    admin_password: Option<String>,
    /// `sslmode` for URLs handed to users.
    ssl_mode: Option<String>,
    /// How connections use TLS (the proxy's as sqlx's).
    tls: TlsRules,
    timeout: Duration,
    /// An admin connection kept for [`Provider::source_status`], which a running proxy asks
    /// before every new connection: a query on it, not a login each time.
    status_conn: tokio::sync::Mutex<Option<PgConnection>>,
}

/// `DROP DATABASE IF EXISTS … WITH (FORCE)` of `name`, made droppable first: its owner may have
/// marked it a template (`IS_TEMPLATE`), which PostgreSQL refuses to drop. (Two statements: a
/// drop runs in no transaction block.)
async fn drop_database(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let name = quote_ident(name);
    match execute(conn, format!("ALTER DATABASE {name} IS_TEMPLATE false")).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => return Ok(()),
        other => other?,
    }
    execute(conn, format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await
}

/// Takes id `id`'s lock if it is free (the lock every create, delete and tag write of the id
/// holds); `true` when taken.
async fn try_lock_id(conn: &mut PgConnection, id: &ClusterId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(id.as_str())
        .fetch_one(conn)
        .await
}

/// Gives database `id` to `role` with connection limit `limit`, both or neither.
async fn give_database(
    conn: &mut PgConnection,
    id: &ClusterId,
    role: &str,
    limit: i32,
) -> Result<(), sqlx::Error> {
    let name = quote_ident(id.as_str());
    let sql = format!(
        "BEGIN; ALTER DATABASE {name} OWNER TO {}; ALTER DATABASE {name} CONNECTION LIMIT {limit}; COMMIT",
        quote_ident(role)
    );
    execute(conn, sql).await
}

/// Releases [`LocalProvider::lock_id`]'s lock (closing the connection would too).
async fn unlock_id(conn: &mut PgConnection, id: &ClusterId) {
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(id.as_str())
        .execute(conn)
        .await;
}

/// `{id}-creating` as a leftover of `owner`'s: tagged with this owner, or untagged with the
/// creating marker and a name under this prefix (whose it is, only its branch can tell).
fn leftover_of(name: &str, comment: Option<&str>, limit: i32, owner: &Owner) -> Option<Leftover> {
    let id = name.strip_suffix(CREATING_SUFFIX)?;
    if !id.starts_with(&format!("{}-", owner.prefix.as_str())) {
        return None;
    }
    let (branch, created_at) = match comment.map(serde_json::from_str::<Metadata>) {
        Some(Ok(metadata)) if owner.owns(&metadata.tags) => {
            let branch = metadata
                .tags
                .get(tags::BRANCH)
                .and_then(|b| crate::model::decode_branch_tag(b));
            let created = humantime::parse_rfc3339(&metadata.created_at).ok();
            (Some(branch?), created)
        }
        None if creating_marker(limit) => (None, None),
        _ => return None,
    };
    Some(Leftover {
        name: name.to_owned(),
        cluster_id: ClusterId::from_live(id.to_owned()),
        branch,
        created_at,
        at_work: false,
    })
}

/// Runs one statement built from quoted identifiers and literals (DDL takes no bind parameters).
async fn execute(conn: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(|_| ())
}

/// The password in a server URL: its user info, else a `password` query parameter.
fn url_password(url: &url::Url) -> Option<String> {
    let from_userinfo = url.password().map(|p| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    });
    from_userinfo.or_else(|| {
        url.query_pairs()
            .find(|(k, _)| k == "password")
            .map(|(_, v)| v.into_owned())
    })
}

impl LocalProvider {
    /// Connects to the server, failing within `timeout` (at once when nothing listens) with the
    /// driver's own reason.
    pub async fn connect(
        server: &Server,
        timeout: Duration,
    ) -> Result<LocalProvider, ProviderError> {
        let unavailable = |e: BoxError| ProviderError::Unavailable {
            provider: "local",
            source: e,
        };
        let parsed = url::Url::parse(&server.url)
            .map_err(|e| unavailable(format!("the server URL is not a URL: {e}").into()))?;
        let options = PgConnectOptions::from_str(&server.url)
            .map_err(|e| unavailable(sql_failed(e)))?
            .application_name("envctl");
        let (ssl_mode, tls) = if server.private {
            (Some("disable".to_owned()), TlsRules::disabled())
        } else {
            // The user's own, or none: a URL without one leaves the choice to each client.
            let ssl_mode = parsed
                .query_pairs()
                .find(|(k, _)| k == "sslmode")
                .map(|(_, v)| v.into_owned());
            (ssl_mode, TlsRules::from_url(&parsed).map_err(unavailable)?)
        };
        let options = tls.apply(options);
        // One direct attempt first: a pool retries until its timeout and then says only "pool
        // timed out", hiding "connection refused".
        let first = PgConnection::connect_with(&options);
        let first = tokio::time::timeout(timeout.min(Duration::from_secs(30)), first);
        // A wait ends at once on the first signal.
        let Some(first) = crate::cancel::Cancel::process().or_signal(first).await else {
            return Err(unavailable(
                "stopped waiting for the server on a signal".into(),
            ));
        };
        match first {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(e)) => return Err(unavailable(sql_failed(e))),
            Err(_) => {
                return Err(unavailable(
                    format!(
                        "the server did not answer within {}",
                        crate::model::duration_text(timeout.min(Duration::from_secs(30)))
                    )
                    .into(),
                ));
            }
        }
        // The password sqlx falls back to when the URL has none is the admin's too: roles derive
        // theirs from it.
        let admin_password = url_password(&parsed)
            .or_else(|| std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()));
        Ok(LocalProvider {
            host: options.get_host().to_owned(),
            port: options.get_port(),
            admin_user: options.get_username().to_owned(),
            admin_password,
            options,
            ssl_mode,
            tls,
            timeout,
            status_conn: tokio::sync::Mutex::new(None),
        })
    }

    /// A fresh admin connection for one operation, or the driver's reason at once (a pool would
    /// retry a refused connection until its timeout, saying only that it timed out). Dropped, it
    /// closes: a cancelled operation never leaves a lock on a reused connection.
    async fn acquire(&self) -> Result<PgConnection, sqlx::Error> {
        let connecting =
            tokio::time::timeout(self.timeout, PgConnection::connect_with(&self.options));
        // A wait ends at once on the first signal.
        match crate::cancel::Cancel::process().or_signal(connecting).await {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(sqlx::Error::Protocol(format!(
                "the server did not answer within {}",
                crate::model::duration_text(self.timeout)
            ))),
            None => Err(sqlx::Error::Protocol(
                "stopped waiting for the server on a signal".to_owned(),
            )),
        }
    }

    /// A database's metadata: `None` when it does not exist, empty when it has no comment of ours.
    /// Every query of one operation runs on the caller's connection.
    async fn metadata(
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Option<Metadata>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT shobj_description(oid, 'pg_database') AS comment FROM pg_database WHERE datname = $1",
        )
        .bind(name)
        .fetch_optional(conn)
        .await?;
        Ok(row.map(|row| {
            row.try_get::<Option<String>, _>("comment")
                .ok()
                .flatten()
                .and_then(|c| serde_json::from_str::<Metadata>(&c).ok())
                .unwrap_or_default()
        }))
    }

    async fn write_metadata(
        conn: &mut PgConnection,
        name: &str,
        metadata: &Metadata,
    ) -> Result<(), sqlx::Error> {
        execute(conn, Self::metadata_statement(name, metadata)).await
    }

    /// The statement that writes database `name`'s metadata.
    fn metadata_statement(name: &str, metadata: &Metadata) -> String {
        let json = serde_json::to_string(metadata).expect("metadata serializes");
        format!(
            "COMMENT ON DATABASE {} IS {}",
            quote_ident(name),
            quote_literal(&json)
        )
    }

    /// Reads an environment's live metadata and checks it is `owner`'s.
    async fn owned_metadata(
        conn: &mut PgConnection,
        id: &ClusterId,
        owner: &Owner,
    ) -> Result<Metadata, ProviderError> {
        let metadata = Self::metadata(conn, id.as_str())
            .await
            .map_err(|e| ProviderError::UpdateFailed(id.clone(), sql_failed(e)))?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        if let Some(why) = owner.why_not_ours(&metadata.tags) {
            return Err(ProviderError::NotOurs {
                id: id.clone(),
                why,
            });
        }
        Ok(metadata)
    }

    /// Drops `{id}-creating`, what an interrupted create leaves, when it is `owner`'s: tagged
    /// with this owner, or untagged with the connection-limit marker. Refuses anyone else's.
    async fn drop_leftover(
        conn: &mut PgConnection,
        id: &ClusterId,
        owner: &Owner,
    ) -> Result<(), ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::CreateFailed(id.clone(), sql_failed(e));
        let temporary = format!("{id}{CREATING_SUFFIX}");
        let row = sqlx::query(
            "SELECT shobj_description(oid, 'pg_database') AS comment, datconnlimit FROM pg_database WHERE datname = $1",
        )
        .bind(&temporary)
        .fetch_optional(&mut *conn)
        .await
        .map_err(failed)?;
        let Some(row) = row else {
            return Ok(());
        };
        let comment: Option<String> = row.try_get("comment").map_err(failed)?;
        let limit: i32 = row.try_get("datconnlimit").map_err(failed)?;
        let ours = match comment.as_deref().map(serde_json::from_str::<Metadata>) {
            Some(Ok(metadata)) => owner.owns(&metadata.tags),
            Some(Err(_)) => false,
            None => creating_marker(limit),
        };
        if !ours {
            return Err(ProviderError::NotOurs {
                id: id.clone(),
                why: format!(
                    "a database `{temporary}` exists that this repository and prefix did not make"
                ),
            });
        }
        drop_database(conn, &temporary).await.map_err(failed)
    }

    /// Rewrites one of `owner`'s environments' metadata, re-checked on the live comment.
    async fn rewrite_metadata(
        &self,
        owner: &Owner,
        id: &ClusterId,
        change: impl FnOnce(&mut Metadata) -> Result<(), String>,
    ) -> Result<(), ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::UpdateFailed(id.clone(), sql_failed(e));
        let mut conn = self.acquire().await.map_err(failed)?;
        // Read, change and write under the id's lock, in one transaction: two writers (an apply
        // touching last-applied, another writing the ledger tags) never undo each other.
        let mut tx = conn.begin().await.map_err(failed)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        let mut metadata = Self::owned_metadata(&mut tx, id, owner).await?;
        change(&mut metadata).map_err(|why| ProviderError::UpdateFailed(id.clone(), why.into()))?;
        if !owner.owns(&metadata.tags) {
            return Err(ProviderError::UpdateFailed(
                id.clone(),
                "internal error: the change would remove the ownership tags".into(),
            ));
        }
        Self::write_metadata(&mut tx, id.as_str(), &metadata)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    /// Settles who owns database `id`: a copy whose masking is pending is the admin's (one an
    /// envctl from before copies were the admin's until masked made is taken back, its user's
    /// sessions ended, since as its owner the user could lift its limit or rewrite its tags);
    /// any other is `user`'s (one such an envctl masked, lifting the limit without handing it
    /// over, is handed over). Checked on its live tags.
    async fn settle_owner(
        &self,
        conn: &mut PgConnection,
        owner: &Owner,
        id: &ClusterId,
        user: &str,
    ) -> Result<(), BoxError> {
        if user == self.admin_user {
            return Ok(());
        }
        // Under the id's lock, which `masking_committed` takes too.
        self.lock_id(conn, id).await.map_err(sql_failed)?;
        let result = self.settle_owner_locked(conn, owner, id, user).await;
        unlock_id(conn, id).await;
        result
    }

    async fn settle_owner_locked(
        &self,
        conn: &mut PgConnection,
        owner: &Owner,
        id: &ClusterId,
        user: &str,
    ) -> Result<(), BoxError> {
        let dba: Option<String> = sqlx::query_scalar(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(sql_failed)?;
        let Some(dba) = dba else {
            return Ok(());
        };
        let metadata = Self::owned_metadata(conn, id, owner)
            .await
            .map_err(|e| Box::new(e) as BoxError)?;
        let pending = metadata
            .tags
            .get(crate::model::tags::MASKED)
            .map(String::as_str)
            == Some("pending");
        let wanted = if pending { &self.admin_user } else { user };
        if dba == *wanted {
            return Ok(());
        }
        let limit = if pending { COPY_CONNECTION_LIMIT } else { -1 };
        give_database(conn, id, wanted, limit)
            .await
            .map_err(sql_failed)?;
        if pending {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(sql_failed)?;
        }
        Ok(())
    }

    /// Whether database `id` takes no connection but a superuser's (`CONNECTION LIMIT 0`, a
    /// copy whose masking has not committed). False when that cannot be read.
    async fn shut(&self, id: &ClusterId) -> bool {
        let Ok(mut conn) = self.acquire().await else {
            return false;
        };
        let limit =
            sqlx::query_scalar::<_, i32>("SELECT datconnlimit FROM pg_database WHERE datname = $1")
                .bind(id.as_str())
                .fetch_optional(&mut conn)
                .await;
        let _ = conn.close().await;
        matches!(limit, Ok(Some(0)))
    }

    /// The password of a role envctl makes: HMAC-SHA-256 of its name keyed by the admin's
    /// password. `None` when the admin has none (the server trusts its clients).
    fn role_password(&self, role: &str) -> Option<String> {
        let admin = self.admin_password.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(admin.as_bytes()).ok()?;
        mac.update(b"envctl local role\n");
        mac.update(role.as_bytes());
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// The password `user` logs in with.
    fn password_of(&self, user: &str) -> Option<String> {
        if user == self.admin_user {
            self.admin_password.clone()
        } else {
            self.role_password(user)
        }
    }

    /// Makes sure the spec's user exists as a role of envctl's for `owner`: login, not a
    /// superuser, with its own password. Roles are server-wide: one that another repository or
    /// prefix uses, or that envctl did not make, is refused and never changed (its owner could
    /// otherwise reach and drop this owner's databases, and the reverse). Serialized per role
    /// across processes: two environments of one spec set it up at once under `--all`.
    async fn ensure_role(
        &self,
        conn: &mut PgConnection,
        owner: &Owner,
        user: &str,
    ) -> Result<(), BoxError> {
        if user == self.admin_user {
            return Ok(());
        }
        let mut tx = conn.begin().await.map_err(sql_failed)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('envctl role ' || $1))")
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(sql_failed)?;
        // rolpassword is readable only by a superuser admin; otherwise the password is set anew.
        let existing = sqlx::query(
            "SELECT shobj_description(r.oid, 'pg_authid') AS comment, r.rolsuper, r.rolcreaterole, \
             r.rolcreatedb, r.rolcanlogin, \
             (SELECT a.rolpassword FROM pg_authid a WHERE a.oid = r.oid AND \
              (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)) AS verifier \
             FROM pg_roles r WHERE r.rolname = $1",
        )
        .bind(user)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql_failed)?;
        // The password travels as a SCRAM verifier, never in clear text (server logs,
        // pg_stat_statements).
        let password = match self.role_password(user) {
            Some(p) => format!(" PASSWORD {}", quote_literal(&scram::verifier(&p)?)),
            None => String::new(),
        };
        let flags = "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB";
        let ours = role_comment(owner);
        match existing {
            Some(row) => {
                let comment: Option<String> = row.try_get("comment").map_err(sql_failed)?;
                match comment.as_deref() {
                    Some(c) if c == ours => {}
                    // Made by an earlier envctl that named no owner: this owner's now.
                    Some(ROLE_COMMENT) => {}
                    Some(c) if c.starts_with(ROLE_COMMENT_START) => {
                        return Err(format!(
                            "role `{user}` belongs to the environments of {} on this server (roles are server-wide, and each is one repository and prefix's alone); give this spec another `database.user`",
                            c.trim_start_matches(ROLE_COMMENT_START)
                        )
                        .into());
                    }
                    _ => {
                        return Err(format!(
                            "role `{user}` exists on the server and envctl did not make it, so envctl will not set its password; drop it, or choose another `database.user`"
                        )
                        .into());
                    }
                }
                let plain = !row.try_get::<bool, _>("rolsuper").map_err(sql_failed)?
                    && !row
                        .try_get::<bool, _>("rolcreaterole")
                        .map_err(sql_failed)?
                    && !row.try_get::<bool, _>("rolcreatedb").map_err(sql_failed)?
                    && row.try_get::<bool, _>("rolcanlogin").map_err(sql_failed)?;
                let verifier: Option<String> = row.try_get("verifier").map_err(sql_failed)?;
                let password_ok = match (self.role_password(user), verifier) {
                    (Some(p), Some(v)) => scram::matches(&v, &p),
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                if !plain || !password_ok {
                    let sql = format!("ALTER ROLE {} {flags}{password}", quote_ident(user));
                    execute(&mut tx, sql).await.map_err(sql_failed)?;
                }
                if comment.as_deref() != Some(ours.as_str()) {
                    let sql = format!(
                        "COMMENT ON ROLE {} IS {}",
                        quote_ident(user),
                        quote_literal(&ours)
                    );
                    execute(&mut tx, sql).await.map_err(sql_failed)?;
                }
            }
            None => {
                let sql = format!("CREATE ROLE {} {flags}{password}", quote_ident(user));
                execute(&mut tx, sql).await.map_err(sql_failed)?;
                let sql = format!(
                    "COMMENT ON ROLE {} IS {}",
                    quote_ident(user),
                    quote_literal(&ours)
                );
                execute(&mut tx, sql).await.map_err(sql_failed)?;
            }
        }
        tx.commit().await.map_err(sql_failed)
    }

    /// Creates an environment's database under its temporary name, empty or as a copy of
    /// `source`'s, tags it, then gives it its name; or succeeds if `owner`'s already exists.
    async fn make(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        tags: &Tags,
        source: Option<&ClusterId>,
    ) -> Result<Created, ProviderError> {
        let id = &desired.cluster_id;
        let failed = |e: sqlx::Error| ProviderError::CreateFailed(id.clone(), sql_failed(e));
        super::check_create_tags(owner, id, tags)?;
        // If this future is dropped half-way, the connection (and the lock on it) goes too.
        let mut conn = self.acquire().await.map_err(failed)?;
        self.lock_id(&mut conn, id).await.map_err(failed)?;
        let result = async {
            if Self::metadata(&mut conn, id.as_str())
                .await
                .map_err(failed)?
                .is_some()
            {
                // Idempotent: ours already exists (checked, so someone else's is never adopted).
                Self::owned_metadata(&mut conn, id, owner).await?;
                return Ok(Created::Existing);
            }
            let temporary = format!("{id}{CREATING_SUFFIX}");
            Self::drop_leftover(&mut conn, id, owner).await?;
            self.ensure_role(&mut conn, owner, &desired.database.user)
                .await
                .map_err(|e| ProviderError::CreateFailed(id.clone(), e))?;
            let owner_clause = if desired.database.user == self.admin_user {
                String::new()
            } else {
                format!(" OWNER {}", quote_ident(&desired.database.user))
            };
            // A copy is the admin's until its masking commits (`masking_committed` hands it to
            // its user), taking no connection but a superuser's from the start: its user, as
            // its owner, could lift that limit or rewrite its tags, and read unmasked rows.
            let options = match source {
                Some(_) => format!(" CONNECTION LIMIT {COPY_CONNECTION_LIMIT}"),
                None => format!(" CONNECTION LIMIT {CREATING_CONNECTION_LIMIT}{owner_clause}"),
            };
            let metadata = Metadata {
                envctl: 1,
                tags: tags.clone(),
                min_acu: desired.cluster.scaling.min_acu.as_f64(),
                max_acu: desired.cluster.scaling.max_acu.as_f64(),
                deletion_protection: desired.cluster.deletion_protection,
                user: desired.database.user.clone(),
                created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            };
            match source {
                None => {
                    let sql = format!(
                        "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'{options}",
                        quote_ident(&temporary)
                    );
                    execute(&mut conn, sql).await.map_err(failed)?;
                    Self::write_metadata(&mut conn, &temporary, &metadata)
                        .await
                        .map_err(failed)?;
                }
                Some(source) => {
                    // Tagged as soon as it exists, before its rows come: a copy cut off (a
                    // kill, a failed restore) is a leftover `prune` knows as this branch's once
                    // the branch is gone, not one only the branch's next apply can drop.
                    let tag = Self::metadata_statement(&temporary, &metadata);
                    let target = super::copy::Target {
                        name: &temporary,
                        options: &options,
                        once_made: Some(&tag),
                    };
                    let mask_id = tags.get(crate::model::tags::MASK_ID).map(String::as_str);
                    self.copy(&mut conn, desired, mask_id, source, &target)
                        .await
                        .map_err(|e| ProviderError::CreateFailed(id.clone(), e))?;
                }
            }
            // A copy takes no connection but a superuser's (the admin's, masking) until its
            // masking commits: a URL handed out before (a reset copies under the same name,
            // with the same password) opens nothing of its unmasked data
            // (`masking_committed` lifts it).
            let limit = if source.is_some() { 0 } else { -1 };
            let sql = format!(
                "ALTER DATABASE {} CONNECTION LIMIT {limit}",
                quote_ident(&temporary)
            );
            execute(&mut conn, sql).await.map_err(failed)?;
            let sql = format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&temporary),
                quote_ident(id.as_str())
            );
            execute(&mut conn, sql).await.map_err(failed)?;
            Ok(Created::New)
        }
        .await;
        // A copy that failed is dropped now, not at the branch's next apply: it may hold
        // unmasked rows, and nothing would ever use it. Only if it is ours (tagged as this
        // owner's, or untagged with the creating marker), as any leftover.
        let result = match result {
            Err(ProviderError::CreateFailed(id, e)) if source.is_some() => {
                match Self::drop_leftover(&mut conn, &id, owner).await {
                    Ok(()) => Err(ProviderError::CreateFailed(id, e)),
                    Err(dropping) => Err(ProviderError::CreateFailed(
                        id.clone(),
                        format!(
                            "{}; what it copied, `{id}{CREATING_SUFFIX}`, could not be dropped ({}): `envctl destroy --branch {}` deletes it",
                            crate::report::error_chain(e.as_ref()),
                            crate::report::error_chain(&dropping),
                            desired.branch
                        )
                        .into(),
                    )),
                }
            }
            other => other,
        };
        unlock_id(&mut conn, id).await;
        result
    }

    /// Copies the source database into `target` (see [`super::copy`]): only read, even when
    /// sessions are connected to it.
    async fn copy(
        &self,
        conn: &mut PgConnection,
        desired: &DesiredEnv,
        mask_id: Option<&str>,
        source: &ClusterId,
        target: &super::copy::Target<'_>,
    ) -> Result<(), BoxError> {
        if Self::metadata(conn, source.as_str())
            .await
            .map_err(sql_failed)?
            .is_none()
        {
            return Err(format!("the source database `{source}` does not exist").into());
        }
        let admin = super::copy::Admin {
            host: &self.host,
            port: self.port,
            user: &self.admin_user,
            password: self.admin_password.as_deref(),
            ssl_mode: self.ssl_mode.as_deref(),
            lock_wait: self.timeout,
        };
        let connect = |database: &str| self.connect_options(database, &self.admin_user);
        // Masking as it copies needs the copy's mask id (its records carry it).
        let mask = desired.data.as_ref().zip(mask_id).map(|(data, mask_id)| {
            super::masked_copy::MaskInCopy {
                cluster_id: &desired.cluster_id,
                mask_id,
                rules: &data.rules,
                connect: &connect,
            }
        });
        super::copy::copy_database(conn, &admin, target, source.as_str(), mask.as_ref()).await?;
        Ok(())
    }

    fn connect_options(&self, database: &str, user: &str) -> PgConnectOptions {
        // A migration waiting on another session's lock gives up with the wait timeout (a
        // session default, so resetting the session between steps keeps it).
        let lock_timeout = self.timeout.as_millis().to_string();
        let options = self
            .options
            .clone()
            .username(user)
            .database(database)
            .options([("lock_timeout", lock_timeout.as_str())]);
        match self.password_of(user) {
            Some(password) => options.password(&password),
            None => options,
        }
    }

    /// Holds a per-id advisory lock on `conn` while `work` runs: one creator per id at a time,
    /// across processes. Polled, and bounded by the provider's timeout.
    async fn lock_id(&self, conn: &mut PgConnection, id: &ClusterId) -> Result<(), sqlx::Error> {
        let start = Instant::now();
        loop {
            if try_lock_id(conn, id).await? {
                return Ok(());
            }
            if crate::cancel::Cancel::process().is_requested() {
                return Err(sqlx::Error::Protocol(format!(
                    "stopped waiting for the lock of `{id}` on a signal"
                )));
            }
            if start.elapsed() >= self.timeout {
                return Err(sqlx::Error::Protocol(format!(
                    "another session (an envctl creating or deleting it?) has held the lock of `{id}` for over {}",
                    crate::model::duration_text(self.timeout)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn observe(&self, owner: &Owner) -> Result<Vec<ObservedEnv>, ProviderError> {
        let rows = sqlx::query(
            "SELECT datname, shobj_description(oid, 'pg_database') AS comment FROM pg_database ORDER BY datname",
        )
        .fetch_all(&mut self.acquire().await.map_err(|e| ProviderError::ObserveFailed(sql_failed(e)))?)
        .await
        .map_err(|e| ProviderError::ObserveFailed(sql_failed(e)))?;
        let mut observed = Vec::new();
        for row in rows {
            let name: String = row.get("datname");
            let Some(comment) = row.get::<Option<String>, _>("comment") else {
                continue;
            };
            let Ok(metadata) = serde_json::from_str::<Metadata>(&comment) else {
                continue;
            };
            if !owner.owns(&metadata.tags) || name.ends_with(CREATING_SUFFIX) {
                continue;
            }
            let scaling = match (
                Acu::from_f64(metadata.min_acu),
                Acu::from_f64(metadata.max_acu),
            ) {
                (Some(min_acu), Some(max_acu)) => Some(Scaling { min_acu, max_acu }),
                _ => None,
            };
            let cluster_id = ClusterId::from_live(name);
            observed.push(ObservedEnv {
                refused: owner.id_outside_prefix(&cluster_id),
                cluster_id,
                tags: metadata.tags,
                status: "available".into(),
                status_hint: None,
                scaling,
                deletion_protection: metadata.deletion_protection,
                engine_version: None,
                database_name: None,
                database_user: Some(metadata.user),
                created_at: Some(metadata.created_at),
                endpoint: Some(format!("{}:{}", self.host, self.port)),
                arn: None,
                writerless: false,
                ledger: Default::default(),
            });
        }
        Ok(observed)
    }

    async fn create(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        tags: &Tags,
    ) -> Result<Created, ProviderError> {
        self.make(owner, desired, tags, None).await
    }

    async fn clone_env(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        source: &ClusterId,
        tags: &Tags,
    ) -> Result<Option<String>, ProviderError> {
        let mask_id = |tags: &Tags| tags.get(crate::model::tags::MASK_ID).cloned();
        match self.make(owner, desired, tags, Some(source)).await? {
            Created::New => Ok(mask_id(tags)),
            // Another run's copy (or its masking, going on now) is the one to finish.
            Created::Existing => {
                let id = &desired.cluster_id;
                let failed =
                    |e: sqlx::Error| ProviderError::CreateFailed(id.clone(), sql_failed(e));
                let mut conn = self.acquire().await.map_err(failed)?;
                let live = Self::owned_metadata(&mut conn, id, owner).await?;
                Ok(mask_id(&live.tags))
            }
        }
    }

    async fn source_status(&self, id: &ClusterId) -> Result<Option<SourceStatus>, ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::ObserveFailed(sql_failed(e));
        let mut kept = self.status_conn.lock().await;
        let mut found = None;
        // The kept connection, else a new one; a kept one the server closed meanwhile is
        // replaced once.
        for fresh in [kept.is_none(), true] {
            if fresh {
                *kept = None;
            }
            let conn = match &mut *kept {
                Some(conn) => conn,
                empty => empty.insert(self.acquire().await.map_err(failed)?),
            };
            let read = tokio::time::timeout(self.timeout, Self::metadata(conn, id.as_str())).await;
            match read {
                Ok(Ok(metadata)) => {
                    found = Some(metadata);
                    break;
                }
                Ok(Err(e)) if fresh => return Err(failed(e)),
                Err(_) if fresh => {
                    *kept = None;
                    return Err(failed(sqlx::Error::Protocol(format!(
                        "the server did not answer within {}",
                        crate::model::duration_text(self.timeout)
                    ))));
                }
                _ => {}
            }
        }
        let found = found.flatten();
        Ok(found.map(|metadata| SourceStatus {
            status: "available".into(),
            hint: None,
            masking_pending: crate::model::tags::masking_pending(&metadata.tags),
            masked_with: crate::model::tags::masked_with(&metadata.tags).map(str::to_owned),
            // Masking runs as the server's admin.
            master_user: None,
        }))
    }

    async fn master_connection(
        &self,
        id: &ClusterId,
        _database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        let admin = DatabaseSettings {
            name: id.to_string(),
            user: self.admin_user.clone(),
        };
        self.connection(id, &admin).await
    }

    /// Databases with these names that are not `owner`'s environments: untagged, or another
    /// owner's.
    async fn occupants(
        &self,
        owner: &Owner,
        ids: &[ClusterId],
    ) -> Result<std::collections::BTreeMap<ClusterId, String>, ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::ObserveFailed(sql_failed(e));
        let names: Vec<&str> = ids.iter().map(ClusterId::as_str).collect();
        let rows = sqlx::query(
            "SELECT datname, shobj_description(oid, 'pg_database') AS comment FROM pg_database WHERE datname = ANY($1) ORDER BY datname",
        )
        .bind(&names)
        .fetch_all(&mut self.acquire().await.map_err(failed)?)
        .await
        .map_err(failed)?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let name: String = row.get("datname");
                let comment: Option<String> = row.get("comment");
                let why = match comment.and_then(|c| serde_json::from_str::<Metadata>(&c).ok()) {
                    Some(metadata) => owner.why_not_ours(&metadata.tags)?,
                    None => "it is a database without envctl's tags".to_owned(),
                };
                Some((ClusterId::from_live(name), why))
            })
            .collect())
    }

    async fn prepare(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError> {
        let id = &desired.cluster_id;
        let mut conn = self
            .acquire()
            .await
            .map_err(|e| ProviderError::CreateFailed(id.clone(), sql_failed(e)))?;
        self.ensure_role(&mut conn, owner, &desired.database.user)
            .await
            .map_err(|e| ProviderError::CreateFailed(id.clone(), e))
    }

    async fn wait_ready(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        timeout: Duration,
        _on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), ProviderError> {
        let id = &desired.cluster_id;
        let user = &desired.database.user;
        let start = Instant::now();
        {
            let failed = |e: BoxError| ProviderError::LoginFailed {
                id: id.clone(),
                user: user.clone(),
                source: e,
            };
            let mut conn = self.acquire().await.map_err(|e| failed(sql_failed(e)))?;
            self.ensure_role(&mut conn, owner, user)
                .await
                .map_err(failed)?;
            self.settle_owner(&mut conn, owner, id, user)
                .await
                .map_err(failed)?;
        }
        let options = self.connect_options(id.as_str(), user);
        let cancel = crate::cancel::Cancel::process();
        loop {
            if cancel.is_requested() {
                return Err(ProviderError::Interrupted {
                    id: id.clone(),
                    what: "waiting until its user can connect".into(),
                });
            }
            let left = timeout.saturating_sub(start.elapsed());
            let attempt = async {
                let mut conn = PgConnection::connect_with(&options).await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                conn.close().await
            };
            let result = match tokio::time::timeout(left, attempt).await {
                Ok(result) => result,
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            };
            match result {
                Ok(()) => return Ok(()),
                // A copy takes no connection of its users' until its masking commits: PostgreSQL
                // counts them after the login succeeded, so the user can connect once it may.
                // (The code alone also means a full server or a role's limit, and the message
                // is in the server's language: the database's own limit says which.)
                // A copy whose source gives PUBLIC no CONNECT is refused before its limit is
                // counted (its user gets CONNECT as its owner, once masked): the same.
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("53300" | "42501"))
                        && self.shut(id).await =>
                {
                    return Ok(());
                }
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                    // "database does not exist" does not get better by waiting.
                    return Err(ProviderError::NotFound(id.clone()));
                }
                // A wrong password or a missing role does not either.
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("28P01" | "28000")) =>
                {
                    return Err(ProviderError::LoginFailed {
                        id: id.clone(),
                        user: user.clone(),
                        source: sql_failed(sqlx::Error::Database(e)),
                    });
                }
                Err(e) if start.elapsed() >= timeout => {
                    return Err(ProviderError::NotReady {
                        id: id.clone(),
                        waited: start.elapsed(),
                        source: Some(sql_failed(e)),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn update(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError> {
        self.rewrite_metadata(owner, &desired.cluster_id, |metadata| {
            metadata.min_acu = desired.cluster.scaling.min_acu.as_f64();
            metadata.max_acu = desired.cluster.scaling.max_acu.as_f64();
            metadata.deletion_protection = desired.cluster.deletion_protection;
            Ok(())
        })
        .await
    }

    async fn update_tags(
        &self,
        owner: &Owner,
        id: &ClusterId,
        update: &TagUpdate,
    ) -> Result<(), ProviderError> {
        if update.is_empty() {
            // Nothing to write, but the caller relies on the ownership check (before migrating).
            let failed = |e: sqlx::Error| ProviderError::UpdateFailed(id.clone(), sql_failed(e));
            let mut conn = self.acquire().await.map_err(failed)?;
            return Self::owned_metadata(&mut conn, id, owner).await.map(|_| ());
        }
        self.rewrite_metadata(owner, id, |metadata| {
            if let Some(why) = update.refused_by(&metadata.tags) {
                return Err(why);
            }
            update.apply_to(&mut metadata.tags);
            Ok(())
        })
        .await
    }

    async fn masking_committed(
        &self,
        owner: &Owner,
        id: &ClusterId,
        mask_id: Option<&str>,
    ) -> Result<(), ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::UpdateFailed(id.clone(), sql_failed(e));
        let mut conn = self.acquire().await.map_err(failed)?;
        // Under the id's lock, which a reset holds while it drops and copies again: the copy
        // opened is the one that was masked.
        self.lock_id(&mut conn, id).await.map_err(failed)?;
        let result = async {
            let live = Self::owned_metadata(&mut conn, id, owner).await?;
            let only_if = mask_id.map(|m| (crate::model::tags::MASK_ID.to_owned(), m.to_owned()));
            let check = TagUpdate {
                only_if,
                ..TagUpdate::default()
            };
            if let Some(why) = check.refused_by(&live.tags) {
                return Err(ProviderError::UpdateFailed(id.clone(), why.into()));
            }
            // Its user gets it now, with the limit lifted: it owns it, as any environment's
            // (made by an older envctl, it may already; the admin's own stays the admin's).
            give_database(&mut conn, id, &live.user, -1)
                .await
                .map_err(failed)
        }
        .await;
        unlock_id(&mut conn, id).await;
        result
    }

    async fn delete(
        &self,
        owner: &Owner,
        id: &ClusterId,
        options: DeleteOptions,
    ) -> Result<(), ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::DeleteFailed(id.clone(), sql_failed(e));
        let mut conn = self.acquire().await.map_err(failed)?;
        // Under the id's lock, which creates and tag writes take too: what is checked below is
        // what is dropped.
        self.lock_id(&mut conn, id).await.map_err(failed)?;
        let result = async {
            // What an interrupted create of this id left behind goes too; a database of that
            // name someone else made stays, and does not keep this one from going.
            match Self::drop_leftover(&mut conn, id, owner).await {
                Ok(()) | Err(ProviderError::NotOurs { .. }) => {}
                Err(e) => return Err(e),
            }
            let metadata = match Self::owned_metadata(&mut conn, id, owner).await {
                // Decided on tags that are gone with it: say so (someone deleted it first).
                Err(ProviderError::NotFound(id)) if !options.unchanged.is_empty() => {
                    return Err(ProviderError::NotFound(id));
                }
                Err(ProviderError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
                Ok(metadata) => metadata,
            };
            // Re-read on the live resource: an apply may have protected it since the plan.
            super::check_delete(
                owner,
                id,
                &metadata.tags,
                metadata.deletion_protection,
                &options,
            )?;
            drop_database(&mut conn, id.as_str()).await.map_err(failed)
        }
        .await;
        unlock_id(&mut conn, id).await;
        result
    }

    async fn leftovers(&self, owner: &Owner) -> Result<Vec<Leftover>, ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::ObserveFailed(sql_failed(e));
        let mut conn = self.acquire().await.map_err(failed)?;
        let rows = sqlx::query(
            "SELECT datname, shobj_description(oid, 'pg_database') AS comment, datconnlimit FROM pg_database WHERE right(datname, length($1)) = $1 ORDER BY datname",
        )
        .bind(CREATING_SUFFIX)
        .fetch_all(&mut conn)
        .await
        .map_err(failed)?;
        let mut found = Vec::new();
        for row in rows {
            let name: String = row.get("datname");
            let comment: Option<String> = row.get("comment");
            let limit: i32 = row.get("datconnlimit");
            let Some(leftover) = leftover_of(&name, comment.as_deref(), limit, owner) else {
                continue;
            };
            // One a create is at work on (it holds the id's lock from start to finish) was not
            // left by anyone.
            let mut leftover = leftover;
            leftover.at_work = !try_lock_id(&mut conn, &leftover.cluster_id)
                .await
                .map_err(failed)?;
            if !leftover.at_work {
                unlock_id(&mut conn, &leftover.cluster_id).await;
            }
            found.push(leftover);
        }
        Ok(found)
    }

    async fn delete_leftover(
        &self,
        owner: &Owner,
        leftover: &Leftover,
        min_age: Duration,
    ) -> Result<bool, ProviderError> {
        let id = &leftover.cluster_id;
        let failed = |e: sqlx::Error| ProviderError::DeleteFailed(id.clone(), sql_failed(e));
        let mut conn = self.acquire().await.map_err(failed)?;
        // A create holds the id's lock from start to finish: a free lock means none is at work.
        if !try_lock_id(&mut conn, id).await.map_err(failed)? {
            return Ok(false);
        }
        let result = async {
            let row = sqlx::query(
                "SELECT shobj_description(oid, 'pg_database') AS comment, datconnlimit FROM pg_database WHERE datname = $1",
            )
            .bind(&leftover.name)
            .fetch_optional(&mut conn)
            .await
            .map_err(failed)?;
            let Some(row) = row else { return Ok(false) };
            let comment: Option<String> = row.get("comment");
            let limit: i32 = row.get("datconnlimit");
            let Some(live) = leftover_of(&leftover.name, comment.as_deref(), limit, owner) else {
                return Ok(false);
            };
            // Untagged, it is ours only if its name is the id derived for a branch of ours.
            let branch = live.branch.as_ref().or(leftover.branch.as_ref());
            let Some(branch) = branch else { return Ok(false) };
            if crate::model::ClusterId::derive(&owner.prefix, &owner.repo, branch) != *id {
                return Ok(false);
            }
            if let Some(created) = live.created_at
                && SystemTime::now()
                    .duration_since(created)
                    .is_ok_and(|age| age < min_age)
            {
                return Ok(false);
            }
            drop_database(&mut conn, &leftover.name)
                .await
                .map_err(failed)?;
            Ok(true)
        }
        .await;
        unlock_id(&mut conn, id).await;
        result
    }

    fn serves_local_branches(&self) -> bool {
        true
    }

    fn makes_again_quickly(&self) -> bool {
        true
    }

    async fn ledger_readers(
        &self,
        id: &ClusterId,
        _database: &DatabaseSettings,
    ) -> Result<Vec<Connection>, ProviderError> {
        let admin = DatabaseSettings {
            name: id.to_string(),
            user: self.admin_user.clone(),
        };
        let mut connection = self.connection(id, &admin).await?;
        // The admin reads a database its user owns (and may have given a search_path, or
        // functions and operators named as pg_catalog's): only pg_catalog's are found.
        connection.options = connection.options.options([("search_path", "pg_catalog")]);
        Ok(vec![connection])
    }

    async fn upstream(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Upstream, ProviderError> {
        let credential = match self.password_of(&database.user) {
            Some(password) => Credential::Password(Secret::new(password)),
            None => Credential::None,
        };
        Ok(Upstream {
            cluster_id: id.clone(),
            host: self.host.clone(),
            port: self.port,
            database: id.as_str().to_owned(),
            user: database.user.clone(),
            tls: self.tls.clone(),
            credential,
        })
    }

    async fn connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        Ok(Connection {
            host: self.host.clone(),
            port: self.port,
            database: id.as_str().to_owned(),
            user: database.user.clone(),
            password: self.password_of(&database.user),
            ssl_mode: self.ssl_mode.clone(),
            ssl_root_cert: None,
            options: self.connect_options(id.as_str(), &database.user),
        })
    }
}

/// SCRAM-SHA-256 verifiers (RFC 5802, RFC 7677), as PostgreSQL stores them in `rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64.
mod scram {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};

    const ITERATIONS: u32 = 4096;

    fn keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let hmac = |message: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&salted).expect("HMAC takes any key");
            mac.update(message);
            let out: [u8; 32] = mac.finalize().into_bytes().into();
            out
        };
        let client_key = hmac(b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        (stored_key, hmac(b"Server Key"))
    }

    /// A verifier for `password` with a fresh random salt.
    pub fn verifier(password: &str) -> Result<String, std::io::Error> {
        let mut salt = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut salt)?;
        let (stored, server) = keys(password, &salt, ITERATIONS);
        Ok(format!(
            "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
            STANDARD.encode(salt),
            STANDARD.encode(stored),
            STANDARD.encode(server)
        ))
    }

    /// Whether a stored verifier is one for `password`.
    pub fn matches(verifier: &str, password: &str) -> bool {
        let parse = || {
            let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
            let (iterations_salt, keys_text) = rest.split_once('$')?;
            let (iterations, salt) = iterations_salt.split_once(':')?;
            let (stored, server) = keys_text.split_once(':')?;
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|i| (1..=1_000_000).contains(i))?;
            Some((
                iterations,
                STANDARD.decode(salt).ok()?,
                STANDARD.decode(stored).ok()?,
                STANDARD.decode(server).ok()?,
            ))
        };
        let Some((iterations, salt, stored, server)) = parse() else {
            return false;
        };
        let (want_stored, want_server) = keys(password, &salt, iterations);
        stored == want_stored && server == want_server
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A verifier PostgreSQL 15 made (`SET password_encryption = 'scram-sha-256'; CREATE ROLE
        /// r PASSWORD 'envctl'`), checked by our code: a golden value, not our formula again.
        #[test]
        fn reads_a_verifier_postgresql_made() {
            let made_by_postgres = "SCRAM-SHA-256$4096:c/YAouLl4aCSwcYIgsZZZg==$THwg+ElyLeRKUn6xPRD7ABgtg9iMygL12UZSAVxeKNc=:O7YiEWJXQoEqysgbce4OanzzeCcFxiTYYk1H++8w9HQ=";
            assert!(matches(made_by_postgres, "envctl"));
            assert!(!matches(made_by_postgres, "envctl!"));
            assert!(!matches("md5abc", "envctl"));
            let ours = verifier("s3cret").unwrap();
            assert!(matches(&ours, "s3cret"));
            assert!(!matches(&ours, "other"));
        }
    }
}
