//! How connections to AWS data planes use TLS (the IAM token travels as the password, so TLS is
//! never off):
//! - `verify-full` by default: the server's certificate must chain to a trusted root and name
//!   the endpoint. The roots are the usual public ones plus the RDS CA bundle;
//! - the bundle: `PGSSLROOTCERT` or `ENVCTL_RDS_CA_BUNDLE` when set (either must name a readable
//!   PEM file: an unusable one is an error, never a quiet downgrade), else AWS's published
//!   global bundle, fetched once over verified HTTPS and cached under the user's cache directory;
//! - the user's `PGSSLMODE` is kept: `verify-full` and `verify-ca` verify against those roots,
//!   `require` encrypts without checking the server (and says so); `disable`, `allow` and
//!   `prefer` are refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where AWS publishes the RDS CA bundle of every commercial Region.
pub const RDS_BUNDLE_URL: &str =
    "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem";

/// The most a bundle may weigh (the global bundle is about 160 KiB).
const MAX_BUNDLE_BYTES: usize = 4 << 20;

/// What `sslmode` a data-plane connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Encrypted, the server not checked (`PGSSLMODE=require`).
    Require,
    /// The certificate must chain to the roots.
    VerifyCa,
    /// And name the host (the default).
    VerifyFull,
}

impl Mode {
    /// As libpq writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

/// Where the roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file the user named (and which variable named it).
    File { path: PathBuf, from: &'static str },
    /// AWS's RDS bundle, cached at `path` (fetched from `url` when it is not there yet).
    RdsBundle { path: PathBuf, url: String },
}

/// The TLS rules of one run, read from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub mode: Mode,
    /// `None` with [`Mode::Require`]: nothing is verified.
    pub roots: Option<Roots>,
}

/// TLS cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `PGSSLMODE` asks for a mode without TLS.
    #[error(
        "PGSSLMODE is `{0}`, but AWS data planes need TLS (the IAM token is the password); use `verify-full` (the default), `verify-ca` or `require`"
    )]
    NoTls(String),
    /// `PGSSLMODE` is not a mode.
    #[error(
        "PGSSLMODE `{0}` is not an sslmode; use `verify-full` (the default), `verify-ca` or `require`"
    )]
    UnknownMode(String),
    /// A root certificate file that cannot be used.
    #[error("{from} names `{}`, which is not a readable PEM file of certificates ({why})", path.display())]
    UnusableRoots {
        from: &'static str,
        path: PathBuf,
        why: String,
    },
    /// The RDS bundle could not be fetched.
    #[error("cannot fetch the RDS CA bundle from {url}")]
    FetchFailed {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The fetched bundle could not be cached.
    #[error("cannot cache the RDS CA bundle at `{}`", path.display())]
    CacheFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TlsError {
    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            TlsError::NoTls(_) | TlsError::UnknownMode(_) => "unset PGSSLMODE to verify the server",
            TlsError::UnusableRoots { .. } => {
                "point it at a PEM bundle (AWS's is at https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem), or unset it to let envctl fetch that one"
            }
            TlsError::FetchFailed { .. } | TlsError::CacheFailed { .. } => {
                "download the bundle yourself and set ENVCTL_RDS_CA_BUNDLE to its path (or PGSSLMODE=require to skip verifying the server)"
            }
        }
    }
}

/// Reads the environment through `var` (a missing or empty variable is unset).
pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Tls, TlsError> {
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    let mode = match var("PGSSLMODE").as_deref() {
        None | Some("verify-full") => Mode::VerifyFull,
        Some("verify-ca") => Mode::VerifyCa,
        Some("require") => Mode::Require,
        Some(mode @ ("disable" | "allow" | "prefer")) => return Err(TlsError::NoTls(mode.into())),
        Some(other) => return Err(TlsError::UnknownMode(other.into())),
    };
    let named = [
        ("PGSSLROOTCERT", var("PGSSLROOTCERT")),
        ("ENVCTL_RDS_CA_BUNDLE", var("ENVCTL_RDS_CA_BUNDLE")),
    ];
    let file = named
        .into_iter()
        .find_map(|(from, value)| value.map(|path| (from, PathBuf::from(path))));
    // A named file is checked even under `require`: a typo must not pass unnoticed.
    if let Some((from, path)) = &file {
        check_pem(from, path)?;
    }
    if mode == Mode::Require {
        return Ok(Tls { mode, roots: None });
    }
    let roots = match file {
        Some((from, path)) => Roots::File { path, from },
        None => Roots::RdsBundle {
            path: cache_dir(&var).join("rds-global-bundle.pem"),
            url: var("ENVCTL_RDS_CA_BUNDLE_URL").unwrap_or_else(|| RDS_BUNDLE_URL.to_owned()),
        },
    };
    Ok(Tls {
        mode,
        roots: Some(roots),
    })
}

/// The TLS rules of this process's environment.
pub fn from_env() -> Result<Tls, TlsError> {
    from_vars(|name| std::env::var(name).ok())
}

/// envctl's cache directory: `$XDG_CACHE_HOME/envctl`, else `~/.cache/envctl`.
fn cache_dir(var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    match (var("XDG_CACHE_HOME"), var("HOME")) {
        (Some(cache), _) => PathBuf::from(cache).join("envctl"),
        (None, Some(home)) => PathBuf::from(home).join(".cache").join("envctl"),
        (None, None) => std::env::temp_dir().join("envctl-cache"),
    }
}

