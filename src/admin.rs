//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `POST /purge` ([`purge`]),
//! `/status.json` (a summary for
//! `shellac stat` and the status page, in [`status`]) and `/`, the status page ([`page`]). It
//! is never the public listener; config validation refuses to share a port.

pub mod page;
pub mod purge;
pub mod status;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

pub struct Admin;

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path() == "/purge" {
            return purge::respond(session).await;
        }
        let (status, ctype, body) = match session.req_header().uri.path() {
            // A draining process shares the admin socket with its successor; answering would
            // let Prometheus see counters from both, which rate() misreads as resets.
            "/metrics" if crate::reload::draining() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"draining: this process is being replaced\n".to_vec(),
            ),
            "/metrics" => {
                let mut body = Vec::with_capacity(16 * 1024);
                match TextEncoder::new().encode(&prometheus::gather(), &mut body) {
                    Ok(()) => (StatusCode::OK, prometheus::TEXT_FORMAT, body),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        e.to_string().into_bytes(),
                    ),
                }
            }
            "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => crate::readiness::readyz(),
            "/status.json" => (
                StatusCode::OK,
                "application/json",
                status::snapshot().to_string().into_bytes(),
            ),
            "/" => (
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::HTML.as_bytes().to_vec(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found; try /, /status.json, /metrics or /healthz\n".to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, ctype)
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::CACHE_CONTROL, "no-store")
            .body(body)
            .unwrap()
    }
}
