//! AWS test harness: the moto server (EC2, Auto Scaling, SSM, CloudFormation, IAM emulator, from
//! PyPI), a fake IMDSv2 per simulated instance, and a fault proxy in front of moto for what moto
//! cannot model (throttling, 5xx, missing permissions, `pending`, listing lag).
//! The backend these fakes serve is described in docs/backends/aws.md.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::child::Running;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The region the tests use.
pub const REGION: &str = "us-east-1";
/// moto's static credentials.
pub const KEY: &str = "testing";

/// What to run to get moto and cfn-lint (the test command does it by itself).
pub const INSTALL: &str = "run scripts/test.sh (it installs them), or: python3 -m venv ~/.cache/muster/venv && \
     ~/.cache/muster/venv/bin/pip install 'moto[server,ec2,autoscaling,ssm,cloudformation,elbv2,iam]==5.2.5' \
     cfn-lint==1.58.0";

/// A program from the test venv (`MUSTER_VENV`, default `~/.cache/muster/venv`), else from PATH.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("MUSTER_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/muster/venv")));
    if let Some(p) = venv.map(|v| v.join("bin").join(name)).filter(|p| p.exists()) {
        return p;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| panic!("{name} is not installed: {INSTALL}"))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// A moto server on a free loopback port, ended (by PID) when dropped.
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    _child: Running,
}

impl Moto {
    /// Starts moto and waits until it answers.
    pub fn start() -> Moto {
        Self::start_with(&[])
    }

    /// Starts moto with extra environment (e.g. `INITIAL_NO_AUTH_ACTION_COUNT` for IAM).
    pub fn start_with(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server: {e}; {INSTALL}"));
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto did not start on {url}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto {
            url,
            _child: Running(child),
        }
    }
}

/// SDK config for test setup against `endpoint` with moto's static credentials.
pub async fn sdk(endpoint: &str) -> SdkConfig {
    let creds = aws_sdk_ec2::config::Credentials::new(KEY, KEY, None, None, "muster-tests");
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .load()
        .await
}

/// The API clients test setup uses.
pub struct Setup {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// Auto Scaling.
    pub asg: aws_sdk_autoscaling::Client,
    /// SSM.
    pub ssm: aws_sdk_ssm::Client,
}

impl Setup {
    /// Clients against `endpoint`.
    pub async fn new(endpoint: &str) -> Setup {
        let c = sdk(endpoint).await;
        Setup {
            ec2: aws_sdk_ec2::Client::new(&c),
            asg: aws_sdk_autoscaling::Client::new(&c),
            ssm: aws_sdk_ssm::Client::new(&c),
        }
    }

    /// An image id moto ships.
    pub async fn image(&self) -> String {
        let out = self.ec2.describe_images().send().await.expect("DescribeImages");
        out.images()
            .first()
            .and_then(|i| i.image_id())
            .expect("moto ships images")
            .to_string()
    }

    /// A VPC and a subnet with `cidr` (addresses are handed out from `.4` on).
    pub async fn subnet(&self, cidr: &str) -> String {
        let vpc = self
            .ec2
            .create_vpc()
            .cidr_block(cidr)
            .send()
            .await
            .expect("CreateVpc");
        let vpc = vpc.vpc().and_then(|v| v.vpc_id()).expect("a VPC id").to_string();
        let sn = self
            .ec2
            .create_subnet()
            .vpc_id(vpc)
            .cidr_block(cidr)
            .availability_zone("us-east-1a")
            .send()
            .await
            .expect("CreateSubnet");
        sn.subnet()
            .and_then(|s| s.subnet_id())
            .expect("a subnet id")
            .to_string()
    }

