//! `envctl proxy`: a PostgreSQL endpoint on loopback that needs no password. Each client
//! connection gets its own upstream connection, opened by the proxy with a fresh credential
//! ([`crate::provider::upstream::Credential`]: on AWS a token signed for that connection), and
//! then bytes are relayed both ways, unframed, with back-pressure (a slow reader slows the
//! writer; nothing is buffered beyond one 8 KiB buffer per direction).
//!
//! What it owns: the listener and accept loop, the connection limit, the drain on a signal, the
//! start-up exchange with the client (encryption requests answered `N`, the start-up message read,
//! the server's start-up messages forwarded with `BackendKeyData` replaced by a key of the proxy's
//! own), and the cancel-key map that turns a client's `CancelRequest` into the upstream's.
//! It reaches providers only through the [`Upstream`] values it is given; it never reads a
//! token or password except to hand it to the server, and logs neither.
//!
//! Submodules: `wire` (bytes: the messages it reads and writes), `upstream` (TCP, TLS, login).

pub mod upstream;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::provider::BoxError;
use crate::provider::upstream::Upstream;
use crate::report::{Reporter, error_chain};
use upstream::{Prepared, UpstreamError};
use wire::{CancelKey, FirstMessage, StartupMessage};

/// How long a client may take to send its start-up message (PostgreSQL's
/// `authentication_timeout` default).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a cancel may take to reach the server.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// Each direction's relay buffer.
const RELAY_BUFFER: usize = 8 * 1024;

/// How the proxy behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Client connections served at once; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// After the first signal, how long open connections may go on before their queries are
    /// cancelled and they are closed.
    pub drain: Duration,
    /// Close a connection after this long with no bytes either way (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How long opening an upstream connection may take, login included (a paused cluster
    /// resumes in that time).
    pub connect_timeout: Duration,
    pub reporter: Reporter,
}

/// A future that resolves an environment's [`Upstream`] the first time a client asks for it.
pub type Resolve =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Upstream, BoxError>> + Send>> + Send + Sync>;

/// Whether an environment may be served now: `Err` with the reason (a data branch's copy whose
/// masking has not committed: a reset re-copies it under the same name while the proxy runs).
pub type Gate =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How long a gate's yes may stand for the connections that follow where making the
/// environment again takes longer than that (on AWS a delete, a restore and a writer: minutes),
/// so that a pool opening many at once asks the provider once. Where it may take less (one
/// PostgreSQL server copies a small database in milliseconds), every connection asks.
pub const GATE_FOR: Duration = Duration::from_secs(1);

/// One environment the proxy serves.
pub struct Route {
    /// The branch, for messages.
    pub label: String,
    prepared: tokio::sync::OnceCell<Arc<Prepared>>,
    resolve: Option<Resolve>,
    gate: Option<Gate>,
    /// How long its yes stands ([`Route::gated`]).
    gate_for: Duration,
    /// When the gate last said yes.
    passed: std::sync::Mutex<Option<std::time::Instant>>,
    /// Held while the gate is asked, where a yes stands for the connections that follow: a pool
    /// opening 40 at once asks once, not 40 times (on AWS, 40 `DescribeDBClusters` against a
    /// shared rate limit).
    asking: tokio::sync::Mutex<()>,
}

