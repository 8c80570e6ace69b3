// Unit tests of connectScene against a fake WebSocket class (the test opens sockets, delivers
// frames and closes them with any code) and a fake router (a stubbed fetch; one test uses a
// real HTTP server on 127.0.0.1). A tiny fake node answers the y-protocols sync handshake from
// a server-side Y.Doc, so the stock WebsocketProvider really syncs; acks are sent by the tests.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'

import { connectScene, MESSAGE_ACK } from '../src/index.js'

// ---------------------------------------------------------------------------------------
// Fakes
// ---------------------------------------------------------------------------------------

/** A fresh fake WebSocket class with its own list of instances. */
function fakeWebSocketClass () {
  class FakeWebSocket {
    constructor (url, protocols) {
      this.url = url
      this.protocols = protocols
      this.readyState = 0
      this.binaryType = 'blob'
      this.sent = [] // Uint8Array copies of every frame sent
      this.onopen = null
      this.onmessage = null
      this.onclose = null
      this.onerror = null
      this.onClientFrame = null // the fake node's receiver
      FakeWebSocket.instances.push(this)
    }

    send (data) {
      if (this.readyState !== 1) throw new Error('fake socket: send while not open')
      const bytes = new Uint8Array(data instanceof ArrayBuffer ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))
      this.sent.push(bytes)
      if (this.onClientFrame) this.onClientFrame(bytes)
    }

    /** Client-side close: the close event follows asynchronously, as in a browser. */
    close (code = 1000, reason = '') {
      if (this.readyState >= 2) return
      const wasConnecting = this.readyState === 0
      this.readyState = 2
      setTimeout(() => {
        this.readyState = 3
        if (wasConnecting && this.onerror) this.onerror({ type: 'error' })
        if (this.onclose) this.onclose({ code: wasConnecting ? 1006 : code, reason: wasConnecting ? '' : reason })
      }, 0)
    }

    // Test controls ---------------------------------------------------------------------

    /** The connection opens. */
    open () {
      assert.equal(this.readyState, 0, 'open() on a socket that is not connecting')
      this.readyState = 1
      if (this.onopen) this.onopen({ type: 'open' })
    }

    /** A frame from the node. */
    deliver (bytes) {
      if (this.readyState !== 1) return
      const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)
      if (this.onmessage) this.onmessage({ data: buf })
    }

    /** The node closes the connection with `code` and `reason`. */
    serverClose (code, reason = '') {
      assert.ok(this.readyState < 2, 'serverClose() on a closed socket')
      this.readyState = 3
      if (this.onclose) this.onclose({ code, reason, wasClean: true })
    }

    /** The connection fails (refused, reset): error, then close 1006. */
    fail () {
      assert.ok(this.readyState < 2, 'fail() on a closed socket')
      this.readyState = 3
      if (this.onerror) this.onerror({ type: 'error' })
      if (this.onclose) this.onclose({ code: 1006, reason: '', wasClean: false })
    }

    /** Update-bearing frames (sync step 2, sync update) this socket sent. */
    updateFrames () {
      return this.sent.filter((b) => b[0] === 0 && (b[1] === 1 || b[1] === 2)).length
    }
  }
  for (const [k, v] of Object.entries({ CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 })) {
    FakeWebSocket[k] = v
    FakeWebSocket.prototype[k] = v
  }
  FakeWebSocket.instances = []
  return FakeWebSocket
}

/**
 * A fake node behind a fake socket: answers the client's sync step 1 from `doc` and applies
 * the client's step 2 / updates to it (replies are delivered on a later tick, like a network).
 */
function fakeNode (ws, doc = new Y.Doc()) {
  const node = {
    doc,
    ws,
    /** Send the node's sync step 1 (a Troupe node sends it when the client joins). */
    sendStep1 () {
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, 0)
      syncProtocol.writeSyncStep1(enc, doc)
      ws.deliver(encoding.toUint8Array(enc))
    },
    /** Send a durable ack: `varuint 100, varuint n`. */
    ack (n) {
      ws.deliver(ackFrame(n))
    }
  }
  ws.onClientFrame = (bytes) => {
    const dec = decoding.createDecoder(bytes)
    if (decoding.readVarUint(dec) !== 0) return
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, 0)
    syncProtocol.readSyncMessage(dec, enc, doc, 'client')
    if (encoding.length(enc) > 1) {
      const reply = encoding.toUint8Array(enc)
      setImmediate(() => ws.deliver(reply))
    }
  }
  return node
}

function ackFrame (n) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MESSAGE_ACK)
  encoding.writeVarUint(enc, n)
  return encoding.toUint8Array(enc)
}

/**
 * A stubbed router: `fetch` answers GET /v1/route/{scene} with `owner`; `calls` records the
 * URLs asked; `failures` answers that many requests with 503 first.
 */
