//! The HTTP front end of a node: one listener per executor on the same port
//! (`SO_REUSEPORT`; the kernel spreads connections), HTTP/2 with prior
//! knowledge and HTTP/1.1 told apart by the first bytes of a connection.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/search` | one vector |
//! | POST | `/v1/search/batch` | many vectors, one set of parameters |
//! | GET | `/v1/documents/{id}` | one document by its user id |
//! | POST | `/v1/documents/get` | many documents by user id |
//! | POST | `/v1/text/stats` | peer-to-peer: BM25 statistics of a text in local shards |
//! | GET | `/v1/shards` | the cluster's shards, who serves them |
//! | GET | `/healthz` | liveness, this node's shards, peers up or down |
//! | GET | `/metrics` | Prometheus text |
//!
//! and, for peers, the replication endpoints (see [`crate::replication`]).
//! [`ROUTES`] lists them all; the dispatcher matches requests against that
//! table alone, and a test checks it against `server/openapi.yaml`, the
//! full reference.
//!
//! What a connection may take ([`crate::admission`], `[connections]`): a
//! node holds at most `max_connections` (beyond: a 503 and close, at once);
//! a connection must send its first bytes and each request's headers within
//! `header_timeout_ms` (HTTP/1.1 through hyper; HTTP/2: before its first
//! request, then `idle_timeout_ms` without a request in flight closes it
//! with a GOAWAY), a body within `body_timeout_ms` (else a 408), and answer
//! HTTP/2 pings. Searches then pass their executor's [`Gate`]
//! (`[admission]`), or get a 503 with `Retry-After`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::Either;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use shardann_engine::ElemType;

use shardann_engine::docs::UserId;

