//! Vary (RFC 9111 §4.1): one stored variant per combination of the selecting request fields.

use pingora::cache::key::HashBinary;
use pingora::cache::VarianceBuilder;
use pingora::http::RequestHeader;

/// The variance key for `req` under the stored response's `Vary`, or `None` without Vary.
/// Field values are combined across lines and stripped of surrounding whitespace, the
/// normalisation §4.1 allows; anything beyond that (reordering, case) would merge variants the
/// origin may distinguish.
pub fn variance(stored: &http::HeaderMap, req: &RequestHeader) -> Option<HashBinary> {
    let mut vb = VarianceBuilder::new();
    for value in stored.get_all(http::header::VARY) {
        for name in value.as_bytes().split(|b| *b == b',') {
            let name = name.trim_ascii();
            if name.is_empty() {
                continue;
            }
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let mut joined = Vec::new();
            for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes().trim_ascii());
            }
            vb.add_owned_name_value(name, joined);
        }
    }
    vb.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(h: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in h {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn variants_follow_the_selecting_fields() {
        let mut vary = http::HeaderMap::new();
        vary.insert("vary", "Accept-Encoding, X-Lang".parse().unwrap());
        let a = variance(&vary, &req(&[("Accept-Encoding", "gzip")]));
        let b = variance(&vary, &req(&[("accept-encoding", " gzip ")]));
        let c = variance(&vary, &req(&[("Accept-Encoding", "br")]));
        let d = variance(
            &vary,
            &req(&[("Accept-Encoding", "gzip"), ("X-Lang", "fr")]),
        );
        assert!(a.is_some());
        assert_eq!(a, b, "whitespace and name case do not matter");
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(variance(&http::HeaderMap::new(), &req(&[])), None);
    }
}
