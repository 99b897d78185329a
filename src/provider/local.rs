//! The local provider: each environment is a database on a PostgreSQL server, named after its
//! cluster id, with its ownership tags and settings beside it as a JSON `COMMENT ON DATABASE`.
//!
//! A database is created under a temporary name (`{id}-creating`), tagged, then renamed, so a crash
//! never leaves an untagged database with our name. Observing reads `pg_database` only. Every other
//! database on the server is ignored: only those whose comment carries `envctl:managed=true` and
//! this repository's `envctl:repo` are ever changed or dropped.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};

use super::{Connection, Provider, ProviderError};
use crate::model::{
    Acu, ClusterId, DatabaseSettings, DesiredEnv, ObservedEnv, RepoName, Scaling, tags,
};

/// Suffix of a database that is being created.
const CREATING_SUFFIX: &str = "-creating";

/// The connection limit a database is created with until it is tagged. `CREATE DATABASE` and
/// `COMMENT` cannot share a transaction: if envctl dies between them, this marker (with the
/// `{id}-creating` name, which holds a hash of the repository and branch) says the untagged
/// leftover is ours to drop.
const CREATING_CONNECTION_LIMIT: i32 = 7177;

/// What the comment on an environment's database holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Metadata {
    /// Format marker: envctl writes `1`.
    envctl: u32,
    tags: BTreeMap<String, String>,
    min_acu: f64,
    max_acu: f64,
    deletion_protection: bool,
    user: String,
    created_at: String,
}

impl Metadata {
    fn is_ours(&self, repo: &RepoName) -> bool {
        self.tags.get(tags::MANAGED).map(String::as_str) == Some("true")
            && self.tags.get(tags::REPO).map(String::as_str) == Some(repo.as_str())
    }
}

