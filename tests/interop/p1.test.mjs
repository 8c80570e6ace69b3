// P1 interop test: stock yjs + y-websocket 1.5 clients type into P1 scenes while the P1
// product's backend autosaves (`PUT`) and edits (`PATCH`) the same scenes through the
// router's content API, a named version is saved and restored, a node is killed with
// SIGKILL and a 4th one added. At the end every marker is counted in every live client's
// document, in a fresh stock client, in the content API's answer and in P1's own
// `content_blocks` table:
//   - typed by a client (phases 1 and 3), or saved by a write answered 200: exactly once;
//   - saved by a write with no answer or an answer that does not say (a 5xx other than
//     "moving"): at most once (such a marker is never sent again);
//   - typed or saved between the named version and its restore (phase 2): nowhere, and
//     every client received the restore's notice.
//
// Run: TROUPE_BIN_DIR=target/debug node --test tests/interop/p1.test.mjs
// (tests/run.sh builds the binaries and sets TROUPE_BIN_DIR.) With TROUPE_TEST_DATABASE_URL
// set (tests/run.sh does) the cluster and this test share that Postgres and the test reads
// P1's tables with `psql`; without it the nodes share an SQLite file the test reads with the
// `sqlite3` command-line tool, and the test is skipped when that tool is not installed.
//
// The suite starts three `troupe-node` voters and a `troupe-router` (harness.mjs's
// suiteCluster, as cluster.test.mjs), with a short P1 write-back delay so `content_blocks`
// catches up within about a second. Six scenes, two owned by each node, are made P1 scenes
// (a `scenes` row at content version 1 and its `content_blocks`) before anyone opens them:
// the owner seeds each document from them on first load. Each scene holds a block of each
// of the six types and one block per writer, labelled `[c<scene>-<client>]` or `[p<scene>]`.
// The clients edit the `prosemirror` XML fragment as the demo editor does (one Y.XmlElement
// per block, named by its type, holding one Y.XmlText) and type `c<scene>-<client>-<n>;` at
// the end of their own block every ~100 ms; they follow moves (harness.mjs's connectFollowing
// with `reresolve`). One P1 writer per scene reads the scene (`GET …/content`: a version
// and the blocks it names) and saves `p<scene>-<n>;` in turn as a `PUT` appending it to its
// own block, a `PUT` adding a block, and a `PATCH` inserting a block against the scene as it
// is now. 409 and 503 "moving" (nothing changed) are tried again after a fresh read; no
// answer or another 5xx makes the marker's outcome unknown.
//
//   phase 1  everyone writes; pause until every client's document equals the content API's
//            answer; a named version V of each scene (`POST …/versions`)
//   phase 2  everyone writes; pause likewise; `POST …/restore {version: V}`: every client
//            holds exactly V's blocks again and the notice "Restored to version V by Ops"
//   phase 3  everyone writes; a node that owns scenes (not the Raft leader) is SIGKILLed
//            25 ms after a save of each kind was sent to each of its scenes, node 4 is
//            started and added (`troupectl add`), everyone keeps writing; then, with nobody
//            reading through the content API (a read writes pending changes back first),
//            each scene's clients agree and the owners' own write-back brings
//            `content_blocks` to the same blocks; then the counts, in every place.
//
// The restore is checked on its own too: once answered, the content API and
// `content_blocks` hold exactly the version's blocks. A summary (markers per phase, saves by
// outcome, counts checked per place, the timeline) is printed.
//
// Debugging: TROUPE_TEST_LOG=info sets the processes' TROUPE_LOG, and TROUPE_TEST_LOG_DIR=dir
// writes each process's stderr to dir/<name>.log as well.

import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import * as Y from 'yjs'

import {
  connectFollowing, isSynced, mintToken, round, stockClient, suiteCluster,
  waitFor as waitForWithin, withLogs
} from './harness.mjs'

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

const WAIT_MS = 20_000 // default limit for wait-until helpers
const TEST_TIMEOUT_MS = 150_000

const SCENES_PER_NODE = 2
const CLIENTS_PER_SCENE = 2
const TYPE_INTERVAL_MS = 100
/** Pause between one P1 save's end and the next read of the same scene. */
const WRITE_PAUSE_MS = 150
const PHASE1_MS = 2_500
const PHASE2_MS = 1_500
const PHASE3_BEFORE_KILL_MS = 1_500
const PHASE3_BEFORE_ADD_MS = 1_000
/** Saves sent to the victim's scenes this long before it is killed (in flight, or just done). */
const KILL_AFTER_SEND_MS = 25
const PHASE3_AFTER_ADD_MS = 2_500
/** The providers' `maxBackoffTime` (y-websocket 1.5 default: 2500 ms). */
const MAX_BACKOFF_MS = 500
/** A content API request with no answer after this long has an unknown outcome (the
 * router gives up on an owner after 15 s and answers 503). */
const REQUEST_TIMEOUT_MS = 20_000
/** Tries of one P1 marker refused with 409 / 503 "moving", or whose read failed. */
const SAVE_ATTEMPTS = 8
const RETRY_PAUSE_MS = 200
/** How long the clients may take to converge and `content_blocks` to hold their document
 * once everyone stopped (the owners write back 200 ms after the last change). */
const CATCH_UP_MS = 20_000

/** The nodes write P1 back 200 ms after the last change (at most 1 s behind while people
 * type) and look for P1's own writes every 500 ms. */
