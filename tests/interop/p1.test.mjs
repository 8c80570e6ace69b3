// Content API interop: stock yjs + y-websocket 1.5 clients type into screenplay blocks
// (the `prosemirror` fragment, one Y.XmlElement per block) while a backend writes the same
// scenes through the router's content API (PATCH inserts), a named version is saved and
// restored, an owner node is killed and a node added. At the end every marker is where it
// must be — in every client's document, in a fresh client and in the content API:
//   - typed by a client (outside the restored-away phase): exactly once;
//   - written by the backend and answered 200: exactly once; with no answer: at most once;
//   - typed or written between the saved version and its restore: nowhere (the restore makes
//     the scene that version again), and every client saw the restore's notice.
//
// Run: TROUPE_BIN_DIR=target/debug node --test tests/interop/p1.test.mjs

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import * as Y from 'yjs'

import { connectFollowing, isSynced, mintToken, stockClient, suiteCluster, waitFor, withLogs } from './harness.mjs'

const SCENES = 4
const CLIENTS = 2
const TYPE_EVERY_MS = 60
const WRITE_EVERY_MS = 300

/** Every marker (`<…>`) in a document's blocks, with how often it occurs. */
export function markers (doc) {
  const text = doc.getXmlFragment('prosemirror').toArray()
    .map((el) => el.toArray().map((t) => t.toString()).join(''))
    .join('\n')
  return countMarkers(text)
}

/** Markers in a text: `<…>` runs, counted. */
export function countMarkers (text) {
  const counts = new Map()
  for (const m of text.matchAll(/<[^<>]+>/g)) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1)
  return counts
}

/** What is wrong with `counts` given the markers expected exactly once, at most once, never. */
export function problems (counts, { once, atMostOnce = [], never = [] }) {
  const out = []
  for (const m of once) if ((counts.get(m) ?? 0) !== 1) out.push(`${m} x${counts.get(m) ?? 0} (want 1)`)
  for (const m of atMostOnce) if ((counts.get(m) ?? 0) > 1) out.push(`${m} x${counts.get(m)} (want at most 1)`)
  for (const m of never) if (counts.has(m)) out.push(`${m} x${counts.get(m)} (restored away, want 0)`)
  return out
}

test('the checker counts markers and can fail', () => {
  const counts = countMarkers('<a1><b2>\n<a1><c3>')
  assert.deepEqual(problems(counts, { once: ['<b2>'], atMostOnce: ['<c3>'], never: [] }), [])
  assert.deepEqual(problems(counts, { once: ['<a1>', '<z9>'], never: ['<c3>'] }),
    ['<a1> x2 (want 1)', '<z9> x0 (want 1)', '<c3> x1 (restored away, want 0)'])
})

/** A client's own block: an action block it types its markers into, made once it synced. */
function ownBlock (c) {
  const fragment = c.doc.getXmlFragment('prosemirror')
  for (const el of fragment.toArray()) {
    const text = el.toArray()[0]
    if (text && text.toString().startsWith(`${c.label}|`)) return text
  }
  const el = new Y.XmlElement('action')
  const text = new Y.XmlText(`${c.label}|`)
  el.insert(0, [text])
  fragment.push([el])
  return text
}

const ctx = suiteCluster({ voters: 3, spares: 1, prefix: 'troupe-interop-p1-' })

