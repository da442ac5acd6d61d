//! The puller: takes a shard's current version from a peer into a local
//! index directory (stage, resume, verify, seal, rename, switch).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use shardann_engine::cluster::{read_manifest, ClusterManifest};
use shardann_engine::error::ClusterFileError;
use shardann_engine::index::OpenOptions;
use shardann_engine::layout::{self, Manifest, CLUSTER_FILE, MANIFEST_FILE, MAX_MANIFEST_BYTES};
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

/// The largest `cluster.json` read from a peer: 64 MiB. It holds one
/// centroid of `dim` floats per shard, pretty-printed at about 20 bytes a
/// float, so 1,024 shards of 2,048 dimensions take about 40 MiB.
pub const MAX_CLUSTER_BODY: usize = 64 << 20;
/// The largest `segment.json` read from a peer: the engine's own limit
/// (1 MiB), which it applies to one on disk too.
pub const MAX_MANIFEST_BODY: usize = MAX_MANIFEST_BYTES as usize;

/// What a peer may make the puller do: how large a file it may announce
/// and how slowly it may send it. The node's `pull_max_file_bytes` and
/// `pull_min_bytes_per_sec` (see [`crate::config::NodeConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullLimits {
    /// The largest file a peer's manifest may declare. A manifest is the
    /// peer's word; without a ceiling one declaring 10^15 bytes has the
    /// puller fill the disk before anything can be verified.
    pub max_file_bytes: u64,
    /// The slowest transfer accepted: a file of `n` bytes must arrive
    /// within `stall + n / min_bytes_per_sec`. A stall timer alone resets on
    /// every frame, so a peer trickling a byte now and then would hold the
    /// pull (and the follower behind it) forever.
    pub min_bytes_per_sec: u64,
    /// How long an exchange may go without progress; also the slack every
    /// file's deadline starts with.
    pub stall: std::time::Duration,
}

/// The default [`PullLimits::max_file_bytes`]: 1 TiB, above any file of a
/// shard one node can serve (the largest, `disk.index`, holds the vectors
/// and the graph of the shard's points).
pub const DEFAULT_PULL_MAX_FILE_BYTES: u64 = 1 << 40;
/// The default [`PullLimits::min_bytes_per_sec`]: 1 MiB/s, two orders of
/// magnitude below a LAN link, and still a 100 GiB file in about 28 hours.
pub const DEFAULT_PULL_MIN_BYTES_PER_SEC: u64 = 1 << 20;