function fakeRouter (owner, base = 'http://router.test:8080') {
  const router = {
    base,
    owner,
    calls: [],
    failures: 0,
    status: 200,
    fetch: async (url, init) => {
      router.calls.push(url)
      assert.equal(typeof url, 'string')
      if (init && init.signal) assert.ok(init.signal instanceof AbortSignal)
      if (router.failures > 0) {
        router.failures--
        return { ok: false, status: 503, json: async () => ({}), text: async () => 'no membership' }
      }
      const status = router.status
      const scene = decodeURIComponent(url.slice(url.lastIndexOf('/') + 1))
      return {
        ok: status === 200,
        status,
        json: async () => ({ scene, node: 1, url: router.owner, epoch: 7 }),
        text: async () => (status === 200 ? JSON.stringify({ url: router.owner }) : 'bad scene id')
      }
    }
  }
  return router
}

/** Poll `pred` until truthy, failing with `what` after `timeout` ms. */
async function waitFor (what, pred, timeout = 3000) {
  const deadline = Date.now() + timeout
  for (;;) {
    const v = pred()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

let sceneCounter = 0

/**
 * A session on a fresh fake socket class and router; destroyed when the test ends.
 * random: () => 0 makes every backoff pause 0 ms unless a test asks otherwise.
 */
function setup (t, { owner = 'ws://node-a.test:4001', sceneId = `scene-${++sceneCounter}`, doc = new Y.Doc(), ...opts } = {}) {
  const WS = fakeWebSocketClass()
  const router = fakeRouter(owner)
  const statuses = []
  const events = { saved: 0, moved: [], errors: [] }
  const session = connectScene({
    router: router.base,
    sceneId,
    token: 'tok-1',
    doc,
    WebSocketPolyfill: WS,
    fetch: router.fetch,
    disableBc: true,
    random: () => 0,
    watchMoves: false, // the watch's held look-ups have tests of their own
    ...opts
  })
  session.on('status', (e) => statuses.push(e.status))
  session.on('saved', () => events.saved++)
  session.on('moved', (e) => events.moved.push(e.url))
  session.on('error', (e) => events.errors.push(e))
  t.after(() => {
    session.destroy()
    doc.destroy()
  })
  /** The n-th socket (0-based), once it exists. */
  const socket = (n) => waitFor(`socket #${n}`, () => WS.instances[n])
  /** Open socket n and run the handshake with a fake node; resolves once 'connected'. */
  const connect = async (n, nodeDoc) => {
    const ws = await socket(n)
    const node = fakeNode(ws, nodeDoc)
    ws.open()
    node.sendStep1()
    await waitFor(`status connected on socket #${n}`, () => session.status === 'connected')
    return { ws, node }
  }
  return { WS, router, doc, session, statuses, events, socket, connect, sceneId }
}

const text = (doc) => doc.getText('t')

// ---------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------

test('asks the router, connects a stock provider to the owner with the token and acks=1', async (t) => {
  const { session, router, socket, connect, statuses, WS } = setup(t, { sceneId: 'act1:scene2' })
  assert.ok(session.provider instanceof WebsocketProvider)
  assert.ok(session.provider.awareness, 'awareness on the provider')
  assert.equal(session.status, 'connecting')
  const ws = await socket(0)
  assert.deepEqual(router.calls, ['http://router.test:8080/v1/route/act1%3Ascene2'])
  assert.equal(ws.url, 'ws://node-a.test:4001/ws/scenes/act1%3Ascene2?acks=1', 'no token in the URL')
  assert.deepEqual(ws.protocols, ['troupe', 'troupe.bearer.tok-1'], 'the token rides in the subprotocol')
  assert.equal(session.url, 'ws://node-a.test:4001')
  assert.equal(session.status, 'connecting', 'still connecting before the socket opens')
  await connect(0)
  assert.deepEqual(statuses, ['syncing', 'connected'])
  assert.equal(session.provider.synced, true)
  assert.equal(WS.instances.length, 1)
})

test('retries the router with backoff until it answers; stays "connecting"', async (t) => {
  const WS = fakeWebSocketClass()
  const router = fakeRouter('ws://node-a.test:4001')
  router.failures = 3
  const doc = new Y.Doc()
  const session = connectScene({ router: router.base, sceneId: 'retry-router', token: 't', doc, WebSocketPolyfill: WS, fetch: router.fetch, disableBc: true, random: () => 0 })
  t.after(() => { session.destroy(); doc.destroy() })
  await waitFor('a socket', () => WS.instances[0])
  assert.equal(router.calls.length, 4)
  assert.equal(session.status, 'connecting')
})

test('a router that calls the scene id invalid (HTTP 400) stops the session', async (t) => {
  const WS = fakeWebSocketClass()
  const router = fakeRouter('ws://node-a.test:4001')
  router.status = 400
  const doc = new Y.Doc()
  const errors = []
  const session = connectScene({ router: router.base, sceneId: 'bad scene', token: 't', doc, WebSocketPolyfill: WS, fetch: router.fetch, disableBc: true, random: () => 0 })
  session.on('error', (e) => errors.push(e))
  t.after(() => { session.destroy(); doc.destroy() })
  await waitFor('offline', () => session.status === 'offline')
  assert.equal(errors.length, 1)
  assert.equal(errors[0].code, 4404)
  await sleep(50)
  assert.equal(router.calls.length, 1)
  assert.equal(WS.instances.length, 0)
})

test('uses the real fetch against an HTTP router', async (t) => {
  const asked = []
  const server = createServer((req, res) => {
    asked.push(req.url)
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ scene: 's', node: 2, url: 'ws://127.0.0.1:4002/', epoch: 3 }) + '\n')
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => server.close())
  const WS = fakeWebSocketClass()
  const doc = new Y.Doc()
  const session = connectScene({
    router: `http://127.0.0.1:${server.address().port}/`,
    sceneId: 'scene~1',
    token: 'a.b.c',
    doc,
    WebSocketPolyfill: WS,
    disableBc: true
  })
  t.after(() => { session.destroy(); doc.destroy() })
  const ws = await waitFor('a socket', () => WS.instances[0])
  assert.deepEqual(asked, ['/v1/route/scene~1'])
  assert.equal(ws.url, 'ws://127.0.0.1:4002/ws/scenes/scene~1?acks=1')
  assert.deepEqual(ws.protocols, ['troupe', 'troupe.bearer.a.b.c'])
})