/// Why an environment cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Its upstream could not be resolved (the provider's answer).
    #[error("cannot find where `{0}`'s database is")]
    ResolveFailed(String, #[source] BoxError),
    /// Its upstream's TLS configuration is unusable.
    #[error("cannot prepare connections to `{0}`'s database")]
    PrepareFailed(String, #[source] UpstreamError),
}

impl Route {
    /// An environment whose upstream is known now (its TLS configuration is built now).
    pub fn ready(label: &str, upstream: Upstream) -> Result<Route, RouteError> {
        let prepared =
            Prepared::new(upstream).map_err(|e| RouteError::PrepareFailed(label.to_owned(), e))?;
        Ok(Route {
            label: label.to_owned(),
            prepared: tokio::sync::OnceCell::new_with(Some(Arc::new(prepared))),
            resolve: None,
            gate: None,
            gate_for: Duration::ZERO,
            passed: Default::default(),
            asking: Default::default(),
        })
    }

    /// An environment resolved when the first client asks for it (a failure is retried by the
    /// next client).
    pub fn lazy(label: &str, resolve: Resolve) -> Route {
        Route {
            label: label.to_owned(),
            prepared: tokio::sync::OnceCell::new(),
            resolve: Some(resolve),
            gate: None,
            gate_for: Duration::ZERO,
            passed: Default::default(),
            asking: Default::default(),
        }
    }

    /// The same route, asking `gate` before each new upstream connection, its yes standing for
    /// `stands_for` ([`GATE_FOR`] at most; zero: every connection asks).
    pub fn gated(mut self, gate: Gate, stands_for: Duration) -> Route {
        self.gate = Some(gate);
        self.gate_for = stands_for.min(GATE_FOR);
        self
    }

    /// Whether the route may be served now ([`Gate`]), asked within `within`.
    async fn admit(&self, within: Duration) -> Result<(), String> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        if self.gate_for.is_zero() {
            return bounded(within, gate()).await;
        }
        let recent = || {
            self.passed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < self.gate_for)
        };
        if recent() {
            return Ok(());
        }
        bounded(within, async {
            let _asking = self.asking.lock().await;
            // Another connection may have asked while this one waited.
            if recent() {
                return Ok(());
            }
            gate().await?;
            *self.passed.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now());
            Ok(())
        })
        .await
    }

    /// Asks the gate once more when the upstream session has logged in, on a route that keeps
    /// no yes (a provider that can make the environment again within a connection's set-up):
    /// the first answer was about the database of that name before the connection opened, and
    /// a reset could have put another there since. The session now holds its database, which
    /// cannot be dropped under it, so a yes now is about the one the session reads.
    async fn confirm(&self) -> Result<(), String> {
        match &self.gate {
            Some(gate) if self.gate_for.is_zero() => gate().await,
            _ => Ok(()),
        }
    }

    /// Its upstream, resolved within `within` the first time (a lazy route). The wait is bounded
    /// as a whole: a connection queued behind another's resolve waits `within` in all, not
    /// once per resolve tried before it.
    async fn prepared(&self, within: Duration) -> Result<Arc<Prepared>, RouteError> {
        let init = self.prepared.get_or_try_init(|| async {
            let failed = |e| RouteError::ResolveFailed(self.label.clone(), e);
            // A ready route's cell is set, so only lazy routes get here.
            let resolve = self
                .resolve
                .as_ref()
                .ok_or_else(|| failed("no upstream".into()))?;
            let upstream = resolve().await.map_err(failed)?;
            let prepared = Prepared::new(upstream)
                .map_err(|e| RouteError::PrepareFailed(self.label.clone(), e))?;
            Ok(Arc::new(prepared))
        });
        match tokio::time::timeout(within, init).await {
            Ok(prepared) => prepared.cloned(),
            Err(_) => Err(RouteError::ResolveFailed(
                self.label.clone(),
                format!(
                    "its endpoint was not found within {} (`--connect-timeout`)",
                    humantime::format_duration(within)
                )
                .into(),
            )),
        }
    }
}

/// `asked`, or a refusal when it has no answer within `within`.
async fn bounded(
    within: Duration,
    asked: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(within, asked)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {} to whether it may be served (`--connect-timeout`)",
                humantime::format_duration(within)
            ))
        })
}

/// Which environment a client reaches.
pub enum Routing {
    /// Every client reaches this one, whatever database it names.
    One(Arc<Route>),
    /// The client's `database` start-up parameter names the environment (its branch or its
    /// cluster id: both keys lead to the same route).
    ByDatabase(BTreeMap<String, Arc<Route>>),
}

