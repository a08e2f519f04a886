//! A faithful in-process fake of the Kubernetes API server, for the k8s backend's tests (no real
//! kube-apiserver can be installed on these machines).
//!
//! What it does like the real one:
//! - HTTPS with a throwaway CA (openssl), a bearer token checked against a rotatable set
//!   (401 `Unauthorized` as a `kind: Status` body);
//! - StatefulSets, Pods, ConfigMaps, Endpoints, EndpointSlices, Leases and Events under
//!   `/api/v1` and `/apis/<group>/v1`, namespaced; `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`,
//!   `!k`, comma = AND) and `fieldSelector` (`metadata.name`, `status.phase`);
//! - one global, strictly increasing `resourceVersion`; `uid`, `creationTimestamp`,
//!   `namespace` stamped on writes; list items without `kind`/`apiVersion`;
//! - POST: 201, or 409 `AlreadyExists`; PUT: 409 `Conflict` on a stale resourceVersion, 422
//!   `Invalid` for a Lease without one (a ConfigMap is overwritten blindly), create-on-update for
//!   Leases and 404 for the others; DELETE: 200 or 404;
//! - the exact 403 message per (verb, resource) switched off, 404 `NotFound` bodies;
//! - fault switches: an outage (connections refused), answers delayed, every call failing with
//!   a status (503, 429 with `Retry-After`), or only the calls on one resource.
//!
//! It cannot prove real RBAC evaluation, watch-cache timing or the EndpointSlice controller's
//! timing; the same backend tests run against a real cluster when `MUSTER_K8S_TEST_KUBECONFIG`
//! is set.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::certs;

/// A resource the fake serves: (API prefix, plural, kind, apiVersion).
const RESOURCES: &[(&str, &str, &str, &str)] = &[
    ("/api/v1", "pods", "Pod", "v1"),
    ("/api/v1", "configmaps", "ConfigMap", "v1"),
    ("/api/v1", "endpoints", "Endpoints", "v1"),
    ("/api/v1", "events", "Event", "v1"),
    ("/apis/apps/v1", "statefulsets", "StatefulSet", "apps/v1"),
    (
        "/apis/discovery.k8s.io/v1",
        "endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    (
        "/apis/coordination.k8s.io/v1",
        "leases",
        "Lease",
        "coordination.k8s.io/v1",
    ),
    ("/apis/events.k8s.io/v1", "events", "Event", "events.k8s.io/v1"),
];

fn group_of(resource: &str) -> &'static str {
    match resource {
        "statefulsets" => "apps",
        "endpointslices" => "discovery.k8s.io",
        "leases" => "coordination.k8s.io",
        _ => "",
    }
}

/// One change, kept for watches.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: String,
    ns: String,
    etype: &'static str,
    obj: Value,
}

/// How many changes the watch history keeps (older start versions get 410 Expired).
const HISTORY: usize = 1000;

/// Everything the fake knows; tests change it through [`FakeApi`].
#[derive(Default)]
struct State {
    /// Recent changes, oldest first; `floor` is the newest version no longer in it.
    history: std::collections::VecDeque<Change>,
    floor: u64,
    live: Option<tokio::sync::broadcast::Sender<Change>>,
    rv: u64,
    uid: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    tokens: BTreeSet<String>,
    forbidden: BTreeSet<(String, String)>,
    down: bool,
    latency: Duration,
    fail_with: Option<u16>,
    /// Resources whose every call fails with this status (503, 500) while the others answer.
    failing: BTreeMap<String, u16>,
    /// The EndpointSlice controller: (namespace, service, pod label selector, publishNotReadyAddresses).
    controller: Option<(String, String, String, bool)>,
    /// Resources answered with 404 as if the API server did not serve them at all.
    unserved: BTreeSet<String>,
    /// `METHOD path?query` of every request, for assertions.
    log: Vec<String>,
}

/// The running fake.
pub struct FakeApi {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: u16, reason: &str, message: String, details: Value) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code
        }),
    )
}

/// `leases.coordination.k8s.io`, or `pods` for the core group: how the API server names a
/// resource in its messages.
fn qualified(resource: &str) -> String {
    match group_of(resource) {
        "" => resource.to_string(),
        g => format!("{resource}.{g}"),
    }
}

