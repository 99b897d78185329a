//! How to open a connection to an environment's database yourself, the way `envctl proxy` does for
//! every client: an [`Upstream`] (where, as whom, with which TLS rules) and its [`Credential`],
//! which yields a fresh password for each new connection (on AWS a newly signed IAM token, since a
//! token opens connections for 15 minutes only; on the local provider the role's password).
//!
//! [`TlsRules`] is libpq's `sslmode` and root certificate as envctl applies them: to sqlx's
//! options ([`TlsRules::apply`]) and to the proxy's rustls configuration (`proxy::upstream`), so
//! that both follow the one choice the provider made (on AWS `provider::aws::tls`).
//!
//! A [`Secret`] never shows itself in `Debug` output, and nothing here formats one into an error.

use std::path::PathBuf;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::BoxError;
use super::aws::data_plane::IamSigner;
use crate::model::ClusterId;

/// A password or token. `Debug` shows `***`; the text is only for the connection itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    /// The secret itself: only for the authentication exchange.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// libpq's `sslmode`, as sqlx implements it (`allow` connects without TLS, as `disable` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    /// The `sslmode` name.
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection asks the server for TLS at all.
    pub fn requests_tls(self) -> bool {
        !matches!(self, TlsMode::Disable | TlsMode::Allow)
    }

    /// Whether a server that refuses TLS is an error.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull
        )
    }

    /// Whether the server's certificate chain is verified.
    pub fn verifies_chain(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyFull)
    }

    /// Whether the certificate must name the host.
    pub fn verifies_host(self) -> bool {
        self == TlsMode::VerifyFull
    }

    fn to_sqlx(self) -> PgSslMode {
        match self {
            TlsMode::Disable => PgSslMode::Disable,
            TlsMode::Allow => PgSslMode::Allow,
            TlsMode::Prefer => PgSslMode::Prefer,
            TlsMode::Require => PgSslMode::Require,
            TlsMode::VerifyCa => PgSslMode::VerifyCa,
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(text: &str) -> Result<TlsMode, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "disable" => TlsMode::Disable,
            "allow" => TlsMode::Allow,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => {
                return Err(format!(
                    "`{text}` is not an sslmode: use disable, allow, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// How a connection uses TLS: the mode, and the CA bundle that verifies the server (added to the
/// public web roots, as sqlx does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRules {
    pub mode: TlsMode,
    pub root_cert: Option<PathBuf>,
}

impl TlsRules {
    /// No TLS (loopback servers envctl runs itself).
    pub fn disabled() -> TlsRules {
        TlsRules {
            mode: TlsMode::Disable,
            root_cert: None,
        }
    }

    /// The rules of a `postgres://` URL as sqlx reads them: its `sslmode` (or `ssl-mode`) and
    /// `sslrootcert` (or `ssl-root-cert`, `ssl-ca`), else `PGSSLMODE` and `PGSSLROOTCERT`, else
    /// `prefer` and no bundle.
    pub fn from_url(url: &url::Url) -> Result<TlsRules, BoxError> {
        let param = |names: &[&str]| {
            url.query_pairs()
                .filter(|(k, _)| names.contains(&k.as_ref()))
                .last()
                .map(|(_, v)| v.into_owned())
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mode = match param(&["sslmode", "ssl-mode"]).or_else(|| env("PGSSLMODE")) {
            Some(text) => text.parse::<TlsMode>()?,
            None => TlsMode::Prefer,
        };
        let root_cert = param(&["sslrootcert", "ssl-root-cert", "ssl-ca"])
            .or_else(|| env("PGSSLROOTCERT"))
            .map(PathBuf::from);
        Ok(TlsRules { mode, root_cert })
    }

    /// sqlx's options with these rules.
    pub fn apply(&self, options: PgConnectOptions) -> PgConnectOptions {
        let options = options.ssl_mode(self.mode.to_sqlx());
        match &self.root_cert {
            Some(path) => options.ssl_root_cert(path),
            None => options,
        }
    }
}

/// Where a credential comes from. Each call of [`Credential::fresh`] is a new connection's.
#[derive(Debug)]
pub enum Credential {
    /// The server trusts the connection (no password).
    None,
    /// A fixed password (the local provider's roles, the override server's users).
    Password(Secret),
    /// An IAM auth token signed anew for each connection.
    IamToken(IamSigner),
}

impl Credential {
    /// The password for one new connection: on AWS a token signed now (locally; no API call).
    pub async fn fresh(&self) -> Result<Option<Secret>, BoxError> {
        match self {
            Credential::None => Ok(None),
            Credential::Password(secret) => Ok(Some(secret.clone())),
            Credential::IamToken(signer) => signer.sign().await.map(|t| Some(Secret::new(t))),
        }
    }

    /// What kind it is, for messages: `no password`, `a password`, `an IAM token`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::None => "no password",
            Credential::Password(_) => "a password",
            Credential::IamToken(_) => "an IAM token",
        }
    }
}

/// How to open connections to one environment's database as its user, resolved once (on AWS one
/// describe) and used for every connection after.
#[derive(Debug)]
pub struct Upstream {
    pub cluster_id: ClusterId,
    /// Where to connect (on AWS the cluster endpoint; under the test override, that server).
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub tls: TlsRules,
    pub credential: Credential,
}