impl Routing {
    fn pick(&self, database: Option<&str>) -> Result<Arc<Route>, String> {
        match self {
            Routing::One(route) => Ok(route.clone()),
            Routing::ByDatabase(routes) => {
                let name = database.unwrap_or_default();
                routes.get(name).cloned().ok_or_else(|| {
                    // The client's own bytes: escaped, so no terminal escape or line of its own
                    // reaches the log or the client's screen.
                    let name = name.escape_debug();
                    let mut labels: Vec<&str> = routes.values().map(|r| r.label.as_str()).collect();
                    labels.sort_unstable();
                    labels.dedup();
                    format!(
                        "no live environment for database `{name}`: name a branch ({})",
                        if labels.is_empty() {
                            "none is live".to_owned()
                        } else {
                            labels
                                .iter()
                                .map(|l| format!("`{l}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    )
                })
            }
        }
    }
}

/// How far shutting down has gone: set by the caller (signals, or `exec`'s child ending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// Stop accepting; open connections may finish within the drain period.
    Drain,
    /// Close everything now.
    Now,
}

/// What a run served, when it ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    /// Connections accepted (refused ones included).
    pub connections: u64,
    /// Connections still open when the drain period ended (closed by the proxy).
    pub closed_at_stop: usize,
}

/// An upstream connection's key, for a client's cancel request.
struct CancelTarget {
    prepared: Arc<Prepared>,
    key: CancelKey,
}

struct Shared {
    routing: Routing,
    options: Options,
    /// The key each client saw → the upstream backend's.
    cancels: Mutex<HashMap<CancelKey, CancelTarget>>,
    next_id: AtomicU64,
    limit: Arc<Semaphore>,
    /// Connections being refused (bounded too: a flood is dropped, not queued).
    refusing: Arc<Semaphore>,
    /// Set when the proxy closes the connections still open (a drain that ran out, a second
    /// signal): each relay tells its client why before it goes.
    closing: watch::Sender<bool>,
}

/// A bound proxy, not yet serving.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Why the proxy could not listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process has the port.
    #[error("`{0}` is already in use")]
    InUse(SocketAddr),
    /// The address is not this machine's, or the port is privileged.
    #[error("cannot listen on `{0}`")]
    Failed(SocketAddr, #[source] std::io::Error),
}

impl Proxy {
    /// Binds `address` (port 0: a free one).
    pub async fn bind(
        address: SocketAddr,
        routing: Routing,
        options: Options,
    ) -> Result<Proxy, ListenError> {
        // Two sockets a connection, and some to spare.
        raise_open_files_limit(2 * options.max_connections as u64 + 64);
        let listener = TcpListener::bind(address).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                ListenError::InUse(address)
            } else {
                ListenError::Failed(address, e)
            }
        })?;
        let refusing = Arc::new(Semaphore::new(options.max_connections.clamp(16, 256)));
        let shared = Arc::new(Shared {
            routing,
            cancels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            limit: Arc::new(Semaphore::new(options.max_connections)),
            refusing,
            options,
            closing: watch::Sender::new(false),
        });
        Ok(Proxy { listener, shared })
    }

    /// The address it listens on (the port chosen for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves clients until `stop` says otherwise, then drains.
    pub async fn serve(self, mut stop: watch::Receiver<Stop>) -> Served {
        let Proxy { listener, shared } = self;
        let mut tasks = JoinSet::new();
        let mut level = Stop::Running;
        while level == Stop::Running {
            tokio::select! {
                changed = stop.changed() => {
                    level = if changed.is_ok() { *stop.borrow() } else { Stop::Now };
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => admit(&shared, &mut tasks, socket, peer),
                    Err(e) => {
                        // Out of file descriptors, or a connection reset before it was accepted:
                        // wait a little rather than spin.
                        log_error(&shared.options.reporter, 0, &format!("cannot accept a connection: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        // Connections that ended but were not reaped yet are not open.
        while tasks.try_join_next().is_some() {}
        let open = tasks.len();
        if level == Stop::Drain && open > 0 {
            shared.options.reporter.note(&format!(
                "stopped listening; waiting up to {} for {open} open connection{} to finish (signal again to close them now)",
                humantime::format_duration(shared.options.drain),
                if open == 1 { "" } else { "s" }
            ));
            let drained = async { while tasks.join_next().await.is_some() {} };
            let forced = async {
                while *stop.borrow() != Stop::Now {
                    if stop.changed().await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = drained => {}
                _ = tokio::time::sleep(shared.options.drain) => {}
                _ = forced => {}
            }
        }
        let closed_at_stop = tasks.len();
        if closed_at_stop > 0 {
            // The upstream keys of the connections open now (each is forgotten as its
            // connection ends).
            let targets: Vec<(Arc<Prepared>, CancelKey)> = {
                let cancels = shared.cancels.lock().unwrap_or_else(|e| e.into_inner());
                cancels
                    .values()
                    .map(|t| (t.prepared.clone(), t.key.clone()))
                    .collect()
            };
            // Each open connection tells its client why it closes, as PostgreSQL's own shutdown
            // does (before the cancels, whose error would reach the client first); what has not
            // within a second is closed anyway.
            shared.closing.send_replace(true);
            let told = async { while tasks.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), told).await;
            cancel_running_queries(&shared, targets).await;
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        Served {
            connections: shared.next_id.load(Ordering::Relaxed) - 1,
            closed_at_stop,
        }
    }
}

/// Raises the soft limit of open files towards `needed`, within the hard limit (macOS starts
/// at 256, and many Linux shells at 1 024: too few for a few hundred clients). Where it cannot,
/// connections past the limit are refused as the accept loop meets them.
fn raise_open_files_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < needed
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, needed.min(hard), hard);
    }
}

/// Serves an accepted client, or refuses it when the limit is reached.
fn admit(shared: &Arc<Shared>, tasks: &mut JoinSet<()>, socket: TcpStream, peer: SocketAddr) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    match shared.limit.clone().try_acquire_owned() {
        Ok(permit) => {
            let shared = shared.clone();
            tasks.spawn(async move {
                serve_client(&shared, socket, peer, id, permit).await;
            });
        }
        Err(_) => {
            let Ok(permit) = shared.refusing.clone().try_acquire_owned() else {
                return;
            };
            let limit = shared.options.max_connections;
            shared.options.reporter.detail(&format!(
                "connection {id} from {peer}: refused, {limit} connections are open"
            ));
            let shared = shared.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let mut socket = socket;
                if let Ok(Ok(Some(first))) =
                    tokio::time::timeout(Duration::from_secs(5), read_startup(&mut socket)).await
                {
                    // A cancel request holds no session: it is sent on whatever the count (the
                    // sessions it would cancel may be the ones filling the proxy), and, as
                    // PostgreSQL does, never answered.
                    if let FirstMessage::Cancel(key) = first {
                        return forward_cancel(&shared, id, &key).await;
                    }
                    let message = wire::fatal_error(
                        "53300",
                        &format!("sorry, too many clients already: the proxy serves at most {limit} connections at once"),
                        Some("close some, or start the proxy with a larger `--max-connections`"),
                    );
                    let _ = socket.write_all(&message).await;
                }
            });
        }
    }
}