fn not_found(resource: &str, name: &str) -> (u16, Value) {
    let (g, full) = (group_of(resource), qualified(resource));
    status(
        404,
        "NotFound",
        format!("{full} \"{name}\" not found"),
        json!({"name": name, "group": g, "kind": resource}),
    )
}

/// Splits `a=b&c=d` (form-urlencoded; a bare `?&` prefix is fine).
fn query_pairs(query: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn label(obj: &Value, key: &str) -> Option<String> {
    obj["metadata"]["labels"][key].as_str().map(String::from)
}

/// Whether `obj` matches a label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`; comma = AND).
fn labels_match(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                label(obj, k.trim()).as_deref() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                label(obj, k.trim()).as_deref() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                label(obj, k.trim()).is_none()
            } else {
                label(obj, term).is_some()
            }
        })
}

fn fields_match(obj: &Value, selector: &str) -> Result<bool, String> {
    for term in selector.split(',').filter(|t| !t.is_empty()) {
        let (k, v) = term
            .split_once('=')
            .ok_or_else(|| format!("invalid field selector {term:?}"))?;
        let v = v.trim_start_matches('=');
        let actual = match k {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            "status.phase" => obj["status"]["phase"].as_str(),
            other => return Err(format!("field label not supported: {other}")),
        };
        if actual != Some(v) {
            return Ok(false);
        }
    }
    Ok(true)
}

impl State {
    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Stores (or, with `None`, deletes) an object and records the change for watches.
    fn write(
        &mut self,
        resource: &str,
        ns: &str,
        name: &str,
        obj: Option<Value>,
        etype: &'static str,
    ) -> Option<Value> {
        let key = (resource.to_string(), ns.to_string(), name.to_string());
        let previous = match &obj {
            Some(o) => self.objects.insert(key, o.clone()),
            None => self.objects.remove(&key),
        };
        if obj.is_none() && previous.is_none() {
            return None;
        }
        let mut shown = obj.clone().or_else(|| previous.clone()).unwrap_or(Value::Null);
        if obj.is_none() {
            // A deletion is an event with a version of its own.
            let rv = self.bump();
            shown["metadata"]["resourceVersion"] = json!(rv);
        }
        let change = Change {
            rv: self.rv,
            resource: resource.to_string(),
            ns: ns.to_string(),
            etype,
            obj: shown,
        };
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
        if let Some(live) = &self.live {
            let _ = live.send(change);
        }
        if resource == "pods" {
            self.reconcile_slices(ns);
        }
        previous
    }

