//! The screenplay's blocks and where they live in a scene's Yjs document.
//!
//! The editor (y-prosemirror) keeps a scene in the XML fragment `prosemirror`: one element
//! per block, named by its type (`scene_heading`, `action`, `character`, `parenthetical`,
//! `dialogue`, `transition`), each holding its text as one XML text (none when the block is
//! empty). The P1 product stores the same scene as rows of `content_blocks` (position,
//! block type, text). This module is the one mapping between the two:
//!
//! - [`read`]: the blocks of a document, in order;
//! - [`append`]: writes blocks at the end of a document (an empty one, when seeding);
//! - [`seed_update`]: the update that seeds a scene with blocks, the same bytes wherever
//!   and whenever it is made, so that two seeds of one scene merge into one copy.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use yrs::types::xml::{XmlElementPrelim, XmlFragment, XmlFragmentRef, XmlOut, XmlTextPrelim};
use yrs::{Doc, GetString, ReadTxn, Transact, TransactionMut, WriteTxn};

/// The document's root the editor binds to.
pub const FRAGMENT: &str = "prosemirror";

/// A block's kind, as the editor's schema and P1's `block_type` column name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockType {
    SceneHeading,
    Action,
    Character,
    Parenthetical,
    Dialogue,
    Transition,
}

impl BlockType {
    pub const ALL: [BlockType; 6] = [
        BlockType::SceneHeading,
        BlockType::Action,
        BlockType::Character,
        BlockType::Parenthetical,
        BlockType::Dialogue,
        BlockType::Transition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockType::SceneHeading => "scene_heading",
            BlockType::Action => "action",
            BlockType::Character => "character",
            BlockType::Parenthetical => "parenthetical",
            BlockType::Dialogue => "dialogue",
            BlockType::Transition => "transition",
        }
    }
}

impl fmt::Display for BlockType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlockType {
    type Err = BlockError;

    fn from_str(s: &str) -> Result<BlockType, BlockError> {
        BlockType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| BlockError::UnknownType(truncate(s, 64)))
    }
}

/// One block of a scene.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Block {
    #[serde(rename = "type")]
    pub block_type: BlockType,
    pub text: String,
}

