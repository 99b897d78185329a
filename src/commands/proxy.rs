//! `proxy`, and the proxy `exec --proxy` runs for its command: find what to serve (one branch's
//! environment, or every live one), resolve where its database is through the provider, bind,
//! print the listening line, and serve until a signal (or the command) ends it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::inspect::database_of;
use super::{DEFAULT_WAIT, open_provider, print_stdout};
use crate::cli::{Cli, ProxyArgs};
use crate::model::{ClusterId, ObservedEnv, tags};
use crate::provider::{AnyProvider, Provider, boxed, percent_encode};
use crate::proxy::{Gate, ListenError, Options, Proxy, Route, Routing, Stop};
use crate::report::{Exit, Reporter, UserError, error_chain};
use crate::settings::Settings;

/// One environment the proxy serves, for the listening line.
struct Served {
    branch: String,
    cluster_id: String,
    database: String,
    user: String,
}

/// A URL for clients of the proxy: no password, no TLS (loopback).
fn client_url(address: SocketAddr, user: Option<&str>, database: &str) -> String {
    let host = match address.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let user = user
        .map(|u| format!("{}@", percent_encode(u)))
        .unwrap_or_default();
    format!(
        "postgres://{user}{host}:{}/{}?sslmode=disable",
        address.port(),
        percent_encode(database)
    )
}

/// The route of one branch's live environment, resolved now (so a missing environment or an
/// unusable CA bundle fails before anything listens).
async fn branch_route(
    provider: &Arc<AnyProvider>,
    settings: &Settings,
    observed: &[ObservedEnv],
    branch: &str,
) -> anyhow::Result<(Route, Served)> {
    let super::inspect::ToConnect { env, mask_digest } =
        super::inspect::env_to_connect(settings, observed, branch)?;
    let upstream = provider
        .upstream(&env.cluster_id, &database_of(env))
        .await?;
    let served = Served {
        branch: branch.to_owned(),
        cluster_id: env.cluster_id.to_string(),
        database: upstream.database.clone(),
        user: upstream.user.clone(),
    };
    let mut route = Route::ready(branch, upstream).map_err(|e| {
        anyhow::Error::new(e).context(UserError::with_hint(
            format!("cannot serve `{branch}`"),
            "check PGSSLROOTCERT (a readable file of PEM certificates)",
        ))
    })?;
    // Any environment: one made empty may be replaced by a copy while the proxy runs.
    let copy = env.tag(tags::SOURCE).is_some();
    route = route.gated(
        masking_gate(provider.clone(), env.cluster_id.clone(), copy, mask_digest),
        gate_stands_for(provider),
    );
    Ok((route, served))
}

/// How long the gate's yes stands: on one PostgreSQL server a reset drops and copies a small
/// database again within milliseconds, so every connection asks there (one query on the
/// admin's connection); on AWS making a cluster again takes minutes ([`crate::proxy::GATE_FOR`]).
fn gate_stands_for(provider: &AnyProvider) -> std::time::Duration {
    if provider.makes_again_quickly() {
        std::time::Duration::ZERO
    } else {
        crate::proxy::GATE_FOR
    }
}

/// Asks the provider, before a new upstream connection, whether the environment `id` is a copy
/// whose masking has not committed (a reset copies it again under the same name while the proxy
/// runs): its data is then its source's, unmasked, and no connection is opened; nor while it
/// does not exist, nor while it is a copy masked with other rules or files than `mask_digest`
/// (its spec's when the proxy started, where it names one: [`super::mask_gate`]). Where the
/// provider cannot be asked, a data branch (`copy`) is refused, any other environment served.
fn masking_gate(
    provider: Arc<AnyProvider>,
    id: ClusterId,
    copy: bool,
    mask_digest: Option<String>,
) -> Gate {
    Box::new(move || {
        let provider = provider.clone();
        let id = id.clone();
        let mask_digest = mask_digest.clone();
        Box::pin(async move {
            match provider.source_status(&id).await {
                Ok(Some(status)) if status.masking_pending => Err(
                    "this copy's masking has not committed (it is being copied again, or its \
                     masking failed): its data is its source's, unmasked; `envctl apply` masks \
                     it, then connect again"
                        .to_owned(),
                ),
                Ok(Some(status)) => {
                    match super::mask_gate::gate_refusal(
                        mask_digest.as_deref(),
                        status.masked_with.as_deref(),
                    ) {
                        Some(why) => Err(why),
                        None => Ok(()),
                    }
                }
                Err(e) if copy => Err(format!(
                    "cannot tell whether this copy is masked, so it is not served: {}",
                    error_chain(&e)
                )),
                // Gone, or being made again (a reset drops it, then copies): what the next
                // connection would open is not known yet.
                Ok(None) => Err(
                    "its database does not exist now (it is being made again, or was deleted); \
                     connect again once `envctl apply` is done"
                        .to_owned(),
                ),
                _ => Ok(()),
            }
        })
    })
}

