// Integration test: connectScene against a real Troupe cluster (3 troupe-node voters + a
// troupe-router, started here the way tests/interop/harness.mjs does). Two sessions edit one
// scene; the scene's owner is killed with SIGKILL mid-typing; both sessions must go
// 'reconnecting', come back 'connected' on a survivor (through the router), keep every
// keystroke (also those typed while offline), converge, and fire 'saved' once the new owner
// has stored their edits. A fresh session then reads everything back from the new owner.
//
// Binaries: TROUPE_BIN_DIR, else the newer of ../target/debug and ../target/release that has
// troupe-node, troupectl and troupe-router. If there are none, `cargo build -p troupe-node
// -p troupe-router` (debug) is run first; the test is skipped, saying why, only when that
// fails. TROUPE_TEST_LOG sets the processes' TROUPE_LOG (default warn).

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'

import * as Y from 'yjs'
import WebSocket from 'ws'

import { connectScene } from '../src/index.js'

const WEB_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const REPO_DIR = resolve(WEB_DIR, '..')
const BINS = ['troupe-node', 'troupectl', 'troupe-router']
const STARTUP_TIMEOUT_MS = 30_000

// ---------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------

const hasAll = (dir) => BINS.every((b) => existsSync(join(dir, b)))

/** The bin dir to use, or {skip: reason}. Builds (debug) when no complete dir exists. */
function findBinaries () {
  if (process.env.TROUPE_BIN_DIR) {
    const dir = resolve(process.env.TROUPE_BIN_DIR)
    // Pointed at a folder on purpose: a missing binary there is an error, not a reason to skip.
    if (!hasAll(dir)) throw new Error(`TROUPE_BIN_DIR=${dir} lacks one of ${BINS.join(', ')}`)
    return { dir }
  }
  const candidates = ['debug', 'release']
    .map((p) => join(REPO_DIR, 'target', p))
    .filter(hasAll)
    .sort((a, b) => statSync(join(b, 'troupe-node')).mtimeMs - statSync(join(a, 'troupe-node')).mtimeMs)
  if (candidates.length > 0) return { dir: candidates[0] }
  console.error('# cluster.test.mjs: no troupe binaries found; running cargo build -p troupe-node -p troupe-router (debug)…')
  const built = spawnSync('cargo', ['build', '-p', 'troupe-node', '-p', 'troupe-router'], {
    cwd: REPO_DIR, stdio: ['ignore', 'inherit', 'inherit'], timeout: 30 * 60_000
  })
  const dir = join(REPO_DIR, 'target', 'debug')
  if (built.status === 0 && hasAll(dir)) return { dir }
  const why = built.error ? built.error.message : `exit ${built.status}`
  return { skip: `the troupe binaries could not be built (cargo build -p troupe-node -p troupe-router: ${why})` }
}

const BIN = findBinaries()

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

const live = new Set()
process.on('exit', () => {
  for (const child of live) {
    try { child.kill('SIGKILL') } catch { /* gone */ }
  }
})

/** Certificates for the cluster's internal port (`troupectl certs`): TROUPE_INTERNAL_* settings. */
function clusterCerts (dir, nodeIds) {
  const ctl = (...args) => execFileSync(join(BIN.dir, 'troupectl'), ['certs', '--dir', dir, ...args], { env: childEnv({}), stdio: ['ignore', 'ignore', 'pipe'] })
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

function childEnv (extra) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TROUPE_')) env[k] = v
  return { ...env, TROUPE_LOG: process.env.TROUPE_TEST_LOG ?? 'warn', ...extra }
}

function waitExit (child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true)
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms)
    child.once('exit', () => { clearTimeout(t); resolve(true) })
  })
}