use crate::admission::{Activity, Busy, ConnectionSlot, Gate, Overload};
use crate::api::{
    ApiError, BatchRequest, BatchResponse, DocumentsRequest, SearchRequest, TextStatsRequest,
    TextStatsResponse, WireElem,
};
use crate::config::NodeConfig;
use crate::error::{Result, ServerError, StartError};
use crate::http::{body_reply, error_reply, full, json_reply, parse_json, read_body, Body, Reply};
use crate::metrics::{Closed, Endpoint};
use crate::node::{Executor, Node};
use crate::replication;
use crate::rt::net::{TcpListener, TcpStream};
use crate::rt::{until, AsyncIoTimer, Backend, Io, LocalExec, Pool, PoolSpec, Queue};
use crate::writes;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Vectors of one batch searched at once on an executor (at most the
/// executor's `admission.max_running`).
const BATCH_CONCURRENCY: usize = 32;
/// The body of the answer to a connection over
/// `connections.max_connections`, before it is closed.
const REFUSAL: &str = r#"{"error":"too many connections (connections.max_connections)","limit":"connections.max_connections"}"#;
/// How long a refused connection is given to take [`REFUSAL`].
const REFUSAL_TIMEOUT: Duration = Duration::from_millis(200);

/// CPU shares of an executor's search task queue, against glommio's
/// default queue (1,000 shares), where connections are read and requests
/// parsed, refused and answered. When both have work (requests pour in),
/// admitted searches get 9/10 of the core instead of being a few tasks
/// among thousands of requests being read and refused. (glommio only: the
/// epoll runtime has one FIFO queue per executor.)
const SEARCH_SHARES: usize = 9000;

/// One executor's front end: its search state, its admission gate, and the
/// task queue that admitted searches run in.
struct Front<T: WireElem> {
    exec: Executor<T>,
    gate: Gate,
    searches: Queue,
}

/// A node that is serving.
pub struct RunningNode {
    /// The address it listens on (the real port when the config said 0).
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    /// The runtime its executors run on.
    pub backend: Backend,
    handles: Pool<Result<()>>,
}

impl RunningNode {
    /// Blocks while the node serves; returns the first executor's error.
    pub fn wait(self) -> Result<()> {
        for (executor, joined) in self.handles.join_all().into_iter().enumerate() {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(ServerError::Executor {
                        executor,
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }
}

/// Opens the node's shards and starts its executors; returns once every
/// executor listens.
pub fn start(config: NodeConfig) -> Result<RunningNode> {
    let node_id = config.node_id.clone();
    let start_err = |source: StartError| ServerError::Start {
        node: node_id.clone(),
        source,
    };
    let addr = config
        .listen_addr()
        .map_err(|e| start_err(StartError::Config(e)))?;
    let guard = claim_port(addr).map_err(start_err)?;
    // Port 0: every executor must bind the same port, the one just picked.
    let addr = match &guard {
        Some(g) => g
            .local_addr()
            .map_err(|source| start_err(StartError::Listen { addr, source }))?,
        None => addr,
    };
    let executors = config.executors.unwrap_or_else(online_cpus).max(1);
    // Pinned one per CPU only when the node has one per CPU, i.e. owns the
    // machine. A node with fewer executors shares the machine (other nodes,
    // a benchmark client): pinning would stack every such process on the
    // first CPUs, so the kernel places them instead.
    let pinned = executors == online_cpus();
    let backend = choose_backend(&config, executors, pinned);
    let coordinated = config.etcd.is_some();
    if coordinated {
        crate::coord::prepare(&config).map_err(|e| start_err(e.into()))?;
    }
    let pulled = pull_missing_shards(&config);
    let node = Arc::new(Node::open(config)?);
    node.metrics.add(&node.metrics.pulls, pulled.0);
    node.metrics.add(&node.metrics.pull_failures, pulled.1);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let gen_node = Arc::clone(&node);
    let elem = node.manifest.elem;
    // Released only now, so the port stays claimed while the shards open.
    drop(guard);
    let spec = PoolSpec {
        backend,
        executors,
        name: "shardann-node",
        pinned,
    };
    let handles = crate::rt::start_pool(spec, move || async move {
        match elem {
            ElemType::U8 => executor_main::<u8>(gen_node, addr, ready_tx).await,
            ElemType::I8 => executor_main::<i8>(gen_node, addr, ready_tx).await,
            ElemType::F32 => executor_main::<f32>(gen_node, addr, ready_tx).await,
        }
    })
    .map_err(|source| ServerError::Runtime { executors, source })?;
    for _ in 0..executors {
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(start_err(StartError::Executor(Box::new(e)))),
            Err(_) => return Err(start_err(StartError::ExecutorTimeout)),
        }
    }
    if coordinated {
        // Registered, and the peers known, before the node says it is up.
        crate::coord::start(Arc::clone(&node), addr).map_err(|e| start_err(e.into()))?;
    }
    // A coordinated node follows even with no shard yet: one may be placed.
    if coordinated || (node.config.follow_ms > 0 && !node.local_shards().is_empty()) {
        let follower = Arc::clone(&node);
        let spec = PoolSpec {
            backend,
            executors: 1,
            name: "shardann-follow",
            pinned: false,
        };
        crate::rt::start_pool(spec, move || replication::follow(follower)).map_err(|source| {
            ServerError::Runtime {
                executors: 1,
                source,
            }
        })?;
    }
    Ok(RunningNode {
        addr,
        node,
        backend,
        handles,
    })
}

/// Checks that nobody listens on `addr` and holds it: a plain listener
/// (no `SO_REUSEPORT`) that [`start`] drops just before its executors bind.
///
/// The executors share the port through `SO_REUSEPORT`, which would also let
/// a second process of the same user (another node started on the same
/// address by mistake) join the group and silently take a share of the
/// connections. A bind without `SO_REUSEPORT` fails while any socket listens
/// there, reuse-port or not, so a second node stops here. (Rust's listener
/// sets `SO_REUSEADDR`, so connections of an earlier run in `TIME_WAIT` do
/// not count.) What is left is a window of one executor start between the
/// drop and the executors' binds, in which two nodes starting at the same
/// instant could both pass.
///
/// A plain bind also fails while connections of an earlier node on this
/// port linger (FIN_WAIT / TIME_WAIT sockets that glommio's listeners made
/// without `SO_REUSEADDR`), so a refused bind is followed by a connect:
/// only a live listener answers it; without one the port is free to take
/// (`None`: no guard to hold). And a node that has just exited can still
/// have a live listener: the kernel tears its io_uring instances down after
/// the process is gone, and the listening socket stays open until then (a
/// node restarted on its own address failed to start in CI). So a listener
/// that answers is waited for, up to [`PORT_WAIT`], before the address
/// counts as held by another node.
fn claim_port(addr: SocketAddr) -> std::result::Result<Option<std::net::TcpListener>, StartError> {
    let mut probe = addr;
    if probe.ip().is_unspecified() {
        probe.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let until = Instant::now() + PORT_WAIT;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return Ok(Some(l)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(500)).is_err()
                {
                    return Ok(None);
                }
                if Instant::now() >= until {
                    return Err(StartError::AddrInUse { addr });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => return Err(StartError::Listen { addr, source }),
        }
    }
}

/// How long a node waits for a listener on its address to go away before
/// refusing to start (see [`claim_port`]).
const PORT_WAIT: Duration = Duration::from_secs(3);

/// The machine's online CPUs (what glommio's pinned placement spreads
/// over), not this process's CPU quota.
fn online_cpus() -> usize {
    glommio::CpuSet::online().map_or(1, |s| s.len().max(1))
}

/// The runtime `config` asks for. An explicit one becomes the process's
/// default too (its pulls and clients run there). With `auto`, glommio is
/// tried with the node's own executors before it is relied on: the
/// process-wide probe starts only one (locked memory grows with their
/// number), so a node can still fall back here, with one line saying why.
fn choose_backend(config: &NodeConfig, executors: usize, pinned: bool) -> Backend {
    if config.runtime != crate::rt::RuntimeChoice::Auto {
        let backend = config.runtime.resolve();
        crate::rt::set_default(backend);
        return backend;
    }
    match crate::rt::auto() {
        Backend::Epoll => Backend::Epoll,
        Backend::Glommio => {
            let spec = PoolSpec {
                backend: Backend::Glommio,
                executors,
                name: "shardann-probe",
                pinned,
            };
            match crate::rt::probe_pool(spec) {
                Ok(()) => Backend::Glommio,
                Err(why) => {
                    eprintln!(
                        "note: node {}: {why}; running on the epoll runtime instead",
                        config.node_id
                    );
                    Backend::Epoll
                }
            }
        }
    }
}

/// Pulls, from a peer that serves it, every shard this node should serve
/// but lacks on disk (a node joining a cluster, or one whose disk was
/// replaced), with a few rounds of retries over the peers. Returns (pulls,
/// failed attempts). A shard still missing afterwards makes `Node::open`
/// fail with the missing directory named.
fn pull_missing_shards(config: &NodeConfig) -> (u64, u64) {
    let dir = &config.index_dir;
    let manifest = shardann_engine::cluster::read_manifest(dir).ok();
    let wanted: Vec<u32> = match (&config.shards, &manifest) {
        (Some(s), _) => s.clone(),
        (None, Some(m)) => (0..m.shards.len() as u32).collect(),
        (None, None) => return (0, 0),
    };
    let (mut pulls, mut failures) = (0, 0);
    for s in wanted {
        let present = manifest
            .as_ref()
            .is_some_and(|m| crate::node::on_disk(dir, m, s));
        if present || (manifest.is_none() && dir.join(shardann_engine::layout::INDEX_FILE).exists())
        {
            continue;
        }
        let sources: Vec<_> = config
            .peers
            .iter()
            .filter(|p| p.shards.contains(&s))
            .collect();
        if sources.is_empty() {
            continue; // with etcd, the follower pulls it once placed
        }
        let mut wait = Duration::from_millis(500);
        'rounds: for round in 0..3 {
            for peer in &sources {
                let Ok(addr) = crate::config::resolve(&peer.address) else {
                    continue;
                };
                match replication::pull_blocking(
                    addr,
                    config.cluster_token.clone(),
                    s,
                    dir,
                    &config.pull_limits(),
                ) {
                    Ok(r) => {
                        pulls += 1;
                        eprintln!(
                            "node {}: pulled shard {s} version {} from {} ({} bytes in {:.2}s, {} on the wire)",
                            config.node_id,
                            r.version,
                            peer.id,
                            r.raw_bytes(),
                            r.seconds,
                            r.wire_bytes()
                        );
                        break 'rounds;
                    }
                    Err(e) => {
                        failures += 1;
                        eprintln!(
                            "node {}: pulling shard {s} from {} (round {}): {e}",
                            config.node_id,
                            peer.id,
                            round + 1
                        );
                    }
                }
            }
            std::thread::sleep(wait);
            wait *= 2;
        }
    }
    (pulls, failures)
}

/// One executor: opens its shard files, listens, serves connections. A
/// failure to start is handed to [`start`] through `ready`, which reports
/// it; the executor then ends.
async fn executor_main<T: WireElem>(
    node: Arc<Node>,
    addr: SocketAddr,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    let exec = match Executor::<T>::open(node).await {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let config = &exec.node.config;
    let gate = Gate::new(
        &config.admission,
        exec.node.local_shards().len(),
        config.deadline_ms,
    );
    let max_connections = config.connections.max_connections();
    let searches = Queue::new("shardann-search", SEARCH_SHARES);
    let exec = Rc::new(Front {
        exec,
        gate,
        searches,
    });
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(ServerError::Start {
                node: exec.exec.node.config.node_id.clone(),
                source: StartError::Listen { addr, source: e },
            }));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    let node = Arc::clone(&exec.exec.node);
    loop {
        match listener.accept().await {
            Ok(stream) => match ConnectionSlot::take(&node, max_connections) {
                Some(slot) => {
                    crate::rt::spawn_local(serve_connection(Rc::clone(&exec), stream, slot))
                        .detach();
                }
                None => {
                    node.metrics.add(&node.metrics.connections_refused, 1);
                    crate::rt::spawn_local(refuse(stream)).detach();
                }
            },
            Err(e) => {
                // Out of file descriptors and the like: pause, keep serving.
                eprintln!("node {}: accept: {e}", node.config.node_id);
                crate::rt::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection over the node's cap: a 503 (HTTP/1.1, which an HTTP/2
/// client reports as a protocol error) if the client takes it at once,
/// then close. Bounded by [`REFUSAL_TIMEOUT`], so refusals cost nothing
/// that lasts.
async fn refuse(mut stream: TcpStream) {
    let answer = async {
        let refusal = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL}",
            REFUSAL.len()
        );
        stream.write_all(refusal.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown(std::net::Shutdown::Write).await?;
        // Read what the client sent, so the close is a FIN, not a reset
        // that could discard the answer before the client reads it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = until(Instant::now() + REFUSAL_TIMEOUT, answer).await;
}

/// Serves one connection: HTTP/2 if it opens with the HTTP/2 preface, else
/// HTTP/1.1. `_slot` counts it against the node's cap until it ends.
async fn serve_connection<T: WireElem>(
    front: Rc<Front<T>>,
    mut stream: TcpStream,
    _slot: ConnectionSlot,
) {
    let node = Arc::clone(&front.exec.node);
    let c = node.config.connections;
    let _ = stream.set_nodelay(true);
    // A client that takes no response bytes for this long is gone.
    let _ = stream.set_write_timeout(Some(c.body_timeout()));
    // The first bytes within the header bound, however they are spread.
    let first = async {
        let mut first = Vec::with_capacity(H2_PREFACE.len());
        let mut buf = [0u8; 24];
        while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
            let want = H2_PREFACE.len() - first.len();
            match stream.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => first.extend_from_slice(&buf[..n]),
            }
        }
        Some(first)
    };
    let first = match until(Instant::now() + c.header_timeout(), first).await {
        Some(Some(first)) => first,
        Some(None) => return,
        None => {
            node.metrics.closed(Closed::HeaderTimeout);
            return;
        }
    };
    let activity = Rc::new(Activity::default());
    // Writes without a write_token are taken from loopback clients only.
    let client = stream.peer_addr().ok();
    let service = {
        let activity = Rc::clone(&activity);
        hyper::service::service_fn(move |req| {
            let front = Rc::clone(&front);
            let busy = activity.begin();
            async move { Ok::<_, Infallible>(tracked(handle(&front, req, client).await, busy)) }
        })
    };
    let io = Io::with_prefix(stream, first.clone());
    // A connection that ends in an error (the client went away, a protocol
    // error) only concerns that client.
    if first != H2_PREFACE {
        let served = hyper::server::conn::http1::Builder::new()
            .timer(AsyncIoTimer)
            .header_read_timeout(c.header_timeout())
            .serve_connection(io, service)
            .await;
        if served.is_err_and(|e| e.is_timeout()) {
            node.metrics.closed(Closed::HeaderTimeout);
        }
        return;
    }
    let conn = hyper::server::conn::http2::Builder::new(LocalExec)
        .timer(AsyncIoTimer)
        .max_concurrent_streams(c.max_streams)
        .keep_alive_interval(c.keepalive())
        .keep_alive_timeout(c.keepalive_timeout())
        .serve_connection(io, service);
    futures::pin_mut!(conn);
    // The idle bound: checked when it could have passed; once passed, a
    // GOAWAY (requests already received still finish), and the connection
    // is dropped if it has not ended by the next check.
    let mut closing = false;
    loop {
        let idle_at = activity.idle_at(c.header_timeout(), c.idle_timeout());
        let check_at = idle_at.unwrap_or_else(|| Instant::now() + c.idle_timeout());
        let wait = std::pin::pin!(crate::rt::sleep(
            check_at.saturating_duration_since(Instant::now())
        ));
        if let Either::Left(_) = futures::future::select(conn.as_mut(), wait).await {
            return;
        }
        match activity.idle_at(c.header_timeout(), c.idle_timeout()) {
            Some(at) if Instant::now() >= at => {
                if closing {
                    return;
                }
                node.metrics.closed(if activity.requests() == 0 {
                    Closed::HeaderTimeout
                } else {
                    Closed::Idle
                });
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ => {}
        }
    }
}

/// `reply` with `busy` held until hyper is done with its body (sent, or
/// the stream reset): a response still streaming keeps its connection
/// from counting as idle.
fn tracked(reply: Reply, busy: Busy) -> Reply {
    reply.map(|body| -> Body { Box::pin(Tracked { body, _busy: busy }) })
}

/// A response body and the [`Busy`] guard of its request.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>>
    {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    Search,
    Batch,
    TextStats,
    Document,
    Documents,
    Upsert,
    DeleteOne,
    Delete,
    Merge,
    ShardWrite,
    Apply,
    Log,
    Shards,
    Health,
    Metrics,
    Cluster,
    Manifest,
    File,
}

impl Handler {
    fn endpoint(self) -> Endpoint {
        match self {
            Handler::Search | Handler::TextStats => Endpoint::Search,
            Handler::Batch => Endpoint::Batch,
            Handler::Document | Handler::Documents => Endpoint::Other,
            Handler::Upsert | Handler::DeleteOne | Handler::Delete | Handler::Merge => {
                Endpoint::Write
            }
            Handler::Shards => Endpoint::Shards,
            Handler::Health => Endpoint::Health,
            Handler::Metrics => Endpoint::Metrics,
            Handler::Cluster
            | Handler::Manifest
            | Handler::File
            | Handler::ShardWrite
            | Handler::Apply
            | Handler::Log => Endpoint::Replication,
        }
    }
}

/// One route: a method and a path in `server/openapi.yaml`'s notation, where
/// a `{name}` segment matches any one segment of a request's path.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: Handler,
}

const fn route(method: Method, path: &'static str, handler: Handler) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// Every route the node answers: the dispatcher (`handle`) goes through this table
/// alone, and a test checks it against `server/openapi.yaml` both ways.
pub const ROUTES: &[Route] = &[
    route(Method::POST, "/v1/search", Handler::Search),
    route(Method::POST, "/v1/search/batch", Handler::Batch),
    route(Method::POST, "/v1/text/stats", Handler::TextStats),
    route(Method::GET, "/v1/documents/{id}", Handler::Document),
    route(Method::POST, "/v1/documents/get", Handler::Documents),
    route(Method::POST, "/v1/documents", Handler::Upsert),
    route(Method::DELETE, "/v1/documents/{id}", Handler::DeleteOne),
    route(Method::POST, "/v1/documents/delete", Handler::Delete),
    route(Method::POST, "/v1/shards/{shard}/merge", Handler::Merge),
    route(
        Method::POST,
        "/v1/shards/{shard}/write",
        Handler::ShardWrite,
    ),
    route(Method::POST, "/v1/shards/{shard}/apply", Handler::Apply),
    route(Method::GET, "/v1/shards/{shard}/log", Handler::Log),
    route(Method::GET, "/v1/shards", Handler::Shards),
    route(Method::GET, "/healthz", Handler::Health),
    route(Method::GET, "/metrics", Handler::Metrics),
    route(Method::GET, "/v1/cluster", Handler::Cluster),
    route(
        Method::GET,
        "/v1/shards/{shard}/manifest",
        Handler::Manifest,
    ),
    route(
        Method::GET,
        "/v1/shards/{shard}/segments/{version}/files/{name}",
        Handler::File,
    ),
];

/// The paths a client may use (the replication endpoints are for peers),
/// for the message of a 404.
pub fn public_paths() -> String {
    let public: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.handler.endpoint() != Endpoint::Replication)
        .map(|r| r.path)
        .collect();
    public.join(", ")
}

/// The `{name}` segments of `path` if it matches `template`.
fn match_path<'a>(template: &str, path: &'a str) -> Option<Vec<&'a str>> {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    let mut params = Vec::new();
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') => params.push(ps),
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// The route for a request and its path parameters: 404 when no route has
/// the path, 405 when none with the path has the method.
fn find_route<'a>(method: &Method, path: &'a str) -> Result<(&'static Route, Vec<&'a str>)> {
    let mut path_known = false;
    for r in ROUTES {
        if let Some(params) = match_path(r.path, path) {
            if r.method == *method {
                return Ok((r, params));
            }
            path_known = true;
        }
    }
    Err(if path_known {
        ApiError::MethodNotAllowed {
            method: method.clone(),
            path: path.to_string(),
        }
    } else {
        ApiError::NoEndpoint {
            path: path.to_string(),
        }
    }
    .into())
}

/// Routes one request and counts it.
async fn handle<T: WireElem>(
    front: &Rc<Front<T>>,
    req: Request<Incoming>,
    client: Option<SocketAddr>,
) -> Reply {
    let exec = &front.exec;
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let (endpoint, reply) = match find_route(req.method(), &path) {
        Err(e) => (Endpoint::Other, Err(e)),
        Ok((route, params)) => {
            let reply = match route.handler {
                Handler::Search => search(front, req, start).await,
                Handler::Batch => batch(front, req, start).await,
                Handler::TextStats => text_stats(exec, req).await,
                Handler::Document => document(exec, params.first().copied().unwrap_or("")).await,
                Handler::Documents => documents(exec, req).await,
                Handler::Upsert | Handler::DeleteOne | Handler::Delete | Handler::Merge => {
                    write(exec, req, route.handler, &params, client).await
                }
                Handler::Shards => Ok(shards(exec)),
                Handler::Health => Ok(health(exec)),
                Handler::Metrics => Ok(metrics(exec)),
                Handler::Cluster | Handler::Manifest | Handler::File => {
                    replicate(exec, &req, route.handler, &params).await
                }
                Handler::ShardWrite | Handler::Apply | Handler::Log => {
                    peer_write(exec, req, route.handler, &params, client).await
                }
            };
            (route.handler.endpoint(), reply)
        }
    };
    let reply = reply.unwrap_or_else(|e| {
        let reply = error_reply(&e);
        // Refusals under overload are counted, not logged: a flood of
        // them would flood the log too.
        if reply.status().is_server_error() && !matches!(e, ServerError::Overloaded(_)) {
            eprintln!("node {}: {path}: {e}", exec.node.config.node_id);
        }
        reply
    });
    let m = &exec.node.metrics;
    m.request(endpoint, reply.status().as_u16());
    if matches!(endpoint, Endpoint::Search | Endpoint::Batch) && reply.status().is_success() {
        m.latency(start.elapsed().as_micros() as u64);
    }
    reply
}

/// A replication endpoint (cluster.json, a segment manifest, a file), after
/// the cluster token is checked.
async fn replicate<T: WireElem>(
    exec: &Executor<T>,
    req: &Request<Incoming>,
    handler: Handler,
    params: &[&str],
) -> Result<Reply> {
    let node = &exec.node;
    replication::authorize(node, req.headers())?;
    match (handler, params) {
        (Handler::Manifest, [shard]) => {
            let shard = replication::parse_shard(shard)?;
            Ok(body_reply(
                full(replication::manifest_file(node, shard)?),
                "text/plain",
            ))
        }
        (Handler::File, [shard, version, name]) => {
            let f = replication::FileRequest::parse(shard, version, name, req.uri().query())?;
            let (body, _) =
                replication::file_body(node, f.shard, f.version, f.name, f.offset).await?;
            Ok(body_reply(body, replication::CHUNKS_CONTENT_TYPE))
        }
        _ => Ok(body_reply(
            full(replication::cluster_file(node)?),
            "application/json",
        )),
    }
}

/// The write routes between nodes (a shard's part of a write sent to its
/// primary, records sent to a replica, a replica catching up), after the
/// cluster token (or, without one, a loopback sender) is checked.
async fn peer_write<T: WireElem>(
    exec: &Executor<T>,
    req: Request<Incoming>,
    handler: Handler,
    params: &[&str],
    client: Option<SocketAddr>,
) -> Result<Reply> {
    crate::primary::authorize(&exec.node, req.headers(), client)?;
    let raw = params.first().copied().unwrap_or("");
    let shard: u32 = raw
        .parse()
        .ok()
        .filter(|&s| (s as usize) < exec.node.manifest.shards.len())
        .ok_or_else(|| ServerError::from(ApiError::ShardPath(raw.to_string())))?;
    match handler {
        Handler::ShardWrite => {
            let write: crate::primary::ShardWrite = read_json(exec, req).await?;
            let resp = crate::primary::primary_write(exec, shard, write).await?;
            Ok(json_reply(StatusCode::OK, &resp))
        }
        Handler::Apply => {
            let request: crate::primary::ApplyRequest = read_json(exec, req).await?;
            let resp = crate::primary::apply(exec, shard, request).await?;
            Ok(json_reply(StatusCode::OK, &resp))
        }
        _ => {
            let after = crate::primary::parse_after(req.uri().query())?;
            let resp = crate::primary::log(exec, shard, after).await?;
            Ok(json_reply(StatusCode::OK, &resp))
        }
    }
}

/// A request body as JSON, within the node's body size and time limits.
async fn read_json<T: WireElem, R: serde::de::DeserializeOwned>(
    exec: &Executor<T>,
    req: Request<Incoming>,
) -> Result<R> {
    let config = &exec.node.config;
    let timeout = config.connections.body_timeout();
    let body = read_body(req, config.max_body_bytes, timeout)
        .await
        .inspect_err(|e| {
            if matches!(e, ApiError::BodyTimeout { .. }) {
                exec.node.metrics.closed(Closed::BodyTimeout);
            }
        })?;
    Ok(parse_json(&body)?)
}

/// A search's refusal to a client (`peer`: false) goes out when the
/// executor's pace of refusals allows ([`Gate::pace`]); a peer's at once.
async fn paced<T: WireElem>(front: &Front<T>, peer: bool, out: Result<Reply>) -> Result<Reply> {
    if let (Err(ServerError::Overloaded(o)), false) = (&out, peer) {
        front
            .gate
            .pace(&front.exec.node.metrics, o.retry_after_s())
            .await;
    }
    out
}

/// `timeout_ms` less what has passed since `arrived` (at least 1 ms).
fn time_left(timeout_ms: u64, arrived: Instant) -> u64 {
    timeout_ms
        .saturating_sub(arrived.elapsed().as_millis() as u64)
        .max(1)
}

/// Runs `work` (admission, search, answer) as a task of the executor's
/// search queue ([`SEARCH_SHARES`]) and waits for it. If the request is
/// dropped meanwhile (the client went away), the task is cancelled and its
/// slots given back.
async fn in_search_queue<T: WireElem>(
    front: &Front<T>,
    work: impl std::future::Future<Output = Result<Reply>> + 'static,
) -> Result<Reply> {
    match front.searches.spawn(work) {
        Ok(task) => task.await,
        Err(source) => Err(ServerError::Runtime {
            executors: 1,
            source,
        }),
    }
}

/// `POST /v1/search`: read and checked here, then, in the search queue,
/// admitted by the executor's gate (or a 503) and searched with what is
/// left of its deadline, counted from `arrived`.
async fn search<T: WireElem>(
    front: &Rc<Front<T>>,
    req: Request<Incoming>,
    arrived: Instant,
) -> Result<Reply> {
    let exec = &front.exec;
    let request: SearchRequest = read_json(exec, req).await?;
    let peer = request.shards.is_some();
    // Refused before anything else is done for it, if it would be anyway.
    if let Err(e) = front.gate.precheck(&exec.node.metrics) {
        return paced(front, peer, Err(e.into())).await;
    }
    // A peer's request (`shards`) is never embedded here: the node that
    // was asked embeds, and sends peers the vector.
    let query = request.check::<T>(
        exec.node.manifest.dim,
        &exec.node.config.limits,
        exec.node.encoder.is_some() && !peer,
    )?;
    if let Some(shards) = &request.shards {
        let n = exec.node.manifest.shards.len();
        if let Some(&shard) = shards.iter().find(|&&s| s as usize >= n) {
            return Err(ApiError::UnknownShard { shard, shards: n }.into());
        }
    }
    let work = search_admitted(Rc::clone(front), query, request.shards, arrived);
    paced(front, peer, in_search_queue(front, work).await).await
}

/// The admitted part of `POST /v1/search`. A client's answer that lacks a
/// local shard because it timed out is a 503, not a shorter list.
async fn search_admitted<T: WireElem>(
    front: Rc<Front<T>>,
    mut query: crate::api::Query<T>,
    shards: Option<Vec<u32>>,
    arrived: Instant,
) -> Result<Reply> {
    let exec = &front.exec;
    let m = &exec.node.metrics;
    let timeout_ms = query.timeout_ms.unwrap_or(exec.node.config.deadline_ms);
    let deadline = arrived + Duration::from_millis(timeout_ms);
    let heavy = exec.node.config.admission.is_heavy(list_work(&query));
    let permit = front.gate.admit_as(m, 1, 1, deadline, heavy).await?;
    let embed_us = embed_queries(exec, std::slice::from_mut(&mut query)).await?;
    no_time_after_embedding(&front, embed_us, deadline, timeout_ms)?;
    query.timeout_ms = Some(time_left(timeout_ms, arrived));
    let mut resp = exec.search(&query, shards.as_deref()).await?;
    resp.stats.embed_us = embed_us;
    drop(permit);
    m.add(&m.queries, 1);
    if resp.partial {
        m.add(&m.partial_responses, 1);
    }
    // A client never gets a list that lacks a local shard for want of
    // time: that is overload, a 503. A peer's request (`shards`) gets the
    // answer as it is: the asking node sees the timed-out shards and tries
    // another replica.
    if shards.is_none() && !resp.timed_out_shards.is_empty() {
        return Err(Overload::TimedOut {
            shards: resp.timed_out_shards,
            timeout_ms,
            retry_after_s: front.gate.retry_after(),
        }
        .into());
    }
    resp.took_us = arrived.elapsed().as_micros() as u64;
    Ok(json_reply(StatusCode::OK, &resp))
}

/// Queries in a node's batch embedded in one pass of the model at most:
/// the padding a pass pays is up to its longest text, so a long batch is
/// cut, in order of length, into passes of this many.
const EMBED_BATCH: usize = 16;

/// Embeds, with the node's model, the text of every query that asks for it
/// (`Query::embed`) into its vector, all in one call on a blocking thread
/// (`rt::spawn_blocking`), one call at a time per executor: a forward pass is tens of milliseconds of CPU, which on
/// the executor itself would stall every search it runs. Returns the wall
/// time in microseconds (0 if no query asked).
async fn embed_queries<T: WireElem>(
    exec: &Executor<T>,
    queries: &mut [crate::api::Query<T>],
) -> Result<u64> {
    let texts: Vec<String> = queries.iter().filter_map(|q| q.embed.clone()).collect();
    if texts.is_empty() {
        return Ok(0);
    }
    let start = Instant::now();
    let vectors = embed_texts(exec, texts).await?;
    for (q, v) in queries
        .iter_mut()
        .filter(|q| q.embed.is_some())
        .zip(vectors)
    {
        // The node was started only with an f32 index and a model of its
        // width (`node::open_encoder`): every value converts.
        let v = v
            .iter()
            .map(|&x| T::from_wire(f64::from(x)))
            .collect::<std::result::Result<Vec<T>, _>>()
            .map_err(|why| ServerError::InvalidParameter(format!("an embedded vector {why}")))?;
        q.vector = Some(v);
        q.embed = None;
    }
    Ok(start.elapsed().as_micros() as u64)
}

/// After embedding: a 503 naming the embedding if it used up the deadline,
/// rather than a search given no time whose shards would be blamed.
fn no_time_after_embedding<T: WireElem>(
    front: &Front<T>,
    embed_us: u64,
    deadline: Instant,
    timeout_ms: u64,
) -> Result<()> {
    if embed_us > 0 && Instant::now() >= deadline {
        return Err(Overload::EmbedTimedOut {
            embed_ms: embed_us / 1000,
            timeout_ms,
            retry_after_s: front.gate.retry_after(),
        }
        .into());
    }
    Ok(())
}

/// The list size that makes a query heavy (`admission.heavy_list`): its
/// vector list, or each hybrid list's candidates if larger. A batch is as
/// heavy as its heaviest query; its size is bounded by its slots already.
fn list_work<T>(q: &crate::api::Query<T>) -> usize {
    q.params
        .list
        .max(q.text.as_ref().map_or(0, |t| t.candidates))
}

/// `POST /v1/text/stats` (peer-to-peer): BM25 statistics of local shards.
async fn text_stats<T: WireElem>(exec: &Executor<T>, req: Request<Incoming>) -> Result<Reply> {
    let request: TextStatsRequest = read_json(exec, req).await?;
    let n = exec.node.manifest.shards.len();
    if let Some(&shard) = request.shards.iter().find(|&&s| s as usize >= n) {
        return Err(ApiError::UnknownShard { shard, shards: n }.into());
    }
    let (local, missing): (Vec<u32>, Vec<u32>) = request
        .shards
        .iter()
        .partition(|&&s| exec.node.local_shard(s).is_some());
    let stats = exec.local_text_stats(&request.text, &local)?;
    Ok(json_reply(
        StatusCode::OK,
        &TextStatsResponse {
            stats,
            missing_shards: missing,
        },
    ))
}

/// `POST /v1/search/batch`: admitted as a whole on as many slots as it
/// runs queries at once (in the search queue, as a search); each query's
/// deadline counts from its start, less the time the batch waited for its
/// slots.
async fn batch<T: WireElem>(
    front: &Rc<Front<T>>,
    req: Request<Incoming>,
    arrived: Instant,
) -> Result<Reply> {
    let exec = &front.exec;
    let request: BatchRequest = read_json(exec, req).await?;
    if let Err(e) = front.gate.precheck(&exec.node.metrics) {
        return paced(front, false, Err(e.into())).await;
    }
    let queries = request.check::<T>(
        exec.node.manifest.dim,
        &exec.node.config.limits,
        exec.node.encoder.is_some(),
    )?;
    let work = batch_admitted(Rc::clone(front), queries, request.timeout_ms, arrived);
    paced(front, false, in_search_queue(front, work).await).await
}

/// The admitted part of `POST /v1/search/batch`.
async fn batch_admitted<T: WireElem>(
    front: Rc<Front<T>>,
    mut queries: Vec<crate::api::Query<T>>,
    timeout_ms: Option<u64>,
    arrived: Instant,
) -> Result<Reply> {
    let exec = &front.exec;
    let m = &exec.node.metrics;
    let timeout_ms = timeout_ms.unwrap_or(exec.node.config.deadline_ms);
    let deadline = arrived + Duration::from_millis(timeout_ms);
    let weight = BATCH_CONCURRENCY.min(queries.len());
    let heavy =
        (exec.node.config.admission).is_heavy(queries.iter().map(list_work).max().unwrap_or(0));
    let permit = front
        .gate
        .admit_as(m, weight, queries.len(), deadline, heavy)
        .await?;
    let embed_us = embed_queries(exec, &mut queries).await?;
    no_time_after_embedding(&front, embed_us, deadline, timeout_ms)?;
    let left = time_left(timeout_ms, arrived);
    for q in &mut queries {
        q.timeout_ms = Some(left);
    }
    let results: Vec<_> = futures::stream::iter(queries.iter())
        .map(|q| exec.search(q, None))
        .buffered(permit.weight())
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    drop(permit);
    m.add(&m.queries, results.len() as u64);
    m.add(
        &m.partial_responses,
        results.iter().filter(|r| r.partial).count() as u64,
    );
    // Each query's share of the batch's embedding, so that per-query
    // times add up to the batch's.
    let mut results = results;
    let share = embed_us / results.len().max(1) as u64;
    for r in &mut results {
        r.stats.embed_us = share;
    }
    let mut timed_out: Vec<u32> = results
        .iter()
        .flat_map(|r| r.timed_out_shards.iter().copied())
        .collect();
    if !timed_out.is_empty() {
        timed_out.sort_unstable();
        timed_out.dedup();
        return Err(Overload::TimedOut {
            shards: timed_out,
            timeout_ms,
            retry_after_s: front.gate.retry_after(),
        }
        .into());
    }
    Ok(json_reply(
        StatusCode::OK,
        &BatchResponse {
            results,
            took_us: arrived.elapsed().as_micros() as u64,
        },
    ))
}

/// `GET /v1/documents/{id}`: the id URL-decoded, tried as an unsigned
/// integer key when it reads as one, and as a string.
async fn document<T: WireElem>(exec: &Executor<T>, raw: &str) -> Result<Reply> {
    let text = percent_decode(raw);
    let mut ids = Vec::new();
    if let Ok(n) = text.parse::<u64>() {
        ids.push(UserId::Int(n));
    }
    ids.push(UserId::Str(text.clone()));
    let resp = exec.documents(&ids, None).await?;
    // The integer reading first, as it was asked first.
    let found = ids
        .iter()
        .find_map(|id| resp.documents.iter().find(|d| &d.id == id));
    match found {
        Some(doc) => Ok(json_reply(StatusCode::OK, doc)),
        None if !resp.missing_shards.is_empty() => Err(ApiError::NoDocument(format!(
            "{text:?} in the shards that answered; shards {:?} did not answer",
            resp.missing_shards
        ))
        .into()),
        None => Err(ApiError::NoDocument(format!("{text:?}")).into()),
    }
}

/// `texts` embedded with the node's model, one forward pass at a time per
/// executor, on its blocking thread; counted in the metrics. Shared by
/// text queries and written documents that come without a vector.
pub(crate) async fn embed_texts<T: WireElem>(
    exec: &Executor<T>,
    texts: Vec<String>,
) -> Result<Vec<Vec<f32>>> {
    let Some(encoder) = exec.node.encoder.clone() else {
        return Err(ApiError::NoModel.into());
    };
    let start = Instant::now();
    let n = texts.len() as u64;
    let _one_at_a_time = exec.embedding.lock().await;
    let vectors = crate::rt::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        // A panic would kill glommio's only blocking thread of this
        // executor and leave this request, and every later embedding, waiting.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            encoder.embed_batched(&refs, EMBED_BATCH)
        }))
        .unwrap_or_else(|_| {
            Err(shardann_engine::Error::embed(
                "<texts>",
                shardann_engine::EmbedError::Inference {
                    what: "running the model",
                    message: "it panicked".into(),
                },
            ))
        })
    })
    .await
    .map_err(|e| match e {
        shardann_engine::Error::Embed { source, .. }
            if matches!(*source, shardann_engine::EmbedError::EmptyText { .. }) =>
        {
            ServerError::from(ApiError::Unembeddable(source.to_string()))
        }
        e => e.into(),
    })?;
    let m = &exec.node.metrics;
    m.add(&m.embedded_texts, n);
    m.add(&m.embed_us, start.elapsed().as_micros() as u64);
    Ok(vectors)
}

