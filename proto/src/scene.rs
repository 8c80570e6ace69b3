//! Scene ids as they appear in URLs: the one rule nodes and routers share.

/// Decodes and checks a scene id from a URL path segment: 1-128 bytes of letters, digits
/// and `-_.:~` once percent-decoded.
pub fn scene_id(raw: &str) -> Option<String> {
    percent_decode(raw).filter(|decoded| is_scene_id(decoded))
}

/// The same rule for an id already percent-decoded (as HTTP routers' path extractors hand
/// it over). `%` is not a scene id character, so an id decoded twice is never accepted.
pub fn is_scene_id(decoded: &str) -> bool {
    !decoded.is_empty()
        && decoded.len() <= 128
        && decoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b))
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_ids() {
        assert_eq!(scene_id("s1").as_deref(), Some("s1"));
        assert_eq!(scene_id("film%3Ascene-12").as_deref(), Some("film:scene-12"));
        assert_eq!(scene_id(""), None);
        assert_eq!(scene_id("a/b"), None);
        assert_eq!(scene_id("a%2Fb"), None);
        assert_eq!(scene_id("%zz"), None);
        assert_eq!(scene_id("%"), None);
        assert_eq!(scene_id("%e9"), None);
        assert_eq!(scene_id(&"x".repeat(129)), None);
        assert!(is_scene_id("film:scene-12"));
        assert!(!is_scene_id("film%3Ascene-12"));
        assert!(!is_scene_id("a/b"));
    }
}
