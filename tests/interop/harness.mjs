// Shared helpers for the interop tests (interop.test.mjs, cluster.test.mjs, failover.test.mjs,
// p1.test.mjs): starting and killing troupe processes, a 3-node cluster + router per suite,
// minting tokens, stock y-websocket clients (also ones that follow their scene across nodes),
// polling.
//
// Not a test file (no `.test.mjs`): tests/run.sh and `node --test` only run the files that
// import it. `node --test` runs each test file in its own process, so the module-level sets
// below (live processes, live clients) belong to one test file at a time.

import { after, before } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, execFileSync, spawn } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

// ---------------------------------------------------------------------------------------
// Binaries and temp dirs
// ---------------------------------------------------------------------------------------

/** Where the troupe binaries are: TROUPE_BIN_DIR (tests/run.sh sets it), else target/debug. */
export const BIN_DIR = resolve(process.env.TROUPE_BIN_DIR ?? 'target/debug')

/** A debug build may run migrations on first start, hence the generous limit. */
export const STARTUP_TIMEOUT_MS = 30_000

/** Path of a troupe binary in BIN_DIR. */
export const binPath = (name) => join(BIN_DIR, name)

/** Throw a message that says how to fix it when `bin` was not built, instead of ENOENT. */
export function requireBin (bin) {
  if (!existsSync(bin)) {
    throw new Error(`${bin} does not exist: build it (cargo build --workspace --bins) or set TROUPE_BIN_DIR`)
  }
}

/** A fresh data dir under the OS temp dir, so that no run sees another run's state. */
export const tempDir = (prefix) => mkdtempSync(join(tmpdir(), prefix))

/** Remove a dir made by tempDir; no-op for null (before() failed before making it). */
export function removeDir (dir) {
  if (dir) rmSync(dir, { recursive: true, force: true })
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/** Every process started here and not yet exited, so that the exit hook can kill stragglers. */
const liveProcs = new Set()

// after() hooks stop processes on the normal path; this catches the rest (a crash, a
// cancelled run), so that no troupe process outlives the test file.
process.on('exit', () => {
  for (const child of liveProcs) {
    try { child.kill('SIGKILL') } catch { /* already gone */ }
  }
})

/** Resolves true once `child` has exited, false if it is still running after `ms`. */
function waitExit (child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true)
  return new Promise((resolve) => {
    const t = setTimeout(() => { child.off('exit', onExit); resolve(false) }, ms)
    const onExit = () => { clearTimeout(t); resolve(true) }
    child.once('exit', onExit)
  })
}

/**
 * Spawn `bin` and wait for the first stdout line matching `readyRe` (the processes print
 * their bound addresses there, which is how tests learn ports picked with :0). Kills the
 * process if it is not ready within STARTUP_TIMEOUT_MS.
 * @param {{name: string, bin: string, env: Record<string, string>, readyRe: RegExp,
 *   readyDesc?: string, tailLines?: number, logDir?: string|null}} o
 *   readyDesc: what the timeout error says was missing; tailLines: stderr lines in startup
 *   errors; logDir: also append stderr to logDir/<name>.log.
 * @returns the process handle; `match` holds the ready line's match.
 */
