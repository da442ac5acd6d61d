//! The source side of replication: `GET /v1/cluster`,
//! `/v1/shards/S/manifest` and `/v1/shards/S/segments/V/files/F`.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use shardann_engine::cluster::CLUSTER_FILE;
use shardann_engine::segment::{self, Manifest, MANIFEST_FILE};

use super::{CHUNK, CHUNKS_CONTENT_TYPE, LEVEL};
use crate::node::Node;

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