/** Spawn `bin`, resolve with {child, match, stderrTail()} once stdout prints a line matching `re`. */
function start (name, bin, env, re) {
  const child = spawn(bin, [], { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
  live.add(child)
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-20_000) })
  child.on('exit', () => live.delete(child))
  const proc = {
    name,
    child,
    match: null,
    stderrTail: () => stderr.split('\n').slice(-30).join('\n'),
    async kill () {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGKILL')
      await waitExit(child, 5_000)
    }
  }
  return new Promise((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => {
      proc.kill()
      reject(new Error(`${name} did not start within ${STARTUP_TIMEOUT_MS} ms\n${proc.stderrTail()}`))
    }, STARTUP_TIMEOUT_MS)
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk) => {
      buf += chunk
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        const m = re.exec(line)
        if (m && !proc.match) {
          proc.match = m
          clearTimeout(timer)
          resolve(proc)
        }
      }
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`${name} exited before it was ready (code ${code}, signal ${signal})\n${proc.stderrTail()}`))
    })
  })
}

async function freePorts (n) {
  const servers = []
  try {
    for (let i = 0; i < n; i++) {
      const s = createServer()
      await new Promise((resolve, reject) => { s.once('error', reject); s.listen(0, '127.0.0.1', resolve) })
      servers.push(s)
    }
    return servers.map((s) => s.address().port)
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
  }
}

/** An HS256 JWT as the app's backend would mint it. */
function mintToken (secret, scenes) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const data = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'web-test', exp: Math.floor(Date.now() / 1000) + 3600, aud: 'troupe', scenes })}`
  return `${data}.${createHmac('sha256', secret).update(data).digest('base64url')}`
}

async function waitFor (what, pred, { timeout = 15_000, interval = 25, observe } = {}) {
  const deadline = Date.now() + timeout
  let lastErr = null
  for (;;) {
    try {
      const v = await pred()
      if (v) return v
    } catch (e) { lastErr = e }
    if (Date.now() > deadline) {
      const seen = observe ? `\nobserved: ${JSON.stringify(observe())}` : ''
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${seen}${lastErr ? `\nlast error: ${lastErr.message}` : ''}`)
    }
    await sleep(interval)
  }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

