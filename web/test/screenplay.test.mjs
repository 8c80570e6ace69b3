// The screenplay schema and keys of the demo editor: Tab cycles a block's type, Enter
// starts the block that usually follows, Enter in an empty character line falls back to
// action.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { EditorState, TextSelection } from 'prosemirror-state'

import { schema, cycleBlock, enterBlock, cycleType, plainText, BLOCK_TYPES } from '../react/screenplay.js'

/** A state with the given blocks, the cursor at the end of block `at`. */
function stateOf (blocks, at = blocks.length - 1) {
  const doc = schema.node('doc', null, blocks.map(([type, text]) =>
    schema.node(type, null, text ? [schema.text(text)] : [])))
  let pos = 0
  doc.forEach((node, offset, index) => {
    if (index === at) pos = offset + 1 + node.content.size
  })
  return EditorState.create({ doc, selection: TextSelection.create(doc, pos) })
}

function run (state, command) {
  let next = state
  const handled = command(state, (tr) => { next = state.apply(tr) })
  assert.ok(handled, 'the command applies')
  return next
}

const types = (state) => {
  const out = []
  state.doc.forEach((node) => out.push(node.type.name))
  return out
}

test('the schema has the six screenplay blocks', () => {
  for (const name of ['scene_heading', 'action', 'character', 'parenthetical', 'dialogue', 'transition']) {
    assert.ok(schema.nodes[name], name)
  }
  assert.equal(BLOCK_TYPES.length, 6)
})

test('Tab cycles the current block forward and Shift-Tab back, wrapping around', () => {
  let state = stateOf([['action', 'JOHN']])
  state = run(state, cycleBlock(1))
  assert.deepEqual(types(state), ['character'])
  state = run(state, cycleBlock(-1))
  assert.deepEqual(types(state), ['action'])
  assert.equal(cycleType('scene_heading', 1), 'action')
  assert.equal(cycleType('action', -1), 'scene_heading')
  assert.equal(plainText(state.doc), 'JOHN', 'the text is kept')
})

test('Enter starts the block that usually follows', () => {
  const cases = [
    ['scene_heading', 'action'],
    ['action', 'action'],
    ['character', 'dialogue'],
    ['parenthetical', 'dialogue'],
    ['dialogue', 'character'],
    ['transition', 'scene_heading']
  ]
  for (const [from, to] of cases) {
    const state = run(stateOf([[from, 'text']]), enterBlock)
    assert.deepEqual(types(state), [from, to], `${from} + Enter`)
    assert.equal(state.selection.$from.parent.type.name, to, 'the cursor is in the new block')
  }
})

test('Enter in an empty character line turns it into action instead of splitting', () => {
  const state = run(stateOf([['action', 'She waits.'], ['character', '']]), enterBlock)
  assert.deepEqual(types(state), ['action', 'action'])
})

test('Enter in the middle of a block splits its text', () => {
  let state = stateOf([['action', 'Rain falls.']])
  state = state.apply(state.tr.setSelection(TextSelection.create(state.doc, 5)))
  state = run(state, enterBlock)
  assert.equal(plainText(state.doc), 'Rain\n falls.')
})

test('Ctrl+Home and Ctrl+End move the cursor to the document edges through the editor', async () => {
  const { selectDocEdge } = await import('../react/screenplay.js')
  let state = stateOf([['scene_heading', 'INT. HALL'], ['action', 'Dust.']], 0)
  state = run(state, selectDocEdge(true))
  assert.equal(state.selection.from, state.doc.content.size - 1, 'at the end of the last block')
  state = run(state, selectDocEdge(false))
  assert.equal(state.selection.from, 1, 'at the start of the first block')
})
