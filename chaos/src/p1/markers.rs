//! Markers and how often each must be found.
//!
//! Editors type `s{scene}e{editor}-{n};` (see [`crate::editor`]); P1 writers save
//! `p1s{scene}w{writer}-{n};`. Neither can be read inside the other: an editor's marker
//! needs an `e` after the scene number, a P1 marker starts with `p1` and has a `w` there.
//! Every marker ends with `;`, so `s0e1-1;` is never found inside `s0e1-11;`.

use std::collections::BTreeMap;

use serde::Serialize;
use troupe_node::content::blocks::Block;

/// A P1 writer's marker.
pub fn p1_marker(scene: usize, writer: usize, n: u64) -> String {
    format!("p1s{scene}w{writer}-{n};")
}

/// How many times a marker must be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Typed by an editor (acknowledged by the end) or saved by a P1 write answered 200.
    Once,
    /// Sent by a P1 write that got no answer (or one that does not say): it may have
    /// landed, but never twice.
    AtMostOnce,
    /// Sent only by P1 writes that were refused: nothing of it may be there.
    Never,
}

impl Expect {
    fn allows(self, count: usize) -> bool {
        match self {
            Expect::Once => count == 1,
            Expect::AtMostOnce => count <= 1,
            Expect::Never => count == 0,
        }
    }
}

/// A marker found the wrong number of times in one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Miscount {
    pub scene: String,
    /// Where it was counted: `document`, `content_blocks` or `content API`.
    pub place: String,
    pub marker: String,
    pub expected: Expect,
    pub found: usize,
    /// The positions of the blocks holding it, and their texts (shortened).
    pub blocks: Vec<(usize, String)>,
}

/// Counts every marker of `expected` in `blocks` and returns those found the wrong number
/// of times.
pub fn miscounts(
    scene: &str,
    place: &str,
    blocks: &[Block],
    expected: &BTreeMap<String, Expect>,
) -> Vec<Miscount> {
    let mut wrong = Vec::new();
    for (marker, &expect) in expected {
        let mut found = 0;
        let mut holding = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            let here = block.text.matches(marker.as_str()).count();
            if here > 0 {
                found += here;
                holding.push((i, around(&block.text, marker)));
            }
        }
        if !expect.allows(found) {
            wrong.push(Miscount {
                scene: scene.to_string(),
                place: place.to_string(),
                marker: marker.clone(),
                expected: expect,
                found,
                blocks: holding,
            });
        }
    }
    wrong
}

/// Up to 60 characters of `text` on each side of the first `marker`.
fn around(text: &str, marker: &str) -> String {
    let Some(at) = text.find(marker) else {
        return String::new();
    };
    let start = text[..at].char_indices().rev().nth(59).map_or(0, |(i, _)| i);
    let after = at + marker.len();
    let end = text[after..]
        .char_indices()
        .nth(60)
        .map_or(text.len(), |(i, _)| after + i);
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.push_str(&text[start..end]);
    if end < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use troupe_node::content::blocks::BlockType;

    use super::*;

    fn expected(pairs: &[(&str, Expect)]) -> BTreeMap<String, Expect> {
        pairs.iter().map(|(m, e)| (m.to_string(), *e)).collect()
    }

    #[test]
    fn a_doubled_a_missing_and_a_refused_marker_are_reported() {
        let blocks = vec![
            Block::new(BlockType::SceneHeading, "INT. HALL"),
            Block::new(BlockType::Action, "[s0e0] s0e0-0;s0e0-1; p1s0w0-0;s0e0-1;"),
            Block::new(BlockType::Action, "p1s0w0-2;"),
            Block::new(BlockType::Action, "p1s0w0-3;"),
        ];
        let want = expected(&[
            ("s0e0-0;", Expect::Once),
            ("s0e0-1;", Expect::Once), // doubled
            ("s0e0-2;", Expect::Once), // missing
            ("p1s0w0-0;", Expect::Once),
            ("p1s0w0-1;", Expect::AtMostOnce), // no answer, not there: fine
            ("p1s0w0-2;", Expect::AtMostOnce), // no answer, there once: fine
            ("p1s0w0-3;", Expect::Never),      // refused, yet there
        ]);
        let wrong = miscounts("chaos-1-0", "document", &blocks, &want);
        let summary: Vec<(&str, usize)> = wrong.iter().map(|m| (m.marker.as_str(), m.found)).collect();
        assert_eq!(summary, vec![("p1s0w0-3;", 1), ("s0e0-1;", 2), ("s0e0-2;", 0)]);
        assert_eq!(wrong[1].blocks.len(), 1, "both copies are in block 1");
        assert_eq!(wrong[1].blocks[0].0, 1);
        assert!(wrong[1].blocks[0].1.contains("s0e0-1;"));
    }

    #[test]
    fn an_at_most_once_marker_found_twice_is_reported() {
        let blocks = vec![
            Block::new(BlockType::Action, "p1s2w0-7;"),
            Block::new(BlockType::Action, "p1s2w0-7;"),
        ];
        let wrong = miscounts(
            "s",
            "content_blocks",
            &blocks,
            &expected(&[("p1s2w0-7;", Expect::AtMostOnce)]),
        );
        assert_eq!(wrong.len(), 1);
        assert_eq!(wrong[0].found, 2);
        assert_eq!(
            wrong[0].blocks.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn markers_are_never_read_inside_each_other() {
        let text = "[s1e1] s1e1-11;s11e1-1;p1s1w1-1;p1s11w1-1;s1e11-1;";
        for marker in ["s1e1-1;", "p1s1w1-11;", "s1e1-111;"] {
            assert_eq!(text.matches(marker).count(), 0, "{marker}");
        }
        for marker in ["s1e1-11;", "s11e1-1;", "p1s1w1-1;", "p1s11w1-1;", "s1e11-1;"] {
            assert_eq!(text.matches(marker).count(), 1, "{marker}");
        }
        assert_eq!(p1_marker(1, 1, 1), "p1s1w1-1;");
    }

    #[test]
    fn context_is_cut_on_character_boundaries() {
        let long = format!("{}p1s0w0-1;{}", "é".repeat(100), "☕".repeat(100));
        let shown = around(&long, "p1s0w0-1;");
        assert!(shown.starts_with('…') && shown.ends_with('…'));
        assert!(shown.contains("p1s0w0-1;"));
        assert_eq!(shown.chars().count(), 60 + 9 + 60 + 2);
    }
}
