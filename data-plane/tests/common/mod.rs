//! Test harness: a recording upstream, snapshot builders and a data plane on a free port.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use airlock_data_plane::{
    ConfigSource, DataPlaneConfig, DataPlaneHandle, EventSink, SnapshotDelivery,
};
use airlock_shared::api_key::ApiKeyHash;
use airlock_shared::events::{DataPlaneMessage, GatewayEvent, KeyUsageReport};
use airlock_shared::hosts::HostPattern;
use airlock_shared::oauth::OAuthConnectionReport;
use airlock_shared::seal::{OpeningKey, OpeningKeyring, SecretIdentity};
use airlock_shared::wire::{ApiKeyGrant, EnvironmentSnapshot, FunctionSpec, HeaderSpec};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use uuid::Uuid;

/// A port nobody listens on right now (below the ephemeral range: see the function).
pub use airlock_e2e::free_port;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// An HTTP server that records every request. Paths:
/// - `/sleep/{ms}...`: answers after `ms` milliseconds;
/// - `/status/{code}...`: answers with that status;
/// - `/trickle/{n}`: answers at once, then sends `n` body chunks 100 ms apart;
/// - `/reflect/{form}`: echoes the request's `x-reflect` header back, see [`reflect`];
/// - anything else: 200.
///
/// Every other answer is JSON and carries `set-cookie`, `keep-alive` and `x-upstream` headers,
/// and `x-hop`, which its `connection` header names hop-by-hop.
pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(requests.clone());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Self { addr, requests }
    }

    /// The same server over TLS, with the certificate of `tests/fixtures` (signed by the test
    /// CA `tests/fixtures/ca.pem`, valid for `localhost` and `127.0.0.1`).
    pub async fn start_tls() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: tls_acceptor(),
        };
        let app = axum::Router::new()
            .fallback(record)
            .with_state(requests.clone());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<TlsPeer>(),
            )
            .await
            .unwrap();
        });
        Self { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(fixture("upstream.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("upstream.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Accepts TCP connections and completes the TLS handshake before handing them to axum.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A failed handshake (e.g. a client that rejects our certificate) is not fatal.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Client address of a TLS connection (axum only knows it for plain TCP listeners).
#[derive(Debug, Clone, Copy)]
struct TlsPeer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

async fn record(State(requests): State<Arc<Mutex<Vec<Recorded>>>>, request: Request) -> Response {
    let extensions = request.extensions();
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .or_else(|| {
            extensions
                .get::<ConnectInfo<TlsPeer>>()
                .map(|info| info.0 .0)
        })
        .expect("connect info");
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body: body.to_vec(),
        peer,
    });
    let mut segments = parts.uri.path().split('/').skip(1);
    let mut status = 200;
    match (segments.next(), segments.next()) {
        (Some("reflect"), Some(form)) => {
            let value = parts
                .headers
                .get("x-reflect")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            return reflect(form, &value);
        }
        (Some("trickle"), Some(chunks)) => {
            // `chunks` pieces of body, 100 ms apart, after an immediate response head.
            let chunks: u32 = chunks.parse().unwrap();
            let stream = futures::stream::unfold(0, move |sent| async move {
                if sent == chunks {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, std::io::Error>(format!("chunk {sent}\n")), sent + 1))
            });
            return Response::new(axum::body::Body::from_stream(stream));
        }
        (Some("sleep"), Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        (Some("status"), Some(code)) => status = code.parse().unwrap(),
        _ => {}
    }
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", "application/json"),
            ("set-cookie", "session=upstream"),
            ("keep-alive", "timeout=30"),
            // A hop-by-hop header the upstream nominates in `connection`.
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-upstream", "yes"),
        ],
        format!(r#"{{"upstream":"ok","target":{target:?}}}"#),
    )
        .into_response()
}

