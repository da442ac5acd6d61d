//! Taking a shard from a peer over HTTP/2, and serving shards to peers.
//!
//! ```text
//!  puller                                   source node
//!  GET /v1/cluster ───────────────────────► cluster.json bytes
//!  GET /v1/shards/S/manifest ─────────────► segment.json of S's current version
//!  for each listed file not yet complete:
//!  GET /v1/shards/S/segments/V/files/F?offset=N ► zstd chunks from byte N
//!  verify every file ─► segment.json ─► rename staging ─► publish (CURRENT)
//! ```
//!
//! Files are staged in `shard-S/vV.partial/`, which no reader opens; an
//! interrupted pull resumes from what is there (`offset` = bytes already
//! written). Only after every file's size and XXH3-64 match the manifest is
//! the staging directory sealed with the source's manifest, renamed to
//! `vV/`, verified again, and made current atomically: a crash at any point
//! leaves the old version or the new one current, never a mixture.
//!
//! Wire format of a file body (`application/x-shardann-zstd-chunks`): a
//! sequence of chunks, each `u32 compressed length, u32 raw length`
//! (little-endian) followed by one zstd frame holding `raw length` bytes of
//! the file. Spec: `format-spec/replication.md`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use shardann_engine::cluster::{read_manifest, CLUSTER_FILE};
use shardann_engine::segment::{self, Manifest, MANIFEST_FILE};

use crate::error::{Result, ServerError};
use crate::node::{connect, Node};
use crate::rt::until;

/// Raw bytes per chunk of a file transfer.
pub const CHUNK: usize = 1 << 20;
/// zstd level for transfers: the library's default, about 300–500 MB/s a core.
const LEVEL: i32 = 3;
/// How long a replication exchange may go without progress (an answer, or
/// the next part of a file) before it is abandoned and retried.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the follower waits for a peer's manifest.
pub const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The content type of a file transfer.
pub const CHUNKS_CONTENT_TYPE: &str = "application/x-shardann-zstd-chunks";

/// A response body: whole (JSON) or streamed (file transfers). Not `Send`:
/// a file stream holds the executor's own file handle.
pub type Body = std::pin::Pin<Box<dyn hyper::body::Body<Data = Bytes, Error = std::io::Error>>>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Box::pin(Full::new(bytes.into()).map_err(|never| match never {}))
}

/// Why a replication request is refused: (status, message).
pub type Refusal = (u16, String);

/// Checks the `authorization: Bearer TOKEN` header against the node's
/// `cluster_token`, when it has one.
pub fn authorize(node: &Node, headers: &hyper::HeaderMap) -> std::result::Result<(), Refusal> {
    let Some(token) = &node.config.cluster_token else {
        return Ok(());
    };
    let given = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.as_str()) {
        Ok(())
    } else {
        Err((
            401,
            "replication needs the cluster token (authorization: Bearer …)".into(),
        ))
    }
}

/// `GET /v1/cluster`: the bytes of `cluster.json`.
pub fn cluster_file(node: &Node) -> std::result::Result<Vec<u8>, Refusal> {
    let path = node.config.index_dir.join(CLUSTER_FILE);
    std::fs::read(&path).map_err(|e| {
        (
            404,
            format!("{}: {e} (a plain index has no cluster.json)", CLUSTER_FILE),
        )
    })
}

fn local_shard_dir(node: &Node, s: u32) -> std::result::Result<PathBuf, Refusal> {
    if node.local_shard(s).is_none() {
        return Err((404, format!("this node does not serve shard {s}")));
    }
    node.shard_dir(s)
        .ok_or_else(|| (404, format!("no shard {s}")))
}

/// `GET /v1/shards/S/manifest`: the current segment's `segment.json`, as
/// stored (the puller checks its checksum).
pub fn manifest_file(node: &Node, s: u32) -> std::result::Result<Vec<u8>, Refusal> {
    let dir = local_shard_dir(node, s)?;
    let seg = segment::resolve(&dir).map_err(|e| (500, e.to_string()))?;
    std::fs::read(seg.join(MANIFEST_FILE)).map_err(|e| {
        (
            404,
            format!(
                "shard {s} is not a sealed segment ({e}); rebuild it with this version of shardann"
            ),
        )
    })
}

