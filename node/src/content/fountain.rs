//! A scene as text: plain (one line per block) or Fountain, the plain-text screenplay format
//! writers exchange (<https://fountain.io/syntax>). Fountain infers each element from how a
//! line looks; where a block would be read as something else, the forcing mark Fountain
//! provides is written (`.` scene heading, `!` action, `@` character, `>` transition).

use super::blocks::{Block, BlockType};

/// Scene heading prefixes Fountain recognises without a forcing `.`.
const HEADING_PREFIXES: [&str; 8] = [
    "INT.",
    "EXT.",
    "EST.",
    "INT/EXT",
    "INT./EXT.",
    "I/E",
    "INT ",
    "EXT ",
];

/// One line per block, as written.
pub fn plain_text(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        out.push_str(&block.text);
        out.push('\n');
    }
    out
}

/// The blocks in Fountain.
pub fn fountain(blocks: &[Block]) -> String {
    let mut out = String::new();
    let mut previous: Option<BlockType> = None;
    for block in blocks {
        let text = block.text.replace('\n', " ");
        let text = text.trim();
        if text.is_empty() {
            // An empty block is a paragraph break, which Fountain already has.
            previous = None;
            continue;
        }
        let in_dialogue = matches!(block.block_type, BlockType::Parenthetical | BlockType::Dialogue)
            && matches!(
                previous,
                Some(BlockType::Character | BlockType::Parenthetical | BlockType::Dialogue)
            );
        if !out.is_empty() && !in_dialogue {
            out.push('\n');
        }
        let line = match block.block_type {
            BlockType::SceneHeading => {
                let upper = text.to_uppercase();
                if HEADING_PREFIXES.iter().any(|p| upper.starts_with(p)) {
                    text.to_string()
                } else {
                    format!(".{text}")
                }
            }
            BlockType::Action if looks_like_character(text) || looks_like_transition(text) => {
                format!("!{text}")
            }
            BlockType::Action => text.to_string(),
            BlockType::Character if looks_like_character(text) => text.to_string(),
            BlockType::Character => format!("@{text}"),
            BlockType::Parenthetical if text.starts_with('(') => text.to_string(),
            BlockType::Parenthetical => format!("({text})"),
            BlockType::Dialogue => text.to_string(),
            BlockType::Transition if looks_like_transition(text) => text.to_string(),
            BlockType::Transition => format!("> {text}"),
        };
        out.push_str(&line);
        out.push('\n');
        previous = Some(block.block_type);
    }
    out
}

/// A line Fountain reads as a character cue: all its letters upper case, at least one.
fn looks_like_character(text: &str) -> bool {
    let letters = text.chars().filter(|c| c.is_alphabetic());
    let mut any = false;
    for c in letters {
        any = true;
        if c.is_lowercase() {
            return false;
        }
    }
    any
}

/// A line Fountain reads as a transition: upper case, ending in `TO:`.
fn looks_like_transition(text: &str) -> bool {
    looks_like_character(text) && text.ends_with("TO:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(t: BlockType, text: &str) -> Block {
        Block::new(t, text)
    }

    #[test]
    fn a_scene_in_fountain() {
        let scene = vec![
            b(BlockType::SceneHeading, "INT. DINER - NIGHT"),
            b(BlockType::Action, "Rain on the windows."),
            b(BlockType::Character, "ZOË"),
            b(BlockType::Parenthetical, "not looking up"),
            b(BlockType::Dialogue, "You're late."),
            b(BlockType::Character, "MARC"),
            b(BlockType::Dialogue, "Traffic."),
            b(BlockType::Action, ""),
            b(BlockType::Transition, "CUT TO:"),
        ];
        assert_eq!(
            fountain(&scene),
            "INT. DINER - NIGHT\n\nRain on the windows.\n\nZOË\n(not looking up)\nYou're late.\n\nMARC\nTraffic.\n\nCUT TO:\n"
        );
        assert_eq!(
            plain_text(&scene[..2]),
            "INT. DINER - NIGHT\nRain on the windows.\n"
        );
    }

    #[test]
    fn blocks_that_would_be_misread_are_forced() {
        let scene = vec![
            b(BlockType::SceneHeading, "the rooftop"),
            b(BlockType::Action, "BANG!"),
            b(BlockType::Character, "McCLANE"),
            b(BlockType::Dialogue, "Yippee."),
            b(BlockType::Transition, "Smash cut"),
            b(BlockType::Action, "FADE TO:"),
        ];
        assert_eq!(
            fountain(&scene),
            ".the rooftop\n\n!BANG!\n\n@McCLANE\nYippee.\n\n> Smash cut\n\n!FADE TO:\n"
        );
    }

    #[test]
    fn empty_scenes_and_blocks() {
        assert_eq!(fountain(&[]), "");
        assert_eq!(fountain(&[b(BlockType::Action, "  ")]), "");
        assert_eq!(plain_text(&[b(BlockType::Action, "")]), "\n");
    }
}
