// Unit tests of the durable-ack bookkeeping (src/acks.js) and of outgoing-frame classification.

import { test } from 'node:test'
import assert from 'node:assert/strict'

import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'

import { AckTracker, classifyFrame, MESSAGE_ACK } from '../src/index.js'

function syncFrame (write) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  write(enc)
  return encoding.toUint8Array(enc)
}

test('classifyFrame: sync step 2 and sync update bear updates; step 1, awareness, garbage do not', () => {
  const doc = new Y.Doc()
  doc.getText('t').insert(0, 'hello')
  const step1 = syncFrame((e) => syncProtocol.writeSyncStep1(e, doc))
  const step2 = syncFrame((e) => syncProtocol.writeSyncStep2(e, doc))
  const update = syncFrame((e) => syncProtocol.writeUpdate(e, Y.encodeStateAsUpdate(doc)))
  assert.equal(classifyFrame(step1), null)
  assert.equal(classifyFrame(step2), 'step2')
  assert.equal(classifyFrame(update), 'update')
  // The same bytes as ArrayBuffer, and as a view into a larger buffer.
  assert.equal(classifyFrame(update.buffer.slice(update.byteOffset, update.byteOffset + update.byteLength)), 'update')
  const big = new Uint8Array(update.length + 4)
  big.set(update, 4)
  assert.equal(classifyFrame(new DataView(big.buffer, 4, update.length)), 'update')
  assert.equal(classifyFrame(Uint8Array.of(1, 2, 3)), null, 'awareness')
  assert.equal(classifyFrame(Uint8Array.of(3)), null, 'query awareness')
  assert.equal(classifyFrame(Uint8Array.of(0)), null, 'truncated sync')
  assert.equal(classifyFrame(Uint8Array.of()), null, 'empty')
  assert.equal(classifyFrame(Uint8Array.of(MESSAGE_ACK, 1)), null, 'an ack')
  assert.equal(classifyFrame('text'), null)
  doc.destroy()
})

test('an update frame covers its update; the ack of its number makes it durable', () => {
  const t = new AckTracker()
  t.newConnection()
  assert.equal(t.unsynced, false)
  assert.equal(t.frameSent('step2'), 1) // the handshake, nothing local yet
  t.localUpdate()
  assert.equal(t.unsynced, true)
  assert.equal(t.frameSent('update'), 2)
  assert.equal(t.ack(1), false)
  assert.equal(t.unsynced, true, 'ack 1 does not cover frame 2')
  assert.equal(t.ack(2), true, 'ack 2 saves everything')
  assert.equal(t.unsynced, false)
  assert.equal(t.ack(2), false, 'a repeated ack is no news')
  assert.equal(t.ack(1), false, 'acks never go back')
})

test('an ack covers only frames sent before it arrived', () => {
  const t = new AckTracker()
  t.newConnection()
  assert.equal(t.ack(5), false) // nothing sent yet: covers nothing
  t.localUpdate()
  t.frameSent('update') // frame 1
  assert.equal(t.ack(5), true, 'covers frame 1 (all that was sent)')
  t.localUpdate()
  t.frameSent('update') // frame 2
  assert.deepEqual(t.pending, [2], 'frame 2 was sent after the ack')
  assert.equal(t.ack(1), false, 'below the highest so far: no news')
  assert.deepEqual(t.pending, [2])
  assert.equal(t.ack(2), true)
  assert.equal(t.unsynced, false)
})

test('updates made offline wait for the next connection: its step 2 carries them', () => {
  const t = new AckTracker()
  t.newConnection()
  t.frameSent('step2')
  t.localUpdate()
  t.frameSent('update') // frame 2, never acked: the connection drops
  t.newConnection()
  t.localUpdate() // typed while offline: nothing sent
  assert.deepEqual(t.pending, [null, null])
  assert.equal(t.ack(2), false, 'an ack before anything was sent on this connection counts for nothing')
  assert.equal(t.unsynced, true)
  t.frameSent('step2') // frame 1 of the new connection
  assert.deepEqual(t.pending, [1, 1])
  assert.equal(t.ack(1), true)
  assert.equal(t.ackedUpdates, 2)
  assert.equal(t.localUpdates, 2)
})

test('an update sent before the handshake does not cover what was typed offline', () => {
  const t = new AckTracker()
  t.newConnection()
  t.localUpdate() // A, offline
  t.newConnection() // the socket opens…
  t.localUpdate() // B, typed right after open, before the node's step 1
  t.frameSent('update') // frame 1 carries B only
  t.frameSent('step2') // frame 2 carries A (and B again)
  assert.deepEqual(t.pending, [2, 1])
  assert.equal(t.ack(1), false, 'A is not in frame 1')
  assert.equal(t.unsynced, true)
  assert.equal(t.ack(2), true)
})

test('oldestWait: how long the oldest update sent on this connection has waited for its ack', () => {
  const t = new AckTracker()
  assert.equal(t.oldestWait(1000), 0, 'nothing pending')
  t.localUpdate()
  assert.equal(t.oldestWait(1000), 0, 'pending but not sent: nothing waits for an ack')
  t.frameSent('update', 1000)
  t.localUpdate()
  t.frameSent('update', 1400)
  assert.equal(t.oldestWait(2000), 1000)
  t.ack(1)
  assert.equal(t.oldestWait(2000), 600, 'the first is durable; the second waits')
  t.newConnection()
  assert.equal(t.oldestWait(5000), 0, 'a new connection: nothing of it is sent yet')
  t.frameSent('step2', 5000)
  assert.equal(t.oldestWait(5500), 500)
  t.ack(1)
  assert.equal(t.oldestWait(9000), 0)
  assert.equal(t.unsynced, false)
})
