//! HTTP plumbing shared by the node's front end, its calls to peers, the
//! replication puller and the blocking client.
//!
//! ```text
//!  serving:  Request ─► read_body / parse_body (limit, timeout) ─► handler ─► json_reply
//!                                                                    └─ Err ─► error_reply ─► status()
//!  calling:  connect (TCP + HTTP/2 handshake on rt::Io) ─► Sender
//!            get / post_json ─► send ─► read_json / read_bytes / read_limited (errors: PeerError)
//! ```
//!
//! [`status`] is the one place where an error becomes an HTTP status code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};

use crate::api::{ApiError, ErrorBody};
use crate::error::ServerError;
use crate::replication::Refusal;
use crate::rt::net::TcpStream;
use crate::rt::{AsyncIoTimer, Io, LocalExec};
use crate::writes::WriteRefusal;
use shardann_engine::WriteError;

/// A response body: whole (JSON) or streamed (file transfers). Not `Send`:
/// a file stream holds the executor's own file handle.
pub type Body = std::pin::Pin<Box<dyn hyper::body::Body<Data = Bytes, Error = std::io::Error>>>;

/// A response of this node.
pub type Reply = Response<Body>;

/// The sending half of one HTTP/2 client connection (cheap to clone;
/// clones share the connection).
pub type Sender = SendRequest<Full<Bytes>>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Box::pin(Full::new(bytes.into()).map_err(|never| match never {}))
}

