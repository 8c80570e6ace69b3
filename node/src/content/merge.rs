//! Merging a write made against an older projection of a scene into the live document.
//!
//! The P1 product saves whole scenes: "here are the blocks, based on content version v".
//! Meanwhile people kept typing in the live document. A write is merged three ways, as
//! `diff3` merges text files: what changed from `base` (the blocks at v) to `theirs` (the
//! write) is replayed onto `ours` (the live document) as ordinary Yjs edits, so what was
//! typed live since v stays and connected editors see the write appear.
//!
//! Blocks are matched between the versions by a diff (equal blocks anchor, changed blocks
//! pair up in place); text inside a changed block is merged character by character the
//! same way. The rules:
//!
//! - a block only one side changed takes that side's change; edits to different blocks
//!   both stay;
//! - a block both sides changed is merged character by character: insertions from both
//!   stay (the write's first where they meet), deletions from both apply;
//! - new blocks from both sides stay (the write's first where they meet);
//! - the same change made on both sides is made once;
//! - a block one side deleted and the other edited cannot be merged without losing one of
//!   them: the write is refused ([`MergeError::Conflict`]), nothing is changed.

use std::time::{Duration, Instant};

use similar::{capture_diff_slices_deadline, Algorithm, DiffOp};
use yrs::types::xml::{XmlFragment, XmlOut, XmlTextPrelim};
use yrs::{Text, TransactionMut, WriteTxn};

use super::blocks::{self, Block, BlockError, BlockType, FRAGMENT};

/// The longest the diffs of one merge may search for the best alignment before settling for
/// a good one (shared by all of them, however many blocks changed): keeps a huge
/// adversarial write from holding a room.
const DIFF_BUDGET: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The write and the live document changed the same thing in ways that cannot both stay.
    #[error("{0}")]
    Conflict(String),
    /// The live document holds something that is not a screenplay block.
    #[error("the live document cannot be read as blocks: {0}")]
    Unreadable(#[from] BlockError),
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Merged {
    /// Blocks inserted, changed (text or type) and deleted in the live document.
    pub inserted: usize,
    pub changed: usize,
    pub deleted: usize,
}

impl Merged {
    pub fn is_empty(&self) -> bool {
        self.inserted == 0 && self.changed == 0 && self.deleted == 0
    }
}

/// Replays the change from `base` to `theirs` onto the document in `txn`. Checks
/// everything before touching the document: on error nothing was changed.
pub fn merge(txn: &mut TransactionMut, base: &[Block], theirs: &[Block]) -> Result<Merged, MergeError> {
    let ours = blocks::read(txn)?;
    let plan = plan(base, &ours, theirs)?;
    apply(txn, &ours, plan)
}

/// The blocks `merge` would leave, without a document (for tests and dry runs).
pub fn merged_blocks(base: &[Block], ours: &[Block], theirs: &[Block]) -> Result<Vec<Block>, MergeError> {
    let plan = plan(base, ours, theirs)?;
    let mut result: Vec<Option<Block>> = ours.iter().cloned().map(Some).collect();
    let mut inserts: Vec<(usize, Vec<Block>)> = Vec::new();
    for step in plan {
        match step {
            Step::Delete(o) => result[o] = None,
            Step::Change { at, block_type, text } => {
                if let Some(block) = &mut result[at] {
                    block.block_type = block_type;
                    block.text = apply_to_string(&block.text, &text);
                }
            }
            Step::Insert { before, blocks } => inserts.push((before, blocks)),
        }
    }
    let mut out = Vec::new();
    for (index, block) in result
        .into_iter()
        .enumerate()
        .chain(std::iter::once((ours.len(), None)))
    {
        for (_, blocks) in inserts.iter().filter(|(before, _)| *before == index) {
            out.extend(blocks.iter().cloned());
        }
        out.extend(block);
    }
    Ok(out)
}

/// One change to the live document, by its block positions before any change.
#[derive(Debug)]
enum Step {
    Delete(usize),
    /// Sets the block's type and applies text edits (positions in its current text).
    Change {
        at: usize,
        block_type: BlockType,
        text: Vec<TextEdit>,
    },
    /// New blocks before `before` (`ours.len()` for the end).
    Insert {
        before: usize,
        blocks: Vec<Block>,
    },
}

/// A text edit by character positions of the block's current text: delete `delete`
/// characters at `at`, then insert `insert` there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TextEdit {
    at: usize,
    delete: usize,
    insert: String,
}