    /// Launches `count` instances (one reservation each) with `tags`; returns their ids.
    pub async fn run(&self, count: usize, tags: &[(&str, &str)], subnet: Option<&str>) -> Vec<String> {
        let image = self.image().await;
        let mut ids = Vec::new();
        for _ in 0..count {
            let spec = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .set_tags(Some(
                    tags.iter()
                        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build())
                        .collect(),
                ))
                .build();
            let out = self
                .ec2
                .run_instances()
                .image_id(&image)
                .min_count(1)
                .max_count(1)
                .set_subnet_id(subnet.map(str::to_string))
                .tag_specifications(spec)
                .send()
                .await
                .expect("RunInstances");
            ids.extend(
                out.instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string)),
            );
        }
        ids
    }

    /// The private IPs of `ids`, in the same order.
    pub async fn private_ips(&self, ids: &[String]) -> Vec<String> {
        let out = self
            .ec2
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .expect("DescribeInstances");
        let all: Vec<(String, String)> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| {
                (
                    i.instance_id().unwrap_or_default().to_string(),
                    i.private_ip_address().unwrap_or_default().to_string(),
                )
            })
            .collect();
        ids.iter()
            .map(|id| {
                all.iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, ip)| ip.clone())
                    .expect("every instance has a private IP")
            })
            .collect()
    }

    /// Creates autoscaling group `name` (launch template from moto's first image) with `desired`
    /// instances in `subnet`; returns the members' ids, sorted.
    pub async fn group(&self, name: &str, desired: i32, subnet: &str) -> Vec<String> {
        let image = self.image().await;
        let lt = self
            .ec2
            .create_launch_template()
            .launch_template_name(format!("{name}-lt"))
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(image)
                    .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                    .build(),
            )
            .send()
            .await
            .expect("CreateLaunchTemplate");
        let lt_id = lt
            .launch_template()
            .and_then(|t| t.launch_template_id())
            .expect("a template id")
            .to_string();
        self.asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_id(lt_id)
                    .version("$Latest")
                    .build(),
            )
            .min_size(0)
            .max_size(desired.max(20))
            .desired_capacity(desired)
            .vpc_zone_identifier(subnet)
            .send()
            .await
            .expect("CreateAutoScalingGroup");
        self.members(name).await
    }

    /// The group's member ids, sorted.
    pub async fn members(&self, name: &str) -> Vec<String> {
        let out = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .expect("DescribeAutoScalingGroups");
        let mut ids: Vec<String> = out
            .auto_scaling_groups()
            .iter()
            .flat_map(|g| g.instances())
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    /// Sets the group's desired capacity (moto launches or terminates at once, oldest first).
    pub async fn scale(&self, name: &str, desired: i32) {
        self.asg
            .set_desired_capacity()
            .auto_scaling_group_name(name)
            .desired_capacity(desired)
            .send()
            .await
            .expect("SetDesiredCapacity");
    }

    /// Terminates instances.
    pub async fn terminate(&self, ids: &[String]) {
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .expect("TerminateInstances");
    }
}

/// Runs `script` with the venv's Python (boto3 comes with moto), `AWS_*` set for `endpoint`;
/// returns its stdout.
pub fn python(endpoint: &str, script: &str) -> String {
    let out = Command::new(venv_bin("python3"))
        .arg("-c")
        .arg(script)
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", KEY)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_ENDPOINT_URL", endpoint)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the venv's python3: {e}; {INSTALL}"));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

type Body = Full<Bytes>;

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A test server on a free loopback port whose behaviour lives in a shared `S`; it stops when
/// dropped.
pub struct Served<S> {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Mutex<S>>,
    task: JoinHandle<()>,
}

