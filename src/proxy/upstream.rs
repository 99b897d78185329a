//! The proxy's own connection to an environment's server, one per client: TCP, TLS as the data
//! plane's [`TlsRules`] say (sqlx's semantics: `require` encrypts without verifying, `verify-ca`
//! checks the chain, `verify-full` the chain and the host, against the public web roots plus the
//! rules' CA bundle), the client's start-up message with the environment's user and database, and
//! authentication with a fresh credential: cleartext (IAM tokens go that way, over TLS), MD5 or
//! SCRAM-SHA-256 (postgres-protocol's). Also `CancelRequest`s, sent the same way.
//!
//! No error carries the password or token: they hold addresses, SQLSTATEs and causes only.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::wire::{self, AuthRequest, CancelKey, StartupMessage, WireError};
use crate::provider::BoxError;
use crate::provider::upstream::{Secret, TlsRules, Upstream};

/// Why the proxy could not open (or use) its connection to the server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No TCP connection (DNS, refused, unreachable).
    #[error("cannot reach `{address}`")]
    ConnectFailed {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// Connecting and logging in took longer than the connect timeout.
    #[error("`{address}` did not let the connection in within {}", humantime::format_duration(*waited))]
    TimedOut { address: String, waited: Duration },
    /// The server answered `N` to `SSLRequest` and the rules require TLS.
    #[error("the server at `{address}` does not offer TLS, and `sslmode={mode}` requires it")]
    TlsRefused { address: String, mode: &'static str },
    /// The TLS handshake failed (an untrusted certificate, a name that does not match).
    #[error("TLS with `{address}` failed")]
    TlsFailed {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle the rules name cannot be read or holds no certificate.
    #[error("cannot use the CA bundle `{path}`: {why}")]
    RootCertUnusable { path: String, why: String },
    /// The host is no name TLS can check.
    #[error("`{0}` is not a host name TLS can verify")]
    InvalidServerName(String),
    /// No password or token could be made (AWS credentials missing, the clock out of range).
    #[error("cannot make the login's credential ({kind})")]
    CredentialFailed {
        kind: &'static str,
        #[source]
        source: BoxError,
    },
    /// The server asks for a password and there is none.
    #[error("the server asks `{user}` for a password and envctl has none for it")]
    NoPassword { user: String },
    /// The server refused the start-up or the login: its `ErrorResponse`, as it sent it.
    #[error("the server refused the login: {}", wire::describe_error(&.0[5..]))]
    Refused(Vec<u8>),
    /// The server asks for an authentication method the proxy does not speak.
    #[error("the server asks for an authentication method the proxy does not speak ({0})")]
    UnsupportedAuthentication(String),
    /// The server's SCRAM exchange did not verify (a server that does not know the password).
    #[error("the server's SCRAM-SHA-256 proof does not verify")]
    ScramFailed(#[source] std::io::Error),
    /// The server broke the protocol.
    #[error("the server sent something unexpected: {0}")]
    Protocol(String),
    /// A message that is not what it should be.
    #[error("the server sent a malformed message")]
    Malformed(#[from] WireError),
    /// The connection broke while starting up.
    #[error("the connection to the server broke")]
    Io(#[from] std::io::Error),
}

impl UpstreamError {
    /// The SQLSTATE a client sees, and what to do about it.
    pub fn client_code_and_hint(&self) -> (&'static str, Option<&'static str>) {
        match self {
            UpstreamError::ConnectFailed { .. } => (
                "08001",
                Some(
                    "check that the environment is up (`envctl status`) and that this machine can reach it",
                ),
            ),
            UpstreamError::TimedOut { .. } => (
                "08001",
                Some(
                    "a paused cluster takes some seconds to resume: try again, or start the proxy with a longer `--connect-timeout`",
                ),
            ),
            UpstreamError::TlsRefused { .. }
            | UpstreamError::TlsFailed { .. }
            | UpstreamError::RootCertUnusable { .. }
            | UpstreamError::InvalidServerName(_) => (
                "08001",
                Some(
                    "check that PGSSLROOTCERT names the CA bundle that signed the server's certificate (on AWS, the RDS bundle)",
                ),
            ),
            UpstreamError::CredentialFailed { .. } => (
                "28000",
                Some(
                    "check the AWS credentials envctl runs with (`aws sts get-caller-identity`) and the system clock",
                ),
            ),
            UpstreamError::NoPassword { .. } | UpstreamError::ScramFailed(_) => ("28000", None),
            UpstreamError::UnsupportedAuthentication(_) => (
                "28000",
                Some("let the user log in with a password, MD5 or SCRAM-SHA-256"),
            ),
            UpstreamError::Refused(_)
            | UpstreamError::Protocol(_)
            | UpstreamError::Malformed(_)
            | UpstreamError::Io(_) => ("08006", None),
        }
    }
}

/// A connection to the server: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An [`Upstream`] ready for connections: its TLS configuration built once (the CA bundle read
/// once, when the proxy starts or first serves the environment).
pub struct Prepared {
    pub upstream: Upstream,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Prepared {
    pub fn new(upstream: Upstream) -> Result<Prepared, UpstreamError> {
        let tls = if upstream.tls.mode.requests_tls() {
            let config = client_config(&upstream.tls)?;
            let name = ServerName::try_from(upstream.host.clone())
                .map_err(|_| UpstreamError::InvalidServerName(upstream.host.clone()))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Prepared { upstream, tls })
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        if self.upstream.host.contains(':') {
            format!("[{}]:{}", self.upstream.host, self.upstream.port)
        } else {
            format!("{}:{}", self.upstream.host, self.upstream.port)
        }
    }

    /// TCP, then TLS as the rules say.
    async fn connect(&self) -> Result<Stream, UpstreamError> {
        let address = self.address();
        let mut tcp = TcpStream::connect((self.upstream.host.as_str(), self.upstream.port))
            .await
            .map_err(|source| UpstreamError::ConnectFailed {
                address: address.clone(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        keep_alive(&tcp);
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await?;
        // One byte exactly: nothing the server sends before the handshake may be read as TLS.
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {}
            b'N' if !self.upstream.tls.mode.requires_tls() => return Ok(Stream::Plain(tcp)),
            b'N' => {
                return Err(UpstreamError::TlsRefused {
                    address,
                    mode: self.upstream.tls.mode.name(),
                });
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "answered the TLS request with byte 0x{other:02x}"
                )));
            }
        }
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|source| UpstreamError::TlsFailed { address, source })?;
        Ok(Stream::Tls(Box::new(tls)))
    }

    /// Opens a connection and logs in with `startup` (the client's parameters, with the
    /// environment's user and database), bounded by `timeout`. Returns the stream, the messages
    /// the client must see from the server up to and including `AuthenticationOk`
    /// (`NegotiateProtocolVersion`, notices), and what was read past them.
    pub async fn open(
        &self,
        startup: &StartupMessage,
        timeout: Duration,
    ) -> Result<Opened, UpstreamError> {
        match tokio::time::timeout(timeout, self.open_unbounded(startup)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::TimedOut {
                address: self.address(),
                waited: timeout,
            }),
        }
    }

    async fn open_unbounded(&self, startup: &StartupMessage) -> Result<Opened, UpstreamError> {
        let password = self.upstream.credential.fresh().await.map_err(|source| {
            UpstreamError::CredentialFailed {
                kind: self.upstream.credential.kind(),
                source,
            }
        })?;
        let mut stream = self.connect().await?;
        stream.write_all(&startup.encode()).await?;
        let mut buffer = BytesMut::with_capacity(512);
        let mut forward = Vec::new();
        let mut login = Login {
            user: &self.upstream.user,
            password: password.as_ref(),
            scram: None,
        };
        loop {
            let frame = read_frame(&mut stream, &mut buffer).await?;
            match frame[0] {
                b'R' => {
                    let request = wire::parse_auth(&frame[5..])?;
                    if request == AuthRequest::Ok {
                        forward.push(frame);
                        break;
                    }
                    let answer = match request {
                        // The SCRAM key derivation (PBKDF2, thousands of HMACs) runs off the
                        // proxy's one thread: a login never stalls the sessions relaying.
                        AuthRequest::SaslContinue(data) => {
                            login.continue_scram(data.to_vec()).await?
                        }
                        request => login.answer(request)?,
                    };
                    if !answer.is_empty() {
                        stream.write_all(&answer).await?;
                    }
                }
                b'E' => return Err(UpstreamError::Refused(frame.to_vec())),
                b'v' | b'N' => forward.push(frame),
                other => {
                    return Err(UpstreamError::Protocol(format!(
                        "message `{}` before the login completed",
                        other as char
                    )));
                }
            }
        }
        Ok(Opened {
            stream,
            forward,
            buffer,
        })
    }

    /// Sends `key`'s `CancelRequest` to the server (over TLS when the rules use it) and waits,
    /// up to `timeout`, for the server to close the connection, which it does once it has read it.
    pub async fn cancel(&self, key: &CancelKey, timeout: Duration) -> Result<(), UpstreamError> {
        let work = async {
            let mut stream = self.connect().await?;
            stream.write_all(&key.cancel_request()).await?;
            stream.flush().await?;
            let mut sink = [0u8; 64];
            while stream.read(&mut sink).await? > 0 {}
            Ok(())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::TimedOut {
                address: self.address(),
                waited: timeout,
            }),
        }
    }
}

/// A logged-in connection, before `ReadyForQuery`.
pub struct Opened {
    pub stream: Stream,
    /// Whole messages for the client, `AuthenticationOk` last.
    pub forward: Vec<BytesMut>,
    /// Bytes read past `AuthenticationOk`.
    pub buffer: BytesMut,
}

/// One login's state: what to answer each authentication request with.
struct Login<'a> {
    user: &'a str,
    password: Option<&'a Secret>,
    scram: Option<ScramSha256>,
}

impl Login<'_> {
    fn password(&self) -> Result<&Secret, UpstreamError> {
        self.password.ok_or_else(|| UpstreamError::NoPassword {
            user: self.user.to_owned(),
        })
    }

    /// The message answering `request` (empty when none is due).
    fn answer(&mut self, request: AuthRequest<'_>) -> Result<BytesMut, UpstreamError> {
        let mut out = BytesMut::new();
        match request {
            AuthRequest::Ok => {}
            AuthRequest::Cleartext => {
                frontend::password_message(self.password()?.expose().as_bytes(), &mut out)?;
            }
            AuthRequest::Md5 { salt } => {
                let hash = md5_hash(
                    self.user.as_bytes(),
                    self.password()?.expose().as_bytes(),
                    salt,
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(UpstreamError::UnsupportedAuthentication(format!(
                        "SASL {}",
                        mechanisms.join(", ")
                    )));
                }
                // Without channel binding ('n'): the server may offer SCRAM-SHA-256-PLUS too.
                let scram = ScramSha256::new(
                    self.password()?.expose().as_bytes(),
                    ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)?;
                self.scram = Some(scram);
            }
            AuthRequest::SaslContinue(_) => {
                return Err(UpstreamError::Protocol(
                    "a SASL step answered out of turn".into(),
                ));
            }
            AuthRequest::SaslFinal(data) => {
                self.scram_state()?
                    .finish(data)
                    .map_err(UpstreamError::ScramFailed)?;
            }
            AuthRequest::Other(code) => {
                let name = match code {
                    2 => "Kerberos V5",
                    7 | 8 => "GSSAPI",
                    9 => "SSPI",
                    _ => "unknown",
                };
                return Err(UpstreamError::UnsupportedAuthentication(format!(
                    "{name}, code {code}"
                )));
            }
        }
        Ok(out)
    }

    /// Answers the server's SCRAM challenge `data`, the key derivation on tokio's blocking pool.
    async fn continue_scram(&mut self, data: Vec<u8>) -> Result<BytesMut, UpstreamError> {
        let mut scram = self
            .scram
            .take()
            .ok_or_else(|| UpstreamError::Protocol("a SASL step before SASL began".into()))?;
        let scram = tokio::task::spawn_blocking(move || scram.update(&data).map(|()| scram))
            .await
            .map_err(|e| UpstreamError::Protocol(format!("the SCRAM computation stopped: {e}")))?
            .map_err(UpstreamError::ScramFailed)?;
        let mut out = BytesMut::new();
        frontend::sasl_response(scram.message(), &mut out)?;
        self.scram = Some(scram);
        Ok(out)
    }

    fn scram_state(&mut self) -> Result<&mut ScramSha256, UpstreamError> {
        self.scram
            .as_mut()
            .ok_or_else(|| UpstreamError::Protocol("a SASL step before SASL began".into()))
    }
}