/// `GET /v1/shards/S/segments/V/files/NAME?offset=N`: the file from byte
/// N, as zstd chunks. Only files listed in that segment's manifest are
/// served; anything else (`..` included) is refused.
pub async fn file_body(
    node: &Node,
    s: u32,
    version: u64,
    name: &str,
    offset: u64,
) -> std::result::Result<(Body, u64), Refusal> {
    let dir = local_shard_dir(node, s)?.join(segment::version_dir_name(version));
    let m = Manifest::read(&dir).map_err(|e| (404, format!("shard {s} version {version}: {e}")))?;
    let entry = m.file(name).ok_or_else(|| {
        (
            404,
            format!("{name:?} is not a file of shard {s} version {version}"),
        )
    })?;
    if offset > entry.size {
        return Err((
            400,
            format!(
                "offset {offset} is past the end of {name} ({} bytes)",
                entry.size
            ),
        ));
    }
    let path = dir.join(name);
    let file = glommio::io::BufferedFile::open(&path)
        .await
        .map_err(|e| (500, format!("{}: {e}", path.display())))?;
    let size = entry.size;
    let stream = futures::stream::unfold((file, offset), move |(file, pos)| async move {
        if pos >= size {
            let _ = file.close().await;
            return None;
        }
        let want = CHUNK.min((size - pos) as usize);
        let item = match file.read_at(pos, want).await {
            Ok(raw) if raw.len() == want => encode_chunk(&raw).map(|b| Frame::data(Bytes::from(b))),
            Ok(raw) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("short read: {} of {want} bytes at {pos}", raw.len()),
            )),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        Some((item, (file, pos + want as u64)))
    });
    Ok((Box::pin(StreamBody::new(stream)), size - offset))
}

fn encode_chunk(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let z = zstd::bulk::compress(raw, LEVEL)?;
    let mut out = Vec::with_capacity(8 + z.len());
    out.extend_from_slice(&(z.len() as u32).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&z);
    Ok(out)
}

/// What one pull moved.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    pub shard: u32,
    pub version: u64,
    /// True when the shard was already at that version.
    pub up_to_date: bool,
    /// Per file: name, file bytes received, bytes on the wire.
    pub files: Vec<(String, u64, u64)>,
    pub seconds: f64,
}

impl PullReport {
    pub fn raw_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.1).sum()
    }
    pub fn wire_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.2).sum()
    }
}