impl<S> Drop for Served<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S> Served<S> {
    /// Serves `handler` (which holds its own clone of `state`).
    async fn serve<F, Fut>(state: Arc<Mutex<S>>, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test server");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Served {
            url: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// Changes its behaviour.
    pub fn set(&self, f: impl FnOnce(&mut S)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn with<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What a fake IMDS serves and how it misbehaves.
#[derive(Debug, Clone, Default)]
pub struct ImdsState {
    /// `instance-id`.
    pub instance_id: String,
    /// `placement/region`.
    pub region: String,
    /// `local-ipv4`.
    pub local_ipv4: String,
    /// The role whose credentials it hands out (`None`: 404, no instance profile).
    pub role: Option<String>,
    /// The token PUT never answers (a container behind hop limit 1).
    pub hang_token: bool,
    /// The token response lacks the TTL header (moto's own IMDS does this).
    pub no_ttl: bool,
    /// Tokens issued.
    tokens: BTreeSet<String>,
    /// Paths requested (`PUT token` and GET paths).
    pub requests: Vec<String>,
}

/// A fake IMDSv2 for one simulated instance, with the token TTL header aws-config requires;
/// GETs without a token it issued get 401.
pub type FakeImds = Served<ImdsState>;

impl Served<ImdsState> {
    /// Serves instance `instance_id` at `local_ipv4` in [`REGION`] with role `muster-node`.
    pub async fn start(instance_id: &str, local_ipv4: &str) -> FakeImds {
        let state = Arc::new(Mutex::new(ImdsState {
            instance_id: instance_id.into(),
            region: REGION.into(),
            local_ipv4: local_ipv4.into(),
            role: Some("muster-node".into()),
            ..ImdsState::default()
        }));
        let s = state.clone();
        Served::serve(state, move |req| imds_answer(s.clone(), req)).await
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }
}

async fn imds_answer(state: Arc<Mutex<ImdsState>>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if req.method() == hyper::Method::PUT && path == "/latest/api/token" {
        let (hang, no_ttl) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.requests.push("PUT token".into());
            (s.hang_token, s.no_ttl)
        };
        if hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let Some(ttl) = header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u32>().ok())
        else {
            return reply(400, "text/plain", "missing or invalid TTL");
        };
        if !(1..=21_600).contains(&ttl) {
            return reply(400, "text/plain", "TTL out of range");
        }
        let token = format!("tok-{}", rand_suffix());
        state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .insert(token.clone());
        let mut r = reply(200, "text/plain", token);
        if !no_ttl && let Ok(v) = hyper::header::HeaderValue::from_str(&ttl.to_string()) {
            r.headers_mut().insert("x-aws-ec2-metadata-token-ttl-seconds", v);
        }
        return r;
    }
    let s = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.requests.push(path.clone());
        s.clone()
    };
    if !header("x-aws-ec2-metadata-token").is_some_and(|t| s.tokens.contains(&t)) {
        return reply(401, "text/plain", "");
    }
    let creds_prefix = "/latest/meta-data/iam/security-credentials/";
    match path.as_str() {
        "/latest/meta-data/instance-id" => reply(200, "text/plain", s.instance_id),
        "/latest/meta-data/placement/region" => reply(200, "text/plain", s.region),
        "/latest/meta-data/placement/availability-zone" => reply(200, "text/plain", format!("{}a", s.region)),
        "/latest/meta-data/local-ipv4" => reply(200, "text/plain", s.local_ipv4),
        p if p == creds_prefix => match s.role {
            Some(role) => reply(200, "text/plain", role),
            None => reply(404, "text/plain", ""),
        },
        p if p.starts_with(creds_prefix) && s.role.as_deref() == p.strip_prefix(creds_prefix) => {
            let expires = std::time::SystemTime::now() + Duration::from_secs(6 * 3600);
            let secs = expires
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let body = serde_json::json!({
                "Code": "Success",
                "LastUpdated": rfc3339(secs - 6 * 3600),
                "Type": "AWS-HMAC",
                "AccessKeyId": KEY,
                "SecretAccessKey": KEY,
                "Token": "imds-session-token",
                "Expiration": rfc3339(secs),
            });
            reply(200, "text/plain", body.to_string())
        }
        _ => reply(404, "text/plain", ""),
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Seconds since the epoch as RFC 3339 UTC (civil-from-days, Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Faults the proxy injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer this many of the next requests (to any API) with the API's throttling error.
    pub throttle: u32,
    /// Answer this many of the next requests with an HTML 500.
    pub errors_500: u32,
    /// Actions (`DescribeAutoScalingGroups`, `PutParameter`) answered with the API's
    /// access-denied error.
    pub denied: BTreeSet<String>,
    /// Instances shown as `pending` in DescribeInstances answers.
    pub pending: BTreeSet<String>,
    /// Instances left out of DescribeInstances answers (listing lag).
    pub hidden: BTreeSet<String>,
    /// Hold every answer this long.
    pub delay: Option<Duration>,
    /// `service:Action` of every request, in order.
    pub log: Vec<String>,
}

/// A proxy in front of moto that injects [`Faults`] (changed with `set`).
pub type FaultProxy = Served<Faults>;

impl Served<Faults> {
    /// Proxies to `upstream` (moto's URL).
    pub async fn start(upstream: &str) -> FaultProxy {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        let up = upstream.to_string();
        let f = faults.clone();
        Served::serve(faults, move |req| {
            proxy(f.clone(), client.clone(), up.clone(), req)
        })
        .await
    }

    /// `service:Action` of every request so far.
    pub fn log(&self) -> Vec<String> {
        self.with(|f| f.log.clone())
    }
}

/// The service (from the SigV4 credential scope) and the action (form body or `X-Amz-Target`).
fn service_and_action(headers: &hyper::HeaderMap, body: &[u8]) -> (String, String) {
    let auth = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let service = auth
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').nth(3))
        .unwrap_or("")
        .to_string();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split('.').nth(1))
        .map(str::to_string);
    let action = target.unwrap_or_else(|| {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    });
    (service, action)
}

fn throttled(service: &str) -> Response<Body> {
    match service {
        "ec2" => reply(
            503,
            "text/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code>\
             <Message>Request limit exceeded.</Message></Error></Errors><RequestID>fault</RequestID></Response>",
        ),
        "ssm" => reply(
            400,
            "application/x-amz-json-1.1",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        ),
        _ => reply(
            400,
            "text/xml",
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>\
             </Error><RequestId>fault</RequestId></ErrorResponse>",
        ),
    }
}

fn denied(service: &str, action: &str) -> Response<Body> {
    let who = "User: arn:aws:sts::123456789012:assumed-role/muster-node/i-0 is not authorized to perform";
    match service {
        "ec2" => reply(
            403,
            "text/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>UnauthorizedOperation</Code>\
             <Message>You are not authorized to perform this operation. Encoded authorization failure message: \
             AbCd</Message></Error></Errors><RequestID>fault</RequestID></Response>",
        ),
        "ssm" => reply(
            400,
            "application/x-amz-json-1.1",
            format!(r#"{{"__type":"AccessDeniedException","message":"{who}: ssm:{action}"}}"#),
        ),
        _ => reply(
            403,
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>{who}: \
                 {service}:{action}</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
            ),
        ),
    }
}

async fn proxy(
    faults: Arc<Mutex<Faults>>,
    client: reqwest::Client,
    upstream: String,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let (service, action) = service_and_action(&parts.headers, &body);
    let (fault, pending, hidden, delay) = {
        let mut f = faults.lock().unwrap_or_else(|e| e.into_inner());
        f.log.push(format!("{service}:{action}"));
        let fault = if f.denied.contains(&action) {
            Some(denied(&service, &action))
        } else if f.throttle > 0 {
            f.throttle -= 1;
            Some(throttled(&service))
        } else if f.errors_500 > 0 {
            f.errors_500 -= 1;
            Some(reply(
                500,
                "text/html",
                "<html><body><h1>Internal Server Error</h1></body></html>",
            ))
        } else {
            None
        };
        (fault, f.pending.clone(), f.hidden.clone(), f.delay)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(r) = fault {
        return r;
    }
    let url = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let method =
        reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut up = client.request(method, url).body(body.to_vec());
    for (k, v) in &parts.headers {
        if k != hyper::header::HOST && k != hyper::header::CONTENT_LENGTH {
            up = up.header(k.as_str(), v.as_bytes());
        }
    }
    let Ok(resp) = up.send().await else {
        return reply(502, "text/plain", "moto did not answer");
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/xml")
        .to_string();
    let bytes = resp.bytes().await.unwrap_or_default();
    if action == "DescribeInstances" && (!pending.is_empty() || !hidden.is_empty()) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        return reply(status, &content_type, rewrite_instances(&text, &pending, &hidden));
    }
    reply(status, &content_type, bytes)
}

/// Marks instances `pending` and drops hidden ones in a DescribeInstances XML answer.
pub fn rewrite_instances(xml: &str, pending: &BTreeSet<String>, hidden: &BTreeSet<String>) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<instancesSet>") {
        let open = start + "<instancesSet>".len();
        let Some(len) = rest[open..].find("</instancesSet>") else {
            break;
        };
        out.push_str(&rest[..open]);
        for item in top_level_items(&rest[open..open + len]) {
            let id = item
                .split("<instanceId>")
                .nth(1)
                .and_then(|s| s.split("</instanceId>").next())
                .unwrap_or("");
            if hidden.contains(id) {
                continue;
            }
            if pending.contains(id) {
                out.push_str(&item.replace(
                    "<instanceState><code>16</code><name>running</name></instanceState>",
                    "<instanceState><code>0</code><name>pending</name></instanceState>",
                ));
            } else {
                out.push_str(item);
            }
        }
        rest = &rest[open + len..];
    }
    out.push_str(rest);
    out
}

/// The top-level `<item>…</item>` elements of an XML fragment.
fn top_level_items(s: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start, mut i) = (0usize, 0usize, 0usize);
    while i < s.len() {
        if s[i..].starts_with("<item>") {
            if depth == 0 {
                start = i;
            }
            depth += 1;
            i += "<item>".len();
        } else if s[i..].starts_with("</item>") {
            depth = depth.saturating_sub(1);
            i += "</item>".len();
            if depth == 0 {
                items.push(&s[start..i]);
            }
        } else {
            i += s[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    items
}

/// Adds `ip` to `lo`, only inside a private network namespace (where `lo` is the only
/// interface), so a test never changes the machine's real network.
pub fn add_loopback_address(ip: &str) {
    let ifaces = crate::hosts::interfaces();
    assert!(
        ifaces == ["lo"],
        "refusing to add {ip} to lo outside a private network namespace (interfaces: {ifaces:?}); \
         run the tests as scripts/test.sh does: unshare -n (or unshare -rn as a user), ip link set lo up"
    );
    let out = Command::new("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .output()
        .expect("ip (iproute2) runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("File exists"),
        "ip addr add {ip}/32 dev lo: {err}"
    );
}
