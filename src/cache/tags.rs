//! Surrogate keys (tags): the origin names them in a response header (`cache.tags.header`,
//! default `Surrogate-Key`, and `Cache-Tag`), separated by spaces or commas. They are stored
//! with the object under [`INTERNAL`], normalised and bounded, so both tiers carry them inside
//! the stored header for free; [`deliver`] removes that header always and the origin's tag
//! headers unless `cache.tags.expose`.

use pingora::http::ResponseHeader;

/// The stored header holding an object's tags, space-separated. Never sent to clients.
pub const INTERNAL: &str = "shellac-internal-tags";
/// Tags kept per object; further ones are ignored (and cannot be purged by).
pub const MAX_PER_OBJECT: usize = 64;
/// The longest tag; longer ones are ignored.
pub const MAX_LEN: usize = 128;

/// Whether `tag` is a usable tag: 1..=[`MAX_LEN`] visible ASCII characters, no comma.
pub fn valid(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_LEN
        && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// The tags of an origin response, in order of appearance, deduplicated and bounded.
pub fn from_origin(resp: &ResponseHeader, header: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in [header, "cache-tag"] {
        for v in resp.headers.get_all(name) {
            let Ok(v) = v.to_str() else { continue };
            for t in v.split([' ', ',', '\t']).filter(|t| valid(t)) {
                if out.len() < MAX_PER_OBJECT && !out.iter().any(|o| o == t) {
                    out.push(t.to_string());
                }
            }
        }
        if header.eq_ignore_ascii_case("cache-tag") {
            break;
        }
    }
    out
}

/// Records the origin's tags in the header about to be stored (replacing any [`INTERNAL`]
/// header the origin itself sent).
pub fn store(header: &mut ResponseHeader, tag_header: &str) {
    let tags = from_origin(header, tag_header);
    header.remove_header(INTERNAL);
    if !tags.is_empty() {
        let _ = header.insert_header(INTERNAL, tags.join(" "));
    }
}

/// The tags stored with an object.
pub fn of_stored(header: &ResponseHeader) -> impl Iterator<Item = &str> {
    header
        .headers
        .get(INTERNAL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(' ')
        .filter(|t| !t.is_empty())
        .take(MAX_PER_OBJECT)
}

/// What clients see: never the internal header; the origin's tag headers only when exposed.
pub fn deliver(resp: &mut ResponseHeader, tag_header: &str, expose: bool) {
    let found = crate::forward::fields_where(&resp.headers, |n| {
        n == INTERNAL || (!expose && (n == "cache-tag" || n.eq_ignore_ascii_case(tag_header)))
    });
    for name in found {
        resp.remove_header(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bounds_stores_and_strips() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("Surrogate-Key", "a b,c  a").unwrap();
        h.append_header("Cache-Tag", "d,e").unwrap();
        h.append_header(INTERNAL, "forged").unwrap();
        let long = "x".repeat(MAX_LEN + 1);
        h.append_header("Surrogate-Key", long.as_str()).unwrap();
        assert_eq!(from_origin(&h, "Surrogate-Key"), ["a", "b", "c", "d", "e"]);
        store(&mut h, "Surrogate-Key");
        assert_eq!(of_stored(&h).collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
        let many: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let mut m = ResponseHeader::build(200, None).unwrap();
        m.append_header("surrogate-key", many.join(" ")).unwrap();
        assert_eq!(from_origin(&m, "Surrogate-Key").len(), MAX_PER_OBJECT);
        let mut exposed = h.clone();
        deliver(&mut exposed, "Surrogate-Key", true);
        assert!(exposed.headers.get(INTERNAL).is_none());
        assert!(exposed.headers.get("surrogate-key").is_some());
        deliver(&mut h, "Surrogate-Key", false);
        assert!(h.headers.get(INTERNAL).is_none() && h.headers.get("cache-tag").is_none());
        assert!(h.headers.get("surrogate-key").is_none());
    }
}
