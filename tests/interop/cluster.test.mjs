// Cluster interop test: stock yjs + y-websocket 1.5 clients keep every edit while an operator
// adds a 4th node to a running 3-node cluster.
//
// Run: TROUPE_BIN_DIR=target/debug node --test tests/interop/cluster.test.mjs
// (tests/run.sh builds the binaries and sets TROUPE_BIN_DIR.)
//
// The suite starts three `troupe-node` voters (TROUPE_PEERS on pre-picked ports, one shared
// data folder: each node keeps Raft state in raft-<id>/, the embedded SQLite store is one
// shared file; or TROUPE_TEST_DATABASE_URL's Postgres when set) and a `troupe-router`. Stock
// WebsocketProvider clients ask the router where their scene lives, connect there, and follow
// moves the way an app on y-websocket 1.5 should: on a 4301 close they point `provider.url`
// at the owner named in the close reason (or ask the router again when the reason is empty).
// While every client types, a 4th node is started and added with `troupectl add`.
//
// Debugging: TROUPE_TEST_LOG=info sets the processes' TROUPE_LOG, and TROUPE_TEST_LOG_DIR=dir
// writes each process's stderr to dir/<name>.log as well.
//
// Process start-up, tokens, stock clients and polling come from harness.mjs (shared with
// interop.test.mjs).

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { createServer } from 'node:net'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import {
  binPath, describeTail, destroyClients, mintToken, removeDir, requireBin, startProcess,
  stockClient, tempDir, waitFor as waitForWithin, withLogs
} from './harness.mjs'

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

const NODE_BIN = binPath('troupe-node')
const ROUTER_BIN = binPath('troupe-router')
const CTL_BIN = binPath('troupectl')
const WAIT_MS = 20_000 // default limit for wait-until helpers
const TEST_TIMEOUT_MS = 180_000
const LOG_FILTER = process.env.TROUPE_TEST_LOG ?? 'warn'
const LOG_DIR = process.env.TROUPE_TEST_LOG_DIR ?? null

const SCENES = 20
const CLIENTS_PER_SCENE = 2
const TYPE_INTERVAL_MS = 40
const TYPE_BEFORE_ADD_MS = 1_500
const TYPE_AFTER_ADD_MS = 3_000
const MAX_MOVE_GAP_MS = 1_000

// ---------------------------------------------------------------------------------------
// Processes (troupe-node, troupe-router)
// ---------------------------------------------------------------------------------------

// Each WebsocketProvider adds a process 'exit' listener in Node: 60 of them are expected here.
process.setMaxListeners(200)

/** Free loopback ports: all bound at once (so they differ), read, then released. */
async function freePorts (n) {
  const servers = []
  try {
    for (let i = 0; i < n; i++) {
      const server = createServer()
      await new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(0, '127.0.0.1', resolve)
      })
      servers.push(server)
    }
    return servers.map((s) => s.address().port)
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
  }
}

/** Environment for a child: ours without any inherited TROUPE_* setting, plus `extra`. */
function childEnv (extra) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('TROUPE_')) env[k] = v
  }
  return { ...env, TROUPE_LOG: LOG_FILTER, ...extra }
}

const NODE_RE = /^troupe-node listening on (127\.0\.0\.1:\d+) rpc (127\.0\.0\.1:\d+)\s*$/
const ROUTER_RE = /^troupe-router listening on (127\.0\.0\.1:\d+)\s*$/

/**
 * A cluster for the suite: nodes on pre-picked ports sharing one data folder, a router.
 * Started in before(), everything SIGKILLed and the folder removed in after().
 */