export async function startProcess ({ name, bin, env, readyRe, readyDesc = `line matching ${readyRe}`, tailLines = 40, logDir = null }) {
  requireBin(bin)
  const child = spawn(bin, [], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  liveProcs.add(child)
  const logFile = logDir ? createWriteStream(join(logDir, `${name}.log`), { flags: 'a' }) : null

  const proc = {
    name,
    child,
    match: null, // the ready line's match
    stdoutLines: [],
    stderr: '',
    exited: null, // {code, signal} once the process has exited
    /** Last lines of the process's stderr, for failure messages. */
    logTail (n = tailLines) {
      const lines = proc.stderr.split('\n')
      return lines.slice(Math.max(0, lines.length - n)).join('\n')
    },
    /** SIGTERM, then SIGKILL after `graceMs`. Resolves once the process has exited. */
    async stop (graceMs = 5_000) {
      if (proc.exited) return
      child.kill('SIGTERM')
      if (!(await waitExit(child, graceMs))) {
        child.kill('SIGKILL')
        await waitExit(child, 5_000)
      }
    },
    /** SIGKILL at once (crash). Resolves once the process has exited. */
    async kill () {
      if (proc.exited) return
      child.kill('SIGKILL')
      await waitExit(child, 5_000)
    }
  }

  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk) => {
    proc.stderr += chunk
    if (proc.stderr.length > 1_000_000) proc.stderr = proc.stderr.slice(-500_000)
    if (logFile) logFile.write(chunk)
  })
  child.on('exit', (code, signal) => {
    proc.exited = { code, signal }
    liveProcs.delete(child)
    if (logFile) logFile.end(`--- ${name} exited (code ${code}, signal ${signal})\n`)
  })

  const ready = new Promise((resolve, reject) => {
    let buf = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk) => {
      buf += chunk
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        proc.stdoutLines.push(line)
        const m = readyRe.exec(line)
        if (m && !proc.match) {
          proc.match = m
          resolve()
        }
      }
    })
    child.on('exit', (code, signal) => reject(new Error(
      `${name} exited before it was ready (code ${code}, signal ${signal})\n` +
      `stdout: ${JSON.stringify(proc.stdoutLines)}\n--- stderr ---\n${proc.logTail()}`)))
    child.on('error', reject)
  })
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(
      `${name} printed no ${readyDesc} within ${STARTUP_TIMEOUT_MS} ms\n` +
      `stdout: ${JSON.stringify(proc.stdoutLines)}\n--- stderr ---\n${proc.logTail()}`)), STARTUP_TIMEOUT_MS)
  })
  try {
    await Promise.race([ready, timeout])
  } catch (err) {
    await proc.kill()
    throw err
  } finally {
    clearTimeout(timer)
  }
  return proc
}

/** A process's state and stderr tail under a header, for appending to a failed test's error. */
export function describeTail (proc, n) {
  const state = proc.exited ? `exited ${JSON.stringify(proc.exited)}` : 'running'
  return `--- ${proc.name} (${state}) stderr tail ---\n${proc.logTail(n)}`
}

/**
 * Wrap a test body so that a failure carries `ctx.logTails()` (the servers' stderr): a
 * timeout alone rarely says why the server misbehaved. Nothing is added when it returns ''.
 */
export function withLogs (ctx, fn) {
  return async (t) => {
    try {
      await fn(t)
    } catch (err) {
      if (err && typeof err === 'object') {
        const tails = ctx.logTails()
        if (tails) {
          try { err.message += `\n${tails}` } catch { /* message not writable */ }
        }
      }
      throw err
    }
  }
}

// ---------------------------------------------------------------------------------------
// Tokens (HS256 JWTs, minted like the app's backend would)
// ---------------------------------------------------------------------------------------

/** base64url of a JSON value: a JWT segment (also used to forge claims in tests). */
export const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url')

function signJwt (claims, secret) {
  const data = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`
  const sig = createHmac('sha256', secret).update(data).digest('base64url')
  return `${data}.${sig}`
}

/**
 * A token as the app's backend would mint it, signed with node:crypto so that the tests
 * need no JWT library; `expIn`/`aud` let tests make expired or foreign tokens.
 * @param {string} secret
 * @param {{sub?: string, name?: string, scenes: Record<string, 'edit'|'view'>, expIn?: number, aud?: string}} o
 */
export function mintToken (secret, { sub = 'user-' + randomBytes(3).toString('hex'), name, scenes, expIn = 3600, aud = 'troupe' }) {
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + expIn, aud, scenes }
  if (name !== undefined) claims.name = name
  return signJwt(claims, secret)
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/** Clients made by stockClient and not yet destroyed; see destroyClients. */
const liveClients = new Set()

// Each WebsocketProvider adds a process 'exit' listener in Node: a suite may hold 60+ of them.
process.setMaxListeners(200)

/**
 * A stock y-websocket client, exactly as a browser would build it: a Y.Doc and a
 * WebsocketProvider for `url`/`sceneId` with the token as a query parameter.
 * `disableBc: true` because Node has a global BroadcastChannel: without it, providers in this
 * one process would sync with each other locally, bypassing the servers under test.
 * `maxBackoffTime` is the provider's own option (y-websocket 1.5: cap of its reconnect
 * backoff, 2500 ms by default); undefined keeps the default.
 * @returns {{doc: Y.Doc, provider: WebsocketProvider, destroyed: boolean, destroy(): void}}
 */
export function stockClient (url, sceneId, token, { connect = true, maxBackoffTime } = {}) {
  const doc = new Y.Doc()
  const opts = {
    params: { token },
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    connect
  }
  if (maxBackoffTime !== undefined) opts.maxBackoffTime = maxBackoffTime
  const provider = new WebsocketProvider(url, sceneId, doc, opts)
  const client = {
    doc,
    provider,
    destroyed: false,
    destroy () {
      if (client.destroyed) return
      client.destroyed = true
      provider.destroy()
      doc.destroy()
      liveClients.delete(client)
    }
  }
  liveClients.add(client)
  return client
}

/** Destroy every live client, so that no provider keeps reconnecting into the next test. */
export function destroyClients () {
  for (const c of liveClients) c.destroy()
  liveClients.clear()
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/**
 * Poll `pred` until it returns truthy (and return that); fail with `what` (and the last
 * observed value and error), so that a timeout says what was awaited and what was seen.
 */
export async function waitFor (what, pred, { timeout = 10_000, interval = 20, observe } = {}) {
  const deadline = Date.now() + timeout
  for (;;) {
    let ok = false
    let err = null
    try { ok = await pred() } catch (e) { err = e }
    if (ok) return ok
    if (Date.now() > deadline) {
      let detail = ''
      if (observe) {
        try { detail = `\nlast observed: ${JSON.stringify(observe(), null, 1)}` } catch { /* ignore */ }
      }
      if (err) detail += `\nlast error: ${err.stack || err}`
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${detail}`)
    }
    await sleep(interval)
  }
}