    /// The EndpointSlice controller: rewrites the Service's slices from its pods' state, at most
    /// two endpoints per slice (so clients must merge), `ready` forced true when the Service
    /// publishes not-ready addresses, `serving` from the pod's Ready condition, `terminating`
    /// from its deletionTimestamp.
    fn reconcile_slices(&mut self, ns: &str) {
        let Some((cns, service, selector, publish)) = self.controller.clone() else {
            return;
        };
        if cns != ns {
            return;
        }
        let mut endpoints = Vec::new();
        for ((r, n, name), pod) in &self.objects {
            if r != "pods" || n != ns || !labels_match(pod, &selector) {
                continue;
            }
            let Some(ip) = pod["status"]["podIP"].as_str() else {
                continue;
            };
            let ready = pod["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
            endpoints.push(json!({
                "addresses": [ip], "hostname": name,
                "targetRef": {"kind": "Pod", "name": name, "namespace": ns},
                "conditions": {"ready": (publish || ready) && !terminating, "serving": ready, "terminating": terminating}
            }));
        }
        let stale: Vec<String> = self
            .objects
            .iter()
            .filter(|((r, n, _), o)| {
                r == "endpointslices"
                    && n == ns
                    && label(o, "endpointslice.kubernetes.io/managed-by").as_deref()
                        == Some("fake-controller")
            })
            .map(|((_, _, name), _)| name.clone())
            .collect();
        for name in stale {
            self.write("endpointslices", ns, &name, None, "DELETED");
        }
        for (i, chunk) in endpoints.chunks(2).enumerate() {
            let name = format!("{service}-{i}");
            let mut slice = json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service,
                              "endpointslice.kubernetes.io/managed-by": "fake-controller"}},
                "addressType": "IPv4", "endpoints": chunk, "ports": [{"name": "peer", "port": 4370, "protocol": "TCP"}]
            });
            self.stamp(&mut slice, ns, "EndpointSlice", "discovery.k8s.io/v1", None);
            self.write("endpointslices", ns, &name, Some(slice), "ADDED");
        }
    }

    fn stamp(&mut self, obj: &mut Value, ns: &str, kind: &str, api_version: &str, keep_uid: Option<Value>) {
        let rv = self.bump();
        self.uid += 1;
        let uid = keep_uid.unwrap_or_else(|| json!(format!("00000000-0000-0000-0000-{:012}", self.uid)));
        let m = &mut obj["metadata"];
        m["resourceVersion"] = json!(rv);
        m["namespace"] = json!(ns);
        m["uid"] = uid;
        if m["creationTimestamp"].is_null() {
            m["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
        }
        obj["kind"] = json!(kind);
        obj["apiVersion"] = json!(api_version);
    }

    fn forbidden(&self, verb: &str, resource: &str, ns: &str, name: Option<&str>) -> Option<(u16, Value)> {
        if !self.forbidden.contains(&(verb.to_string(), resource.to_string())) {
            return None;
        }
        let (g, full) = (group_of(resource), qualified(resource));
        let subject = match name {
            Some(n) => format!("{full} \"{n}\""),
            None => full,
        };
        Some(status(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"system:serviceaccount:{ns}:muster\" cannot {verb} resource \
                 \"{resource}\" in API group \"{g}\" in the namespace \"{ns}\""
            ),
            json!({"name": name.unwrap_or(""), "group": g, "kind": resource}),
        ))
    }

    /// Answers one authenticated request.
    fn handle(&mut self, method: &Method, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
        let Some(&(prefix, resource, kind, api_version)) = RESOURCES.iter().find(|(p, r, ..)| {
            path.starts_with(&format!("{p}/namespaces/")) && path.contains(&format!("/{r}"))
        }) else {
            return status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
                json!({}),
            );
        };
        if let Some(&code) = self.failing.get(resource) {
            let reason = match code {
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                _ => "InternalError",
            };
            return status(
                code,
                reason,
                format!("the fake is failing {resource} on purpose"),
                json!({}),
            );
        }
        if self.unserved.contains(resource) {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                json!({}),
            );
        }
        let rest = path.trim_start_matches(prefix).trim_start_matches("/namespaces/");
        let mut parts = rest.split('/');
        let ns = parts.next().unwrap_or_default().to_string();
        let _ = parts.next();
        let name = parts.next().filter(|n| !n.is_empty()).map(String::from);
        let q = query_pairs(query);
        let verb = match (method, &name) {
            (&Method::GET, None) if q.get("watch").map(String::as_str) == Some("true") => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => {
                return status(
                    405,
                    "MethodNotAllowed",
                    format!("{method} is not supported"),
                    json!({}),
                );
            }
        };
        if let Some(denied) = self.forbidden(verb, resource, &ns, name.as_deref()) {
            return denied;
        }
        let key = |n: &str| (resource.to_string(), ns.clone(), n.to_string());
        match verb {
            "list" => {
                let labels = q.get("labelSelector").cloned().unwrap_or_default();
                let fields = q.get("fieldSelector").cloned().unwrap_or_default();
                let mut items = Vec::new();
                for ((r, n, _), obj) in &self.objects {
                    if r != resource || *n != ns || !labels_match(obj, &labels) {
                        continue;
                    }
                    match fields_match(obj, &fields) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => return status(400, "BadRequest", e, json!({})),
                    }
                    let mut item = obj.clone();
                    if let Some(m) = item.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    items.push(item);
                }
                (
                    200,
                    json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                           "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
                )
            }
            "get" => {
                let n = name.unwrap_or_default();
                match self.objects.get(&key(&n)) {
                    Some(obj) => (200, obj.clone()),
                    None => not_found(resource, &n),
                }
            }
            "create" => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                    return status(400, "BadRequest", "the body is not JSON".into(), json!({}));
                };
                let Some(n) = obj["metadata"]["name"].as_str().map(String::from) else {
                    return status(
                        422,
                        "Invalid",
                        format!("{kind} \"\" is invalid: metadata.name: Required value"),
                        json!({}),
                    );
                };
                if self.objects.contains_key(&key(&n)) {
                    let (g, full) = (group_of(resource), qualified(resource));
                    return status(
                        409,
                        "AlreadyExists",
                        format!("{full} \"{n}\" already exists"),
                        json!({"name": n, "group": g, "kind": resource}),
                    );
                }
                self.stamp(&mut obj, &ns, kind, api_version, None);
                self.write(resource, &ns, &n, Some(obj.clone()), "ADDED");
                (201, obj)
            }
            "update" => {
                let n = name.unwrap_or_default();
                let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                    return status(400, "BadRequest", "the body is not JSON".into(), json!({}));
                };
                let sent = obj["metadata"]["resourceVersion"].as_str().map(String::from);
                let current = self.objects.get(&key(&n)).cloned();
                match (current, sent) {
                    (None, _) if resource == "leases" => {
                        self.stamp(&mut obj, &ns, kind, api_version, None);
                        self.write(resource, &ns, &n, Some(obj.clone()), "ADDED");
                        (201, obj)
                    }
                    (None, _) => not_found(resource, &n),
                    (Some(_), None) if resource == "leases" => status(
                        422,
                        "Invalid",
                        format!(
                            "{kind} \"{n}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
                        ),
                        json!({"name": n, "kind": resource}),
                    ),
                    (Some(cur), sent) => {
                        let cur_rv = cur["metadata"]["resourceVersion"].as_str().map(String::from);
                        if sent.is_some() && sent != cur_rv {
                            let (g, full) = (group_of(resource), qualified(resource));
                            return status(
                                409,
                                "Conflict",
                                format!(
                                    "Operation cannot be fulfilled on {full} \"{n}\": the object has been modified; \
                                     please apply your changes to the latest version and try again"
                                ),
                                json!({"name": n, "group": g, "kind": resource}),
                            );
                        }
                        let uid = cur["metadata"]["uid"].clone();
                        self.stamp(&mut obj, &ns, kind, api_version, Some(uid));
                        self.write(resource, &ns, &n, Some(obj.clone()), "MODIFIED");
                        (200, obj)
                    }
                }
            }
            "delete" => {
                let n = name.unwrap_or_default();
                match self.write(resource, &ns, &n, None, "DELETED") {
                    Some(obj) => (200, obj),
                    None => not_found(resource, &n),
                }
            }
            _ => status(
                405,
                "MethodNotAllowed",
                format!("{verb} is not supported by this fake"),
                json!({}),
            ),
        }
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(code: u16, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if code == 429 {
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    r
}

async fn serve_one(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let token = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(String::from);
    let latency = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.log.push(format!("{} {path}?{query}", parts.method));
        s.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    if !token.is_some_and(|t| s.tokens.contains(&t)) {
        let (code, body) = status(401, "Unauthorized", "Unauthorized".into(), json!({}));
        return Ok(respond(code, &body));
    }
    if let Some(code) = s.fail_with {
        let reason = if code == 429 {
            "TooManyRequests"
        } else {
            "ServiceUnavailable"
        };
        let (code, body) = status(code, reason, "the fake is failing on purpose".into(), json!({}));
        return Ok(respond(code, &body));
    }
    let q = query_pairs(&query);
    if parts.method == Method::GET && q.get("watch").map(String::as_str) == Some("true") {
        return Ok(s.watch(&path, &q));
    }
    let (code, body) = s.handle(&parts.method, &path, &query, &body);
    Ok(respond(code, &body))
}

fn line(etype: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": etype, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

impl State {
    /// A watch: 200 and one JSON object per line (the history after `resourceVersion`, then
    /// live changes, with BOOKMARKs when asked), until `timeoutSeconds`; a start version older
    /// than the history gets the ERROR event with 410 Expired, then the end of the stream.
    fn watch(&mut self, path: &str, q: &BTreeMap<String, String>) -> Response<Body> {
        let Some(&(prefix, resource, kind, api_version)) = RESOURCES.iter().find(|(p, r, ..)| {
            path.starts_with(&format!("{p}/namespaces/")) && path.ends_with(&format!("/{r}"))
        }) else {
            let (code, body) = not_found("watch", path);
            return respond(code, &body);
        };
        let ns = path
            .trim_start_matches(prefix)
            .trim_start_matches("/namespaces/")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        // A watch of one object by name (`fieldSelector=metadata.name=…`), as client-go's
        // single-object watches send it; RBAC authorizes it against the Role's resourceNames.
        let name = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(String::from);
        if let Some(denied) = self.forbidden("watch", resource, &ns, name.as_deref()) {
            return respond(denied.0, &denied.1);
        }
        let named = move |o: &Value| {
            name.as_deref()
                .is_none_or(|n| o.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
        };
        let labels = q.get("labelSelector").cloned().unwrap_or_default();
        let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(290))
            .min(Duration::from_secs(290));
        let start: Option<u64> = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .and_then(|v| v.parse().ok());
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
        let matches = {
            let (resource, ns, labels, named) =
                (resource.to_string(), ns.clone(), labels.clone(), named.clone());
            move |c: &Change| {
                c.resource == resource && c.ns == ns && labels_match(&c.obj, &labels) && named(&c.obj)
            }
        };
        match start {
            Some(v) if v < self.floor => {
                let (_, status) = status(
                    410,
                    "Expired",
                    format!("too old resource version: {v} ({})", self.floor + 1),
                    json!({}),
                );
                let _ = tx.try_send(line("ERROR", &status));
                drop(tx);
            }
            _ => {
                // No version: the current objects as ADDED first, then changes.
                let backlog: Vec<Bytes> = match start {
                    Some(v) => self
                        .history
                        .iter()
                        .filter(|c| c.rv > v && matches(c))
                        .map(|c| line(c.etype, &c.obj))
                        .collect(),
                    None => self
                        .objects
                        .iter()
                        .filter(|((r, n, _), o)| {
                            r == resource && *n == ns && labels_match(o, &labels) && named(o)
                        })
                        .map(|(_, o)| line("ADDED", o))
                        .collect(),
                };
                let live = self
                    .live
                    .get_or_insert_with(|| tokio::sync::broadcast::channel(1024).0)
                    .subscribe();
                let current = self.rv;
                tokio::spawn(async move {
                    let mut live = live;
                    for b in backlog {
                        if tx.send(b).await.is_err() {
                            return;
                        }
                    }
                    let bookmark = |rv: u64| {
                        line(
                            "BOOKMARK",
                            &json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}),
                        )
                    };
                    let mut last = current;
                    if bookmarks && tx.send(bookmark(last)).await.is_err() {
                        return;
                    }
                    let end = tokio::time::sleep(timeout);
                    tokio::pin!(end);
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = &mut end => return,
                            _ = tick.tick(), if bookmarks => {
                                if tx.send(bookmark(last)).await.is_err() { return; }
                            }
                            change = live.recv() => match change {
                                Ok(c) => {
                                    last = c.rv;
                                    if matches(&c) && tx.send(line(c.etype, &c.obj)).await.is_err() {
                                        return;
                                    }
                                }
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                                Err(_) => return,
                            },
                        }
                    }
                });
            }
        }
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
        });
        let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed());
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    }
}

