//! How the AWS provider reaches a cluster's databases: the cluster endpoint on its port, the spec's
//! user, a fresh IAM auth token as the password for every new connection (they are valid for 15
//! minutes), TLS as [`super::tls`] says (`verify-full` against the RDS CA bundle by default).
//! Each session's lock waits and statements are bounded by the wait timeout.
//!
//! After a cluster is available, [`DataPlane::setup`] runs as the master user `postgres`: it makes
//! the spec's database when express would not take `DatabaseName`, and a `database.user` other
//! than the master user (`CREATE ROLE … LOGIN`, `GRANT rds_iam`, owner of the database).
//!
//! How TLS is used is decided in one place, [`super::tls`] (the override: its URL's rules), and
//! both sqlx's connections and the proxy's (`provider::upstream::TlsRules`, [`rules_of`]) follow
//! it.
//!
//! For tests only, `ENVCTL_DATA_PLANE_OVERRIDE=postgres://…` sends every cluster's data plane to
//! that server instead: one database per cluster id there, made at setup and dropped with the
//! cluster; no DNS wait; the URL's own TLS mode; the URL's user as the master user; other users
//! with a password derived from the URL's (as the local provider does), or, with
//! `ENVCTL_DATA_PLANE_OVERRIDE_AUTH=iam`, with an IAM token signed for the cluster's endpoint for
//! each connection, as on AWS (the TLS test server checks them: `tests/support/tls.rs`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Row};

use super::api::ClusterState;
use super::token;
use crate::model::{ClusterId, DesiredEnv, READER_USER};
use crate::provider::upstream::{Credential, Secret, TlsMode, TlsRules, Upstream};
use crate::provider::{BoxError, Connection, boxed, sql_failed};
use crate::sql::{quote_ident, quote_literal};

/// The master user of an express cluster where the cluster does not say (`MasterUsername`).
pub const MASTER_USER: &str = "postgres";

/// The master user of `cluster`, as `DescribeDBClusters` says.
pub fn master_user(cluster: &ClusterState) -> &str {
    cluster.master_username.as_deref().unwrap_or(MASTER_USER)
}

/// How data-plane connections are made: the credentials that sign tokens, and where they go.
pub struct DataPlane {
    credentials: Arc<CachedCredentials>,
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
        tls: TlsRules,
        /// `ENVCTL_DATA_PLANE_OVERRIDE_AUTH=iam`: users other than the admin log in with tokens.
        iam_users: bool,
    },
}

/// The AWS credentials of the standard chain, loaded once and again only when they come within
/// five minutes of their expiry: signing a token is local, so a connection costs no AWS call.
pub struct CachedCredentials {
    provider: SharedCredentialsProvider,
    current: tokio::sync::Mutex<Option<Credentials>>,
}

impl CachedCredentials {
    pub fn new(provider: SharedCredentialsProvider) -> CachedCredentials {
        CachedCredentials {
            provider,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Credentials good for at least five more minutes.
    pub async fn get(&self) -> Result<Credentials, BoxError> {
        let mut current = self.current.lock().await;
        let margin = SystemTime::now() + Duration::from_secs(300);
        if let Some(credentials) = current.as_ref()
            && credentials.expiry().is_none_or(|at| at > margin)
        {
            return Ok(credentials.clone());
        }
        let loaded = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| format!("cannot load AWS credentials: {e}"))?;
        *current = Some(loaded.clone());
        Ok(loaded)
    }
}

/// Signs an IAM auth token for one user at one endpoint, anew on every call.
pub struct IamSigner {
    credentials: Arc<CachedCredentials>,
    region: String,
    host: String,
    port: u16,
    user: String,
}

impl std::fmt::Debug for IamSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IamSigner")
            .field("region", &self.region)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish()
    }
}

impl IamSigner {
    pub fn new(
        credentials: Arc<CachedCredentials>,
        region: &str,
        host: &str,
        port: u16,
        user: &str,
    ) -> IamSigner {
        IamSigner {
            credentials,
            region: region.to_owned(),
            host: host.to_owned(),
            port,
            user: user.to_owned(),
        }
    }