/// `POST /v1/documents`, `DELETE /v1/documents/{id}` and
/// `POST /v1/documents/delete`, after the sender is authorized.
async fn write<T: WireElem>(
    exec: &Executor<T>,
    req: Request<Incoming>,
    handler: Handler,
    params: &[&str],
    client: Option<SocketAddr>,
) -> Result<Reply> {
    let node = &exec.node;
    writes::authorize(node.config.write_token.as_deref(), req.headers(), client)?;
    match (handler, params) {
        (Handler::Upsert, _) => {
            let request: writes::UpsertRequest = read_json(exec, req).await?;
            let resp = writes::upsert(exec, request).await?;
            Ok(json_reply(StatusCode::OK, &resp))
        }
        (Handler::DeleteOne, [raw]) => {
            let text = percent_decode(raw);
            // As GET reads it: an integer id if it parses as one and the
            // index holds integer ids, else the string.
            let id = match text.parse::<u64>() {
                Ok(n) if exec_int_ids(exec) => UserId::Int(n),
                _ => UserId::Str(text.clone()),
            };
            let resp = writes::delete_ids(exec, vec![id]).await?;
            if resp.deleted == 0 {
                return Err(ApiError::NoDocument(format!("{text:?}")).into());
            }
            Ok(json_reply(StatusCode::OK, &resp))
        }
        (Handler::Delete, _) => {
            let request: writes::DeleteRequest = read_json(exec, req).await?;
            let resp = match (request.ids, request.filter) {
                (Some(ids), None) => {
                    let ids = crate::api::parse_ids(&ids)?;
                    writes::delete_ids(exec, ids).await?
                }
                (None, Some(filter)) => writes::delete_matching(exec, &filter).await?,
                _ => return Err(ApiError::DeleteWhat.into()),
            };
            Ok(json_reply(StatusCode::OK, &resp))
        }
        (Handler::Merge, [raw]) => {
            let shard: u32 = raw
                .parse()
                .map_err(|_| ServerError::from(ApiError::ShardPath(raw.to_string())))?;
            let resp = writes::merge_now(exec, shard).await?;
            Ok(json_reply(StatusCode::OK, &resp))
        }
        _ => Err(ApiError::NoEndpoint {
            path: "(write)".into(),
        }
        .into()),
    }
}

