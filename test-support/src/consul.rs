//! A faithful in-process fake of the Consul agent's HTTP API, for what a real dev agent
//! (`crate::consul_agent`) cannot show in a test: Consul 1.11+ answers, a client agent restart
//! that keeps KV, injected faults, leader loss, ACL denials, TLS and scaled time. The tests
//! check its answers against a real Consul 1.8.7 agent's.
//!
//! What it does like Consul:
//! - case-insensitive JSON bodies; plain-text errors; `true`/`false` bodies for KV and session
//!   writes;
//! - a TTL check starts `critical` unless registered `passing`; it goes critical when its TTL
//!   passes without a pass; a pass for an unknown check is 404 (or, with `pre_1_11`, the old 500
//!   text); the reaper removes a service whose check stayed critical longer than
//!   `DeregisterCriticalServiceAfter` (at least 1 minute);
//! - `/v1/health/service` with `passing` and `tag`, and `X-Consul-Index` (never 0),
//!   `X-Consul-KnownLeader` and blocking queries (`index`, `wait`);
//! - sessions with a TTL between 10 s and 24 h (else 500), expiring at up to twice the TTL,
//!   invalidated when a check they are tied to goes critical; lock-delay after an invalidated or
//!   destroyed holder (an explicit release sets none);
//! - KV `acquire`/`release`/`cas`;
//! - ACLs: an unknown token gets 403 `ACL not found`; a denied path gets `Permission denied`,
//!   optionally with the `rpc error making call: ` prefix.
//!
//! Time runs `scale` times faster than the durations the client sends (the clock is scaled), so
//! a 10 s session TTL can expire in a second. Test hooks: agent restart (services, checks and
//! sessions lost), per-path faults, a leaderless switch, a request log.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
struct Service {
    id: String,
    body: Value,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Clone)]
struct Check {
    service_id: String,
    ttl: Duration,
    status: String,
    last_pass: Instant,
    critical_since: Option<Instant>,
    deregister_after: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Session {
    ttl: Option<Duration>,
    lock_delay: Duration,
    checks: Vec<String>,
    expires: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
    session: Option<String>,
}

impl Entry {
    /// A key created at `index`: empty, unlocked.
    fn new(index: u64) -> Entry {
        Entry {
            value: Vec::new(),
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        }
    }
}

#[derive(Default)]
struct State {
    index: u64,
    /// The highest index of a KV write (deletions included).
    kv_index: u64,
    /// The highest index of a service or check change.
    health_index: u64,
    uid: u64,
    services: BTreeMap<String, Service>,
    checks: BTreeMap<String, Check>,
    sessions: BTreeMap<String, Session>,
    kv: BTreeMap<String, Entry>,
    lock_delays: BTreeMap<String, Instant>,
    /// When set, only these tokens are accepted.
    tokens: Option<BTreeSet<String>>,
    /// Path prefixes the ACLs deny.
    denied: BTreeSet<String>,
    rpc_prefix: bool,
    pre_1_11: bool,
    leaderless: bool,
    /// Health reads say ACLs filtered rows out.
    filtered: bool,
    /// Path prefix → (status, body) answered instead.
    faults: BTreeMap<String, (u16, String)>,
    /// Path prefix → extra delay before answering.
    delays: BTreeMap<String, Duration>,
    /// Path prefixes whose connections are dropped without an answer.
    drops: BTreeSet<String>,
    log: Vec<String>,
}

/// The running fake agent.
pub struct FakeConsul {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    scale: f64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Parses a Go duration (`"30s"`, `"1500ms"`, `"1m30s"`) or a number of seconds.
fn go_duration(v: &Value) -> Option<Duration> {
    if let Some(n) = v.as_u64() {
        return Some(if n < 1000 {
            Duration::from_secs(n)
        } else {
            Duration::from_nanos(n)
        });
    }
    let text = v.as_str()?;
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push('s');
            chars.next();
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        total += Duration::from_secs_f64(match unit.as_str() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        });
    }
    if !num.is_empty() {
        return None;
    }
    Some(total)
}

