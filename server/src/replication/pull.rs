//! The puller: takes a shard's current version from a peer into a local
//! index directory (stage, resume, verify, seal, rename, switch).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use shardann_engine::cluster::{read_manifest, CLUSTER_FILE};
use shardann_engine::segment::{self, Manifest, MANIFEST_FILE};

use super::{CHUNK, STALL_TIMEOUT};
use crate::error::{Result, ServerError};
use crate::node::connect;
use crate::rt::until;

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

pub(super) fn err(addr: SocketAddr, message: impl Into<String>) -> ServerError {
    ServerError::Http {
        addr: addr.to_string(),
        message: message.into(),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::InvalidParameter(format!("{}: {e}", path.display()))
}

/// GETs `path` from `addr`; the body is returned whole.
pub(super) async fn get_bytes(
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
