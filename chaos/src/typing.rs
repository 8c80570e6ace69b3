//! Where simulated editors type, and how the checks read a scene back: the `Y.Text` "text"
//! of plain scenes, or — in P1 scenes — screenplay blocks of the `prosemirror` fragment, the
//! part of the document that `content_blocks` and the content API mirror.

use troupe_node::content::blocks::{self, Block, BlockType};
use yrs::types::xml::{XmlFragment, XmlOut};
use yrs::{GetString, ReadTxn, Text, TransactionMut, WriteTxn};

/// What an editor types into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Typing {
    /// Appends to `Y.Text` "text".
    #[default]
    Text,
    /// Appends to an action block of its own, found by the header its text starts with
    /// (so that whatever P1 adds elsewhere, or to the same block, never moves it).
    Blocks,
}

impl Typing {
    /// The document as the checks compare it: the text, or one line per block.
    pub fn read<T: ReadTxn>(self, txn: &T) -> String {
        match self {
            Typing::Text => txn
                .get_text("text")
                .map(|t| t.get_string(txn))
                .unwrap_or_default(),
            Typing::Blocks => match blocks::read(txn) {
                Ok(blocks) => render(&blocks),
                Err(e) => format!("<not screenplay blocks: {e}>"),
            },
        }
    }
}

/// One line per block, `type: text`: what the checks compare and search.
pub fn render(blocks: &[Block]) -> String {
    blocks
        .iter()
        .map(|b| format!("{}: {}\n", b.block_type, b.text))
        .collect()
}

/// The header an editor's own block starts with.
pub fn block_header(prefix: &str) -> String {
    format!("[{prefix}] ")
}

/// Appends `item` to the editor's own block (the first whose text starts with `header`),
/// creating it at the end of the scene the first time.
pub fn type_into_block(txn: &mut TransactionMut, header: &str, item: &str) {
    let fragment = txn.get_or_insert_xml_fragment(blocks::FRAGMENT);
    let children: Vec<XmlOut> = fragment.children(txn).collect();
    let own = children.into_iter().find_map(|child| match child {
        XmlOut::Element(element) => match element.get(txn, 0) {
            Some(XmlOut::Text(text)) if text.get_string(txn).starts_with(header) => Some(text),
            _ => None,
        },
        _ => None,
    });
    match own {
        Some(text) => {
            let end = text.len(txn);
            text.insert(txn, end, item);
        }
        None => {
            let end = fragment.len(txn);
            let block = Block::new(BlockType::Action, format!("{header}{item}"));
            blocks::insert(txn, &fragment, end, &block);
        }
    }
}

#[cfg(test)]
mod tests {
    use yrs::{Doc, Transact};

    use super::*;

    #[test]
    fn an_editor_keeps_typing_into_its_own_block() {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            blocks::append(&mut txn, &[Block::new(BlockType::SceneHeading, "INT. HALL")]);
            type_into_block(&mut txn, &block_header("s0e0"), "s0e0-0;");
            type_into_block(&mut txn, &block_header("s0e1"), "s0e1-0;");
            type_into_block(&mut txn, &block_header("s0e0"), "s0e0-1;");
        }
        assert_eq!(
            Typing::Blocks.read(&doc.transact()),
            "scene_heading: INT. HALL\naction: [s0e0] s0e0-0;s0e0-1;\naction: [s0e1] s0e1-0;\n"
        );
        assert_eq!(Typing::Text.read(&doc.transact()), "");
    }
}