fn err(addr: SocketAddr, message: impl Into<String>) -> ServerError {
    ServerError::Http {
        addr: addr.to_string(),
        message: message.into(),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::InvalidParameter(format!("{}: {e}", path.display()))
}

/// GETs `path` from `addr`; the body is returned whole.
async fn get_bytes(
    sender: &mut crate::node::Sender,
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
) -> Result<Bytes> {
    let exchange = async {
        let resp = sender
            .send_request(request(addr, token, path)?)
            .await
            .map_err(|e| err(addr, format!("GET {path}: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| err(addr, format!("GET {path}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(err(
                addr,
                format!("GET {path}: {status}: {}", String::from_utf8_lossy(&body)),
            ));
        }
        Ok(body)
    };
    // A peer that accepts and never answers must not hold a pull (or the
    // follower, which asks every peer in turn) forever.
    until(Instant::now() + STALL_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|| {
            Err(err(
                addr,
                format!("GET {path}: no answer within {STALL_TIMEOUT:?}"),
            ))
        })
}

fn request(
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
) -> Result<hyper::Request<Full<Bytes>>> {
    let mut b = hyper::Request::get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::new()))
        .map_err(|e| err(addr, e.to_string()))
}

/// Pulls shard `shard`'s current version from the node at `addr` into
/// `index_dir` (which gets `cluster.json` too if it has none). Must run on
/// a glommio executor. Resumes an interrupted pull of the same version.
pub async fn pull(
    addr: SocketAddr,
    token: Option<&str>,
    shard: u32,
    index_dir: &Path,
) -> Result<PullReport> {
    let start = Instant::now();
    let mut sender = connect(addr, std::time::Duration::from_secs(10))
        .await
        .map_err(|e| err(addr, e))?;
    std::fs::create_dir_all(index_dir).map_err(|e| io_err(index_dir, e))?;
    let cluster = get_bytes(&mut sender, addr, token, "/v1/cluster").await?;
    let cluster_path = index_dir.join(CLUSTER_FILE);
    if !cluster_path.exists() {
        segment::write_atomic(&cluster_path, &cluster)?;
    }
    let cm = read_manifest(index_dir)?;
    let info = cm
        .shards
        .get(shard as usize)
        .ok_or_else(|| err(addr, format!("the cluster has no shard {shard}")))?;
    let shard_dir = index_dir.join(&info.dir);
    std::fs::create_dir_all(&shard_dir).map_err(|e| io_err(&shard_dir, e))?;

    let manifest_bytes = get_bytes(
        &mut sender,
        addr,
        token,
        &format!("/v1/shards/{shard}/manifest"),
    )
    .await?;
    let m = Manifest::from_bytes(Path::new("remote segment.json"), &manifest_bytes)?;
    if m.shard_id != shard {
        return Err(err(
            addr,
            format!(
                "asked for shard {shard}, got a manifest of shard {}",
                m.shard_id
            ),
        ));
    }
    let mut report = PullReport {
        shard,
        version: m.version,
        ..Default::default()
    };
    if shard_dir.join(segment::CURRENT_FILE).exists() {
        let (cur, _) = segment::current(&shard_dir)?;
        if cur > m.version {
            return Err(err(
                addr,
                format!(
                    "the peer has version {} of shard {shard}, older than the local {cur}",
                    m.version
                ),
            ));
        }
        if cur == m.version {
            report.up_to_date = true;
            report.seconds = start.elapsed().as_secs_f64();
            return Ok(report);
        }
    }
    let final_dir = shard_dir.join(segment::version_dir_name(m.version));
    if final_dir.exists() {
        // Staged and renamed before a crash, not yet current: use it if it
        // verifies, else pull it again.
        if segment::verify(&final_dir).is_ok() {
            segment::publish(&shard_dir, m.version)?;
            report.seconds = start.elapsed().as_secs_f64();
            return Ok(report);
        }
        std::fs::remove_dir_all(&final_dir).map_err(|e| io_err(&final_dir, e))?;
    }
    let staging = shard_dir.join(format!("{}.partial", segment::version_dir_name(m.version)));
    let pending = staging.join("manifest.pending");
    if staging.exists() && std::fs::read(&pending).ok().as_deref() != Some(&manifest_bytes[..]) {
        // Staged for other contents of the same version number: start over.
        std::fs::remove_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
    segment::write_atomic(&pending, &manifest_bytes)?;

    for f in &m.files {
        let path = staging.join(&f.name);
        let have = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
        let have = if have > f.size {
            std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            0
        } else {
            have
        };
        let (raw, wire) = if have < f.size {
            fetch_file(
                &mut sender,
                addr,
                token,
                shard,
                m.version,
                &f.name,
                have,
                f.size,
                &path,
            )
            .await?
        } else {
            (0, 0)
        };
        report.files.push((f.name.clone(), raw, wire));
    }
    // Every byte against the manifest before anything is renamed.
    for f in &m.files {
        let path = staging.join(&f.name);
        let (sum, size) = segment::hash_file(&path)?;
        if size != f.size || format!("{sum:016x}") != f.xxh3 {
            // Pulled again next time.
            let _ = std::fs::remove_file(&path);
            return Err(err(
                addr,
                format!("{}: received {size} bytes hashing to {sum:016x}; the manifest says {} bytes, {}", path.display(), f.size, f.xxh3),
            ));
        }
    }
    std::fs::remove_file(&pending).map_err(|e| io_err(&pending, e))?;
    segment::write_atomic(&staging.join(MANIFEST_FILE), &manifest_bytes)?;
    std::fs::rename(&staging, &final_dir).map_err(|e| io_err(&final_dir, e))?;
    std::fs::File::open(&shard_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(&shard_dir, e))?;
    segment::verify(&final_dir)?;
    segment::publish(&shard_dir, m.version)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Appends bytes `have..size` of a remote file to `path`; returns (file
/// bytes, wire bytes) received.
#[allow(clippy::too_many_arguments)]
async fn fetch_file(
    sender: &mut crate::node::Sender,
    addr: SocketAddr,
    token: Option<&str>,
    shard: u32,
    version: u64,
    name: &str,
    have: u64,
    size: u64,
    path: &Path,
) -> Result<(u64, u64)> {
    let url = format!("/v1/shards/{shard}/segments/{version}/files/{name}?offset={have}");
    let resp = until(
        Instant::now() + STALL_TIMEOUT,
        sender.send_request(request(addr, token, &url)?),
    )
    .await
    .ok_or_else(|| {
        err(
            addr,
            format!("GET {url}: no answer within {STALL_TIMEOUT:?}"),
        )
    })?
    .map_err(|e| err(addr, format!("GET {url}: {e}")))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(err(
            addr,
            format!("GET {url}: {status}: {}", String::from_utf8_lossy(&text)),
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    let mut buf = BytesMut::new();
    let (mut raw_total, mut wire_total) = (0u64, 0u64);
    let mut pos = have;
    loop {
        let frame = match until(Instant::now() + STALL_TIMEOUT, body.frame()).await {
            None => {
                file.sync_all().map_err(|e| io_err(path, e))?;
                return Err(err(
                    addr,
                    format!("GET {url}: stalled at byte {pos} for {STALL_TIMEOUT:?}"),
                ));
            }
            Some(None) => break,
            Some(Some(Ok(f))) => f,
            Some(Some(Err(e))) => {
                file.sync_all().map_err(|e| io_err(path, e))?;
                return Err(err(addr, format!("GET {url}: cut at byte {pos}: {e}")));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        wire_total += data.len() as u64;
        buf.extend_from_slice(&data);
        while buf.len() >= 8 {
            let zlen = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            let rlen = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if rlen > CHUNK * 4 || zlen > CHUNK * 8 {
                return Err(err(
                    addr,
                    format!("GET {url}: malformed chunk header ({zlen}, {rlen})"),
                ));
            }
            if buf.len() < 8 + zlen {
                break;
            }
            let chunk = buf.split_to(8 + zlen);
            let raw = zstd::bulk::decompress(&chunk[8..], rlen).map_err(|e| {
                err(
                    addr,
                    format!("GET {url}: chunk at byte {pos} does not decompress: {e}"),
                )
            })?;
            if raw.len() != rlen || pos + rlen as u64 > size {
                return Err(err(
                    addr,
                    format!("GET {url}: chunk at byte {pos} has the wrong length"),
                ));
            }
            file.write_all(&raw).map_err(|e| io_err(path, e))?;
            pos += rlen as u64;
            raw_total += rlen as u64;
        }
    }
    file.sync_all().map_err(|e| io_err(path, e))?;
    if pos != size {
        return Err(err(
            addr,
            format!("GET {url}: the transfer ended at byte {pos} of {size}"),
        ));
    }
    Ok((raw_total, wire_total))
}

/// [`pull`] from a blocking context: runs it on its own glommio executor.
pub fn pull_blocking(
    addr: SocketAddr,
    token: Option<String>,
    shard: u32,
    index_dir: &Path,
) -> Result<PullReport> {
    let dir = index_dir.to_path_buf();
    crate::rt::block_on("shardann-pull", move || async move {
        pull(addr, token.as_deref(), shard, &dir).await
    })?
}

/// Routes a replication request (`path` below `/v1`), after authorization.
pub async fn route(
    node: &Node,
    path: &str,
    query: Option<&str>,
) -> std::result::Result<(Body, &'static str), Refusal> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let shard = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| (400, format!("{s:?} is not a shard id")))
    };
    match parts.as_slice() {
        ["v1", "cluster"] => Ok((full(cluster_file(node)?), "application/json")),
        ["v1", "shards", s, "manifest"] => {
            Ok((full(manifest_file(node, shard(s)?)?), "text/plain"))
        }
        ["v1", "shards", s, "segments", v, "files", name] => {
            let version = v
                .parse::<u64>()
                .map_err(|_| (400, format!("{v:?} is not a version")))?;
            let offset =
                match query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("offset="))) {
                    Some(o) => o
                        .parse::<u64>()
                        .map_err(|_| (400, format!("offset {o:?} is not a byte offset")))?,
                    None => 0,
                };
            let (body, _) = file_body(node, shard(s)?, version, name, offset).await?;
            Ok((body, CHUNKS_CONTENT_TYPE))
        }
        _ => Err((404, format!("no endpoint {path}"))),
    }
}

/// Does `path` name a replication endpoint?
pub fn is_replication_path(path: &str) -> bool {
    path == "/v1/cluster"
        || (path.starts_with("/v1/shards/")
            && (path.ends_with("/manifest") || path.contains("/segments/")))
}

/// The version of shard `shard` the node at `addr` serves now.
/// Gives up after [`VERSION_TIMEOUT`]: the follower asks every peer in
/// turn, and one that hangs must not stall the others.
pub async fn remote_version(addr: SocketAddr, token: Option<&str>, shard: u32) -> Result<u64> {
    let ask = async {
        let mut sender = connect(addr, VERSION_TIMEOUT)
            .await
            .map_err(|e| err(addr, e))?;
        get_bytes(
            &mut sender,
            addr,
            token,
            &format!("/v1/shards/{shard}/manifest"),
        )
        .await
    };
    let bytes = until(Instant::now() + VERSION_TIMEOUT, ask)
        .await
        .unwrap_or_else(|| Err(err(addr, format!("no manifest within {VERSION_TIMEOUT:?}"))))?;
    Ok(Manifest::from_bytes(Path::new("remote segment.json"), &bytes)?.version)
}

/// Follows newer versions of the node's shards while it serves: every
/// `follow_ms`, for each local shard, pulls a newer version from a peer
/// that has one, and switches to the newest version on disk (pulled, or
/// built locally). A failed pull leaves the old version serving and is
/// retried after a backoff that doubles up to a minute. Retired versions
/// are removed once no query holds them.
pub async fn follow(node: std::sync::Arc<Node>) {
    let interval = std::time::Duration::from_millis(node.config.follow_ms.max(1));
    let mut backoff: std::collections::BTreeMap<u32, (Instant, std::time::Duration)> =
        std::collections::BTreeMap::new();
    loop {
        glommio::timer::sleep(interval).await;
        for s in node.local_shards() {
            if backoff
                .get(&s)
                .is_some_and(|(until, _)| Instant::now() < *until)
            {
                continue;
            }
            match follow_shard(&node, s).await {
                Ok(()) => {
                    backoff.remove(&s);
                }
                Err(e) => {
                    node.metrics.add(&node.metrics.pull_failures, 1);
                    let wait = backoff.get(&s).map_or(interval, |(_, w)| {
                        (*w * 2).min(std::time::Duration::from_secs(60))
                    });
                    eprintln!(
                        "node {}: shard {s}: {e}; still serving the current version, retrying in {wait:?}",
                        node.config.node_id
                    );
                    backoff.insert(s, (Instant::now() + wait, wait));
                }
            }
        }
        for dir in node.collect() {
            eprintln!(
                "node {}: removed retired version {}",
                node.config.node_id,
                dir.display()
            );
        }
    }
}

async fn follow_shard(node: &Node, s: u32) -> Result<()> {
    let Some(dir) = node.shard_dir(s) else {
        return Ok(());
    };
    if !dir.join(segment::CURRENT_FILE).exists() {
        return Ok(()); // a plain index has no versions to follow
    }
    let (mut on_disk, _) = segment::current(&dir)?;
    let token = node.config.cluster_token.as_deref();
    let mut newest: Option<(u64, usize)> = None;
    for &p in node.replica_indices(s) {
        let Ok(v) = remote_version(node.peers[p].addr, token, s).await else {
            continue; // a peer that is down is the searches' concern
        };
        node.peer_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((p, s), v);
        if v > on_disk && newest.is_none_or(|(best, _)| v > best) {
            newest = Some((v, p));
        }
    }
    if let Some((_, p)) = newest {
        let r = pull(node.peers[p].addr, token, s, &node.config.index_dir).await?;
        node.metrics.add(&node.metrics.pulls, 1);
        eprintln!(
            "node {}: pulled shard {s} version {} from {} ({} bytes in {:.2}s)",
            node.config.node_id,
            r.version,
            node.peers[p].id,
            r.raw_bytes(),
            r.seconds
        );
        on_disk = r.version;
    }
    let serving = node
        .local_shard(s)
        .and_then(|i| i.segment().map(|m| m.version));
    if serving.is_some_and(|v| v >= on_disk) {
        return Ok(());
    }
    let opts = shardann_engine::index::OpenOptions {
        cache_nodes: node.config.cache_nodes,
        ..shardann_engine::index::OpenOptions::buffered()
    };
    let index = node
        .manifest
        .open_shard(&node.config.index_dir, s as usize, opts)?;
    let now = index.segment().map(|m| m.version);
    node.swap(s, index);
    node.metrics.add(&node.metrics.version_switches, 1);
    eprintln!(
        "node {}: shard {s} now serves version {} (was {})",
        node.config.node_id,
        now.unwrap_or(0),
        serving.unwrap_or(0)
    );
    Ok(())
}