// ---------------------------------------------------------------------------------------
// Clusters (cluster.test.mjs, failover.test.mjs): troupe-node voters + a troupe-router
// ---------------------------------------------------------------------------------------

/** TROUPE_TEST_LOG sets the processes' TROUPE_LOG (default warn). */
const CLUSTER_LOG_FILTER = process.env.TROUPE_TEST_LOG ?? 'warn'
/** TROUPE_TEST_LOG_DIR=dir also writes each process's stderr to dir/<name>.log. */
export const CLUSTER_LOG_DIR = process.env.TROUPE_TEST_LOG_DIR ?? null

const NODE_RE = /^troupe-node listening on (127\.0\.0\.1:\d+) rpc (127\.0\.0\.1:\d+)\s*$/
const ROUTER_RE = /^troupe-router listening on (127\.0\.0\.1:\d+)\s*$/

/** Free loopback ports: all bound at once (so they differ), read, then released. */
export async function freePorts (n) {
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

/**
 * Certificates for a test cluster's internal port, made with `troupectl certs` in `dir`:
 * `certs.node(id)`, `certs.router` and `certs.admin` are the TROUPE_INTERNAL_* settings
 * that present each one (the nodes refuse peers without them).
 */
export function clusterCerts (ctlBin, dir, nodeIds) {
  const ctl = (...args) => execFileSync(ctlBin, ['certs', '--dir', dir, ...args], { env: childEnv({}), stdio: ['ignore', 'ignore', 'pipe'] })
  const files = (stem) => ({
    TROUPE_INTERNAL_CA: join(dir, 'ca.crt'),
    TROUPE_INTERNAL_CERT: join(dir, `${stem}.crt`),
    TROUPE_INTERNAL_KEY: join(dir, `${stem}.key`)
  })
  ctl('init')
  for (const id of nodeIds) ctl('node', '--id', String(id), '--days', '1')
  ctl('client', '--name', 'router', '--role', 'reader', '--days', '1')
  ctl('client', '--name', 'tests', '--role', 'admin', '--days', '1')
  return { node: (id) => files(`node-${id}`), router: files('reader-router'), admin: files('admin-tests') }
}

/** Environment for a child: ours without any inherited TROUPE_* setting, plus `extra`. */
export function childEnv (extra) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('TROUPE_')) env[k] = v
  }
  return { ...env, TROUPE_LOG: CLUSTER_LOG_FILTER, ...extra }
}

/**
 * A cluster for the suite: `voters` nodes (TROUPE_PEERS on pre-picked ports, one shared
 * data folder: each node keeps Raft state in raft-<id>/, the embedded SQLite store is one
 * shared file; or TROUPE_TEST_DATABASE_URL's Postgres when set) and a router. Nodes
 * voters+1 … voters+spares get their addresses now and are started later by the test
 * (`ctx.startNode(id)`). Started in before(), everything SIGKILLed and the folder removed in
 * after(). `nodeEnv` adds settings to every node's environment (e.g. TROUPE_P1_WRITE_DELAY).
 * @param {{voters?: number, spares?: number, prefix?: string, nodeEnv?: Record<string, string>}} o
 */