/// Every live environment with a branch, each resolved when a client first asks for it (on
/// AWS, one describe then). Keys: the branch and the cluster id. As `inspect::env_to_connect`
/// refuses them, these are not served, and said with why: a copy whose masking has not
/// committed, or committed with other rules or files than its branch's spec now, an environment
/// envctl does not own (outside the prefix, …), and a branch with several live environments
/// (neither is chosen).
fn all_routes(
    provider: Arc<AnyProvider>,
    settings: &Settings,
    observed: &[ObservedEnv],
) -> (Routing, Vec<Served>, Vec<String>) {
    let mut routes = BTreeMap::new();
    let mut served = Vec::new();
    let mut left_out = Vec::new();
    let mut per_branch: BTreeMap<String, usize> = BTreeMap::new();
    for branch in observed.iter().filter_map(ObservedEnv::branch) {
        *per_branch.entry(branch).or_default() += 1;
    }
    // Each copy's spec, read in one pass.
    let copies: Vec<String> = observed
        .iter()
        .filter(|env| env.is_copy())
        .filter_map(ObservedEnv::branch)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let specs = super::mask_gate::spec_masking(settings, &copies);
    for env in observed {
        let Some(branch) = env.branch() else { continue };
        let spec = specs.get(&branch).filter(|_| env.is_copy());
        let why = if per_branch.get(&branch).is_some_and(|n| *n > 1) {
            Some(format!(
                "the branch has {} live environments, and neither is chosen",
                per_branch[&branch]
            ))
        } else if let Some(refused) = &env.refused {
            Some(format!(
                "`{}` is not envctl's to hand out: {refused}",
                env.cluster_id
            ))
        } else if env.masking_pending() {
            Some(format!(
                "its environment is a copy of another's data whose masking has not committed (`envctl apply --branch {branch}` masks it)"
            ))
        } else {
            super::mask_gate::refusal(env.masked_with(), spec).map(|r| r.left_out(&branch))
        };
        if let Some(why) = why {
            left_out.push(format!("not serving `{branch}`: {why}"));
            continue;
        }
        let mask_digest = spec.and_then(|s| s.digest()).map(str::to_owned);
        let database = database_of(env);
        let resolve = {
            let provider = provider.clone();
            let id = env.cluster_id.clone();
            let database = database.clone();
            move || {
                let provider = provider.clone();
                let id = id.clone();
                let database = database.clone();
                Box::pin(async move { provider.upstream(&id, &database).await.map_err(boxed) })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
            }
        };
        let route = Route::lazy(&branch, Box::new(resolve)).gated(
            masking_gate(
                provider.clone(),
                env.cluster_id.clone(),
                env.tag(tags::SOURCE).is_some(),
                mask_digest,
            ),
            gate_stands_for(&provider),
        );
        let route = Arc::new(route);
        routes.insert(branch.clone(), route.clone());
        routes.insert(env.cluster_id.to_string(), route);
        served.push(Served {
            cluster_id: env.cluster_id.to_string(),
            database: branch.clone(),
            user: database.user,
            branch,
        });
    }
    served.sort_by(|a, b| a.branch.cmp(&b.branch));
    left_out.sort();
    left_out.dedup();
    (Routing::ByDatabase(routes), served, left_out)
}

/// The proxy's options from the command line.
fn options(args: &ProxyArgs, reporter: &Reporter) -> Options {
    Options {
        max_connections: args.max_connections as usize,
        drain: args.drain,
        idle_timeout: args.idle_timeout,
        connect_timeout: args.connect_timeout,
        reporter: reporter.clone(),
    }
}

/// The proxy's runtime: one thread. A relay's work per message is a read and a write; with a
/// second worker thread, a socket woken on one thread has the other woken to steal the task,
/// which costs more than the relay's own work (BENCHMARKS.md, item 10).
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Binds, or says what to do when the port is taken.
async fn bind(address: SocketAddr, routing: Routing, options: Options) -> anyhow::Result<Proxy> {
    Proxy::bind(address, routing, options).await.map_err(|e| {
        let hint = match &e {
            ListenError::InUse(_) => {
                "another program listens there (another `envctl proxy`, or a PostgreSQL server): choose another `--port`, or `--port 0` for a free one"
            }
            ListenError::Failed(..) => {
                "check that the address is one of this machine's, and that the port is above 1023 unless envctl runs as root"
            }
        };
        anyhow::Error::new(e).context(UserError::with_hint("cannot start the proxy", hint))
    })
}

pub fn proxy(cli: &Cli, args: &ProxyArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let runtime = runtime()?;
    let exit = runtime.block_on(serve(cli, args, reporter));
    runtime.shutdown_background();
    exit
}

