// Failover interop test: `kill -9` the owner of 20 busy scenes while stock yjs + y-websocket
// 1.5 clients edit them. Every edit is present afterwards, every client converges, and the
// time from the kill until each client edits again is measured (p99 must stay under 2 s).
//
// Run: TROUPE_BIN_DIR=target/debug node --test tests/interop/failover.test.mjs
// (tests/run.sh builds the binaries and sets TROUPE_BIN_DIR.)
//
// The suite starts three `troupe-node` voters and a `troupe-router` (harness.mjs's
// suiteCluster, as cluster.test.mjs). The victim is a node that is not the Raft leader (the
// leader is the one that marks it down); 20 scene ids it owns are found by asking the router.
// Two stock WebsocketProvider clients per scene connect to the victim and type unique tokens
// every ~40 ms; after ~1 s the victim is SIGKILLed. A stock 1.5 client keeps reconnecting to
// the URL it was built with, so the app (here: connectFollowing with `reresolve`) reacts to
// 'connection-close' / 'connection-error': it follows a 4301's reason, or else asks the router
// for the scene's owner and points `provider.url` there; the provider's own reconnect (backoff
// capped by `maxBackoffTime: 500`) then lands on the survivor the router names once the leader
// has marked the victim down.
//
// Recovery of a client = the time from the kill until it is connected and synced on a
// survivor AND a token it typed after that sync has come back through the server to the other
// client of its scene (it is editing again). Printed as one `failover:` line (p50/p99/max).
//
// Debugging: TROUPE_TEST_LOG=info sets the processes' TROUPE_LOG, and TROUPE_TEST_LOG_DIR=dir
// writes each process's stderr to dir/<name>.log as well.

import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import {
  assertEveryTokenOnce, connectFollowing, isSynced, mintToken, round, suiteCluster,
  waitFor as waitForWithin, withLogs
} from './harness.mjs'

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

const WAIT_MS = 20_000 // default limit for wait-until helpers
const TEST_TIMEOUT_MS = 180_000

const SCENES = 20
const CLIENTS_PER_SCENE = 2
const TYPE_INTERVAL_MS = 40
const TYPE_BEFORE_KILL_MS = 1_000
const TYPE_AFTER_RECOVERY_MS = 2_000
/** The providers' `maxBackoffTime` (y-websocket 1.5 default: 2500 ms). */
const MAX_BACKOFF_MS = 500
/** Limit for the p99 of the recovery times (kill -> editing again on a survivor). */
const RECOVERY_P99_LIMIT_MS = 2_000
/** How long the test waits for every client to recover at all (then it fails, listing them). */
const RECOVERY_WAIT_MS = 30_000
/** Candidate scene ids asked of the router before giving up finding 20 on the victim. */
const MAX_CANDIDATES = 2_000

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/** The harness's waitFor with this file's longer default limit (WAIT_MS). */
const waitFor = (what, pred, opts = {}) => waitForWithin(what, pred, { timeout: WAIT_MS, ...opts })