test('clients, content API writes, a restore, a node killed and one added: every marker where it must be', { timeout: 180_000 }, withLogs(ctx, async () => {
  const scenes = Array.from({ length: SCENES }, (_, i) => `p1-${process.pid}-${i}`)
  const tokens = new Map(scenes.map((s) => [s, mintToken(ctx.secret, { sub: 'backend', name: 'Ops', scenes: { [s]: 'edit' } })]))
  const clients = []
  for (const scene of scenes) {
    const owner = await ctx.route(scene)
    for (let i = 0; i < CLIENTS; i++) {
      const token = mintToken(ctx.secret, { sub: `w${i}`, scenes: { [scene]: 'edit' } })
      const c = connectFollowing(ctx, { scene, token, base: owner.url, label: `${scene}/c${i}`, reresolve: true })
      c.markers = { typed: [], restoredAway: [] }
      clients.push(c)
    }
  }
  await waitFor('every client synced', () => clients.every(isSynced), { timeout: 20_000 })
  for (const c of clients) c.block = ownBlock(c)

  // The writers: clients type into their blocks, the backend inserts blocks by PATCH.
  let phase = 'a'
  let typing = true
  const writes = { acked: [], unknown: [], restoredAway: [] }
  let n = 0
  const typist = setInterval(() => {
    if (!typing) return
    for (const c of clients) {
      const marker = `<${c.label}-${phase}${n}>`
      c.block.insert(c.block.length, marker)
      if (phase === 'b') c.markers.restoredAway.push(marker)
      else c.markers.typed.push(marker)
    }
    n++
  }, TYPE_EVERY_MS)
  const api = (scene, method, path, body) => fetch(`${ctx.router.base}/v1/scenes/${encodeURIComponent(scene)}${path}`, {
    method,
    headers: { authorization: `Bearer ${tokens.get(scene)}`, 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
    signal: AbortSignal.timeout(10_000)
  })
  let w = 0
  const writer = setInterval(() => {
    if (!typing) return
    for (const scene of scenes) {
      const marker = `<${scene}/api-${phase}${w}>`
      api(scene, 'PATCH', '/content', { edits: [{ op: 'insert', at: 0, blocks: [{ type: 'action', text: marker }] }] })
        .then((res) => {
          if (res.status === 200) (phase === 'b' ? writes.restoredAway : writes.acked).push(marker)
          else if (res.status >= 500 && res.status !== 503) writes.unknown.push(marker)
          // 4xx and 503 (moving: nothing merged) leave the marker out.
        }, () => writes.unknown.push(marker))
    }
    w++
  }, WRITE_EVERY_MS)

  const pause = async (what) => {
    typing = false
    await sleep(WRITE_EVERY_MS * 2)
    await waitFor(`${what}: every scene's clients in step`, () => clients.every(isSynced) && scenes.every((s) => {
      const docs = clients.filter((c) => c.scene === s).map((c) => JSON.stringify([...markers(c.doc)].sort()))
      return docs.every((d) => d === docs[0])
    }), { timeout: 20_000, interval: 100 })
  }

  // Phase a, then a named version of every scene.
  await sleep(2500)
  await pause('before the version')
  const versions = new Map()
  for (const scene of scenes) {
    const res = await api(scene, 'POST', '/versions', { name: 'before phase b' })
    const body = await res.text()
    assert.equal(res.status, 201, body)
    versions.set(scene, JSON.parse(body).version)
  }

  // Phase b: everything typed or written now is restored away.
  phase = 'b'
  typing = true
  await sleep(1500)
  await pause('before the restore')
  for (const scene of scenes) {
    const res = await api(scene, 'POST', '/restore', { version: versions.get(scene) })
    const body = await res.text()
    assert.equal(res.status, 200, body)
  }
  await waitFor('every client saw the restore and its notice', () => clients.every((c) => {
    const notice = c.doc.getMap('troupe').get('notice')
    return notice && notice.message === `Restored to version ${versions.get(c.scene)} by Ops` &&
      c.markers.restoredAway.every((m) => !markers(c.doc).has(m))
  }), { timeout: 20_000, interval: 100 })

  // Phase c: an owner killed, a node added, while everyone writes.
  phase = 'c'
  typing = true
  await sleep(1500)
  const victim = ctx.nodes.get((await ctx.route(scenes[0])).node)
  await victim.kill()
  await sleep(2000)
  const node4 = await ctx.startNode(4)
  await ctx.ctlOk(['add', node4.rpc])
  await sleep(2500)
  await pause('at the end')
  clearInterval(typist)
  clearInterval(writer)
  await sleep(500)

  // The check, in every client, a fresh client and the content API.
  const report = []
  for (const scene of scenes) {
    const own = clients.filter((c) => c.scene === scene)
    const expect = {
      once: [...own.flatMap((c) => c.markers.typed), ...writes.acked.filter((m) => m.startsWith(`<${scene}/`))],
      atMostOnce: writes.unknown.filter((m) => m.startsWith(`<${scene}/`)),
      never: [...own.flatMap((c) => c.markers.restoredAway), ...writes.restoredAway.filter((m) => m.startsWith(`<${scene}/`))]
    }
    const places = own.map((c) => [c.label, markers(c.doc)])
    const owner = await ctx.route(scene)
    const fresh = stockClient(`${owner.url}/ws/scenes`, scene, tokens.get(scene))
    await waitFor(`a fresh client of ${scene} synced`, () => isSynced(fresh), { timeout: 10_000 })
    places.push([`${scene}/fresh`, markers(fresh.doc)])
    fresh.destroy()
    const res = await api(scene, 'GET', '/content')
    assert.equal(res.status, 200)
    const blocks = (await res.json()).blocks
    places.push([`${scene}/content API`, countMarkers(blocks.map((b) => b.text).join('\n'))])
    for (const [where, counts] of places) {
      const wrong = problems(counts, expect)
      assert.deepEqual(wrong, [], `${where}: ${wrong.length} wrong`)
    }
    report.push(`${scene}: ${expect.once.length} once, ${expect.atMostOnce.length} at most once, ${expect.never.length} restored away; ${places.length} places agree`)
  }
  console.log(`p1 interop: ${writes.acked.length} API writes answered 200, ${writes.unknown.length} unknown\n  ${report.join('\n  ')}`)
}))