/// Echo `value` (what the upstream received in `x-reflect`) in the way `form` names:
/// - `header`: in response headers, as is and base64-encoded;
/// - `json`: JSON-escaped in a JSON body;
/// - `base64`: base64 (standard, URL-safe) and inside `Basic base64(user:value)`;
/// - `urlencoded`: percent-encoded as a URL component and form-encoded;
/// - `chunked`: as is, split across two body chunks sent 50 ms apart;
/// - `gzip`: in a gzip-compressed JSON body (`content-length` set);
/// - `gzip-chunked`: in a gzip-compressed body sent in small chunks;
/// - `deflate`: in a zlib-compressed body;
/// - `br`: a body claiming `content-encoding: br`.
pub fn reflect(form: &str, value: &str) -> Response {
    use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
    use std::io::Write as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let json_body = serde_json::json!({ "echo": value }).to_string();
    let gzip = |data: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    };
    match form {
        "header" => (
            [
                ("x-echo", value.to_string()),
                ("x-echo-b64", b64.encode(value)),
                ("content-type", "application/json".to_string()),
            ],
            r#"{"ok":true}"#,
        )
            .into_response(),
        "json" => ([(CONTENT_TYPE, "application/json")], json_body).into_response(),
        "base64" => (
            [(CONTENT_TYPE, "application/json")],
            serde_json::json!({
                "standard": b64.encode(value),
                "url_safe": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
                "basic": format!("Basic {}", b64.encode(format!("user:{value}"))),
            })
            .to_string(),
        )
            .into_response(),
        "urlencoded" => {
            const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
                .remove(b'-')
                .remove(b'.')
                .remove(b'_')
                .remove(b'~');
            const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
                .remove(b'*')
                .remove(b'-')
                .remove(b'.')
                .remove(b'_');
            let component = percent_encoding::utf8_percent_encode(value, COMPONENT).to_string();
            let form = percent_encoding::utf8_percent_encode(value, FORM)
                .to_string()
                .replace("%20", "+");
            (
                [(CONTENT_TYPE, "application/x-www-form-urlencoded")],
                format!("next=/cb%3Ftoken%3D{component}&token={form}"),
            )
                .into_response()
        }
        "chunked" => {
            let half = value.len() / 2;
            let pieces = vec![
                format!("{{\"start\":\"{}", &value[..half]),
                format!("{}\",\"end\":true}}", &value[half..]),
            ];
            let stream = futures::stream::iter(pieces).then(|piece| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::io::Error>(piece)
            });
            Response::new(axum::body::Body::from_stream(stream))
        }
        "gzip" => (
            [
                (CONTENT_TYPE, "application/json"),
                (CONTENT_ENCODING, "gzip"),
            ],
            gzip(json_body.as_bytes()),
        )
            .into_response(),
        "gzip-chunked" => {
            let padded = format!("{}{json_body}{}", " ".repeat(3000), " ".repeat(3000));
            let compressed = gzip(padded.as_bytes());
            let pieces: Vec<Vec<u8>> = compressed.chunks(7).map(<[u8]>::to_vec).collect();
            let stream = futures::stream::iter(pieces).then(|piece| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, std::io::Error>(piece)
            });
            let mut response = Response::new(axum::body::Body::from_stream(stream));
            response
                .headers_mut()
                .insert(CONTENT_ENCODING, "gzip".parse().unwrap());
            response
        }
        "deflate" => {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(json_body.as_bytes()).unwrap();
            (
                [
                    (CONTENT_TYPE, "application/json"),
                    (CONTENT_ENCODING, "deflate"),
                ],
                encoder.finish().unwrap(),
            )
                .into_response()
        }
        "br" => (
            [(CONTENT_TYPE, "application/json"), (CONTENT_ENCODING, "br")],
            json_body,
        )
            .into_response(),
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

pub const TENANT: Uuid = Uuid::from_u128(0xa1);

/// Build environment snapshots with real sealed secrets.
pub struct SnapshotBuilder {
    snapshot: EnvironmentSnapshot,
}

impl SnapshotBuilder {
    pub fn new(environment_id: Uuid, revision: i64) -> Self {
        Self {
            snapshot: EnvironmentSnapshot {
                tenant_id: TENANT,
                environment_id,
                revision,
                functions: BTreeMap::new(),
                secrets: BTreeMap::new(),
                api_keys: vec![],
                oauth_clients: Default::default(),
                oauth_connections: Default::default(),
                oauth_authorizations: Default::default(),
            },
        }
    }