/// How a newer sequence relates to an older one: where each old item went (or `None`
/// when deleted), and the new items inserted before each old position.
struct Alignment<'a, T> {
    of_old: Vec<Option<usize>>,
    /// For each old position 0..=old.len(), the new items inserted right before it.
    inserted_before: Vec<&'a [T]>,
}

/// With `pair_changed`, items a diff replaced pair up in place (a changed block stays the
/// same block); without, they count as deleted and inserted.
fn align<'a, T: Ord + std::hash::Hash>(
    old: &[T],
    new: &'a [T],
    pair_changed: bool,
    deadline: Instant,
) -> Alignment<'a, T> {
    let mut of_old = vec![None; old.len()];
    // New items inserted before each old position, as ranges of `new`. Positions come from
    // the ops' lengths walked in order, not from the indices the ops carry: the diff's
    // clean-up passes can report an insertion's old index one item early (seen: "ba" ->
    // "aab" with the insertion placed before the kept "a" instead of after it).
    let mut inserted: Vec<std::ops::Range<usize>> = vec![0..0; old.len() + 1];
    let add = |inserted: &mut Vec<std::ops::Range<usize>>, at: usize, range: std::ops::Range<usize>| {
        let slot = &mut inserted[at];
        if slot.start == slot.end {
            *slot = range;
        } else {
            // Two runs at one place are adjacent in `new` (ops come in order).
            slot.end = range.end;
        }
    };
    let (mut o, mut n) = (0, 0);
    let ops = capture_diff_slices_deadline(Algorithm::Myers, old, new, Some(deadline));
    for op in ops {
        let (old_len, new_len) = match op {
            DiffOp::Equal { len, .. } => (len, len),
            DiffOp::Delete { old_len, .. } => (old_len, 0),
            DiffOp::Insert { new_len, .. } => (0, new_len),
            DiffOp::Replace { old_len, new_len, .. } => (old_len, new_len),
        };
        if o + old_len > old.len() || n + new_len > new.len() {
            break;
        }
        match op {
            DiffOp::Equal { .. } => {
                for k in 0..old_len {
                    of_old[o + k] = Some(n + k);
                }
            }
            DiffOp::Delete { .. } => {}
            DiffOp::Insert { .. } => add(&mut inserted, o, n..n + new_len),
            DiffOp::Replace { .. } => {
                // Changed items pair up in place; the rest were deleted or inserted.
                let paired = if pair_changed { old_len.min(new_len) } else { 0 };
                for k in 0..paired {
                    of_old[o + k] = Some(n + k);
                }
                if new_len > paired {
                    add(&mut inserted, o + old_len, n + paired..n + new_len);
                }
            }
        }
        o += old_len;
        n += new_len;
    }
    if o != old.len() || n != new.len() {
        // Ops that do not cover both sides: take it all as replaced (still a valid merge).
        of_old.iter_mut().for_each(|x| *x = None);
        inserted = vec![0..0; old.len() + 1];
        inserted[old.len()] = 0..new.len();
    }
    let inserted_before = inserted.into_iter().map(|r| &new[r]).collect();
    Alignment {
        of_old,
        inserted_before,
    }
}