function suiteCluster () {
  const ctx = {
    secret: randomBytes(32).toString('hex'),
    dataDir: null,
    peers: '',
    addrs: new Map(), // id -> {listen, rpc}
    nodes: new Map(), // id -> proc (with .listen, .rpc, .url)
    router: null, // proc with .base (http://127.0.0.1:PORT)
    /** Every process ever started, for log tails. */
    procs: [],

    /** Start node `id` on its pre-picked addresses (retrying if a port is taken meanwhile). */
    async startNode (id) {
      const { listen, rpc } = ctx.addrs.get(id)
      const env = {
        TROUPE_NODE_ID: String(id),
        TROUPE_LISTEN: listen,
        TROUPE_RPC_LISTEN: rpc,
        TROUPE_PEERS: ctx.peers,
        TROUPE_DATA_DIR: ctx.dataDir,
        TROUPE_JWT_SECRET: ctx.secret
      }
      if (process.env.TROUPE_TEST_DATABASE_URL) env.TROUPE_DATABASE_URL = process.env.TROUPE_TEST_DATABASE_URL
      let last
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          const proc = await startProcess({ name: `node-${id}`, bin: NODE_BIN, env: childEnv(env), readyRe: NODE_RE, logDir: LOG_DIR })
          ctx.procs.push(proc)
          proc.id = id
          proc.listen = proc.match[1]
          proc.rpc = proc.match[2]
          proc.url = `ws://${proc.listen}`
          assert.equal(proc.listen, listen, `node ${id} listens elsewhere than asked`)
          assert.equal(proc.rpc, rpc, `node ${id} serves RPC elsewhere than asked`)
          ctx.nodes.set(id, proc)
          return proc
        } catch (err) {
          last = err
          await sleep(200)
        }
      }
      throw last
    },

    /** Run troupectl against the cluster (never blocks the event loop: clients keep typing). */
    ctl (args, { timeout = 30_000 } = {}) {
      const cluster = [...ctx.nodes.values()].filter((n) => !n.exited).map((n) => n.rpc).join(',')
      return new Promise((resolve) => {
        execFile(CTL_BIN, ['--cluster', cluster, ...args], { env: childEnv({}), timeout },
          (error, stdout, stderr) => resolve({ code: error ? (error.code ?? 1) : 0, stdout, stderr, error }))
      })
    },

    async ctlOk (args) {
      const r = await ctx.ctl(args)
      if (r.code !== 0) {
        throw new Error(`troupectl ${args.join(' ')} failed (${r.code}):\n${r.stdout}${r.stderr}`)
      }
      return r.stdout
    },

    /** The membership as `troupectl --json nodes` prints it. */
    async membership () {
      return JSON.parse(await ctx.ctlOk(['--json', 'nodes']))
    },

    /** `GET /v1/route/{scene}` on the router: {scene, node, url, epoch}. */
    async route (scene) {
      const res = await fetch(`${ctx.router.base}/v1/route/${encodeURIComponent(scene)}`)
      const body = await res.text()
      if (res.status !== 200) throw new Error(`route ${scene}: HTTP ${res.status} ${body}`)
      return JSON.parse(body)
    },

    /** Log tails of every process, for failure messages. */
    logTails (n = 30) {
      return ctx.procs.map((p) => describeTail(p, n)).join('\n')
    }
  }

  before(async () => {
    requireBin(ROUTER_BIN)
    if (LOG_DIR) mkdirSync(LOG_DIR, { recursive: true })
    ctx.dataDir = tempDir('troupe-interop-cluster-')
    // Nodes 1-3 are the voters; node 4 gets its addresses now too, it is started later.
    const ports = await freePorts(8)
    for (let id = 1; id <= 4; id++) {
      ctx.addrs.set(id, { listen: `127.0.0.1:${ports[2 * id - 2]}`, rpc: `127.0.0.1:${ports[2 * id - 1]}` })
    }
    ctx.peers = [1, 2, 3].map((id) => `${id}=${ctx.addrs.get(id).rpc}`).join(',')
    await Promise.all([1, 2, 3].map((id) => ctx.startNode(id)))
    await waitFor('3 active nodes in the membership', async () => {
      const m = await ctx.membership()
      return Object.values(m.state.nodes).filter((n) => n.state === 'active').length === 3
    }, { timeout: 30_000, interval: 200 })

    const router = await startProcess({
      name: 'router',
      bin: ROUTER_BIN,
      env: childEnv({ TROUPE_LISTEN: '127.0.0.1:0', TROUPE_CLUSTER: [1, 2, 3].map((id) => ctx.addrs.get(id).rpc).join(',') }),
      readyRe: ROUTER_RE,
      logDir: LOG_DIR
    })
    ctx.procs.push(router)
    router.base = `http://${router.match[1]}`
    ctx.router = router
    // The router answers 503 until it has heard from the cluster.
    await waitFor('the router to know the membership', async () => {
      const r = await ctx.route('warmup')
      return [1, 2, 3].includes(r.node)
    }, { timeout: 15_000, interval: 100 })
  }, { timeout: 120_000 })

  after(async () => {
    // Clients first, so that no provider reconnects while the processes die.
    destroyClients()
    await Promise.all(ctx.procs.map((p) => p.kill()))
    removeDir(ctx.dataDir)
  })

  return ctx
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/** The harness's waitFor with this file's longer default limit (WAIT_MS). */
const waitFor = (what, pred, opts = {}) => waitForWithin(what, pred, { timeout: WAIT_MS, ...opts })