    pub fn function(
        mut self,
        name: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        timeout_ms: u64,
    ) -> Self {
        self.snapshot.functions.insert(
            name.into(),
            FunctionSpec {
                id: Uuid::new_v4(),
                name: name.into(),
                method: method.into(),
                url: url.into(),
                headers: headers
                    .iter()
                    .map(|(n, v)| HeaderSpec {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                body: body.map(str::to_string),
                timeout_ms,
            },
        );
        self
    }

    /// A secret sealed to `key`, bound to the local test upstreams (`127.0.0.1`).
    pub fn secret(self, key: &OpeningKey, name: &str, value: &str) -> Self {
        self.secret_bound(key, name, value, &["127.0.0.1"])
    }

    /// A secret sealed to `key`, bound to `hosts`.
    pub fn secret_bound(
        mut self,
        key: &OpeningKey,
        name: &str,
        value: &str,
        hosts: &[&str],
    ) -> Self {
        let identity = SecretIdentity {
            tenant_id: self.snapshot.tenant_id,
            environment_id: self.snapshot.environment_id,
            name,
            version: 1,
        };
        let sealed = key.sealing_key().seal(identity, value).unwrap();
        let allowed_hosts = hosts
            .iter()
            .map(|host| HostPattern::parse(host).unwrap())
            .collect();
        self.snapshot.secrets.insert(
            name.into(),
            airlock_shared::wire::SecretEntry {
                sealed,
                allowed_hosts,
            },
        );
        self
    }

    pub fn key(mut self, api_key: &str, functions: &[&str]) -> Self {
        self.snapshot.api_keys.push(ApiKeyGrant {
            id: Uuid::new_v4(),
            name: format!("key {api_key}"),
            hash: ApiKeyHash::of(api_key),
            functions: functions.iter().map(|f| f.to_string()).collect(),
            expires_at: None,
        });
        self
    }

    /// Like [`SnapshotBuilder::key`], expiring at `expires_at`.
    pub fn key_expiring(
        mut self,
        api_key: &str,
        functions: &[&str],
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        self = self.key(api_key, functions);
        self.snapshot.api_keys.last_mut().unwrap().expires_at = Some(expires_at);
        self
    }

    pub fn build(self) -> EnvironmentSnapshot {
        self.snapshot
    }
}

/// The id of the API key named `key {api_key}` in `snapshot` (see [`SnapshotBuilder::key`]).
pub fn key_id(snapshot: &EnvironmentSnapshot, api_key: &str) -> Uuid {
    snapshot
        .api_keys
        .iter()
        .find(|grant| grant.name == format!("key {api_key}"))
        .expect("key in snapshot")
        .id
}

/// A data plane fed in-process, on a free port.
pub struct TestPlane {
    pub handle: Option<DataPlaneHandle>,
    pub sender: UnboundedSender<SnapshotDelivery>,
    pub base: String,
    pub client: reqwest::Client,
}

impl TestPlane {
    /// Start with `initial` snapshots already queued, and wait until they are live.
    pub async fn start(key: &OpeningKey, initial: Vec<EnvironmentSnapshot>) -> Self {
        Self::start_with(key, initial, None).await
    }

    pub async fn start_with(
        key: &OpeningKey,
        initial: Vec<EnvironmentSnapshot>,
        upstream_ca_file: Option<std::path::PathBuf>,
    ) -> Self {
        Self::start_full(
            key.clone().into(),
            initial,
            upstream_ca_file,
            EventSink::Disabled,
        )
        .await
    }

    /// Start with events sent in-process; returns the receiving end too.
    pub async fn start_with_events(
        keys: OpeningKeyring,
        initial: Vec<EnvironmentSnapshot>,
    ) -> (Self, EventReceiver) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let plane = Self::start_full(keys, initial, None, EventSink::InProcess(sender)).await;
        (plane, EventReceiver(receiver, Vec::new(), Vec::new()))
    }

    pub async fn start_full(
        keys: OpeningKeyring,
        initial: Vec<EnvironmentSnapshot>,
        upstream_ca_file: Option<std::path::PathBuf>,
        events: EventSink,
    ) -> Self {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        for snapshot in initial {
            sender.send(snapshot.into()).unwrap();
        }
        let handle = start_plane(
            keys,
            ConfigSource::InProcess(receiver),
            upstream_ca_file,
            events,
        )
        .await;
        let plane = Self {
            base: format!("http://{}", handle.listen_addr()),
            handle: Some(handle),
            sender,
            client: reqwest::Client::new(),
        };
        plane.wait_ready().await;
        plane
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ready = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "data plane never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn invoke(
        &self,
        function: &str,
        api_key: Option<&str>,
        body: &str,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/v1/functions/{function}/invoke", self.base))
            .body(body.to_string());
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            tokio::task::spawn_blocking(move || handle.shutdown())
                .await
                .unwrap();
        }
    }
}