/// Checks the merge and lists its steps, in any order.
fn plan(base: &[Block], ours: &[Block], theirs: &[Block]) -> Result<Vec<Step>, MergeError> {
    let deadline = Instant::now() + DIFF_BUDGET;
    let live = align(base, ours, true, deadline);
    let write = align(base, theirs, true, deadline);
    let mut steps = Vec::new();
    for (i, old) in base.iter().enumerate() {
        let block = i + 1;
        match (live.of_old[i], write.of_old[i]) {
            (None, None) => {}
            (Some(o), None) => {
                if ours[o] != *old {
                    return Err(MergeError::Conflict(format!(
                        "block {block} ({}) was deleted by this write but edited live since",
                        old.block_type
                    )));
                }
                steps.push(Step::Delete(o));
            }
            (None, Some(t)) => {
                if theirs[t] != *old {
                    return Err(MergeError::Conflict(format!(
                        "block {block} ({}) was changed by this write but deleted live since",
                        old.block_type
                    )));
                }
            }
            (Some(o), Some(t)) => {
                let (mine, new) = (&ours[o], &theirs[t]);
                if new == old || new == mine {
                    continue;
                }
                let block_type = if new.block_type == old.block_type {
                    mine.block_type
                } else if mine.block_type == old.block_type || mine.block_type == new.block_type {
                    new.block_type
                } else {
                    return Err(MergeError::Conflict(format!(
                        "block {block} was made {} by this write and {} live since",
                        new.block_type, mine.block_type
                    )));
                };
                let text = merge_text(&old.text, &mine.text, &new.text, deadline);
                steps.push(Step::Change {
                    at: o,
                    block_type,
                    text,
                });
            }
        }
    }
    // New blocks: where the write inserted them, unless the live side inserted the same.
    for (p, new_blocks) in write.inserted_before.iter().enumerate() {
        let live_blocks = live.inserted_before[p];
        if new_blocks.is_empty() || *new_blocks == live_blocks {
            continue;
        }
        let before = anchor(&live.of_old, &live.inserted_before, p, ours.len());
        match continued(live_blocks, new_blocks) {
            // The same blocks, typed further on one side (an autosave of what was typed
            // live, and then some): each once, the longer text.
            Some(longer) => {
                for (k, (mine, new)) in live_blocks.iter().zip(new_blocks.iter()).enumerate() {
                    if let Some(rest) = longer_by(&mine.text, &new.text) {
                        steps.push(Step::Change {
                            at: before + k,
                            block_type: mine.block_type,
                            text: vec![TextEdit {
                                at: mine.text.chars().count(),
                                delete: 0,
                                insert: rest.to_string(),
                            }],
                        });
                    }
                }
                if longer.len() > live_blocks.len() {
                    steps.push(Step::Insert {
                        before: before + live_blocks.len(),
                        blocks: longer[live_blocks.len()..].to_vec(),
                    });
                }
            }
            None => steps.push(Step::Insert {
                before,
                blocks: new_blocks.to_vec(),
            }),
        }
    }
    Ok(steps)
}

/// Blocks both sides inserted at one place, when one side's are the other's typed further:
/// pairwise the same type, each text a prefix of the other's, one run a prefix of the
/// other. Returns the longer run (the write's, when its blocks are the more numerous).
fn continued<'a>(live: &'a [Block], write: &'a [Block]) -> Option<&'a [Block]> {
    if live.is_empty() {
        return None;
    }
    let pairwise = live.iter().zip(write).all(|(a, b)| {
        a.block_type == b.block_type && (a.text.starts_with(&b.text) || b.text.starts_with(&a.text))
    });
    pairwise.then_some(if write.len() > live.len() { write } else { live })
}

/// What `new` adds at the end of `mine`, when it continues it.
fn longer_by<'a>(mine: &str, new: &'a str) -> Option<&'a str> {
    new.strip_prefix(mine).filter(|rest| !rest.is_empty())
}

