// Shared helpers for the interop tests (interop.test.mjs, cluster.test.mjs): starting and
// killing troupe processes, minting tokens, stock y-websocket clients, polling.
//
// Not a test file (no `.test.mjs`): tests/run.sh and `node --test` only run the files that
// import it. `node --test` runs each test file in its own process, so the module-level sets
// below (live processes, live clients) belong to one test file at a time.

import { spawn } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { createWriteStream, existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
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

/**
 * A stock y-websocket client, exactly as a browser would build it: a Y.Doc and a
 * WebsocketProvider for `url`/`sceneId` with the token as a query parameter.
 * `disableBc: true` because Node has a global BroadcastChannel: without it, providers in this
 * one process would sync with each other locally, bypassing the servers under test.
 * @returns {{doc: Y.Doc, provider: WebsocketProvider, destroyed: boolean, destroy(): void}}
 */
export function stockClient (url, sceneId, token, { connect = true } = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(url, sceneId, doc, {
    params: { token },
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    connect
  })
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