/// The HTTP status for an error: 4xx for what the client got wrong, 5xx
/// for what went wrong here. The only such mapping in the server.
pub fn status(e: &ServerError) -> StatusCode {
    match e {
        ServerError::Api(ApiError::MethodNotAllowed { .. }) => StatusCode::METHOD_NOT_ALLOWED,
        ServerError::Api(ApiError::BodyTimeout { .. }) => StatusCode::REQUEST_TIMEOUT,
        ServerError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServerError::Api(ApiError::NoEndpoint { .. } | ApiError::NoDocument(_)) => {
            StatusCode::NOT_FOUND
        }
        ServerError::Api(_) => StatusCode::BAD_REQUEST,
        ServerError::Write(w) => match w {
            WriteRefusal::Unauthorized => StatusCode::UNAUTHORIZED,
            WriteRefusal::NotLoopback { .. } => StatusCode::FORBIDDEN,
            WriteRefusal::NotHere { .. } => StatusCode::MISDIRECTED_REQUEST,
            WriteRefusal::NoLocalShard { .. } => StatusCode::NOT_FOUND,
            WriteRefusal::MergeRunning { .. } | WriteRefusal::IsPrimary { .. } => {
                StatusCode::CONFLICT
            }
            WriteRefusal::NotPrimary { .. } => StatusCode::MISDIRECTED_REQUEST,
            WriteRefusal::NoPrimary { .. }
            | WriteRefusal::PrimaryCatchingUp { .. }
            | WriteRefusal::Forward { .. }
            | WriteRefusal::ReplicaFailed { .. }
            | WriteRefusal::OwnerUnknown { .. }
            | WriteRefusal::NoCoordination { .. } => StatusCode::SERVICE_UNAVAILABLE,
            WriteRefusal::AtPrimary { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
        },
        ServerError::Engine(shardann_engine::Error::Write(w)) => match **w {
            WriteError::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        },
        ServerError::Refused(r) => match r {
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::BadShard { .. }
            | Refusal::BadVersion { .. }
            | Refusal::BadOffset { .. }
            | Refusal::OffsetPastEnd { .. } => StatusCode::BAD_REQUEST,
            Refusal::NoClusterFile { .. }
            | Refusal::NotServed { .. }
            | Refusal::NoShard { .. }
            | Refusal::NotSealed { .. }
            | Refusal::NoVersion { .. }
            | Refusal::NotListed { .. } => StatusCode::NOT_FOUND,
            Refusal::Unreadable { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        },
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `body` as JSON with `status`.
pub fn json_reply(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        format!("{{\"error\":\"serializing the response: {e}\"}}").into_bytes()
    });
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": "..."}` with the status [`status`] gives `e`. A 503 for
/// overload also names the limit (`"limit"`), says when to come back
/// (`Retry-After` and `"retry_after_s"`) and, for local shards that timed
/// out, which (`"timed_out_shards"`).
pub fn error_reply(e: &ServerError) -> Reply {
    let ServerError::Overloaded(o) = e else {
        return json_reply(
            status(e),
            &ErrorBody {
                error: e.to_string(),
            },
        );
    };
    let mut body = serde_json::json!({
        "error": o.to_string(),
        "limit": o.limit(),
        "retry_after_s": o.retry_after_s(),
    });
    if !o.timed_out_shards().is_empty() {
        body["timed_out_shards"] = o.timed_out_shards().into();
    }
    let mut r = json_reply(status(e), &body);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(o.retry_after_s()));
    r
}

/// A body of `content_type`, status 200.
pub fn body_reply(body: Body, content_type: &'static str) -> Reply {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The request body, at most `max` bytes, whole within `timeout` (a
/// client that stops sending mid-body gets a 408 instead of holding its
/// stream, and its connection, forever).
pub async fn read_body(
    req: Request<Incoming>,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > max as u64 {
            return Err(ApiError::BodyTooLarge { len, max });
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    let Some(read) = crate::rt::until(deadline, Limited::new(req.into_body(), max).collect()).await
    else {
        return Err(ApiError::BodyTimeout {
            ms: timeout.as_millis() as u64,
        });
    };
    match read {
        Ok(body) => Ok(body.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::BodyOverLimit { max })
        }
        Err(e) => Err(ApiError::ReadBody(e)),
    }
}

/// The request body (at most `max` bytes, within `timeout`) parsed as JSON.
pub async fn parse_body<R: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    max: usize,
    timeout: Duration,
) -> Result<R, ApiError> {
    parse_json(&read_body(req, max, timeout).await?)
}

/// A request body parsed as JSON.
pub fn parse_json<R: serde::de::DeserializeOwned>(body: &[u8]) -> Result<R, ApiError> {
    if body.is_empty() {
        return Err(ApiError::EmptyBody);
    }
    serde_json::from_slice(body).map_err(ApiError::Malformed)
}

/// What went wrong in a call to another node. `Clone`, so one failure can
/// be reported for every query of a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("connecting: {0}")]
    Connect(#[source] Arc<std::io::Error>),
    #[error("{protocol} handshake: {source}")]
    Handshake {
        protocol: &'static str,
        #[source]
        source: Arc<hyper::Error>,
    },
    #[error("building the request: {0}")]
    Request(#[source] Arc<hyper::http::Error>),
    #[error("encoding the request: {0}")]
    Encode(#[source] Arc<serde_json::Error>),
    #[error("request failed: {0}")]
    Send(#[source] Arc<hyper::Error>),
    #[error("reading the response: {0}")]
    Body(#[source] Arc<hyper::Error>),
    /// A non-2xx answer, with the node's message.
    #[error("status {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("unexpected response body: {0}")]
    Decode(#[source] Arc<serde_json::Error>),
    /// No answer in time (`what` names the answer waited for).
    #[error("no {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("deadline passed")]
    Deadline,
    /// A batch answered with another number of results than vectors sent.
    #[error("{answers} answers for {vectors} vectors")]
    Count { answers: usize, vectors: usize },
    #[error("not sent (internal error)")]
    NotSent,
    /// A body longer than the limit set for it (`limit` names it): read no
    /// further, so a peer cannot make this node buffer without end.
    #[error("the body is over the {limit} limit of {max} bytes")]
    TooLarge { limit: &'static str, max: usize },
    /// `source`, while asking for `path`.
    #[error("GET {path}: {source}")]
    Get {
        path: String,
        #[source]
        source: Box<PeerError>,
    },
}

impl PeerError {
    /// Whether the peer sent an answer (an error status, a body that does
    /// not decode): it is up, whatever it said. Any other error means no
    /// answer came (refused, reset, timed out).
    pub fn peer_answered(&self) -> bool {
        match self {
            PeerError::Status { .. } | PeerError::Decode(_) | PeerError::Count { .. } => true,
            PeerError::Get { source, .. } => source.peer_answered(),
            _ => false,
        }
    }

    /// This error as the answer to `GET path`.
    pub fn on_get(self, path: &str) -> Self {
        PeerError::Get {
            path: path.to_string(),
            source: Box::new(self),
        }
    }
}

/// Opens an HTTP/2 (prior knowledge) connection to `addr`; its driver runs
/// as a detached task on the current executor.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, PeerError> {
    let stream = tcp(addr, timeout).await?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(LocalExec)
        .timer(AsyncIoTimer)
        .handshake(Io::new(stream))
        .await
        .map_err(|e| PeerError::Handshake {
            protocol: "HTTP/2",
            source: Arc::new(e),
        })?;
    crate::rt::spawn_local(async move {
        // The connection ends when the peer goes away or every sender is
        // dropped; requests in flight see the error themselves.
        let _ = conn.await;
    })
    .detach();
    Ok(sender)
}

/// Opens an HTTP/1.1 connection to `addr` (tests of the HTTP/1.1 path).
pub async fn connect_http1(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, PeerError> {
    let stream = tcp(addr, timeout).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(Io::new(stream))
        .await
        .map_err(|e| PeerError::Handshake {
            protocol: "HTTP/1.1",
            source: Arc::new(e),
        })?;
    crate::rt::spawn_local(async move {
        let _ = conn.await;
    })
    .detach();
    Ok(sender)
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, PeerError> {
    let timeout = timeout.max(Duration::from_millis(1));
    let stream = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| PeerError::Connect(Arc::new(e)))?;
    stream
        .set_nodelay(true)
        .map_err(|e| PeerError::Connect(Arc::new(e)))?;
    Ok(stream)
}

/// `GET http://addr/path`, with `authorization: Bearer TOKEN` when given.
pub fn get(
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
) -> Result<Request<Full<Bytes>>, PeerError> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::new()))
        .map_err(|e| PeerError::Request(Arc::new(e)))
}

/// `POST http://addr/path` with `body` as JSON.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<Request<Full<Bytes>>, PeerError> {
    let body = serde_json::to_vec(body).map_err(|e| PeerError::Encode(Arc::new(e)))?;
    Request::post(format!("http://{addr}{path}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PeerError::Request(Arc::new(e)))
}

/// Sends `req` on `sender`.
pub async fn send(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, PeerError> {
    sender
        .send_request(req)
        .await
        .map_err(|e| PeerError::Send(Arc::new(e)))
}

/// The whole body of a response, whatever its status.
pub async fn collect(resp: Response<Incoming>) -> Result<(StatusCode, Bytes), PeerError> {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| PeerError::Body(Arc::new(e)))?
        .to_bytes();
    Ok((status, bytes))
}

/// The largest error body read from a peer: it is only shown to a person
/// (this node's own errors are one line of JSON), and a peer could
/// otherwise answer an error with a body without end.
pub const MAX_ERROR_BODY: usize = 64 << 10;

/// The body of a 2xx response, at most `max` bytes (`limit` names the
/// limit in the error); any other status is an error carrying the peer's
/// message, itself at most [`MAX_ERROR_BODY`] bytes.
pub async fn read_limited(
    resp: Response<Incoming>,
    limit: &'static str,
    max: usize,
) -> Result<Bytes, PeerError> {
    let status = resp.status();
    let (limit, max) = if status.is_success() {
        (limit, max)
    } else {
        ("error body", MAX_ERROR_BODY)
    };
    let bytes = match Limited::new(resp.into_body(), max).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Err(match e.downcast::<hyper::Error>() {
                Ok(e) => PeerError::Body(Arc::new(*e)),
                // The only other error `Limited` gives is its limit.
                Err(_) => PeerError::TooLarge { limit, max },
            });
        }
    };
    if !status.is_success() {
        return Err(PeerError::Status {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(bytes)
}

/// The body of a 2xx response; any other status is an error carrying the
/// node's message.
pub async fn read_bytes(resp: Response<Incoming>) -> Result<Bytes, PeerError> {
    let (status, bytes) = collect(resp).await?;
    if !status.is_success() {
        return Err(PeerError::Status {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(bytes)
}

/// The JSON body of a 2xx response as `R`.
pub async fn read_json<R: serde::de::DeserializeOwned>(
    resp: Response<Incoming>,
) -> Result<R, PeerError> {
    let bytes = read_bytes(resp).await?;
    serde_json::from_slice(&bytes).map_err(|e| PeerError::Decode(Arc::new(e)))
}
