//! Blocking entry points for talking to a node over HTTP: the CLI's
//! `bench --server`, and tests.
//!
//! Each call starts its own executor(s) ([`crate::rt`]), so it can be used from any
//! thread; the requests themselves go out over HTTP/2 (prior knowledge),
//! many in flight on one connection, or over HTTP/1.1 when asked.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use shardann_engine::fusion::Fusion;

use crate::api::{BatchRequest, BatchResponse, SearchRequest, SearchResponse};
use crate::config::resolve;
use crate::error::{Result, ServerError, UrlError};
use crate::http::{self, PeerError, Sender};
use crate::rt::until;

/// HTTP/2 connections per client executor, used in turn by its tasks: the
/// node's kernel gives each connection to one of its executors, so one
/// connection would load one core of the node.
const CONNECTIONS: usize = 8;

/// How long a client waits for a connection or a response.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `http://host:port[/]` (or `host:port`) to a socket address.
pub fn parse_url(url: &str) -> Result<SocketAddr> {
    let bad = |source: UrlError| ServerError::Url {
        url: url.to_string(),
        source,
    };
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains("://") {
        return Err(bad(UrlError::NotHttp));
    }
    let host_port = rest.trim_end_matches('/');
    if host_port.contains('/') {
        return Err(bad(UrlError::HasPath));
    }
    resolve(host_port).map_err(|e| bad(e.into()))
}

/// Search parameters sent with every query.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpParams {
    pub k: usize,
    pub list: Option<usize>,
    pub beam: Option<usize>,
    pub probe_shards: Option<usize>,
    pub timeout_ms: Option<u64>,
    /// Hybrid queries: how the node fuses the two lists (its default when
    /// `None`), and how many hits each list contributes.
    pub fusion: Option<Fusion>,
    pub candidates: Option<usize>,
    /// Text-only queries: `Some(true)` to have the node embed the text,
    /// `Some(false)` for BM25 alone, `None` for the node's default.
    pub embed: Option<bool>,
}

/// One query of a run: a vector (dense), a text (BM25), or both (hybrid).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryInput {
    pub vector: Option<Vec<f64>>,
    pub text: Option<String>,
}

/// One request's outcome, as the client saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// From sending the request to having the whole response.
    pub micros: u64,
    pub result: std::result::Result<SearchResponse, PeerError>,
}

/// Searches every vector through `addr`'s `/v1/search`, `concurrency`
/// requests in flight on each of `executors` client executors (each with
/// up to 8 HTTP/2 connections). Outcomes come back in vector order; a failed
/// request is an `Err` outcome, not an error of the whole run.
pub fn search_many(
    addr: SocketAddr,
    vectors: Arc<Vec<Vec<f64>>>,
    params: HttpParams,
    concurrency: usize,
    executors: usize,
) -> Result<Vec<Outcome>> {
    search_many_batched(addr, vectors, params, 1, concurrency, executors)
}

/// [`search_many`] with `batch` vectors per request: `/v1/search/batch`
/// when `batch > 1`. Each vector's outcome carries its request's latency.
pub fn search_many_batched(
    addr: SocketAddr,
    vectors: Arc<Vec<Vec<f64>>>,
    params: HttpParams,
    batch: usize,
    concurrency: usize,
    executors: usize,
) -> Result<Vec<Outcome>> {
    let queries = vectors
        .iter()
        .map(|v| QueryInput {
            vector: Some(v.clone()),
            text: None,
        })
        .collect();
    search_queries(
        addr,
        Arc::new(queries),
        params,
        batch,
        concurrency,
        executors,
    )
}