// ---------------------------------------------------------------------------------------
// Moves, failures, re-resolving
// ---------------------------------------------------------------------------------------

test('4301 with a URL: reconnects there at once, emits moved, no router look-up', async (t) => {
  const { session, router, socket, connect, statuses, events } = setup(t, { random: () => 1 })
  const { ws } = await connect(0)
  ws.serverClose(4301, 'ws://node-b.test:4002')
  assert.equal(session.status, 'reconnecting')
  assert.deepEqual(events.moved, ['ws://node-b.test:4002'])
  const ws1 = await socket(1)
  assert.ok(ws1.url.startsWith('ws://node-b.test:4002/ws/scenes/'), ws1.url)
  assert.ok(ws1.url.endsWith('?acks=1'))
  assert.deepEqual(ws1.protocols, ['troupe', 'troupe.bearer.tok-1'])
  assert.equal(router.calls.length, 1)
  await connect(1)
  assert.deepEqual(statuses, ['syncing', 'connected', 'reconnecting', 'connected'])
  assert.equal(session.url, 'ws://node-b.test:4002')
})

test('4301 without a URL: asks the router and goes where it says', async (t) => {
  const { router, socket, connect, events } = setup(t)
  const { ws } = await connect(0)
  router.owner = 'ws://node-c.test:4003'
  ws.serverClose(4301, '')
  const ws1 = await socket(1)
  assert.equal(router.calls.length, 2)
  assert.ok(ws1.url.startsWith('ws://node-c.test:4003/ws/scenes/'), ws1.url)
  assert.deepEqual(events.moved, ['ws://node-c.test:4003'])
})

test('after 2 failed attempts in a row, asks the router again before the next one', async (t) => {
  const { session, router, socket, connect, statuses } = setup(t)
  await connect(0)
  router.owner = 'ws://node-b.test:4002' // the owner died; the router knows
  ;(await socket(0)).serverClose(1006, '') // 1st failure: the connection is lost
  assert.equal(session.status, 'reconnecting')
  const ws1 = await socket(1)
  assert.ok(ws1.url.startsWith('ws://node-a.test:4001/'), 'first retry goes to the same node')
  assert.equal(router.calls.length, 1, 'no look-up after one failure')
  ws1.fail() // 2nd failure: refused
  const ws2 = await socket(2)
  assert.equal(router.calls.length, 2, 'looked up after two failures')
  assert.ok(ws2.url.startsWith('ws://node-b.test:4002/'), ws2.url)
  ws2.fail() // still failing: keep asking the router before each attempt
  await socket(3)
  assert.equal(router.calls.length, 3)
  await connect(3)
  assert.deepEqual(statuses, ['syncing', 'connected', 'reconnecting', 'connected'])
  // Connected again: the failure count starts over.
  ;(await socket(3)).serverClose(1011, 'scene unavailable')
  await socket(4)
  assert.equal(router.calls.length, 3)
})

test('a node going away (1001) sends the client to the router at once', async (t) => {
  const { router, socket, connect } = setup(t)
  const { ws } = await connect(0)
  router.owner = 'ws://node-b.test:4002'
  ws.serverClose(1001, 'shutting down')
  const ws1 = await socket(1)
  assert.equal(router.calls.length, 2)
  assert.ok(ws1.url.startsWith('ws://node-b.test:4002/'))
})