/// A timestamped line on stderr for a connection's failure (never a secret: errors carry none).
fn log_error(reporter: &Reporter, id: u64, text: &str) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let prefix = if reporter.color {
        "\x1b[1;31merror:\x1b[0m"
    } else {
        "error:"
    };
    // Text that came from a client or a server is escaped where it is put in a message; a
    // control character that got through still reaches no terminal as one.
    let text: String = text
        .chars()
        .flat_map(|c| match c {
            '\n' => vec!['\n'],
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect();
    if id == 0 {
        say!("{now} {prefix} {text}");
    } else {
        say!("{now} {prefix} connection {id}: {text}");
    }
}

/// Reads the client's first messages: answers encryption requests with `N` (loopback is plain)
/// until a start-up message or a cancel request arrives. `None` when the client left.
async fn read_startup(socket: &mut TcpStream) -> Result<Option<FirstMessage>, BoxError> {
    // libpq sends at most a GSSENCRequest and then an SSLRequest before its start-up message.
    for _ in 0..3 {
        let mut header = [0u8; 4];
        match socket.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut body = vec![0u8; wire::startup_body_len(header)?];
        socket.read_exact(&mut body).await?;
        match wire::parse_first(&body)? {
            FirstMessage::SslRequest | FirstMessage::GssEncRequest => {
                socket.write_all(b"N").await?
            }
            other => return Ok(Some(other)),
        }
    }
    Err("the client asked for encryption three times".into())
}

/// One client, from its first byte to its last.
async fn serve_client(
    shared: &Arc<Shared>,
    mut socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    _permit: OwnedSemaphorePermit,
) {
    let reporter = &shared.options.reporter;
    let _ = socket.set_nodelay(true);
    upstream::keep_alive(&socket);
    let first = match tokio::time::timeout(STARTUP_TIMEOUT, read_startup(&mut socket)).await {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            reporter.detail(&format!(
                "connection {id} from {peer}: not a PostgreSQL client: {e}"
            ));
            let message = wire::fatal_error("08P01", &format!("envctl proxy: {e}"), None);
            let _ = socket.write_all(&message).await;
            return;
        }
        Err(_) => {
            reporter.detail(&format!(
                "connection {id} from {peer}: sent no start-up message within {}",
                humantime::format_duration(STARTUP_TIMEOUT)
            ));
            return;
        }
    };
    let startup = match first {
        FirstMessage::Cancel(key) => return forward_cancel(shared, id, &key).await,
        FirstMessage::Startup(startup) => startup,
        FirstMessage::SslRequest | FirstMessage::GssEncRequest => unreachable!("answered"),
    };
    let started = Instant::now();
    match start_session(shared, &mut socket, id, &startup).await {
        Ok(Some(session)) => {
            reporter.detail(&format!(
                "connection {id} from {peer}: `{}` as `{}` ({} ms to log in)",
                session.label,
                session.user,
                started.elapsed().as_millis()
            ));
            let Session {
                upstream,
                registered,
                framing,
                ..
            } = session;
            let closing = shared.closing.subscribe();
            let client = ToClient {
                inner: socket,
                framing,
            };
            let outcome = relay(client, upstream, shared.options.idle_timeout, closing).await;
            // Closed for being idle: a query may still run on the server, which does not notice
            // its client gone while it runs.
            if let (Relayed::Idle(_), Some(registered)) = (&outcome, &registered) {
                forward_cancel(shared, id, &registered.key).await;
            }
            drop(registered);
            let open = shared.options.max_connections - shared.limit.available_permits() - 1;
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                .saturating_sub(1);
            reporter.detail(&format!(
                "connection {id} closed after {:.1} s{} (open connections: {open}, tasks: {tasks})",
                started.elapsed().as_secs_f64(),
                match outcome {
                    Relayed::Closed => String::new(),
                    Relayed::Idle(after) =>
                        format!(", idle for {}", humantime::format_duration(after)),
                    Relayed::Stopped => ", by the proxy's stop".to_owned(),
                    Relayed::Broken(e) => format!(", broken: {e}"),
                }
            ));
        }
        Ok(None) => {}
        Err(failure) => {
            log_error(reporter, id, &failure.log);
            let _ = socket.write_all(&failure.message).await;
        }
    }
}