/// Searches every query (vector, text or both) as [`search_many_batched`]
/// does vectors. A batch sends the vectors and the texts of its queries,
/// so the queries of one run should all be of one kind.
pub fn search_queries(
    addr: SocketAddr,
    vectors: Arc<Vec<QueryInput>>,
    params: HttpParams,
    batch: usize,
    concurrency: usize,
    executors: usize,
) -> Result<Vec<Outcome>> {
    if concurrency == 0 || executors == 0 || batch == 0 || batch > crate::api::MAX_BATCH {
        return Err(ServerError::InvalidParameter(
            "concurrency and client executors must be at least 1, the batch size in 1..=10000"
                .into(),
        ));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let n = vectors.len();
    // Unpinned: a client shares the machine with whatever it measures, and
    // pinning would put it on the first CPUs, where the node's executors are.
    let spec = crate::rt::PoolSpec {
        backend: crate::rt::auto(),
        executors,
        name: "shardann-client",
        pinned: false,
    };
    let handles = crate::rt::start_pool(spec, move || async move {
        let conns: Rc<Vec<std::cell::RefCell<Option<Sender>>>> = Rc::new(
            (0..CONNECTIONS.min(concurrency))
                .map(|_| Default::default())
                .collect(),
        );
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let (vectors, next, conns) =
                    (Arc::clone(&vectors), Arc::clone(&next), Rc::clone(&conns));
                crate::rt::spawn_local(async move {
                    let mut done = Vec::new();
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        let first = b.saturating_mul(batch);
                        let Some(rows) = vectors.get(first..(first + batch).min(n)) else {
                            break;
                        };
                        if rows.is_empty() {
                            break;
                        }
                        let start = Instant::now();
                        let conn = &conns[t % conns.len()];
                        let results = if batch == 1 {
                            vec![search_once(addr, conn, &rows[0], params).await]
                        } else {
                            match batch_once(addr, conn, rows, params).await {
                                Ok(r) if r.len() == rows.len() => r.into_iter().map(Ok).collect(),
                                Ok(r) => vec![
                                    Err(PeerError::Count {
                                        answers: r.len(),
                                        vectors: rows.len(),
                                    });
                                    rows.len()
                                ],
                                Err(e) => vec![Err(e); rows.len()],
                            }
                        };
                        let micros = start.elapsed().as_micros() as u64;
                        for (j, result) in results.into_iter().enumerate() {
                            done.push((first + j, Outcome { micros, result }));
                        }
                    }
                    done
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await);
        }
        all
    })
    .map_err(|source| ServerError::Runtime { executors, source })?;
    let mut out: Vec<Option<Outcome>> = vec![None; n];
    for (executor, joined) in handles.join_all().into_iter().enumerate() {
        let done = joined.map_err(|source| ServerError::Executor { executor, source })?;
        for (i, o) in done {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(o);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|o| {
            o.unwrap_or(Outcome {
                micros: 0,
                result: Err(PeerError::NotSent),
            })
        })
        .collect())
}

async fn search_once(
    addr: SocketAddr,
    conn: &std::cell::RefCell<Option<Sender>>,
    query: &QueryInput,
    params: HttpParams,
) -> std::result::Result<SearchResponse, PeerError> {
    let body = SearchRequest {
        vector: query.vector.clone(),
        text: query.text.clone(),
        embed: params.embed,
        fusion: params.fusion,
        candidates: params.candidates,
        text_stats: None,
        k: params.k,
        list: params.list,
        beam: params.beam,
        probe_shards: params.probe_shards,
        timeout_ms: params.timeout_ms,
        shards: None,
        filter: None,
        include: Vec::new(),
    };
    post_json(addr, conn, "/v1/search", &body).await
}

async fn batch_once(
    addr: SocketAddr,
    conn: &std::cell::RefCell<Option<Sender>>,
    queries: &[QueryInput],
    params: HttpParams,
) -> std::result::Result<Vec<SearchResponse>, PeerError> {
    let body = BatchRequest {
        vectors: queries.iter().filter_map(|q| q.vector.clone()).collect(),
        texts: queries.iter().filter_map(|q| q.text.clone()).collect(),
        embed: params.embed,
        fusion: params.fusion,
        candidates: params.candidates,
        k: params.k,
        list: params.list,
        beam: params.beam,
        probe_shards: params.probe_shards,
        timeout_ms: params.timeout_ms,
        filter: None,
        include: Vec::new(),
    };
    post_json::<BatchResponse>(addr, conn, "/v1/search/batch", &body)
        .await
        .map(|r| r.results)
}

