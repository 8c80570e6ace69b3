// Interop tests: stock yjs + y-websocket 1.5 clients (the browser stack, running in Node)
// against a real `troupe-node` process.
//
// Run: TROUPE_BIN_DIR=target/debug node --test tests/interop/
// (tests/run.sh builds the binaries and sets TROUPE_BIN_DIR.)
//
// Each suite starts its own node on 127.0.0.1:0 with a fresh TROUPE_DATA_DIR and a random
// TROUPE_JWT_SECRET, parses the `troupe-node listening on 127.0.0.1:PORT` line, and kills the
// process in after() hooks (and on process exit), also when a test fails. The helpers for
// that, tokens, stock clients and polling are in harness.mjs (shared with cluster.test.mjs).

import { after, afterEach, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import * as Y from 'yjs'

import {
  b64url, binPath, clusterCerts, describeTail, destroyClients, mintToken, removeDir, startProcess, stockClient,
  tempDir, waitFor, withLogs
} from './harness.mjs'

// ---------------------------------------------------------------------------------------
// Configuration (waitFor's default limit, 10 s, is the harness's)
// ---------------------------------------------------------------------------------------

const NODE_BIN = binPath('troupe-node')
const TEST_TIMEOUT_MS = 90_000

// ---------------------------------------------------------------------------------------
// troupe-node processes
// ---------------------------------------------------------------------------------------

const LISTEN_RE = /^troupe-node listening on (127\.0\.0\.1):(\d+) rpc \S+\s*$/

/**
 * Start `troupe-node` and wait for its listening line.
 * @param {{dataDir: string, secret: string, listen?: string}} opts
 */
async function startNode ({ dataDir, secret, listen = '127.0.0.1:0' }) {
  // The internal port's certificates, kept with the data (a restarted node reuses them).
  const certs = join(dataDir, 'certs')
  if (!existsSync(join(certs, 'node-1.crt'))) clusterCerts(binPath('troupectl'), certs, [1])
  const env = {
    ...process.env,
    TROUPE_LISTEN: listen,
    TROUPE_RPC_LISTEN: '127.0.0.1:0',
    TROUPE_DATA_DIR: dataDir,
    TROUPE_JWT_SECRET: secret,
    TROUPE_INTERNAL_CA: join(certs, 'ca.crt'),
    TROUPE_INTERNAL_CERT: join(certs, 'node-1.crt'),
    TROUPE_INTERNAL_KEY: join(certs, 'node-1.key')
  }
  const node = await startProcess({
    name: 'troupe-node',
    bin: NODE_BIN,
    env,
    readyRe: LISTEN_RE,
    readyDesc: '"troupe-node listening on 127.0.0.1:PORT" line',
    tailLines: 60
  })
  node.port = Number(node.match[2])
  return node
}

/**
 * A node for one suite: started in before(), stopped and its data dir removed in after().
 * Errors thrown by a test get the node's stderr tail appended (see `withLogs`).
 */
function suiteNode () {
  const ctx = {
    node: null,
    secret: randomBytes(32).toString('hex'),
    dataDir: null,
    get url () { return `ws://127.0.0.1:${ctx.node.port}/ws/scenes` },
    logTails: () => ctx.node ? describeTail(ctx.node, 40) : ''
  }
  before(async () => {
    ctx.dataDir = tempDir('troupe-interop-')
    ctx.node = await startNode({ dataDir: ctx.dataDir, secret: ctx.secret })
  })
  after(async () => {
    if (ctx.node) await ctx.node.stop()
    removeDir(ctx.dataDir)
  })
  return ctx
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

// Providers and docs created by the current test are destroyed after it.
afterEach(destroyClients)

let sceneCounter = 0
const newSceneId = (tag) => `interop-${tag}-${process.pid}-${++sceneCounter}-${randomBytes(3).toString('hex')}`

/** A stock y-websocket client (see the harness) that records close codes. */
function connectClient (url, sceneId, token, { connect = true } = {}) {
  const client = stockClient(url, sceneId, token, { connect })
  const closes = []
  client.provider.on('connection-close', (event) => { closes.push(event ? event.code : null) })
  return Object.assign(client, {
    closes,
    text: client.doc.getText('notes'),
    frag: client.doc.getXmlFragment('prosemirror')
  })
}

const waitSynced = (client, label = 'client') =>
  waitFor(`${label} to sync`, () => client.provider.synced, {
    observe: () => ({ wsconnected: client.provider.wsconnected, closeCodes: client.closes })
  })

/** Content of a doc as seen by a fresh replica built from Y.encodeStateAsUpdate(doc). */
function snapshot (doc) {
  const replica = new Y.Doc()
  Y.applyUpdate(replica, Y.encodeStateAsUpdate(doc))
  const out = {
    text: replica.getText('notes').toString(),
    prosemirror: replica.getXmlFragment('prosemirror').toJSON(),
    prosemirrorBlocks: replica.getXmlFragment('prosemirror').length
  }
  replica.destroy()
  return out
}

const sameContent = (a, b) => JSON.stringify(snapshot(a.doc)) === JSON.stringify(snapshot(b.doc))

/** Append one screenplay block holding `text` to the prosemirror fragment. */
function addBlock (client, nodeName, text) {
  client.doc.transact(() => {
    const el = new Y.XmlElement(nodeName)
    const t = new Y.XmlText()
    t.insert(0, text)
    el.insert(0, [t])
    client.frag.insert(client.frag.length, [el])
  })
}

// ---------------------------------------------------------------------------------------
// Tests against one long-lived node
// ---------------------------------------------------------------------------------------

describe('troupe-node with stock y-websocket clients', { timeout: 10 * TEST_TIMEOUT_MS }, () => {
  const ctx = suiteNode()
  const editToken = (scene, extra = {}) => mintToken(ctx.secret, { scenes: { [scene]: 'edit' }, ...extra })

  test('(a) three clients editing concurrently converge', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    const scene = newSceneId('a')
    const clients = ['ann', 'ben', 'cat'].map((who) =>
      Object.assign(connectClient(ctx.url, scene, editToken(scene, { sub: who, name: who })), { who }))
    await Promise.all(clients.map((c) => waitSynced(c, c.who)))

    // Interleave edits from all three without waiting for the server in between.
    const ROUNDS = 20
    for (let r = 0; r < ROUNDS; r++) {
      for (const c of clients) {
        // Start or end only: a run inserted in one go is never split by a later insert there,
        // so every client's insert stays findable as one substring.
        const pos = Math.random() < 0.5 ? 0 : c.text.length
        c.text.insert(pos, `[${c.who}${r}]`)
        if (r % 5 === 0) addBlock(c, r % 10 === 0 ? 'dialogue' : 'action', `${c.who} line ${r}`)
        // Also concurrent edits inside one shared block once it exists everywhere.
        const first = c.frag.get(0)
        if (first && r % 4 === 1) first.get(0).insert(0, `<${c.who}${r}>`)
      }
      if (r % 3 === 0) await sleep(5)
    }

    await waitFor('all three clients to converge',
      () => sameContent(clients[0], clients[1]) && sameContent(clients[1], clients[2]) &&
        clients.every((c) => c.text.length > 0 && clients.every((o) => c.text.toString().includes(`[${o.who}${ROUNDS - 1}]`))),
      { observe: () => clients.map((c) => ({ who: c.who, ...snapshot(c.doc) })) })

    const final = snapshot(clients[0].doc)
    for (const c of clients) {
      for (let r = 0; r < ROUNDS; r++) {
        assert.ok(final.text.includes(`[${c.who}${r}]`), `text lost ${c.who}'s insert ${r}`)
      }
      assert.ok(JSON.stringify(final.prosemirror).includes(`${c.who} line 0`), `fragment lost ${c.who}'s block`)
    }
    assert.equal(final.prosemirrorBlocks, 3 * (ROUNDS / 5))
    // Identical CRDT state, not just identical rendering.
    const sv = (c) => Buffer.from(Y.encodeStateVector(c.doc)).toString('hex')
    assert.equal(sv(clients[0]), sv(clients[1]))
    assert.equal(sv(clients[1]), sv(clients[2]))
  }))

  test('(g) a large scene reaches joiners whole, in fragments, and an edit after it too', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    // 300 KB: the node sends it in WebSocket fragments, and shares one encoding among joiners
    // until the scene changes.
    const scene = newSceneId('g')
    const writer = Object.assign(connectClient(ctx.url, scene, editToken(scene, { sub: 'wes' })), { who: 'wes' })
    await waitSynced(writer, 'wes')
    const big = 'INT. ARCHIVE - NIGHT. '.repeat(14_000)
    writer.text.insert(0, big)
    const joiners = ['jo', 'kim', 'lee'].map((who) =>
      Object.assign(connectClient(ctx.url, scene, editToken(scene, { sub: who })), { who }))
    await waitFor('the joiners to have the whole scene', () => joiners.every((c) => c.text.length === big.length))
    // One more joiner once the node has the scene: it is answered from the shared encoding.
    const second = Object.assign(connectClient(ctx.url, scene, editToken(scene, { sub: 'ned' })), { who: 'ned' })
    await waitFor('a second joiner to have the whole scene', () => second.text.length === big.length)
    joiners.push(second)
    // A change after the shared answer: a later joiner must see it too.
    writer.text.insert(0, 'FADE IN: ')
    await waitFor('the node to have the edit', () => joiners[0].text.toString().startsWith('FADE IN: '))
    const late = Object.assign(connectClient(ctx.url, scene, editToken(scene, { sub: 'max' })), { who: 'max' })
    const all = [...joiners, late]
    await waitFor('everyone to have the edit made after the first joins',
      () => all.every((c) => c.text.toString().startsWith('FADE IN: ') && c.text.length === big.length + 9))
    for (const c of all) assert.ok(sameContent(writer, c), `${c.who} holds other content`)
  }))

  test('(b) awareness: states propagate, late joiners see them, disconnects remove them', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    const scene = newSceneId('b')
    const a = connectClient(ctx.url, scene, editToken(scene, { sub: 'ann', name: 'Ann' }))
    const b = connectClient(ctx.url, scene, editToken(scene, { sub: 'ben', name: 'Ben' }))
    await Promise.all([waitSynced(a, 'A'), waitSynced(b, 'B')])

    const stateA = { user: { name: 'Ann', color: '#e91e63' }, cursor: { anchor: 3, head: 7 } }
    a.provider.awareness.setLocalState(stateA)
    const aId = a.doc.clientID
    await waitFor("B to see A's awareness state",
      () => JSON.stringify(b.provider.awareness.getStates().get(aId)) === JSON.stringify(stateA),
      { observe: () => [...b.provider.awareness.getStates()] })

    // C joins after A set its state: the server must hand it the room's current awareness
    // (A re-broadcasts only every 15 s, longer than this wait).
    const c = connectClient(ctx.url, scene, editToken(scene, { sub: 'cat', name: 'Cat' }))
    await waitSynced(c, 'C')
    await waitFor("late joiner C to see A's awareness state",
      () => JSON.stringify(c.provider.awareness.getStates().get(aId)) === JSON.stringify(stateA),
      { observe: () => [...c.provider.awareness.getStates()] })

    // Updates to the state propagate too.
    const moved = { ...stateA, cursor: { anchor: 9, head: 9 } }
    a.provider.awareness.setLocalState(moved)
    await waitFor("B and C to see A's cursor move",
      () => [b, c].every((x) => JSON.stringify(x.provider.awareness.getStates().get(aId)) === JSON.stringify(moved)))

    // A vanishes without saying goodbye (socket dropped, no awareness update sent): the
    // server must announce the removal. The 10 s wait is below y-protocols' 30 s outdated
    // timeout, so the removal can only come from the server.
    a.provider.shouldConnect = false
    a.provider.ws.terminate()
    await waitFor("B and C to see A's awareness removed after A's socket dropped",
      () => [b, c].every((x) => !x.provider.awareness.getStates().has(aId)),
      { observe: () => [b, c].map((x) => [...x.provider.awareness.getStates().keys()]) })

    // B leaves politely (provider.disconnect() sends a null state first): C sees B removed.
    const stateB = { user: { name: 'Ben', color: '#3f51b5' }, cursor: null }
    b.provider.awareness.setLocalState(stateB)
    const bId = b.doc.clientID
    await waitFor("C to see B's awareness state",
      () => JSON.stringify(c.provider.awareness.getStates().get(bId)) === JSON.stringify(stateB))
    b.provider.disconnect()
    await waitFor("C to see B's awareness removed after B disconnected",
      () => !c.provider.awareness.getStates().has(bId))
  }))

  test('(c) a client that edits offline resyncs on reconnect', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    const scene = newSceneId('c')
    const a = connectClient(ctx.url, scene, editToken(scene, { sub: 'ann' }))
    const b = connectClient(ctx.url, scene, editToken(scene, { sub: 'ben' }))
    await Promise.all([waitSynced(a, 'A'), waitSynced(b, 'B')])

    a.text.insert(0, 'shared start. ')
    await waitFor('B to receive the first edit', () => b.text.toString() === 'shared start. ')

    a.provider.disconnect()
    await waitFor('A to be disconnected', () => !a.provider.wsconnected && a.provider.ws === null)

    a.text.insert(a.text.length, 'offline by A. ')
    addBlock(a, 'action', 'A wrote this offline')
    b.text.insert(0, 'online by B. ')
    addBlock(b, 'dialogue', 'B wrote this meanwhile')
    await sleep(300)
    assert.ok(!b.text.toString().includes('offline by A'), 'B saw an edit A made while disconnected')

    a.provider.connect()
    await waitFor('A and B to converge with both edits',
      () => sameContent(a, b) &&
        a.text.toString().includes('offline by A. ') && a.text.toString().includes('online by B. '),
      { observe: () => ({ a: snapshot(a.doc), b: snapshot(b.doc) }) })
    const s = snapshot(b.doc)
    assert.equal(s.prosemirrorBlocks, 2)
    assert.match(JSON.stringify(s.prosemirror), /A wrote this offline/)
    assert.match(JSON.stringify(s.prosemirror), /B wrote this meanwhile/)
  }))

  test("(d) a late joiner gets the full stored state, and 'sync' fires only with content present", { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    const scene = newSceneId('d')
    const w = connectClient(ctx.url, scene, editToken(scene, { sub: 'writer' }))
    const watcher = connectClient(ctx.url, scene, editToken(scene, { sub: 'watcher' }))
    await Promise.all([waitSynced(w, 'writer'), waitSynced(watcher, 'watcher')])

    for (let i = 0; i < 50; i++) w.text.insert(w.text.length, `line ${i}\n`)
    addBlock(w, 'scene_heading', 'INT. KITCHEN - NIGHT')
    addBlock(w, 'action', 'Rain hammers the window.')
    addBlock(w, 'character', 'MARA')
    addBlock(w, 'dialogue', 'We are not alone.')
    const expected = snapshot(w.doc)
    // Once another client has everything, the server has it too.
    await waitFor('watcher to have the writer\'s content', () => sameContent(w, watcher))

    const late = connectClient(ctx.url, scene, editToken(scene, { sub: 'late' }), { connect: false })
    const seenAtSync = []
    late.provider.on('sync', (isSynced) => {
      if (isSynced) seenAtSync.push(snapshot(late.doc))
    })
    late.provider.connect()
    await waitFor("late joiner's 'sync' event", () => seenAtSync.length > 0,
      { observe: () => ({ synced: late.provider.synced, closeCodes: late.closes }) })
    assert.deepEqual(seenAtSync[0], expected, "content at the first 'sync' event differs from the stored state")
    assert.deepEqual(snapshot(late.doc), expected)
  }))

  test('(f) a viewer receives edits but its own edits are never applied', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    const scene = newSceneId('f')
    const editor = connectClient(ctx.url, scene, editToken(scene, { sub: 'ed' }))
    // The editor opens the scene first: a viewer may read a scene, not create one (4404).
    await waitSynced(editor, 'editor')
    const viewer = connectClient(ctx.url, scene, mintToken(ctx.secret, { sub: 'vi', scenes: { [scene]: 'view' } }))
    await waitSynced(viewer, 'viewer')

    editor.text.insert(0, 'editor before. ')
    await waitFor('viewer to receive the editor\'s first edit', () => viewer.text.toString().includes('editor before. '))

    viewer.text.insert(0, 'VIEWER EDIT. ')
    addBlock(viewer, 'action', 'VIEWER BLOCK')
    editor.text.insert(editor.text.length, 'editor after. ')
    addBlock(editor, 'action', 'editor block')
    await waitFor('viewer to receive the editor\'s later edits',
      () => viewer.text.toString().includes('editor after. ') && JSON.stringify(viewer.frag.toJSON()).includes('editor block'),
      { observe: () => ({ viewer: snapshot(viewer.doc), closeCodes: viewer.closes }) })
    await sleep(1_000)
    assert.ok(!editor.text.toString().includes('VIEWER EDIT'), 'editor received a viewer\'s text edit')
    assert.ok(!JSON.stringify(editor.frag.toJSON()).includes('VIEWER BLOCK'), 'editor received a viewer\'s block')

    // A viewer that reconnects offers its edits again in sync step 2: still not applied.
    viewer.provider.disconnect()
    viewer.provider.connect()
    await waitSynced(viewer, 'viewer (reconnected)')
    await sleep(500)

    const fresh = connectClient(ctx.url, scene, editToken(scene, { sub: 'fresh' }))
    await waitSynced(fresh, 'fresh client')
    const s = snapshot(fresh.doc)
    assert.ok(s.text.includes('editor before. ') && s.text.includes('editor after. '), `fresh client lacks the editor's edits: ${JSON.stringify(s)}`)
    assert.ok(!s.text.includes('VIEWER EDIT'), 'the server stored a viewer\'s text edit')
    assert.ok(!JSON.stringify(s.prosemirror).includes('VIEWER BLOCK'), 'the server stored a viewer\'s block')
    assert.ok(!editor.text.toString().includes('VIEWER EDIT'), 'editor received a viewer\'s edit after the viewer reconnected')
  }))

  describe('(g) rejected tokens get 44xx close codes', () => {
    /** Connect once, record the first close code, then destroy the provider. */
    async function firstCloseCode (sceneId, token) {
      const c = connectClient(ctx.url, sceneId, token)
      await waitFor('the server to close the connection', () => c.closes.length > 0,
        { observe: () => ({ wsconnected: c.provider.wsconnected, synced: c.provider.synced }) })
      const code = c.closes[0]
      const synced = c.provider.synced
      c.destroy()
      return { code, synced }
    }

    test('token for another scene -> 4403', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
      const scene = newSceneId('g')
      const other = newSceneId('g-other')
      const { code, synced } = await firstCloseCode(scene, editToken(other))
      assert.equal(code, 4403)
      assert.equal(synced, false, 'a client without access to the scene got synced')
    }))

    test('viewer token for another scene -> 4403', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
      const scene = newSceneId('g')
      const { code } = await firstCloseCode(scene, mintToken(ctx.secret, { scenes: { [newSceneId('g-other')]: 'view' } }))
      assert.equal(code, 4403)
    }))

    const bad = {
      'garbage token': () => 'not-a-jwt',
      'token signed with the wrong secret': (scene) => mintToken(randomBytes(32).toString('hex'), { scenes: { [scene]: 'edit' } }),
      'expired token': (scene) => mintToken(ctx.secret, { scenes: { [scene]: 'edit' }, expIn: -3600 }),
      'token for another audience': (scene) => mintToken(ctx.secret, { scenes: { [scene]: 'edit' }, aud: 'someone-else' }),
      'tampered claims': (scene) => {
        const [h, , s] = mintToken(ctx.secret, { scenes: { other: 'edit' } }).split('.')
        const forged = b64url({ sub: 'x', exp: Math.floor(Date.now() / 1000) + 3600, aud: 'troupe', scenes: { [scene]: 'edit' } })
        return `${h}.${forged}.${s}`
      }
    }
    for (const [label, make] of Object.entries(bad)) {
      test(`${label} -> 4401`, { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
        const scene = newSceneId('g')
        const { code, synced } = await firstCloseCode(scene, make(scene))
        assert.equal(code, 4401)
        assert.equal(synced, false, 'a client with a bad token got synced')
      }))
    }

    test('wildcard token is accepted', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
      const scene = newSceneId('g-star')
      const c = connectClient(ctx.url, scene, mintToken(ctx.secret, { scenes: { '*': 'edit' } }))
      await waitSynced(c, 'wildcard client')
      assert.deepEqual(c.closes, [])
    }))
  })
})

