//! The source side of replication: `GET /v1/cluster`,
//! `/v1/shards/S/manifest` and `/v1/shards/S/segments/V/files/F`.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use shardann_engine::layout::CLUSTER_FILE;
use shardann_engine::layout::{self, Manifest, MANIFEST_FILE};
use shardann_engine::shard;

use super::{CHUNK, LEVEL, MAX_VERSION};
use crate::error::{Result, ServerError};
use crate::http::Body;
use crate::node::Node;

/// Why a replication request is refused. [`crate::http::status`] gives
/// each its status (401, 400 or 404).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("replication needs the cluster token (authorization: Bearer …)")]
    Unauthorized,
    #[error("{CLUSTER_FILE}: {source} (a plain index has no cluster.json)")]
    NoClusterFile {
        #[source]
        source: std::io::Error,
    },
    #[error("this node does not serve shard {shard}")]
    NotServed { shard: u32 },
    #[error("no shard {shard}")]
    NoShard { shard: u32 },
    #[error(
        "shard {shard} is not a sealed segment ({source}); rebuild it with this version of shardann"
    )]
    NotSealed {
        shard: u32,
        #[source]
        source: std::io::Error,
    },
    /// The engine's error names the file it could not read; the peer is
    /// told only which version, the node's log has the rest.
    #[error("shard {shard} has no version {version}")]
    NoVersion { shard: u32, version: u64 },
    /// A file of a served shard could not be read here (a 500): the
    /// reason, with its paths, goes to the node's log, not to the peer.
    #[error("shard {shard}: this node could not read its files (the node's log says why)")]
    Unreadable { shard: u32 },
    #[error("{name:?} is not a file of shard {shard} version {version}")]
    NotListed {
        name: String,
        shard: u32,
        version: u64,
    },
    #[error("offset {offset} is past the end of {name} ({size} bytes)")]
    OffsetPastEnd {
        offset: u64,
        name: String,
        size: u64,
    },
    #[error("{given:?} is not a shard id (decimal, without sign or leading zeros)")]
    BadShard { given: String },
    #[error(
        "{given:?} is not a version (1..={MAX_VERSION} in decimal, without sign or leading zeros)"
    )]
    BadVersion { given: String },
    #[error("offset {given:?} is not a byte offset (decimal, without sign or leading zeros)")]
    BadOffset { given: String },
}

/// Checks the `authorization: Bearer TOKEN` header against the node's
/// `cluster_token`, when it has one.
pub fn authorize(node: &Node, headers: &hyper::HeaderMap) -> Result<(), Refusal> {
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
        Err(Refusal::Unauthorized)
    }
}

/// `GET /v1/cluster`: the bytes of `cluster.json`.
pub fn cluster_file(node: &Node) -> Result<Vec<u8>, Refusal> {
    let path = node.config.index_dir.join(CLUSTER_FILE);
    std::fs::read(&path).map_err(|source| Refusal::NoClusterFile { source })
}

fn local_shard_dir(node: &Node, shard: u32) -> Result<PathBuf, Refusal> {
    if node.local_shard(shard).is_none() {
        return Err(Refusal::NotServed { shard });
    }
    node.shard_dir(shard).ok_or(Refusal::NoShard { shard })
}

/// `GET /v1/shards/S/manifest`: the current segment's `segment.json`, as
/// stored (the puller checks its checksum).
pub fn manifest_file(node: &Node, shard: u32) -> Result<Vec<u8>> {
    let dir = local_shard_dir(node, shard)?;
    let seg = shard::resolve(&dir).map_err(|e| unreadable(node, shard, &e))?;
    std::fs::read(seg.join(MANIFEST_FILE))
        .map_err(|source| Refusal::NotSealed { shard, source }.into())
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
) -> Result<(Body, u64)> {
    let dir = local_shard_dir(node, s)?.join(layout::version_dir_name(version));
    let m = Manifest::read(&dir).map_err(|e| {
        log(node, s, &e);
        Refusal::NoVersion { shard: s, version }
    })?;
    let entry = m.file(name).ok_or_else(|| Refusal::NotListed {
        name: name.to_string(),
        shard: s,
        version,
    })?;
    if offset > entry.size {
        return Err(Refusal::OffsetPastEnd {
            offset,
            name: name.to_string(),
            size: entry.size,
        }
        .into());
    }
    let path = dir.join(name);
    let file = crate::rt::file::ChunkFile::open(&path)
        .await
        .map_err(|e| unreadable(node, s, &ServerError::io(&path, e)))?;
    let size = entry.size;
    let stream = futures::stream::unfold((file, offset), move |(file, pos)| async move {
        if pos >= size {
            file.close().await;
            return None;
        }
        let want = CHUNK.min((size - pos) as usize);
        let item = match file.read_at(pos, want).await {
            Ok(raw) if raw.len() == want => encode_chunk(&raw).map(|b| Frame::data(Bytes::from(b))),
            Ok(raw) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("short read: {} of {want} bytes at {pos}", raw.len()),
            )),
            Err(e) => Err(e),
        };
        Some((item, (file, pos + want as u64)))
    });
    Ok((Box::pin(StreamBody::new(stream)), size - offset))
}

