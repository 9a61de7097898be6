//! HTTPS upstreams: SNI, verification against system roots plus the extra CA file, pooling.

mod common;

use std::collections::HashSet;

use airlock_shared::seal::OpeningKey;
use common::*;
use uuid::Uuid;

const API_KEY: &str = "ak_tls_test_key";

fn snapshot(upstream: &Upstream) -> airlock_shared::wire::EnvironmentSnapshot {
    let port = upstream.addr.port();
    SnapshotBuilder::new(Uuid::new_v4(), 1)
        .function(
            "by_name",
            "POST",
            &format!("https://localhost:{port}/named"),
            &[],
            Some(r#"{"a": {{args.a}}}"#),
            3_000,
        )
        .function(
            "by_ip",
            "GET",
            &format!("https://127.0.0.1:{port}/ip"),
            &[],
            None,
            3_000,
        )
        .key(API_KEY, &["*"])
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_signed_by_the_extra_ca() {
    let key = OpeningKey::generate();
    let upstream = Upstream::start_tls().await;
    let plane =
        TestPlane::start_with(&key, vec![snapshot(&upstream)], Some(fixture("ca.pem"))).await;

    for _ in 0..3 {
        let response = plane.invoke("by_name", Some(API_KEY), r#"{"a": 7}"#).await;
        assert_eq!(response.status(), 200);
    }
    let seen = upstream.last();
    assert_eq!(seen.target, "/named");
    assert_eq!(seen.body, br#"{"a": 7}"#);
    assert_eq!(
        seen.header("host"),
        Some(format!("localhost:{}", upstream.addr.port()).as_str())
    );
    let peers: HashSet<_> = upstream.requests().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 1, "TLS connections are pooled too: {peers:?}");

    // An IP literal host is verified against the certificate's IP address.
    assert_eq!(plane.invoke("by_ip", Some(API_KEY), "").await.status(), 200);
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_an_untrusted_certificate_is_refused() {
    let key = OpeningKey::generate();
    let upstream = Upstream::start_tls().await;
    // System roots only: the test CA is not trusted.
    let plane = TestPlane::start(&key, vec![snapshot(&upstream)]).await;
    let (status, code, _) =
        gateway_error(plane.invoke("by_name", Some(API_KEY), r#"{"a": 1}"#).await).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unreachable"));
    assert!(upstream.requests().is_empty());
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_ca_file_is_a_startup_error() {
    let (_sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let error = airlock_data_plane::spawn(airlock_data_plane::DataPlaneConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
        opening_keys: OpeningKey::generate().into(),
        source: airlock_data_plane::ConfigSource::InProcess(receiver),
        events: airlock_data_plane::EventSink::Disabled,
        threads: 1,
        upstream_ca_file: Some(fixture("upstream.key")),
    })
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("upstream CA file"),
        "{error:#}"
    );
}
