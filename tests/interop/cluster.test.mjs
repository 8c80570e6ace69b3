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
// The cluster (suiteCluster), tokens, the move-following stock clients (connectFollowing), the
// token checks and polling come from harness.mjs (shared with interop.test.mjs and
// failover.test.mjs).

import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import {
  assertEveryTokenOnce, connectFollowing, isSynced, median, mintToken, round, suiteCluster,
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
const TYPE_BEFORE_ADD_MS = 1_500
const TYPE_AFTER_ADD_MS = 3_000
const MAX_MOVE_GAP_MS = 1_000

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/** The harness's waitFor with this file's longer default limit (WAIT_MS). */
const waitFor = (what, pred, opts = {}) => waitForWithin(what, pred, { timeout: WAIT_MS, ...opts })

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

describe('troupe cluster with stock y-websocket clients', { timeout: 2 * TEST_TIMEOUT_MS + 180_000 }, () => {
  const ctx = suiteCluster({ voters: 3, spares: 1 }) // node 4 is started by the test

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
      assertEveryTokenOnce(`${s.id} (owner ${s.before.node} -> ${s.after.node})`,
        s.clients[0].text.toString(), s.clients.flatMap((c) => c.typed))
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
