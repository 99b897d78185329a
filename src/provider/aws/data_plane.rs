//! How the AWS provider reaches a cluster's databases: the cluster endpoint on its port, the spec's
//! user, a fresh IAM auth token as the password for every new connection (they are valid for 15
//! minutes), TLS as [`super::tls`] says (`verify-full` against the RDS CA bundle by default).
//! Each session's lock waits and statements are bounded by the wait timeout.
//!
//! After a cluster is available, [`DataPlane::setup`] runs as the master user `postgres`: it makes
//! the spec's database when express would not take `DatabaseName`, and a `database.user` other
//! than the master user (`CREATE ROLE … LOGIN`, `GRANT rds_iam`, owner of the database).
//!
//! For tests only, `ENVCTL_DATA_PLANE_OVERRIDE=postgres://…` sends every cluster's data plane to
//! that server instead: one database per cluster id there, made at setup and dropped with the
//! cluster; no DNS wait; the URL's own TLS mode; the URL's user as the master user; other users
//! with a password derived from the URL's (as the local provider does).

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};

use super::api::ClusterState;
use super::token;
use crate::model::{ClusterId, DesiredEnv, READER_USER};
use crate::provider::{BoxError, Connection, boxed};
use crate::sql::{SqlError, quote_ident, quote_literal};

/// The master user of an express cluster where the cluster does not say (`MasterUsername`).
pub const MASTER_USER: &str = "postgres";

/// The master user of `cluster`, as `DescribeDBClusters` says.
pub fn master_user(cluster: &ClusterState) -> &str {
    cluster.master_username.as_deref().unwrap_or(MASTER_USER)
}

/// How data-plane connections are made: the credentials that sign tokens, and where they go.
pub struct DataPlane {
    credentials: SharedCredentialsProvider,
    region: String,
    pub target: Target,
}

/// Where data-plane connections go.
pub enum Target {
    /// The cluster endpoints, with IAM tokens, over TLS as [`super::tls`] says (an error in
    /// the environment's TLS settings is reported when a connection is asked for).
    Aws {
        tls: Result<super::tls::Tls, String>,
        timeout: Duration,
    },
    /// `ENVCTL_DATA_PLANE_OVERRIDE`: one server for every cluster (tests).
    Override {
        options: Box<PgConnectOptions>,
        host: String,
        port: u16,
        admin_user: String,
        admin_password: Option<String>,
        ssl_mode: Option<String>,
    },
}

fn sql_failed(e: sqlx::Error) -> BoxError {
    boxed(SqlError(e))
}

/// Whether a `CREATE DATABASE` or `CREATE ROLE` failed because another session made it first:
/// `42P04`/`42710` when it was there before, `23505` (the catalog's unique index) when both
/// creates ran at once (two applies of one branch).
fn made_meanwhile(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(e) if matches!(e.code().as_deref(), Some("42P04" | "42710" | "23505")))
}

async fn execute(conn: &mut PgConnection, sql: String) -> Result<(), BoxError> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(sql_failed)
}

