//! A small, blocking etcd v3 client over etcd's JSON gateway.
//!
//! Why the gateway and not the `etcd-client` crate: that crate speaks gRPC
//! through tonic (a tokio runtime beside the node's own executors) and
//! compiles etcd's protobuf files at build time with `protoc`, which a fresh
//! machine lacks; the README's commands must work with a Rust toolchain and
//! a C compiler alone. etcd serves the same v3 API as JSON over HTTP/1.1 on
//! its client port (`/v3/kv/range`, `/v3/watch`, `/v3/lease/grant`, …), with
//! keys and values in base64 and 64-bit numbers as strings. The calls here
//! are plain blocking requests (`ureq`) made from the coordination threads
//! ([`crate::coord`]), never from the executors that serve queries; a watch
//! is one long response of newline-delimited JSON objects.
//!
//! Only what shardann needs is here: ranges over a prefix, puts (with a
//! lease), deletes, conditional puts in a transaction, leases, and watches.
//! With `user`/`password`, a token from `/v3/auth/authenticate` is sent in
//! the `Authorization` header, and fetched again when etcd refuses it.

use std::io::BufRead;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    #[error("no etcd endpoint is configured")]
    NoEndpoint,
    /// Not reachable (refused, timed out, reset): `endpoint` is the last
    /// endpoint tried.
    #[error("etcd at {endpoint}: {path}: {why}")]
    Unreachable {
        endpoint: String,
        path: &'static str,
        why: String,
    },
    /// etcd answered with an error status.
    #[error("etcd at {endpoint}: {path} answered {status}: {body}")]
    Status {
        endpoint: String,
        path: &'static str,
        status: u16,
        body: String,
    },
    /// An answer that is not what the v3 API returns.
    #[error("etcd at {endpoint}: {path}: unexpected answer ({why})")]
    Answer {
        endpoint: String,
        path: &'static str,
        why: String,
    },
}

pub type Result<T> = std::result::Result<T, EtcdError>;

/// One key and its value, as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// The key was deleted (or its lease expired).
    Delete {
        key: String,
        mod_revision: i64,
    },
}

/// A condition on one key for [`Etcd::put_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent,
    /// The key was last changed at this revision.
    ModRevision(i64),
}

/// Credentials for etcd's own authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// A client for one etcd cluster: its endpoints, tried in turn.
pub struct Etcd {
    endpoints: Vec<String>,
    /// Unary calls: bounded by `timeout`.
    agent: ureq::Agent,
    /// Watches: a read timeout of `watch_idle` (the watch is then opened
    /// again from where it was), so a silent peer is noticed.
    watch_agent: ureq::Agent,
    /// The endpoint that answered last, tried first.
    preferred: Mutex<usize>,
    credentials: Option<Credentials>,
    token: Mutex<Option<String>>,
}

/// How long a watch may stay silent before it is opened again.
pub const WATCH_IDLE: Duration = Duration::from_secs(30);