    /// A token signed now (to the second; valid 15 minutes for opening connections).
    pub async fn sign(&self) -> Result<String, BoxError> {
        let credentials = self.credentials.get().await?;
        token::generate_auth_token(
            &credentials,
            &self.region,
            &self.host,
            self.port,
            &self.user,
            SystemTime::now(),
        )
        .map_err(boxed)
    }
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

/// The proxy's TLS rules from this run's (the RDS CA bundle fetched and cached on first use).
pub async fn rules_of(tls: &super::tls::Tls) -> Result<TlsRules, BoxError> {
    let root_cert = tls
        .roots_file()
        .await
        .map_err(|e| format!("{} (hint: {})", crate::report::error_chain(&e), e.hint()))?;
    let mode = match tls.mode {
        super::tls::Mode::Require => TlsMode::Require,
        super::tls::Mode::VerifyCa => TlsMode::VerifyCa,
        super::tls::Mode::VerifyFull => TlsMode::VerifyFull,
    };
    Ok(TlsRules { mode, root_cert })
}

impl DataPlane {
    /// The data plane of this run: the override when `ENVCTL_DATA_PLANE_OVERRIDE` is set.
    pub fn from_env(
        credentials: SharedCredentialsProvider,
        region: String,
        timeout: Duration,
    ) -> Result<DataPlane, BoxError> {
        let credentials = Arc::new(CachedCredentials::new(credentials));
        if let Ok(url) = std::env::var("ENVCTL_DATA_PLANE_OVERRIDE")
            && !url.is_empty()
        {
            let parsed = url::Url::parse(&url)
                .map_err(|e| format!("ENVCTL_DATA_PLANE_OVERRIDE is not a URL: {e}"))?;
            let tls = TlsRules::from_url(&parsed)
                .map_err(|e| format!("ENVCTL_DATA_PLANE_OVERRIDE: {e}"))?;
            let options = tls.apply(
                PgConnectOptions::from_str(&url)
                    .map_err(sql_failed)?
                    .application_name("envctl"),
            );
            let admin_password = parsed.password().map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            });
            let ssl_mode = parsed
                .query_pairs()
                .find(|(k, _)| k == "sslmode")
                .map(|(_, v)| v.into_owned());
            let iam_users = match std::env::var("ENVCTL_DATA_PLANE_OVERRIDE_AUTH").as_deref() {
                Ok("iam") => true,
                Ok("") | Ok("password") | Err(_) => false,
                Ok(other) => {
                    return Err(format!(
                        "ENVCTL_DATA_PLANE_OVERRIDE_AUTH is `{other}`: use `password` or `iam`"
                    )
                    .into());
                }
            };
            let target = Target::Override {
                host: options.get_host().to_owned(),
                port: options.get_port(),
                admin_user: options.get_username().to_owned(),
                admin_password,
                ssl_mode,
                tls,
                iam_users,
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

    /// A signer of tokens for `user` at `host:port`.
    fn signer(&self, host: &str, port: u16, user: &str) -> IamSigner {
        IamSigner::new(self.credentials.clone(), &self.region, host, port, user)
    }

    /// A fresh IAM auth token for `user` at `host:port`.
    pub async fn token(&self, host: &str, port: u16, user: &str) -> Result<String, BoxError> {
        self.signer(host, port, user).sign().await
    }

    /// The cluster's endpoint: where tokens are signed for.
    fn endpoint(cluster: &ClusterState) -> Result<(String, u16), BoxError> {
        let host = cluster.endpoint.clone().ok_or_else(|| {
            format!(
                "`{}` has no endpoint yet (it is {})",
                cluster.id, cluster.status
            )
        })?;
        Ok((host, cluster.port.unwrap_or(5432)))
    }

    /// How `envctl proxy` opens its connections to `database` of `cluster` as `user`: the
    /// endpoint resolved now, the TLS rules of this run, and a token signed for each connection
    /// (on the override server, its password unless `ENVCTL_DATA_PLANE_OVERRIDE_AUTH=iam`).
    pub async fn upstream(
        &self,
        cluster: &ClusterState,
        database: &str,
        user: &str,
    ) -> Result<Upstream, BoxError> {
        match &self.target {
            Target::Override {
                host,
                port,
                admin_user,
                admin_password,
                tls,
                iam_users,
                ..
            } => {
                let credential = if *iam_users && user != admin_user {
                    let (endpoint, endpoint_port) = Self::endpoint(cluster)?;
                    Credential::IamToken(self.signer(&endpoint, endpoint_port, user))
                } else {
                    match self.override_password(admin_user, admin_password.as_deref(), user) {
                        Some(password) => Credential::Password(Secret::new(password)),
                        None => Credential::None,
                    }
                };
                Ok(Upstream {
                    cluster_id: cluster.id.clone(),
                    host: host.clone(),
                    port: *port,
                    database: cluster.id.to_string(),
                    user: user.to_owned(),
                    tls: tls.clone(),
                    credential,
                })
            }
            Target::Aws { tls, .. } => {
                let tls = rules_of(tls.as_ref().map_err(|e| e.clone())?).await?;
                let (host, port) = Self::endpoint(cluster)?;
                Ok(Upstream {
                    cluster_id: cluster.id.clone(),
                    credential: Credential::IamToken(self.signer(&host, port, user)),
                    host,
                    port,
                    database: database.to_owned(),
                    user: user.to_owned(),
                    tls,
                })
            }
        }
    }

    /// A user's password on the override server.
    fn override_password(
        &self,
        admin_user: &str,
        admin_password: Option<&str>,
        user: &str,
    ) -> Option<String> {
        if user == admin_user {
            admin_password.map(str::to_owned)
        } else {
            admin_password.map(|p| derived_password(p, user))
        }
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
                iam_users,
                ..
            } => {
                let password = if *iam_users && user != admin_user {
                    let (endpoint, endpoint_port) = Self::endpoint(cluster)?;
                    Some(self.token(&endpoint, endpoint_port, user).await?)
                } else {
                    self.override_password(admin_user, admin_password.as_deref(), user)
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
                let (host, port) = Self::endpoint(cluster)?;
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
                    let mut conn =
                        PgConnection::connect_with(&crate::sql::own_session(&connection.options))
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
        let mut conn = PgConnection::connect_with(&crate::sql::own_session(&connection.options))
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
        self.ensure_login(conn, READER_USER, " NOSUPERUSER NOCREATEDB NOCREATEROLE")
            .await
    }

    /// The spec's user: `LOGIN`, allowed IAM authentication (`rds_iam`), owner of the database.
    async fn ensure_user(
        &self,
        conn: &mut PgConnection,
        user: &str,
        master: &str,
        database: &str,
    ) -> Result<(), BoxError> {
        self.ensure_login(conn, user, "").await?;
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

    /// Makes the role `user` where it is missing (`CREATE ROLE … LOGIN` with `attributes`; on the
    /// override server with a password derived from the admin's, as a token stands for it on
    /// AWS), and allows it IAM authentication where the server has `rds_iam`.
    async fn ensure_login(
        &self,
        conn: &mut PgConnection,
        user: &str,
        attributes: &str,
    ) -> Result<(), BoxError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(user)
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
                    quote_literal(&derived_password(admin, user))
                ),
                _ => String::new(),
            };
            let sql = format!(
                "CREATE ROLE {} LOGIN{attributes}{password}",
                quote_ident(user)
            );
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
            ..
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
                // The override serves tests: a copy's source is never held there for long.
                lock_wait: Duration::from_secs(60),
            };
            // Copied under another name, then renamed: a copy cut off is never taken for done.
            let temporary = format!("{id}-copying");
            let drop_temporary = format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&temporary)
            );
            execute(&mut conn, drop_temporary).await?;
            let target = crate::provider::copy::Target {
                name: &temporary,
                options: "",
                once_made: None,
            };
            crate::provider::copy::copy_database(&mut conn, &admin, &target, source.as_str(), None)
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
