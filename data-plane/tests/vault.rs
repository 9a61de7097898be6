//! The vault through the real proxy and real upstreams: host binding, redaction of what the
//! upstream echoes, the opening keyring, and events (in-process, and Redis at 127.0.0.1:6379
//! with one key prefix per test).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use airlock_data_plane::EventSink;
use airlock_shared::events::{EventKind, GatewayEvent};
use airlock_shared::keys::RedisNames;
use airlock_shared::seal::{OpeningKey, OpeningKeyring};
use airlock_shared::wire::EnvironmentSnapshot;
use base64::Engine as _;
use common::*;
use uuid::Uuid;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const API_KEY: &str = "ak_vault_test_key_full";
const NARROW_KEY: &str = "ak_vault_test_key_narrow";
const WRONG_KEY: &str = "ak_vault_test_key_unknown";
/// Echoed back by the upstream. Every encoding changes it: `/`, `+`, `&`, `=`, `"`, space.
const ECHOED: &str = "sk-live/Zq9+&k=\"v\" 7f3a";
const TOKEN: &str = "tok-live-canary-4c1d9e";

/// Every form of `ECHOED` a client could decode the value from.
fn echoed_forms() -> Vec<String> {
    let json = serde_json::to_string(ECHOED).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    vec![
        ECHOED.to_string(),
        json[1..json.len() - 1].to_string(),
        b64.encode(ECHOED),
        url_safe.encode(ECHOED),
        // Inside `Basic base64(user:value)`: the characters that depend only on the value.
        b64.encode(format!("user:{ECHOED}"))[8..28].to_string(),
        "sk-live%2FZq9%2B%26k%3D%22v%22%207f3a".to_string(),
        "sk-live%2FZq9%2B%26k%3D%22v%22+7f3a".to_string(),
        // A piece of the value alone must not survive either.
        "Zq9".to_string(),
    ]
}

fn assert_nothing_leaks(what: &str, text: &str) {
    for form in echoed_forms() {
        assert!(!text.contains(&form), "{what} leaks {form:?}: {text}");
    }
    for secret in [TOKEN, API_KEY, NARROW_KEY, WRONG_KEY] {
        assert!(!text.contains(secret), "{what} leaks {secret:?}: {text}");
    }
}

/// What replaces an occurrence of `len` bytes in a body (spelled out here, not taken from the
/// data plane): as long as the occurrence, `[REDACTED***]` from 10 bytes on, `***` below.
fn mask(len: usize) -> String {
    if len < 10 {
        "*".repeat(len)
    } else {
        format!("[REDACTED{}]", "*".repeat(len - 10))
    }
}