/// POSTs `body` as JSON on the pooled connection `conn` (connecting if it
/// has none or it closed) and reads an `R` back, within [`CLIENT_TIMEOUT`].
async fn post_json<R: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    conn: &std::cell::RefCell<Option<Sender>>,
    path: &str,
    body: &impl serde::Serialize,
) -> std::result::Result<R, PeerError> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let req = http::post_json(addr, path, body)?;
    let existing = conn.borrow().as_ref().filter(|s| !s.is_closed()).cloned();
    let mut sender = match existing {
        Some(s) => s,
        None => {
            let s = http::connect(addr, CLIENT_TIMEOUT).await?;
            *conn.borrow_mut() = Some(s.clone());
            s
        }
    };
    let exchange = async {
        let resp = http::send(&mut sender, req).await.inspect_err(|_| {
            *conn.borrow_mut() = None;
        })?;
        http::read_json(resp).await
    };
    until(deadline, exchange)
        .await
        .unwrap_or(Err(PeerError::Timeout {
            what: "response",
            after: CLIENT_TIMEOUT,
        }))
}

/// HTTP version of a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// One request for [`exchange`].
#[derive(Debug, Clone)]
pub struct Request {
    pub method: hyper::Method,
    pub path: String,
    pub body: Vec<u8>,
    /// Sent as `authorization: Bearer <token>` (writes to a node with a
    /// `write_token`).
    pub bearer: Option<String>,
    /// How long to wait for the whole response (default 30 s): longer for
    /// a request that works for minutes, such as a merge.
    pub timeout: Option<Duration>,
}

impl Request {
    pub fn get(path: &str) -> Self {
        Request {
            method: hyper::Method::GET,
            path: path.into(),
            body: Vec::new(),
            bearer: None,
            timeout: None,
        }
    }

    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Request {
            method: hyper::Method::POST,
            path: path.into(),
            body: body.into(),
            bearer: None,
            timeout: None,
        }
    }

    pub fn delete(path: &str) -> Self {
        Request {
            method: hyper::Method::DELETE,
            path: path.into(),
            body: Vec::new(),
            bearer: None,
            timeout: None,
        }
    }

    pub fn with_bearer(mut self, token: Option<&str>) -> Self {
        self.bearer = token.map(str::to_string);
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Sends `requests` one after another over one connection of the given
/// HTTP version; returns each status and body, or why there was none.
pub fn exchange(
    addr: SocketAddr,
    version: Version,
    requests: Vec<Request>,
) -> Result<Vec<std::result::Result<(u16, Bytes), PeerError>>> {
    crate::rt::block_on("shardann-exchange", move || async move {
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            let after = r.timeout.unwrap_or(CLIENT_TIMEOUT);
            let deadline = Instant::now() + after;
            let one = until(deadline, exchange_one(addr, version, r))
                .await
                .unwrap_or(Err(PeerError::Timeout {
                    what: "response",
                    after,
                }));
            out.push(one);
        }
        out
    })
}

/// One request on a fresh connection (simple, and a test of connection
/// setup each time).
async fn exchange_one(
    addr: SocketAddr,
    version: Version,
    r: Request,
) -> std::result::Result<(u16, Bytes), PeerError> {
    let mut req = hyper::Request::builder()
        .method(r.method)
        .uri(format!("http://{addr}{}", r.path))
        .header(hyper::header::HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json");
    if let Some(token) = &r.bearer {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(r.body)))
        .map_err(|e| PeerError::Request(Arc::new(e)))?;
    let resp = match version {
        Version::Http2 => {
            let mut sender = http::connect(addr, CLIENT_TIMEOUT).await?;
            http::send(&mut sender, req).await?
        }
        Version::Http1 => {
            let mut sender = http::connect_http1(addr, CLIENT_TIMEOUT).await?;
            sender
                .send_request(req)
                .await
                .map_err(|e| PeerError::Send(Arc::new(e)))?
        }
    };
    let (status, body) = http::collect(resp).await?;
    Ok((status.as_u16(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("http://127.0.0.1:7001").unwrap().port(), 7001);
        assert_eq!(parse_url("127.0.0.1:7001/").unwrap().port(), 7001);
        assert!(parse_url("https://127.0.0.1:7001").is_err());
        assert!(parse_url("http://127.0.0.1:7001/v1/search").is_err());
        assert!(parse_url("http://127.0.0.1").is_err());
    }
}