/// Where, in the live sequence, to put what was inserted before old position `p`: right
/// after the live copy of the old item before `p` and ahead of what the live side inserted
/// there; failing that (deleted live) right before the live copy of old item `p`; failing
/// that after the nearest surviving item on the left.
fn anchor<T>(of_old: &[Option<usize>], live_inserted: &[&[T]], p: usize, live_len: usize) -> usize {
    if p == 0 {
        return 0;
    }
    if let Some(left) = of_old[p - 1] {
        return left + 1;
    }
    if let Some(Some(right)) = of_old.get(p) {
        return right - live_inserted[p].len();
    }
    of_old[..p]
        .iter()
        .rev()
        .find_map(|o| o.map(|o| o + 1))
        .unwrap_or(if p >= of_old.len() { live_len } else { 0 })
}

/// The character edits that replay `base` -> `theirs` onto `ours`, by positions in `ours`,
/// in increasing order and never overlapping. Characters are not paired up: a changed
/// character is one deleted and one inserted, so a character both sides changed keeps
/// both replacements.
fn merge_text(base: &str, ours: &str, theirs: &str, deadline: Instant) -> Vec<TextEdit> {
    let base: Vec<char> = base.chars().collect();
    let ours: Vec<char> = ours.chars().collect();
    let theirs: Vec<char> = theirs.chars().collect();
    let live = align(&base, &ours, false, deadline);
    let write = align(&base, &theirs, false, deadline);
    // What the write deleted goes, where it is still there live.
    let mut deleted: Vec<usize> = (0..base.len())
        .filter(|&i| write.of_old[i].is_none())
        .filter_map(|i| live.of_old[i])
        .collect();
    deleted.sort_unstable();
    // What the write inserted comes in, unless the live side inserted the same there. When
    // one side's insertion continues the other's (typed further since), the longer stays,
    // once: an autosave that carries what was already typed live adds only the rest.
    let inserted: Vec<(usize, String)> = write
        .inserted_before
        .iter()
        .enumerate()
        .filter_map(|(p, run)| {
            let mine = live.inserted_before[p];
            let at = anchor(&live.of_old, &live.inserted_before, p, ours.len());
            if run.is_empty() || mine.starts_with(run) {
                None
            } else if !mine.is_empty() && run.starts_with(mine) {
                Some((at + mine.len(), run[mine.len()..].iter().collect()))
            } else {
                Some((at, run.iter().collect()))
            }
        })
        .collect();
    let mut positions: Vec<usize> = deleted
        .iter()
        .copied()
        .chain(inserted.iter().map(|(at, _)| *at))
        .collect();
    positions.sort_unstable();
    positions.dedup();
    let mut edits: Vec<TextEdit> = Vec::new();
    for at in positions {
        let insert: String = inserted
            .iter()
            .filter(|(p, _)| *p == at)
            .map(|(_, text)| text.as_str())
            .collect();
        let delete = usize::from(deleted.binary_search(&at).is_ok());
        // A run of deletions (and what is inserted after it) is one edit.
        if let Some(last) = edits.last_mut() {
            if last.at + last.delete == at && last.insert.is_empty() {
                last.delete += delete;
                last.insert = insert;
                continue;
            }
        }
        edits.push(TextEdit { at, delete, insert });
    }
    edits
}

fn apply_to_string(text: &str, edits: &[TextEdit]) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut next = 0;
    for edit in edits {
        out.extend(&chars[next..edit.at]);
        out.push_str(&edit.insert);
        next = edit.at + edit.delete;
    }
    out.extend(&chars[next.min(chars.len())..]);
    out
}

