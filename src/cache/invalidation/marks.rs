//! The values behind fleet-wide invalidation, pure and unit-tested: a [`Marks`] pair (times of
//! the last hard and soft purge of a tag, host or everything) and a host's prefix
//! [`Registry`]. Times are milliseconds since the Unix epoch; 0 means never.

pub use crate::cache::stored::millis;
use crate::cache::stored::retires;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix purges remembered per host; a purge beyond this is refused (purge the host instead).
pub const MAX_PREFIXES_PER_HOST: usize = 256;
/// A marker older than this can retire nothing: no stored object lives longer (memcached's
/// longest TTL), so it may be forgotten.
pub const LIFETIME: Duration = Duration::from_secs(30 * 86400);

/// Returns once the clock is past millisecond `t`. A copy stored in a purge's millisecond
/// counts as purged (it may predate the purge), so a purge answers only once its millisecond
/// is over: what a client fetches after the answer is stored later, and kept. Without this a
/// refetch right after a purge was stored and then dropped as purged on its next lookup.
pub async fn past_millisecond(t: u64) {
    loop {
        let now = SystemTime::now();
        if millis(now) > t {
            return;
        }
        let rest = 1_000
            - now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_micros()
                % 1_000;
        tokio::time::sleep(Duration::from_micros(u64::from(rest))).await;
    }
}

/// When something was last purged hard (gone) and soft (stale). A hard purge is a soft one
/// too, so `soft >= hard` always holds for values written here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    pub hard: u64,
    pub soft: u64,
}

/// What the markers say about an object stored at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Soft-purged at this time: serve it as stale (revalidate, or stale within SWR/SIE).
    Stale(SystemTime),
    /// Hard-purged after it was stored: a miss.
    Purged,
}

impl Verdict {
    pub fn is_keep(self) -> bool {
        self == Verdict::Keep
    }
}

impl Marks {
    pub fn now(soft: bool) -> Marks {
        let t = millis(SystemTime::now());
        Marks {
            hard: if soft { 0 } else { t },
            soft: t,
        }
    }

    pub fn merge(self, o: Marks) -> Marks {
        Marks {
            hard: self.hard.max(o.hard),
            soft: self.soft.max(o.soft),
        }
    }

    pub fn verdict(self, stored: SystemTime) -> Verdict {
        if self.hard != 0 && retires(self.hard, stored) {
            Verdict::Purged
        } else if self.soft != 0 && retires(self.soft, stored) {
            Verdict::Stale(UNIX_EPOCH + Duration::from_millis(self.soft))
        } else {
            Verdict::Keep
        }
    }

    pub fn encode(self) -> String {
        format!("{} {}", self.hard, self.soft)
    }

    /// Anything that does not decode counts as never purged (logged by the caller).
    pub fn decode(v: &[u8]) -> Option<Marks> {
        let s = std::str::from_utf8(v).ok()?;
        let mut it = s.split_ascii_whitespace().map(|n| n.parse::<u64>().ok());
        let m = Marks {
            hard: it.next()??,
            soft: it.next()??,
        };
        it.next().is_none().then_some(m)
    }
}

/// A host's prefix purges: `(path prefix, marks)`, at most [`MAX_PREFIXES_PER_HOST`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry(pub Vec<(String, Marks)>);

impl Registry {
    /// The marks of every prefix `path` starts with.
    pub fn marks_for(&self, path: &[u8]) -> Marks {
        self.0
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_bytes()))
            .fold(Marks::default(), |acc, (_, m)| acc.merge(*m))
    }

    /// Adds a purge of `prefix`; entries past [`LIFETIME`] make room. `Err` when full.
    pub fn add(&mut self, prefix: &str, m: Marks) -> Result<(), String> {
        if let Some((_, old)) = self.0.iter_mut().find(|(p, _)| p == prefix) {
            *old = old.merge(m);
            return Ok(());
        }
        if self.0.len() >= MAX_PREFIXES_PER_HOST {
            let cutoff = millis(SystemTime::now()).saturating_sub(LIFETIME.as_millis() as u64);
            self.0.retain(|(_, m)| m.soft.max(m.hard) >= cutoff);
        }
        if self.0.len() >= MAX_PREFIXES_PER_HOST {
            return Err(format!(
                "this host already has {MAX_PREFIXES_PER_HOST} prefix purges on record; purge the host instead"
            ));
        }
        self.0.push((prefix.to_string(), m));
        Ok(())
    }

    /// One line per prefix: `hard soft prefix` (prefixes hold no spaces or line breaks).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (p, m) in &self.0 {
            out.push_str(&format!("{} {p}\n", m.encode()));
        }
        out
    }

    pub fn decode(v: &[u8]) -> Option<Registry> {
        let s = std::str::from_utf8(v).ok()?;
        let mut r = Vec::new();
        for line in s.lines().filter(|l| !l.is_empty()) {
            let mut it = line.splitn(3, ' ');
            let (h, s, p) = (it.next()?, it.next()?, it.next()?);
            let m = Marks::decode(format!("{h} {s}").as_bytes())?;
            r.push((p.to_string(), m));
        }
        Some(Registry(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_times() {
        let t = UNIX_EPOCH + Duration::from_millis(1000);
        let m = |hard, soft| Marks { hard, soft };
        assert_eq!(m(0, 0).verdict(t), Verdict::Keep);
        assert_eq!(m(999, 999).verdict(t), Verdict::Keep);
        assert_eq!(m(1000, 1000).verdict(t), Verdict::Purged);
        assert_eq!(
            m(500, 1500).verdict(t),
            Verdict::Stale(UNIX_EPOCH + Duration::from_millis(1500))
        );
        assert_eq!(m(1, 2).merge(m(3, 0)), m(3, 2));
        assert_eq!(Marks::decode(m(7, 9).encode().as_bytes()), Some(m(7, 9)));
        assert_eq!(Marks::decode(b"7"), None);
        assert_eq!(Marks::decode(b"7 x"), None);
    }

    #[test]
    fn registry_matches_prefixes_round_trips_and_is_bounded() {
        let mut r = Registry::default();
        let now = millis(SystemTime::now());
        r.add("/static/", Marks { hard: 5, soft: 5 }).unwrap();
        r.add("/static/img/", Marks { hard: 0, soft: 9 }).unwrap();
        r.add("/static/", Marks { hard: 6, soft: 6 }).unwrap();
        assert_eq!(r.0.len(), 2);
        assert_eq!(
            r.marks_for(b"/static/img/a.png"),
            Marks { hard: 6, soft: 9 }
        );
        assert_eq!(r.marks_for(b"/other"), Marks::default());
        assert_eq!(Registry::decode(r.encode().as_bytes()), Some(r.clone()));
        for i in 0..MAX_PREFIXES_PER_HOST - 2 {
            r.add(
                &format!("/p{i}/"),
                Marks {
                    hard: now,
                    soft: now,
                },
            )
            .unwrap();
        }
        // Full: the two ancient entries make room, then nothing does.
        r.add("/one-more/", Marks::now(false)).unwrap();
        assert_eq!(r.0.len(), MAX_PREFIXES_PER_HOST - 1);
        r.add("/two/", Marks::now(false)).unwrap();
        assert!(r.add("/three/", Marks::now(false)).is_err());
    }
}