const NODE_ENV = {
  TROUPE_P1_WRITE_DELAY: '200ms',
  TROUPE_P1_MAX_LAG: '1s',
  TROUPE_P1_CHECK_INTERVAL: '500ms'
}

/** The P1 backend's name, as the restore notice shows it. */
const P1_NAME = 'Ops'

/** The editor's block types: the scene P1 holds before the run has one of each. */
const DRAFT = [
  { type: 'scene_heading', text: 'INT. ROOFTOP - NIGHT' },
  { type: 'action', text: 'Wind. Neon. The city hums below.' },
  { type: 'character', text: 'MARA' },
  { type: 'parenthetical', text: '(quietly)' },
  { type: 'dialogue', text: 'We have until sunrise.' },
  { type: 'transition', text: 'CUT TO:' }
]

/** The block a client types into: one per client, alternating action and dialogue. */
const clientLabel = (s, j) => `[c${s}-${j}]`
const clientBlockType = (j) => (j % 2 === 0 ? 'action' : 'dialogue')
/** The block a P1 writer's appending `PUT`s write into. */
const writerLabel = (s) => `[p${s}]`

/** Markers: a client's `c<scene>-<client>-<n>;` and a P1 writer's `p<scene>-<n>;`. */
const clientMarker = (s, j, n) => `c${s}-${j}-${n};`
const writerMarker = (s, n) => `p${s}-${n};`
/** Every marker in a text (a marker never holds another: each ends with `;`). */
const MARKER_RE = /[cp]\d+(?:-\d+)+;/g

/** What each P1 save does, in turn. */
const SAVE_KINDS = ['put-append', 'put-block', 'patch']

// ---------------------------------------------------------------------------------------
// The checker (pure: tested below on its own)
// ---------------------------------------------------------------------------------------

/** How many times a marker must be found. */
const ONCE = 'exactly once'
const AT_MOST_ONCE = 'at most once'
const NEVER = 'never'

/** Every marker in `blocks` ([{type, text}]), counted. */
export function countMarkers (blocks) {
  const counts = new Map()
  for (const b of blocks) {
    for (const m of b.text.matchAll(MARKER_RE)) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1)
  }
  return counts
}

/**
 * What is wrong in one place: `blocks` counted against `expected` (marker -> {expect, why}),
 * plus markers nobody wrote and text that is neither a marker nor one of `skeleton` (the
 * texts the scene started with, labels included, each expected once; blocks holding only
 * markers are fine). Each problem is one line naming `place`, the marker, the count and the
 * blocks holding it.
 */
export function checkPlace (place, blocks, expected, skeleton) {
  const problems = []
  const counts = countMarkers(blocks)
  const holding = (marker) => blocks.flatMap((b, i) => (b.text.includes(marker) ? [`block ${i} ${b.type} ${JSON.stringify(shorten(b.text, marker))}`] : []))
  for (const [marker, { expect, why }] of expected) {
    const n = counts.get(marker) ?? 0
    const ok = expect === ONCE ? n === 1 : expect === AT_MOST_ONCE ? n <= 1 : n === 0
    if (!ok) problems.push(`${place}: ${marker} found ${n} times, expected ${expect} (${why})${n ? ': ' + holding(marker).join('; ') : ''}`)
  }
  for (const [marker, n] of counts) {
    if (!expected.has(marker)) problems.push(`${place}: ${marker} found ${n} times, but nobody wrote it: ${holding(marker).join('; ')}`)
  }
  const rest = blocks.map((b) => b.text.replace(MARKER_RE, '').trim().replace(/\s+/g, ' '))
  const seen = new Map()
  rest.forEach((text, i) => {
    if (text === '') return
    if (!skeleton.includes(text)) problems.push(`${place}: block ${i} holds text that is neither a marker nor the draft's: ${JSON.stringify(blocks[i].text)}`)
    seen.set(text, (seen.get(text) ?? 0) + 1)
  })
  for (const text of skeleton) {
    if ((seen.get(text) ?? 0) !== 1) problems.push(`${place}: the draft's ${JSON.stringify(text)} found ${seen.get(text) ?? 0} times, expected once`)
  }
  return problems
}

/** Up to 40 characters of `text` on each side of `marker`. */
function shorten (text, marker) {
  const at = text.indexOf(marker)
  if (text.length <= 100 || at < 0) return text
  const from = Math.max(0, at - 40)
  const to = Math.min(text.length, at + marker.length + 40)
  return `${from > 0 ? '…' : ''}${text.slice(from, to)}${to < text.length ? '…' : ''}`
}

/** What a P1 answer proves: 'durable', 'unchanged' (try again), 'unknown' or 'refused'. */
export function verdict (status, code) {
  if (status === 200) return 'durable'
  if (status === 409) return 'unchanged'
  // Refused before reaching a room: the router's view moved on, or it has no owner yet.
  // Any other 503 may come from a room that merged the change and then had to go.
  if (status === 503 && ['moving', 'no_owner', 'no_membership'].includes(code)) return 'unchanged'
  if (status === null || status >= 500) return 'unknown'
  return 'refused'
}