const sceneUrl = (base, scene, token) => `${base}/ws/scenes/${encodeURIComponent(scene)}?token=${token}`

const median = (xs) => {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

const round = (x) => Math.round(x * 10) / 10

/**
 * A stock y-websocket client (see the harness) connected to `base` (an owner's ws:// URL)
 * that follows moves as an app on y-websocket 1.5 should: on 4301 it points `provider.url`
 * at the owner named in the close reason, or asks the router again when the reason is empty.
 */
function connectFollowing (ctx, { scene, token, base, label }) {
  const c = stockClient(`${base}/ws/scenes`, scene, token)
  const { doc, provider } = c
  Object.assign(c, {
    label,
    scene,
    token,
    text: doc.getText('t'),
    base, // the owner this client currently connects to
    bases: [base], // every owner it was pointed at
    closes: [], // {at, code, reason}
    moves: [], // {closedAt, syncedAt, gapMs, from, to, closes}
    pendingMove: null,
    typed: [], // every token this client typed, in order
    typedAt: [], // performance.now() of each typed token
    setBase (next) {
      if (next === c.base) return
      c.base = next
      c.bases.push(next)
      provider.url = sceneUrl(next, scene, token)
    }
  })
  provider.on('connection-close', (event) => {
    const at = performance.now()
    const code = event ? event.code : null
    const reason = event && typeof event.reason === 'string' ? event.reason : ''
    c.closes.push({ at, code, reason })
    if (code !== 4301 || c.destroyed) return
    if (!c.pendingMove) c.pendingMove = { closedAt: at, from: c.base, closes: 0 }
    c.pendingMove.closes++
    if (reason) {
      c.setBase(reason)
    } else {
      // No owner named: ask the router (y-websocket retries the old URL meanwhile, if slower).
      ctx.route(scene).then((r) => { if (!c.destroyed) c.setBase(r.url) }, () => {})
    }
  })
  provider.on('sync', (isSynced) => {
    if (!isSynced || !c.pendingMove) return
    const syncedAt = performance.now()
    c.moves.push({ ...c.pendingMove, syncedAt, gapMs: syncedAt - c.pendingMove.closedAt, to: c.base })
    c.pendingMove = null
  })
  return c
}

const isSynced = (c) => c.provider.wsconnected && c.provider.synced

/** Tokens in a scene's text, counted: every token is `s<i>c<j>n<k>;`. */
function countTokens (text) {
  const counts = new Map()
  const parts = text.split(';')
  const rest = parts.pop() // after the last ';': must be empty
  for (const p of parts) counts.set(p + ';', (counts.get(p + ';') ?? 0) + 1)
  return { counts, rest }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

describe('troupe cluster with stock y-websocket clients', { timeout: 2 * TEST_TIMEOUT_MS + 180_000 }, () => {
  const ctx = suiteCluster()

  test('adding a 4th node while everyone types loses no edit, and moved editors are back within 1 s', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    const run = randomBytes(3).toString('hex')
    const scenes = Array.from({ length: SCENES }, (_, i) => ({
      i,
      id: `cluster-${run}-${i}`,
      token: null,
      before: null, // route before the add
      after: null, // route after the add
      clients: []
    }))

    // 1. Every scene's owner, from the router; two stock clients per scene, connected there.
    for (const s of scenes) {
      s.token = mintToken(ctx.secret, { scenes: { [s.id]: 'edit' } })
      s.before = await ctx.route(s.id)
      assert.ok([1, 2, 3].includes(s.before.node), `route names an unknown node: ${JSON.stringify(s.before)}`)
      assert.equal(s.before.url, ctx.nodes.get(s.before.node).url, `route URL of ${s.id}`)
      for (let j = 0; j < CLIENTS_PER_SCENE; j++) {
        s.clients.push(connectFollowing(ctx, { scene: s.id, token: s.token, base: s.before.url, label: `s${s.i}c${j}` }))
      }
    }
    const all = scenes.flatMap((s) => s.clients)
    await waitFor('every client to sync', () => all.every(isSynced), {
      observe: () => all.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, closes: c.closes }))
    })
    const epochBefore = scenes[0].before.epoch

    // 2. Everyone types a unique token every ~40 ms.
    let k = 0
    const typer = setInterval(() => {
      k++
      for (const s of scenes) {
        s.clients.forEach((c, j) => {
          const token = `s${s.i}c${j}n${k};`
          c.typed.push(token)
          c.typedAt.push(performance.now())
          c.text.insert(c.text.length, token)
        })
      }
    }, TYPE_INTERVAL_MS)
    let addStartedAt, addDoneAt, addOut
    try {
      await sleep(TYPE_BEFORE_ADD_MS)

      // 3. The operator starts node 4 (not in TROUPE_PEERS: it waits) and adds it.
      addStartedAt = performance.now()
      const node4 = await ctx.startNode(4)
      addOut = await ctx.ctlOk(['add', node4.rpc])
      addDoneAt = performance.now()
      assert.match(addOut, /node 4 added/, `troupectl add printed: ${addOut}`)

      await sleep(TYPE_AFTER_ADD_MS)
    } finally {
      clearInterval(typer)
    }
    const typedTotal = all.reduce((n, c) => n + c.typed.length, 0)

    // The membership names node 4 active; the router follows it.
    const membership = await waitFor('node 4 to be active', async () => {
      const m = await ctx.membership()
      return m.state.nodes['4']?.state === 'active' ? m : null
    }, { timeout: 10_000, interval: 100 })
    const node4 = ctx.nodes.get(4)
    assert.equal(membership.state.nodes['4'].url, node4.url, 'node 4 registered with another URL')
    const epochAfter = membership.state.epoch
    assert.ok(epochAfter > epochBefore, `epoch did not move: ${epochBefore} -> ${epochAfter}`)
    await waitFor(`the router to route at epoch ${epochAfter}`, async () => {
      for (const s of scenes) {
        s.after = await ctx.route(s.id)
        if (s.after.epoch < epochAfter) return false
      }
      return true
    }, { timeout: 10_000, interval: 100, observe: () => scenes.map((s) => s.after) })

    // 4. Everyone is connected and synced again, and both clients of a scene agree.
    await waitFor('every client to be synced again and each scene\'s clients to agree', () =>
      all.every(isSynced) &&
      scenes.every((s) => s.clients.every((c) => c.text.toString() === s.clients[0].text.toString())),
    {
      timeout: 20_000,
      interval: 50,
      observe: () => ({
        unsynced: all.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, base: c.base, closes: c.closes.slice(-5) })),
        disagreeing: scenes.filter((s) => s.clients.some((c) => c.text.toString() !== s.clients[0].text.toString()))
          .map((s) => ({ scene: s.id, lengths: s.clients.map((c) => c.text.length) }))
      })
    })

    // (a) Every token typed by every client is in its scene's text, exactly once, and nothing else is.
    for (const s of scenes) {
      const text = s.clients[0].text.toString()
      const { counts, rest } = countTokens(text)
      assert.equal(rest, '', `${s.id}: text ends with a partial token`)
      const typed = new Set(s.clients.flatMap((c) => c.typed))
      const lost = [...typed].filter((t) => !counts.has(t))
      const doubled = [...counts].filter(([, n]) => n !== 1).map(([t, n]) => `${t}x${n}`)
      const foreign = [...counts.keys()].filter((t) => !typed.has(t))
      assert.deepEqual(lost, [], `${s.id} (owner ${s.before.node} -> ${s.after.node}) lost ${lost.length} of ${typed.size} edits`)
      assert.deepEqual(doubled, [], `${s.id}: edits present more than once`)
      assert.deepEqual(foreign, [], `${s.id}: text holds tokens nobody typed`)
    }

    // (b) A fresh stock client per scene, connected via the router's current route, sees the same text.
    const fresh = scenes.map((s) => connectFollowing(ctx, { scene: s.id, token: s.token, base: s.after.url, label: `fresh-s${s.i}` }))
    await waitFor('every fresh client to sync', () => fresh.every(isSynced), {
      observe: () => fresh.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, base: c.base, closes: c.closes }))
    })
    scenes.forEach((s, i) => {
      assert.equal(fresh[i].text.toString(), s.clients[0].text.toString(), `${s.id}: a fresh client sees other text than the editors`)
      assert.deepEqual(fresh[i].closes, [], `${s.id}: the fresh client was closed (${JSON.stringify(fresh[i].closes)})`)
    })

    // (c) Scenes routed to node 4 moved there; every other scene kept its owner.
    const moved = scenes.filter((s) => s.after.node === 4)
    const kept = scenes.filter((s) => s.after.node !== 4)
    assert.ok(moved.length > 0, `${SCENES} scenes and not one moved to node 4`)
    for (const s of moved) {
      assert.equal(s.after.url, node4.url, `${s.id}: route to node 4 names another URL`)
      assert.equal(fresh[s.i].base, node4.url, `${s.id}: fresh client is not on node 4`)
      for (const c of s.clients) {
        assert.equal(c.base, node4.url, `${c.label} (${s.id}) did not follow its scene to node 4: ${JSON.stringify(c.bases)}`)
        assert.ok(c.moves.length >= 1, `${c.label} (${s.id}) moved to node 4 without a 4301 close: ${JSON.stringify(c.closes)}`)
      }
    }
    for (const s of kept) {
      assert.equal(s.after.node, s.before.node, `${s.id} moved between old nodes: ${s.before.node} -> ${s.after.node}`)
      for (const c of s.clients) {
        assert.equal(c.base, s.before.url, `${c.label} (${s.id}) left its unmoved scene's owner: ${JSON.stringify(c.bases)}`)
        assert.deepEqual(c.closes, [], `${c.label} (${s.id}) was disconnected although its scene did not move`)
      }
    }

    // (d) Every moved editor was back (connected and synced on the new owner) within 1 s.
    const movedClients = moved.flatMap((s) => s.clients)
    const gaps = movedClients.flatMap((c) => c.moves.map((m) => m.gapMs))
    const worst = gaps.length ? Math.max(...gaps) : NaN
    const firstClose = Math.min(...movedClients.map((c) => c.moves[0].closedAt))
    // Edits typed while an editor was away: they reached node 4 only in the sync handshake.
    const typedAway = movedClients.reduce((n, c) => n + c.moves.reduce((m, mv) =>
      m + c.typedAt.filter((t) => t >= mv.closedAt && t <= mv.syncedAt).length, 0), 0)
    console.log(
      `add node 4: ${moved.length} of ${SCENES} scenes moved (${movedClients.length} editors), ` +
      `epoch ${epochBefore} -> ${epochAfter}; ${typedTotal} edits typed; ` +
      `node 4 start + troupectl add took ${round(addDoneAt - addStartedAt)} ms, ` +
      `first 4301 ${round(firstClose - addStartedAt)} ms after the start of the add; ` +
      `move gaps (4301 close -> synced on node 4): median ${round(median(gaps))} ms, max ${round(worst)} ms ` +
      `over ${gaps.length} moves; ${typedAway} edits typed while away; 4301 closes per move: ${JSON.stringify(movedClients.flatMap((c) => c.moves.map((m) => m.closes)))}`)
    for (const c of movedClients) {
      assert.equal(c.pendingMove, null, `${c.label}: a move never finished`)
      assert.deepEqual(c.moves.map((m) => m.to), c.moves.map(() => node4.url), `${c.label}: a move ended elsewhere than node 4`)
    }
    assert.ok(typedAway > 0, 'no edit was typed while a moved editor was away: the test did not exercise the resend')
    assert.ok(worst < MAX_MOVE_GAP_MS,
      `an editor took ${round(worst)} ms to be synced on its new owner (limit ${MAX_MOVE_GAP_MS} ms): ` +
      JSON.stringify(movedClients.map((c) => ({ c: c.label, gaps: c.moves.map((m) => round(m.gapMs)), closes: c.closes.map((x) => x.code) }))))

    for (const c of fresh) c.destroy()
  }))
})