/** Nearest-rank percentile (p in 0..1) of `xs`. */
function percentile (xs, p) {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

describe('troupe failover with stock y-websocket clients', { timeout: TEST_TIMEOUT_MS + 180_000 }, () => {
  const ctx = suiteCluster({ voters: 3, prefix: 'troupe-interop-failover-' })

  test(`kill -9 the owner of ${SCENES} busy scenes: no edit lost, clients converge, editing again within ${RECOVERY_P99_LIMIT_MS} ms (p99)`, { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async () => {
    const run = randomBytes(3).toString('hex')

    // 1. The victim: a node that is not the Raft leader. 20 scenes it owns, from the router.
    const membership = await ctx.membership()
    const leader = membership.leader
    assert.ok(ctx.voterIds.includes(leader), `no known Raft leader: ${JSON.stringify(membership.leader)}`)
    const victimId = ctx.voterIds.find((id) => id !== leader)
    const victim = ctx.nodes.get(victimId)
    const survivorIds = ctx.voterIds.filter((id) => id !== victimId)
    const survivorUrls = new Set(survivorIds.map((id) => ctx.nodes.get(id).url))
    const epochBefore = membership.state.epoch

    const scenes = []
    let candidates = 0
    while (scenes.length < SCENES) {
      assert.ok(candidates < MAX_CANDIDATES, `only ${scenes.length} of ${candidates} scene ids route to node ${victimId}`)
      const id = `failover-${run}-${candidates++}`
      const r = await ctx.route(id)
      if (r.node !== victimId) continue
      assert.equal(r.url, victim.url, `route URL of ${id}`)
      scenes.push({ i: scenes.length, id, token: null, before: r, after: null, clients: [] })
    }

    // 2. Two stock clients per scene, connected to the victim; they re-resolve on any close.
    for (const s of scenes) {
      s.token = mintToken(ctx.secret, { scenes: { [s.id]: 'edit' } })
      for (let j = 0; j < CLIENTS_PER_SCENE; j++) {
        s.clients.push(connectFollowing(ctx, {
          scene: s.id,
          token: s.token,
          base: victim.url,
          label: `s${s.i}c${j}`,
          reresolve: true,
          maxBackoffTime: MAX_BACKOFF_MS
        }))
      }
    }
    const all = scenes.flatMap((s) => s.clients)
    await waitFor('every client to sync on the victim', () => all.every(isSynced), {
      observe: () => all.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, closes: c.closes }))
    })

    // Recovery tracking. After the kill, a client has recovered once (a) it is synced on a
    // survivor, (b) it typed a token (the probe) after that sync, and (c) the probe reached the
    // other client of its scene (only the server can bring it there: no BroadcastChannel).
    let killedAt = null
    for (const s of scenes) {
      s.clients.forEach((c, j) => {
        const partner = s.clients[(j + 1) % s.clients.length]
        c.recovery = { syncedAt: null, syncedOn: null, probe: null, probeTypedAt: null, seenAt: null }
        const resetUnlessDone = () => {
          if (c.recovery.seenAt !== null) return
          Object.assign(c.recovery, { syncedAt: null, syncedOn: null, probe: null, probeTypedAt: null })
        }
        c.provider.on('connection-close', resetUnlessDone)
        c.provider.on('sync', (synced) => {
          if (killedAt === null || c.recovery.seenAt !== null) return
          if (!synced) { resetUnlessDone(); return }
          if (!survivorUrls.has(c.base)) return
          Object.assign(c.recovery, { syncedAt: performance.now(), syncedOn: c.base, probe: null, probeTypedAt: null })
        })
        c.sawProbe = (at) => {
          if (c.recovery.seenAt === null && c.recovery.probe !== null) c.recovery.seenAt = at
        }
        partner.text.observe((event) => {
          const probe = c.recovery.probe
          if (probe === null || c.recovery.seenAt !== null) return
          for (const op of event.delta) {
            if (typeof op.insert === 'string' && op.insert.includes(probe)) {
              c.sawProbe(performance.now())
              return
            }
          }
        })
        c.partner = partner
      })
    }
    const recovered = (c) => c.recovery.seenAt !== null

    // 3. Everyone types a unique token every ~40 ms.
    let k = 0
    const typer = setInterval(() => {
      k++
      const now = performance.now()
      for (const s of scenes) {
        s.clients.forEach((c, j) => {
          const token = `s${s.i}c${j}n${k};`
          if (killedAt !== null && c.recovery.syncedAt !== null && c.recovery.probe === null && isSynced(c)) {
            c.recovery.probe = token
            c.recovery.probeTypedAt = now
          }
          c.typed.push(token)
          c.typedAt.push(now)
          c.text.insert(c.text.length, token)
        })
      }
    }, TYPE_INTERVAL_MS)

    let downAfterMs = null
    let lastRecoveredAt = null
    try {
      await sleep(TYPE_BEFORE_KILL_MS)
      for (const c of all) assert.deepEqual(c.closes, [], `${c.label} was closed before the kill`)

      // 4. kill -9 the victim while everyone types.
      killedAt = performance.now()
      await victim.kill()
      assert.equal(victim.exited?.signal, 'SIGKILL', `node ${victimId} did not die of SIGKILL: ${JSON.stringify(victim.exited)}`)

      // The leader marks it down (measured from here, troupectl takes a few ms per call).
      const downWatch = waitFor(`node ${victimId} to be marked down`, async () => {
        const m = await ctx.membership()
        return m.state.nodes[String(victimId)]?.state === 'down' ? m : null
      }, { timeout: RECOVERY_WAIT_MS, interval: 50 }).then((m) => { downAfterMs = performance.now() - killedAt; return m })
      downWatch.catch(() => {}) // awaited below; a rejection must not go unhandled meanwhile

      // Every client is editing again on a survivor.
      await waitFor('every client to be editing again on a survivor', () => {
        for (const c of all) {
          // Fallback, should the observer have missed it (it should not).
          if (c.recovery.probe !== null && c.recovery.seenAt === null && c.partner.text.toString().includes(c.recovery.probe)) {
            c.sawProbe(performance.now())
          }
        }
        return all.every(recovered)
      }, {
        timeout: RECOVERY_WAIT_MS,
        interval: 10,
        observe: () => all.filter((c) => !recovered(c)).map((c) => ({
          c: c.label,
          base: c.base,
          synced: isSynced(c),
          recovery: c.recovery,
          lookups: c.lookups,
          closes: c.closes.slice(-5).map((x) => ({ at: round(x.at - killedAt), code: x.code, reason: x.reason }))
        }))
      })
      lastRecoveredAt = Math.max(...all.map((c) => c.recovery.seenAt))
      await downWatch

      // Keep typing on the new owners for a while.
      await sleep(TYPE_AFTER_RECOVERY_MS)
    } finally {
      clearInterval(typer)
    }
    const stoppedAt = performance.now()
    const typedTotal = all.reduce((n, c) => n + c.typed.length, 0)
    // Edits typed after the kill and before the client was synced on a survivor: they reached
    // the survivor only in the sync handshake (y-websocket sends them when it reconnects).
    const typedAway = all.reduce((n, c) => n + c.typedAt.filter((t) => t >= killedAt && t <= c.recovery.syncedAt).length, 0)

    // 5. Each scene's clients converge; every typed token is there exactly once.
    await waitFor('every client to be synced and each scene\'s clients to agree', () =>
      all.every(isSynced) &&
      scenes.every((s) => s.clients.every((c) => c.text.toString() === s.clients[0].text.toString())),
    {
      interval: 50,
      observe: () => ({
        unsynced: all.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, base: c.base, closes: c.closes.slice(-5) })),
        disagreeing: scenes.filter((s) => s.clients.some((c) => c.text.toString() !== s.clients[0].text.toString()))
          .map((s) => ({ scene: s.id, lengths: s.clients.map((c) => c.text.length) }))
      })
    })
    const convergedAfterStopMs = performance.now() - stoppedAt
    for (const s of scenes) {
      s.after = await ctx.route(s.id)
      assertEveryTokenOnce(`${s.id} (owner ${s.before.node} -> ${s.after.node})`,
        s.clients[0].text.toString(), s.clients.flatMap((c) => c.typed))
    }

    // The membership: the victim is down, its scenes moved to the survivors, spread over both.
    const m = await ctx.membership()
    assert.equal(m.state.nodes[String(victimId)]?.state, 'down', `node ${victimId} is not marked down: ${JSON.stringify(m.state.nodes)}`)
    assert.ok(m.state.epoch > epochBefore, `epoch did not move: ${epochBefore} -> ${m.state.epoch}`)
    const owners = new Map() // node id -> scenes
    for (const s of scenes) {
      assert.ok(survivorIds.includes(s.after.node), `${s.id} is routed to node ${s.after.node}, not to a survivor (${survivorIds})`)
      assert.equal(s.after.url, ctx.nodes.get(s.after.node).url, `route URL of ${s.id}`)
      owners.set(s.after.node, (owners.get(s.after.node) ?? 0) + 1)
      for (const c of s.clients) {
        assert.equal(c.base, s.after.url, `${c.label} (${s.id}) is not on its scene's owner: ${JSON.stringify(c.bases)}`)
        assert.equal(c.recovery.syncedOn, s.after.url, `${c.label} (${s.id}) recovered on ${c.recovery.syncedOn}, but the scene is on ${s.after.url}`)
      }
    }
    assert.ok(owners.size >= 2, `the dead node's ${SCENES} scenes all went to one node: ${JSON.stringify([...owners])}`)

    // A fresh stock client per scene, connected through the router's route, sees the same text.
    const fresh = scenes.map((s) => connectFollowing(ctx, { scene: s.id, token: s.token, base: s.after.url, label: `fresh-s${s.i}` }))
    await waitFor('every fresh client to sync', () => fresh.every(isSynced), {
      observe: () => fresh.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, base: c.base, closes: c.closes }))
    })
    scenes.forEach((s, i) => {
      assert.equal(fresh[i].text.toString(), s.clients[0].text.toString(), `${s.id}: a fresh client sees other text than the editors`)
      assert.deepEqual(fresh[i].closes, [], `${s.id}: the fresh client was closed (${JSON.stringify(fresh[i].closes)})`)
    })

    // 6. Recovery times: kill -> editing again (synced on a survivor and a new token echoed).
    const times = all.map((c) => c.recovery.seenAt - killedAt)
    const syncTimes = all.map((c) => c.recovery.syncedAt - killedAt)
    const p50 = percentile(times, 0.5)
    const p99 = percentile(times, 0.99)
    const max = Math.max(...times)
    const lookups = all.map((c) => c.lookups)
    const slowest = all.reduce((a, b) => (b.recovery.seenAt > a.recovery.seenAt ? b : a))
    const since = (t) => round(t - killedAt)
    console.log(
      `failover: kill -9 node ${victimId} (leader: node ${leader}) under ${SCENES} scenes × ${CLIENTS_PER_SCENE} stock clients; ` +
      `editing again after the kill: p50 ${round(p50)} ms, p99 ${round(p99)} ms, max ${round(max)} ms (n=${times.length}); ` +
      `synced on a survivor: p50 ${round(percentile(syncTimes, 0.5))} ms, max ${round(Math.max(...syncTimes))} ms; ` +
      `marked down (seen via troupectl) after ${round(downAfterMs)} ms; epoch ${epochBefore} -> ${m.state.epoch}; ` +
      `new owners ${JSON.stringify(Object.fromEntries(owners))}; ` +
      `${typedTotal} edits typed, ${typedAway} while away, typing went on ${round(stoppedAt - lastRecoveredAt)} ms after the last recovery; ` +
      `converged ${round(convergedAfterStopMs)} ms after typing stopped; router look-ups per client: min ${Math.min(...lookups)}, max ${Math.max(...lookups)}; ` +
      `slowest ${slowest.label}: closes at ${JSON.stringify(slowest.closes.filter((x) => x.at >= killedAt).map((x) => `${since(x.at)}:${x.code}`))} ms, ` +
      `pointed at ${slowest.base} at ${since(slowest.basedAt[slowest.bases.lastIndexOf(slowest.base)])} ms, ` +
      `synced ${since(slowest.recovery.syncedAt)} ms, probe typed ${since(slowest.recovery.probeTypedAt)} ms, echoed ${since(slowest.recovery.seenAt)} ms`)

    assert.ok(typedAway > 0, 'no edit was typed while a client was away: the test did not exercise the resend')
    assert.ok(p99 < RECOVERY_P99_LIMIT_MS,
      `p99 of the recovery times is ${round(p99)} ms (limit ${RECOVERY_P99_LIMIT_MS} ms): ` +
      JSON.stringify(all.map((c) => ({
        c: c.label,
        editingMs: round(c.recovery.seenAt - killedAt),
        syncedMs: round(c.recovery.syncedAt - killedAt),
        lookups: c.lookups,
        closes: c.closes.map((x) => x.code)
      }))))

    for (const c of fresh) c.destroy()
  }))
})