describe('the P1 checker', () => {
  test('finds a doubled, a missing, a restored-away and a foreign marker, and stray text', () => {
    const skeleton = ['INT. HALL', '[c0-0]']
    const expected = new Map([
      ['c0-0-1;', { expect: ONCE, why: 'typed' }],
      ['c0-0-2;', { expect: ONCE, why: 'typed' }],
      ['c0-0-3;', { expect: ONCE, why: 'typed' }],
      ['p0-1;', { expect: AT_MOST_ONCE, why: 'no answer' }],
      ['p0-2;', { expect: AT_MOST_ONCE, why: 'no answer' }],
      ['c0-0-4;', { expect: NEVER, why: 'restored away' }]
    ])
    const good = [
      { type: 'scene_heading', text: 'INT. HALL' },
      { type: 'action', text: '[c0-0]c0-0-1;c0-0-2;c0-0-3;' },
      { type: 'action', text: 'p0-2;' }
    ]
    assert.deepEqual(checkPlace('good', good, expected, skeleton), [])
    const bad = [
      { type: 'scene_heading', text: 'INT. HALL' },
      { type: 'action', text: '[c0-0]c0-0-1;c0-0-1;c0-0-3;c0-0-4;c0-0-' },
      { type: 'action', text: 'p0-2;c10-0-1;' },
      { type: 'action', text: 'p0-2;' }
    ]
    assert.deepEqual(checkPlace('bad', bad, expected, skeleton), [
      'bad: c0-0-1; found 2 times, expected exactly once (typed): block 1 action "[c0-0]c0-0-1;c0-0-1;c0-0-3;c0-0-4;c0-0-"',
      'bad: c0-0-2; found 0 times, expected exactly once (typed)',
      'bad: p0-2; found 2 times, expected at most once (no answer): block 2 action "p0-2;c10-0-1;"; block 3 action "p0-2;"',
      'bad: c0-0-4; found 1 times, expected never (restored away): block 1 action "[c0-0]c0-0-1;c0-0-1;c0-0-3;c0-0-4;c0-0-"',
      'bad: c10-0-1; found 1 times, but nobody wrote it: block 2 action "p0-2;c10-0-1;"',
      'bad: block 1 holds text that is neither a marker nor the draft\'s: "[c0-0]c0-0-1;c0-0-1;c0-0-3;c0-0-4;c0-0-"',
      'bad: the draft\'s "[c0-0]" found 0 times, expected once'
    ])
    assert.deepEqual(checkPlace('empty', [], new Map(), []), [])
  })

  test('only answers that prove nothing changed are tried again', () => {
    assert.equal(verdict(200, undefined), 'durable')
    assert.equal(verdict(409, 'conflict'), 'unchanged')
    assert.equal(verdict(409, 'unknown_version'), 'unchanged')
    assert.equal(verdict(503, 'moving'), 'unchanged')
    assert.equal(verdict(503, 'unavailable'), 'unknown')
    assert.equal(verdict(503, 'owner_unreachable'), 'unknown')
    assert.equal(verdict(502, 'owner_unreachable'), 'unknown')
    assert.equal(verdict(null, undefined), 'unknown')
    assert.equal(verdict(422, 'bad_edit'), 'refused')
  })
})

// ---------------------------------------------------------------------------------------
// P1's tables: psql against TROUPE_TEST_DATABASE_URL, else sqlite3 on the nodes' file
// ---------------------------------------------------------------------------------------

/** A command on PATH (or in one of `also`), or null. */
function findTool (name, also = []) {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), ...also]
  for (const dir of dirs) {
    if (dir && existsSync(join(dir, name))) return join(dir, name)
  }
  return null
}

/** Debian's PostgreSQL client folders, newest first (psql may not be on PATH). */
function postgresBinDirs () {
  try {
    return readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a)).map((v) => `/usr/lib/postgresql/${v}/bin`)
  } catch {
    return []
  }
}

/** An SQL string literal. */
const lit = (s) => `'${String(s).replaceAll("'", "''")}'`

/**
 * P1's tables as the P1 product sees them. `seed` makes a scene a P1 scene (content version
 * 1, `blocks` in order); `read` answers {version, blocks} from one statement (one snapshot).
 * `unavailable` says why the tables cannot be reached from here (the test is skipped).
 */