test('the router being down does not stop retries to the node already known', async (t) => {
  const { router, socket, connect } = setup(t)
  await connect(0)
  ;(await socket(0)).serverClose(1006)
  ;(await socket(1)).fail()
  router.failures = 1 // the look-up before attempt 3 fails
  const ws2 = await socket(2)
  assert.equal(router.calls.length, 2)
  assert.ok(ws2.url.startsWith('ws://node-a.test:4001/'))
})

test('reconnects wait for the jittered backoff, and y-websocket does not reconnect on its own', async (t) => {
  // random 1: each pause is the full window. backoffBase 300: first pause 300 ms, then 600.
  const { WS, socket, connect } = setup(t, { random: () => 1, backoffBase: 300 })
  await connect(0)
  const closedAt = Date.now()
  ;(await socket(0)).serverClose(1006)
  // y-websocket 1.5 alone would reconnect after 100 ms.
  await sleep(200)
  assert.equal(WS.instances.length, 1, 'reconnected before the backoff')
  await socket(1)
  const firstGap = Date.now() - closedAt
  assert.ok(firstGap >= 290, `first retry after ${firstGap} ms`)
  const failedAt = Date.now()
  ;(await socket(1)).fail()
  await sleep(400)
  assert.equal(WS.instances.length, 2, 'second retry before its 600 ms pause')
  await socket(2)
  const secondGap = Date.now() - failedAt
  assert.ok(secondGap >= 590, `second retry after ${secondGap} ms`)
})

test('a connection attempt stuck in CONNECTING is abandoned after connectTimeout', async (t) => {
  const { WS, socket } = setup(t, { connectTimeout: 50 })
  const ws0 = await socket(0)
  await waitFor('the stuck socket to be closed', () => ws0.readyState === 3)
  await socket(1)
  assert.equal(WS.instances.length, 2)
})

test('an edit unacknowledged for stallTimeout while the router names another owner: moves there', async (t) => {
  const { router, socket, connect, doc, events, WS } = setup(t, { stallTimeout: 200 })
  const { ws, node } = await connect(0)
  node.ack(1) // the handshake
  const typedAt = Date.now()
  text(doc).insert(0, 'INT. ROOFTOP - NIGHT') // never acknowledged: the owner froze
  router.owner = 'ws://node-b.test:4002'
  const ws1 = await socket(1)
  assert.ok(Date.now() - typedAt >= 200, 'not before the edit waited stallTimeout')
  assert.ok(ws1.url.startsWith('ws://node-b.test:4002/ws/scenes/'), ws1.url)
  assert.deepEqual(events.moved, ['ws://node-b.test:4002'])
  assert.ok(ws.readyState >= 2, 'the stalled connection is dropped')
  const { node: nodeB } = await connect(1)
  await waitFor('the unacknowledged edit re-sent to the new owner', () => nodeB.doc.getText('t').toString() === 'INT. ROOFTOP - NIGHT')
  assert.equal(WS.instances.length, 2)
})

test('a stall while the router names the same owner keeps the connection and asks again every half stallTimeout', async (t) => {
  const { session, router, connect, doc, WS } = setup(t, { stallTimeout: 200 })
  const { node } = await connect(0)
  node.ack(1)
  const before = router.calls.length
  text(doc).insert(0, 'slow store')
  await sleep(800)
  const lookups = router.calls.length - before
  assert.ok(lookups >= 2, `asked again while the stall lasted (${lookups} look-ups)`)
  // The first after 200 ms of waiting, then at most one per 100 ms: 7 in 800 ms at most.
  assert.ok(lookups <= 7, `at most once per half stallTimeout (${lookups} look-ups)`)
  assert.equal(WS.instances.length, 1, 'the same owner: no new connection')
  assert.equal(session.status, 'connected')
  node.ack(2)
  const settled = router.calls.length
  await sleep(300)
  assert.equal(router.calls.length, settled, 'no look-ups once the edit is acknowledged')
})

/**
 * A fetch for `setup` whose look-ups with `?unless=` are held until the test answers them
 * (as the router holds them until the scene moves); other requests go to `ctx.router`.
 */
function holdingFetch () {
  const held = []
  const ctx = { router: null, held }
  ctx.fetch = (url, init) => {
    if (!url.includes('?unless=')) return ctx.router.fetch(url, init)
    return new Promise((resolve, reject) => {
      const entry = {
        url,
        aborted: false,
        answer: (owner) => resolve({ ok: true, status: 200, json: async () => ({ url: owner }), text: async () => '' })
      }
      held.push(entry)
      init.signal.addEventListener('abort', () => { entry.aborted = true; reject(new Error('aborted')) })
    })
  }
  return ctx
}