impl Etcd {
    /// A client for `endpoints` (`http://host:port`); each unary call gives
    /// up after `timeout`.
    pub fn new(
        endpoints: &[String],
        timeout: Duration,
        credentials: Option<Credentials>,
    ) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoint);
        }
        let endpoints = endpoints
            .iter()
            .map(|e| e.trim_end_matches('/').to_string())
            .collect();
        Ok(Etcd {
            endpoints,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .build(),
            watch_agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout_read(WATCH_IDLE)
                .build(),
            preferred: Mutex::new(0),
            credentials,
            token: Mutex::new(None),
        })
    }

    /// Every key under `prefix`, sorted, and the store's revision at the read.
    pub fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let path = "/v3/kv/range";
        let (endpoint, v) = self.call(
            path,
            json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix))}),
        )?;
        let revision = header_revision(&v).ok_or_else(|| answer(&endpoint, path, "no revision"))?;
        let kvs = match v.get("kvs") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|kv| key_value(kv).ok_or_else(|| answer(&endpoint, path, "a bad kv")))
                .collect::<Result<_>>()?,
            Some(_) => return Err(answer(&endpoint, path, "kvs is not a list")),
        };
        Ok((kvs, revision))
    }

    /// One key, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let path = "/v3/kv/range";
        let (endpoint, v) = self.call(path, json!({"key": b64(key)}))?;
        match v.get("kvs").and_then(Value::as_array) {
            None => Ok(None),
            Some(a) => a
                .first()
                .map(|kv| key_value(kv).ok_or_else(|| answer(&endpoint, path, "a bad kv")))
                .transpose(),
        }
    }

    /// Sets `key`, attached to `lease` when given (the key goes with it).
    /// Returns the revision of the change.
    pub fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64> {
        let path = "/v3/kv/put";
        let mut body = json!({"key": b64(key), "value": B64.encode(value)});
        if let Some(l) = lease {
            body["lease"] = l.to_string().into();
        }
        let (endpoint, v) = self.call(path, body)?;
        header_revision(&v).ok_or_else(|| answer(&endpoint, path, "no revision"))
    }

    /// Deletes `key`; returns how many keys went (0 or 1).
    pub fn delete(&self, key: &str) -> Result<u64> {
        let (_, v) = self.call("/v3/kv/deleterange", json!({"key": b64(key)}))?;
        Ok(num(v.get("deleted")).unwrap_or(0) as u64)
    }

    /// Sets `key` only if `cond` holds, in one transaction: never two
    /// writers at once. Returns whether it was set.
    pub fn put_if(
        &self,
        key: &str,
        cond: Compare,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<bool> {
        let compare = match cond {
            Compare::Absent => {
                json!({"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            }
            Compare::ModRevision(r) => {
                json!({"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()})
            }
        };
        let mut put = json!({"key": b64(key), "value": B64.encode(value)});
        if let Some(l) = lease {
            put["lease"] = l.to_string().into();
        }
        let (_, v) = self.call(
            "/v3/kv/txn",
            json!({"compare": [compare], "success": [{"request_put": put}]}),
        )?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// A new lease of `ttl_s` seconds; returns its id.
    pub fn grant(&self, ttl_s: u64) -> Result<i64> {
        let path = "/v3/lease/grant";
        let (endpoint, v) = self.call(path, json!({"TTL": ttl_s.to_string()}))?;
        num(v.get("ID")).ok_or_else(|| answer(&endpoint, path, "no lease id"))
    }

    /// Renews `lease`; returns the seconds it now has, 0 when it had
    /// already expired (its keys are gone).
    pub fn keep_alive(&self, lease: i64) -> Result<i64> {
        let path = "/v3/lease/keepalive";
        let (endpoint, v) = self.call(path, json!({"ID": lease.to_string()}))?;
        // A stream of one: {"result": {..., "TTL": "5"}}, no TTL once
        // expired; or {"error": {...}} when etcd could not renew it (then
        // the lease's fate is unknown: not "expired").
        if let Some(err) = v.get("error") {
            return Err(answer(&endpoint, path, &err.to_string()));
        }
        Ok(num(v.get("result").and_then(|r| r.get("TTL"))).unwrap_or(0))
    }

    /// Ends `lease` now: its keys are deleted at once.
    pub fn revoke(&self, lease: i64) -> Result<()> {
        self.call("/v3/lease/revoke", json!({"ID": lease.to_string()}))
            .map(|_| ())
    }

    /// Watches every key under `prefix` from `from_revision` on.
    pub fn watch_prefix(&self, prefix: &str, from_revision: i64) -> Result<Watch> {
        let path = "/v3/watch";
        let body = json!({"create_request": {
            "key": b64(prefix),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": from_revision.to_string(),
        }});
        let (endpoint, resp) = self.request(&self.watch_agent, path, &body)?;
        Ok(Watch {
            endpoint,
            reader: std::io::BufReader::new(resp.into_reader()),
            line: String::new(),
        })
    }

    /// One unary call; returns the endpoint that answered and its JSON.
    fn call(&self, path: &'static str, body: Value) -> Result<(String, Value)> {
        let (endpoint, resp) = self.request(&self.agent, path, &body)?;
        let v: Value = resp
            .into_json()
            .map_err(|e| answer(&endpoint, path, &e.to_string()))?;
        Ok((endpoint, v))
    }

    /// Sends `body` to `path` at each endpoint in turn, from the one that
    /// answered last, until one answers; authenticates first when
    /// credentials are configured (and once more when the token is refused).
    fn request(
        &self,
        agent: &ureq::Agent,
        path: &'static str,
        body: &Value,
    ) -> Result<(String, ureq::Response)> {
        let first = *self.preferred.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = None;
        for i in 0..self.endpoints.len() {
            let at = (first + i) % self.endpoints.len();
            let endpoint = &self.endpoints[at];
            let mut retried_auth = false;
            loop {
                let token = match self.token(agent, endpoint) {
                    Ok(t) => t,
                    Err(e @ EtcdError::Unreachable { .. }) => {
                        last = Some(e);
                        break; // the next endpoint may answer
                    }
                    Err(e) => return Err(e),
                };
                let mut req = agent.post(&format!("{endpoint}{path}"));
                if let Some(t) = &token {
                    req = req.set("Authorization", t);
                }
                match req.send_json(body) {
                    Ok(resp) => {
                        *self.preferred.lock().unwrap_or_else(|e| e.into_inner()) = at;
                        return Ok((endpoint.clone(), resp));
                    }
                    Err(ureq::Error::Status(status, resp)) => {
                        let text = resp.into_string().unwrap_or_default();
                        if self.credentials.is_some()
                            && !retried_auth
                            && (status == 401 || text.contains("invalid auth token"))
                        {
                            // An expired token: fetch a new one, once.
                            *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                            retried_auth = true;
                            continue;
                        }
                        let e = EtcdError::Status {
                            endpoint: endpoint.clone(),
                            path,
                            status,
                            body: text.chars().take(300).collect(),
                        };
                        if status >= 500 {
                            // This member is unwell (no leader, shutting
                            // down): another may answer.
                            last = Some(e);
                            break;
                        }
                        return Err(e);
                    }
                    Err(e) => {
                        last = Some(EtcdError::Unreachable {
                            endpoint: endpoint.clone(),
                            path,
                            why: e.to_string(),
                        });
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or(EtcdError::NoEndpoint))
    }

    /// The auth token to send, fetched when credentials are set and none
    /// is held.
    fn token(&self, agent: &ureq::Agent, endpoint: &str) -> Result<Option<String>> {
        let Some(c) = &self.credentials else {
            return Ok(None);
        };
        if let Some(t) = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(Some(t));
        }
        let path = "/v3/auth/authenticate";
        let resp = agent
            .post(&format!("{endpoint}{path}"))
            .send_json(json!({"name": c.user, "password": c.password}));
        let v: Value = match resp {
            Ok(r) => r
                .into_json()
                .map_err(|e| answer(endpoint, path, &e.to_string()))?,
            Err(ureq::Error::Status(status, r)) => {
                return Err(EtcdError::Status {
                    endpoint: endpoint.to_string(),
                    path,
                    status,
                    body: r.into_string().unwrap_or_default(),
                })
            }
            Err(e) => {
                return Err(EtcdError::Unreachable {
                    endpoint: endpoint.to_string(),
                    path,
                    why: e.to_string(),
                })
            }
        };
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| answer(endpoint, path, "no token"))?
            .to_string();
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        Ok(Some(token))
    }
}

/// An open watch: blocks for the next batch of changes.
pub struct Watch {
    endpoint: String,
    reader: std::io::BufReader<Box<dyn std::io::Read + Send + Sync + 'static>>,
    line: String,
}

/// What a watch saw next.
#[derive(Debug)]
pub enum WatchUpdate {
    /// Changes, in order, and the revision they bring the store to.
    Events(Vec<Event>, i64),
    /// The watch is over: its start revision was compacted away, or etcd
    /// cancelled it. Read the whole prefix again.
    Cancelled,
}

impl Watch {
    /// The next batch of changes; an error when the stream broke (etcd
    /// went away, or nothing came for [`WATCH_IDLE`]).
    pub fn next_update(&mut self) -> Result<WatchUpdate> {
        let path = "/v3/watch";
        loop {
            self.line.clear();
            let n = self
                .reader
                .read_line(&mut self.line)
                .map_err(|e| EtcdError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    path,
                    why: e.to_string(),
                })?;
            if n == 0 {
                return Err(EtcdError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    path,
                    why: "the watch stream ended".into(),
                });
            }
            if self.line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&self.line)
                .map_err(|e| answer(&self.endpoint, path, &e.to_string()))?;
            if let Some(err) = v.get("error") {
                return Err(answer(&self.endpoint, path, &err.to_string()));
            }
            let Some(r) = v.get("result") else {
                return Err(answer(&self.endpoint, path, "no result"));
            };
            if r.get("canceled").and_then(Value::as_bool) == Some(true)
                || num(r.get("compact_revision")).is_some_and(|c| c > 0)
            {
                return Ok(WatchUpdate::Cancelled);
            }
            let revision = header_revision(r).unwrap_or(0);
            let Some(events) = r.get("events").and_then(Value::as_array) else {
                continue; // the "created" message, or a progress note
            };
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                let kv = e
                    .get("kv")
                    .ok_or_else(|| answer(&self.endpoint, path, "an event without kv"))?;
                if e.get("type").and_then(Value::as_str) == Some("DELETE") {
                    let key = kv
                        .get("key")
                        .and_then(Value::as_str)
                        .and_then(unb64)
                        .ok_or_else(|| answer(&self.endpoint, path, "a bad key"))?;
                    out.push(Event::Delete {
                        key,
                        mod_revision: num(kv.get("mod_revision")).unwrap_or(0),
                    });
                } else {
                    out.push(Event::Put(
                        key_value(kv).ok_or_else(|| answer(&self.endpoint, path, "a bad kv"))?,
                    ));
                }
            }
            return Ok(WatchUpdate::Events(out, revision));
        }
    }
}

fn answer(endpoint: &str, path: &'static str, why: &str) -> EtcdError {
    EtcdError::Answer {
        endpoint: endpoint.to_string(),
        path,
        why: why.to_string(),
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(s: &str) -> Option<String> {
    String::from_utf8(B64.decode(s).ok()?).ok()
}

/// A 64-bit number as the gateway writes it: a string (or, rarely, a number).
fn num(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn header_revision(v: &Value) -> Option<i64> {
    num(v.get("header")?.get("revision"))
}

fn key_value(kv: &Value) -> Option<KeyValue> {
    Some(KeyValue {
        key: unb64(kv.get("key")?.as_str()?)?,
        // An empty value is left out of the JSON.
        value: match kv.get("value") {
            None => Vec::new(),
            Some(v) => B64.decode(v.as_str()?).ok()?,
        },
        create_revision: num(kv.get("create_revision")).unwrap_or(0),
        mod_revision: num(kv.get("mod_revision")).unwrap_or(0),
        lease: num(kv.get("lease")).unwrap_or(0),
    })
}

/// The end of the range of keys starting with `prefix`: the prefix with
/// its last byte incremented (etcd's `range_end` convention). Prefixes
/// here are ASCII and end in `/`.
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).unwrap_or_default();
        }
    }
    "\0".into() // every key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_the_next_prefix_starts() {
        assert_eq!(prefix_end("/shardann/a/"), "/shardann/a0");
        assert_eq!(prefix_end("a"), "b");
    }

    #[test]
    fn gateway_json_is_read_as_etcd_writes_it() {
        let kv = json!({"key": "Zm9v", "create_revision": "2", "mod_revision": "3",
                        "version": "2", "value": "YmF6", "lease": "7587"});
        let kv = key_value(&kv).unwrap();
        assert_eq!(kv.key, "foo");
        assert_eq!(kv.value, b"baz");
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.lease),
            (2, 3, 7587)
        );
        let empty = key_value(&json!({"key": "Zm9v"})).unwrap();
        assert!(empty.value.is_empty());
        assert_eq!(num(Some(&json!(5))), Some(5));
        assert_eq!(num(Some(&json!("x"))), None);
    }

    #[test]
    fn no_endpoint_is_an_error() {
        assert!(matches!(
            Etcd::new(&[], Duration::from_secs(1), None),
            Err(EtcdError::NoEndpoint)
        ));
    }
}