/// Whether the local shards' ids are integers (the first local shard with
/// documents decides; ids are of one kind across a cluster built at once).
fn exec_int_ids<T: WireElem>(exec: &Executor<T>) -> bool {
    exec.node.local_shards().into_iter().any(|s| {
        exec.node
            .local_shard(s)
            .and_then(|i| i.documents().map(|d| d.keys().int_ids()))
            .unwrap_or(false)
    })
}

/// `POST /v1/documents/get`.
async fn documents<T: WireElem>(exec: &Executor<T>, req: Request<Incoming>) -> Result<Reply> {
    let request: DocumentsRequest = read_json(exec, req).await?;
    let ids = request.check()?;
    if let Some(shards) = &request.shards {
        let n = exec.node.manifest.shards.len();
        if let Some(&shard) = shards.iter().find(|&&s| s as usize >= n) {
            return Err(ApiError::UnknownShard { shard, shards: n }.into());
        }
    }
    let resp = exec.documents(&ids, request.shards.as_deref()).await?;
    Ok(json_reply(StatusCode::OK, &resp))
}

/// `%XX` escapes decoded (bytes that do not form UTF-8 are replaced).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn shards<T: WireElem>(exec: &Executor<T>) -> Reply {
    let node = &exec.node;
    let m = &node.manifest;
    let shards: Vec<_> = m
        .shards
        .iter()
        .map(|s| {
            let local = node.local_shard(s.id);
            let mut served_by: Vec<String> = node.replicas_of(s.id);
            if local.is_some() {
                served_by.insert(0, node.config.node_id.clone());
            }
            serde_json::json!({
                "id": s.id,
                "num_points": s.num_points,
                "local": local.is_some(),
                "served_by": served_by,
                // Of those, the ones live as far as this node knows: a peer
                // whose last call failed is left out until one succeeds.
                "live": node.live_nodes_of(s.id),
                "format_version": local.as_ref().map(|_| shardann_engine::layout::MAJOR_VERSION),
                // The segment version this node serves (null for a plain
                // index), and the version each peer serving the shard last
                // reported (learned while following versions).
                "version": local.as_ref().and_then(|i| i.segment().map(|m| m.version)),
                "versions": versions_of(node, s.id, local.as_ref()),
                "index": local.as_ref().map(|i| {
                    let h = i.header();
                    serde_json::json!({
                        "max_degree": h.max_degree,
                        "build_list": h.build_list,
                        "alpha": (f64::from(h.alpha) * 1e6).round() / 1e6,
                        "pq_bytes": h.pq_bytes,
                        "ram_bytes": i.memory_bytes(),
                        "cache_nodes": i.node_cache().len(),
                        "nav_points": i.navigation().map_or(0, |n| n.len()),
                    })
                }),
            })
        })
        .collect();
    json_reply(
        StatusCode::OK,
        &serde_json::json!({
            "node_id": node.config.node_id,
            "num_shards": m.shards.len(),
            "num_points": m.num_points,
            "dim": m.dim,
            "metric": m.metric,
            "elem": m.elem,
            "partition": m.partition,
            "shards": shards,
            "peers": node.routing().peers.iter().filter(|p| p.is_present()).map(|p| serde_json::json!({
                "id": p.id,
                "address": p.addr.to_string(),
                "up": p.is_up(),
            })).collect::<Vec<_>>(),
        }),
    )
}