/**
 * A session with `watchMoves` on and a holding fetch, connected to its first owner with
 * one look-up held (`hold.held[0]`); `opts` as for `setup`.
 */
async function watchingSession (t, opts = {}) {
  const hold = holdingFetch()
  const ctx = setup(t, { watchMoves: true, fetch: hold.fetch, ...opts })
  hold.router = ctx.router
  const { ws } = await ctx.connect(0)
  await waitFor('a held look-up', () => hold.held.length === 1)
  return { hold, ctx, ws }
}

test('watchMoves: a look-up held while connected; answered with another owner, the session moves there', async (t) => {
  const { hold, ctx, ws } = await watchingSession(t)
  assert.ok(hold.held[0].url.endsWith(`?unless=${encodeURIComponent('ws://node-a.test:4001')}`), hold.held[0].url)
  assert.equal(ctx.WS.instances.length, 1)
  // The owner is paused: it says nothing; the router answers the held look-up.
  hold.held[0].answer('ws://node-b.test:4002')
  const ws1 = await ctx.socket(1)
  assert.ok(ws1.url.startsWith('ws://node-b.test:4002/ws/scenes/'), ws1.url)
  assert.deepEqual(ctx.events.moved, ['ws://node-b.test:4002'])
  assert.ok(ws.readyState >= 2, 'the old connection is dropped')
  await ctx.connect(1)
  await waitFor('a look-up held for the new owner', () => hold.held.length === 2)
  assert.ok(hold.held[1].url.endsWith(`?unless=${encodeURIComponent('ws://node-b.test:4002')}`), hold.held[1].url)
  // Stopping abandons the held look-up.
  ctx.session.destroy()
  assert.equal(hold.held[1].aborted, true)
  await sleep(50)
  assert.equal(hold.held.length, 2)
  assert.equal(ctx.WS.instances.length, 2)
})

test('watchMoves: the look-up stays held while reconnecting; its answer ends the pause before the next attempt', async (t) => {
  // A long backoff: without the held look-up the next attempt would wait 10 s.
  const { hold, ctx, ws } = await watchingSession(t, { random: () => 1, backoffBase: 10000, backoffCap: 10000 })
  // The owner dies: its connection is reset; the router does not know yet.
  ws.serverClose(1006, '')
  assert.equal(ctx.session.status, 'reconnecting')
  await sleep(50)
  assert.equal(ctx.WS.instances.length, 1, 'pausing before the next attempt')
  assert.equal(hold.held[0].aborted, false, 'the look-up is still held')
  // The cluster moves the scene; the router answers at once.
  const answered = Date.now()
  hold.held[0].answer('ws://node-b.test:4002')
  const ws1 = await ctx.socket(1)
  assert.ok(Date.now() - answered < 1000, 'followed at once, not after the pause')
  assert.ok(ws1.url.startsWith('ws://node-b.test:4002/ws/scenes/'), ws1.url)
  assert.deepEqual(ctx.events.moved, ['ws://node-b.test:4002'])
  await ctx.connect(1)
  await waitFor('a look-up held for the new owner', () => hold.held.length === 2)
  assert.ok(hold.held[1].url.endsWith(`?unless=${encodeURIComponent('ws://node-b.test:4002')}`), hold.held[1].url)
  assert.equal(ctx.WS.instances.length, 2)
})

test('watchMoves: an attempt still trying the dead owner is dropped when the held look-up names another', async (t) => {
  // No pause: the retry to the dead owner starts at once and hangs in CONNECTING.
  const { hold, ctx, ws } = await watchingSession(t, { connectTimeout: 0 })
  ws.serverClose(1006, '')
  const retry = await ctx.socket(1)
  assert.ok(retry.url.startsWith('ws://node-a.test:4001/'), retry.url)
  assert.equal(retry.readyState, 0, 'still connecting')
  hold.held[0].answer('ws://node-b.test:4002')
  const ws2 = await ctx.socket(2)
  assert.ok(retry.readyState >= 2, 'the hanging attempt is dropped')
  assert.ok(ws2.url.startsWith('ws://node-b.test:4002/ws/scenes/'), ws2.url)
  await ctx.connect(2)
  assert.equal(ctx.session.url, 'ws://node-b.test:4002')
})

test('watchMoves: falling back to autosave abandons the held look-up; no reconnect follows', async (t) => {
  const { hold, ctx, ws } = await watchingSession(t)
  ws.serverClose(4410, 'collaboration is off for this scene')
  await waitFor('autosave', () => ctx.session.status === 'autosave')
  assert.equal(hold.held[0].aborted, true, 'the held look-up is abandoned')
  await sleep(100)
  assert.equal(ctx.WS.instances.length, 1, 'no connection attempt while in autosave')
  assert.equal(hold.held.length, 1, 'no new held look-up')
})