impl FakeApi {
    /// Starts the fake on a free loopback port, accepting `token`.
    pub async fn start(token: &str) -> FakeApi {
        let dir = tempfile::tempdir().expect("a temp dir");
        certs::ca(dir.path(), "ca");
        certs::leaf(
            dir.path(),
            "apiserver",
            "ca",
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("apiserver.crt"))
            .expect("the server certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.path().join("apiserver.key"))
            .expect("the key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the server certificate and key");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr: SocketAddr = listener.local_addr().expect("its address");
        let state = Arc::new(Mutex::new(State {
            tokens: BTreeSet::from([token.to_string()]),
            ..State::default()
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if st.lock().unwrap_or_else(|e| e.into_inner()).down {
                    drop(tcp);
                    continue;
                }
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| serve_one(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeApi {
            url: format!("https://{addr}"),
            ca: dir.path().join("ca.crt"),
            state,
            task,
            dir,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes a kubeconfig for this server with `token` (or a token file) and returns its path.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{}", token.len()));
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    \
             server: {}\n    certificate-authority: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: muster\nusers:\n- name: muster\n  user:\n    token: {token}\n",
            self.url,
            self.ca.display()
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// Writes a kubeconfig whose token is read from `token_file` (re-read by kube as it
    /// rotates, like a projected service-account token) and returns its path.
    pub fn kubeconfig_with_token_file(&self, token_file: &Path) -> PathBuf {
        let path = self.dir.path().join("kubeconfig-token-file");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    \
             server: {}\n    certificate-authority: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: muster\nusers:\n- name: muster\n  user:\n    tokenFile: {}\n",
            self.url,
            self.ca.display(),
            token_file.display()
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// Stores `obj` (a full object with `metadata.name`) as if created by a controller.
    pub fn put(&self, resource: &str, ns: &str, mut obj: Value) {
        let (kind, api_version) = RESOURCES
            .iter()
            .find(|(_, r, ..)| *r == resource)
            .map(|(_, _, k, v)| (*k, *v))
            .unwrap_or_else(|| panic!("the fake does not serve {resource}"));
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        self.with(|s| {
            let uid = s
                .objects
                .get(&(resource.into(), ns.into(), name.clone()))
                .map(|o| o["metadata"]["uid"].clone());
            s.stamp(&mut obj, ns, kind, api_version, uid);
            let etype = if s
                .objects
                .contains_key(&(resource.into(), ns.into(), name.clone()))
            {
                "MODIFIED"
            } else {
                "ADDED"
            };
            s.write(resource, ns, &name, Some(obj), etype);
        });
    }

    /// The stored object, if any.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        self.with(|s| s.objects.get(&(resource.into(), ns.into(), name.into())).cloned())
    }

    /// Every stored object of `resource` in `ns`.
    pub fn list(&self, resource: &str, ns: &str) -> Vec<Value> {
        self.with(|s| {
            s.objects
                .iter()
                .filter(|((r, n, _), _)| r == resource && n == ns)
                .map(|(_, v)| v.clone())
                .collect()
        })
    }

    /// Deletes an object (as a controller would).
    pub fn delete(&self, resource: &str, ns: &str, name: &str) {
        self.with(|s| s.write(resource, ns, name, None, "DELETED"));
    }

    /// Makes `verb` on `resource` answer 403 (or allows it again).
    pub fn forbid(&self, verb: &str, resource: &str, forbidden: bool) {
        self.with(|s| {
            let k = (verb.to_string(), resource.to_string());
            if forbidden {
                s.forbidden.insert(k);
            } else {
                s.forbidden.remove(&k);
            }
        });
    }

    /// Runs the EndpointSlice controller for `service` in `ns`: its slices follow the pods that
    /// match `selector` from now on.
    pub fn endpoint_controller(&self, ns: &str, service: &str, selector: &str, publish_not_ready: bool) {
        self.with(|s| {
            s.controller = Some((ns.into(), service.into(), selector.into(), publish_not_ready));
            s.reconcile_slices(ns);
        });
    }

    /// Marks a pod Ready (serving) or not, as the kubelet would.
    pub fn set_pod_ready(&self, ns: &str, name: &str, ready: bool) {
        let Some(mut pod) = self.get("pods", ns, name) else {
            return;
        };
        pod["status"]["conditions"] =
            json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
        self.put("pods", ns, pod);
    }

    /// Marks a pod as terminating (a deletionTimestamp), as a graceful delete does.
    pub fn set_pod_terminating(&self, ns: &str, name: &str) {
        let Some(mut pod) = self.get("pods", ns, name) else {
            return;
        };
        pod["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        self.put("pods", ns, pod);
    }

    /// Compacts the watch history: watches that start from an older version get 410 Expired.
    pub fn compact(&self) {
        self.with(|s| {
            s.floor = s.rv;
            s.history.clear();
        });
    }

    /// Answers `resource` with 404 as if this API server did not serve it (an old cluster).
    pub fn unserve(&self, resource: &str) {
        self.with(|s| s.unserved.insert(resource.to_string()));
    }

    /// Refuses every connection (true) or serves again (false).
    pub fn set_down(&self, down: bool) {
        self.with(|s| s.down = down);
    }

    /// Delays every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    /// Answers every authenticated call with this status (503, 429), or normally (None).
    pub fn fail_with(&self, code: Option<u16>) {
        self.with(|s| s.fail_with = code);
    }

    /// Answers every call on `resource` with this status (503, 500), or normally (None); other
    /// resources are unaffected.
    pub fn fail_resource_with(&self, resource: &str, code: Option<u16>) {
        self.with(|s| match code {
            Some(code) => {
                s.failing.insert(resource.to_string(), code);
            }
            None => {
                s.failing.remove(resource);
            }
        });
    }

    /// Accepts `token` (and, with `keep_old`, the tokens accepted so far).
    pub fn rotate_token(&self, token: &str, keep_old: bool) {
        self.with(|s| {
            if !keep_old {
                s.tokens.clear();
            }
            s.tokens.insert(token.to_string());
        });
    }

    /// The requests served so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }

    /// The temp dir holding the certificates (for files a test adds).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A StatefulSet `name` with `replicas` pods from ordinal `start`.
    pub fn statefulset(&self, ns: &str, name: &str, replicas: i32, start: i32) {
        self.put(
            "statefulsets",
            ns,
            json!({"metadata": {"name": name}, "spec": {"replicas": replicas, "ordinals": {"start": start},
                   "serviceName": format!("{name}-nodes"), "selector": {"matchLabels": {"app": name}},
                   "template": {"metadata": {"labels": {"app": name}}}}}),
        );
    }

    /// A running pod with `ip`, labelled for its StatefulSet.
    pub fn pod(&self, ns: &str, name: &str, ip: &str) {
        self.put(
            "pods",
            ns,
            json!({"metadata": {"name": name, "labels": {"app": name.rsplit_once('-').map_or(name, |(s, _)| s)}},
                   "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        );
    }
}

/// A StatefulSet `muster` behind the headless Service `muster-nodes` in namespace `ns`, its pod
/// `i` at loopback address `{ip_prefix}.{i + 1}`: what the process tests run against the fake.
#[derive(Debug, Clone, Copy)]
pub struct StatefulSetPods {
    /// The namespace.
    pub ns: &'static str,
    /// The first three octets of the pods' addresses (`127.0.20`).
    pub ip_prefix: &'static str,
}

impl StatefulSetPods {
    /// Pod `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.ip_prefix, i + 1)
    }

    /// The API objects of the StatefulSet with `replicas` running pods; the fake's EndpointSlice
    /// controller keeps the headless Service's slices in step with the pods.
    pub fn scale(&self, fake: &FakeApi, replicas: usize) {
        fake.endpoint_controller(self.ns, "muster-nodes", "app=muster", true);
        fake.statefulset(self.ns, "muster", i32::try_from(replicas).unwrap_or(i32::MAX), 0);
        for i in 0..replicas {
            fake.pod(self.ns, &format!("muster-{i}"), &self.ip(i));
        }
    }

    /// `pods` nodes named as the pods (`muster@muster-<i>.muster-nodes.<ns>.svc.cluster.local`,
    /// one free port for all), each listening on its pod's address, with the Kubernetes backend
    /// in `mode` through `kubeconfig` and fast formation settings.
    pub fn layout(&self, kubeconfig: &Path, pods: usize, mode: &str) -> muster_cli::launch::Layout {
        let ns = self.ns;
        let port = muster_cli::launch::Ports::new().take().expect("a free port");
        let names = (0..pods)
            .map(|i| {
                let name = format!("muster@muster-{i}.muster-nodes.{ns}.svc.cluster.local:{port}");
                let listen = format!("{}:{port}", self.ip(i));
                (
                    name.parse().expect("a node name"),
                    listen.parse().expect("an address"),
                )
            })
            .collect();
        let mut tables = format!(
            "[cluster_formation.k8s]\nmode = \"{mode}\"\napi = \"kubeconfig\"\nkubeconfig = \"{}\"\nnamespace = \"{ns}\"\n\
             request_timeout = \"1s\"\nlease_duration = \"3s\"\n",
            kubeconfig.display()
        );
        if mode == "endpoints" {
            tables.push_str(&format!(
                "service = \"muster-nodes\"\naddress_type = \"hostname\"\nhostname_suffix = \".muster-nodes.{ns}.svc.cluster.local\"\n"
            ));
        }
        muster_cli::launch::Layout {
            nodes: pods,
            names: Some(names),
            backend: Some(("k8s".into(), tables)),
            formation:
                "discovery_retry_interval = \"100ms\"\nprobe_timeout = \"250ms\"\nstable_margin = \"1s\"\n\
                        target_cluster_size_hint = 3\n"
                    .into(),
            ..muster_cli::launch::Layout::default()
        }
    }
}
