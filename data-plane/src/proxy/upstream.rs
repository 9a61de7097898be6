//! Where a rendered request goes: name resolution and the Pingora peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pingora::upstreams::peer::HttpPeer;

use super::error::GatewayError;
use super::render::Invocation;

/// How long a resolved address is reused. Pingora's `HttpPeer` wants an address, and
/// resolving on every request would put a blocking-pool DNS lookup on the hot path.
const DNS_TTL: Duration = Duration::from_secs(30);
/// Entries kept before expired ones are swept.
const DNS_CACHE_SWEEP_AT: usize = 1024;
/// How long an idle pooled upstream connection is kept.
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A small TTL cache in front of the system resolver.
#[derive(Debug, Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

impl Resolver {
    /// The address to connect to for `host:port`. IP literals skip the resolver.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<SocketAddr, GatewayError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        let now = Instant::now();
        if let Some((addr, expires)) = self.lock().get(&key) {
            if *expires > now {
                return Ok(*addr);
            }
        }
        let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await;
        // A failed or slow lookup both mean the upstream cannot be reached.
        let addr = match lookup {
            Ok(Ok(mut addrs)) => addrs.next(),
            Ok(Err(_)) | Err(_) => None,
        }
        .ok_or_else(|| {
            GatewayError::UpstreamUnreachable(format!("cannot resolve host `{host}`"))
        })?;
        let mut cache = self.lock();
        if cache.len() >= DNS_CACHE_SWEEP_AT {
            cache.retain(|_, (_, expires)| *expires > now);
        }
        cache.insert(key, (addr, now + DNS_TTL));
        Ok(addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), (SocketAddr, Instant)>> {
        // The map holds no invariant a panic could break.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The Pingora peer for `invocation`.
///
/// Pingora pools upstream connections by the peer's address, scheme, SNI and verification
/// options, so every peer for the same upstream is built the same way (SNI = host for TLS,
/// default verification, HTTP/1.1) to reuse connections across requests and functions.
/// Connect timeouts are per request and not part of the pool key; the exchange sets its read
/// and write timeouts on the session ([`super::exchange::send`]).
pub fn peer(invocation: &Invocation, addr: SocketAddr, remaining: Duration) -> HttpPeer {
    let sni = if invocation.tls {
        invocation.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, invocation.tls, sni);
    let options = &mut peer.options;
    options.connection_timeout = Some(remaining);
    options.total_connection_timeout = Some(remaining);
    options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
    peer
}

#[cfg(test)]
mod tests {
    use pingora::upstreams::peer::Peer as _;

    use super::*;

    fn invocation(host: &str, tls: bool) -> Invocation {
        Invocation {
            method: http::Method::GET,
            tls,
            host: host.into(),
            port: 443,
            authority: http::HeaderValue::from_static("x"),
            path_and_query: "/".into(),
            headers: vec![],
            body: None,
            timeout: Duration::from_secs(1),
            secrets: vec![],
            oauth: vec![],
        }
    }

    #[test]
    fn peers_for_one_upstream_share_a_pool_key_whatever_the_timeout() {
        let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let a = peer(
            &invocation("api.example.com", true),
            addr,
            Duration::from_secs(1),
        );
        let b = peer(
            &invocation("api.example.com", true),
            addr,
            Duration::from_secs(9),
        );
        assert_eq!(a.reuse_hash(), b.reuse_hash());
        assert_eq!(a.sni(), "api.example.com");
        let plain = peer(
            &invocation("api.example.com", false),
            addr,
            Duration::from_secs(1),
        );
        assert_ne!(a.reuse_hash(), plain.reuse_hash());
    }

    #[tokio::test]
    async fn ip_literals_and_localhost_resolve() {
        let resolver = Resolver::default();
        let timeout = Duration::from_secs(2);
        assert_eq!(
            resolver.resolve("127.0.0.1", 80, timeout).await.unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            resolver.resolve("::1", 81, timeout).await.unwrap(),
            "[::1]:81".parse().unwrap()
        );
        let local = resolver.resolve("localhost", 82, timeout).await.unwrap();
        assert!(local.ip().is_loopback());
        assert_eq!(
            resolver
                .resolve("does-not-exist.invalid", 80, timeout)
                .await
                .unwrap_err()
                .code(),
            "upstream_unreachable"
        );
    }
}
