//! The puller: takes a shard's current version from a peer into a local
//! index directory (stage, resume, verify, seal, rename, switch).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use shardann_engine::cluster::read_manifest;
use shardann_engine::layout::{self, Manifest, CLUSTER_FILE, MANIFEST_FILE};
use shardann_engine::{fs, shard};

use super::{CHUNK, MAX_VERSION, STALL_TIMEOUT};
use crate::error::{Result, ServerError};
use crate::http::{self, PeerError, Sender};
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

/// What was wrong with a peer's answers while pulling a shard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    #[error("the cluster has no shard {shard}")]
    NoSuchShard { shard: u32 },
    #[error("asked for shard {asked}, got a manifest of shard {got}")]
    WrongShard { asked: u32, got: u32 },
    #[error("the peer announces version {version} of shard {shard}; versions above {MAX_VERSION} do not fit a version directory name")]
    VersionTooLarge { shard: u32, version: u64 },
    #[error("the peer has version {peer} of shard {shard}, older than the local {local}")]
    Older { shard: u32, peer: u64, local: u64 },
    #[error("{}: received {size} bytes hashing to {sum:016x}; the manifest says {want_size} bytes, {want_xxh3}", path.display())]
    Mismatch {
        path: std::path::PathBuf,
        size: u64,
        sum: u64,
        want_size: u64,
        want_xxh3: String,
    },
    #[error("GET {url}: stalled at byte {pos} for {after:?}")]
    Stalled {
        url: String,
        pos: u64,
        after: std::time::Duration,
    },
    #[error("GET {url}: cut at byte {pos}: {source}")]
    Cut {
        url: String,
        pos: u64,
        #[source]
        source: hyper::Error,
    },
    #[error("GET {url}: {source}")]
    Chunk {
        url: String,
        #[source]
        source: ChunkError,
    },
    #[error("GET {url}: the transfer ended at byte {pos} of {size}")]
    Ended { url: String, pos: u64, size: u64 },
}

/// A chunk of a file transfer that breaks `format-spec/replication.md`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    #[error("malformed chunk header ({zlen}, {rlen})")]
    Header { zlen: usize, rlen: usize },
    /// `rlen` must be `1..=4 MiB`: an empty chunk moves the transfer no
    /// further, so a stream of them would never end.
    #[error("chunk at byte {pos} says rlen = {rlen}; the chunk length must be in 1..={max}")]
    RawLength { pos: u64, rlen: usize, max: usize },
    #[error("chunk at byte {pos} does not decompress: {source}")]
    Decompress {
        pos: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("chunk at byte {pos} has the wrong length")]
    Length { pos: u64 },
}

fn peer_err(addr: SocketAddr, source: PeerError) -> ServerError {
    ServerError::Peer { addr, source }
}

fn pull_err(addr: SocketAddr, source: PullError) -> ServerError {
    ServerError::Pull { addr, source }
}

/// GETs `path` from `addr`; the body is returned whole.
pub(super) async fn get_bytes(
    sender: &mut Sender,
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
) -> Result<Bytes> {
    let exchange = async {
        let resp = http::send(sender, http::get(addr, token, path)?).await?;
        http::read_bytes(resp).await
    };
    // A peer that accepts and never answers must not hold a pull (or the
    // follower, which asks every peer in turn) forever.
    until(Instant::now() + STALL_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(PeerError::Timeout {
            what: "answer",
            after: STALL_TIMEOUT,
        }))
        .map_err(|e| peer_err(addr, e.on_get(path)))
}