/// The local provider, connected to its server.
pub struct LocalProvider {
    admin: PgPool,
    host: String,
    port: u16,
    admin_user: String,
    password: Option<String>,
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Runs one statement built from quoted identifiers and literals (DDL takes no bind parameters).
async fn execute(conn: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(|_| ())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl LocalProvider {
    /// Connects to the server at `url` (which holds the admin password: never print it).
    pub async fn connect(url: &str) -> Result<LocalProvider, ProviderError> {
        let unavailable =
            |e: Box<dyn std::error::Error + Send + Sync>| ProviderError::Unavailable {
                provider: "local",
                source: e,
            };
        let parsed = url::Url::parse(url)
            .map_err(|e| unavailable(format!("the server URL is not a URL: {e}").into()))?;
        let options = PgConnectOptions::from_str(url).map_err(|e| unavailable(boxed(e)))?;
        let password = parsed.password().map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        });
        let admin = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().application_name("envctl"))
            .await
            .map_err(|e| unavailable(boxed(e)))?;
        Ok(LocalProvider {
            admin,
            host: options.get_host().to_owned(),
            port: options.get_port(),
            admin_user: options.get_username().to_owned(),
            password,
        })
    }

    /// A database's metadata: `None` when it does not exist, empty when it has no comment of ours.
    /// Every query of one operation runs on the caller's connection: taking a second one from the
    /// pool while holding one could wait forever under concurrency.
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
        executor: &mut PgConnection,
        name: &str,
        metadata: &Metadata,
    ) -> Result<(), sqlx::Error> {
        let json = serde_json::to_string(metadata).expect("metadata serializes");
        let sql = format!(
            "COMMENT ON DATABASE {} IS {}",
            quote_ident(name),
            quote_literal(&json)
        );
        execute(executor, sql).await
    }

    /// Reads an environment's metadata and checks it is ours to change.
    async fn owned_metadata(
        conn: &mut PgConnection,
        id: &ClusterId,
        repo: Option<&RepoName>,
    ) -> Result<Metadata, ProviderError> {
        let metadata = Self::metadata(conn, id.as_str())
            .await
            .map_err(|e| ProviderError::UpdateFailed(id.clone(), boxed(e)))?
            .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
        let managed = metadata.tags.get(tags::MANAGED).map(String::as_str) == Some("true");
        let repo_ok = repo.is_none_or(|r| metadata.is_ours(r));
        if !managed || !repo_ok {
            return Err(ProviderError::NotOurs {
                id: id.clone(),
                why: "its comment does not carry `envctl:managed=true` and this repository's `envctl:repo`".into(),
            });
        }
        Ok(metadata)
    }

    /// Drops `{id}-creating`, what an interrupted create leaves, when it is ours: tagged with
    /// this repository, or untagged with the connection-limit marker. Refuses anyone else's.
    async fn drop_leftover(
        conn: &mut PgConnection,
        id: &ClusterId,
        repo: &RepoName,
    ) -> Result<(), ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::CreateFailed(id.clone(), boxed(e));
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
            Some(Ok(metadata)) => metadata.is_ours(repo),
            Some(Err(_)) => false,
            None => limit == CREATING_CONNECTION_LIMIT,
        };
        if !ours {
            return Err(ProviderError::NotOurs {
                id: id.clone(),
                why: format!("a database `{temporary}` exists that envctl did not make"),
            });
        }
        let sql = format!("DROP DATABASE {} WITH (FORCE)", quote_ident(&temporary));
        execute(conn, sql).await.map_err(failed)
    }

    /// Replaces the tags of one of our environments, and whatever else `change` sets.
    async fn rewrite_metadata(
        &self,
        id: &ClusterId,
        tags: &BTreeMap<String, String>,
        change: impl FnOnce(&mut Metadata),
    ) -> Result<(), ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::UpdateFailed(id.clone(), boxed(e));
        let repo = tags.get(tags::REPO).and_then(|r| RepoName::parse(r).ok());
        let mut conn = self.admin.acquire().await.map_err(failed)?;
        let mut metadata = Self::owned_metadata(&mut conn, id, repo.as_ref()).await?;
        metadata.tags = tags.clone();
        change(&mut metadata);
        Self::write_metadata(&mut conn, id.as_str(), &metadata)
            .await
            .map_err(failed)
    }

    async fn ensure_role(
        &self,
        conn: &mut sqlx::PgConnection,
        user: &str,
    ) -> Result<(), sqlx::Error> {
        if user == self.admin_user {
            return Ok(());
        }
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(user)
                .fetch_one(&mut *conn)
                .await?;
        if exists {
            return Ok(());
        }
        let password = match &self.password {
            Some(p) => format!(" PASSWORD {}", quote_literal(p)),
            None => String::new(),
        };
        let sql = format!("CREATE ROLE {} LOGIN{password}", quote_ident(user));
        match execute(conn, sql).await {
            // Another envctl created it in the meantime.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => Ok(()),
            other => other,
        }
    }

    fn connect_options(&self, database: &str, user: &str) -> PgConnectOptions {
        let mut options = PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(user)
            .database(database)
            .ssl_mode(PgSslMode::Prefer)
            .application_name("envctl");
        if let Some(password) = &self.password {
            options = options.password(password);
        }
        options
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn observe(&self, repo: &RepoName) -> Result<Vec<ObservedEnv>, ProviderError> {
        let rows = sqlx::query(
            "SELECT datname, shobj_description(oid, 'pg_database') AS comment FROM pg_database ORDER BY datname",
        )
        .fetch_all(&self.admin)
        .await
        .map_err(|e| ProviderError::ObserveFailed(boxed(e)))?;
        let mut observed = Vec::new();
        for row in rows {
            let name: String = row.get("datname");
            let Some(comment) = row.get::<Option<String>, _>("comment") else {
                continue;
            };
            let Ok(metadata) = serde_json::from_str::<Metadata>(&comment) else {
                continue;
            };
            if !metadata.is_ours(repo) || name.ends_with(CREATING_SUFFIX) {
                continue;
            }
            let scaling = match (
                Acu::from_f64(metadata.min_acu),
                Acu::from_f64(metadata.max_acu),
            ) {
                (Some(min_acu), Some(max_acu)) => Some(Scaling { min_acu, max_acu }),
                _ => None,
            };
            observed.push(ObservedEnv {
                cluster_id: ClusterId::from_live(name),
                tags: metadata.tags,
                status: "available".into(),
                scaling,
                deletion_protection: metadata.deletion_protection,
                engine_version: None,
                database_name: None,
                database_user: Some(metadata.user),
                created_at: Some(metadata.created_at),
                ledger: None,
            });
        }
        Ok(observed)
    }

    async fn create(
        &self,
        desired: &DesiredEnv,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        let id = &desired.cluster_id;
        let failed = |e: sqlx::Error| ProviderError::CreateFailed(id.clone(), boxed(e));
        let repo = tags.get(tags::REPO).and_then(|r| RepoName::parse(r).ok());
        let mut conn = self.admin.acquire().await.map_err(failed)?;
        // One creator per id at a time, across processes.
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(failed)?;
        let result = async {
            if Self::metadata(&mut conn, id.as_str())
                .await
                .map_err(failed)?
                .is_some()
            {
                // Idempotent: ours already exists (checked, so someone else's is never adopted).
                Self::owned_metadata(&mut conn, id, repo.as_ref()).await?;
                return Ok(());
            }
            let temporary = format!("{id}{CREATING_SUFFIX}");
            if let Some(repo) = &repo {
                Self::drop_leftover(&mut conn, id, repo).await?;
            }
            self.ensure_role(&mut conn, &desired.database.user)
                .await
                .map_err(failed)?;
            let owner = if desired.database.user == self.admin_user {
                String::new()
            } else {
                format!(" OWNER {}", quote_ident(&desired.database.user))
            };
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' CONNECTION LIMIT {CREATING_CONNECTION_LIMIT}{owner}",
                quote_ident(&temporary)
            );
            execute(&mut conn, sql).await.map_err(failed)?;
            let metadata = Metadata {
                envctl: 1,
                tags: tags.clone(),
                min_acu: desired.cluster.scaling.min_acu.as_f64(),
                max_acu: desired.cluster.scaling.max_acu.as_f64(),
                deletion_protection: desired.cluster.deletion_protection,
                user: desired.database.user.clone(),
                created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            };
            Self::write_metadata(&mut conn, &temporary, &metadata)
                .await
                .map_err(failed)?;
            let sql = format!(
                "ALTER DATABASE {} CONNECTION LIMIT -1",
                quote_ident(&temporary)
            );
            execute(&mut conn, sql).await.map_err(failed)?;
            let sql = format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&temporary),
                quote_ident(id.as_str())
            );
            execute(&mut conn, sql).await.map_err(failed)?;
            Ok(())
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(id.as_str())
            .execute(&mut *conn)
            .await;
        result
    }

    async fn wait_ready(
        &self,
        desired: &DesiredEnv,
        timeout: Duration,
    ) -> Result<(), ProviderError> {
        let start = Instant::now();
        let options = self.connect_options(desired.cluster_id.as_str(), &desired.database.user);
        loop {
            let attempt = async {
                let mut conn = sqlx::PgConnection::connect_with(&options).await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                conn.close().await
            }
            .await;
            match attempt {
                Ok(()) => return Ok(()),
                // A wrong password or a missing role does not get better by waiting.
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("28P01" | "28000")) =>
                {
                    return Err(ProviderError::LoginFailed {
                        id: desired.cluster_id.clone(),
                        user: desired.database.user.clone(),
                        source: boxed(sqlx::Error::Database(e)),
                    });
                }
                Err(e) if start.elapsed() >= timeout => {
                    return Err(ProviderError::NotReady {
                        id: desired.cluster_id.clone(),
                        waited: start.elapsed(),
                        source: Some(boxed(e)),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn update(
        &self,
        desired: &DesiredEnv,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        self.rewrite_metadata(&desired.cluster_id, tags, |metadata| {
            metadata.min_acu = desired.cluster.scaling.min_acu.as_f64();
            metadata.max_acu = desired.cluster.scaling.max_acu.as_f64();
            metadata.deletion_protection = desired.cluster.deletion_protection;
        })
        .await
    }

    async fn set_tags(
        &self,
        id: &ClusterId,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        self.rewrite_metadata(id, tags, |_| {}).await
    }

    async fn delete(&self, id: &ClusterId, repo: &RepoName) -> Result<(), ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::DeleteFailed(id.clone(), boxed(e));
        let mut conn = self.admin.acquire().await.map_err(failed)?;
        // What an interrupted create of this id left behind goes too.
        Self::drop_leftover(&mut conn, id, repo).await?;
        match Self::owned_metadata(&mut conn, id, Some(repo)).await {
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(id.as_str())
        );
        execute(&mut conn, sql).await.map_err(failed)?;
        Ok(())
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
            password: self.password.clone(),
            ssl_mode: "prefer",
            options: self.connect_options(id.as_str(), &database.user),
        })
    }
}