export function suiteCluster ({ voters = 3, spares = 0, prefix = 'troupe-interop-cluster-', nodeEnv = {} } = {}) {
  const nodeBin = binPath('troupe-node')
  const routerBin = binPath('troupe-router')
  const ctlBin = binPath('troupectl')
  const voterIds = Array.from({ length: voters }, (_, i) => i + 1)
  const ctx = {
    secret: randomBytes(32).toString('hex'),
    dataDir: null,
    certs: null,
    peers: '',
    voterIds,
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
        TROUPE_JWT_SECRET: ctx.secret,
        ...nodeEnv,
        ...ctx.certs.node(id)
      }
      if (process.env.TROUPE_TEST_DATABASE_URL) env.TROUPE_DATABASE_URL = process.env.TROUPE_TEST_DATABASE_URL
      let last
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          const proc = await startProcess({ name: `node-${id}`, bin: nodeBin, env: childEnv(env), readyRe: NODE_RE, logDir: CLUSTER_LOG_DIR })
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

    /** Run troupectl against the live nodes (never blocks the event loop: clients keep typing). */
    ctl (args, { timeout = 30_000 } = {}) {
      const cluster = [...ctx.nodes.values()].filter((n) => !n.exited).map((n) => n.rpc).join(',')
      return new Promise((resolve) => {
        execFile(ctlBin, ['--cluster', cluster, ...args], { env: childEnv(ctx.certs.admin), timeout },
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

    /** The membership as `troupectl --json nodes` prints it: {version, state, voters, learners, leader}. */
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
    requireBin(routerBin)
    if (CLUSTER_LOG_DIR) mkdirSync(CLUSTER_LOG_DIR, { recursive: true })
    ctx.dataDir = tempDir(prefix)
    const total = voters + spares
    ctx.certs = clusterCerts(ctlBin, join(ctx.dataDir, 'certs'), Array.from({ length: total }, (_, i) => i + 1))
    const ports = await freePorts(2 * total)
    for (let id = 1; id <= total; id++) {
      ctx.addrs.set(id, { listen: `127.0.0.1:${ports[2 * id - 2]}`, rpc: `127.0.0.1:${ports[2 * id - 1]}` })
    }
    ctx.peers = voterIds.map((id) => `${id}=${ctx.addrs.get(id).rpc}`).join(',')
    await Promise.all(voterIds.map((id) => ctx.startNode(id)))
    await waitFor(`${voters} active nodes in the membership`, async () => {
      const m = await ctx.membership()
      return Object.values(m.state.nodes).filter((n) => n.state === 'active').length === voters
    }, { timeout: 30_000, interval: 200 })

    const router = await startProcess({
      name: 'router',
      bin: routerBin,
      env: childEnv({ TROUPE_LISTEN: '127.0.0.1:0', TROUPE_CLUSTER: voterIds.map((id) => ctx.addrs.get(id).rpc).join(','), TROUPE_JWT_SECRET: ctx.secret, ...ctx.certs.router }),
      readyRe: ROUTER_RE,
      logDir: CLUSTER_LOG_DIR
    })
    ctx.procs.push(router)
    router.base = `http://${router.match[1]}`
    ctx.router = router
    // The router answers 503 until it has heard from the cluster.
    await waitFor('the router to know the membership', async () => {
      const r = await ctx.route('warmup')
      return voterIds.includes(r.node)
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

/** A scene's WebSocket URL on the node at `base` (ws://host:port), as y-websocket builds it. */
export const sceneUrl = (base, scene, token) => `${base}/ws/scenes/${encodeURIComponent(scene)}?token=${token}`

export const median = (xs) => {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Rounded to 0.1 (milliseconds in reports). */
export const round = (x) => Math.round(x * 10) / 10

/**
 * A stock y-websocket client (see stockClient) connected to `base` (an owner's ws:// URL)
 * that follows moves as an app on y-websocket 1.5 should: on 4301 it points `provider.url`
 * at the owner named in the close reason, or asks the router again when the reason is empty.
 * With `reresolve`, any other close (the node died, refused, or was never reachable) and
 * any 'connection-error' also ask the router and point `provider.url` at the owner it names:
 * y-websocket 1.5 reconnects to `provider.url` by itself after its backoff (100 ms doubling,
 * capped by `maxBackoffTime`), so the next attempt goes wherever the router now routes.
 * Records closes, 4301 moves (`moves`: 4301 close -> synced) and every base it was pointed at.
 */
export function connectFollowing (ctx, { scene, token, base, label, reresolve = false, maxBackoffTime }) {
  const c = stockClient(`${base}/ws/scenes`, scene, token, { maxBackoffTime })
  const { doc, provider } = c
  Object.assign(c, {
    label,
    scene,
    token,
    text: doc.getText('t'),
    base, // the owner this client currently connects to
    bases: [base], // every owner it was pointed at
    basedAt: [performance.now()], // when it was pointed at each of them (performance.now())
    closes: [], // {at, code, reason}
    errors: 0, // 'connection-error' events
    lookups: 0, // router look-ups made after a close or an error
    moves: [], // {closedAt, syncedAt, gapMs, from, to, closes}
    pendingMove: null,
    resolving: false, // a router look-up is under way
    typed: [], // every token this client typed, in order
    typedAt: [], // performance.now() of each typed token
    setBase (next) {
      if (next === c.base) return
      c.base = next
      c.bases.push(next)
      c.basedAt.push(performance.now())
      provider.url = sceneUrl(next, scene, token)
    },
    /**
     * Ask the router where the scene lives now and point the provider there. While the
     * router still names the node that just failed (it has not heard of the failure yet),
     * ask again every 100 ms for up to 3 s rather than wait for the next close.
     */
    reroute () {
      if (c.resolving || c.destroyed) return
      c.resolving = true
      const failed = c.base
      const until = performance.now() + 3000
      const ask = async () => {
        while (!c.destroyed) {
          c.lookups++
          const r = await ctx.route(scene).catch(() => null)
          if (r && (r.url !== failed || performance.now() > until)) {
            c.setBase(r.url)
            return
          }
          if (performance.now() > until) return
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
      }
      ask().finally(() => { c.resolving = false })
    }
  })
  provider.on('connection-error', () => {
    c.errors++
    if (reresolve) c.reroute()
  })
  provider.on('connection-close', (event) => {
    const at = performance.now()
    const code = event ? event.code : null
    const reason = event && typeof event.reason === 'string' ? event.reason : ''
    c.closes.push({ at, code, reason })
    if (c.destroyed) return
    if (code !== 4301) {
      if (reresolve) c.reroute()
      return
    }
    if (!c.pendingMove) c.pendingMove = { closedAt: at, from: c.base, closes: 0 }
    c.pendingMove.closes++
    if (reason) {
      c.setBase(reason)
    } else {
      // No owner named: ask the router (y-websocket retries the old URL meanwhile, if slower).
      c.reroute()
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

/** Connected and synced (the server's state is loaded). */
export const isSynced = (c) => c.provider.wsconnected && c.provider.synced

/** Tokens in a scene's text, counted: every token ends with ';' (e.g. `s<i>c<j>n<k>;`). */
export function countTokens (text) {
  const counts = new Map()
  const parts = text.split(';')
  const rest = parts.pop() // after the last ';': must be empty
  for (const p of parts) counts.set(p + ';', (counts.get(p + ';') ?? 0) + 1)
  return { counts, rest }
}

/**
 * Assert that `text` holds every token in `typed` exactly once and nothing else. `what`
 * names the scene (and whatever helps) in the failure messages.
 */
export function assertEveryTokenOnce (what, text, typed) {
  const { counts, rest } = countTokens(text)
  assert.equal(rest, '', `${what}: text ends with a partial token`)
  const typedSet = new Set(typed)
  const lost = [...typedSet].filter((t) => !counts.has(t))
  const doubled = [...counts].filter(([, n]) => n !== 1).map(([t, n]) => `${t}x${n}`)
  const foreign = [...counts.keys()].filter((t) => !typedSet.has(t))
  assert.deepEqual(lost, [], `${what} lost ${lost.length} of ${typedSet.size} edits`)
  assert.deepEqual(doubled, [], `${what}: edits present more than once`)
  assert.deepEqual(foreign, [], `${what}: text holds tokens nobody typed`)
}