describe('connectScene against a real 3-node cluster', { skip: BIN.skip ?? false }, () => {
  const secret = randomBytes(32).toString('hex')
  /** @type {Map<number, any>} */
  const nodes = new Map()
  let router = null
  let dataDir = null
  let certs = null
  const sessions = []

  const ctl = (args) => new Promise((resolve, reject) => {
    const cluster = [...nodes.values()].filter((n) => n.child.exitCode === null && n.child.signalCode === null).map((n) => n.rpc).join(',')
    execFile(join(BIN.dir, 'troupectl'), ['--cluster', cluster, ...args], { env: childEnv(certs.admin), timeout: 20_000 },
      (err, stdout, stderr) => (err ? reject(new Error(`troupectl ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout)))
  })
  const route = async (scene) => {
    const res = await fetch(`${router.base}/v1/route/${encodeURIComponent(scene)}`)
    if (res.status !== 200) throw new Error(`route ${scene}: HTTP ${res.status}`)
    return res.json()
  }
  const logs = () => [...nodes.values(), router].filter(Boolean).map((p) => `--- ${p.name} ---\n${p.stderrTail()}`).join('\n')

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'troupe-web-cluster-'))
    certs = clusterCerts(join(dataDir, 'certs'), [1, 2, 3])
    const ports = await freePorts(6)
    const addrs = [1, 2, 3].map((id) => ({ id, listen: `127.0.0.1:${ports[2 * id - 2]}`, rpc: `127.0.0.1:${ports[2 * id - 1]}` }))
    const peers = addrs.map((a) => `${a.id}=${a.rpc}`).join(',')
    // Nodes starting together race to migrate the shared SQLite file; a loser exits and is
    // started again (as tests/interop/harness.mjs does).
    const startNode = async (a) => {
      let last
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          return await start(`node-${a.id}`, join(BIN.dir, 'troupe-node'), {
            TROUPE_NODE_ID: String(a.id),
            TROUPE_LISTEN: a.listen,
            TROUPE_RPC_LISTEN: a.rpc,
            TROUPE_PEERS: peers,
            TROUPE_DATA_DIR: dataDir,
            TROUPE_JWT_SECRET: secret,
            ...certs.node(a.id)
          }, /^troupe-node listening on (\S+) rpc (\S+)\s*$/)
        } catch (err) {
          last = err
          await sleep(200)
        }
      }
      throw last
    }
    const started = await Promise.all(addrs.map(startNode))
    for (const [i, p] of started.entries()) {
      p.id = addrs[i].id
      p.rpc = p.match[2]
      p.url = `ws://${p.match[1]}`
      nodes.set(p.id, p)
    }
    await waitFor('3 active nodes', async () => {
      const m = JSON.parse(await ctl(['--json', 'nodes']))
      return Object.values(m.state.nodes).filter((n) => n.state === 'active').length === 3
    }, { timeout: 30_000, interval: 200 })
    router = await start('router', join(BIN.dir, 'troupe-router'), {
      TROUPE_LISTEN: '127.0.0.1:0',
      TROUPE_CLUSTER: addrs.map((a) => a.rpc).join(','),
      ...certs.router
    }, /^troupe-router listening on (\S+)\s*$/)
    router.base = `http://${router.match[1]}`
    await waitFor('the router to answer', async () => [1, 2, 3].includes((await route('warmup')).node), { interval: 100 })
  }, { timeout: 90_000 })

  after(async () => {
    for (const s of sessions) s.destroy()
    // Every process started, including any of a before() that failed half-way.
    await Promise.all([...live].map((child) => { child.kill('SIGKILL'); return waitExit(child, 5_000) }))
    if (dataDir) rmSync(dataDir, { recursive: true, force: true })
  })

  /** A session on `scene` recording its statuses and 'saved'/'moved' events. */
  function open (scene, token, label) {
    const doc = new Y.Doc()
    const s = connectScene({ router: router.base, sceneId: scene, token, doc, WebSocketPolyfill: WebSocket, disableBc: true })
    const rec = { label, doc, session: s, text: doc.getText('t'), statuses: [], saved: 0, moved: [], errors: [], typed: [] }
    s.on('status', (e) => rec.statuses.push(e.status))
    s.on('saved', () => rec.saved++)
    s.on('moved', (e) => rec.moved.push(e.url))
    s.on('error', (e) => rec.errors.push(e))
    rec.type = (tok) => {
      rec.text.insert(rec.text.length, tok)
      rec.typed.push(tok)
    }
    sessions.push(s)
    return rec
  }

  /** Every typed token exactly once in `text`, nothing else. */
  function assertTokens (what, text, typed) {
    const parts = text.split(';')
    assert.equal(parts.pop(), '', `${what}: text ends with a partial token`)
    const counts = new Map()
    for (const p of parts) counts.set(p + ';', (counts.get(p + ';') ?? 0) + 1)
    const lost = typed.filter((t) => !counts.has(t))
    assert.deepEqual(lost, [], `${what}: lost ${lost.length} of ${typed.length} edits`)
    assert.deepEqual([...counts].filter(([, n]) => n !== 1), [], `${what}: edits present more than once`)
    assert.equal(counts.size, typed.length, `${what}: tokens nobody typed`)
  }

  test('two sessions converge, survive SIGKILL of the owner, keep every edit and see it saved', { timeout: 60_000 }, async () => {
    try {
      // A scene owned by a node that is not the Raft leader (the leader marks it down).
      const { leader } = JSON.parse(await ctl(['--json', 'nodes']))
      const run = randomBytes(3).toString('hex')
      let scene = null
      let owner = null
      for (let i = 0; i < 500 && scene === null; i++) {
        const r = await route(`web-${run}-${i}`)
        if (r.node !== leader) { scene = r.scene; owner = r }
      }
      assert.ok(scene, 'no scene routes to a non-leader node')
      const victim = nodes.get(owner.node)
      assert.equal(owner.url, victim.url)
      const token = mintToken(secret, { [scene]: 'edit' })

      const a = open(scene, token, 'a')
      const b = open(scene, token, 'b')
      const both = [a, b]
      await waitFor('both sessions connected', () => both.every((c) => c.session.status === 'connected'),
        { observe: () => both.map((c) => c.statuses) })
      for (const c of both) {
        assert.deepEqual(c.statuses, ['syncing', 'connected'], `${c.label} statuses`)
        assert.equal(c.session.url, victim.url, `${c.label} connects to the owner`)
      }

      // 1. Converge.
      for (let i = 0; i < 5; i++) {
        a.type(`a${i};`)
        b.type(`b${i};`)
        await sleep(10)
      }
      const allTyped = () => [...a.typed, ...b.typed]
      await waitFor('both texts to converge', () => a.text.toString() === b.text.toString() && a.text.length === allTyped().join('').length)
      assertTokens('before the kill', a.text.toString(), allTyped())
      await waitFor('both sessions saved', () => both.every((c) => !c.session.hasUnsyncedChanges && c.saved > 0),
        { observe: () => both.map((c) => ({ saved: c.saved, unsynced: c.session.hasUnsyncedChanges })) })

      // 2. Kill the owner mid-typing; keep typing while the sessions are cut off.
      a.type('a-before-kill;')
      b.type('b-before-kill;')
      await victim.kill()
      const killedAt = Date.now()
      await waitFor('both sessions reconnecting', () => both.every((c) => c.session.status === 'reconnecting'), { timeout: 5_000 })
      for (let i = 0; i < 6; i++) {
        a.type(`a-off${i};`)
        b.type(`b-off${i};`)
        // An edit typed while cut off cannot be saved yet. (Checked at once: the cluster
        // marks a killed node down within ~0.2 s, and a session may be back within this loop.)
        for (const c of both) {
          if (c.session.status === 'reconnecting') assert.equal(c.session.hasUnsyncedChanges, true, `${c.label}: offline edits cannot be saved`)
        }
        await sleep(50)
      }
      const savedBefore = both.map((c) => c.saved)

      // 3. Back on a survivor, through the router.
      await waitFor('both sessions connected again', () => both.every((c) => c.session.status === 'connected'),
        { timeout: 20_000, observe: () => both.map((c) => ({ statuses: c.statuses, url: c.session.url })) })
      const recoveredMs = Date.now() - killedAt
      const newOwner = await route(scene)
      assert.notEqual(newOwner.node, victim.id, 'the router still names the dead node')
      for (const c of both) {
        assert.deepEqual(c.statuses.slice(0, 4), ['syncing', 'connected', 'reconnecting', 'connected'], `${c.label} statuses`)
        assert.equal(c.session.url, newOwner.url, `${c.label} is on the new owner`)
        assert.deepEqual(c.errors, [])
      }

      // 4. Editing again; every edit (before, during, after the outage) is there exactly once.
      for (let i = 0; i < 3; i++) {
        a.type(`a-after${i};`)
        b.type(`b-after${i};`)
      }
      await waitFor('both texts to converge after the failover', () => a.text.toString() === b.text.toString() && a.text.length === allTyped().join('').length,
        { observe: () => ({ a: a.text.toString(), b: b.text.toString() }) })
      assertTokens('after the failover', a.text.toString(), allTyped())
      await waitFor('saved after the failover', () => both.every((c, i) => !c.session.hasUnsyncedChanges && c.saved > savedBefore[i]),
        { observe: () => both.map((c) => ({ saved: c.saved, unsynced: c.session.hasUnsyncedChanges, pending: c.session._acks.pending.length })) })

      // 5. A fresh session reads it all back from the new owner (its store).
      const c = open(scene, token, 'fresh')
      await waitFor('a fresh session connected', () => c.session.status === 'connected')
      assertTokens('a fresh session', c.text.toString(), allTyped())
      assert.equal(c.session.hasUnsyncedChanges, false)
      console.log(`# failover: both sessions connected again ${recoveredMs} ms after SIGKILL of node ${victim.id}; now on node ${newOwner.node}`)
    } catch (err) {
      err.message += `\n${logs()}`
      throw err
    }
  })
})