test('watchMoves: a router that answers at once without a move is asked again only after a pause', async (t) => {
  const { router, connect, WS } = setup(t, { watchMoves: true })
  await connect(0)
  await waitFor('the first watch look-up', () => router.calls.some((u) => u.includes('?unless=')))
  await sleep(300)
  assert.equal(router.calls.filter((u) => u.includes('?unless=')).length, 1, 'no busy loop against a router that does not hold')
  assert.equal(WS.instances.length, 1, 'the same owner: no new connection')
})

// ---------------------------------------------------------------------------------------
// Tokens and fatal codes
// ---------------------------------------------------------------------------------------

test('4401: calls getToken once and reconnects with the new token', async (t) => {
  let calls = 0
  const { session, socket, connect, statuses, events } = setup(t, {
    getToken: async () => { calls++; return 'tok-2' }
  })
  await connect(0)
  ;(await socket(0)).serverClose(4401, 'invalid token: ExpiredSignature')
  const ws1 = await socket(1)
  assert.equal(calls, 1)
  assert.ok(ws1.url.endsWith('?acks=1'), ws1.url)
  assert.deepEqual(ws1.protocols, ['troupe', 'troupe.bearer.tok-2'], 'the refreshed token')
  await connect(1)
  assert.deepEqual(statuses, ['syncing', 'connected', 'reconnecting', 'connected'])
  assert.deepEqual(events.errors, [])
  // Much later the new token expires too: another refresh is allowed after a good connection.
  ;(await socket(1)).serverClose(4401, 'expired')
  await socket(2)
  assert.equal(calls, 2)
  assert.equal(session.status, 'reconnecting')
})

test('4401 again right after a refresh: offline, getToken not called twice', async (t) => {
  let calls = 0
  const { session, WS, socket, connect, events } = setup(t, {
    getToken: () => { calls++; return 'tok-2' }
  })
  await connect(0)
  ;(await socket(0)).serverClose(4401, 'expired')
  const ws1 = await socket(1)
  ws1.open()
  ws1.serverClose(4401, 'invalid token')
  assert.equal(session.status, 'offline')
  assert.equal(calls, 1)
  assert.equal(events.errors.length, 1)
  assert.equal(events.errors[0].code, 4401)
  await sleep(250)
  assert.equal(WS.instances.length, 2)
})

test('4401 without getToken, or when it fails or returns nothing: offline', async (t) => {
  for (const [what, getToken] of [
    ['no getToken', undefined],
    ['getToken throws', async () => { throw new Error('login expired') }],
    ['getToken returns nothing', async () => null]
  ]) {
    const { session, WS, socket, connect, events, statuses } = setup(t, { getToken })
    await connect(0)
    ;(await socket(0)).serverClose(4401, 'expired')
    await waitFor(`${what}: offline`, () => session.status === 'offline')
    assert.equal(events.errors.length, 1, what)
    assert.equal(events.errors[0].code, 4401, what)
    if (what === 'getToken throws') assert.equal(events.errors[0].error.message, 'login expired')
    assert.equal(statuses.at(-1), 'offline', what)
    await sleep(150)
    assert.equal(WS.instances.length, 1, `${what}: reconnected`)
  }
})

for (const code of [4400, 4403, 4404, 4413, 4429]) {
  test(`close ${code} is fatal: offline, an error event, no reconnect`, async (t) => {
    const { session, WS, socket, connect, events, statuses } = setup(t)
    await connect(0)
    ;(await socket(0)).serverClose(code, 'because')
    assert.equal(session.status, 'offline')
    assert.deepEqual(statuses, ['syncing', 'connected', 'offline'])
    assert.deepEqual(events.errors, [{ code, reason: 'because' }])
    assert.deepEqual(session.error, { code, reason: 'because' })
    assert.equal(session.provider.shouldConnect, false)
    // y-websocket 1.5 would be back after 100 ms; the session's backoff is 0 here.
    await sleep(300)
    assert.equal(WS.instances.length, 1)
  })
}

test('a fatal code before the first open also stops it', async (t) => {
  const { session, socket, events } = setup(t)
  const ws = await socket(0)
  ws.open()
  ws.serverClose(4403, 'token does not grant this scene')
  assert.equal(session.status, 'offline')
  assert.equal(events.errors[0].code, 4403)
})

// ---------------------------------------------------------------------------------------
// Durable acks
// ---------------------------------------------------------------------------------------