/// A field of a JSON object, whatever the case of its key.
fn field<'a>(obj: &'a Value, name: &str) -> &'a Value {
    obj.as_object()
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name) || k.replace('_', "").eq_ignore_ascii_case(name))
        })
        .map(|(_, v)| v)
        .unwrap_or(&Value::Null)
}

type Answer = (u16, String, Vec<(&'static str, String)>);

fn text(code: u16, body: impl Into<String>) -> Answer {
    (code, body.into(), Vec::new())
}

impl State {
    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// The index a blocking read of `path` waits past: a KV key's ModifyIndex (the KV table's
    /// highest index when it is absent), the service's highest index for health.
    fn index_of(&self, path: &str) -> u64 {
        if let Some(key) = path.strip_prefix("/v1/kv/") {
            return match self.kv.get(key) {
                Some(e) => e.modify_index,
                None => self.kv_index,
            };
        }
        if path.starts_with("/v1/health/service/") {
            return self.health_index;
        }
        self.index
    }

    /// Invalidates a session: its keys are released with a lock-delay.
    fn invalidate(&mut self, id: &str) {
        let Some(s) = self.sessions.remove(id) else { return };
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        let idx = self.bump();
        for k in held {
            if let Some(e) = self.kv.get_mut(&k) {
                e.session = None;
                e.modify_index = idx;
            }
            if !s.lock_delay.is_zero() {
                self.lock_delays.insert(k, Instant::now() + s.lock_delay);
            }
        }
    }

    fn session_json(&self, id: &str, s: &Session) -> Value {
        // As Consul 1.8 shows a session: created with a legacy `Checks` list, those and the
        // node's serfHealth as a node check (always passing here); with `"Checks": []`, TTL-only
        // (no node checks).
        let ttl = s.ttl.map(|t| format!("{}s", t.as_secs())).unwrap_or_default();
        let mut v = json!({"ID": id, "TTL": ttl, "LockDelay": s.lock_delay.as_nanos() as u64,
                           "Behavior": "release", "NodeChecks": [], "ServiceChecks": null});
        if !s.checks.is_empty() {
            v["Checks"] = json!(s.checks);
            v["NodeChecks"] = json!(["serfHealth"]);
        }
        v
    }
}

struct Ctx {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    scale: f64,
}

impl Ctx {
    fn real(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale)
    }
}

/// Ends a connection without an answer (hyper closes it when the service fails).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

async fn answer(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
    let path = req.uri().path().to_string();
    let (delay, drop) = {
        let s = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        let delay = s
            .delays
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, d)| *d);
        (delay, s.drops.iter().any(|p| path.starts_with(p.as_str())))
    };
    if drop {
        return Err(Dropped);
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    let q: BTreeMap<String, String> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let token = parts
        .headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let (code, body, headers) = handle(
        &ctx,
        &parts.method,
        &path,
        &q,
        token,
        &body,
        parts.uri.query().unwrap_or(""),
    )
    .await;
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    Ok(r)
}

fn index_headers(s: &State, index: u64) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("X-Consul-Index", index.max(1).to_string()),
        ("X-Consul-KnownLeader", (!s.leaderless).to_string()),
        ("X-Consul-LastContact", "0".into()),
        ("Content-Type", "application/json".into()),
    ];
    if s.filtered {
        h.push(("X-Consul-Results-Filtered-By-ACLs", "true".into()));
    }
    h
}

