//! The provider trait: where environments live. `observe` finds a repository's environments from
//! their tags alone (never a database connection: on AWS that would wake a paused cluster);
//! `create`, `update`, `set_tags` and `delete` manage their lifecycle; `connection` gives the data
//! plane, through which `db` reads the ledger and migrates.
//!
//! Every method is idempotent: create of an existing environment of ours succeeds, delete of a
//! missing one succeeds. `delete` re-checks ownership tags on the live resource right before it
//! deletes. `apply` reaches providers only through this trait.

pub mod aws;
pub mod local;
pub mod local_server;

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::model::{ClusterId, DatabaseSettings, DesiredEnv, ObservedEnv, RepoName};

/// A provider operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or set up.
    #[error("cannot reach the {provider} provider")]
    Unavailable {
        provider: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Listing environments failed.
    #[error("cannot list environments")]
    ObserveFailed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Creating an environment failed.
    #[error("cannot create `{0}`")]
    CreateFailed(
        ClusterId,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    /// Changing an environment's settings or tags failed.
    #[error("cannot update `{0}`")]
    UpdateFailed(
        ClusterId,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    /// Deleting an environment failed.
    #[error("cannot delete `{0}`")]
    DeleteFailed(
        ClusterId,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    /// The live resource is not ours to change.
    #[error("refusing to touch `{id}`: {why}")]
    NotOurs { id: ClusterId, why: String },
    /// The environment did not become ready in time.
    #[error("`{id}` was not ready after {waited:?}")]
    NotReady {
        id: ClusterId,
        waited: Duration,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The spec's user cannot log in (wrong password, no such role).
    #[error(
        "cannot log in to `{id}` as `{user}`: the local provider connects as the spec's `database.user` with the server URL's password; give that role this password, or put that user in ENVCTL_LOCAL_URL"
    )]
    LoginFailed {
        id: ClusterId,
        user: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The environment does not exist.
    #[error("`{0}` does not exist")]
    NotFound(ClusterId),
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
    /// libpq `sslmode` for URLs handed to users.
    pub ssl_mode: &'static str,
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
            .finish()
    }
}

impl Connection {
    /// `postgres://user:password@host:port/database?sslmode=…`, percent-encoded. Holds the secret:
    /// print it only where the user asked for it.
    pub fn url(&self) -> String {
        let enc = |s: &str| percent_encode(s);
        let auth = match &self.password {
            Some(p) => format!("{}:{}", enc(&self.user), enc(p)),
            None => enc(&self.user),
        };
        format!(
            "postgres://{auth}@{}:{}/{}?sslmode={}",
            self.host,
            self.port,
            enc(&self.database),
            self.ssl_mode
        )
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Where environments live.
#[allow(async_fn_in_trait)]
pub trait Provider: Sync {
    /// `local` or `aws`, as in the plan's `provider`.
    fn name(&self) -> &'static str;

    /// Every live environment of `repo`, from tags alone.
    async fn observe(&self, repo: &RepoName) -> Result<Vec<ObservedEnv>, ProviderError>;

    /// Creates the environment with these tags, or succeeds if ours already exists.
    async fn create(
        &self,
        desired: &DesiredEnv,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError>;

    /// Waits until the environment accepts connections from the spec's user.
    async fn wait_ready(
        &self,
        desired: &DesiredEnv,
        timeout: Duration,
    ) -> Result<(), ProviderError>;

    /// Applies scaling and deletion protection in place, and replaces the tags.
    async fn update(
        &self,
        desired: &DesiredEnv,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError>;

    /// Replaces the tags (envctl's and the user's) of an environment.
    async fn set_tags(
        &self,
        id: &ClusterId,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError>;

    /// Deletes the environment after re-checking on the live resource that it carries
    /// `envctl:managed=true` and this repository's `envctl:repo`. A missing one is not an error.
    async fn delete(&self, id: &ClusterId, repo: &RepoName) -> Result<(), ProviderError>;

    /// How to connect to the environment's database as its user.
    async fn connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError>;
}