/// The receiving end of an in-process event sink. Key usage reports are kept apart from
/// events.
pub struct EventReceiver(
    pub UnboundedReceiver<DataPlaneMessage>,
    pub Vec<KeyUsageReport>,
    pub Vec<OAuthConnectionReport>,
);

impl EventReceiver {
    /// The next event, waiting up to 5 s.
    pub async fn next(&mut self) -> GatewayEvent {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.0.recv())
                .await
                .expect("an event within 5 s")
                .expect("event channel open");
            match message {
                DataPlaneMessage::Event(event) => return event,
                DataPlaneMessage::KeyUsage(report) => self.1.push(report),
                DataPlaneMessage::OAuth(report) => self.2.push(report),
            }
        }
    }

    /// The next key usage report, waiting up to 5 s (events arriving meanwhile are dropped).
    pub async fn next_key_usage(&mut self) -> KeyUsageReport {
        if !self.1.is_empty() {
            return self.1.remove(0);
        }
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.0.recv())
                .await
                .expect("a key usage report within 5 s")
                .expect("event channel open");
            if let DataPlaneMessage::KeyUsage(report) = message {
                return report;
            }
        }
    }

    /// The events of request `request_id`, once `count` of them have arrived (events of other
    /// requests are skipped).
    pub async fn for_request(&mut self, request_id: &str, count: usize) -> Vec<GatewayEvent> {
        let mut found = Vec::new();
        while found.len() < count {
            let event = self.next().await;
            if event.request_id == request_id {
                found.push(event);
            }
        }
        found
    }

    /// Whatever arrived so far, without waiting.
    pub fn drain(&mut self) -> Vec<GatewayEvent> {
        let mut events = Vec::new();
        while let Ok(message) = self.0.try_recv() {
            match message {
                DataPlaneMessage::Event(event) => events.push(event),
                DataPlaneMessage::KeyUsage(report) => self.1.push(report),
                DataPlaneMessage::OAuth(report) => self.2.push(report),
            }
        }
        events
    }
}

/// The request id a response carries.
pub fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-airlock-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

/// Spawn a data plane on a free port.
pub async fn start_plane(
    keys: impl Into<OpeningKeyring>,
    source: ConfigSource,
    upstream_ca_file: Option<std::path::PathBuf>,
    events: EventSink,
) -> DataPlaneHandle {
    let keys = keys.into();
    tokio::task::spawn_blocking(move || {
        airlock_data_plane::spawn(DataPlaneConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            opening_keys: keys,
            source,
            events,
            threads: 2,
            upstream_ca_file,
        })
        .expect("data plane starts")
    })
    .await
    .unwrap()
}

/// The gateway error body, checked for shape and for the request id header.
pub async fn gateway_error(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-airlock-request-id")
        .expect("every response carries x-airlock-request-id")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["requestId"], request_id.as_str(), "{body}");
    let code = body["error"]["code"].as_str().unwrap().to_string();
    let message = body["error"]["message"].as_str().unwrap().to_string();
    (status, code, message)
}

/// Retry `check` until it holds or `within` has passed; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP relay to Redis that can drop every connection and refuse new ones, to simulate an
/// outage without touching the shared Redis.
pub struct FlakyRedis {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl FlakyRedis {
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, connections2) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed
                }
                let task = tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect("127.0.0.1:6379")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                connections2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            up,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for connection in self.connections.lock().unwrap().drain(..) {
                connection.abort();
            }
        }
    }
}