async fn handle(
    ctx: &Ctx,
    method: &Method,
    path: &str,
    q: &BTreeMap<String, String>,
    token: Option<String>,
    body: &[u8],
    raw_query: &str,
) -> Answer {
    {
        let mut s = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        s.log.push(format!("{method} {path}?{raw_query}"));
        if let Some((code, body)) = s
            .faults
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, f)| f.clone())
        {
            return text(code, body);
        }
        if let Some(tokens) = &s.tokens
            && !token.as_ref().is_some_and(|t| tokens.contains(t))
        {
            return text(403, "ACL not found");
        }
        if s.denied.iter().any(|p| path.starts_with(p.as_str())) {
            let prefix = if s.rpc_prefix {
                "rpc error making call: "
            } else {
                ""
            };
            return text(403, format!("{prefix}Permission denied"));
        }
        if s.leaderless && q.contains_key("consistent") {
            return text(500, "No cluster leader");
        }
    }
    // Blocking reads wait (outside the lock) for a change past `index`, at most `wait`.
    let block = q
        .get("index")
        .and_then(|i| i.parse::<u64>().ok())
        .filter(|i| *i > 0);
    if let Some(want) = block
        && *method == Method::GET
    {
        let wait = q
            .get("wait")
            .and_then(|w| go_duration(&json!(w)))
            .unwrap_or(Duration::from_secs(300));
        let until = tokio::time::Instant::now() + ctx.real(wait.min(Duration::from_secs(600)));
        loop {
            let notified = ctx.changed.notified();
            if ctx.state.lock().unwrap_or_else(|e| e.into_inner()).index_of(path) > want {
                break;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                break;
            }
        }
    }
    let mut s = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let before = s.index;
    let ans = route(ctx, &mut s, method, path, q, body);
    if s.index != before {
        if path.starts_with("/v1/kv/") || path.starts_with("/v1/session/") {
            s.kv_index = s.index;
        } else if path.starts_with("/v1/agent/") {
            s.health_index = s.index;
        }
        ctx.changed.notify_waiters();
    }
    ans
}