// ---------------------------------------------------------------------------------------
// Persistence across a crash: its own node, killed with SIGKILL and restarted
// ---------------------------------------------------------------------------------------

describe('troupe-node persistence', { timeout: 4 * TEST_TIMEOUT_MS }, () => {
  const ctx = suiteNode()

  test('(e) edits survive SIGKILL and a restart on the same data dir and port', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    const scene = newSceneId('e')
    const token = () => mintToken(ctx.secret, { scenes: { [scene]: 'edit' } })
    const a = connectClient(ctx.url, scene, token())
    const b = connectClient(ctx.url, scene, token())
    await Promise.all([waitSynced(a, 'A'), waitSynced(b, 'B')])

    for (let i = 0; i < 20; i++) {
      a.text.insert(a.text.length, `a${i} `)
      b.text.insert(0, `b${i} `)
    }
    addBlock(a, 'scene_heading', 'EXT. ROOFTOP - DAWN')
    addBlock(b, 'dialogue', 'Did you hear that?')
    await waitFor('A and B to converge', () => sameContent(a, b) && a.frag.length === 2)
    const expected = snapshot(a.doc)
    // The node commits within a few ms of receiving an update.
    await sleep(500)

    const port = ctx.node.port
    await ctx.node.kill()
    // Drop the old clients before the restart, so that their sync handshake cannot bring the
    // edits back: whatever the fresh client sees must come from the store.
    a.destroy()
    b.destroy()

    ctx.node = await startNode({ dataDir: ctx.dataDir, secret: ctx.secret, listen: `127.0.0.1:${port}` })
    assert.equal(ctx.node.port, port, 'restarted node listens on another port')

    const fresh = connectClient(ctx.url, scene, token())
    await waitSynced(fresh, 'fresh client after restart')
    assert.deepEqual(snapshot(fresh.doc), expected, 'state after SIGKILL + restart differs from the state before')
  }))
})