impl DataPlane {
    /// The data plane of this run: the override when `ENVCTL_DATA_PLANE_OVERRIDE` is set.
    pub fn from_env(
        credentials: SharedCredentialsProvider,
        region: String,
        timeout: Duration,
    ) -> Result<DataPlane, BoxError> {
        if let Ok(url) = std::env::var("ENVCTL_DATA_PLANE_OVERRIDE")
            && !url.is_empty()
        {
            let parsed = url::Url::parse(&url)
                .map_err(|e| format!("ENVCTL_DATA_PLANE_OVERRIDE is not a URL: {e}"))?;
            let options = PgConnectOptions::from_str(&url)
                .map_err(sql_failed)?
                .application_name("envctl");
            let admin_password = parsed.password().map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            });
            let ssl_mode = parsed
                .query_pairs()
                .find(|(k, _)| k == "sslmode")
                .map(|(_, v)| v.into_owned());
            let target = Target::Override {
                host: options.get_host().to_owned(),
                port: options.get_port(),
                admin_user: options.get_username().to_owned(),
                admin_password,
                ssl_mode,
                options: Box::new(options),
            };
            return Ok(DataPlane {
                credentials,
                region,
                target,
            });
        }
        let tls = super::tls::from_env().map_err(|e| format!("{e} (hint: {})", e.hint()));
        Ok(DataPlane {
            credentials,
            region,
            target: Target::Aws { tls, timeout },
        })
    }

    /// A fresh IAM auth token for `user` at `host:port`.
    pub async fn token(&self, host: &str, port: u16, user: &str) -> Result<String, BoxError> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| format!("cannot load AWS credentials: {e}"))?;
        token::generate_auth_token(
            &credentials,
            &self.region,
            host,
            port,
            user,
            SystemTime::now(),
        )
        .map_err(boxed)
    }

    /// Whether connections go to the override server (no DNS, no tokens).
    pub fn is_override(&self) -> bool {
        matches!(self.target, Target::Override { .. })
    }

    /// How to connect to `database` of `cluster` as `user` (a fresh token each time on AWS).
    pub async fn connection(
        &self,
        cluster: &ClusterState,
        database: &str,
        user: &str,
    ) -> Result<Connection, BoxError> {
        match &self.target {
            Target::Override {
                options,
                host,
                port,
                admin_user,
                admin_password,
                ssl_mode,
            } => {
                let password = if user == admin_user {
                    admin_password.clone()
                } else {
                    admin_password.as_deref().map(|p| derived_password(p, user))
                };
                let database = cluster.id.as_str();
                let mut options = options.as_ref().clone().username(user).database(database);
                if let Some(password) = &password {
                    options = options.password(password);
                }
                Ok(Connection {
                    host: host.clone(),
                    port: *port,
                    database: database.to_owned(),
                    user: user.to_owned(),
                    password,
                    ssl_mode: ssl_mode.clone(),
                    ssl_root_cert: None,
                    options,
                })
            }
            Target::Aws { tls, timeout } => {
                let tls = tls.as_ref().map_err(|e| e.clone())?;
                let host = cluster.endpoint.clone().ok_or_else(|| {
                    format!(
                        "`{}` has no endpoint yet (it is {})",
                        cluster.id, cluster.status
                    )
                })?;
                let port = cluster.port.unwrap_or(5432);
                let roots = tls.roots_file().await.map_err(|e| {
                    format!("{} (hint: {})", crate::report::error_chain(&e), e.hint())
                })?;
                let token = self.token(&host, port, user).await?;
                let bound = timeout.as_millis().to_string();
                let mut options = PgConnectOptions::new()
                    .host(&host)
                    .port(port)
                    .username(user)
                    .database(database)
                    .password(&token)
                    .application_name("envctl")
                    .options([
                        ("lock_timeout", bound.as_str()),
                        ("statement_timeout", bound.as_str()),
                    ])
                    .ssl_mode(match tls.mode {
                        super::tls::Mode::Require => PgSslMode::Require,
                        super::tls::Mode::VerifyCa => PgSslMode::VerifyCa,
                        super::tls::Mode::VerifyFull => PgSslMode::VerifyFull,
                    });
                if let Some(roots) = &roots {
                    options = options.ssl_root_cert(roots);
                }
                Ok(Connection {
                    host,
                    port,
                    database: database.to_owned(),
                    user: user.to_owned(),
                    password: Some(token),
                    ssl_mode: Some(tls.mode.as_str().to_owned()),
                    ssl_root_cert: roots,
                    options,
                })
            }
        }
    }

    /// Runs once a cluster is available, as the master user: the database the spec names (when
    /// the cluster has not got it) and the spec's user. Idempotent.
    pub async fn setup(
        &self,
        cluster: &ClusterState,
        desired: &DesiredEnv,
    ) -> Result<(), BoxError> {
        let user = &desired.database.user;
        let database = match &self.target {
            Target::Override { .. } => {
                self.ensure_override_database(&cluster.id).await?;
                cluster.id.to_string()
            }
            Target::Aws { .. } => {
                let name = &desired.database.name;
                if name != "postgres" && cluster.database_name.as_deref() != Some(name.as_str()) {
                    // Express did not take `DatabaseName`: make it as the master user.
                    let connection = self
                        .connection(cluster, "postgres", master_user(cluster))
                        .await?;
                    let mut conn = PgConnection::connect_with(&connection.options)
                        .await
                        .map_err(sql_failed)?;
                    let exists: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                    )
                    .bind(name)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(sql_failed)?;
                    if !exists {
                        let sql = format!("CREATE DATABASE {}", quote_ident(name));
                        match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await {
                            Err(e) if made_meanwhile(&e) => {}
                            other => {
                                other.map_err(sql_failed)?;
                            }
                        }
                    }
                    let _ = conn.close().await;
                }
                name.clone()
            }
        };
        let master = self.master_of(cluster);
        let connection = self.connection(cluster, &database, &master).await?;
        let mut conn = PgConnection::connect_with(&connection.options)
            .await
            .map_err(sql_failed)?;
        let result = async {
            if *user != master {
                self.ensure_user(&mut conn, user, &master, &database)
                    .await?;
            }
            self.ensure_reader(&mut conn).await
        }
        .await;
        let _ = conn.close().await;
        result
    }

    /// The master user this data plane logs in as: the cluster's, or the override server's
    /// admin.
    pub fn master_of(&self, cluster: &ClusterState) -> String {
        match &self.target {
            Target::Override { admin_user, .. } => admin_user.clone(),
            Target::Aws { .. } => master_user(cluster).to_owned(),
        }
    }

    /// The ledger reader ([`READER_USER`]): `LOGIN`, IAM authentication, no privilege of its
    /// own. The ledger's owner grants it `SELECT` on the ledger's two tables when the ledger is
    /// made (`db`), so it reads the ledger and nothing else.
    async fn ensure_reader(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(READER_USER)
                .fetch_one(&mut *conn)
                .await
                .map_err(sql_failed)?;
        if !exists {
            let password = match &self.target {
                Target::Override {
                    admin_password: Some(admin),
                    ..
                } => format!(
                    " PASSWORD {}",
                    quote_literal(&derived_password(admin, READER_USER))
                ),
                _ => String::new(),
            };
            let sql = format!(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE{password}",
                quote_ident(READER_USER)
            );
            match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                Err(e) if made_meanwhile(&e) => {}
                other => {
                    other.map_err(sql_failed)?;
                }
            }
        }
        let rds_iam: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam')")
                .fetch_one(&mut *conn)
                .await
                .map_err(sql_failed)?;
        if rds_iam {
            execute(
                conn,
                format!("GRANT rds_iam TO {}", quote_ident(READER_USER)),
            )
            .await?;
        }
        Ok(())
    }

    /// The spec's user: `LOGIN`, allowed IAM authentication (`rds_iam`), owner of the database.
    async fn ensure_user(
        &self,
        conn: &mut PgConnection,
        user: &str,
        master: &str,
        database: &str,
    ) -> Result<(), BoxError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(user)
                .fetch_one(&mut *conn)
                .await
                .map_err(sql_failed)?;
        let password = match &self.target {
            Target::Override {
                admin_password: Some(admin),
                ..
            } => format!(
                " PASSWORD {}",
                quote_literal(&derived_password(admin, user))
            ),
            _ => String::new(),
        };
        if !exists {
            let sql = format!("CREATE ROLE {} LOGIN{password}", quote_ident(user));
            match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                // Another envctl made it meanwhile.
                Err(e) if made_meanwhile(&e) => {}
                other => {
                    other.map_err(sql_failed)?;
                }
            }
        }
        let rds_iam: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam')")
                .fetch_one(&mut *conn)
                .await
                .map_err(sql_failed)?;
        if rds_iam {
            execute(conn, format!("GRANT rds_iam TO {}", quote_ident(user))).await?;
        }
        // The master user manages what the user makes (a reset runs as the master user).
        execute(
            conn,
            format!("GRANT {} TO {}", quote_ident(user), quote_ident(master)),
        )
        .await?;
        let owner: String = sqlx::query(
            "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1",
        )
        .bind(database)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_failed)?
        .try_get("owner")
        .map_err(sql_failed)?;
        if owner != user {
            execute(
                conn,
                format!(
                    "ALTER DATABASE {} OWNER TO {}",
                    quote_ident(database),
                    quote_ident(user)
                ),
            )
            .await?;
        }
        Ok(())
    }

    /// Right after a cluster is created: on the override server its database exists from now on,
    /// as a real cluster's does.
    pub async fn created(&self, id: &ClusterId) -> Result<(), BoxError> {
        self.ensure_override_database(id).await
    }

    /// On the override server, a clone's database starts as a copy of its source's (once: an
    /// existing one is kept). Nothing to do on AWS, where the clone has the data.
    pub async fn cloned(&self, source: &ClusterId, id: &ClusterId) -> Result<(), BoxError> {
        let Target::Override {
            options,
            host,
            port,
            admin_user,
            admin_password,
            ssl_mode,
        } = &self.target
        else {
            return Ok(());
        };
        let mut conn = PgConnection::connect_with(options.as_ref())
            .await
            .map_err(sql_failed)?;
        let result = async {
            let exists = |name: String| {
                sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                )
                .bind(name)
            };
            if exists(id.to_string())
                .fetch_one(&mut conn)
                .await
                .map_err(sql_failed)?
            {
                return Ok(());
            }
            if !exists(source.to_string())
                .fetch_one(&mut conn)
                .await
                .map_err(sql_failed)?
            {
                return Err(format!("the source's database `{source}` does not exist").into());
            }
            let admin = crate::provider::copy::Admin {
                host,
                port: *port,
                user: admin_user,
                password: admin_password.as_deref(),
                ssl_mode: ssl_mode.as_deref(),
            };
            // Copied under another name, then renamed: a copy cut off is never taken for done.
            let temporary = format!("{id}-copying");
            let drop_temporary = format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&temporary)
            );
            execute(&mut conn, drop_temporary).await?;
            crate::provider::copy::copy_database(
                &mut conn,
                &admin,
                source.as_str(),
                &temporary,
                "",
            )
            .await?;
            let rename = format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&temporary),
                quote_ident(id.as_str())
            );
            execute(&mut conn, rename).await
        }
        .await;
        let _ = conn.close().await;
        result
    }

    /// The override server's database for a cluster.
    async fn ensure_override_database(&self, id: &ClusterId) -> Result<(), BoxError> {
        let Target::Override { options, .. } = &self.target else {
            return Ok(());
        };
        let mut conn = PgConnection::connect_with(options.as_ref())
            .await
            .map_err(sql_failed)?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(id.as_str())
                .fetch_one(&mut conn)
                .await
                .map_err(sql_failed)?;
        if !exists {
            let sql = format!("CREATE DATABASE {}", quote_ident(id.as_str()));
            match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await {
                // Another envctl made it meanwhile (two applies of one branch at once).
                Err(e) if made_meanwhile(&e) => {}
                other => {
                    other.map_err(sql_failed)?;
                }
            }
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// Drops the override server's database of a deleted cluster.
    pub async fn drop_override_database(&self, id: &str) -> Result<(), BoxError> {
        let Target::Override { options, .. } = &self.target else {
            return Ok(());
        };
        let mut conn = PgConnection::connect_with(options.as_ref())
            .await
            .map_err(sql_failed)?;
        let result = execute(
            &mut conn,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(id)),
        )
        .await;
        let _ = conn.close().await;
        result
    }
}

/// A user's password on the override server: HMAC-SHA-256 of its name keyed by the admin's.
fn derived_password(admin: &str, user: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(admin.as_bytes()).expect("HMAC takes any key");
    mac.update(b"envctl override role\n");
    mac.update(user.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}