fn route(
    ctx: &Ctx,
    s: &mut State,
    method: &Method,
    path: &str,
    q: &BTreeMap<String, String>,
    body: &[u8],
) -> Answer {
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    let tail = |prefix: &str| path.strip_prefix(prefix).map(String::from);
    match (method.as_str(), path) {
        ("PUT", "/v1/agent/service/register") => {
            if !body.is_empty() && parsed.is_null() {
                return text(400, "Request decode failed: invalid JSON");
            }
            let Some(name) = field(&parsed, "Name")
                .as_str()
                .filter(|n| !n.is_empty())
                .map(String::from)
            else {
                return text(400, "Missing service name");
            };
            let id = field(&parsed, "ID").as_str().unwrap_or(&name).to_string();
            let check = field(&parsed, "Check");
            let idx = s.bump();
            if !check.is_null() {
                let Some(ttl) = go_duration(field(check, "TTL")).filter(|t| !t.is_zero()) else {
                    return text(400, "Invalid check: TTL must be > 0 for TTL checks");
                };
                let cid = field(check, "CheckID")
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("service:{id}"));
                let status = field(check, "Status").as_str().unwrap_or("critical").to_string();
                let dereg = go_duration(field(check, "DeregisterCriticalServiceAfter"))
                    .map(|d| d.max(Duration::from_secs(60)));
                let previous = s.checks.get(&cid).map(|c| c.status.clone());
                let status = previous.unwrap_or(status);
                let critical_since = (status == "critical").then(Instant::now);
                s.checks.insert(
                    cid,
                    Check {
                        service_id: id.clone(),
                        ttl,
                        status,
                        last_pass: Instant::now(),
                        critical_since,
                        deregister_after: dereg,
                    },
                );
            }
            let create_index = s.services.get(&id).map(|x| x.create_index).unwrap_or(idx);
            s.services.insert(
                id.clone(),
                Service {
                    id,
                    body: parsed.clone(),
                    create_index,
                    modify_index: idx,
                },
            );
            text(200, "")
        }
        ("PUT", p) if p.starts_with("/v1/agent/service/deregister/") => {
            let id = tail("/v1/agent/service/deregister/").unwrap_or_default();
            if s.services.remove(&id).is_none() {
                return if s.pre_1_11 {
                    text(200, "")
                } else {
                    text(
                        404,
                        format!(
                            "Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."
                        ),
                    )
                };
            }
            s.checks.retain(|_, c| c.service_id != id);
            s.bump();
            text(200, "")
        }
        ("GET", p) if p.starts_with("/v1/agent/service/") => {
            let id = tail("/v1/agent/service/").unwrap_or_default();
            match s.services.get(&id) {
                Some(svc) => (
                    200,
                    json!({"ID": svc.id, "Service": field(&svc.body, "Name")}).to_string(),
                    Vec::new(),
                ),
                None => text(404, format!("unknown service ID: {id}")),
            }
        }
        ("PUT", p)
            if ["pass/", "warn/", "fail/"]
                .iter()
                .any(|v| p.starts_with(&format!("/v1/agent/check/{v}"))) =>
        {
            let (verb, id) = p
                .trim_start_matches("/v1/agent/check/")
                .split_once('/')
                .map(|(v, i)| (v.to_string(), i.to_string()))
                .unwrap_or_default();
            let status = match verb.as_str() {
                "pass" => "passing",
                "warn" => "warning",
                _ => "critical",
            };
            match s.checks.get_mut(&id) {
                Some(c) => {
                    // An update of any status resets the TTL timer.
                    c.last_pass = Instant::now();
                    let changed = c.status != status;
                    if changed && status == "critical" {
                        c.critical_since = Some(Instant::now());
                    } else if status != "critical" {
                        c.critical_since = None;
                    }
                    c.status = status.into();
                    if changed {
                        s.bump();
                    }
                    text(200, "")
                }
                None if s.pre_1_11 => text(500, format!("CheckID \"{id}\" does not have associated TTL")),
                None => text(
                    404,
                    format!(
                        "Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."
                    ),
                ),
            }
        }
        ("GET", p) if p.starts_with("/v1/health/service/") => {
            let name = tail("/v1/health/service/").unwrap_or_default();
            let passing = q
                .get("passing")
                .is_some_and(|v| v.is_empty() || v == "1" || v == "true");
            let tag = q.get("tag");
            let mut rows = Vec::new();
            for svc in s.services.values() {
                if field(&svc.body, "Name").as_str() != Some(name.as_str()) {
                    continue;
                }
                let tags: Vec<String> = field(&svc.body, "Tags")
                    .as_array()
                    .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                if tag.is_some_and(|t| !tags.contains(t)) {
                    continue;
                }
                // The node's own serfHealth comes first, as on a real agent: `passing` filters on
                // every check of the row, the node's included.
                let checks: Vec<Value> = std::iter::once(
                    json!({"CheckID": "serfHealth", "Status": "passing", "ServiceID": "", "Type": ""}),
                )
                .chain(s.checks.iter().filter(|(_, c)| c.service_id == svc.id).map(
                    |(id, c)| json!({"CheckID": id, "Status": c.status, "ServiceID": svc.id, "Type": "ttl"}),
                ))
                .collect();
                if passing && checks.iter().any(|c| c["Status"] != "passing") {
                    continue;
                }
                rows.push(json!({
                    "Node": {"Node": "fake-agent", "Address": "127.0.0.1"},
                    "Service": {"ID": svc.id, "Service": name, "Tags": tags,
                                "Address": field(&svc.body, "Address").as_str().unwrap_or(""),
                                "Port": field(&svc.body, "Port").as_u64().unwrap_or(0), "Meta": field(&svc.body, "Meta"),
                                "CreateIndex": svc.create_index, "ModifyIndex": svc.modify_index},
                    "Checks": checks,
                }));
            }
            (200, Value::Array(rows).to_string(), index_headers(s, s.index))
        }
        ("PUT", "/v1/session/create") => {
            let ttl = match field(&parsed, "TTL") {
                Value::Null => None,
                v => match go_duration(v) {
                    Some(t) if t >= Duration::from_secs(10) && t <= Duration::from_secs(86_400) => Some(t),
                    Some(t) => {
                        return text(
                            500,
                            format!(
                                "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
                                t.as_nanos()
                            ),
                        );
                    }
                    None => return text(500, format!("Session TTL '{v}' invalid")),
                },
            };
            let lock_delay = go_duration(field(&parsed, "LockDelay"))
                .unwrap_or(Duration::from_secs(15))
                .min(Duration::from_secs(60));
            let checks: Vec<String> = field(&parsed, "Checks")
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
                .unwrap_or_else(|| vec!["serfHealth".into()]);
            for c in &checks {
                if c == "serfHealth" {
                    continue;
                }
                match s.checks.get(c) {
                    None => return text(500, format!("Missing check '{c}' registration")),
                    Some(k) if k.status == "critical" => {
                        return text(500, format!("Check '{c}' is in critical state"));
                    }
                    Some(_) => {}
                }
            }
            s.uid += 1;
            let id = format!("00000000-0000-0000-0000-{:012}", s.uid);
            let expires = ttl.map(|t| Instant::now() + ctx.real(t * 2));
            s.sessions.insert(
                id.clone(),
                Session {
                    ttl,
                    lock_delay: ctx.real(lock_delay),
                    checks,
                    expires,
                },
            );
            s.bump();
            (200, json!({"ID": id}).to_string(), Vec::new())
        }
        ("PUT", p) if p.starts_with("/v1/session/renew/") => {
            let id = tail("/v1/session/renew/").unwrap_or_default();
            let real = ctx.scale;
            match s.sessions.get_mut(&id) {
                Some(sess) => {
                    sess.expires = sess.ttl.map(|t| Instant::now() + (t * 2).mul_f64(real));
                    let out = json!([{"ID": id, "TTL": sess.ttl.map(|t| format!("{}s", t.as_secs())).unwrap_or_default()}]);
                    (200, out.to_string(), Vec::new())
                }
                None => text(404, format!("Session id '{id}' not found")),
            }
        }
        ("PUT", p) if p.starts_with("/v1/session/destroy/") => {
            let id = tail("/v1/session/destroy/").unwrap_or_default();
            s.invalidate(&id);
            text(200, "true")
        }
        ("GET", p) if p.starts_with("/v1/session/info/") => {
            let id = tail("/v1/session/info/").unwrap_or_default();
            let rows: Vec<Value> = s
                .sessions
                .get(&id)
                .map(|x| s.session_json(&id, x))
                .into_iter()
                .collect();
            (200, Value::Array(rows).to_string(), index_headers(s, s.index))
        }
        (m, p) if p.starts_with("/v1/kv/") => kv(s, m, &tail("/v1/kv/").unwrap_or_default(), q, body),
        _ => text(405, format!("method {method} not allowed")),
    }
}

