//! Scenario C: the smallest useful Pingora reverse proxy. It forwards every request to one
//! upstream over pooled keepalive connections and adds one static header, nothing else: what
//! Airlock's data plane costs on top of Pingora itself is D minus C.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

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

/// Serve on `listen` until the process is killed.
pub fn run(listen: SocketAddr, upstream: SocketAddr, threads: usize, chunked: bool) -> ! {
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, BareProxy { upstream, chunked });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}