/// Every response header, as text.
fn header_text(response: &reqwest::Response) -> String {
    response
        .headers()
        .iter()
        .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

const REFLECT_FORMS: &[&str] = &[
    "header",
    "json",
    "base64",
    "urlencoded",
    "chunked",
    "gzip",
    "gzip-chunked",
    "deflate",
    "br",
];

fn environment(key: &OpeningKey, upstream: &Upstream, env: Uuid) -> SnapshotBuilder {
    let base = format!("http://{}", upstream.addr);
    let port = upstream.addr.port();
    let localhost = format!("http://localhost:{port}");
    let mut builder = SnapshotBuilder::new(env, 1)
        .secret(key, "ECHOED", ECHOED)
        .secret(key, "TOKEN", TOKEN)
        .secret_bound(key, "LOCAL", "local-secret-value", &["localhost"])
        .secret_bound(key, "WILD", "wild-secret-value", &["*.wildcard.invalid"])
        .secret_bound(key, "NOWHERE", "nowhere-secret-value", &[]);
    for form in REFLECT_FORMS {
        builder = builder.function(
            &format!("reflect_{form}"),
            "GET",
            &format!("{base}/reflect/{form}"),
            &[("x-reflect", "{{secrets.ECHOED}}")],
            None,
            5_000,
        );
    }
    let with_token = &[("authorization", "Bearer {{secrets.TOKEN}}")][..];
    builder
        .function(
            "reflect_literal",
            "GET",
            &format!("{base}/reflect/json"),
            &[("x-reflect", "not a secret")],
            None,
            5_000,
        )
        .function(
            "use_token",
            "POST",
            &format!("{base}/use"),
            with_token,
            Some(r#"{"a": "{{args.a}}"}"#),
            5_000,
        )
        .function(
            "token_to_localhost",
            "GET",
            &format!("{localhost}/x"),
            with_token,
            None,
            5_000,
        )
        .function(
            "local_to_localhost",
            "GET",
            &format!("{localhost}/local"),
            &[("authorization", "{{secrets.LOCAL}}")],
            None,
            5_000,
        )
        .function(
            "forward_to_localhost",
            "GET",
            &format!("{localhost}/fwd/{{{{args.v}}}}"),
            &[],
            None,
            5_000,
        )
        .function(
            "forward_to_ip",
            "GET",
            &format!("{base}/fwd/{{{{args.v}}}}"),
            &[],
            None,
            5_000,
        )
        .function(
            "wildcard",
            "GET",
            &format!("http://api.wildcard.invalid:{port}/w"),
            &[("authorization", "{{secrets.WILD}}")],
            None,
            1_000,
        )
        .function(
            "bound_nowhere",
            "GET",
            &format!("{base}/n"),
            &[("authorization", "{{secrets.NOWHERE}}")],
            None,
            5_000,
        )
        .function(
            "needs_missing",
            "GET",
            &format!("{base}/m"),
            &[("authorization", "{{secrets.NOT_SET}}")],
            None,
            5_000,
        )
        .function(
            "closed_port",
            "GET",
            &format!("http://127.0.0.1:{}/x", free_port()),
            with_token,
            None,
            2_000,
        )
        .function(
            "slow",
            "GET",
            &format!("{base}/sleep/2000"),
            with_token,
            None,
            300,
        )
        .function(
            "server_error",
            "GET",
            &format!("{base}/status/503"),
            with_token,
            None,
            5_000,
        )
        .key(API_KEY, &["*"])
        .key(NARROW_KEY, &["use_token"])
}

async fn plane_with_upstream() -> (TestPlane, Upstream) {
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let snapshot = environment(&key, &upstream, Uuid::new_v4()).build();
    (TestPlane::start(&key, vec![snapshot]).await, upstream)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_is_only_sent_to_the_hosts_it_is_bound_to() {
    let (plane, upstream) = plane_with_upstream().await;

    // A function pointing at a host the secret is not bound to (`localhost` is not
    // `127.0.0.1`, although it resolves there).
    let (status, code, message) =
        gateway_error(plane.invoke("token_to_localhost", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (403, "secret_host_denied"));
    assert_eq!(
        message,
        "secret `TOKEN` may not be sent to host `localhost`"
    );

    // A client passing a reference into a function that points elsewhere.
    let args = r#"{"v": {"$secret": "TOKEN"}}"#;
    let (status, code, message) = gateway_error(
        plane
            .invoke("forward_to_localhost", Some(API_KEY), args)
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "secret_host_denied"));
    assert!(
        message.contains("`TOKEN`") && message.contains("`localhost`"),
        "{message}"
    );

    // A secret bound to no host at all goes nowhere.
    let (status, code, _) =
        gateway_error(plane.invoke("bound_nowhere", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (403, "secret_host_denied"));

    assert!(
        upstream.requests().is_empty(),
        "nothing may reach the upstream: {:?}",
        upstream.requests()
    );

    // Bound hosts work: the same reference into a function at 127.0.0.1, and a secret bound
    // to `localhost` sent there.
    let response = plane.invoke("forward_to_ip", Some(API_KEY), args).await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().target, "/fwd/tok-live-canary-4c1d9e");
    let response = plane.invoke("local_to_localhost", Some(API_KEY), "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.last().header("authorization"),
        Some("local-secret-value")
    );

    // A wildcard binding lets the request through to name resolution (the `.invalid` name
    // cannot resolve, so it ends as unreachable, not as denied).
    let (status, code, _) = gateway_error(plane.invoke("wildcard", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unreachable"));
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_echoed_by_the_upstream_never_reach_the_client() {
    let (plane, upstream) = plane_with_upstream().await;
    for form in REFLECT_FORMS.iter().filter(|form| **form != "br") {
        let response = plane
            .invoke(&format!("reflect_{form}"), Some(API_KEY), "")
            .await;
        assert_eq!(response.status(), 200, "{form}");
        assert_eq!(
            upstream.last().header("x-reflect"),
            Some(ECHOED),
            "{form}: the secret was injected"
        );
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{form}: sent decoded"
        );
        // Body masks keep the length: an identity body the upstream sent with a length keeps
        // it and is not re-chunked; a decoded one, or one sent chunked, is chunked.
        let keeps_length = matches!(*form, "header" | "json" | "base64" | "urlencoded");
        let length = response
            .headers()
            .get("content-length")
            .map(|length| length.to_str().unwrap().parse::<usize>().unwrap());
        assert_eq!(length.is_some(), keeps_length, "{form}: {length:?}");
        let chunked = response
            .headers()
            .get("transfer-encoding")
            .is_some_and(|coding| coding.as_bytes().eq_ignore_ascii_case(b"chunked"));
        assert_eq!(chunked, !keeps_length, "{form}");
        let headers = header_text(&response);
        let body = response.text().await.unwrap();
        if let Some(length) = length {
            // The client reads the whole (masked) body the length announces.
            assert_eq!(body.len(), length, "{form}: {body}");
        }
        assert_nothing_leaks(&format!("{form} headers"), &headers);
        assert_nothing_leaks(&format!("{form} body"), &body);
        let redacted_somewhere = headers.contains("[REDACTED]") || body.contains("[REDACTED");
        assert!(redacted_somewhere, "{form}: {headers}{body}");
        // Each form is gone and a mask of its length stands where it was.
        let forms = echoed_forms();
        let json_escaped = &forms[1];
        let b64 = base64::engine::general_purpose::STANDARD;
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        match *form {
            "header" => {
                // Header values keep the plain marker.
                assert!(headers.contains("x-echo: [REDACTED]\n"), "{headers}");
                assert!(headers.contains("x-echo-b64: [REDACTED]\n"), "{headers}");
                assert_eq!(body, r#"{"ok":true}"#);
            }
            "json" | "gzip" | "deflate" => {
                assert_eq!(
                    body,
                    format!(r#"{{"echo":"{}"}}"#, mask(json_escaped.len()))
                );
            }
            "gzip-chunked" => {
                let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
                assert_eq!(json, serde_json::json!({"echo": mask(json_escaped.len())}));
            }
            "base64" => {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["standard"], mask(b64.encode(ECHOED).len()));
                assert_eq!(json["url_safe"], mask(url_safe.encode(ECHOED).len()));
                let basic = json["basic"].as_str().unwrap();
                assert!(basic.starts_with("Basic ") && basic.contains("[REDACTED"));
                assert_eq!(
                    basic.len(),
                    "Basic ".len() + b64.encode(format!("user:{ECHOED}")).len()
                );
            }
            "urlencoded" => assert_eq!(
                body,
                format!(
                    "next=/cb%3Ftoken%3D{}&token={}",
                    mask(forms[5].len()),
                    mask(forms[6].len())
                )
            ),
            "chunked" => assert_eq!(
                body,
                format!(r#"{{"start":"{}","end":true}}"#, mask(ECHOED.len()))
            ),
            _ => unreachable!(),
        }
    }

    // An encoding that cannot be inspected is refused, not passed through.
    let (status, code, _) =
        gateway_error(plane.invoke("reflect_br", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_response_rejected"));

    // Without injected secrets the response passes untouched, length and all.
    let response = plane.invoke("reflect_literal", Some(API_KEY), "").await;
    assert_eq!(response.status(), 200);
    let body = r#"{"echo":"not a secret"}"#;
    assert_eq!(
        response.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(response.text().await.unwrap(), body);
    plane.shutdown().await;
}

/// A snapshot whose secrets are sealed to different keys.
fn rotation_snapshot(
    upstream: &Upstream,
    env: Uuid,
    old: &OpeningKey,
    new: &OpeningKey,
    unknown: &OpeningKey,
) -> EnvironmentSnapshot {
    let base = format!("http://{}", upstream.addr);
    let function = |builder: SnapshotBuilder, name: &str, secret: &str| {
        let header = format!("{{{{secrets.{secret}}}}}");
        builder.function(
            name,
            "GET",
            &format!("{base}/{name}"),
            &[("x-secret", header.as_str())],
            None,
            5_000,
        )
    };
    let builder = SnapshotBuilder::new(env, 1)
        .secret(old, "SEALED_OLD", "sealed-to-the-old-key")
        .secret(new, "SEALED_NEW", "sealed-to-the-new-key")
        .secret(unknown, "SEALED_UNKNOWN", "sealed-to-an-unknown-key")
        .key(API_KEY, &["*"]);
    let builder = function(builder, "use_old", "SEALED_OLD");
    let builder = function(builder, "use_new", "SEALED_NEW");
    function(builder, "use_unknown", "SEALED_UNKNOWN").build()
}

#[tokio::test(flavor = "multi_thread")]
async fn during_a_key_rotation_secrets_sealed_to_either_key_open() {
    let (old, new, unknown) = (
        OpeningKey::generate(),
        OpeningKey::generate(),
        OpeningKey::generate(),
    );
    let upstream = Upstream::start().await;
    let env = Uuid::new_v4();
    let snapshot = rotation_snapshot(&upstream, env, &old, &new, &unknown);
    let keys = OpeningKeyring::new(vec![old, new]).unwrap();
    let (plane, mut events) = TestPlane::start_with_events(keys, vec![snapshot]).await;

    for (function, value) in [
        ("use_old", "sealed-to-the-old-key"),
        ("use_new", "sealed-to-the-new-key"),
    ] {
        let response = plane.invoke(function, Some(API_KEY), "").await;
        assert_eq!(response.status(), 200, "{function}");
        assert_eq!(upstream.last().header("x-secret"), Some(value));
        let id = request_id(&response);
        let used = events.for_request(&id, 1).await;
        assert_eq!(used[0].kind, EventKind::SecretUsed);
    }

    // Sealed to a key this data plane does not hold: fail closed, and say so.
    let before = upstream.requests().len();
    let response = plane.invoke("use_unknown", Some(API_KEY), "").await;
    let id = request_id(&response);
    let (status, code, message) = gateway_error(response).await;
    assert_eq!((status, code.as_str()), (500, "secret_unavailable"));
    assert!(message.contains("`SEALED_UNKNOWN`"), "{message}");
    assert_eq!(upstream.requests().len(), before, "nothing was sent");
    let event = events.for_request(&id, 1).await.remove(0);
    assert_eq!(event.kind, EventKind::SecretUnavailable);
    assert_eq!(event.secrets, ["SEALED_UNKNOWN"]);
    assert_eq!(event.status, 500);
    assert_eq!(event.environment_id, Some(env));
    let json = serde_json::to_string(&event).unwrap();
    assert!(!json.contains("sealed-to-an-unknown-key"), "{json}");
    plane.shutdown().await;
}

/// One request's outcome: its events must be exactly `kinds`, in order.
async fn expect_events(
    events: &mut EventReceiver,
    response: reqwest::Response,
    status: u16,
    kinds: &[EventKind],
) -> Vec<GatewayEvent> {
    assert_eq!(response.status(), status);
    let id = request_id(&response);
    let found = events.for_request(&id, kinds.len()).await;
    assert_eq!(
        found.iter().map(|e| e.kind).collect::<Vec<_>>(),
        kinds,
        "{found:?}"
    );
    for event in &found {
        assert_eq!(event.status, status, "{event:?}");
        assert_eq!(event.request_id, id);
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_reports_its_events_with_names_and_ids_only() {
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &upstream, env).build();
    let full_key = key_id(&snapshot, API_KEY);
    let narrow_key = key_id(&snapshot, NARROW_KEY);
    let (plane, mut events) = TestPlane::start_with_events(key.into(), vec![snapshot]).await;
    let mut all = Vec::new();

    // Secrets used: the audit trail.
    let found = expect_events(
        &mut events,
        plane
            .invoke("use_token", Some(API_KEY), r#"{"a": "x"}"#)
            .await,
        200,
        &[EventKind::SecretUsed],
    )
    .await;
    let used = &found[0];
    assert_eq!(used.secrets, ["TOKEN"]);
    assert_eq!(used.function.as_deref(), Some("use_token"));
    assert_eq!(used.upstream_host.as_deref(), Some("127.0.0.1"));
    assert_eq!(used.api_key_id, Some(full_key));
    assert_eq!(used.tenant_id, Some(TENANT));
    assert_eq!(used.environment_id, Some(env));
    all.extend(found);

    // Unknown key: nothing about the tenant is known.
    let found = expect_events(
        &mut events,
        plane.invoke("use_token", Some(WRONG_KEY), "").await,
        401,
        &[EventKind::AuthDenied],
    )
    .await;
    assert_eq!(found[0].api_key_id, None);
    assert_eq!(found[0].tenant_id, None);
    assert_eq!(found[0].function.as_deref(), Some("use_token"));
    all.extend(found);

    let found = expect_events(
        &mut events,
        plane
            .invoke("token_to_localhost", Some(NARROW_KEY), "")
            .await,
        403,
        &[EventKind::ScopeDenied],
    )
    .await;
    assert_eq!(found[0].api_key_id, Some(narrow_key));
    assert_eq!(found[0].environment_id, Some(env));
    all.extend(found);

    let found = expect_events(
        &mut events,
        plane.invoke("needs_missing", Some(API_KEY), "").await,
        500,
        &[EventKind::SecretUnavailable],
    )
    .await;
    assert_eq!(found[0].secrets, ["NOT_SET"]);
    all.extend(found);

    let found = expect_events(
        &mut events,
        plane.invoke("token_to_localhost", Some(API_KEY), "").await,
        403,
        &[EventKind::SecretHostDenied],
    )
    .await;
    assert_eq!(found[0].secrets, ["TOKEN"]);
    assert_eq!(found[0].upstream_host.as_deref(), Some("localhost"));
    all.extend(found);

    let found = expect_events(
        &mut events,
        plane
            .invoke(
                "forward_to_localhost",
                Some(API_KEY),
                r#"{"v": {"$secret": "TOKEN"}}"#,
            )
            .await,
        403,
        &[EventKind::SecretHostDenied],
    )
    .await;
    assert_eq!(found[0].secrets, ["TOKEN"]);
    all.extend(found);

    // The connection was refused: the secret never left, so no SecretUsed.
    all.extend(
        expect_events(
            &mut events,
            plane.invoke("closed_port", Some(API_KEY), "").await,
            502,
            &[EventKind::UpstreamUnreachable],
        )
        .await,
    );
    all.extend(
        expect_events(
            &mut events,
            plane.invoke("slow", Some(API_KEY), "").await,
            504,
            &[EventKind::SecretUsed, EventKind::UpstreamTimeout],
        )
        .await,
    );
    let found = expect_events(
        &mut events,
        plane.invoke("server_error", Some(API_KEY), "").await,
        503,
        &[EventKind::SecretUsed, EventKind::UpstreamError],
    )
    .await;
    assert!(found[1].message.contains("503"), "{:?}", found[1]);
    all.extend(found);

    // A known key's mistakes are events (an integration bug); a stranger's are only the
    // `auth.denied` above.
    let found = expect_events(
        &mut events,
        plane.invoke("use_token", Some(API_KEY), "[1]").await,
        400,
        &[EventKind::RequestInvalid],
    )
    .await;
    assert_eq!(
        found[0].message,
        "request body is not a JSON object of arguments"
    );
    all.extend(found);
    let response = plane.invoke("use_token", Some("ak_nobody"), "[1]").await;
    all.extend(expect_events(&mut events, response, 401, &[EventKind::AuthDenied]).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stray = events.drain();
    assert!(stray.is_empty(), "unexpected events: {stray:?}");

    for event in &all {
        let json = serde_json::to_string(event).unwrap();
        assert_nothing_leaks("event", &json);
    }
    assert_eq!(plane.handle.as_ref().unwrap().dropped_events(), 0);
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_the_redis_stream() {
    let names = RedisNames::new(format!("test-{}", Uuid::new_v4()));
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let snapshot = environment(&key, &upstream, Uuid::new_v4()).build();
    let plane = TestPlane::start_full(
        key.into(),
        vec![snapshot],
        None,
        EventSink::Redis {
            url: REDIS_URL.into(),
            names: names.clone(),
        },
    )
    .await;

    let mut expected = HashMap::new();
    for (function, api_key, kind) in [
        ("use_token", API_KEY, EventKind::SecretUsed),
        ("use_token", WRONG_KEY, EventKind::AuthDenied),
        ("token_to_localhost", API_KEY, EventKind::SecretHostDenied),
    ] {
        let response = plane.invoke(function, Some(api_key), r#"{"a": "x"}"#).await;
        expected.insert(request_id(&response), kind);
    }

    let mut con = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379");
    let stream = names.events_stream();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let events = loop {
        let events = stream_events(&mut con, &stream).await;
        if events.len() >= 3 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 3, "{events:?}");
    for event in &events {
        assert_eq!(
            expected.get(&event.request_id),
            Some(&event.kind),
            "{event:?}"
        );
    }
    redis::cmd("DEL")
        .arg(&stream)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    plane.shutdown().await;
}

/// The events in a Redis stream, in order. Entries hold a JSON array of consecutive events
/// (`events`) or a key usage report (`key_usage`: ids and times only); no entry's content may
/// hold a planted secret.
async fn stream_events(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<GatewayEvent> {
    let mut events = Vec::new();
    for (id, fields) in stream_entries(con, stream).await {
        for json in fields.values() {
            assert_nothing_leaks("stream entry in Redis", json);
        }
        if let Some(json) = fields.get("events") {
            events.extend(serde_json::from_str::<Vec<GatewayEvent>>(json).unwrap());
        } else {
            assert!(fields.contains_key("key_usage"), "entry {id}: {fields:?}");
        }
    }
    events
}

/// Every entry of a Redis stream, as (id, fields).
async fn stream_entries(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<(String, HashMap<String, String>)> {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_wait_in_the_queue_while_redis_is_down() {
    let names = RedisNames::new(format!("test-{}", Uuid::new_v4()));
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let snapshot = environment(&key, &upstream, Uuid::new_v4()).build();
    let flaky = FlakyRedis::start().await;
    let plane = TestPlane::start_full(
        key.into(),
        vec![snapshot],
        None,
        EventSink::Redis {
            url: flaky.url(),
            names: names.clone(),
        },
    )
    .await;
    let mut con = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379");
    let stream = names.events_stream();

    let denied = || plane.invoke("use_token", Some(WRONG_KEY), "");
    assert_eq!(denied().await.status(), 401);
    eventually(Duration::from_secs(5), || {
        let mut con = con.clone();
        let stream = stream.clone();
        async move { stream_events(&mut con, &stream).await.len() == 1 }
    })
    .await;

    // Outage: events are kept, not lost.
    flaky.set_up(false);
    for _ in 0..3 {
        assert_eq!(denied().await.status(), 401);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stream_events(&mut con, &stream).await.len(), 1);

    // Back: the delivery reconnects (backoff below 2 s here) and sends what waited.
    flaky.set_up(true);
    eventually(Duration::from_secs(6), || {
        let mut con = con.clone();
        let stream = stream.clone();
        async move { stream_events(&mut con, &stream).await.len() == 4 }
    })
    .await;
    assert_eq!(plane.handle.as_ref().unwrap().dropped_events(), 0);

    redis::cmd("DEL")
        .arg(&stream)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    plane.shutdown().await;
}
