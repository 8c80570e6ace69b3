//! Edit markers: every simulated edit inserts `<sender.seq.micros>`, so any editor that sees
//! the insertion knows who sent it and when, whatever server relayed it.
//!
//! `micros` counts from an epoch shared by all editors of one bench process.

/// One edit's identity and send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Marker {
    /// Global editor index.
    pub sender: u32,
    /// 1-based edit number of that editor.
    pub seq: u32,
    /// Send time, microseconds since the bench epoch.
    pub sent_us: u64,
}

impl Marker {
    /// The text to insert.
    pub fn encode(&self) -> String {
        format!("<{}.{}.{}>", self.sender, self.seq, self.sent_us)
    }
}

/// Every well-formed marker in `s` (inserted strings may hold several, or fragments of
/// unrelated text, which are skipped).
pub fn parse_all(s: &str) -> Vec<Marker> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(['>', '<']) else {
            break;
        };
        if rest.as_bytes()[close] == b'>' {
            if let Some(m) = parse_one(&rest[..close]) {
                out.push(m);
            }
            rest = &rest[close + 1..];
        } else {
            rest = &rest[close..];
        }
    }
    out
}

fn parse_one(body: &str) -> Option<Marker> {
    let mut parts = body.split('.');
    let sender = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let sent_us = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Marker { sender, seq, sent_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_noise() {
        let a = Marker {
            sender: 7,
            seq: 42,
            sent_us: 123_456_789,
        };
        let b = Marker {
            sender: 0,
            seq: 1,
            sent_us: 0,
        };
        assert_eq!(parse_all(&a.encode()), vec![a]);
        let s = format!("x<{}<1.2>{}>>junk<1.2.3.4><a.b.c>", a.encode(), b.encode());
        assert_eq!(parse_all(&s), vec![a, b]);
        assert!(parse_all("no markers < here").is_empty());
    }
}
