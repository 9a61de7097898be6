//! Test harness: a recording upstream, snapshot builders and a data plane on a free port.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_data_plane::{ConfigSource, DataPlaneConfig, DataPlaneHandle, SnapshotDelivery};
use airlock_shared::api_key::ApiKeyHash;
use airlock_shared::seal::{OpeningKey, SecretIdentity};
use airlock_shared::wire::{ApiKeyGrant, EnvironmentSnapshot, FunctionSpec, HeaderSpec};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
/// - anything else: 200.
///
/// Every answer is JSON and carries `set-cookie`, `keep-alive` and `x-upstream` headers.
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
            ("x-upstream", "yes"),
        ],
        format!(r#"{{"upstream":"ok","target":{target:?}}}"#),
    )
        .into_response()
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

    pub fn secret(mut self, key: &OpeningKey, name: &str, value: &str) -> Self {
        let identity = SecretIdentity {
            tenant_id: self.snapshot.tenant_id,
            environment_id: self.snapshot.environment_id,
            name,
            version: 1,
        };
        let sealed = key.sealing_key().seal(identity, value).unwrap();
        // Bound to the local test upstreams.
        let allowed_hosts = vec![airlock_shared::hosts::HostPattern::parse("127.0.0.1").unwrap()];
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
        });
        self
    }

    pub fn build(self) -> EnvironmentSnapshot {
        self.snapshot
    }
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
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        for snapshot in initial {
            sender.send(snapshot.into()).unwrap();
        }
        let handle = start_plane(key, ConfigSource::InProcess(receiver), upstream_ca_file).await;
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

/// Spawn a data plane on a free port (retrying if another test grabbed the port first).
pub async fn start_plane(
    key: &OpeningKey,
    source: ConfigSource,
    upstream_ca_file: Option<std::path::PathBuf>,
) -> DataPlaneHandle {
    let key = key.clone();
    tokio::task::spawn_blocking(move || {
        airlock_data_plane::spawn(DataPlaneConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            opening_key: key,
            source,
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