fn kv(s: &mut State, method: &str, key: &str, q: &BTreeMap<String, String>, body: &[u8]) -> Answer {
    if key.is_empty() {
        return text(400, "Missing key name");
    }
    match method {
        "GET" => {
            let idx = s.index;
            match s.kv.get(key) {
                None => (404, String::new(), index_headers(s, idx)),
                Some(e) if q.contains_key("raw") => (
                    200,
                    String::from_utf8_lossy(&e.value).into_owned(),
                    index_headers(s, e.modify_index),
                ),
                Some(e) => {
                    use base64::Engine;
                    let b64 = (!e.value.is_empty())
                        .then(|| base64::engine::general_purpose::STANDARD.encode(&e.value));
                    let mut entry = json!({"Key": key, "CreateIndex": e.create_index, "ModifyIndex": e.modify_index,
                                           "LockIndex": e.lock_index, "Flags": 0, "Value": b64});
                    if let Some(sess) = &e.session {
                        entry["Session"] = json!(sess);
                    }
                    (200, json!([entry]).to_string(), index_headers(s, e.modify_index))
                }
            }
        }
        "PUT" => {
            let flags = ["cas", "acquire", "release"]
                .iter()
                .filter(|f| q.contains_key(**f))
                .count();
            if flags > 1 {
                return text(400, "Conflicting flags: cas=, acquire=, release= are exclusive");
            }
            if let Some(sid) = q.get("acquire") {
                if !s.sessions.contains_key(sid) {
                    return text(500, format!("invalid session \"{sid}\""));
                }
                if s.lock_delays
                    .get(key)
                    .is_some_and(|until| Instant::now() < *until)
                {
                    return text(200, "false");
                }
                let idx = s.bump();
                let e = s.kv.entry(key.to_string()).or_insert_with(|| Entry::new(idx));
                match &e.session {
                    Some(h) if h != sid => return text(200, "false"),
                    Some(_) => {}
                    None => {
                        e.session = Some(sid.clone());
                        e.lock_index += 1;
                    }
                }
                e.value = body.to_vec();
                e.modify_index = idx;
                return text(200, "true");
            }
            if let Some(sid) = q.get("release") {
                let held =
                    s.kv.get(key)
                        .is_some_and(|e| e.session.as_deref() == Some(sid.as_str()));
                if !held {
                    return text(200, "false");
                }
                let idx = s.bump();
                if let Some(e) = s.kv.get_mut(key) {
                    e.session = None;
                    e.modify_index = idx;
                }
                return text(200, "true");
            }
            if let Some(cas) = q.get("cas").and_then(|c| c.parse::<u64>().ok()) {
                let ok = match s.kv.get(key) {
                    None => cas == 0,
                    Some(e) => cas != 0 && e.modify_index == cas,
                };
                if !ok {
                    return text(200, "false");
                }
            }
            let idx = s.bump();
            let e = s.kv.entry(key.to_string()).or_insert_with(|| Entry::new(idx));
            e.value = body.to_vec();
            e.modify_index = idx;
            text(200, "true")
        }
        "DELETE" => {
            s.kv.remove(key);
            s.bump();
            text(200, "true")
        }
        _ => text(405, format!("method {method} not allowed")),
    }
}