test('local edit: unsynced until the node acks the frame that carried it, then saved', async (t) => {
  const { session, doc, connect, events } = setup(t)
  const { ws, node } = await connect(0)
  assert.equal(session.hasUnsyncedChanges, false)
  const handshake = ws.updateFrames() // the client's step 2 answering the node's step 1
  assert.equal(handshake, 1)
  text(doc).insert(0, 'INT. HOUSE - DAY')
  assert.equal(session.hasUnsyncedChanges, true)
  assert.equal(ws.updateFrames(), 2)
  assert.equal(node.doc.getText('t').toString(), 'INT. HOUSE - DAY')
  node.ack(1) // only the handshake
  assert.equal(session.hasUnsyncedChanges, true)
  assert.equal(events.saved, 0)
  node.ack(2)
  assert.equal(session.hasUnsyncedChanges, false)
  assert.equal(events.saved, 1)
  // Two more edits; the ack of the first is not enough.
  text(doc).insert(0, 'A')
  text(doc).insert(0, 'B')
  assert.equal(ws.updateFrames(), 4)
  node.ack(3)
  assert.equal(session.hasUnsyncedChanges, true)
  assert.equal(events.saved, 1)
  node.ack(4)
  assert.equal(session.hasUnsyncedChanges, false)
  assert.equal(events.saved, 2)
})

test('an ack covers only what was sent before it, even if its number is higher', async (t) => {
  const { session, doc, connect, events } = setup(t)
  const { node } = await connect(0)
  node.ack(50) // a confused node: only the handshake was sent
  text(doc).insert(0, 'x') // frame 2, sent after that ack
  assert.equal(session.hasUnsyncedChanges, true)
  assert.equal(events.saved, 0)
  node.ack(1) // below the highest so far
  assert.equal(session.hasUnsyncedChanges, true)
  node.ack(2)
  assert.equal(session.hasUnsyncedChanges, false)
  assert.equal(events.saved, 1)
})

test('edits made offline stay unsynced until the next connection acks them', async (t) => {
  const { session, doc, socket, connect, events } = setup(t, { random: () => 1, backoffBase: 150 })
  const first = await connect(0)
  text(doc).insert(0, 'one ')
  first.node.ack(2)
  assert.equal(events.saved, 1)
  const committed = Y.encodeStateAsUpdate(first.node.doc) // what the store holds
  text(doc).insert(4, 'two ') // frame 3: sent, never acked
  first.ws.serverClose(1006)
  assert.equal(session.status, 'reconnecting')
  text(doc).insert(8, 'three') // offline: nothing sent
  assert.equal(first.ws.updateFrames(), 3)
  assert.equal(session.hasUnsyncedChanges, true)
  first.node.ack(3) // a late ack for the dead connection is never delivered (socket closed)
  assert.equal(session.hasUnsyncedChanges, true)

  // The next connection: the node lost "two" (it was never committed).
  const serverDoc = new Y.Doc()
  Y.applyUpdate(serverDoc, committed)
  assert.equal(text(serverDoc).toString(), 'one ')
  const ws1 = await socket(1)
  const node1 = fakeNode(ws1, serverDoc)
  ws1.open()
  assert.equal(session.hasUnsyncedChanges, true, 'open is not enough')
  node1.ack(1) // nothing sent yet on this connection: counts for nothing
  assert.equal(session.hasUnsyncedChanges, true)
  node1.sendStep1() // the client answers with its step 2: frame 1 of this connection
  assert.equal(ws1.updateFrames(), 1)
  assert.equal(session.hasUnsyncedChanges, true)
  assert.equal(events.saved, 1)
  node1.ack(1)
  assert.equal(session.hasUnsyncedChanges, false)
  assert.equal(events.saved, 2)
  await waitFor('connected', () => session.status === 'connected')
  assert.equal(text(doc).toString(), 'one two three')
  assert.equal(text(serverDoc).toString(), 'one two three', 'the step 2 brought the node what it lacked')
})

test('an edit sent right after reconnecting does not cover the ones typed offline', async (t) => {
  const { session, doc, socket, connect, events } = setup(t)
  const first = await connect(0)
  first.ws.serverClose(1006)
  const ws1 = await socket(1)
  text(doc).insert(0, 'offline ') // typed while the socket is connecting
  const node1 = fakeNode(ws1, first.node.doc)
  ws1.open()
  text(doc).insert(0, 'online ') // sent at once as an update: frame 1
  assert.equal(ws1.updateFrames(), 1)
  node1.sendStep1() // step 2 answers: frame 2, carrying "offline "
  assert.equal(ws1.updateFrames(), 2)
  node1.ack(1)
  assert.equal(session.hasUnsyncedChanges, true, '"offline " is only in frame 2')
  assert.equal(events.saved, 0)
  node1.ack(2)
  assert.equal(session.hasUnsyncedChanges, false)
  assert.equal(events.saved, 1)
})

