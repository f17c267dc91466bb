//! Wraps the proxy's accept-side app to count open client connections. Pingora calls
//! `process_new` once per request on a connection and parks idle keep-alive connections inside
//! it, so "inside `process_new`" is "open".

use crate::metrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;

pub struct Counted<A>(pub Arc<A>);

struct Open;
impl Open {
    fn new() -> Open {
        metrics::OPEN_CONNECTIONS.inc();
        Open
    }
}
impl Drop for Open {
    fn drop(&mut self) {
        metrics::OPEN_CONNECTIONS.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Counted<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = Open::new();
        self.0.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.0.cleanup().await
    }
}