impl Default for PullLimits {
    fn default() -> Self {
        PullLimits {
            max_file_bytes: DEFAULT_PULL_MAX_FILE_BYTES,
            min_bytes_per_sec: DEFAULT_PULL_MIN_BYTES_PER_SEC,
            stall: STALL_TIMEOUT,
        }
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
    /// The peer's `cluster.json` does not check out; nothing was written.
    #[error("the peer's cluster.json: {source}")]
    BadClusterFile {
        #[source]
        source: Box<ClusterFileError>,
    },
    /// The peer's segment is not one of this cluster's shard (other data,
    /// or a build the node would refuse to open); nothing was staged.
    #[error("the peer's segment does not fit the local cluster.json: {source}")]
    OtherData {
        #[source]
        source: Box<ClusterFileError>,
    },
    #[error("{name}: the manifest declares {size} bytes, over pull_max_file_bytes = {max}")]
    FileTooLarge { name: String, size: u64, max: u64 },
    #[error("{}: the files of version {version} need {need} more bytes; the filesystem has {free} free", dir.display())]
    NoRoom {
        dir: PathBuf,
        version: u64,
        need: u64,
        free: u64,
    },
    /// The file's deadline (`stall + size / min rate`) passed, however
    /// often bytes came.
    #[error("GET {url}: byte {pos} of {size} after {after:?}, slower than the minimum of {min_rate} bytes/s (pull_min_bytes_per_sec)")]
    TooSlow {
        url: String,
        pos: u64,
        size: u64,
        after: Duration,
        min_rate: u64,
    },
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
    /// Refused before a byte of it is written.
    #[error("chunk at byte {pos} of {rlen} bytes runs beyond the declared size {size}")]
    BeyondSize { pos: u64, rlen: usize, size: u64 },
}

fn peer_err(addr: SocketAddr, source: PeerError) -> ServerError {
    ServerError::Peer { addr, source }
}

fn pull_err(addr: SocketAddr, source: PullError) -> ServerError {
    ServerError::Pull { addr, source }
}

/// GETs `path` from `addr`; the body is returned whole, at most `max`
/// bytes (`limit` names the limit in the error), within `stall`.
pub(super) async fn get_bytes(
    sender: &mut Sender,
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
    (limit, max): (&'static str, usize),
    stall: Duration,
) -> Result<Bytes> {
    let exchange = async {
        let resp = http::send(sender, http::get(addr, token, path)?).await?;
        http::read_limited(resp, limit, max).await
    };
    // A peer that accepts and never answers must not hold a pull (or the
    // follower, which asks every peer in turn) forever.
    until(Instant::now() + stall, exchange)
        .await
        .unwrap_or(Err(PeerError::Timeout {
            what: "answer",
            after: stall,
        }))
        .map_err(|e| peer_err(addr, e.on_get(path)))
}

/// The manifest endpoint's limit, for [`get_bytes`].
pub(super) const MANIFEST_LIMIT: (&str, usize) = ("segment.json", MAX_MANIFEST_BODY);

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
/// an executor ([`crate::rt`]). Resumes an interrupted pull of the same version.
pub async fn pull(
    addr: SocketAddr,
    token: Option<&str>,
    shard: u32,
    index_dir: &Path,
    limits: &PullLimits,
) -> Result<PullReport> {
    let start = Instant::now();
    let mut sender = http::connect(addr, Duration::from_secs(10))
        .await
        .map_err(|e| peer_err(addr, e))?;
    let cluster = get_bytes(
        &mut sender,
        addr,
        token,
        "/v1/cluster",
        ("cluster.json", MAX_CLUSTER_BODY),
        limits.stall,
    )
    .await?;
    let manifest_bytes = get_bytes(
        &mut sender,
        addr,
        token,
        &format!("/v1/shards/{shard}/manifest"),
        MANIFEST_LIMIT,
        limits.stall,
    )
    .await?;
    // Everything the peer said is checked before anything is written: a
    // bad cluster.json left in the target would block every later pull,
    // and a segment of other data would become current and stop the node.
    let m = remote_manifest(addr, shard, &manifest_bytes)?;
    let peer_cluster = ClusterManifest::parse(&cluster).map_err(|e| {
        pull_err(
            addr,
            PullError::BadClusterFile {
                source: Box::new(e),
            },
        )
    })?;
    let cluster_path = index_dir.join(CLUSTER_FILE);
    let local_cluster = cluster_path.exists();
    let cm = if local_cluster {
        read_manifest(index_dir)?
    } else {
        peer_cluster
    };
    let info = cm
        .shards
        .get(shard as usize)
        .ok_or_else(|| pull_err(addr, PullError::NoSuchShard { shard }))?;
    cm.check_segment(shard as usize, &m).map_err(|e| {
        pull_err(
            addr,
            PullError::OtherData {
                source: Box::new(e),
            },
        )
    })?;
    if let Some(f) = m.files.iter().find(|f| f.size > limits.max_file_bytes) {
        return Err(pull_err(
            addr,
            PullError::FileTooLarge {
                name: f.name.clone(),
                size: f.size,
                max: limits.max_file_bytes,
            },
        ));
    }

    std::fs::create_dir_all(index_dir).map_err(|e| ServerError::io(index_dir, e))?;
    if !local_cluster {
        fs::write_atomic(&cluster_path, &cluster)?;
    }
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
        if shard::verify(&final_dir).is_ok() && fits(&cm, shard, &final_dir).is_ok() {
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
    // Room for what is still to come, before a byte of it is written.
    let need = m
        .files
        .iter()
        .map(|f| {
            let have = std::fs::metadata(staging.join(&f.name)).map_or(0, |md| md.len());
            f.size.saturating_sub(have)
        })
        .fold(0u64, u64::saturating_add);
    let free = free_bytes(&shard_dir)?;
    if need > free {
        remove_staging(&staging)?;
        return Err(pull_err(
            addr,
            PullError::NoRoom {
                dir: shard_dir,
                version: m.version,
                need,
                free,
            },
        ));
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
            let fetched = fetch_file(
                &mut sender,
                addr,
                token,
                FileAt {
                    shard,
                    version: m.version,
                    name: &f.name,
                    have,
                    size: f.size,
                    path: &path,
                },
                limits,
            )
            .await;
            if let Err(ServerError::Pull {
                source: PullError::Chunk { .. },
                ..
            }) = &fetched
            {
                // A peer breaking the wire format is not resumed from.
                remove_staging(&staging)?;
            }
            fetched?
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
    if let Err(e) = fits(&cm, shard, &final_dir) {
        // Not current, and never to be: the node could not open it.
        let _ = std::fs::remove_dir_all(&final_dir);
        return Err(pull_err(
            addr,
            PullError::OtherData {
                source: Box::new(e),
            },
        ));
    }
    shard::publish(&shard_dir, m.version)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Opens the segment in `dir` and checks it against shard `shard` of `cm`
/// as the node does when it opens the shard: what the files hold, not
/// only what the manifest says they hold.
fn fits(cm: &ClusterManifest, shard: u32, dir: &Path) -> Result<(), ClusterFileError> {
    let idx = match shard::open(dir, OpenOptions::buffered()) {
        Ok(idx) => idx,
        // verify opened it already; an error now is not about fit
        Err(_) => return Ok(()),
    };
    cm.check_index(shard as usize, &idx)
}

/// Bytes the filesystem holding `dir` has free for this process.
// `fsblkcnt_t` and `c_ulong` are u64 on 64-bit Linux, not everywhere.
#[allow(clippy::useless_conversion)]
fn free_bytes(dir: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| ServerError::io(dir, std::io::Error::from(e)))?;
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

fn remove_staging(staging: &Path) -> Result<()> {
    match std::fs::remove_dir_all(staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ServerError::io(staging, e)),
        _ => Ok(()),
    }
}

/// One file to fetch: where it is at the peer, how much of it is staged.
struct FileAt<'a> {
    shard: u32,
    version: u64,
    name: &'a str,
    /// Bytes already staged.
    have: u64,
    /// The size the manifest declares.
    size: u64,
    path: &'a Path,
}

/// Appends bytes `have..size` of a remote file to `path`; returns (file
/// bytes, wire bytes) received. Gives up when `limits.stall` passes without
/// a frame, or when the file's deadline, `stall + (size - have) /
/// min_bytes_per_sec` from now, passes however often frames come.
async fn fetch_file(
    sender: &mut Sender,
    addr: SocketAddr,
    token: Option<&str>,
    f: FileAt<'_>,
    limits: &PullLimits,
) -> Result<(u64, u64)> {
    let FileAt {
        shard,
        version,
        name,
        have,
        size,
        path,
    } = f;
    let url = format!("/v1/shards/{shard}/segments/{version}/files/{name}?offset={have}");
    let begun = Instant::now();
    let allowed = limits.stall.saturating_add(Duration::from_secs(
        (size - have) / limits.min_bytes_per_sec.max(1),
    ));
    // None: too far ahead to represent, i.e. no deadline but the stall's.
    let deadline = begun.checked_add(allowed);
    let next = |stall: Duration| {
        let t = Instant::now() + stall;
        deadline.map_or(t, |d| d.min(t))
    };
    let slow = |pos: u64| PullError::TooSlow {
        url: url.clone(),
        pos,
        size,
        after: begun.elapsed(),
        min_rate: limits.min_bytes_per_sec,
    };
    let past = |d: Option<Instant>| d.is_some_and(|d| Instant::now() >= d);

    let request = http::get(addr, token, &url).map_err(|e| peer_err(addr, e))?;
    let Some(sent) = until(next(limits.stall), http::send(sender, request)).await else {
        if past(deadline) {
            return Err(pull_err(addr, slow(have)));
        }
        return Err(peer_err(
            addr,
            PeerError::Timeout {
                what: "answer",
                after: limits.stall,
            }
            .on_get(&url),
        ));
    };
    let resp = sent.map_err(|e| peer_err(addr, e.on_get(&url)))?;
    if !resp.status().is_success() {
        // Not a success: read_limited reads at most MAX_ERROR_BODY.
        let e = match until(next(limits.stall), http::read_limited(resp, "file", 0)).await {
            Some(Err(e)) => e,
            Some(Ok(_)) => PeerError::NotSent,
            None => PeerError::Timeout {
                what: "error body",
                after: limits.stall,
            },
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
        let frame = match until(next(limits.stall), body.frame()).await {
            None => {
                file.sync_all().map_err(|e| ServerError::io(path, e))?;
                if past(deadline) {
                    return Err(pull_err(addr, slow(pos)));
                }
                return Err(pull_err(
                    addr,
                    PullError::Stalled {
                        url,
                        pos,
                        after: limits.stall,
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
    if pos.saturating_add(rlen as u64) > size {
        // Known from the header: refused before its bytes arrive.
        return Err(ChunkError::BeyondSize { pos, rlen, size });
    }
    if buf.len() < 8 + zlen {
        return Ok(None);
    }
    let chunk = buf.split_to(8 + zlen);
    let raw = zstd::bulk::decompress(&chunk[8..], rlen)
        .map_err(|source| ChunkError::Decompress { pos, source })?;
    if raw.len() != rlen {
        return Err(ChunkError::Length { pos });
    }
    Ok(Some(raw))
}

/// [`pull`] from a blocking context: runs it on its own executor.
pub fn pull_blocking(
    addr: SocketAddr,
    token: Option<String>,
    shard: u32,
    index_dir: &Path,
    limits: &PullLimits,
) -> Result<PullReport> {
    let dir = index_dir.to_path_buf();
    let limits = *limits;
    crate::rt::block_on("shardann-pull", move || async move {
        pull(addr, token.as_deref(), shard, &dir, &limits).await
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(10),
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Issue 10 (fuzz): whatever bytes a peer sends as a file's body,
        /// taking chunks off them ends in chunks that stay within the
        /// declared size, a wait for more, or an error; never a panic.
        #[test]
        fn any_body_gives_bounded_chunks_or_an_error(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            whole in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
            size in 0u64..1000,
        ) {
            // Arbitrary bytes, then a valid chunk followed by them.
            for bytes in [body.clone(), [chunk(&whole, whole.len() as u32).to_vec(), body].concat()] {
                let mut buf = BytesMut::from(&bytes[..]);
                let mut pos = 0u64;
                while let Ok(Some(raw)) = next_chunk(&mut buf, pos, size) {
                    pos += raw.len() as u64;
                    proptest::prop_assert!(pos <= size);
                }
            }
        }
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
    /// What a fake peer answers to one request path.
    type Answer = Box<dyn Fn(&str) -> hyper::Response<http::Body> + Send + Sync>;

    /// A hostile peer on 127.0.0.1 speaking HTTP/2 as the puller does:
    /// `answer` maps each request's path to a response. Dropping it stops
    /// its accept loop (which also takes at most 64 connections) and joins
    /// its thread; the executor's end drops every connection it served.
    struct FakePeer {
        addr: SocketAddr,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl FakePeer {
        fn start(answer: Answer) -> Self {
            use crate::rt::{AsyncIoTimer, Io, LocalExec};
            use std::sync::atomic::Ordering;
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stopping = stop.clone();
            let answer = std::sync::Arc::new(answer);
            let thread = std::thread::spawn(move || {
                let _ = crate::rt::block_on("fake-peer", move || async move {
                    let listener =
                        crate::rt::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    for _ in 0..64 {
                        let Ok(stream) = listener.accept().await else {
                            break;
                        };
                        if stopping.load(Ordering::SeqCst) {
                            break;
                        }
                        let answer = answer.clone();
                        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                            let resp = answer(req.uri().path());
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        });
                        crate::rt::spawn_local(async move {
                            let _ = hyper::server::conn::http2::Builder::new(LocalExec)
                                .timer(AsyncIoTimer)
                                .serve_connection(Io::new(stream), service)
                                .await;
                        })
                        .detach();
                    }
                });
            });
            FakePeer {
                addr: rx.recv().unwrap(),
                stop,
                thread: Some(thread),
            }
        }

        /// `/v1/cluster` answered with `cluster`, anything else with `rest`.
        fn two(cluster: Vec<u8>, rest: Vec<u8>) -> Self {
            FakePeer::start(Box::new(move |path| {
                let body = if path == "/v1/cluster" {
                    cluster.clone()
                } else {
                    rest.clone()
                };
                hyper::Response::new(http::full(body))
            }))
        }
    }

    impl Drop for FakePeer {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            // Wakes the accept loop, which then sees `stop`.
            let _ = std::net::TcpStream::connect(self.addr);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn cluster_of(num_points: usize) -> shardann_engine::cluster::ClusterManifest {
        use shardann_engine::cluster::{ClusterManifest, ShardInfo};
        ClusterManifest {
            format: "shardann-cluster".into(),
            version: 1,
            metric: shardann_engine::Metric::L2,
            elem: shardann_engine::ElemType::U8,
            dim: 4,
            num_points,
            partition: shardann_engine::partition::PartitionKind::Random,
            shards: vec![ShardInfo {
                id: 0,
                dir: "shard-0".into(),
                num_points,
            }],
            centroids: vec![],
        }
    }

    fn cluster_bytes() -> Vec<u8> {
        serde_json::to_vec(&cluster_of(0)).unwrap()
    }

    /// A manifest of shard 0 agreeing with [`cluster_of`]`(0)`, its
    /// files all of `size` bytes.
    fn manifest_of(version: u64, size: u64) -> Manifest {
        Manifest {
            format: "shardann-segment".into(),
            format_version: 1,
            shard_id: 0,
            version,
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
            files: ["disk.index", "pq.bin", "ids.bin"]
                .map(|name| layout::FileEntry {
                    name: name.into(),
                    size,
                    xxh3: "0123456789abcdef".into(),
                })
                .into(),
            applied_lsn: None,
        }
    }

    /// A response of `status` whose body is `len` bytes of `byte`, sent in
    /// 64 KiB frames as fast as the peer reads them: "endless" for any
    /// limit below `len`, and still bounded.
    fn big_body(status: u16, len: usize, byte: u8) -> hyper::Response<http::Body> {
        use http_body_util::StreamBody;
        let frames = len.div_ceil(1 << 16);
        let stream = futures::stream::iter((0..frames).map(move |_| {
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![byte; 1 << 16])))
        }));
        let mut r = hyper::Response::new(Box::pin(StreamBody::new(stream)) as http::Body);
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r
    }

    fn pull_into(addr: SocketAddr, target: &Path, limits: PullLimits) -> ServerError {
        pull_blocking(addr, None, 0, target, &limits).unwrap_err()
    }

    /// Issue 10 item 5: every body the puller reads has a limit of its own.
    /// A peer answering `/v1/cluster`, the manifest, or a file request's
    /// error with a body far over it is cut off at the limit, with an error
    /// naming the limit and the peer (the peer's 256 MiB bodies would
    /// otherwise be buffered whole).
    #[test]
    fn issue_10_bodies_from_a_peer_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let big = 256 << 20;
        // `/v1/cluster`
        let peer = FakePeer::start(Box::new(move |_| big_body(200, big, b' ')));
        let e = pull_into(peer.addr, &dir.path().join("a"), PullLimits::default()).to_string();
        assert!(e.contains(&peer.addr.to_string()), "{e}");
        assert!(e.contains("cluster.json limit"), "{e}");
        drop(peer);
        // the manifest
        let cluster = cluster_bytes();
        let peer = FakePeer::start(Box::new(move |path| {
            if path == "/v1/cluster" {
                hyper::Response::new(http::full(cluster.clone()))
            } else {
                big_body(200, big, b' ')
            }
        }));
        let e = pull_into(peer.addr, &dir.path().join("b"), PullLimits::default()).to_string();
        assert!(e.contains("segment.json limit"), "{e}");
        assert!(!dir.path().join("b").exists(), "{e}");
        drop(peer);
        // the error body of a file request
        let (cluster, manifest) = (cluster_bytes(), manifest_of(1, 4096).to_bytes().unwrap());
        let peer = FakePeer::start(Box::new(move |path| match path {
            "/v1/cluster" => hyper::Response::new(http::full(cluster.clone())),
            "/v1/shards/0/manifest" => hyper::Response::new(http::full(manifest.clone())),
            _ => big_body(500, big, b'x'),
        }));
        let e = pull_into(peer.addr, &dir.path().join("c"), PullLimits::default()).to_string();
        assert!(e.contains("error body limit"), "{e}");
        assert!(e.contains(&peer.addr.to_string()), "{e}");
    }

    /// Issue 10 item 8: a manifest over the engine's 1 MiB is refused by
    /// the body limit, and a peer's `cluster.json` that does not check out
    /// is refused, both before anything is written: a bad `cluster.json`
    /// left in the target would block every later pull from a good peer.
    #[test]
    fn issue_10_a_bad_cluster_file_or_manifest_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("idx");
        let mut bad = cluster_of(0);
        bad.shards.clear(); // a cluster has at least one shard
        let peer = FakePeer::two(
            serde_json::to_vec(&bad).unwrap(),
            manifest_of(1, 4096).to_bytes().unwrap(),
        );
        let e = pull_into(peer.addr, &target, PullLimits::default()).to_string();
        assert!(e.contains("no shards"), "{e}");
        assert!(
            !target.join(CLUSTER_FILE).exists(),
            "{e}: written before checked"
        );
        drop(peer);

        let mut huge = manifest_of(1, 4096);
        huge.files = (0..20_000)
            .map(|i| layout::FileEntry {
                name: format!("file-{i:060}"),
                size: 1,
                xxh3: "0123456789abcdef".into(),
            })
            .collect();
        let bytes = serde_json::to_vec(&huge).unwrap();
        assert!(bytes.len() > 1 << 20);
        let peer = FakePeer::two(cluster_bytes(), bytes);
        let e = pull_into(peer.addr, &target, PullLimits::default()).to_string();
        assert!(e.contains("segment.json limit"), "{e}");
        assert!(!target.exists(), "{e}: written before checked");
    }

    /// Issue 10 item 6: a file's declared size is checked before anything
    /// is staged: against `max_file_bytes`, and against the free space of
    /// the target's filesystem (10^15 bytes fits no test machine's disk).
    #[test]
    fn issue_10_declared_sizes_beyond_the_limit_or_the_disk_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("idx");
        let peer = FakePeer::start(Box::new(move |path| {
            if path == "/v1/cluster" {
                hyper::Response::new(http::full(cluster_bytes()))
            } else if path.ends_with("/manifest") {
                hyper::Response::new(http::full(
                    manifest_of(1, 1_000_000_000_000_000).to_bytes().unwrap(),
                ))
            } else {
                // zeros, as long as the puller takes them
                let raw = vec![0u8; CHUNK];
                let mut chunk = BytesMut::new();
                let z = zstd::bulk::compress(&raw, 3).unwrap();
                chunk.extend_from_slice(&(z.len() as u32).to_le_bytes());
                chunk.extend_from_slice(&(CHUNK as u32).to_le_bytes());
                chunk.extend_from_slice(&z);
                let chunk = chunk.freeze();
                let stream = futures::stream::iter((0..40).map(move |_| {
                    Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))
                }));
                hyper::Response::new(Box::pin(http_body_util::StreamBody::new(stream)) as http::Body)
            }
        }));
        let e = pull_into(peer.addr, &target, PullLimits::default()).to_string();
        assert!(e.contains("pull_max_file_bytes"), "{e}");
        let staging = target.join("shard-0/v0000000001.partial");
        assert!(!staging.exists(), "{e}: staged before refused");

        let no_limit = PullLimits {
            max_file_bytes: u64::MAX,
            ..Default::default()
        };
        let e = pull_into(peer.addr, &target, no_limit).to_string();
        assert!(e.contains("free"), "{e}");
        assert!(!staging.exists(), "{e}: staged before refused");
    }

    /// Issue 10 item 6: bytes beyond a file's declared size are refused
    /// before they are written, and the staging directory is removed (a
    /// peer breaking the protocol is not resumed from).
    #[test]
    fn issue_10_a_file_longer_than_declared_is_cut_and_staging_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("idx");
        let peer = FakePeer::start(Box::new(move |path| {
            if path == "/v1/cluster" {
                hyper::Response::new(http::full(cluster_bytes()))
            } else if path.ends_with("/manifest") {
                hyper::Response::new(http::full(manifest_of(1, 100).to_bytes().unwrap()))
            } else {
                let mut body = chunk(&[1; 60], 60);
                body.extend_from_slice(&chunk(&[2; 60], 60));
                hyper::Response::new(http::full(body.freeze()))
            }
        }));
        let e = pull_into(peer.addr, &target, PullLimits::default()).to_string();
        assert!(e.contains("beyond the declared size 100"), "{e}");
        let staging = target.join("shard-0/v0000000001.partial");
        assert!(!staging.exists(), "{e}: staging left behind");
    }

    /// Issue 10 item 7: a manifest of other data than the cluster's shard
    /// (another point count) is refused before anything is staged; the
    /// node would not start with it.
    #[test]
    fn issue_10_a_segment_of_other_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("idx");
        let mut other = manifest_of(1, 4096);
        other.build.num_points = 5;
        let peer = FakePeer::two(cluster_bytes(), other.to_bytes().unwrap());
        let e = pull_into(peer.addr, &target, PullLimits::default()).to_string();
        assert!(e.contains("point count is 5"), "{e}");
        assert!(!target.join("shard-0/v0000000001.partial").exists(), "{e}");
        drop(peer);

        let mut no_ids = manifest_of(1, 4096);
        no_ids.files.retain(|f| f.name != "ids.bin");
        let peer = FakePeer::two(cluster_bytes(), no_ids.to_bytes().unwrap());
        let e = pull_into(peer.addr, &target, PullLimits::default()).to_string();
        assert!(e.contains("ids.bin"), "{e}");
    }

    /// Issue 10 item 9: a peer trickling a byte every 50 ms resets any
    /// stall timer; the file's deadline (`stall + size / min rate`) ends
    /// the pull anyway.
    #[test]
    fn issue_10_a_trickling_peer_is_cut_by_the_file_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("idx");
        let peer = FakePeer::start(Box::new(move |path| {
            if path == "/v1/cluster" {
                hyper::Response::new(http::full(cluster_bytes()))
            } else if path.ends_with("/manifest") {
                hyper::Response::new(http::full(manifest_of(1, 4096).to_bytes().unwrap()))
            } else {
                // a chunk header announcing 1 MiB, then a byte of it every
                // 50 ms for at most 20 s: never a whole chunk
                let stream = futures::stream::unfold(0u32, |n| async move {
                    if n >= 400 {
                        return None;
                    }
                    let data = if n == 0 {
                        let mut h = (CHUNK as u32).to_le_bytes().to_vec();
                        h.extend_from_slice(&4096u32.to_le_bytes());
                        Bytes::from(h)
                    } else {
                        crate::rt::sleep(std::time::Duration::from_millis(50)).await;
                        Bytes::from_static(&[0])
                    };
                    let frame = hyper::body::Frame::data(data);
                    Some((Ok::<_, std::io::Error>(frame), n + 1))
                });
                hyper::Response::new(Box::pin(http_body_util::StreamBody::new(stream)) as http::Body)
            }
        }));
        let limits = PullLimits {
            stall: std::time::Duration::from_secs(2),
            ..Default::default()
        };
        let start = Instant::now();
        let e = pull_into(peer.addr, &target, limits).to_string();
        let took = start.elapsed();
        assert!(
            took < std::time::Duration::from_secs(10),
            "{e} after {took:?}"
        );
        assert!(e.contains("bytes/s"), "{e}");
    }

    /// A peer announcing a version above 9,999,999,999 (no room in the
    /// 10-digit directory name) is refused before anything is written
    /// (issue 9), by the puller and by the follower's version probe.
    #[test]
    fn issue_9_a_version_too_large_for_its_directory_is_refused() {
        let peer = FakePeer::two(
            cluster_bytes(),
            manifest_of(super::super::MAX_VERSION + 1, 4096)
                .to_bytes()
                .unwrap(),
        );
        let addr = peer.addr;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("idx");
        let e = pull_blocking(addr, None, 0, &target, &PullLimits::default()).unwrap_err();
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