/// Whether `text` holds at least one PEM certificate and nothing it cannot read.
fn pem_certificates(text: &[u8]) -> Result<usize, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(text) {
        cert.map_err(|e| format!("{e:?}"))?;
        count += 1;
    }
    match count {
        0 => Err("no certificate in it".into()),
        n => Ok(n),
    }
}

fn check_pem(from: &'static str, path: &Path) -> Result<(), TlsError> {
    let unusable = |why: String| TlsError::UnusableRoots {
        from,
        path: path.to_owned(),
        why,
    };
    let metadata = std::fs::metadata(path).map_err(|e| unusable(e.to_string()))?;
    if !metadata.is_file() {
        return Err(unusable("not a file".into()));
    }
    if metadata.len() > MAX_BUNDLE_BYTES as u64 {
        return Err(unusable(format!("larger than {MAX_BUNDLE_BYTES} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
    pem_certificates(&bytes).map(drop).map_err(unusable)
}

impl Tls {
    /// The roots' file, fetching and caching AWS's bundle on first use. `None` under
    /// [`Mode::Require`].
    pub async fn roots_file(&self) -> Result<Option<PathBuf>, TlsError> {
        match &self.roots {
            None => Ok(None),
            Some(Roots::File { path, .. }) => Ok(Some(path.clone())),
            Some(Roots::RdsBundle { path, url }) => {
                if std::fs::read(path)
                    .ok()
                    .is_some_and(|bytes| pem_certificates(&bytes).is_ok())
                {
                    return Ok(Some(path.clone()));
                }
                let bytes = fetch(url).await?;
                cache(path, &bytes)?;
                Ok(Some(path.clone()))
            }
        }
    }
}

impl Tls {
    /// For `envctl doctor`: `Ok(true)` when AWS's bundle is cached, `Ok(false)` when it is not
    /// yet but its URL answers with one (nothing is written), or why it cannot be had.
    pub async fn check_bundle(&self) -> Result<bool, TlsError> {
        match &self.roots {
            Some(Roots::RdsBundle { path, url }) => {
                if std::fs::read(path)
                    .ok()
                    .is_some_and(|bytes| pem_certificates(&bytes).is_ok())
                {
                    return Ok(true);
                }
                fetch(url).await.map(|_| false)
            }
            _ => Ok(true),
        }
    }
}

/// GET over HTTPS only, verified against the system's roots (`SSL_CERT_FILE` honoured), bounded
/// in time and size; the answer must be a PEM bundle.
async fn fetch(url: &str) -> Result<Vec<u8>, TlsError> {
    use http_body_util::BodyExt;
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| TlsError::FetchFailed {
        url: url.to_owned(),
        source,
    };
    if !url.starts_with("https://") {
        return Err(failed("only an https:// URL is fetched".into()));
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| failed(e.into()))?
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| failed(e.into()))?;
    let get = async {
        let response = client.get(uri).await.map_err(|e| failed(e.into()))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status()).into()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_BUNDLE_BYTES);
        let bytes = body.collect().await.map_err(failed)?.to_bytes();
        Ok(bytes.to_vec())
    };
    let bytes = match tokio::time::timeout(Duration::from_secs(30), get).await {
        Ok(result) => result?,
        Err(_) => return Err(failed("no answer within 30s".into())),
    };
    pem_certificates(&bytes)
        .map_err(|why| failed(format!("the answer is not a PEM bundle: {why}").into()))?;
    Ok(bytes)
}

/// Writes the bundle where later runs find it, atomically (a rename).
fn cache(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let failed = |source| TlsError::CacheFailed {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let temporary = dir.join(format!(".rds-bundle-{}.tmp", std::process::id()));
    std::fs::write(&temporary, bytes).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn verify_full_with_the_rds_bundle_by_default() {
        let tls = from_vars(vars(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(
            tls.roots,
            Some(Roots::RdsBundle {
                path: PathBuf::from("/home/u/.cache/envctl/rds-global-bundle.pem"),
                url: RDS_BUNDLE_URL.to_owned()
            })
        );
    }

    #[test]
    fn a_mode_without_tls_or_an_unusable_root_is_an_error_never_a_downgrade() {
        for mode in ["disable", "allow", "prefer"] {
            assert!(matches!(
                from_vars(vars(&[("PGSSLMODE", mode)])),
                Err(TlsError::NoTls(_))
            ));
        }
        assert!(matches!(
            from_vars(vars(&[("PGSSLMODE", "verify_full")])),
            Err(TlsError::UnknownMode(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [missing.as_path(), dir.path(), empty.as_path()] {
            let text = path.to_str().unwrap();
            for var in ["PGSSLROOTCERT", "ENVCTL_RDS_CA_BUNDLE"] {
                let error = from_vars(vars(&[(var, text)])).unwrap_err();
                assert!(
                    matches!(&error, TlsError::UnusableRoots { from, .. } if *from == var),
                    "{error}"
                );
                // Not even `require` lets a bad file pass.
                assert!(from_vars(vars(&[(var, text), ("PGSSLMODE", "require")])).is_err());
            }
        }
    }

    #[test]
    fn the_users_mode_is_kept() {
        assert_eq!(
            from_vars(vars(&[("PGSSLMODE", "require")])).unwrap(),
            Tls {
                mode: Mode::Require,
                roots: None
            }
        );
        assert_eq!(
            from_vars(vars(&[
                ("PGSSLMODE", "verify-ca"),
                ("XDG_CACHE_HOME", "/c")
            ]))
            .unwrap()
            .mode,
            Mode::VerifyCa
        );
    }
}
