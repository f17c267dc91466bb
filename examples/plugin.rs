//! A custom Shellac binary with one Rust plugin, built on the library: the same command line as
//! `shellac` (`-c FILE`, `-t`, `reload`), the config's `rules:` first, then this plugin.
//!
//! `TokenGate` asks for `X-Token` on `/private/…` and checks it against a token set behind an
//! async lock (as if refreshed from an auth service): a known token passes uncached, anything
//! else gets a synthetic 401 that never reaches the origin. Every response gets `X-Plugin`.
//!
//! ```sh
//! cargo run --example plugin -- -c conf/shellac.yaml
//! ```

use shellac::rules::{
    async_trait, CacheMode, DeliverCx, Phases, Plugin, RequestCx, Synthetic, Verdict,
};
use std::sync::Arc;
use tokio::sync::RwLock;

struct TokenGate {
    tokens: RwLock<Vec<String>>,
}

#[async_trait]
impl Plugin for TokenGate {
    fn name(&self) -> &str {
        "token-gate"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::DELIVER
    }

    // Cheap and synchronous: requests elsewhere never create the async hook's future.
    fn request_matches(&self, cx: &RequestCx<'_>) -> bool {
        cx.req().uri.path().starts_with("/private/")
    }

    async fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let sent = cx
            .req()
            .headers
            .get("x-token")
            .map(|v| v.as_bytes().to_vec());
        let known = match sent {
            Some(t) => self.tokens.read().await.iter().any(|k| k.as_bytes() == t),
            None => false,
        };
        if known {
            cx.set_cache(CacheMode::Pass);
        } else {
            cx.respond(Arc::new(Synthetic {
                status: 401,
                headers: Vec::new(),
                body: "token required\n".into(),
            }));
        }
        Verdict::Applied
    }

    fn deliver(&self, cx: &mut DeliverCx<'_>) -> Verdict {
        let _ = cx.resp_mut().insert_header("x-plugin", "token-gate");
        Verdict::Applied
    }
}

fn main() {
    let gate = TokenGate {
        tokens: RwLock::new(vec!["letmein".into()]),
    };
    shellac::cli::main(vec![Arc::new(gate)]);
}
