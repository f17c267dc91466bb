//! Vary (RFC 9111 §4.1): one stored variant per combination of the selecting request fields.

use pingora::cache::key::HashBinary;
use pingora::cache::VarianceBuilder;
use pingora::http::RequestHeader;

/// The variance key for `req` under the stored response's `Vary`, or `None` without Vary.
/// Field values are combined across lines (RFC 9110 §5.3) and the whitespace around each
/// comma-separated member is removed (outside quoted strings), the normalisation §4.1 allows:
/// combining lines already reads the field as a list, and a list's optional whitespace
/// carries no meaning (RFC 9110 §5.6.1), so `1,2`, ` 1, 2 ` and two lines `1` and `2` select
/// one variant. Fields in `normalize` are lists whose member order, case and
/// spacing carry no meaning (`Accept-Encoding`, `Accept-Language`: preference is in q-values):
/// their members are also sorted and lower-cased, so equivalent requests share a variant.
/// Other fields are not reordered: that could merge variants the origin distinguishes.
pub fn variance(
    stored: &http::HeaderMap,
    req: &RequestHeader,
    normalize: &[http::HeaderName],
) -> Option<HashBinary> {
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
                    joined.push(b',');
                }
                joined.extend_from_slice(&trimmed_members(v.as_bytes()));
            }
            if normalize.iter().any(|n| n.as_str() == name) {
                joined = normalized_list(&joined);
            }
            vb.add_owned_name_value(name, joined);
        }
    }
    vb.finalize()
}

/// `v` with the whitespace around every comma outside a quoted string, and at both ends,
/// removed; members keep their order, case and inner spacing.
fn trimmed_members(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut member = Vec::new();
    let (mut quoted, mut escaped) = (false, false);
    for &b in v {
        if quoted {
            member.push(b);
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b',' => {
                out.extend_from_slice(member.trim_ascii());
                out.push(b',');
                member.clear();
            }
            b'"' => {
                quoted = true;
                member.push(b);
            }
            _ => member.push(b),
        }
    }
    out.extend_from_slice(member.trim_ascii());
    out
}

/// List members trimmed, lower-cased, without spaces around `;` and `=`, sorted, deduplicated.
fn normalized_list(v: &[u8]) -> Vec<u8> {
    let mut members: Vec<Vec<u8>> = v
        .split(|b| *b == b',')
        .map(|m| {
            m.iter()
                .filter(|b| !b.is_ascii_whitespace())
                .map(u8::to_ascii_lowercase)
                .collect::<Vec<u8>>()
        })
        .filter(|m| !m.is_empty())
        .collect();
    members.sort();
    members.dedup();
    members.join(&b","[..])
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
        let none: &[http::HeaderName] = &[];
        let a = variance(&vary, &req(&[("Accept-Encoding", "gzip")]), none);
        let b = variance(&vary, &req(&[("accept-encoding", " gzip ")]), none);
        let c = variance(&vary, &req(&[("Accept-Encoding", "br")]), none);
        let d = variance(
            &vary,
            &req(&[("Accept-Encoding", "gzip"), ("X-Lang", "fr")]),
            none,
        );
        assert!(a.is_some());
        assert_eq!(a, b, "whitespace and name case do not matter");
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(variance(&http::HeaderMap::new(), &req(&[]), none), None);
    }

    #[test]
    fn listed_fields_are_normalised_others_are_not() {
        let mut vary = http::HeaderMap::new();
        vary.insert("vary", "Accept-Encoding, X-Lang".parse().unwrap());
        let ae = [http::header::ACCEPT_ENCODING];
        let v = |h: &[(&str, &str)]| variance(&vary, &req(h), &ae);
        assert_eq!(
            v(&[("Accept-Encoding", "gzip, br")]),
            v(&[("Accept-Encoding", "BR,gzip")])
        );
        assert_eq!(
            v(&[("Accept-Encoding", "gzip;q=0.5, br")]),
            v(&[("Accept-Encoding", "br, gzip ; q=0.5")])
        );
        assert_ne!(v(&[("X-Lang", "a, b")]), v(&[("X-Lang", "b, a")]));
        // Any field: whitespace around members and line breaks do not select a variant...
        assert_eq!(v(&[("X-Lang", "1,2")]), v(&[("X-Lang", " 1 ,  2 ")]));
        assert_eq!(
            v(&[("X-Lang", "1, 2")]),
            v(&[("X-Lang", "1"), ("X-Lang", "2")])
        );
        // ...but case, inner spacing and quoted strings do.
        assert_ne!(v(&[("X-Lang", "a b")]), v(&[("X-Lang", "ab")]));
        assert_ne!(v(&[("X-Lang", "A")]), v(&[("X-Lang", "a")]));
        assert_ne!(v(&[("X-Lang", "\"x, y\"")]), v(&[("X-Lang", "\"x,y\"")]));
        assert_ne!(
            v(&[("Accept-Encoding", "gzip")]),
            v(&[("Accept-Encoding", "br")])
        );
    }
}
