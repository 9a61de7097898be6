//! One request to the upstream over a pooled connection: send the rendered request, read the
//! response head.
//!
//! The policy around it (which failures are retried, the OAuth 401 retry) is the caller's;
//! this module only does the exchange and says whether a failure may be retried.

use std::time::Duration;

use http::header;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::Error;

use super::render::Invocation;

/// What a failed exchange tells the caller.
pub(super) struct ExchangeFailure {
    pub error: Box<Error>,
    /// The connection came from the pool and failed before anything of the response arrived:
    /// the upstream most likely closed it while it was idle, so the request probably never
    /// reached it (Pingora marks such errors `ReusedOnly`).
    pub stale_connection: bool,
}

/// Send `invocation` on `upstream` and read the final response head (interim 1xx responses
/// are read past), each read and write within `timeout`. `reused`: whether the connection
/// came from the pool.
pub(super) async fn send(
    upstream: &mut UpstreamSession,
    reused: bool,
    invocation: &Invocation,
    timeout: Duration,
) -> Result<(), ExchangeFailure> {
    upstream.set_read_timeout(Some(timeout));
    upstream.set_write_timeout(Some(timeout));
    let sent = async {
        upstream
            .write_request_header(Box::new(request_head(invocation)?))
            .await?;
        if let Some(body) = &invocation.body {
            upstream.write_request_body(body.clone(), true).await?;
        }
        upstream.finish_request_body().await?;
        loop {
            upstream.read_response_header().await?;
            match upstream.response_header().map(|head| head.status) {
                // 101 is refused by the caller: nothing asked for a protocol switch.
                Some(status) if status.is_informational() && status.as_u16() != 101 => {}
                _ => return Ok(()),
            }
        }
    };
    sent.await.map_err(|mut error: Box<Error>| {
        error.as_up();
        error.retry.decide_reuse(reused);
        ExchangeFailure {
            stale_connection: error.retry(),
            error,
        }
    })
}

/// The upstream request head: method, target, `Host` and the rendered headers only. Nothing of
/// the client's request (its `Authorization` header above all) is carried over.
pub(super) fn request_head(invocation: &Invocation) -> pingora::Result<RequestHeader> {
    let mut request = RequestHeader::build(
        invocation.method.clone(),
        invocation.path_and_query.as_bytes(),
        Some(invocation.headers.len() + 2),
    )?;
    request.insert_header(header::HOST, invocation.authority.clone())?;
    for (name, value) in &invocation.headers {
        request.append_header(name.clone(), value.clone())?;
    }
    match &invocation.body {
        Some(body) => request.insert_header(header::CONTENT_LENGTH, body.len().to_string())?,
        // Servers may require a length on these methods even without a body.
        None if matches!(invocation.method.as_str(), "POST" | "PUT" | "PATCH") => {
            request.insert_header(header::CONTENT_LENGTH, "0")?
        }
        None => {}
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn invocation(method: http::Method, body: Option<&'static str>) -> Invocation {
        Invocation {
            method,
            tls: false,
            host: "api.example.com".into(),
            port: 80,
            authority: http::HeaderValue::from_static("api.example.com"),
            path_and_query: "/v1/things?q=1".into(),
            headers: vec![(
                http::HeaderName::from_static("x-one"),
                http::HeaderValue::from_static("1"),
            )],
            body: body.map(|body| Bytes::from_static(body.as_bytes())),
            timeout: Duration::from_secs(1),
            secrets: vec![],
            oauth: vec![],
        }
    }

    #[test]
    fn the_head_holds_the_rendered_request_and_its_length() {
        let with_body = invocation(http::Method::POST, Some("{\"a\":1}"));
        let head = request_head(&with_body).unwrap();
        assert_eq!(head.method, http::Method::POST);
        assert_eq!(head.uri, "/v1/things?q=1");
        assert_eq!(head.headers["host"], "api.example.com");
        assert_eq!(head.headers["x-one"], "1");
        assert_eq!(head.headers["content-length"], "7");

        let empty_post = request_head(&invocation(http::Method::POST, None)).unwrap();
        assert_eq!(empty_post.headers["content-length"], "0");
        let get = request_head(&invocation(http::Method::GET, None)).unwrap();
        assert!(get.headers.get("content-length").is_none());
        assert!(get.headers.get("transfer-encoding").is_none());
    }
}