/// A logged-in upstream connection, ready to relay.
struct Session {
    label: String,
    user: String,
    upstream: upstream::Stream,
    /// Removes the connection's cancel key when dropped.
    registered: Option<Registered>,
    /// Where what the client was sent stands in the server's framing.
    framing: wire::Framing,
}

/// Why a client could not be connected: what it is sent, and what is logged.
struct Failure {
    message: Vec<u8>,
    log: String,
}

impl Failure {
    fn new(code: &str, text: String, hint: Option<&str>) -> Failure {
        Failure {
            message: wire::fatal_error(code, &format!("envctl proxy: {text}"), hint),
            log: match hint {
                Some(hint) => format!("{text}\n  hint: {hint}"),
                None => text,
            },
        }
    }
}

/// The client's start-up packet with the environment's user and database in it. The client's
/// fit; this one may not, and PostgreSQL would close the connection without a word.
fn login_for(
    startup: &StartupMessage,
    upstream: &Upstream,
    label: &str,
) -> Result<StartupMessage, Failure> {
    let mut login = startup.clone();
    login.set("user", &upstream.user);
    login.set("database", &upstream.database);
    let length = login.encode().len();
    if length > wire::MAX_STARTUP_LEN {
        return Err(Failure::new(
            "08P01",
            format!(
                "the start-up packet would be {length} bytes once it names `{label}`'s user and database; PostgreSQL takes at most {}",
                wire::MAX_STARTUP_LEN
            ),
            Some("send fewer or shorter start-up parameters (`options`, `application_name`)"),
        ));
    }
    Ok(login)
}

