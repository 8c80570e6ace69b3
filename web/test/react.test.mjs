// The React bindings' components rendered to HTML (react-dom/server) from fake inputs; the
// hook and the editor run for real in the browser e2e, on which the demo is built.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import { createElement as h } from 'react'
import { renderToStaticMarkup } from 'react-dom/server'
import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'

import {
  PresenceAvatars, TypingIndicator, CollaborationStatusBar, UserCursor, describeStatus, initials
} from '../react/index.js'

function awarenessWith (others) {
  const awareness = new Awareness(new Y.Doc())
  awareness.setLocalStateField('user', { name: 'Ada Lovelace', color: '#123456' })
  for (const [id, state] of others) awareness.states.set(id, state)
  return awareness
}

test('PresenceAvatars: one avatar per person with a user, the page\'s own marked "you"', () => {
  const awareness = awarenessWith([[7, { user: { name: 'Bob Stone', color: '#abcdef' } }], [8, {}]])
  const html = renderToStaticMarkup(h(PresenceAvatars, { awareness }))
  assert.match(html, /data-user="Ada Lovelace"[^>]*>AL</)
  assert.match(html, /title="Ada Lovelace \(you\)"/)
  assert.match(html, /data-user="Bob Stone"[^>]*>BS</)
  assert.equal((html.match(/class="avatar"/g) || []).length, 2, html)
  awareness.destroy()
})

test('TypingIndicator: others who typed in the last 2 s, never oneself', () => {
  const now = Date.now()
  const awareness = awarenessWith([
    [7, { user: { name: 'Bob' }, typing: now }],
    [8, { user: { name: 'Cy' }, typing: now - 10000 }],
    [9, { user: { name: 'Di' }, typing: now - 100 }]
  ])
  awareness.setLocalStateField('typing', now)
  assert.equal(renderToStaticMarkup(h(TypingIndicator, { awareness })), '<span id="typing">Bob, Di are typing…</span>')
  awareness.destroy()
})

test('CollaborationStatusBar: the colour and words of each state', () => {
  const bar = (state, error) => renderToStaticMarkup(h(CollaborationStatusBar, { collaboration: state, error }))
  assert.match(bar({ status: 'connected', hasUnsyncedChanges: false }), /data-status="green".*all changes saved/)
  assert.match(bar({ status: 'connected', hasUnsyncedChanges: true }), /saving…/)
  assert.match(bar({ status: 'autosave', hasUnsyncedChanges: false }), /data-status="yellow".*saved with autosave/)
  assert.match(bar({ status: 'reconnecting', hasUnsyncedChanges: true }), /reconnecting… \(unsaved changes kept\)/)
  assert.match(bar({ status: 'offline' }), /data-status="red".*offline/)
  assert.match(bar({ status: 'connected' }, 'offline: token refused'), /data-status="red".*token refused/)
  assert.deepEqual(describeStatus({ status: 'connected', readOnly: true }), { colour: 'green', text: 'read-only' })
})

test('UserCursor and initials', () => {
  assert.match(renderToStaticMarkup(h(UserCursor, { user: { name: 'Bob', color: 'red' } })), /ProseMirror-yjs-cursor.*Bob/)
  assert.equal(initials('ada byron lovelace'), 'AB')
  assert.equal(initials(''), '?', 'no name: a question mark')
})