function p1Tables (ctx) {
  const url = process.env.TROUPE_TEST_DATABASE_URL
  const tool = url ? findTool('psql', postgresBinDirs()) : findTool('sqlite3')
  const run = (sql) => new Promise((resolve, reject) => {
    const args = url
      ? ['-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', sql]
      : ['-batch', '-bail', '-cmd', '.timeout 10000', join(ctx.dataDir, 'troupe.sqlite3'), sql]
    execFile(tool, args, { timeout: 15_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${tool} failed: ${error.message}\n${stderr}`))
      else resolve(stdout.trim())
    })
  })
  const blocksJson = url
    ? (scene) => `coalesce((SELECT json_agg(json_build_object('type', block_type, 'text', text) ORDER BY position) FROM content_blocks WHERE scene_id = ${scene}), '[]'::json)`
    : (scene) => `json(coalesce((SELECT json_group_array(json_object('type', block_type, 'text', text)) FROM (SELECT block_type, text FROM content_blocks WHERE scene_id = ${scene} ORDER BY position)), '[]'))`
  return {
    store: url ? 'Postgres' : 'SQLite',
    unavailable: tool ? null : (url ? 'psql is not installed' : 'no TROUPE_TEST_DATABASE_URL and the sqlite3 tool is not installed'),
    async seed (scene, blocks) {
      const rows = blocks.map((b, i) => `(${lit(scene)}, ${i}, ${lit(b.type)}, ${lit(b.text)})`).join(', ')
      await run(`BEGIN; INSERT INTO scenes (id, title, content_version) VALUES (${lit(scene)}, ${lit('Interop ' + scene)}, 1); ` +
        `INSERT INTO content_blocks (scene_id, position, block_type, text) VALUES ${rows}; COMMIT;`)
    },
    async read (scene) {
      const out = await run(url
        ? `SELECT json_build_object('version', content_version, 'blocks', ${blocksJson('s.id')}) FROM scenes s WHERE id = ${lit(scene)}`
        : `SELECT json_object('version', content_version, 'blocks', ${blocksJson('s.id')}) FROM scenes s WHERE id = ${lit(scene)}`)
      if (out === '') throw new Error(`P1 has no scene ${scene}`)
      return JSON.parse(out)
    }
  }
}

// ---------------------------------------------------------------------------------------
// Documents as the demo editor writes them
// ---------------------------------------------------------------------------------------

/** An XML text's characters. */
const textOf = (t) => t.toDelta().map((d) => (typeof d.insert === 'string' ? d.insert : '\uFFFC')).join('')

/** A document's blocks, as the content API names them: [{type, text}]. */
export function blocksOf (doc) {
  return doc.getXmlFragment('prosemirror').toArray().map((el) => el instanceof Y.XmlElement
    ? { type: el.nodeName, text: el.toArray().map((t) => (t instanceof Y.XmlText ? textOf(t) : '<not text>')).join('') }
    : { type: '<not an element>', text: '' })
}

/** The XML text of the block whose text starts with `label`, or null (not synced yet). */
function ownText (doc, label) {
  for (const el of doc.getXmlFragment('prosemirror').toArray()) {
    if (!(el instanceof Y.XmlElement)) continue
    const t = el.toArray()[0]
    if (t instanceof Y.XmlText && textOf(t).startsWith(label)) return t
  }
  return null
}

/** Blocks as plain {type, text} (JSON answers and SQL rows may order their keys otherwise). */
const plain = (blocks) => blocks.map((b) => ({ type: b.type, text: b.text }))
/** `['a', 'b', 'a']` as `a ×2, b ×1`. */
const tally = (xs) => [...xs.reduce((m, x) => m.set(x, (m.get(x) ?? 0) + 1), new Map())].map(([x, k]) => `${x} ×${k}`).join(', ')
const sameBlocks = (a, b) => JSON.stringify(plain(a)) === JSON.stringify(plain(b))

/** Where two block lists part, for messages. */
function difference (a, b) {
  const [x, y] = [plain(a), plain(b)]
  const at = x.findIndex((block, i) => JSON.stringify(block) !== JSON.stringify(y[i]))
  const i = at < 0 ? Math.min(x.length, y.length) : at
  return `${x.length} vs ${y.length} blocks, first difference at block ${i}: ${JSON.stringify(x[i])} vs ${JSON.stringify(y[i])}`
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/** The harness's waitFor with this file's longer default limit (WAIT_MS). */
const waitFor = (what, pred, opts = {}) => waitForWithin(what, pred, { timeout: WAIT_MS, ...opts })

describe('P1 content API, history and stock y-websocket clients on a changing cluster', { timeout: TEST_TIMEOUT_MS + 180_000 }, () => {
  const ctx = suiteCluster({ voters: 3, spares: 1, prefix: 'troupe-interop-p1-', nodeEnv: NODE_ENV })

  test('clients type while P1 saves, a version is restored, a node dies and one is added: every marker where it must be', { timeout: TEST_TIMEOUT_MS }, withLogs(ctx, async (t) => {
    const tables = p1Tables(ctx)
    if (tables.unavailable) {
      t.skip(`P1's tables cannot be read from here: ${tables.unavailable}`)
      return
    }
    const t0 = performance.now()
    const since = (at) => round((at - t0) / 1000)
    const run = randomBytes(3).toString('hex')
    const timeline = [] // '<seconds since the start>s <what happened>'
    const mark = (what) => timeline.push(`${since(performance.now())}s ${what}`)

    // 1. The victim: a voter that is not the Raft leader. Two scenes owned by each voter.
    const membership = await ctx.membership()
    const leader = membership.leader
    assert.ok(ctx.voterIds.includes(leader), `no known Raft leader: ${JSON.stringify(membership.leader)}`)
    const victimId = ctx.voterIds.find((id) => id !== leader)
    const scenes = []
    const perNode = new Map(ctx.voterIds.map((id) => [id, 0]))
    for (let k = 0; scenes.length < SCENES_PER_NODE * ctx.voterIds.length; k++) {
      assert.ok(k < 1000, `only ${scenes.length} scenes found for ${JSON.stringify([...perNode])} in ${k} ids`)
      const id = `p1-${run}-${k}`
      const route = await ctx.route(id)
      if (perNode.get(route.node) >= SCENES_PER_NODE) continue
      perNode.set(route.node, perNode.get(route.node) + 1)
      scenes.push({ i: scenes.length, id, before: route, after: null, clients: [], writer: null, version: null, atVersion: null })
    }
    const p1Token = mintToken(ctx.secret, { sub: 'p1-backend', name: P1_NAME, scenes: Object.fromEntries(scenes.map((s) => [s.id, 'edit'])) })

    // 2. P1 has the scenes before anyone opens them.
    for (const s of scenes) {
      s.draft = [
        ...DRAFT,
        ...Array.from({ length: CLIENTS_PER_SCENE }, (_, j) => ({ type: clientBlockType(j), text: clientLabel(s.i, j) })),
        { type: 'action', text: writerLabel(s.i) }
      ]
      s.skeleton = s.draft.map((b) => b.text)
      await tables.seed(s.id, s.draft)
    }

    // What every marker must be at the end: marker -> {expect, why}, per scene.
    for (const s of scenes) s.expected = new Map()
    const stats = {
      typed: [0, 0, 0, 0], // per phase (index 1..3)
      typedAway: 0, // typed while the client was not connected and synced
      saves: { durable: 0, unknown: 0, refused: 0, notSent: 0, retried: 0, readFailures: 0 },
      byKind: Object.fromEntries(SAVE_KINDS.map((k) => [k, 0])),
      unknownWhy: new Map(),
      refusals: []
    }

    // 3. The content API through the router.
    const api = async (scene, method, path, body) => {
      try {
        const res = await fetch(`${ctx.router.base}/v1/scenes/${encodeURIComponent(scene)}${path}`, {
          method,
          headers: { authorization: `Bearer ${p1Token}`, 'content-type': 'application/json' },
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)
        })
        const text = await res.text()
        let json = null
        try { json = JSON.parse(text) } catch { /* not JSON */ }
        return { status: res.status, json, text }
      } catch (error) {
        return { status: null, json: null, text: String(error?.cause?.code ?? error?.name ?? error) }
      }
    }
    const getContent = async (s) => {
      const r = s.lastGet = await api(s.id, 'GET', '/content')
      return r.status === 200 && r.json && Array.isArray(r.json.blocks) ? r.json : null
    }

    // 4. Two stock clients per scene, connected to its owner; they follow moves.
    for (const s of scenes) {
      const token = mintToken(ctx.secret, { sub: `writer-${s.i}`, scenes: { [s.id]: 'edit' } })
      for (let j = 0; j < CLIENTS_PER_SCENE; j++) {
        const c = connectFollowing(ctx, { scene: s.id, token, base: s.before.url, label: clientLabel(s.i, j), reresolve: true, maxBackoffTime: MAX_BACKOFF_MS })
        c.j = j
        s.clients.push(c)
      }
    }
    const all = scenes.flatMap((s) => s.clients)
    await waitFor('every client to sync', () => all.every(isSynced), {
      observe: () => all.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, closes: c.closes }))
    })
    for (const s of scenes) {
      for (const c of s.clients) {
        assert.ok(sameBlocks(blocksOf(c.doc), s.draft), `${s.id} ${c.label}: the document is not P1's draft: ${difference(blocksOf(c.doc), s.draft)}`)
      }
    }
    mark('clients synced on the P1 drafts')

    // 5. The writers. `phase` names where a marker written now belongs.
    let phase = 0
    let n = 0
    const typer = setInterval(() => {
      if (phase === 0) return
      n++
      for (const s of scenes) {
        for (const c of s.clients) {
          const text = ownText(c.doc, c.label)
          if (!text) continue
          const marker = clientMarker(s.i, c.j, n)
          if (!isSynced(c)) stats.typedAway++
          text.insert(text.length, marker)
          stats.typed[phase]++
          s.expected.set(marker, phase === 2 ? { expect: NEVER, why: 'typed in phase 2, restored away' } : { expect: ONCE, why: `typed in phase ${phase}` })
        }
      }
    }, TYPE_INTERVAL_MS)
    // Should the test fail midway: nothing keeps typing or saving (nor the process alive).
    t.after(() => {
      clearInterval(typer)
      for (const s of scenes) if (s.writer) s.writer.stopped = true
    })

    /** One P1 save of `marker` (tried again only while nothing changed): its verdict. */
    const save = async (s, marker, kind) => {
      let sent = false
      for (let attempt = 0; attempt < SAVE_ATTEMPTS; attempt++) {
        if (attempt > 0) await sleep(RETRY_PAUSE_MS)
        const base = await getContent(s)
        if (!base || typeof base.version !== 'number') { stats.saves.readFailures++; continue }
        const blocks = base.blocks.map((b) => ({ type: b.type, text: b.text }))
        let method, body
        if (kind === 'put-append') {
          const own = blocks.find((b) => b.text.startsWith(writerLabel(s.i)))
          assert.ok(own, `${s.id}: the P1 writer's block is gone: ${JSON.stringify(blocks)}`)
          own.text += ` ${marker}`
          method = 'PUT'
          body = { base_version: base.version, blocks }
        } else if (kind === 'put-block') {
          blocks.splice(1 + Math.floor(Math.random() * blocks.length), 0, { type: 'action', text: marker })
          method = 'PUT'
          body = { base_version: base.version, blocks }
        } else {
          const at = 1 + Math.floor(Math.random() * blocks.length)
          method = 'PATCH'
          body = { edits: [{ op: 'insert', at, blocks: [{ type: 'action', text: marker }] }] }
        }
        sent = true
        const r = await api(s.id, method, '/content', body)
        const v = verdict(r.status, r.json?.error)
        if (v === 'unchanged') { stats.saves.retried++; continue }
        if (v === 'unknown') {
          const why = `${method} ${r.status ?? r.text} ${r.json?.error ?? ''}`.trim()
          stats.unknownWhy.set(why, (stats.unknownWhy.get(why) ?? 0) + 1)
        }
        if (v === 'refused') stats.refusals.push(`${s.id} ${method} ${JSON.stringify(body)} answered ${r.status}: ${r.text}`)
        return v
      }
      return sent ? 'refused' : 'not sent'
    }

    /** One new P1 marker saved on `s` as `kind`; what it must be at the end is recorded. */
    let saveCount = 0
    const saveMarker = async (s, kind, { at = '' } = {}) => {
      const marker = writerMarker(s.i, saveCount++)
      const inPhase = phase
      const v = await save(s, marker, kind)
      stats.saves[v === 'not sent' ? 'notSent' : v]++
      if (v === 'durable') stats.byKind[kind]++
      const why = `${kind}${at} in phase ${inPhase}: ${v}`
      // Phase 2's saves are all answered before the restore, which removes them; one whose
      // outcome is unknown might still land after it.
      if (inPhase === 2) s.expected.set(marker, v === 'unknown' ? { expect: AT_MOST_ONCE, why: `${why}, might land after the restore` } : { expect: NEVER, why: `${why}, restored away` })
      else s.expected.set(marker, { expect: v === 'durable' ? ONCE : v === 'unknown' ? AT_MOST_ONCE : NEVER, why })
      return v
    }

    /** Each scene's P1 writer: saves a marker, pauses, again, until stopWriters(). */
    const startWriters = () => {
      for (const s of scenes) {
        s.writer = { stopped: false, done: null, turn: s.i }
        const w = s.writer
        w.done = (async () => {
          while (!w.stopped) {
            await saveMarker(s, SAVE_KINDS[w.turn++ % SAVE_KINDS.length])
            await sleep(WRITE_PAUSE_MS)
          }
        })()
      }
    }
    const stopWriters = async () => {
      for (const s of scenes) s.writer.stopped = true
      await Promise.all(scenes.map((s) => s.writer.done))
    }

    /**
     * Every client synced and holding exactly what the content API answers for its scene
     * (so the server has everything they typed); answers {scene id -> content}.
     */
    const settle = async (what, timeout = WAIT_MS) => {
      const started = performance.now()
      const contents = new Map()
      let last = null // why the last look did not agree
      const reasons = new Set()
      await waitFor(`${what}: every client synced and equal to the content API`, async () => {
        if (last) reasons.add(last.slice(0, 160))
        if (!all.every(isSynced)) { last = 'not all synced'; return false }
        const looks = await Promise.all(scenes.map(async (s) => [s, await getContent(s)]))
        for (const [s, content] of looks) {
          if (!content) { last = `${s.id}: no content (${s.lastGet.status} ${s.lastGet.text.slice(0, 80)})`; return false }
          const other = s.clients.find((c) => !sameBlocks(blocksOf(c.doc), content.blocks))
          if (other) { last = `${s.id} ${other.label}: ${difference(blocksOf(other.doc), content.blocks)}`; return false }
          contents.set(s.id, content)
        }
        return true
      }, {
        timeout,
        interval: 100,
        observe: () => ({
          unsynced: all.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, base: c.base, closes: c.closes.slice(-3) })),
          agreed: [...contents.keys()],
          last
        })
      })
      mark(`${what}: settled in ${round(performance.now() - started)} ms${reasons.size ? ` (waited for: ${[...reasons].join(' | ')})` : ''}`)
      return contents
    }

    // Phase 1: everyone writes; then a named version of every scene.
    phase = 1
    startWriters()
    mark('phase 1: typing and saving')
    await sleep(PHASE1_MS)
    phase = 0
    await stopWriters()
    const atVersion = await settle('after phase 1')
    for (const s of scenes) {
      const r = await api(s.id, 'POST', '/versions', { name: `before phase 2 (${run})` })
      assert.equal(r.status, 201, `${s.id}: saving a version answered ${r.status}: ${r.text}`)
      s.version = r.json.version
      s.atVersion = atVersion.get(s.id).blocks
      const v = await api(s.id, 'GET', `/versions/${s.version}/content`)
      assert.equal(v.status, 200, `${s.id}: reading version ${s.version} answered ${v.status}: ${v.text}`)
      assert.ok(sameBlocks(v.json.blocks, s.atVersion), `${s.id}: version ${s.version} is not the scene as it was: ${difference(v.json.blocks, s.atVersion)}`)
    }
    mark(`phase 1: versions saved (${scenes.map((s) => s.version).join(', ')})`)

    // Phase 2: everyone writes; then every scene is restored to its version.
    phase = 2
    startWriters()
    mark('phase 2: typing and saving')
    await sleep(PHASE2_MS)
    phase = 0
    await stopWriters()
    const beforeRestore = await settle('after phase 2')
    const restoreStarted = performance.now()
    for (const s of scenes) {
      const r = await api(s.id, 'POST', '/restore', { version: s.version })
      assert.equal(r.status, 200, `${s.id}: restoring version ${s.version} answered ${r.status}: ${r.text}`)
      s.restoreAnswer = r.json
    }
    // The restore answered once durable: the scene is exactly the version again, in the
    // content API and (the write-back answered too) in content_blocks.
    const restoreProblems = []
    await Promise.all(scenes.map(async (s) => {
      const content = await getContent(s)
      const p1 = await tables.read(s.id)
      for (const [place, blocks] of [['content API', content?.blocks], ['content_blocks', p1.blocks]]) {
        if (blocks && sameBlocks(blocks, s.atVersion)) continue
        restoreProblems.push(`${s.id}: restored to version ${s.version} (answer ${JSON.stringify(s.restoreAnswer)}), the ${place} holds other blocks: ` +
          (blocks ? difference(blocks, s.atVersion) : `no answer (${s.lastGet.status} ${s.lastGet.text})`) +
          `; the scene before the restore: ${JSON.stringify(plain(beforeRestore.get(s.id).blocks))}` +
          (blocks ? '\n  ' + checkPlace(`${s.id} ${place} after the restore`, blocks, s.expected, s.skeleton).join('\n  ') : ''))
      }
    }))
    assert.deepEqual(restoreProblems, [], `${restoreProblems.length} copies differ from the version they were restored to`)
    const noticeOf = (c) => c.doc.getMap('troupe').get('notice')
    const wantNotice = (s) => `Restored to version ${s.version} by ${P1_NAME}`
    await waitFor('every client to hold its scene\'s version again, with the notice', () => scenes.every((s) =>
      s.clients.every((c) => noticeOf(c)?.message === wantNotice(s) && sameBlocks(blocksOf(c.doc), s.atVersion))), {
      interval: 50,
      observe: () => scenes.flatMap((s) => s.clients.map((c) => ({
        c: c.label, notice: noticeOf(c)?.message, same: sameBlocks(blocksOf(c.doc), s.atVersion) || difference(blocksOf(c.doc), s.atVersion)
      })))
    })
    for (const s of scenes) {
      for (const c of s.clients) {
        const notice = noticeOf(c)
        assert.equal(notice.kind, 'restored', `${c.label}: notice ${JSON.stringify(notice)}`)
        assert.equal(notice.by, P1_NAME, `${c.label}: notice ${JSON.stringify(notice)}`)
        assert.ok(typeof notice.at === 'number' && notice.at > Date.now() - 60_000, `${c.label}: notice time ${JSON.stringify(notice)}`)
      }
    }
    const restoredMs = performance.now() - restoreStarted
    mark(`phase 2: ${scenes.length} restores, every client back at its version with the notice after ${round(restoredMs)} ms`)

    // Phase 3: everyone writes; a node that owns scenes is killed, node 4 is added.
    phase = 3
    startWriters()
    mark('phase 3: typing and saving')
    await sleep(PHASE3_BEFORE_KILL_MS)
    const victim = ctx.nodes.get(victimId)
    // Saves in flight when the owner dies: one of each kind on each of its scenes, sent now.
    const victimScenes = scenes.filter((s) => s.before.node === victimId)
    const atKill = Promise.all(victimScenes.flatMap((s) => SAVE_KINDS.map((kind) => saveMarker(s, kind, { at: ' sent at the kill' }))))
    await sleep(KILL_AFTER_SEND_MS)
    const killedAt = performance.now()
    await victim.kill()
    assert.equal(victim.exited?.signal, 'SIGKILL', `node ${victimId} did not die of SIGKILL: ${JSON.stringify(victim.exited)}`)
    mark(`phase 3: node ${victimId} SIGKILLed (owner of ${scenes.filter((s) => s.before.node === victimId).map((s) => s.id).join(', ')})`)
    let downMs = null
    const downWatch = waitFor(`node ${victimId} to be marked down`, async () => {
      const m = await ctx.membership()
      return m.state.nodes[String(victimId)]?.state === 'down'
    }, { interval: 50 }).then(() => { downMs = performance.now() - killedAt })
    downWatch.catch(() => {}) // awaited below; a rejection must not go unhandled meanwhile
    await sleep(PHASE3_BEFORE_ADD_MS)
    const addStartedAt = performance.now()
    const node4 = await ctx.startNode(4)
    const addOut = await ctx.ctlOk(['add', node4.rpc])
    assert.match(addOut, /node 4 added/, `troupectl add printed: ${addOut}`)
    const addMs = performance.now() - addStartedAt
    mark(`phase 3: node 4 started and added in ${round(addMs)} ms`)
    await sleep(PHASE3_AFTER_ADD_MS)
    phase = 0
    const stoppedAt = performance.now()
    await stopWriters()
    const atKillOutcomes = await atKill
    clearInterval(typer)
    mark('phase 3: everyone stopped')

    await downWatch
    mark(`node ${victimId} was marked down ${round(downMs)} ms after the kill`)
    const m = await waitFor(`node ${victimId} down and node 4 active`, async () => {
      const m = await ctx.membership()
      return m.state.nodes[String(victimId)]?.state === 'down' && m.state.nodes['4']?.state === 'active' ? m : null
    }, { interval: 100 })

    // The end: each scene's clients agree, and the owners' own write-back (nobody asks the
    // content API meanwhile, whose reads would write back first) brings content_blocks to
    // the same blocks.
    const p1 = new Map() // scene id -> {version, blocks} from content_blocks
    let lastEnd = null
    await waitFor('every client synced, each scene\'s clients agreeing, and content_blocks holding their blocks', async () => {
      if (!all.every(isSynced)) { lastEnd = 'not all synced'; return false }
      for (const s of scenes) {
        const blocks = blocksOf(s.clients[0].doc)
        const other = s.clients.find((c) => !sameBlocks(blocksOf(c.doc), blocks))
        if (other) { lastEnd = `${s.id} ${other.label}: ${difference(blocksOf(other.doc), blocks)}`; return false }
        if (!(p1.has(s.id) && sameBlocks(p1.get(s.id).blocks, blocks))) {
          const read = await tables.read(s.id)
          if (!sameBlocks(read.blocks, blocks)) { lastEnd = `${s.id} content_blocks vs ${s.clients[0].label}: ${difference(read.blocks, blocks)}`; return false }
          p1.set(s.id, read)
        }
      }
      return true
    }, {
      timeout: CATCH_UP_MS,
      interval: 100,
      observe: () => ({
        unsynced: all.filter((c) => !isSynced(c)).map((c) => ({ c: c.label, base: c.base, closes: c.closes.slice(-3) })),
        last: lastEnd
      })
    })
    const catchUpMs = performance.now() - stoppedAt
    mark(`content_blocks held every scene's document ${round(catchUpMs)} ms after everyone stopped`)
    const final = await settle('at the end')
    for (const s of scenes) s.after = await ctx.route(s.id)

    // 6. The counts, in every place.
    const problems = []
    const checked = new Map() // place -> marker counts checked
    const count = (s, place, blocks) => {
      const kind = place.replace(/ .*/, '')
      checked.set(kind, (checked.get(kind) ?? 0) + s.expected.size)
      problems.push(...checkPlace(`${s.id} ${place}`, blocks, s.expected, s.skeleton))
    }
    for (const s of scenes) {
      const content = final.get(s.id)
      for (const c of s.clients) count(s, `client ${c.label}`, blocksOf(c.doc))
      count(s, 'content-API', content.blocks)

      // A fresh stock client at the scene's owner now.
      const fresh = stockClient(`${s.after.url}/ws/scenes`, s.id, s.clients[0].token)
      await waitFor(`a fresh client of ${s.id} to sync`, () => isSynced(fresh), { timeout: 10_000 })
      const freshBlocks = blocksOf(fresh.doc)
      fresh.destroy()
      count(s, 'fresh-client', freshBlocks)
      if (!sameBlocks(freshBlocks, content.blocks)) problems.push(`${s.id}: a fresh client reads other blocks than the content API: ${difference(freshBlocks, content.blocks)}`)

      // content_blocks, as it held the document when everyone had stopped, and now (the
      // content API's reads wrote nothing new: its version is P1's).
      const now = await tables.read(s.id)
      count(s, 'content_blocks', p1.get(s.id).blocks)
      if (!sameBlocks(now.blocks, content.blocks)) problems.push(`${s.id}: content_blocks holds other blocks than the content API: ${difference(now.blocks, content.blocks)}`)
      if (now.version !== content.version) problems.push(`${s.id}: content_blocks is at version ${now.version}, the content API names ${content.version}`)
    }

    const expects = scenes.flatMap((s) => [...s.expected.values()])
    const byExpect = (e) => expects.filter((x) => x.expect === e).length
    const unknownLanded = scenes.reduce((k, s) => k + [...s.expected].filter(([mk, x]) => x.expect === AT_MOST_ONCE && countMarkers(final.get(s.id).blocks).has(mk)).length, 0)
    const moved = scenes.filter((s) => s.after.node !== s.before.node)
    console.log([
      `p1 interop (${tables.store}, ${round((performance.now() - t0) / 1000)} s): ${scenes.length} P1 scenes × ${CLIENTS_PER_SCENE} stock clients + 1 P1 writer; ` +
        `node ${victimId} SIGKILLed (leader: node ${leader}; marked down after ${round(downMs)} ms), node 4 added; epoch ${membership.state.epoch} -> ${m.state.epoch}; ` +
        `${moved.length} scenes moved: ${moved.map((s) => `${s.id} ${s.before.node}->${s.after.node}`).join(', ')}`,
      `  clients typed ${stats.typed[1]} + ${stats.typed[2]} (phase 2, restored away) + ${stats.typed[3]} markers, ${stats.typedAway} while away; ` +
        `P1 saves: ${stats.saves.durable} answered 200 (${SAVE_KINDS.map((k) => `${k} ${stats.byKind[k]}`).join(', ')}), ` +
        `${stats.saves.unknown} unknown (${[...stats.unknownWhy].map(([w, k]) => `${w} ×${k}`).join(', ') || 'none'}; ${unknownLanded} of them landed), ` +
        `${stats.saves.refused} refused, ${stats.saves.notSent} never sent; ${stats.saves.retried} tries again after 409/503 moving, ${stats.saves.readFailures} failed reads`,
      `  markers expected: ${byExpect(ONCE)} exactly once, ${byExpect(AT_MOST_ONCE)} at most once, ${byExpect(NEVER)} never; ` +
        `counts checked: ${[...checked].map(([p, k]) => `${p} ${k}`).join(', ')}`,
      `  versions saved ${scenes.length}, restored ${scenes.length} (every client back at its version with the notice after ${round(restoredMs)} ms); ` +
        `${atKillOutcomes.length} saves sent ${KILL_AFTER_SEND_MS} ms before the kill: ${tally(atKillOutcomes)}; node 4 start + troupectl add ${round(addMs)} ms; ` +
        `clients converged and content_blocks (the owners' own write-back) held their blocks ${round(catchUpMs)} ms after everyone stopped`,
      `  timeline: ${timeline.join('; ')}`
    ].join('\n'))

    assert.deepEqual(problems.slice(0, 40), [], `${problems.length} problems (first 40 shown)`)
    assert.equal(stats.refusals.length, 0, `P1 writes refused: ${stats.refusals.slice(0, 5).join('\n')}`)
    assert.ok(stats.saves.durable >= scenes.length * 3, `only ${stats.saves.durable} P1 saves were answered 200`)
    assert.ok(stats.typed[3] > 0 && stats.typed[2] > 0, 'the clients typed nothing in a phase')
    for (const s of scenes.filter((s) => s.before.node === victimId)) {
      assert.notEqual(s.after.node, victimId, `${s.id} is still routed to the killed node ${victimId}`)
      for (const c of s.clients) assert.notEqual(c.base, victim.url, `${c.label} never left the killed node`)
    }
  }))
})