/// Routes the client, opens its upstream connection and forwards the server's start-up
/// messages up to `ReadyForQuery`. `Ok(None)`: the server refused and the client has its error.
async fn start_session(
    shared: &Arc<Shared>,
    socket: &mut TcpStream,
    id: u64,
    startup: &StartupMessage,
) -> Result<Option<Session>, Failure> {
    let route = shared
        .routing
        .pick(startup.get("database").as_deref())
        .map_err(|text| {
            Failure::new(
                "3D000",
                text,
                Some("`envctl status` lists the live environments"),
            )
        })?;
    let prepared = route
        .prepared(shared.options.connect_timeout)
        .await
        .map_err(|e| {
            let hint = match &e {
                RouteError::PrepareFailed(_, inner) => inner.client_code_and_hint().1,
                RouteError::ResolveFailed(..) => Some("check `envctl status` and the credentials"),
            };
            Failure::new("08001", error_chain(&e), hint)
        })?;
    route
        .admit(shared.options.connect_timeout)
        .await
        .map_err(|reason| Failure::new("57P03", format!("`{}`: {reason}", route.label), None))?;
    let upstream = &prepared.upstream;
    let login = login_for(startup, upstream, &route.label)?;
    let opened = match prepared.open(&login, shared.options.connect_timeout).await {
        Ok(opened) => opened,
        Err(UpstreamError::Refused(frame)) => {
            // The server's own error, as it sent it.
            log_error(
                &shared.options.reporter,
                id,
                &format!(
                    "`{}` refused the login as `{}`: {}",
                    route.label,
                    upstream.user,
                    wire::describe_error(&frame[5..])
                ),
            );
            let _ = socket.write_all(&frame).await;
            return Ok(None);
        }
        Err(e) => {
            let (code, hint) = e.client_code_and_hint();
            return Err(Failure::new(
                code,
                format!("`{}`: {}", route.label, error_chain(&e)),
                hint,
            ));
        }
    };
    let upstream::Opened {
        mut stream,
        forward,
        mut buffer,
    } = opened;
    let mut out: Vec<u8> = forward.iter().flat_map(|f| f.iter().copied()).collect();
    let until_ready = until_ready_for_query(shared, &prepared, &mut stream, &mut buffer, &mut out);
    let registered = match tokio::time::timeout(shared.options.connect_timeout, until_ready).await {
        Ok(Ok(Startup::Ready(registered))) => registered,
        Ok(Ok(Startup::Refused)) => {
            // The server's error, after the client's earlier messages.
            let _ = socket.write_all(&out).await;
            return Ok(None);
        }
        Ok(Err(e)) => {
            return Err(Failure::new(
                "08006",
                format!("`{}`: {}", route.label, error_chain(&e)),
                None,
            ));
        }
        Err(_) => {
            return Err(Failure::new(
                "08001",
                format!(
                    "`{}`: the server logged in but was not ready within {}",
                    route.label,
                    humantime::format_duration(shared.options.connect_timeout)
                ),
                None,
            ));
        }
    };
    // Nothing the server sent has reached the client yet, and the client's own bytes wait.
    route
        .confirm()
        .await
        .map_err(|reason| Failure::new("57P03", format!("`{}`: {reason}", route.label), None))?;
    // Whatever the server sent after `ReadyForQuery` (nothing, usually) goes on too: the
    // framing follows it from there, as it may end inside a message.
    let mut framing = wire::Framing::default();
    framing.feed(&buffer);
    out.extend_from_slice(&buffer);
    socket
        .write_all(&out)
        .await
        .map_err(|e| Failure::new("08006", format!("the client went away: {e}"), None))?;
    Ok(Some(Session {
        label: route.label.clone(),
        user: upstream.user.clone(),
        upstream: stream,
        registered,
        framing,
    }))
}

/// How the server's start-up ended.
enum Startup {
    /// `ReadyForQuery`; the cancel key's registration (none when the server sent no key).
    Ready(Option<Registered>),
    /// An `ErrorResponse` (forwarded with the rest).
    Refused,
}

/// Forwards the server's messages after `AuthenticationOk` into `out` up to `ReadyForQuery`,
/// registering its cancel key.
async fn until_ready_for_query(
    shared: &Arc<Shared>,
    prepared: &Arc<Prepared>,
    stream: &mut upstream::Stream,
    buffer: &mut bytes::BytesMut,
    out: &mut Vec<u8>,
) -> Result<Startup, UpstreamError> {
    let mut registered = None;
    loop {
        let frame = upstream::read_frame(stream, buffer).await?;
        match frame[0] {
            b'K' => {
                let key = CancelKey::from_backend_key_data(&frame[5..])?;
                let (client_key, guard) = register(shared, prepared, key);
                out.extend_from_slice(&client_key.backend_key_data());
                registered = Some(guard);
            }
            b'Z' => {
                out.extend_from_slice(&frame);
                return Ok(Startup::Ready(registered));
            }
            b'E' => {
                out.extend_from_slice(&frame);
                return Ok(Startup::Refused);
            }
            _ => out.extend_from_slice(&frame),
        }
    }
}

/// Removes a cancel key from the map when the connection ends.
struct Registered {
    shared: Arc<Shared>,
    key: CancelKey,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut cancels) = self.shared.cancels.lock() {
            cancels.remove(&self.key);
        }
    }
}