impl Block {
    pub fn new(block_type: BlockType, text: impl Into<String>) -> Block {
        Block {
            block_type,
            text: text.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("unknown block type {0:?} (expected one of scene_heading, action, character, parenthetical, dialogue, transition)")]
    UnknownType(String),
    #[error("block {index} is not a block element of the editor's schema")]
    NotABlock { index: u32 },
}

/// The blocks of the document's [`FRAGMENT`], in order.
pub fn read<T: ReadTxn>(txn: &T) -> Result<Vec<Block>, BlockError> {
    let Some(fragment) = txn.get_xml_fragment(FRAGMENT) else {
        return Ok(Vec::new());
    };
    let mut blocks = Vec::new();
    for (index, child) in fragment.children(txn).enumerate() {
        let XmlOut::Element(element) = child else {
            return Err(BlockError::NotABlock { index: index as u32 });
        };
        let block_type = element.tag().parse()?;
        // The editor keeps a block's text in one XML text; join them should there be more.
        let mut text = String::new();
        for part in element.children(txn) {
            match part {
                XmlOut::Text(t) => text.push_str(&t.get_string(txn)),
                _ => return Err(BlockError::NotABlock { index: index as u32 }),
            }
        }
        blocks.push(Block { block_type, text });
    }
    Ok(blocks)
}

/// Writes `blocks` at the end of the document's [`FRAGMENT`], as the editor would.
pub fn append(txn: &mut TransactionMut, blocks: &[Block]) {
    let fragment = txn.get_or_insert_xml_fragment(FRAGMENT);
    for block in blocks {
        insert(txn, &fragment, fragment.len(txn), block);
    }
}

/// Writes `block` at `index` of the document's fragment, as the editor would: an element
/// named by its type, holding its text as one XML text (none when empty).
pub fn insert(txn: &mut TransactionMut, fragment: &XmlFragmentRef, index: u32, block: &Block) {
    let element = fragment.insert(txn, index, XmlElementPrelim::empty(block.block_type.as_str()));
    if !block.text.is_empty() {
        element.push_back(txn, XmlTextPrelim::new(block.text.as_str()));
    }
}

/// The client id every seed is written as. Seeding the same blocks into an empty document
/// as this client always makes the same items with the same ids, so any number of seeds of
/// one scene (two nodes, a bulk backfill and a lazy load racing) merge into one copy.
/// Browsers pick random 32-bit ids; this one is above that range, so no editor ever shares it.
pub const SEED_CLIENT: u64 = (1 << 53) - 7;

/// The update that seeds an empty scene with `blocks`: the same bytes for the same blocks,
/// on any machine, at any time.
pub fn seed_update(blocks: &[Block]) -> Vec<u8> {
    let mut options = yrs::Options::with_client_id(yrs::ClientID::new(SEED_CLIENT));
    options.offset_kind = yrs::OffsetKind::Utf16;
    let doc = Doc::with_options(options);
    let mut txn = doc.transact_mut();
    append(&mut txn, blocks);
    txn.encode_update_v1()
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use yrs::updates::decoder::Decode;
    use yrs::Update;

    use super::*;

    fn room_doc() -> Doc {
        Doc::with_options(yrs::Options {
            offset_kind: yrs::OffsetKind::Utf16,
            ..yrs::Options::default()
        })
    }

    fn sample() -> Vec<Block> {
        vec![
            Block::new(BlockType::SceneHeading, "INT. KITCHEN - NIGHT"),
            Block::new(BlockType::Action, ""),
            Block::new(BlockType::Character, "ZOË"),
            Block::new(BlockType::Parenthetical, "(quietly)"),
            Block::new(
                BlockType::Dialogue,
                "Café? 👩‍👩‍👧 e\u{301} — 𝄞 \"quoted\" <tag> & more",
            ),
            Block::new(BlockType::Transition, "CUT TO:"),
            Block::new(BlockType::Action, ""),
        ]
    }

    #[test]
    fn blocks_to_doc_to_blocks_is_the_identity() {
        for blocks in [Vec::new(), sample(), vec![Block::new(BlockType::Action, "")]] {
            let doc = room_doc();
            append(&mut doc.transact_mut(), &blocks);
            assert_eq!(read(&doc.transact()).unwrap(), blocks);
            // Through the wire as well: a fresh document fed the state reads the same.
            let fresh = room_doc();
            let state = doc
                .transact()
                .encode_state_as_update_v1(&yrs::StateVector::default());
            fresh
                .transact_mut()
                .apply_update(Update::decode_v1(&state).unwrap())
                .unwrap();
            assert_eq!(read(&fresh.transact()).unwrap(), blocks);
        }
    }

    #[test]
    fn seeds_are_the_same_bytes_and_merge_into_one_copy() {
        let blocks = sample();
        let (a, b) = (seed_update(&blocks), seed_update(&blocks));
        assert_eq!(a, b);
        let doc = room_doc();
        for update in [&a, &b, &a] {
            doc.transact_mut()
                .apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
        }
        assert_eq!(
            read(&doc.transact()).unwrap(),
            blocks,
            "seeded three times, present once"
        );
    }

    #[test]
    fn unknown_types_and_foreign_shapes_are_errors() {
        assert!(matches!(
            "sluglines".parse::<BlockType>(),
            Err(BlockError::UnknownType(_))
        ));
        let doc = room_doc();
        {
            let fragment = doc.get_or_insert_xml_fragment(FRAGMENT);
            let mut txn = doc.transact_mut();
            fragment.push_back(&mut txn, XmlElementPrelim::empty("marquee"));
        }
        assert!(matches!(read(&doc.transact()), Err(BlockError::UnknownType(t)) if t == "marquee"));
        for t in BlockType::ALL {
            assert_eq!(t.as_str().parse::<BlockType>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", t.as_str()));
        }
    }
}
