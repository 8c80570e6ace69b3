// The screenplay document: its ProseMirror schema (the block types of the scene document
// schema, each a Y.XmlElement holding one Y.XmlText once bound by y-prosemirror) and the
// keys screenwriters expect — Enter starts the block that usually follows, Tab cycles the
// current block's type.

import { Schema } from 'prosemirror-model'
import { Selection } from 'prosemirror-state'
import { splitBlockAs } from 'prosemirror-commands'

/** Block types in the order Tab cycles through them. */
export const BLOCK_TYPES = [
  'action',
  'character',
  'parenthetical',
  'dialogue',
  'transition',
  'scene_heading'
]

/** Human names, for the toolbar. */
export const BLOCK_LABELS = {
  scene_heading: 'Scene heading',
  action: 'Action',
  character: 'Character',
  parenthetical: 'Parenthetical',
  dialogue: 'Dialogue',
  transition: 'Transition'
}

/** What Enter at the end of a block starts. */
export const NEXT_ON_ENTER = {
  scene_heading: 'action',
  action: 'action',
  character: 'dialogue',
  parenthetical: 'dialogue',
  dialogue: 'character',
  transition: 'scene_heading'
}

const block = (name) => ({
  content: 'text*',
  marks: '',
  group: 'block',
  defining: true,
  parseDOM: [{ tag: `p.${name}` }],
  toDOM: () => ['p', { class: name, 'data-block': name }, 0]
})

export const schema = new Schema({
  nodes: {
    doc: { content: 'block+' },
    ...Object.fromEntries(BLOCK_TYPES.map((name) => [name, block(name)])),
    text: {}
  },
  marks: {}
})

/** The type after (or, with `step` -1, before) `name` in the Tab cycle. */
export function cycleType (name, step = 1) {
  const i = BLOCK_TYPES.indexOf(name)
  const n = BLOCK_TYPES.length
  return BLOCK_TYPES[(((i < 0 ? 0 : i) + step) % n + n) % n]
}

/** Tab / Shift-Tab: change the type of the block holding the cursor. */
export function cycleBlock (step) {
  return (state, dispatch) => {
    const { $from } = state.selection
    const node = $from.parent
    if (!node.isTextblock) return false
    const type = schema.nodes[cycleType(node.type.name, step)]
    if (dispatch) {
      dispatch(state.tr.setBlockType($from.start(), $from.end(), type).scrollIntoView())
    }
    return true
  }
}

/** Sets the block holding the cursor to `name` (the toolbar). */
export function setBlock (name) {
  return (state, dispatch) => {
    const { $from } = state.selection
    if (!$from.parent.isTextblock) return false
    if (dispatch) {
      dispatch(state.tr.setBlockType($from.start(), $from.end(), schema.nodes[name]))
    }
    return true
  }
}

/**
 * Enter: split the block at the cursor; the new block gets the type that usually follows
 * (character → dialogue, dialogue → character, …). Enter in an empty character or
 * dialogue block turns it into action, as screenwriting tools do.
 */
export function enterBlock (state, dispatch) {
  const { $from } = state.selection
  const node = $from.parent
  if (!node.isTextblock) return false
  const name = node.type.name
  if (node.content.size === 0 && name !== 'action' && name !== 'scene_heading') {
    if (dispatch) {
      dispatch(state.tr.setBlockType($from.start(), $from.end(), schema.nodes.action))
    }
    return true
  }
  return splitToNext(state, dispatch)
}

const splitToNext = splitBlockAs((node) => ({
  type: schema.nodes[NEXT_ON_ENTER[node.type.name] || 'action']
}))

/**
 * Ctrl+Home / Ctrl+End through the editor rather than the browser: with another user's
 * cursor drawn at the very end, the browser's own caret lands beside that widget, where
 * Enter does nothing.
 */
export function selectDocEdge (toEnd) {
  return (state, dispatch) => {
    if (dispatch) {
      const edge = toEnd ? Selection.atEnd(state.doc) : Selection.atStart(state.doc)
      dispatch(state.tr.setSelection(edge).scrollIntoView())
    }
    return true
  }
}

/** The plain text of a document: one line per block (what the tests compare). */
export function plainText (doc) {
  const lines = []
  doc.forEach((node) => lines.push(node.textContent))
  return lines.join('\n')
}