/// A key of the proxy's own for the client (the upstream's process id, a new random secret),
/// mapped to the upstream's key.
fn register(
    shared: &Arc<Shared>,
    prepared: &Arc<Prepared>,
    key: CancelKey,
) -> (CancelKey, Registered) {
    let mut cancels = shared.cancels.lock().unwrap_or_else(|e| e.into_inner());
    let client_key = loop {
        let candidate = CancelKey {
            process_id: key.process_id,
            secret: rand_secret().to_vec(),
        };
        if !cancels.contains_key(&candidate) {
            break candidate;
        }
    };
    cancels.insert(
        client_key.clone(),
        CancelTarget {
            prepared: prepared.clone(),
            key,
        },
    );
    (
        client_key.clone(),
        Registered {
            shared: shared.clone(),
            key: client_key,
        },
    )
}

/// Four random bytes (rand's generator, seeded by the operating system).
fn rand_secret() -> [u8; 4] {
    rand::random()
}

/// How long the cancels sent at a forced stop may take, together.
const STOP_CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// At a stop that closes open connections: a cancel request for each, so a query still running
/// stops with its connection (a backend does not notice its client gone while it runs: a
/// closed socket alone would leave the query running on the server until it ends).
async fn cancel_running_queries(shared: &Arc<Shared>, targets: Vec<(Arc<Prepared>, CancelKey)>) {
    let sent = targets
        .iter()
        .map(|(prepared, key)| prepared.cancel(key, STOP_CANCEL_TIMEOUT));
    let results = futures_util::future::join_all(sent).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    let reporter = &shared.options.reporter;
    let sent = targets.len() - failed;
    if sent > 0 {
        reporter.detail(&format!(
            "sent a cancel request for {sent} of the {} connection{} closed",
            targets.len(),
            if targets.len() == 1 { "" } else { "s" }
        ));
    }
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        log_error(
            reporter,
            0,
            &format!(
                "cannot send {failed} of the cancel requests at the stop: {} (their queries may run on until they end)",
                error_chain(e)
            ),
        );
    }
}

/// Sends a client's cancel request on to the server of the connection it names. An unknown key
/// is ignored, as PostgreSQL ignores it.
async fn forward_cancel(shared: &Arc<Shared>, id: u64, key: &CancelKey) {
    let target = {
        let cancels = shared.cancels.lock().unwrap_or_else(|e| e.into_inner());
        cancels
            .get(key)
            .map(|t| (t.prepared.clone(), t.key.clone()))
    };
    let reporter = &shared.options.reporter;
    let Some((prepared, upstream_key)) = target else {
        reporter.detail(&format!(
            "connection {id}: a cancel request with an unknown key, ignored"
        ));
        return;
    };
    match prepared.cancel(&upstream_key, CANCEL_TIMEOUT).await {
        Ok(()) => reporter.detail(&format!(
            "connection {id}: cancel request sent to backend {}",
            upstream_key.process_id
        )),
        Err(e) => log_error(
            reporter,
            id,
            &format!("cannot send a cancel request: {}", error_chain(&e)),
        ),
    }
}

/// How a relay ended.
enum Relayed {
    Closed,
    Idle(Duration),
    Broken(std::io::Error),
    /// The proxy closed it ([`Shared::closing`]).
    Stopped,
}

/// Resolves once `closing` says the proxy closes its connections (never, if nobody can say so).
async fn closing_now(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Tells the client its connection closes because the proxy stops (PostgreSQL's words and
/// SQLSTATE for its own shutdown), giving it a second.
async fn tell_stopping(client: &mut ToClient) {
    let message = wire::fatal_error(
        "57P01",
        "envctl proxy: terminating connection due to administrator command (the proxy is stopping)",
        None,
    );
    client.tell(&message).await;
}

/// The client's side of a relay: what it is written is followed through the server's framing.
struct ToClient {
    inner: TcpStream,
    framing: wire::Framing,
}

impl ToClient {
    /// Sends a message of the proxy's own, giving it a second, where the client is between two
    /// of the server's messages. Inside one (a result cut off) it would be read as that
    /// message's bytes: then the connection only closes, as a server that went away does.
    async fn tell(&mut self, message: &[u8]) {
        if self.framing.between_messages() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.write_all(message)).await;
        }
    }
}

