//! Lookups of concurrent requests sent to memcached together. Each lookup is a few `mg` reads
//! of one server (a head and its purge marker); sent alone, each costs its own writes, reads
//! and wake-ups on both sides, and at hundreds of concurrent hits those were most of a
//! memcached hit's CPU. Here a lookup is queued for its server; that server's dispatcher takes
//! everything queued, up to [`MAX_JOBS`] lookups, and sends it as one pipelined exchange
//! ([`AsyncMetaClient::run_many`]), with at most [`IN_FLIGHT`] exchanges out at once. Under
//! light load a batch is one lookup and nothing waits; under heavy load the queue fills while
//! batches are out, so batches grow with load. One dispatcher per server, so a server that
//! hangs holds only its own lookups, each batch for at most the lookup `timeout`.
//!
//! Each batch's exchange gives up after the lookup `timeout`, counted from when the batch is
//! sent: time a lookup spends queued behind other batches of this node is local load, not a
//! slow server, and at 1000 connections on a busy node it alone passed 50 ms, turning healthy
//! hits into misses and origin requests. The caller keeps its own, longer deadline
//! ([`whole_wait`]: 4 lookup timeouts in all), breaker accounting and metrics ([`super::io`]'s
//! `exchange` wraps the wait for its answer): a caller that gives up leaves its answer unread.
//! A batch whose server's breaker opened while it was queued fails at once instead of waiting
//! out its own deadline.

use super::breaker::Breakers;
use memcache::exp::{AsyncMetaClient, Get, GetResult, Meta};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Lookups per batch: 64 lookups of two reads each is one write of a few KiB per server.
const MAX_JOBS: usize = 64;
/// Batches out at once per server, so one slow batch does not hold every lookup behind it.
const IN_FLIGHT: usize = 2;
/// A lookup's whole wait, queue and exchange, in lookup timeouts: the bound when the queue
/// itself does not move (every batch ahead timing out), so no request waits unboundedly.
const QUEUE_DEADLINES: u32 = 4;

/// The caller's deadline for a batched lookup, queue included.
pub(super) fn whole_wait(timeout: Duration) -> Duration {
    timeout * QUEUE_DEADLINES
}

type Answer = memcache::exp::Result<Vec<memcache::exp::Result<GetResult>>>;

struct Job {
    keys: Vec<String>,
    answer: oneshot::Sender<Answer>,
}

pub(super) struct Batcher {
    /// One queue per server, by server index.
    queues: Vec<mpsc::UnboundedSender<Job>>,
}

impl Batcher {
    /// Starts one dispatcher per server on the current tokio runtime (the first lookup's:
    /// the proxy's or the admin service's, both as long-lived as the process and as many
    /// threads); a batch gives up after `deadline` (the lookup timeout: no caller waits longer).
    pub(super) fn start(
        client: &'static AsyncMetaClient,
        breakers: Arc<Breakers>,
        deadline: Duration,
    ) -> Batcher {
        let queues = (0..breakers.servers().max(1))
            .map(|server| {
                let (queue, jobs) = mpsc::unbounded_channel();
                let breakers = breakers.clone();
                tokio::spawn(dispatch(client, breakers, server, jobs, deadline));
                queue
            })
            .collect();
        Batcher { queues }
    }

    /// `mg` with CAS of every key (all on `server`), in order, as one lookup of the next batch.
    pub(super) async fn get(&self, server: usize, keys: Vec<String>) -> Answer {
        let (answer, answered) = oneshot::channel();
        let queue = &self.queues[server.min(self.queues.len() - 1)];
        if queue.send(Job { keys, answer }).is_err() {
            return Err(memcache::exp::Error::Protocol(
                "lookup dispatcher stopped".into(),
            ));
        }
        answered.await.unwrap_or_else(|_| {
            Err(memcache::exp::Error::Protocol(
                "lookup dispatcher dropped the batch".into(),
            ))
        })
    }
}

async fn dispatch(
    client: &'static AsyncMetaClient,
    breakers: Arc<Breakers>,
    server: usize,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    deadline: Duration,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = jobs.recv().await {
        // Waiting for a slot before draining is what makes batches grow under load.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let up = breakers.routable(server);
        tokio::spawn(async move {
            send(client, batch, up.then_some(deadline)).await;
            drop(slot);
        });
    }
}

/// `deadline` is `None` when the server's breaker is open: the batch fails as timed out at once.
async fn send(client: &AsyncMetaClient, batch: Vec<Job>, deadline: Option<Duration>) {
    // Callers that already gave up are left out.
    let batch: Vec<Job> = batch
        .into_iter()
        .filter(|j| !j.answer.is_closed())
        .collect();
    if batch.is_empty() {
        return;
    }
    crate::metrics::MEMCACHED_LOOKUP_BATCH.observe(batch.len() as f64);
    let mut ops = Vec::with_capacity(batch.len() * 2);
    for j in &batch {
        for k in &j.keys {
            ops.push(Get::new(k.as_str()).meta(Meta::NONE.cas()));
        }
    }
    let answer = match deadline {
        Some(d) => tokio::time::timeout(d, client.run_many(ops))
            .await
            .map_err(|_| ()),
        None => Err(()),
    };
    match answer {
        Ok(Ok(results)) => {
            let mut results = results.into_iter();
            for job in batch {
                let mine: Vec<_> = results.by_ref().take(job.keys.len()).collect();
                let _ = job.answer.send(Ok(mine));
            }
        }
        Ok(Err(e)) => {
            let what = e.to_string();
            for job in batch {
                let _ = job
                    .answer
                    .send(Err(memcache::exp::Error::Protocol(what.clone())));
            }
        }
        Err(_) => {
            for job in batch {
                let key = job.keys.first().map(|k| k.as_bytes().to_vec());
                let e = memcache::exp::Error::Timeout {
                    key: key.unwrap_or_default(),
                };
                let _ = job.answer.send(Err(e));
            }
        }
    }
}