/// Reads one whole server message (tag, length, body) into `buffer` and splits it off.
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
) -> Result<BytesMut, UpstreamError> {
    loop {
        if let Some(len) = wire::message_len(buffer)? {
            return Ok(buffer.split_to(len));
        }
        if buffer.capacity() - buffer.len() < 256 {
            buffer.reserve(4096);
        }
        if stream.read_buf(buffer).await? == 0 {
            return Err(UpstreamError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// rustls configured as sqlx configures it for these rules.
fn client_config(rules: &TlsRules) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Protocol(format!("no TLS version to offer: {e}")))?;
    if !rules.mode.verifies_chain() {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified { provider }))
                .with_no_client_auth(),
        ));
    }
    let roots = Arc::new(root_store(rules)?);
    if rules.mode.verifies_host() {
        return Ok(Arc::new(
            builder.with_root_certificates(roots).with_no_client_auth(),
        ));
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| UpstreamError::Protocol(format!("cannot build the TLS verifier: {e}")))?;
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyHostName { verifier }))
            .with_no_client_auth(),
    ))
}

/// The public web roots and the rules' CA bundle, as sqlx trusts them.
fn root_store(rules: &TlsRules) -> Result<rustls::RootCertStore, UpstreamError> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let Some(path) = &rules.root_cert else {
        return Ok(roots);
    };
    let unusable = |why: String| UpstreamError::RootCertUnusable {
        path: path.display().to_string(),
        why,
    };
    // A CA bundle is small; the RDS global bundle is about 160 KiB.
    let file = std::fs::File::open(path).map_err(|e| unusable(e.to_string()))?;
    let mut pem = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 16 << 20), &mut pem)
        .map_err(|e| unusable(e.to_string()))?;
    let mut added = 0;
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: CertificateDer<'static> =
            cert.map_err(|e| unusable(format!("not PEM certificates ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| unusable(format!("a certificate is not usable: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(unusable("it holds no certificate".into()));
    }
    Ok(roots)
}

/// `require`/`prefer`: encryption without verifying who the server is (sqlx's and libpq's
/// meaning); the handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the certificate may name another host.
#[derive(Debug)]
struct AnyHostName {
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

/// TCP keepalive on a connection of the proxy's (either side): probes after a minute of quiet,
/// every 10 s, 6 times, so a peer gone without a word (a laptop asleep, a NAT that forgot the
/// flow, as AWS's does after 350 s idle) is found in about two minutes, its slot and its backend
/// freed, instead of never. Best effort: a socket that refuses keeps working without it.
pub fn keep_alive(socket: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(socket, sockopt::KeepAlive, &true);
    let _ = setsockopt(socket, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(socket, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(socket, sockopt::TcpKeepCount, &6);
}