impl AsyncRead for ToClient {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ToClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(written)) = &result {
            this.framing.feed(&buf[..*written]);
        }
        result
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Relays bytes both ways until either side closes (or the idle timeout passes, or the proxy
/// closes its connections).
async fn relay(
    client: ToClient,
    upstream: upstream::Stream,
    idle: Option<Duration>,
    mut closing: watch::Receiver<bool>,
) -> Relayed {
    let Some(idle) = idle else {
        let (mut client, mut upstream) = (client, upstream);
        let ended = {
            let copy = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                RELAY_BUFFER,
                RELAY_BUFFER,
            );
            tokio::select! {
                biased;
                result = copy => Some(result),
                _ = closing_now(&mut closing) => None,
            }
        };
        return match ended {
            Some(Ok(_)) => Relayed::Closed,
            Some(Err(e)) => Relayed::Broken(e),
            None => {
                tell_stopping(&mut client).await;
                Relayed::Stopped
            }
        };
    };
    let activity = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let mut client = Watched {
        inner: client,
        activity: activity.clone(),
        epoch,
    };
    let mut upstream = Watched {
        inner: upstream,
        activity: activity.clone(),
        epoch,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    );
    let watchdog = async {
        loop {
            let last = Duration::from_millis(activity.load(Ordering::Relaxed));
            let quiet = epoch.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    let idled = tokio::select! {
        result = copy => return match result {
            Ok(_) => Relayed::Closed,
            Err(e) => Relayed::Broken(e),
        },
        _ = watchdog => idle,
        _ = closing_now(&mut closing) => {
            tell_stopping(&mut client.inner).await;
            return Relayed::Stopped;
        }
    };
    // As PostgreSQL's own idle_session_timeout says it (the caller cancels a query still
    // running on the server, which would not notice its client gone).
    let message = wire::fatal_error(
        "57P05",
        &format!(
            "envctl proxy: terminating connection after {} with no traffic (--idle-timeout)",
            humantime::format_duration(idled)
        ),
        None,
    );
    client.inner.tell(&message).await;
    Relayed::Idle(idled)
}

/// A stream that notes when bytes last moved (for the idle timeout).
struct Watched<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Watched<S> {
    fn touch(&self) {
        self.activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route whose gate counts its questions and takes `answer` to answer each.
    fn counted(stands_for: Duration, answer: Duration) -> (Route, Arc<AtomicU64>) {
        let asked = Arc::new(AtomicU64::new(0));
        let count = asked.clone();
        let gate: Gate = Box::new(move || {
            let count = count.clone();
            Box::pin(async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(answer).await;
                Ok(())
            })
        });
        let resolve: Resolve = Box::new(|| Box::pin(async { Err("unused".into()) }));
        let route = Route::lazy("feature/x", resolve).gated(gate, stands_for);
        (route, asked)
    }

    #[tokio::test]
    async fn connections_arriving_together_ask_a_standing_gate_once() {
        let (route, asked) = counted(GATE_FOR, Duration::from_millis(100));
        let route = Arc::new(route);
        let admits: Vec<_> = (0..40)
            .map(|_| {
                let route = route.clone();
                tokio::spawn(async move { route.admit(Duration::from_secs(10)).await })
            })
            .collect();
        for admit in admits {
            assert_eq!(admit.await.unwrap(), Ok(()));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // A gate whose yes stands for nothing is asked by every connection.
        let (route, asked) = counted(Duration::ZERO, Duration::ZERO);
        for _ in 0..3 {
            route.admit(Duration::from_secs(10)).await.unwrap();
        }
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_queued_behind_a_hanging_resolve_each_wait_the_timeout_once() {
        let resolve: Resolve = Box::new(|| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err("never".into())
            })
        });
        let route = Arc::new(Route::lazy("feature/x", resolve));
        let started = Instant::now();
        let waits: Vec<_> = (0..5)
            .map(|_| {
                let route = route.clone();
                tokio::spawn(async move { route.prepared(Duration::from_millis(200)).await })
            })
            .collect();
        for wait in waits {
            let error = error_chain(&wait.await.unwrap().err().expect("not resolved"));
            assert!(error.contains("was not found within 200ms"), "{error}");
        }
        // Five in a queue, each bounded on its own, would take a second.
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_gate_with_no_answer_within_the_connect_timeout_refuses() {
        let (route, _) = counted(GATE_FOR, Duration::from_secs(3600));
        let refused = route.admit(Duration::from_millis(50)).await.unwrap_err();
        assert!(refused.contains("no answer within 50ms"), "{refused}");
    }
}