/// `{"node id": version}` for this node (when local) and every peer
/// serving shard `s` whose version is known.
fn versions_of(
    node: &Node,
    s: u32,
    local: Option<&Arc<shardann_engine::index::DiskIndex>>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    if let Some(v) = local.and_then(|i| i.segment().map(|m| m.version)) {
        out.insert(node.config.node_id.clone(), v.into());
    }
    let routing = node.routing();
    let known = node.peer_versions.lock().unwrap_or_else(|e| e.into_inner());
    for &p in routing.replicas_of(s) {
        if let Some(v) = known.get(&(p, s)) {
            out.insert(routing.peers[p].id.clone(), (*v).into());
        }
    }
    out
}

fn health<T: WireElem>(exec: &Executor<T>) -> Reply {
    let node = &exec.node;
    json_reply(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "node_id": node.config.node_id,
            "runtime": crate::rt::current().name(),
            "local_shards": node.local_shards(),
            "unserved_shards": node.unserved_shards(),
            "unavailable_shards": node.unavailable_shards(),
            "peers": node
                .routing()
                .peers
                .iter()
                .filter(|p| p.is_present())
                .map(|p| (p.id.clone(), if p.is_up() { "up" } else { "down" }.into()))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            // Static, or etcd and whether it can be reached; unreachable:
            // serving with the last known routing and versions.
            "coordination": node.coordination.to_json(),
            "writes": node.mutable_stats(),
        }),
    )
}