/// A peer's `segment.json` for shard `shard`, checked: the engine's checks,
/// the shard id asked for, and a version that fits a version directory.
pub(super) fn remote_manifest(addr: SocketAddr, shard: u32, bytes: &[u8]) -> Result<Manifest> {
    let m = Manifest::from_bytes(Path::new("remote segment.json"), bytes)?;
    if m.shard_id != shard {
        return Err(pull_err(
            addr,
            PullError::WrongShard {
                asked: shard,
                got: m.shard_id,
            },
        ));
    }
    if m.version > MAX_VERSION {
        return Err(pull_err(
            addr,
            PullError::VersionTooLarge {
                shard,
                version: m.version,
            },
        ));
    }
    Ok(m)
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
    let mut sender = http::connect(addr, std::time::Duration::from_secs(10))
        .await
        .map_err(|e| peer_err(addr, e))?;
    let cluster = get_bytes(&mut sender, addr, token, "/v1/cluster").await?;
    // The peer's manifest is checked before anything is written.
    let manifest_bytes = get_bytes(
        &mut sender,
        addr,
        token,
        &format!("/v1/shards/{shard}/manifest"),
    )
    .await?;
    let m = remote_manifest(addr, shard, &manifest_bytes)?;

    std::fs::create_dir_all(index_dir).map_err(|e| ServerError::io(index_dir, e))?;
    let cluster_path = index_dir.join(CLUSTER_FILE);
    if !cluster_path.exists() {
        fs::write_atomic(&cluster_path, &cluster)?;
    }
    let cm = read_manifest(index_dir)?;
    let info = cm
        .shards
        .get(shard as usize)
        .ok_or_else(|| pull_err(addr, PullError::NoSuchShard { shard }))?;
    let shard_dir = index_dir.join(&info.dir);
    std::fs::create_dir_all(&shard_dir).map_err(|e| ServerError::io(&shard_dir, e))?;

    let mut report = PullReport {
        shard,
        version: m.version,
        ..Default::default()
    };
    if shard_dir.join(layout::CURRENT_FILE).exists() {
        let (cur, _) = shard::current(&shard_dir)?;
        if cur > m.version {
            return Err(pull_err(
                addr,
                PullError::Older {
                    shard,
                    peer: m.version,
                    local: cur,
                },
            ));
        }
        if cur == m.version {
            report.up_to_date = true;
            report.seconds = start.elapsed().as_secs_f64();
            return Ok(report);
        }
    }
    let final_dir = shard_dir.join(layout::version_dir_name(m.version));
    if final_dir.exists() {
        // Staged and renamed before a crash, not yet current: use it if it
        // verifies, else pull it again.
        if shard::verify(&final_dir).is_ok() {
            shard::publish(&shard_dir, m.version)?;
            report.seconds = start.elapsed().as_secs_f64();
            return Ok(report);
        }
        std::fs::remove_dir_all(&final_dir).map_err(|e| ServerError::io(&final_dir, e))?;
    }
    let staging = shard_dir.join(format!("{}.partial", layout::version_dir_name(m.version)));
    let pending = staging.join("manifest.pending");
    if staging.exists() && std::fs::read(&pending).ok().as_deref() != Some(&manifest_bytes[..]) {
        // Staged for other contents of the same version number: start over.
        std::fs::remove_dir_all(&staging).map_err(|e| ServerError::io(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| ServerError::io(&staging, e))?;
    fs::write_atomic(&pending, &manifest_bytes)?;

    for f in &m.files {
        let path = staging.join(&f.name);
        let have = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
        let have = if have > f.size {
            std::fs::remove_file(&path).map_err(|e| ServerError::io(&path, e))?;
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
        let (sum, size) = fs::hash_file(&path)?;
        if size != f.size || format!("{sum:016x}") != f.xxh3 {
            // Pulled again next time.
            let _ = std::fs::remove_file(&path);
            return Err(pull_err(
                addr,
                PullError::Mismatch {
                    path,
                    size,
                    sum,
                    want_size: f.size,
                    want_xxh3: f.xxh3.clone(),
                },
            ));
        }
    }
    std::fs::remove_file(&pending).map_err(|e| ServerError::io(&pending, e))?;
    fs::write_atomic(&staging.join(MANIFEST_FILE), &manifest_bytes)?;
    std::fs::rename(&staging, &final_dir).map_err(|e| ServerError::io(&final_dir, e))?;
    std::fs::File::open(&shard_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ServerError::io(&shard_dir, e))?;
    shard::verify(&final_dir)?;
    shard::publish(&shard_dir, m.version)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Appends bytes `have..size` of a remote file to `path`; returns (file
/// bytes, wire bytes) received.
#[allow(clippy::too_many_arguments)]
async fn fetch_file(
    sender: &mut Sender,
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
    let request = http::get(addr, token, &url).map_err(|e| peer_err(addr, e))?;
    let resp = until(Instant::now() + STALL_TIMEOUT, http::send(sender, request))
        .await
        .unwrap_or(Err(PeerError::Timeout {
            what: "answer",
            after: STALL_TIMEOUT,
        }))
        .map_err(|e| peer_err(addr, e.on_get(&url)))?;
    if !resp.status().is_success() {
        let e = match http::read_bytes(resp).await {
            Err(e) => e,
            Ok(_) => PeerError::NotSent,
        };
        return Err(peer_err(addr, e.on_get(&url)));
    }
    let mut body = resp.into_body();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ServerError::io(path, e))?;
    let mut buf = BytesMut::new();
    let (mut raw_total, mut wire_total) = (0u64, 0u64);
    let mut pos = have;
    loop {
        let frame = match until(Instant::now() + STALL_TIMEOUT, body.frame()).await {
            None => {
                file.sync_all().map_err(|e| ServerError::io(path, e))?;
                return Err(pull_err(
                    addr,
                    PullError::Stalled {
                        url,
                        pos,
                        after: STALL_TIMEOUT,
                    },
                ));
            }
            Some(None) => break,
            Some(Some(Ok(f))) => f,
            Some(Some(Err(source))) => {
                file.sync_all().map_err(|e| ServerError::io(path, e))?;
                return Err(pull_err(addr, PullError::Cut { url, pos, source }));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        wire_total += data.len() as u64;
        buf.extend_from_slice(&data);
        loop {
            let raw = match next_chunk(&mut buf, pos, size) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(source) => return Err(pull_err(addr, PullError::Chunk { url, source })),
            };
            file.write_all(&raw).map_err(|e| ServerError::io(path, e))?;
            pos += raw.len() as u64;
            raw_total += raw.len() as u64;
        }
    }
    file.sync_all().map_err(|e| ServerError::io(path, e))?;
    if pos != size {
        return Err(pull_err(addr, PullError::Ended { url, pos, size }));
    }
    Ok((raw_total, wire_total))
}

/// Takes the first chunk off `buf` and decompresses it: `None` while `buf`
/// holds less than a whole chunk. `pos` is the file offset the chunk
/// starts at, `size` the file's size in the manifest.
fn next_chunk(buf: &mut BytesMut, pos: u64, size: u64) -> Result<Option<Vec<u8>>, ChunkError> {
    let (Some(z), Some(r)) = (buf.get(0..4), buf.get(4..8)) else {
        return Ok(None);
    };
    let zlen = u32::from_le_bytes([z[0], z[1], z[2], z[3]]) as usize;
    let rlen = u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize;
    if zlen > CHUNK * 8 {
        return Err(ChunkError::Header { zlen, rlen });
    }
    if rlen == 0 || rlen > CHUNK * 4 {
        return Err(ChunkError::RawLength {
            pos,
            rlen,
            max: CHUNK * 4,
        });
    }
    if buf.len() < 8 + zlen {
        return Ok(None);
    }
    let chunk = buf.split_to(8 + zlen);
    let raw = zstd::bulk::decompress(&chunk[8..], rlen)
        .map_err(|source| ChunkError::Decompress { pos, source })?;
    if raw.len() != rlen || pos + rlen as u64 > size {
        return Err(ChunkError::Length { pos });
    }
    Ok(Some(raw))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(raw: &[u8], rlen: u32) -> BytesMut {
        let z = zstd::bulk::compress(raw, 3).unwrap();
        let mut b = BytesMut::new();
        b.extend_from_slice(&(z.len() as u32).to_le_bytes());
        b.extend_from_slice(&rlen.to_le_bytes());
        b.extend_from_slice(&z);
        b
    }

    /// format-spec/replication.md: a chunk's `rlen` is `1 ..= 4 MiB`. A peer
    /// sending empty chunks is refused, not followed forever (issue 9).
    #[test]
    fn issue_9_an_empty_chunk_is_refused() {
        let mut buf = chunk(b"", 0);
        let e = next_chunk(&mut buf, 0, 10).unwrap_err();
        assert!(e.to_string().contains("rlen = 0"), "{e}");
        let mut buf = chunk(&[7; 8], (CHUNK * 4 + 1) as u32);
        assert!(next_chunk(&mut buf, 0, u64::MAX).is_err());

        let mut buf = chunk(b"abc", 3);
        buf.extend_from_slice(&chunk(b"de", 2)[..5]);
        assert_eq!(next_chunk(&mut buf, 0, 10).unwrap().unwrap(), b"abc");
        assert_eq!(
            next_chunk(&mut buf, 3, 10).unwrap(),
            None,
            "half a chunk waits"
        );
    }
    /// A peer answering `/v1/cluster` with `cluster` and anything else with
    /// `manifest`, over HTTP/2.
    fn fake_peer(cluster: Vec<u8>, manifest: Vec<u8>) -> SocketAddr {
        use crate::rt::{AsyncIoTimer, Io, LocalExec};
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = crate::rt::block_on("fake-peer", move || async move {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                while let Ok(stream) = listener.accept().await {
                    let (c, m) = (cluster.clone(), manifest.clone());
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let body = if req.uri().path() == "/v1/cluster" {
                            c.clone()
                        } else {
                            m.clone()
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(http::full(
                                body,
                            )))
                        }
                    });
                    glommio::spawn_local(async move {
                        let _ = hyper::server::conn::http2::Builder::new(LocalExec)
                            .timer(AsyncIoTimer)
                            .serve_connection(Io::new(stream), service)
                            .await;
                    })
                    .detach();
                }
            });
        });
        rx.recv().unwrap()
    }

    /// A peer announcing a version above 9,999,999,999 (no room in the
    /// 10-digit directory name) is refused before anything is written
    /// (issue 9), by the puller and by the follower's version probe.
    #[test]
    fn issue_9_a_version_too_large_for_its_directory_is_refused() {
        use shardann_engine::cluster::{ClusterManifest, ShardInfo};
        let cluster = ClusterManifest {
            format: "shardann-cluster".into(),
            version: 1,
            metric: shardann_engine::Metric::L2,
            elem: shardann_engine::ElemType::U8,
            dim: 4,
            num_points: 0,
            partition: shardann_engine::partition::PartitionKind::Random,
            shards: vec![ShardInfo {
                id: 0,
                dir: "shard-0".into(),
                num_points: 0,
            }],
            centroids: vec![],
        };
        let manifest = Manifest {
            format: "shardann-segment".into(),
            format_version: 1,
            shard_id: 0,
            version: super::super::MAX_VERSION + 1,
            parent_version: None,
            created_unix_ms: 0,
            build: layout::BuildInfo {
                metric: "l2".into(),
                elem: "u8".into(),
                dim: 4,
                num_points: 0,
                max_degree: 4,
                build_list: 8,
                alpha: 1.2,
                pq_bytes: 1,
            },
            files: ["disk.index", "pq.bin"]
                .map(|name| layout::FileEntry {
                    name: name.into(),
                    size: 4096,
                    xxh3: "0123456789abcdef".into(),
                })
                .into(),
        };
        let addr = fake_peer(
            serde_json::to_vec(&cluster).unwrap(),
            manifest.to_bytes().unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("idx");
        let e = pull_blocking(addr, None, 0, &target).unwrap_err();
        assert!(e.to_string().contains("10000000000"), "{e}");
        assert!(!target.exists(), "written before the version was checked");

        let probe = crate::rt::block_on("probe", move || async move {
            super::super::remote_version(addr, None, 0).await
        })
        .unwrap();
        let e = probe.unwrap_err().to_string();
        assert!(e.contains("10000000000"), "{e}");
    }
}
