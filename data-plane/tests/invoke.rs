//! The invoke request path against a real upstream, with an in-process config source.

mod common;

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use airlock_shared::seal::OpeningKey;
use common::*;
use uuid::Uuid;

const API_KEY: &str = "ak_test_key_full_access";
const NARROW_KEY: &str = "ak_test_key_only_ping";
const SECRET: &str = "sk-live-canary-3f9a";

/// One environment with functions against `upstream`; `*` key and a key for `ping` only.
fn environment(key: &OpeningKey, upstream: &Upstream, env: Uuid, revision: i64) -> SnapshotBuilder {
    let base = format!("http://{}", upstream.addr);
    SnapshotBuilder::new(env, revision)
        .secret(key, "TOKEN", SECRET)
        .function(
            "create_user",
            "POST",
            &format!("{base}/users/{{{{args.id}}}}?q={{{{args.q}}}}"),
            &[
                ("authorization", "Bearer {{secrets.TOKEN}}"),
                ("x-static", "v1"),
            ],
            Some(r#"{"name": "{{args.name}}", "n": {{args.n}}}"#),
            5_000,
        )
        .function("ping", "GET", &format!("{base}/ping"), &[], None, 5_000)
        .function(
            "fixed_body",
            "PUT",
            &format!("{base}/fixed"),
            &[("content-type", "application/vnd.test+json")],
            Some(r#"{"fixed": true}"#),
            5_000,
        )
        .function(
            "echo",
            "POST",
            &format!("{base}/echo"),
            &[],
            Some(r#"{"text": "{{args.text}}"}"#),
            5_000,
        )
        .function(
            "needs_missing_secret",
            "GET",
            &format!("{base}/x"),
            &[("x-token", "{{secrets.NOT_SET}}")],
            None,
            5_000,
        )
        .function("slow", "GET", &format!("{base}/sleep/2000"), &[], None, 300)
        .function(
            "closed_port",
            "GET",
            &format!("http://127.0.0.1:{}/x", free_port()),
            &[],
            None,
            2_000,
        )
        .function(
            "trickle",
            "GET",
            &format!("{base}/trickle/20"),
            &[],
            None,
            450,
        )
        .function(
            "teapot",
            "GET",
            &format!("{base}/status/418"),
            &[],
            None,
            5_000,
        )
        .key(API_KEY, &["*"])
        .key(NARROW_KEY, &["ping"])
}

async fn plane_with_upstream() -> (TestPlane, Upstream, OpeningKey) {
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let snapshot = environment(&key, &upstream, Uuid::new_v4(), 1).build();
    let plane = TestPlane::start(&key, vec![snapshot]).await;
    (plane, upstream, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_receives_exactly_the_rendered_request() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let response = plane
        .client
        .post(format!("{}/v1/functions/create_user/invoke", plane.base))
        .bearer_auth(API_KEY)
        .header("x-client-header", "must-not-pass")
        .header("cookie", "client=1")
        .body(r#"{"id": "a/b c", "q": "x&y=z", "name": "Bob \"B\"", "n": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-airlock-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!request_id.is_empty());
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert!(response.headers().get("set-cookie").is_none());
    assert!(response.headers().get("keep-alive").is_none());
    assert!(response.headers().get("x-hop").is_none());
    let body = response.text().await.unwrap();
    assert!(body.contains(r#""upstream":"ok""#), "{body}");
    assert!(!body.contains(SECRET));

    let seen = upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/users/a%2Fb%20c?q=x%26y%3Dz");
    let expected_body = br#"{"name": "Bob \"B\"", "n": 3}"#;
    assert_eq!(seen.body, expected_body);
    assert_eq!(
        seen.header("content-length"),
        Some(expected_body.len().to_string().as_str())
    );
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string().as_str())
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(seen.header("x-static"), Some("v1"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let mut names = seen.header_names();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "authorization",
            "content-length",
            "content-type",
            "host",
            "x-static"
        ],
        "only the rendered headers reach the upstream"
    );
    for (_, value) in &seen.headers {
        assert!(!value.contains(API_KEY), "the API key leaked upstream");
    }
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_body_is_forwarded_whole() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let text = "x".repeat(300 * 1024);
    let args = serde_json::json!({ "text": text }).to_string();
    let response = plane.invoke("echo", Some(API_KEY), &args).await;
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    let expected = format!(r#"{{"text": "{text}"}}"#);
    assert_eq!(seen.body.len(), expected.len());
    assert_eq!(seen.body, expected.as_bytes());
    assert_eq!(
        seen.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_without_body_sends_none_whatever_the_client_sent() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let response = plane
        .invoke("ping", Some(NARROW_KEY), r#"{"ignored": "client-bytes"}"#)
        .await;
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/ping");
    assert!(seen.body.is_empty());
    assert!(seen.header("transfer-encoding").is_none());
    // An empty client body is fine too.
    assert_eq!(
        plane.invoke("ping", Some(NARROW_KEY), "").await.status(),
        200
    );
    plane.shutdown().await;
}

/// A raw HTTP/1.1 exchange, for framings reqwest does not produce.
fn raw_request(addr: &str, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn chunked(body: &str) -> String {
    let mut out = String::new();
    for piece in body.as_bytes().chunks(1000) {
        out.push_str(&format!(
            "{:x}\r\n{}\r\n",
            piece.len(),
            std::str::from_utf8(piece).unwrap()
        ));
    }
    out.push_str("0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_bodies_are_accepted_up_to_the_body_limit() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let addr = plane.base.trim_start_matches("http://").to_string();
    let send_chunked = |body: String| {
        let addr = addr.clone();
        let request = format!(
            "POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}",
            chunked(&body)
        );
        tokio::task::spawn_blocking(move || raw_request(&addr, request.as_bytes()))
    };
    let response = send_chunked(r#"{"text": "chunked hello"}"#.to_string())
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(upstream.last().body, br#"{"text": "chunked hello"}"#);

    // Larger than one read, forwarded whole with its length.
    let text = "y".repeat(300 * 1024);
    let response = send_chunked(serde_json::json!({ "text": text }).to_string())
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let expected = format!(r#"{{"text": "{text}"}}"#);
    assert_eq!(upstream.last().body, expected.as_bytes());
    assert_eq!(
        upstream.last().header("content-length"),
        Some(expected.len().to_string().as_str())
    );

    // Over the limit: refused, nothing sent upstream.
    let before = upstream.requests().len();
    let too_big = serde_json::json!({ "text": "z".repeat(1024 * 1024) }).to_string();
    let response = send_chunked(too_big).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    assert_eq!(upstream.requests().len(), before);
    plane.shutdown().await;
}

/// Read one response with a `content-length` body from `stream`, leaving the connection open.
fn read_one_response(stream: &mut std::net::TcpStream) -> String {
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        response.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    response.extend_from_slice(&body);
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_expecting_100_continue_gets_it_before_sending_the_body() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let addr = plane.base.trim_start_matches("http://").to_string();
    let (interim, first, second) = tokio::task::spawn_blocking(move || {
        let body = r#"{"text": "after continue"}"#;
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        // Nothing of the body is sent until the gateway says so.
        let mut interim = [0u8; 25];
        stream.read_exact(&mut interim).unwrap();
        let interim = String::from_utf8_lossy(&interim).into_owned();
        stream.write_all(body.as_bytes()).unwrap();
        let first = read_one_response(&mut stream);
        // The connection stays usable: a second request on it is answered.
        let again = r#"{"text": "second"}"#;
        let request = format!(
            "POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{again}",
            again.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut second = Vec::new();
        let _ = stream.read_to_end(&mut second);
        (interim, first, String::from_utf8_lossy(&second).into_owned())
    })
    .await
    .unwrap();
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{first}"
    );
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let bodies: Vec<Vec<u8>> = upstream.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [
            br#"{"text": "after continue"}"#.to_vec(),
            br#"{"text": "second"}"#.to_vec()
        ]
    );
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_is_rejected() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let addr = plane.base.trim_start_matches("http://").to_string();
    let request = format!(
        "POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\n{{}}   "
    );
    let response = tokio::task::spawn_blocking(move || raw_request(&addr, request.as_bytes()))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(upstream.requests().is_empty());
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_and_scope_errors() {
    let (plane, upstream, _) = plane_with_upstream().await;

    for key in [None, Some("ak_unknown")] {
        let (status, code, _) = gateway_error(plane.invoke("ping", key, "{}").await).await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"));
    }
    for header in ["Basic abc", "Bearer", "Bearer a b", API_KEY] {
        let response = plane
            .client
            .post(format!("{}/v1/functions/ping/invoke", plane.base))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        let (status, code, _) = gateway_error(response).await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{header}");
    }

    // Not granted: 403, whether or not the function exists (no enumeration).
    for function in ["create_user", "does_not_exist"] {
        let (status, code, message) =
            gateway_error(plane.invoke(function, Some(NARROW_KEY), "{}").await).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"));
        assert!(message.contains(function));
    }
    // Granted (`*`) but absent: 404.
    let (status, code, _) =
        gateway_error(plane.invoke("does_not_exist", Some(API_KEY), "{}").await).await;
    assert_eq!((status, code.as_str()), (404, "function_not_found"));

    assert!(upstream.requests().is_empty());
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_errors() {
    let (plane, _upstream, _) = plane_with_upstream().await;
    let response = plane
        .client
        .post(format!("{}/v1/nothing", plane.base))
        .send()
        .await
        .unwrap();
    let (status, code, _) = gateway_error(response).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));

    let response = plane
        .client
        .get(format!("{}/v1/functions/ping/invoke", plane.base))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    let (status, code, _) = gateway_error(response).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));

    // The callback and the probes are GET-only, and say so.
    for path in ["/v1/oauth/callback", "/healthz"] {
        let response = plane
            .client
            .post(format!("{}{path}", plane.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], "GET", "{path}");
        let (status, code, _) = gateway_error(response).await;
        assert_eq!(
            (status, code.as_str()),
            (405, "method_not_allowed"),
            "{path}"
        );
    }

    let health = plane
        .client
        .get(format!("{}/healthz", plane.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-airlock-request-id"));
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn argument_and_body_errors() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let cases = [
        ("[1, 2]", 400, "invalid_json"),
        ("{not json", 400, "invalid_json"),
        (r#"{"id": "1", "q": "x", "n": 1}"#, 400, "missing_argument"),
        (
            r#"{"id": {"nested": 1}, "q": "x", "name": "n", "n": 1}"#,
            400,
            "invalid_argument",
        ),
    ];
    for (body, expected_status, expected_code) in cases {
        let (status, code, _) =
            gateway_error(plane.invoke("create_user", Some(API_KEY), body).await).await;
        assert_eq!(
            (status, code.as_str()),
            (expected_status, expected_code),
            "{body}"
        );
    }

    let too_big = format!(r#"{{"text": "{}"}}"#, "z".repeat(1024 * 1024));
    let (status, code, _) =
        gateway_error(plane.invoke("echo", Some(API_KEY), &too_big).await).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));

    assert!(upstream.requests().is_empty());
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_fails_closed() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let (status, code, message) = gateway_error(
        plane
            .invoke("needs_missing_secret", Some(API_KEY), "{}")
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (500, "secret_unavailable"));
    assert!(message.contains("NOT_SET"), "{message}");
    assert!(
        upstream.requests().is_empty(),
        "nothing is sent without the secret"
    );
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_map_to_502_and_504() {
    let (plane, upstream, _) = plane_with_upstream().await;
    let (status, code, _) =
        gateway_error(plane.invoke("closed_port", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unreachable"));

    let started = std::time::Instant::now();
    let (status, code, _) = gateway_error(plane.invoke("slow", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (504, "upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // An upstream that answers at once but trickles its body past the timeout is cut off:
    // the timeout covers the whole response, not each read.
    let started = std::time::Instant::now();
    let response = plane.invoke("trickle", Some(API_KEY), "").await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.is_err(), "the body must be cut short");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // Upstream error statuses are the upstream's answer, passed through as is.
    let response = plane.invoke("teapot", Some(API_KEY), "").await;
    assert_eq!(response.status(), 418);
    assert!(response.headers().contains_key("x-airlock-request-id"));
    assert_eq!(upstream.requests().len(), 3);
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_invokes_reuse_one_upstream_connection() {
    let (plane, upstream, _) = plane_with_upstream().await;
    for _ in 0..5 {
        assert_eq!(plane.invoke("ping", Some(API_KEY), "").await.status(), 200);
    }
    let peers: HashSet<_> = upstream.requests().iter().map(|r| r.peer).collect();
    assert_eq!(upstream.requests().len(), 5);
    assert_eq!(peers.len(), 1, "one pooled TCP connection, saw {peers:?}");
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_revision_is_live_within_a_second_and_an_older_one_is_ignored() {
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let env = Uuid::new_v4();
    let plane = TestPlane::start(&key, vec![environment(&key, &upstream, env, 5).build()]).await;
    assert_eq!(plane.invoke("ping", Some(API_KEY), "").await.status(), 200);

    // Revision 6 drops `ping` and revokes the narrow key.
    let base = format!("http://{}", upstream.addr);
    let v6 = SnapshotBuilder::new(env, 6)
        .function("pong", "GET", &format!("{base}/pong"), &[], None, 1000)
        .key(API_KEY, &["*"])
        .build();
    plane.sender.send(v6.into()).unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        plane.invoke("pong", Some(API_KEY), "").await.status() == 200
    })
    .await;
    assert!(took < Duration::from_secs(1));
    assert_eq!(plane.invoke("ping", Some(API_KEY), "").await.status(), 404);
    assert_eq!(
        plane.invoke("ping", Some(NARROW_KEY), "").await.status(),
        401
    );

    // An older revision arriving late changes nothing.
    plane
        .sender
        .send(environment(&key, &upstream, env, 4).build().into())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(plane.invoke("ping", Some(API_KEY), "").await.status(), 404);
    assert_eq!(plane.invoke("pong", Some(API_KEY), "").await.status(), 200);
    assert_eq!(upstream.last().target, "/pong");
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_the_listener_and_a_busy_port_is_an_error() {
    let (plane, _upstream, key) = plane_with_upstream().await;
    let addr = plane.handle.as_ref().unwrap().listen_addr();

    let (_sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let busy = tokio::task::spawn_blocking(move || {
        airlock_data_plane::spawn(airlock_data_plane::DataPlaneConfig {
            listen: addr,
            opening_keys: key.into(),
            source: airlock_data_plane::ConfigSource::InProcess(receiver),
            events: airlock_data_plane::EventSink::Disabled,
            threads: 1,
            upstream_ca_file: None,
        })
    })
    .await
    .unwrap();
    let error = busy.unwrap_err();
    assert!(format!("{error:#}").contains("cannot listen"), "{error:#}");

    plane.shutdown().await;
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener still open"
    );
}

/// Globs are anchored, a matched but missing name is 404 and anything else 403; a key past
/// its expiry is refused on the next request without any new snapshot; every authenticated
/// use is reported once, in one report, within about a second.
#[tokio::test(flavor = "multi_thread")]
async fn key_patterns_expiry_and_usage_reports() {
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let expires_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let snapshot = environment(&key, &upstream, Uuid::new_v4(), 1)
        .key("ak_glob", &["pin*", "echo"])
        .key_expiring("ak_expiring", &["*"], expires_at)
        .build();
    let glob_id = key_id(&snapshot, "ak_glob");
    let expiring_id = key_id(&snapshot, "ak_expiring");
    let (plane, mut events) =
        TestPlane::start_with_events(key.clone().into(), vec![snapshot]).await;

    assert_eq!(
        plane.invoke("ping", Some("ak_glob"), "{}").await.status(),
        200
    );
    for (function, status, code) in [
        // Matched by `pin*` but not in the snapshot.
        ("pinned", 404, "function_not_found"),
        // Unanchored matching would allow these.
        ("xping", 403, "forbidden"),
        ("create_user", 403, "forbidden"),
        ("echo_all", 403, "forbidden"),
    ] {
        let (got_status, got_code, _) =
            gateway_error(plane.invoke(function, Some("ak_glob"), "{}").await).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{function}"
        );
    }

    assert_eq!(
        plane
            .invoke("ping", Some("ak_expiring"), "{}")
            .await
            .status(),
        200
    );
    let wait = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let response = plane.invoke("ping", Some("ak_expiring"), "{}").await;
    let request = request_id(&response);
    let (status, code, _) = gateway_error(response).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    // The refusal is an auth event naming the key.
    let denied = events.for_request(&request, 1).await.remove(0);
    assert_eq!(denied.kind.as_str(), "auth.denied");
    assert_eq!(denied.api_key_id, Some(expiring_id));

    // Usage: both keys were used; the reports name each key with its latest use.
    let mut seen = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "usage not reported: {seen:?}"
        );
        for key_use in events.next_key_usage().await.uses {
            seen.insert(key_use.api_key_id, key_use.last_used_at);
        }
    }
    assert!(seen.contains_key(&glob_id) && seen.contains_key(&expiring_id));
    assert!(seen[&expiring_id] <= chrono::Utc::now());
    // Nothing new used: no further report.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    events.drain();
    assert!(events.1.is_empty(), "reports without uses: {:?}", events.1);
    plane.shutdown().await;
}

/// An upstream that answers the first request on each connection and keeps the connection
/// open, then drops the connection when a second request arrives on it: what a server that
/// closes idle keep-alive connections looks like to a client that reuses one at that moment.
struct ClosingUpstream {
    addr: std::net::SocketAddr,
    /// Request lines received, in order, answered or not.
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ClosingUpstream {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let record = record.clone();
                std::thread::spawn(move || {
                    for answered in [true, false] {
                        let Some(line) = read_request(&mut stream) else {
                            return;
                        };
                        record.lock().unwrap().push(line);
                        if answered {
                            let _ =
                                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        }
                    }
                    // Dropped without an answer.
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The request line of the next request on `stream`, its head and body consumed.
fn read_request(stream: &mut std::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    head.lines().next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_pooled_connection_is_retried_only_for_idempotent_methods() {
    let key = OpeningKey::generate();
    let upstream = ClosingUpstream::start();
    let base = format!("http://{}", upstream.addr);
    let snapshot = SnapshotBuilder::new(Uuid::new_v4(), 1)
        .function("read", "GET", &format!("{base}/read"), &[], None, 5_000)
        .function(
            "write",
            "POST",
            &format!("{base}/write"),
            &[],
            Some(r#"{"n": 1}"#),
            5_000,
        )
        .key(API_KEY, &["*"])
        .build();
    let plane = TestPlane::start(&key, vec![snapshot]).await;

    // A new connection: answered, then pooled.
    assert_eq!(plane.invoke("read", Some(API_KEY), "").await.status(), 200);
    // The pooled connection is dropped when the request arrives: a GET is sent again on a
    // new connection, and the client never knows.
    let response = plane.invoke("read", Some(API_KEY), "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(upstream.seen(), vec!["GET /read HTTP/1.1"; 3]);

    // A POST on a connection that drops it may have been acted on: it is not repeated.
    let (status, code, _) = gateway_error(plane.invoke("write", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unreachable"));
    let posts = upstream
        .seen()
        .iter()
        .filter(|line| line.starts_with("POST"))
        .count();
    assert_eq!(posts, 1);
    plane.shutdown().await;
}
