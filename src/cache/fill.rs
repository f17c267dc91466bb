//! A fill of both tiers, and the end of the fleet lease that goes with it. The lease must end
//! on every path: a committed fill deletes it (waiters read the fill), anything else turns it
//! into a pass (waiters go to the origin at once): a tier refusing the object, a body that
//! fails mid-fill, or a fill Pingora abandons (the handler is dropped without `finish`).

use super::tiered::Tiered;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::CacheKey;
use pingora::cache::storage::{HandleMiss, MissFinishType, MissHandler};
use pingora::{Error, ErrorType, Result};

pub(super) struct TieredMiss {
    tiered: &'static Tiered,
    /// `Some` until the lease's end is decided (by `finish` or by `drop`).
    key: Option<CacheKey>,
    l1: Option<MissHandler>,
    l2: Option<MissHandler>,
}

impl TieredMiss {
    pub(super) fn new(
        tiered: &'static Tiered,
        key: CacheKey,
        l1: Option<MissHandler>,
        l2: Option<MissHandler>,
    ) -> TieredMiss {
        TieredMiss {
            tiered,
            key: Some(key),
            l1,
            l2,
        }
    }
}

impl Drop for TieredMiss {
    fn drop(&mut self) {
        // Dropped unfinished: the body failed or was abandoned, so no fill will follow.
        if let Some(key) = self.key.take() {
            self.tiered.release(&key, true);
        }
    }
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        // A tier that refuses (too large, memcached down) drops out; the other carries on.
        if let Some(m) = &mut self.l1 {
            if m.write_body(data.clone(), eof).await.is_err() {
                self.l1 = None;
            }
        }
        if let Some(m) = &mut self.l2 {
            if m.write_body(data, eof).await.is_err() {
                self.l2 = None;
            }
        }
        if self.l1.is_none() && self.l2.is_none() {
            return Error::e_explain(ErrorType::InternalError, "no tier accepted the body");
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let tiered = self.tiered;
        let key = self.key.take().expect("finish runs once");
        let mut created = None;
        if let Some(m) = self.l1.take() {
            created = m.finish().await.ok();
        }
        if let Some(m) = self.l2.take() {
            if let Some(done) = created {
                // L1 already serves this node; memcached is for the rest of the fleet.
                tokio::spawn(async move {
                    let ok = m.finish().await.is_ok();
                    tiered.release(&key, !ok);
                });
                return Ok(done);
            }
            let r = m.finish().await;
            tiered.release(&key, r.is_err());
            return r;
        }
        tiered.release(&key, created.is_none());
        created.ok_or_else(|| Error::explain(ErrorType::InternalError, "no tier stored the object"))
    }
}