async fn serve(cli: &Cli, args: &ProxyArgs, reporter: &Reporter) -> anyhow::Result<Exit> {
    let settings = Settings::resolve(cli)?;
    let provider = Arc::new(open_provider(cli, &settings, DEFAULT_WAIT, reporter).await?);
    let observed = super::observe(&provider, &settings).await?;
    let (routing, served) = if args.all {
        let (routing, served, left_out) = all_routes(provider.clone(), &settings, &observed);
        for why in left_out {
            reporter.warn(&why);
        }
        (routing, served)
    } else {
        let branch = settings.branch_or_current(args.branch.as_deref())?;
        let (route, served) = branch_route(&provider, &settings, &observed, &branch).await?;
        (Routing::One(Arc::new(route)), vec![served])
    };
    if !args.address.is_loopback() {
        reporter.warn(&format!(
            "listening on `{}`, not loopback: anyone who reaches it gets the database{} as its user, with no password",
            args.address,
            if args.all { "s" } else { "" }
        ));
    }
    // Signals are handled from before the line is printed: a script may signal once it reads it.
    let (stop, signalled) = stop_on_signals()?;
    let proxy = bind(
        SocketAddr::new(args.address, args.port),
        routing,
        options(args, reporter),
    )
    .await?;
    let address = proxy.local_addr()?;
    print_stdout(&listening_line(address, &served, args.all, args.json))?;
    if args.all {
        reporter.note(&format!(
            "serving {} environment{} on {address} with no password: connect with the branch as the database name; Ctrl-C stops",
            served.len(),
            super::plural(served.len())
        ));
    } else if let Some(one) = served.first() {
        reporter.note(&format!(
            "serving `{}` (`{}`) on {address} as `{}` with no password; Ctrl-C stops",
            one.branch, one.cluster_id, one.user
        ));
    }
    let result = proxy.serve(stop).await;
    reporter.detail(&format!(
        "accepted {} connection{}",
        result.connections,
        super::plural(result.connections as usize)
    ));
    if result.closed_at_stop > 0 {
        reporter.note(&format!(
            "closed {} connection{} still open",
            result.closed_at_stop,
            super::plural(result.closed_at_stop)
        ));
    }
    Ok(match *signalled.borrow() {
        Some(code) => Exit::Interrupted(code),
        None => Exit::Success,
    })
}

/// The line scripts read: `PORT URL`, or JSON.
fn listening_line(address: SocketAddr, served: &[Served], all: bool, json: bool) -> String {
    let url = match (all, served.first()) {
        (false, Some(one)) => client_url(address, Some(&one.user), &one.database),
        _ => client_url(address, None, ""),
    };
    if !json {
        return format!("{} {url}\n", address.port());
    }
    let environments: Vec<serde_json::Value> = served
        .iter()
        .map(|s| {
            json!({
                "branch": s.branch,
                "cluster_id": s.cluster_id,
                "database": s.database,
                "user": s.user,
                "url": client_url(address, Some(&s.user), &s.database),
            })
        })
        .collect();
    let value = json!({
        "address": address.ip().to_string(),
        "port": address.port(),
        "url": url,
        "environments": environments,
    });
    format!("{value}\n")
}

/// SIGINT or SIGTERM drains; a second one stops at once. The second value holds the exit code
/// of the first signal.
fn stop_on_signals() -> anyhow::Result<(watch::Receiver<Stop>, watch::Receiver<Option<i32>>)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (stop_tx, stop_rx) = watch::channel(Stop::Running);
    let (code_tx, code_rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let code = tokio::select! {
                _ = interrupt.recv() => 130,
                _ = terminate.recv() => 143,
            };
            let first = code_tx.borrow().is_none();
            if first {
                let _ = code_tx.send(Some(code));
                let _ = stop_tx.send(Stop::Drain);
            } else {
                let _ = stop_tx.send(Stop::Now);
            }
        }
    });
    Ok((stop_rx, code_rx))
}

/// `exec --proxy`: a proxy for one branch on a free loopback port, for as long as `run` (the
/// child) runs; the connection `run` gets points at it, with no password.
pub(super) async fn with_proxy<F, Fut>(
    cli: &Cli,
    branch: Option<&str>,
    reporter: &Reporter,
    run: F,
) -> anyhow::Result<Exit>
where
    F: FnOnce(crate::provider::Connection) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Exit>>,
{
    let settings = Settings::resolve(cli)?;
    let branch = settings.branch_or_current(branch)?;
    let provider = Arc::new(open_provider(cli, &settings, DEFAULT_WAIT, reporter).await?);
    let observed = super::observe(&provider, &settings).await?;
    let (route, served) = branch_route(&provider, &settings, &observed, &branch).await?;
    let options = Options {
        max_connections: 100,
        drain: Duration::ZERO,
        idle_timeout: None,
        connect_timeout: Duration::from_secs(60),
        reporter: reporter.clone(),
    };
    let loopback = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0);
    let proxy = bind(loopback, Routing::One(Arc::new(route)), options).await?;
    let address = proxy.local_addr()?;
    reporter.detail(&format!(
        "proxy for `{branch}` on {address} while the command runs"
    ));
    let (stop, stopped) = watch::channel(Stop::Running);
    let serving = tokio::spawn(proxy.serve(stopped));
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(address.port())
        .username(&served.user)
        .database(&served.database)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let connection = crate::provider::Connection {
        host: "127.0.0.1".into(),
        port: address.port(),
        database: served.database,
        user: served.user,
        password: None,
        ssl_mode: Some("disable".into()),
        ssl_root_cert: None,
        options,
    };
    let exit = run(connection).await;
    let _ = stop.send(Stop::Now);
    let _ = serving.await;
    exit
}