/// Makes the planned steps as Yjs edits, from the end of the document backwards so that
/// the positions the plan names stay valid.
fn apply(txn: &mut TransactionMut, ours: &[Block], mut steps: Vec<Step>) -> Result<Merged, MergeError> {
    let mut merged = Merged::default();
    // At one position: the block's own change or deletion first, then insertions before it.
    steps.sort_by_key(|step| match step {
        Step::Delete(at) | Step::Change { at, .. } => (std::cmp::Reverse(*at), 0),
        Step::Insert { before, .. } => (std::cmp::Reverse(*before), 1),
    });
    let fragment = txn.get_or_insert_xml_fragment(FRAGMENT);
    for step in steps {
        match step {
            Step::Delete(at) => {
                fragment.remove_range(txn, at as u32, 1);
                merged.deleted += 1;
            }
            Step::Insert { before, blocks } => {
                for (k, block) in blocks.iter().enumerate() {
                    blocks::insert(txn, &fragment, (before + k) as u32, block);
                }
                merged.inserted += blocks.len();
            }
            Step::Change { at, block_type, text } => {
                merged.changed += 1;
                if block_type != ours[at].block_type {
                    // An element's name cannot change: the editor replaces the block too.
                    let block = Block::new(block_type, apply_to_string(&ours[at].text, &text));
                    fragment.remove_range(txn, at as u32, 1);
                    blocks::insert(txn, &fragment, at as u32, &block);
                    continue;
                }
                let Some(XmlOut::Element(element)) = fragment.get(txn, at as u32) else {
                    return Err(BlockError::NotABlock { index: at as u32 }.into());
                };
                let text_node = match element.get(txn, 0) {
                    Some(XmlOut::Text(t)) if element.len(txn) == 1 => t,
                    None => element.push_back(txn, XmlTextPrelim::new("")),
                    _ => {
                        // Several text runs: rewrite the block's text as one.
                        let new_text = apply_to_string(&ours[at].text, &text);
                        let count = element.len(txn);
                        element.remove_range(txn, 0, count);
                        element.push_back(txn, XmlTextPrelim::new(new_text.as_str()));
                        continue;
                    }
                };
                // Character positions to the document's UTF-16 positions.
                let mut utf16 = Vec::with_capacity(ours[at].text.len() + 1);
                let mut offset = 0u32;
                for c in ours[at].text.chars() {
                    utf16.push(offset);
                    offset += c.len_utf16() as u32;
                }
                utf16.push(offset);
                for edit in text.iter().rev() {
                    let start = utf16[edit.at];
                    let end = utf16[edit.at + edit.delete];
                    if end > start {
                        text_node.remove_range(txn, start, end - start);
                    }
                    if !edit.insert.is_empty() {
                        text_node.insert(txn, start, &edit.insert);
                    }
                }
            }
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use yrs::{Doc, Transact};

    use super::*;
    use crate::content::blocks::BlockType::*;

    fn b(t: BlockType, text: &str) -> Block {
        Block::new(t, text)
    }

    fn room_doc(blocks: &[Block]) -> Doc {
        let doc = Doc::with_options(yrs::Options {
            offset_kind: yrs::OffsetKind::Utf16,
            ..yrs::Options::default()
        });
        blocks::append(&mut doc.transact_mut(), blocks);
        doc
    }

    /// Merges through a real document and checks it agrees with `merged_blocks`.
    fn merge_doc(base: &[Block], ours: &[Block], theirs: &[Block]) -> Result<Vec<Block>, MergeError> {
        let doc = room_doc(ours);
        let expected = merged_blocks(base, ours, theirs);
        let outcome = {
            let mut txn = doc.transact_mut();
            merge(&mut txn, base, theirs)
        };
        let result = outcome.map(|_| blocks::read(&doc.transact()).unwrap());
        assert_eq!(result, expected, "the document and the plan disagree");
        if result.is_err() {
            assert_eq!(
                blocks::read(&doc.transact()).unwrap(),
                ours,
                "a refused merge changed the document"
            );
        }
        result
    }

    fn scene() -> Vec<Block> {
        vec![
            b(SceneHeading, "INT. KITCHEN - NIGHT"),
            b(Action, "Rain on the window."),
            b(Character, "ZOË"),
            b(Dialogue, "Coffee?"),
        ]
    }

    #[test]
    fn a_write_alone_is_taken_whole_for_every_small_text() {
        // Every pair of texts up to 4 characters over {a, b, c}: with nothing changed live,
        // the write wins whole (a diff whose insert positions drift would put text elsewhere).
        let texts: Vec<String> = (0..=4u32)
            .flat_map(|n| {
                (0..3u32.pow(n)).map(move |code| {
                    (0..n)
                        .map(|k| ['a', 'b', 'c'][(code / 3u32.pow(k) % 3) as usize])
                        .collect()
                })
            })
            .collect();
        for base in &texts {
            for theirs in &texts {
                let deadline = Instant::now() + DIFF_BUDGET;
                let edits = merge_text(base, base, theirs, deadline);
                assert_eq!(
                    &apply_to_string(base, &edits),
                    theirs,
                    "{base:?} -> {theirs:?}: {edits:?}"
                );
            }
        }
    }

    #[test]
    fn text_typed_further_on_one_side_is_kept_once_the_longer() {
        use BlockType::*;
        // An autosave carrying what was already typed live, and more.
        let base = vec![b(Action, "Rain.")];
        let ours = vec![b(Action, "Rain. Thunder")];
        let theirs = vec![b(Action, "Rain. Thunder rolls.")];
        assert_eq!(merged_blocks(&base, &ours, &theirs).unwrap(), theirs);
        // …and the other way round: the live side typed further.
        assert_eq!(merged_blocks(&base, &theirs, &ours).unwrap(), theirs);
        // New blocks both sides inserted at one place, one typed further.
        let base = vec![b(SceneHeading, "INT. BAR")];
        let ours = vec![b(SceneHeading, "INT. BAR"), b(Action, "She wai")];
        let theirs = vec![
            b(SceneHeading, "INT. BAR"),
            b(Action, "She waits."),
            b(Character, "JO"),
        ];
        assert_eq!(merged_blocks(&base, &ours, &theirs).unwrap(), theirs);
        // Different insertions still both stay.
        let theirs = vec![b(SceneHeading, "INT. BAR"), b(Action, "He leaves.")];
        assert_eq!(
            merged_blocks(&base, &ours, &theirs).unwrap(),
            vec![
                b(SceneHeading, "INT. BAR"),
                b(Action, "He leaves."),
                b(Action, "She wai")
            ]
        );
    }

    #[test]
    fn with_no_live_change_the_write_wins_whole() {
        let base = scene();
        let mut theirs = base.clone();
        theirs[1].text = "Rain hammers the window.".into();
        theirs.insert(3, b(Parenthetical, "(whispering)"));
        theirs.remove(0);
        assert_eq!(merge_doc(&base, &base, &theirs).unwrap(), theirs);
    }

    #[test]
    fn edits_to_different_blocks_both_stay() {
        let base = scene();
        let mut ours = base.clone();
        ours[3].text = "Coffee? Tea?".into();
        let mut theirs = base.clone();
        theirs[1].text = "Rain on the window. Thunder.".into();
        let merged = merge_doc(&base, &ours, &theirs).unwrap();
        assert_eq!(merged[1].text, "Rain on the window. Thunder.");
        assert_eq!(merged[3].text, "Coffee? Tea?");
    }

    #[test]
    fn insertions_into_the_same_block_both_stay() {
        let base = scene();
        let mut ours = base.clone();
        ours[1].text = "Heavy rain on the window.".into();
        let mut theirs = base.clone();
        theirs[1].text = "Rain on the window. Thunder.".into();
        let merged = merge_doc(&base, &ours, &theirs).unwrap();
        assert_eq!(merged[1].text, "Heavy rain on the window. Thunder.");
        // Both at the same spot: the write's text first, then the live one.
        let mut ours = base.clone();
        ours[3].text = "Coffee? [live]".into();
        let mut theirs = base.clone();
        theirs[3].text = "Coffee? [p1]".into();
        assert_eq!(
            merge_doc(&base, &ours, &theirs).unwrap()[3].text,
            "Coffee? [p1] [live]"
        );
    }

    #[test]
    fn deletions_and_replacements_merge_with_live_typing() {
        let base = vec![b(Action, "The quick brown fox jumps.")];
        let ours = vec![b(Action, "The quick brown fox jumps high.")];
        let theirs = vec![b(Action, "The slow brown fox jumps.")];
        assert_eq!(
            merge_doc(&base, &ours, &theirs).unwrap()[0].text,
            "The slow brown fox jumps high."
        );
        // The write deletes what the live side also deleted: once.
        let ours = vec![b(Action, "The brown fox jumps.")];
        let theirs = vec![b(Action, "The brown fox jumps!")];
        assert_eq!(
            merge_doc(&base, &ours, &theirs).unwrap()[0].text,
            "The brown fox jumps!"
        );
    }

    #[test]
    fn new_blocks_from_both_sides_stay_and_the_same_change_is_made_once() {
        let base = scene();
        let mut ours = base.clone();
        ours.insert(2, b(Action, "[live] She turns."));
        let mut theirs = base.clone();
        theirs.insert(2, b(Action, "[p1] Lightning."));
        let merged = merge_doc(&base, &ours, &theirs).unwrap();
        assert_eq!(merged[2].text, "[p1] Lightning.");
        assert_eq!(merged[3].text, "[live] She turns.");
        assert_eq!(merged.len(), 6);
        // The same write again (a retried autosave): nothing more changes.
        assert_eq!(merge_doc(&base, &theirs, &theirs).unwrap(), theirs);
    }

    #[test]
    fn a_block_deleted_on_one_side_and_edited_on_the_other_is_refused() {
        let base = scene();
        let mut ours = base.clone();
        ours[1].text = "Rain. [live]".into();
        let mut theirs = base.clone();
        theirs.remove(1);
        let error = merge_doc(&base, &ours, &theirs).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("block 2 (action) was deleted by this write"),
            "{error}"
        );
        let mut ours = base.clone();
        ours.remove(1);
        let mut theirs = base.clone();
        theirs[1].text = "Rain. [p1]".into();
        assert!(merge_doc(&base, &ours, &theirs).is_err());
        // Deleted on both sides, or deleted by the write and untouched live: fine.
        assert_eq!(merge_doc(&base, &ours, &ours).unwrap(), ours);
    }

    #[test]
    fn type_changes_merge_with_live_text() {
        let base = vec![b(Action, "CUT TO:"), b(Action, "x")];
        let ours = vec![b(Action, "CUT TO: [live]"), b(Action, "x")];
        let theirs = vec![b(Transition, "CUT TO:"), b(Action, "x")];
        assert_eq!(
            merge_doc(&base, &ours, &theirs).unwrap()[0],
            b(Transition, "CUT TO: [live]")
        );
        let ours = vec![b(Character, "CUT TO:"), b(Action, "x")];
        assert!(merge_doc(&base, &ours, &theirs).is_err());
    }

    #[test]
    fn emoji_and_combining_characters_keep_their_utf16_positions() {
        let base = vec![b(Dialogue, "👩‍👩‍👧 Café e\u{301}")];
        let ours = vec![b(Dialogue, "👩‍👩‍👧 Café e\u{301} 𝄞")];
        let theirs = vec![b(Dialogue, "🎬 👩‍👩‍👧 Cafés e\u{301}")];
        assert_eq!(
            merge_doc(&base, &ours, &theirs).unwrap()[0].text,
            "🎬 👩‍👩‍👧 Cafés e\u{301} 𝄞"
        );
    }

    #[test]
    fn empty_sides() {
        let scene = scene();
        assert_eq!(merge_doc(&[], &[], &scene).unwrap(), scene);
        assert_eq!(merge_doc(&scene, &scene, &[]).unwrap(), Vec::<Block>::new());
        let live = vec![b(Action, "typed live")];
        assert_eq!(merge_doc(&[], &live, &scene).unwrap().len(), 5);
        let empty_block = vec![b(Action, "")];
        assert_eq!(
            merge_doc(&empty_block, &empty_block, &[b(Action, "now text")]).unwrap()[0].text,
            "now text"
        );
    }

    /// Random scenes and random edits on both sides: the merge never panics, the document
    /// agrees with the plan, a side that changed nothing yields the other side exactly, and
    /// when both changed, what each side typed (as whole new blocks) is there once.
    #[test]
    fn random_edits_on_both_sides() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(13);
        let words = [
            "INT.",
            "rain",
            "ZOË",
            "e\u{301}",
            "👩‍👩‍👧",
            "",
            "CUT TO:",
            "—",
            "a",
            "b",
        ];
        let mut text = |rng: &mut StdRng| -> String {
            (0..rng.random_range(0..4))
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let block = |rng: &mut StdRng, text: &mut dyn FnMut(&mut StdRng) -> String| {
            Block::new(BlockType::ALL[rng.random_range(0..6)], text(rng))
        };
        let edit = |rng: &mut StdRng,
                    blocks: &[Block],
                    marker: &str,
                    text: &mut dyn FnMut(&mut StdRng) -> String| {
            let mut out = blocks.to_vec();
            for n in 0..rng.random_range(0..4) {
                let at = rng.random_range(0..=out.len());
                match rng.random_range(0..4) {
                    0 if at < out.len() => {
                        out.remove(at);
                    }
                    1 if at < out.len() => {
                        let chars: Vec<char> = out[at].text.chars().collect();
                        let cut = rng.random_range(0..=chars.len());
                        let inserted = format!("<{marker}{n}>");
                        out[at].text = chars[..cut]
                            .iter()
                            .copied()
                            .chain(inserted.chars())
                            .chain(chars[cut..].iter().copied())
                            .collect();
                    }
                    _ => out.insert(
                        at,
                        Block::new(BlockType::Action, format!("[{marker}{n}] {}", text(rng))),
                    ),
                }
            }
            out
        };
        let mut both_merged = 0;
        for _ in 0..400 {
            let base: Vec<Block> = (0..rng.random_range(0..6))
                .map(|_| block(&mut rng, &mut text))
                .collect();
            let ours = edit(&mut rng, &base, "live", &mut text);
            let theirs = edit(&mut rng, &base, "p1", &mut text);
            assert_eq!(merge_doc(&base, &base, &theirs).unwrap(), theirs);
            assert_eq!(merge_doc(&base, &ours, &base).unwrap(), ours);
            if let Ok(merged) = merge_doc(&base, &ours, &theirs) {
                both_merged += usize::from(ours != base && theirs != base);
                for new in ours.iter().chain(&theirs).filter(|b| b.text.starts_with('[')) {
                    let marker = &new.text[..new.text.find(']').unwrap_or(0) + 1];
                    let count = merged.iter().filter(|b| b.text.contains(marker)).count();
                    assert_eq!(
                        count, 1,
                        "{marker} in {merged:?} from base {base:?} ours {ours:?} theirs {theirs:?}"
                    );
                }
                // Text typed into blocks on either side is there once too.
                let all: String = merged.iter().map(|b| b.text.as_str()).collect();
                for side in ["live", "p1"] {
                    for n in 0..4 {
                        let marker = format!("<{side}{n}>");
                        let typed = [&ours, &theirs]
                            .iter()
                            .any(|v| v.iter().any(|b| b.text.contains(&marker)));
                        if typed {
                            assert_eq!(
                                all.matches(&marker).count(),
                                1,
                                "{marker} in {merged:?} from base {base:?} ours {ours:?} theirs {theirs:?}"
                            );
                        }
                    }
                }
            }
        }
        assert!(
            both_merged > 100,
            "only {both_merged} merges of two real changes: the test checks little"
        );
    }
}
