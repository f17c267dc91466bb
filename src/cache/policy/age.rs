//! Age arithmetic (RFC 9111 §4.2.3). Every value an origin or a stored header supplies is
//! clamped to 2^31 seconds (§1.2.2) and every sum saturates, so no number can panic a request.

use super::Timing;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// §1.2.2: a delta-seconds value too large to represent is taken as 2^31.
pub const MAX_DELTA: u64 = 1 << 31;

/// The `Age` a header carries: the first member of the first field line (§5.1 makes it a
/// single value; a list or a repeat is a sender error and the first member is the best guess).
/// Absent or unparseable: zero.
pub fn age_value(headers: &http::HeaderMap) -> Duration {
    let secs = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| parse_delta(v.trim()));
    Duration::from_secs(secs.unwrap_or(0))
}

/// A delta-seconds value, clamped to [`MAX_DELTA`]; `None` when it is not digits.
pub fn parse_delta(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only: a parse failure can only be overflow.
    Some(v.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA)))
}

/// §4.2.3: the age the response already had when it arrived, corrected for transit time.
pub fn initial_age(resp: &ResponseHeader, date: SystemTime, t: Timing) -> Duration {
    let apparent_age = t
        .response_received
        .duration_since(date)
        .unwrap_or(Duration::ZERO);
    let response_delay = t
        .response_received
        .duration_since(t.request_sent)
        .unwrap_or(Duration::ZERO);
    apparent_age.max(age_value(&resp.headers).saturating_add(response_delay))
}

/// When a response received at `received` with `lifetime` and `initial_age` stops being fresh.
pub fn fresh_until(received: SystemTime, lifetime: Duration, initial_age: Duration) -> SystemTime {
    if lifetime >= initial_age {
        received
            .checked_add(lifetime - initial_age)
            .unwrap_or(received)
    } else {
        received
            .checked_sub(initial_age - lifetime)
            .unwrap_or(UNIX_EPOCH)
    }
}

/// The age of a stored response now (§4.2.3): its initial age plus the time since it was
/// stored or last validated.
pub fn current_age(meta: &CacheMeta, now: SystemTime) -> Duration {
    age_value(meta.headers())
        .saturating_add(now.duration_since(meta.epoch()).unwrap_or(Duration::ZERO))
}

/// Seconds of freshness left (negative: stale for that long).
pub fn ttl_secs(meta: &CacheMeta, now: SystemTime) -> i64 {
    let secs = |d: Duration| d.as_secs().min(i64::MAX as u64) as i64;
    match meta.fresh_until().duration_since(now) {
        Ok(d) => secs(d),
        Err(e) => -secs(e.duration()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_and_odd_ages_saturate() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::AGE, v.parse().unwrap());
            age_value(&m).as_secs()
        };
        assert_eq!(h("9223372036854775807"), MAX_DELTA);
        assert_eq!(h("99999999999999999999999"), MAX_DELTA);
        assert_eq!(h("7200, 0"), 7200);
        assert_eq!(h("-5"), 0);
        assert_eq!(h("12x"), 0);
        let received = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t = Timing {
            request_sent: UNIX_EPOCH,
            response_received: received,
        };
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Age", "18446744073709551615").unwrap();
        let age = initial_age(&resp, received, t);
        let until = fresh_until(received, Duration::from_secs(60), age);
        assert!(until < received);
        let meta = CacheMeta::new(until, received, 0, 0, resp);
        assert!(ttl_secs(&meta, SystemTime::now()) < 0);
        assert!(current_age(&meta, SystemTime::now()) > Duration::from_secs(MAX_DELTA));
    }
}