/// TTL expiry, the reaper and session expiry, every 20 ms of real time.
fn tick(ctx: &Ctx) {
    let mut s = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let mut changed = false;
    for c in s.checks.values_mut() {
        if c.status != "critical" && now.duration_since(c.last_pass) > ctx.real(c.ttl) {
            c.status = "critical".into();
            c.critical_since = Some(now);
            changed = true;
        }
    }
    let reap: Vec<String> = s
        .checks
        .values()
        .filter(|c| matches!((c.critical_since, c.deregister_after), (Some(since), Some(after)) if now.duration_since(since) > ctx.real(after)))
        .map(|c| c.service_id.clone())
        .collect();
    for id in reap {
        s.services.remove(&id);
        s.checks.retain(|_, c| c.service_id != id);
        changed = true;
    }
    let dead: Vec<String> = s
        .sessions
        .iter()
        .filter(|(_, x)| {
            x.expires.is_some_and(|e| now > e)
                || x.checks
                    .iter()
                    .any(|c| c != "serfHealth" && s.checks.get(c).is_none_or(|k| k.status == "critical"))
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in dead {
        s.invalidate(&id);
        changed = true;
    }
    if changed {
        let idx = s.bump();
        s.kv_index = idx;
        s.health_index = idx;
        ctx.changed.notify_waiters();
    }
}

impl FakeConsul {
    /// Starts the fake on a free loopback port; durations run `scale` times as fast as sent
    /// (1.0 = real time, 0.1 = ten times faster).
    pub async fn start(scale: f64) -> FakeConsul {
        Self::start_with(scale, None).await
    }

    /// Like [`FakeConsul::start`], serving HTTPS with `tls` (and `https://` in `address`).
    pub async fn start_with(scale: f64, tls: Option<Arc<rustls::ServerConfig>>) -> FakeConsul {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Consul");
        let addr: SocketAddr = listener.local_addr().expect("its address");
        let state = Arc::new(Mutex::new(State {
            index: 1,
            ..State::default()
        }));
        let changed = Arc::new(Notify::new());
        let ctx = Arc::new(Ctx {
            state: state.clone(),
            changed: changed.clone(),
            scale,
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let serve = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| answer(ctx.clone(), req));
                        let http = hyper::server::conn::http1::Builder::new();
                        match acceptor {
                            Some(a) => {
                                if let Ok(tls) = a.accept(tcp).await {
                                    let _ = http.serve_connection(TokioIo::new(tls), service).await;
                                }
                            }
                            None => {
                                let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                            }
                        }
                    });
                }
            })
        };
        let timers = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tick(&ctx);
                }
            })
        };
        FakeConsul {
            address: format!("{scheme}://{addr}"),
            state,
            changed,
            scale,
            tasks: vec![serve, timers],
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut s);
        let idx = s.index;
        s.kv_index = idx;
        s.health_index = idx;
        drop(s);
        self.changed.notify_waiters();
        r
    }

    /// The time scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The agent restarted: its services, checks and sessions are gone (KV survives).
    pub fn agent_restart(&self) {
        self.with(|s| {
            s.services.clear();
            s.checks.clear();
            let ids: Vec<String> = s.sessions.keys().cloned().collect();
            for id in ids {
                s.invalidate(&id);
            }
            s.bump();
        });
    }

    /// Requires one of `tokens` (403 `ACL not found` otherwise).
    pub fn require_tokens(&self, tokens: &[&str]) {
        self.with(|s| s.tokens = Some(tokens.iter().map(|t| t.to_string()).collect()));
    }

    /// Denies paths under `prefix` (403 `Permission denied`, with the RPC prefix when `rpc`).
    pub fn deny(&self, prefix: &str, rpc: bool) {
        self.with(|s| {
            s.denied.insert(prefix.to_string());
            s.rpc_prefix = rpc;
        });
    }

    /// Answers paths under `prefix` with `status` and `body` (None: normally again).
    pub fn fault(&self, prefix: &str, fault: Option<(u16, &str)>) {
        self.with(|s| match fault {
            Some((code, body)) => {
                s.faults.insert(prefix.to_string(), (code, body.to_string()));
            }
            None => {
                s.faults.remove(prefix);
            }
        });
    }

    /// Delays answers to paths under `prefix` (None: no delay).
    pub fn delay(&self, prefix: &str, delay: Option<Duration>) {
        self.with(|s| match delay {
            Some(d) => {
                s.delays.insert(prefix.to_string(), d);
            }
            None => {
                s.delays.remove(prefix);
            }
        });
    }

    /// Drops connections to paths under `prefix` without an answer (or not).
    pub fn drop_connections(&self, prefix: &str, on: bool) {
        self.with(|s| {
            if on {
                s.drops.insert(prefix.to_string());
            } else {
                s.drops.remove(prefix);
            }
        });
    }

    /// Behaves like an agent before 1.11 (500 for an unknown check).
    pub fn pre_1_11(&self, on: bool) {
        self.with(|s| s.pre_1_11 = on);
    }

    /// No known leader: `?consistent` reads fail, others say `KnownLeader: false`.
    pub fn leaderless(&self, on: bool) {
        self.with(|s| s.leaderless = on);
    }

    /// Health reads report rows filtered out by ACLs.
    pub fn acl_filtered(&self, on: bool) {
        self.with(|s| s.filtered = on);
    }

    /// The registration body the agent got for service `id`.
    pub fn service(&self, id: &str) -> Option<Value> {
        self.with(|s| s.services.get(id).map(|x| x.body.clone()))
    }

    /// Sets a check's status by hand (as a failed heartbeat would).
    pub fn set_check(&self, id: &str, status: &str) {
        self.with(|s| {
            if let Some(c) = s.checks.get_mut(id) {
                c.status = status.to_string();
                c.critical_since = (status == "critical").then(Instant::now);
            }
            s.bump();
        });
    }

    /// The status of check `id`, if registered.
    pub fn check_status(&self, id: &str) -> Option<String> {
        self.with(|s| s.checks.get(id).map(|c| c.status.clone()))
    }

    /// The registered service IDs.
    pub fn services(&self) -> Vec<String> {
        self.with(|s| s.services.keys().cloned().collect())
    }

    /// The session holding `key`, and the key's value.
    pub fn key(&self, key: &str) -> Option<(Option<String>, String)> {
        self.with(|s| {
            s.kv.get(key)
                .map(|e| (e.session.clone(), String::from_utf8_lossy(&e.value).into_owned()))
        })
    }

    /// The requests so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }
}
