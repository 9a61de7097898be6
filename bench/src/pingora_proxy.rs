//! Scenario C: the smallest useful Pingora reverse proxy. It forwards every request to one
//! upstream over pooled keepalive connections and adds one static header, nothing else: what
//! Airlock's data plane costs on top of Pingora itself is D minus C.
//!
//! Two ways to write it with Pingora: [`BareProxy`], the `ProxyHttp` trait of pingora-proxy
//! (scenario C, what a Pingora user writes first), and [`SessionProxy`], an `HttpServerApp`
//! that drives pingora-core's HTTP sessions and upstream connector directly, as Airlock's
//! data plane does (a step of the C-to-D table).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::protocols::http::ServerSession;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;

/// The header the proxy adds, like nginx's `proxy_set_header` in scenario B.
pub const STATIC_HEADER: (&str, &str) = ("x-bench-proxy", "pingora");

struct BareProxy {
    upstream: SocketAddr,
    /// Drop the upstream's `content-length`, so the client gets the body chunked: what
    /// Airlock does to the gzip/deflate responses it decodes to redact (identity bodies keep
    /// their length: body masks are as long as what they replace).
    chunked: bool,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        upstream_request.insert_header(STATIC_HEADER.0, STATIC_HEADER.1)?;
        Ok(())
    }

    // The same hook, and the same change, as Airlock's data plane when it redacts.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if self.chunked {
            upstream_response.remove_header("content-length");
        }
        Ok(())
    }
}

/// The same proxy on pingora-core's sessions: read the request, send it with the static
/// header over a pooled connection, stream the response back.
struct SessionProxy {
    upstream: SocketAddr,
    connector: Connector,
}

impl SessionProxy {
    /// `None` when the exchange failed: the client connection is closed.
    async fn proxy(&self, session: &mut ServerSession) -> Option<()> {
        let peer = HttpPeer::new(self.upstream, false, String::new());
        let (mut upstream, _reused) = self.connector.get_http_session(&peer).await.ok()?;
        let mut request = session.req_header().clone();
        request
            .insert_header(STATIC_HEADER.0, STATIC_HEADER.1)
            .ok()?;
        upstream
            .write_request_header(Box::new(request))
            .await
            .ok()?;
        while let Some(chunk) = session.read_request_body().await.ok()? {
            upstream.write_request_body(chunk, false).await.ok()?;
        }
        upstream.finish_request_body().await.ok()?;
        upstream.read_response_header().await.ok()?;
        let response = upstream.response_header()?.clone();
        session
            .write_response_header(Box::new(response))
            .await
            .ok()?;
        loop {
            let chunk = if upstream.response_done() {
                None
            } else {
                upstream.read_response_body().await.ok()?
            };
            let end = chunk.is_none() || upstream.response_done();
            session
                .write_response_body(chunk.unwrap_or_default(), end)
                .await
                .ok()?;
            if end {
                break;
            }
        }
        self.connector
            .release_http_session(upstream, &peer, None)
            .await;
        Some(())
    }
}

#[async_trait]
impl HttpServerApp for SessionProxy {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        self.proxy(&mut session).await?;
        let persistent = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(reusable, persistent))
    }
}

/// Which of the two proxies to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// [`BareProxy`] (pingora-proxy's `ProxyHttp`).
    ProxyHttp { chunked: bool },
    /// [`SessionProxy`] (pingora-core's sessions).
    Sessions,
}

/// Serve on `listen` until the process is killed.
pub fn run(listen: SocketAddr, upstream: SocketAddr, threads: usize, flavor: Flavor) -> ! {
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    match flavor {
        Flavor::ProxyHttp { chunked } => {
            let mut service =
                http_proxy_service(&server.configuration, BareProxy { upstream, chunked });
            service.add_tcp(&listen.to_string());
            server.add_service(service);
        }
        Flavor::Sessions => {
            let app = SessionProxy {
                upstream,
                connector: Connector::new(None),
            };
            let mut service = Service::new("session proxy".to_string(), app);
            service.add_tcp(&listen.to_string());
            server.add_service(service);
        }
    }
    server.run_forever()
}