/// Logs why shard `shard`'s files could not be read, paths included.
fn log(node: &Node, shard: u32, e: &dyn std::fmt::Display) {
    eprintln!(
        "node {}: replication of shard {shard}: {e}",
        node.config.node_id
    );
}

/// `e` logged, and refused to the peer without the paths it names.
fn unreadable(node: &Node, shard: u32, e: &dyn std::fmt::Display) -> Refusal {
    log(node, shard, e);
    Refusal::Unreadable { shard }
}

fn encode_chunk(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let z = zstd::bulk::compress(raw, LEVEL)?;
    let mut out = Vec::with_capacity(8 + z.len());
    out.extend_from_slice(&(z.len() as u32).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&z);
    Ok(out)
}

/// A number in a URL in its one canonical decimal form: ASCII digits, no
/// sign, no leading zero (`0` itself excepted). Rust's `parse` also takes
/// `+1` and `01`, which would give one shard, version or offset several
/// names.
fn parse_canonical<T: std::str::FromStr>(s: &str) -> Option<T> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// A version in a URL: canonical decimal in `1..=MAX_VERSION`, so that it
/// names one version directory.
pub fn parse_version(s: &str) -> Option<u64> {
    parse_canonical::<u64>(s).filter(|v| (1..=MAX_VERSION).contains(v))
}

/// A shard id in a URL, in canonical decimal.
pub fn parse_shard(s: &str) -> Result<u32, Refusal> {
    parse_canonical(s).ok_or_else(|| Refusal::BadShard {
        given: s.to_string(),
    })
}

/// `GET /v1/shards/{shard}/segments/{version}/files/{name}?offset=N`, its
/// URL components checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest<'a> {
    pub shard: u32,
    pub version: u64,
    pub name: &'a str,
    pub offset: u64,
}

impl<'a> FileRequest<'a> {
    /// Checks the path components and the query (`offset` defaults to 0).
    pub fn parse(
        shard: &str,
        version: &str,
        name: &'a str,
        query: Option<&str>,
    ) -> Result<Self, Refusal> {
        let v = parse_version(version).ok_or_else(|| Refusal::BadVersion {
            given: version.to_string(),
        })?;
        let offset =
            match query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("offset="))) {
                Some(o) => parse_canonical::<u64>(o).ok_or_else(|| Refusal::BadOffset {
                    given: o.to_string(),
                })?,
                None => 0,
            };
        Ok(FileRequest {
            shard: parse_shard(shard)?,
            version: v,
            name,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(10),
            ..ProptestConfig::default()
        })]

        /// Issue 10 (fuzz): any URL components a peer sends are a
        /// `FileRequest` whose numbers print back as they were given (one
        /// name per number), or a refusal; never a panic.
        #[test]
        fn any_url_parses_canonically_or_is_refused(
            shard in "[-+0-9a-z]{0,12}",
            version in "[-+0-9]{0,22}",
            query in proptest::option::of("[a-z=&0-9+-]{0,30}"),
        ) {
            if let Ok(r) = FileRequest::parse(&shard, &version, "pq.bin", query.as_deref()) {
                prop_assert_eq!(r.shard.to_string(), shard);
                prop_assert_eq!(r.version.to_string(), version);
            }
        }
    }

    /// Versions in file URLs are canonical decimal and fit the 10-digit
    /// version directory name (issue 9): `01`, `+1` and 10^10 are refused
    /// with a 400 that names the version.
    #[test]
    fn issue_9_file_urls_take_only_canonical_versions() {
        let f = FileRequest::parse("2", "9999999999", "pq.bin", Some("offset=5")).unwrap();
        assert_eq!(
            (f.shard, f.version, f.name, f.offset),
            (2, 9_999_999_999, "pq.bin", 5)
        );
        for v in [
            "01",
            "+1",
            "0",
            "10000000000",
            "18446744073709551615",
            "",
            "1e3",
        ] {
            let e = FileRequest::parse("2", v, "pq.bin", None).unwrap_err();
            assert!(matches!(e, Refusal::BadVersion { .. }), "{v:?}: {e}");
            assert!(e.to_string().contains(&format!("{v:?}")), "{e}");
            let status = crate::http::status(&e.into());
            assert_eq!(status, hyper::StatusCode::BAD_REQUEST);
        }
        // Issue 10: shard ids and offsets too, in one form each.
        for s in ["01", "+1", "", "-0", "4294967296"] {
            assert!(FileRequest::parse(s, "1", "pq.bin", None).is_err(), "{s:?}");
        }
        for o in ["offset=+5", "offset=05", "offset=", "offset=-1"] {
            assert!(
                FileRequest::parse("0", "1", "pq.bin", Some(o)).is_err(),
                "{o:?}"
            );
        }
        let f = FileRequest::parse("0", "1", "pq.bin", Some("offset=0")).unwrap();
        assert_eq!((f.shard, f.offset), (0, 0));
    }
}