fn metrics<T: WireElem>(exec: &Executor<T>) -> Reply {
    let node = &exec.node;
    let available = node.coordination.available();
    node.metrics
        .coordination_available
        .store(u64::from(available), std::sync::atomic::Ordering::Relaxed);
    let text = node
        .metrics
        .render(&node.config.node_id, &node.peer_states());
    let mut r = Response::new(full(text));
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (method, path) of every operation in `server/openapi.yaml`.
    fn documented() -> BTreeSet<(String, String)> {
        let spec = include_str!("../openapi.yaml");
        let mut out = BTreeSet::new();
        let mut in_paths = false;
        let mut path = None;
        for line in spec.lines() {
            if !line.starts_with(' ') && !line.trim().is_empty() {
                in_paths = line == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = Some(format!("/{}", p.trim_end_matches(':')));
            } else if let (Some(m), Some(p)) = (
                line.strip_prefix("    ")
                    .and_then(|l| l.strip_suffix(':'))
                    .filter(|m| ["get", "post", "put", "delete", "patch"].contains(m)),
                &path,
            ) {
                out.insert((m.to_uppercase(), p.clone()));
            }
        }
        out
    }

    /// Every route the dispatcher answers is documented in
    /// `server/openapi.yaml` with its method, and every documented
    /// operation is routed.
    #[test]
    fn openapi_documents_every_route() {
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let documented = documented();
        assert!(
            documented.len() >= 8,
            "openapi.yaml parsed to {documented:?}"
        );
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "openapi.yaml lacks {undocumented:?}"
        );
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(unrouted.is_empty(), "ROUTES lacks {unrouted:?}");
    }

    #[test]
    fn requests_find_their_route() {
        let (r, params) = find_route(&Method::GET, "/v1/shards/3/segments/7/files/pq.bin").unwrap();
        assert_eq!(r.handler, Handler::File);
        assert_eq!(params, ["3", "7", "pq.bin"]);
        assert_eq!(
            find_route(&Method::GET, "/v1/shards").unwrap().0.handler,
            Handler::Shards
        );
        let status = |m: &Method, p: &str| crate::http::status(&find_route(m, p).unwrap_err());
        assert_eq!(
            status(&Method::GET, "/v1/search"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(&Method::GET, "/v1/shards/1"), StatusCode::NOT_FOUND);
        assert_eq!(
            status(&Method::GET, "/v1/shards/1/manifest/x"),
            StatusCode::NOT_FOUND
        );
        let e = find_route(&Method::GET, "/nope").unwrap_err().to_string();
        assert!(
            e.contains("/v1/search/batch, /v1/shards, /healthz, /metrics"),
            "{e}"
        );
    }
}