test('content the doc held before connecting is unsynced until the first step 2 is acked', async (t) => {
  const doc = new Y.Doc()
  text(doc).insert(0, 'cached offline')
  const { session, connect, events } = setup(t, { doc })
  assert.equal(session.hasUnsyncedChanges, true)
  const { ws, node } = await connect(0)
  assert.equal(ws.updateFrames(), 1)
  assert.equal(text(node.doc).toString(), 'cached offline')
  assert.equal(session.hasUnsyncedChanges, true)
  node.ack(1)
  assert.equal(session.hasUnsyncedChanges, false)
  assert.equal(events.saved, 1)
})

test('remote edits are not local changes', async (t) => {
  const nodeDoc = new Y.Doc()
  text(nodeDoc).insert(0, 'FADE IN:')
  const { session, doc, connect, events } = setup(t)
  const { ws, node } = await connect(0, nodeDoc)
  assert.equal(text(doc).toString(), 'FADE IN:')
  // Another client's edit, relayed by the node.
  const other = new Y.Doc()
  Y.applyUpdate(other, Y.encodeStateAsUpdate(node.doc))
  other.on('update', (u) => {
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, 0)
    syncProtocol.writeUpdate(enc, u)
    ws.deliver(encoding.toUint8Array(enc))
  })
  text(other).insert(8, ' EXT.')
  assert.equal(text(doc).toString(), 'FADE IN: EXT.')
  assert.equal(session.hasUnsyncedChanges, false)
  assert.equal(events.saved, 0)
})

test('acks are counted per connection: the new connection starts from 1', async (t) => {
  const { session, doc, socket, connect } = setup(t)
  const first = await connect(0)
  text(doc).insert(0, 'a')
  text(doc).insert(0, 'b')
  first.node.ack(3)
  assert.equal(session.hasUnsyncedChanges, false)
  first.ws.serverClose(1012, 'scene reloading')
  const second = await connect(1, first.node.doc)
  assert.equal(second.ws.updateFrames(), 1)
  text(doc).insert(0, 'c') // frame 2 of the new connection
  second.node.ack(1)
  assert.equal(session.hasUnsyncedChanges, true)
  second.node.ack(2)
  assert.equal(session.hasUnsyncedChanges, false)
  // The socket of the dead connection cannot be mistaken for the current one.
  await socket(1)
})

// ---------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------

test('destroy: offline, socket closed, provider destroyed, no reconnect', async (t) => {
  const { session, WS, connect, statuses } = setup(t)
  const { ws } = await connect(0)
  const awareness = session.provider.awareness
  session.destroy()
  assert.equal(session.status, 'offline')
  assert.deepEqual(statuses, ['syncing', 'connected', 'offline'])
  assert.equal(session.provider.shouldConnect, false)
  await waitFor('the socket to close', () => ws.readyState === 3)
  await sleep(250)
  assert.equal(WS.instances.length, 1)
  assert.equal(awareness.getLocalState(), null, 'the awareness the session made is destroyed')
  session.destroy() // twice is fine
  assert.deepEqual(statuses, ['syncing', 'connected', 'offline'])
})

test('destroy while waiting for the router or a backoff: nothing happens afterwards', async (t) => {
  const WS = fakeWebSocketClass()
  let release
  const gate = new Promise((resolve) => { release = resolve })
  const doc = new Y.Doc()
  const session = connectScene({
    router: 'http://router.test',
    sceneId: 's',
    token: 't',
    doc,
    WebSocketPolyfill: WS,
    disableBc: true,
    fetch: async () => {
      await gate
      return { ok: true, status: 200, json: async () => ({ url: 'ws://n.test:1' }) }
    }
  })
  t.after(() => doc.destroy())
  await sleep(20)
  session.destroy()
  release()
  await sleep(50)
  assert.equal(WS.instances.length, 0)
  assert.equal(session.status, 'offline')
})

test('a listener that throws does not break the session', async (t) => {
  const { session, connect } = setup(t)
  const errors = []
  const orig = console.error
  console.error = (...args) => errors.push(args)
  t.after(() => { console.error = orig })
  session.on('status', () => { throw new Error('boom') })
  await connect(0)
  assert.equal(session.status, 'connected')
  assert.ok(errors.length >= 1)
})

test('argument checks', () => {
  const doc = new Y.Doc()
  const WS = fakeWebSocketClass()
  assert.throws(() => connectScene({ router: 'router.test', sceneId: 's', token: 't', doc, WebSocketPolyfill: WS }), /router/)
  assert.throws(() => connectScene({ router: 'http://r', sceneId: '', token: 't', doc, WebSocketPolyfill: WS }), /sceneId/)
  assert.throws(() => connectScene({ router: 'http://r', sceneId: 's', doc, WebSocketPolyfill: WS }), /token/)
  assert.throws(() => connectScene({ router: 'http://r', sceneId: 's', token: 't', WebSocketPolyfill: WS }), /doc/)
  doc.destroy()
})
