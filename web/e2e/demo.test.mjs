// End to end, in headless Chromium (Debian's `chromium`, driven by playwright-core): a
// real local cluster of 3 nodes and a router (`troupe-chaos up`, which serves the built
// demo from web/dist and mints demo tokens), two users in one scene.
//
// - both type at once and end with the same text;
// - each sees the other's avatar, remote cursor and "… is typing";
// - one page goes offline, types, comes back: its edits arrive;
// - the owner node of the scene is killed with SIGKILL mid-typing: the status turns yellow,
//   then green, and no character typed in either window is lost.
//
// Screenshots of both windows go to web/e2e/screenshots/.
//
//   node --test e2e/          (from web/, after `npm run build` and `cargo build --bins`)

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, execFileSync } from 'node:child_process'
import http from 'node:http'
import net from 'node:net'
import { createInterface } from 'node:readline'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..')
const shots = join(here, 'screenshots')
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'

let cluster
let browser
const proxies = []

/** `troupe-chaos up --nodes 3` on free ports; resolves with the router URL and node ports. */
async function startCluster () {
  const bin = [join(root, 'target', 'debug'), join(root, 'target', 'release')]
    .map((dir) => join(dir, 'troupe-chaos'))
    .find((path) => existsSync(path))
  assert.ok(bin, 'troupe-chaos is built (cargo build --bins)')
  const data = mkdtempSync(join(tmpdir(), 'troupe-e2e-'))
  const base = 21000 + Math.floor(Math.random() * 4000)
  const routerPort = base + 500
  // The embedded store: this test is about the browser, not Postgres.
  const env = { ...process.env, TROUPE_LOG: 'warn' }
  delete env.TROUPE_DATABASE_URL
  const child = spawn(bin, ['up', '--nodes', '3', '--base-port', String(base),
    '--router-port', String(routerPort), '--data-dir', data], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env
  })
  const lines = createInterface({ input: child.stdout })
  const nodes = {}
  const internal = []
  const admin = {}
  const router = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('troupe-chaos up printed no router')), 60000)
    child.on('exit', (code) => reject(new Error(`troupe-chaos up exited with ${code}`)))
    lines.on('line', (line) => {
      const node = line.match(/^node (\d+)\s+ws:\/\/[\d.]+:(\d+)/)
      if (node) nodes[node[1]] = Number(node[2])
      const rpc = line.match(/\(internal ([\d.]+:\d+)\)/)
      if (rpc) internal.push(rpc[1])
      const exported = line.match(/^\s*export (TROUPE_INTERNAL_\w+)=(\S+)/)
      if (exported) admin[exported[1]] = exported[2]
      const url = line.match(/^router\s+(http:\/\/\S+)/)
      if (url) {
        clearTimeout(timer)
        resolve(url[1])
      }
    })
  })
  return { child, router, nodes, data, internal, admin }
}

/** `troupectl` against the test cluster, as its operator (the admin certificate it made). */
function troupectl (...args) {
  const bin = [join(root, 'target', 'debug'), join(root, 'target', 'release')]
    .map((dir) => join(dir, 'troupectl'))
    .find((path) => existsSync(path))
  return execFileSync(bin, ['--cluster', cluster.internal.join(','), ...args], {
    env: { ...process.env, ...cluster.admin }
  }).toString()
}

/** The pid of the process listening on `port` (the node to kill). */
function pidListeningOn (port) {
  const out = execFileSync('ss', ['-Htlnp', `sport = :${port}`]).toString()
  const m = out.match(/pid=(\d+)/)
  assert.ok(m, `a process listens on ${port}`)
  return Number(m[1])
}

/**
 * An HTTP proxy whose traffic can be cut and restored: a page behind it loses its network
 * for real — open WebSockets stall and die, new connections fail — which Chromium's
 * offline emulation does not do to open WebSockets.
 */
async function cuttableProxy () {
  const open = new Set()
  const tunnels = new Set()
  let cut = false
  let noWebSockets = false
  const track = (socket) => {
    open.add(socket)
    socket.on('close', () => open.delete(socket))
    socket.on('error', () => socket.destroy())
  }
  const server = http.createServer((req, res) => {
    if (cut) return req.socket.destroy()
    const target = new URL(req.url)
    const upstream = http.request({
      host: target.hostname,
      port: target.port,
      method: req.method,
      path: target.pathname + target.search,
      headers: req.headers
    }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers)
      answer.pipe(res)
    })
    upstream.on('error', () => res.destroy())
    req.pipe(upstream)
  })
  server.on('connection', track)
  server.on('connect', (req, client, head) => {
    // WebSockets to the nodes (ws://) go through CONNECT tunnels; page loads and fetches
    // to the router are plain proxied requests.
    if (cut || noWebSockets) return client.destroy()
    tunnels.add(client)
    client.on('close', () => tunnels.delete(client))
    const [host, port] = req.url.split(':')
    const upstream = net.connect(Number(port), host, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      upstream.write(head)
      upstream.pipe(client)
      client.pipe(upstream)
    })
    track(upstream)
    upstream.on('close', () => client.destroy())
    client.on('close', () => upstream.destroy())
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  proxies.push(server)
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut () {
      cut = true
      for (const socket of open) socket.destroy()
    },
    restore () { cut = false },
    /** WebSockets die and cannot open again; HTTP (the content API) still works. */
    blockWebSockets () {
      noWebSockets = true
      for (const socket of tunnels) socket.destroy()
    },
    allowWebSockets () { noWebSockets = false },
    close () {
      for (const socket of open) socket.destroy()
      server.close()
    }
  }
}

async function openEditor (user, scene, proxy) {
  const context = await browser.newContext({
    viewport: { width: 1100, height: 760 },
    // Chromium skips proxies for loopback unless told not to.
    ...(proxy ? { proxy: { server: proxy.url, bypass: '<-loopback>' } } : {})
  })
  const page = await context.newPage()
  page.on('pageerror', (error) => console.error(`[${user}] page error:`, error))
  // Every WebSocket URL the page opens: the token must never be in one.
  const sockets = []
  page.on('websocket', (ws) => sockets.push(ws.url()))
  await page.goto(`${cluster.router}/?user=${encodeURIComponent(user)}&scene=${scene}`)
  await waitStatus(page, 'green', 20000)
  return { context, page, user, sockets }
}

async function waitStatus (page, colour, timeout = 15000) {
  await page.waitForSelector(`#dot[data-status="${colour}"]`, { timeout })
}

/** The document's text, a line per block, without the other users' cursor labels. */
const editorText = (page) => page.$eval('#editor .ProseMirror', (el) => {
  const copy = el.cloneNode(true)
  copy.querySelectorAll('.ProseMirror-yjs-cursor').forEach((cursor) => cursor.remove())
  return [...copy.children].map((block) => block.textContent).join('\n')
})

/** Types `text` into the page's editor at the end of the document, key by key. */
async function typeAtEnd (page, text) {
  await page.click('#editor .ProseMirror')
  await page.keyboard.press('Control+End')
  await page.keyboard.type(text, { delay: 15 })
}

/**
 * `writer` starts a new block at the end of the document, right where `other`'s cursor is
 * drawn (the editor handles Ctrl+End itself: the browser's caret would land beside the
 * other user's cursor widget, where Enter does nothing).
 */
async function startBlockAtEnd (other, writer) {
  await writer.page.click('#editor .ProseMirror')
  await writer.page.keyboard.press('Control+End')
  await writer.page.keyboard.press('Enter')
}

/**
 * Types `text` at the end of the document's first block. A click right of the block's text
 * puts the caret at its end; the End key can stop short beside another user's cursor
 * widget (seen once: the text landed at the start of the block).
 */
async function typeInFirstBlock (page, text) {
  const box = await page.locator('#editor .ProseMirror > :first-child').boundingBox()
  await page.mouse.click(box.x + box.width - 2, box.y + box.height / 2)
  await page.keyboard.type(text, { delay: 15 })
}

async function eventually (what, check, timeout = 15000) {
  const deadline = Date.now() + timeout
  let last
  while (Date.now() < deadline) {
    last = await check()
    if (last === true) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  assert.fail(`${what} (last: ${JSON.stringify(last)})`)
}

before(async () => {
  assert.ok(existsSync(join(root, 'web', 'dist', 'index.html')), 'the demo is built (npm run build)')
  assert.ok(existsSync(CHROMIUM), `Chromium at ${CHROMIUM} (apt-get install -y chromium)`)
  mkdirSync(shots, { recursive: true })
  cluster = await startCluster()
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
})

after(async () => {
  await browser?.close()
  for (const server of proxies) {
    server.closeAllConnections?.()
    server.close()
  }
  if (cluster) {
    const exited = cluster.child.exitCode !== null
      ? Promise.resolve()
      : new Promise((resolve) => cluster.child.on('exit', resolve))
    cluster.child.kill('SIGTERM')
    await exited
    rmSync(cluster.data, { recursive: true, force: true })
  }
})

test('two writers, presence, offline, a node killed mid-typing, a restore, a frozen owner', async () => {
  const scene = `e2e-${Date.now().toString(36)}`
  const bobsNetwork = await cuttableProxy()
  const alice = await openEditor('Alice Hart', scene)
  const bob = await openEditor('Bob Stone', scene, bobsNetwork)

  // Alice writes the heading; then both type at once, each in a block of their own (at
  // one spot their keystrokes would interleave, as they should, and hide the check).
  await typeAtEnd(alice.page, 'INT. KITCHEN - NIGHT')
  await eventually('Bob sees the heading', async () =>
    (await editorText(bob.page)).includes('INT. KITCHEN - NIGHT'))
  await startBlockAtEnd(alice, bob)
  await eventually('Alice sees the block Bob started', async () =>
    (await alice.page.$$eval('#editor .ProseMirror > *', (blocks) => blocks.length)) === 2 ||
    editorText(alice.page))
  await Promise.all([
    typeInFirstBlock(alice.page, ' (CONTINUOUS)'),
    typeAtEnd(bob.page, 'Rain hammers the window.')
  ])
  await eventually('both windows hold the same text', async () => {
    const [a, b] = await Promise.all([editorText(alice.page), editorText(bob.page)])
    return (a === b && a.includes('INT. KITCHEN - NIGHT (CONTINUOUS)') &&
      a.includes('Rain hammers the window.')) || [a, b]
  })

  // Presence: avatars, the remote cursor with the name, "… is typing".
  await alice.page.waitForSelector('#avatars .avatar[data-user="Bob Stone"]')
  await bob.page.waitForSelector('#avatars .avatar[data-user="Alice Hart"]')
  await alice.page.waitForSelector('.ProseMirror-yjs-cursor >> text=Bob Stone')
  const typing = typeAtEnd(bob.page, ' A kettle screams.')
  await alice.page.waitForSelector('#typing >> text=Bob Stone is typing')
  await typing
  await waitStatus(bob.page, 'green')
  await eventually('saved', async () => (await bob.page.textContent('#status-text')) === 'all changes saved')
  await alice.page.screenshot({ path: join(shots, 'alice.png') })
  await bob.page.screenshot({ path: join(shots, 'bob.png') })

  // Offline: Bob's edits wait, then arrive.
  bobsNetwork.cut()
  await eventually('Bob sees that he is offline', async () =>
    (await bob.page.getAttribute('#dot', 'data-status')) !== 'green')
  await typeAtEnd(bob.page, ' (offline line)')
  await new Promise((resolve) => setTimeout(resolve, 500))
  assert.ok(!(await editorText(alice.page)).includes('(offline line)'), 'nothing crossed while offline')
  bobsNetwork.restore()
  await eventually('the offline edit arrives', async () =>
    (await editorText(alice.page)).includes('(offline line)'), 20000)

  // A frozen owner (SIGSTOP): once an edit waits a second for its ack, each page asks the
  // router and moves to the new owner — seconds, not y-websocket's 30 s timeout. (Before
  // the kill below: a frozen node and a dead one would leave the 3 voters no majority.)
  const frozen = await (await fetch(`${cluster.router}/v1/route/${scene}`)).json()
  const frozenPid = pidListeningOn(cluster.nodes[frozen.node])
  process.kill(frozenPid, 'SIGSTOP')
  const frozenAt = Date.now()
  try {
    const aliceFrozen = ' Alice types into a frozen owner.'
    const bobFrozen = ' Bob as well.'
    await startBlockAtEnd(bob, alice)
    await Promise.all([typeInFirstBlock(alice.page, aliceFrozen), typeAtEnd(bob.page, bobFrozen)])
    await eventually('both pages hold what both typed into the frozen owner', async () => {
      const [a, c] = await Promise.all([editorText(alice.page), editorText(bob.page)])
      return (a === c && a.includes(aliceFrozen.trim()) && a.includes(bobFrozen.trim())) || [a, c]
    }, 20000)
    await waitStatus(alice.page, 'green', 20000)
    await waitStatus(bob.page, 'green', 20000)
    const took = Date.now() - frozenAt
    console.log(`frozen owner: both pages saved and in step again ${took} ms after SIGSTOP`)
    assert.ok(took < 10000, `a frozen owner cost the pages ${took} ms`)
    const movedFrom = await (await fetch(`${cluster.router}/v1/route/${scene}`)).json()
    assert.notEqual(movedFrom.node, frozen.node, 'the scene moved off the frozen node')
  } finally {
    process.kill(frozenPid, 'SIGCONT')
  }

  // Kill the owner mid-typing: yellow, then green, nothing lost. They type in different
  // blocks: keystrokes at one spot would interleave (as they should) and hide the check.
  await startBlockAtEnd(alice, bob)
  const route = await (await fetch(`${cluster.router}/v1/route/${scene}`)).json()
  const pid = pidListeningOn(cluster.nodes[route.node])
  const aliceWords = ' Alice keeps typing through the failover.'
  const bobWords = ' Bob too, every single key.'
  const typingA = typeInFirstBlock(alice.page, aliceWords)
  const typingB = typeAtEnd(bob.page, bobWords)
  await new Promise((resolve) => setTimeout(resolve, 150))
  process.kill(pid, 'SIGKILL')
  await waitStatus(alice.page, 'yellow', 10000)
  await Promise.all([typingA, typingB])
  await waitStatus(alice.page, 'green', 20000)
  await waitStatus(bob.page, 'green', 20000)
  await eventually('every character survives, in both windows', async () => {
    const [a, b] = await Promise.all([editorText(alice.page), editorText(bob.page)])
    return (a === b && a.includes(aliceWords.trim()) && a.includes(bobWords.trim()) &&
      a.includes('(offline line)') && a.includes('A kettle screams.')) || [a, b]
  }, 20000)
  const moved = await (await fetch(`${cluster.router}/v1/route/${scene}`)).json()
  assert.notEqual(moved.node, route.node, 'the scene moved to a survivor')

  // A fresh window reads the same.
  const carol = await openEditor('Carol Fresh', scene)
  await eventually('a fresh window reads the same text', async () =>
    (await editorText(carol.page)) === (await editorText(alice.page)))
  // …with a caret, not the whole scene selected (a first keystroke would replace it).
  await eventually('a fresh window starts with a caret', async () =>
    carol.page.evaluate(() => window.getSelection().isCollapsed))
  await alice.page.screenshot({ path: join(shots, 'alice-after-failover.png') })
  bobsNetwork.close()

  // History: a named version, more typing, then a restore through the scene API: every
  // window converges without reloading and says who restored what.
  const { token } = await (await fetch(`${cluster.router}/v1/dev/token?user=Dana%20Ops`)).json()
  const api = (method, path, body) => fetch(`${cluster.router}/v1/scenes/${scene}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body && JSON.stringify(body)
  })
  const draft = await editorText(alice.page)
  const saved = await (await api('POST', '/versions', { name: 'Before the rewrite' })).json()
  assert.equal(typeof saved.version, 'number', JSON.stringify(saved))
  const dropped = ' A line the restore takes back.'
  await typeAtEnd(alice.page, dropped)
  await eventually('Carol sees the new line', async () =>
    (await editorText(carol.page)).includes(dropped.trim()))
  const restored = await api('POST', '/restore', { version: saved.version })
  assert.equal(restored.status, 200, await restored.text())
  for (const editor of [alice, carol]) {
    await eventually(`${editor.user} sees the restored scene`, async () => {
      const text = await editorText(editor.page)
      return text === draft || text
    })
    await editor.page.waitForSelector(`#notice >> text=Restored to version ${saved.version} by Dana Ops`)
  }
  await carol.page.screenshot({ path: join(shots, 'carol-after-restore.png') })


  // The token travelled in the WebSocket subprotocol header, never in a URL.
  for (const editor of [alice, bob, carol]) {
    assert.ok(editor.sockets.length > 0, `${editor.user} opened no WebSocket`)
    for (const url of editor.sockets) {
      assert.ok(!/[?&]token=/.test(url) && !url.includes('eyJ'), `${editor.user} opened ${url}`)
    }
  }
})

test('the kill switch: both writers fall back to autosave, keep typing, and come back live with everything once; read-only and back', async () => {
  const scene = `flip-${Date.now().toString(36)}`
  const alice = await openEditor('Alice Flip', scene)
  const bob = await openEditor('Bob Flip', scene)
  await typeAtEnd(alice.page, 'INT. NEWSROOM - DAY')
  await eventually('Bob sees the heading', async () =>
    (await editorText(bob.page)).includes('INT. NEWSROOM - DAY'))
  await startBlockAtEnd(alice, bob)
  await Promise.all([
    typeInFirstBlock(alice.page, ' [alice live]'),
    typeAtEnd(bob.page, '[bob live]')
  ])

  // Collaboration off for everyone, while both keep typing.
  const typingA = typeInFirstBlock(alice.page, ' [alice typing through the switch]')
  const typingB = typeAtEnd(bob.page, ' [bob typing through the switch]')
  const flipped = Date.now()
  assert.match(troupectl('flags', 'set', 'enableYjs=false'), /enableYjs true -> false/)
  await Promise.all([typingA, typingB])
  for (const editor of [alice, bob]) {
    await eventually(`${editor.user} saves with autosave`, async () =>
      /autosave/.test(await editor.page.textContent('#status-text')) || await editor.page.textContent('#status-text'))
  }
  console.log(`kill switch: both pages in autosave mode ${Date.now() - flipped} ms after the flag flip`)
  await Promise.all([
    typeInFirstBlock(alice.page, ' [alice autosave]'),
    typeAtEnd(bob.page, ' [bob autosave]')
  ])
  for (const editor of [alice, bob]) {
    await eventually(`${editor.user}'s autosave is saved`, async () =>
      (await editor.page.textContent('#status-text')) === 'saved with autosave' || await editor.page.textContent('#status-text'))
  }
  await alice.page.screenshot({ path: join(shots, 'alice-autosave.png') })

  // On again: both come back live, on the server's document, with everything once.
  const back = Date.now()
  troupectl('flags', 'set', 'enableYjs=true')
  const phrases = ['INT. NEWSROOM - DAY', '[alice live]', '[bob live]', '[alice typing through the switch]',
    '[bob typing through the switch]', '[alice autosave]', '[bob autosave]']
  await eventually('both pages are live again and hold everything typed, once', async () => {
    const [a, b] = await Promise.all([editorText(alice.page), editorText(bob.page)])
    const dots = await Promise.all([alice, bob].map((e) => e.page.getAttribute('#dot', 'data-status')))
    const once = phrases.every((p) => a.split(p).length === 2)
    return (a === b && once && dots.every((d) => d === 'green')) || [a, b, dots]
  }, 30000)
  console.log(`kill switch off: both pages live again ${Date.now() - back} ms later`)
  // And live means live: a keystroke crosses at once.
  await typeAtEnd(bob.page, ' [bob live again]')
  await eventually('Alice sees Bob live again', async () =>
    (await editorText(alice.page)).includes('[bob live again]'))
  await alice.page.screenshot({ path: join(shots, 'alice-back-live.png') })

  // Realtime editing off for this scene: the pages turn read-only (told by the node, no
  // reload), then editable again when it is back on.
  const editable = (editor) => editor.page.getAttribute('#editor .ProseMirror', 'contenteditable')
  troupectl('flags', 'set', '--scene', scene, 'enableRealtimeEditing=false')
  for (const editor of [alice, bob]) {
    await eventually(`${editor.user}'s page turns read-only`, async () => (await editable(editor)) === 'false' || await editable(editor))
  }
  await bob.page.screenshot({ path: join(shots, 'bob-read-only.png') })
  troupectl('flags', 'set', '--scene', scene, 'enableRealtimeEditing=default')
  for (const editor of [alice, bob]) {
    await eventually(`${editor.user}'s page is editable again`, async () => (await editable(editor)) === 'true' || await editable(editor))
  }
  await typeAtEnd(alice.page, ' [alice editing again]')
  await eventually('Bob sees Alice editing again', async () =>
    (await editorText(bob.page)).includes('[alice editing again]'))
})

test('a page whose WebSockets are blocked saves with autosave, then comes back live; the other writer sees everything', async () => {
  const scene = `blocked-${Date.now().toString(36)}`
  const network = await cuttableProxy()
  const alice = await openEditor('Alice Blocked', scene, network)
  const bob = await openEditor('Bob Open', scene)
  await typeAtEnd(alice.page, 'EXT. ROOFTOP - NIGHT')
  await eventually('Bob sees the heading', async () =>
    (await editorText(bob.page)).includes('EXT. ROOFTOP - NIGHT'))

  network.blockWebSockets()
  const blocked = Date.now()
  await typeAtEnd(alice.page, ' [typed with no WebSocket]')
  await eventually('Alice falls back to autosave', async () =>
    /autosave/.test(await alice.page.textContent('#status-text')) || await alice.page.textContent('#status-text'), 30000)
  console.log(`websocket blocked: autosave after ${Date.now() - blocked} ms (fallbackAfter 10 s)`)
  await eventually('Bob sees what Alice saved with autosave', async () =>
    (await editorText(bob.page)).includes('[typed with no WebSocket]'), 20000)
  await startBlockAtEnd(alice, bob)
  await typeAtEnd(bob.page, '[bob live meanwhile]')
  await alice.page.screenshot({ path: join(shots, 'alice-websocket-blocked.png') })

  network.allowWebSockets()
  const allowed = Date.now()
  const phrases = ['EXT. ROOFTOP - NIGHT', '[typed with no WebSocket]', '[bob live meanwhile]']
  await eventually('Alice is live again, with everything once', async () => {
    const [a, b] = await Promise.all([editorText(alice.page), editorText(bob.page)])
    const dot = await alice.page.getAttribute('#dot', 'data-status')
    return (dot === 'green' && a === b && phrases.every((p) => a.split(p).length === 2)) || [dot, a, b]
  }, 30000)
  console.log(`websocket allowed again: live after ${Date.now() - allowed} ms`)
  await typeAtEnd(alice.page, ' [alice live again]')
  await eventually('Bob sees Alice live again', async () =>
    (await editorText(bob.page)).includes('[alice live again]'))
  network.close()
})

test('edits made offline survive a closed tab and arrive once on the next visit', async () => {
  const scene = `tab-${Date.now().toString(36)}`
  const network = await cuttableProxy()
  const alice = await openEditor('Alice Tab', scene, network)
  const bob = await openEditor('Bob Watch', scene)
  await typeAtEnd(alice.page, 'INT. TRAIN - DAY')
  await eventually('Bob sees the heading', async () =>
    (await editorText(bob.page)).includes('INT. TRAIN - DAY'))

  network.cut()
  await eventually('Alice sees that she is offline', async () =>
    (await alice.page.getAttribute('#dot', 'data-status')) !== 'green')
  const words = ' [typed offline, then the tab closed]'
  await typeAtEnd(alice.page, words)
  await new Promise((resolve) => setTimeout(resolve, 1500)) // IndexedDB stores within a second
  await alice.page.close()
  network.restore()
  assert.ok(!(await editorText(bob.page)).includes(words.trim()), 'nothing crossed while offline')

  // The next visit, in the same browser: the edit arrives, once.
  const page = await alice.context.newPage()
  await page.goto(`${cluster.router}/?user=${encodeURIComponent('Alice Tab')}&scene=${scene}`)
  await waitStatus(page, 'green', 20000)
  await eventually('Bob sees what was typed before the tab closed, once', async () => {
    const text = await editorText(bob.page)
    return text.split(words.trim()).length === 2 || text
  }, 20000)
  await eventually('the new tab reads the same', async () =>
    (await editorText(page)) === (await editorText(bob.page)))
  network.close()
})

test('a token refused mid-session (the user revoked) is replaced through getToken, and nothing typed is lost', async () => {
  const scene = `token-${Date.now().toString(36)}`
  const alice = await openEditor('Alice Token', scene)
  const bob = await openEditor('Bob Token', scene)
  await typeAtEnd(alice.page, 'INT. BANK - DAY')
  await eventually('Bob sees the heading', async () =>
    (await editorText(bob.page)).includes('INT. BANK - DAY'))
  // Revoked: Alice's connection closes with 4401 and her token is refused from now on; the
  // page asks the router for a new token (issued now, so accepted) and carries on.
  const sockets = alice.sockets.length
  const typing = typeAtEnd(alice.page, ' [typed while the token was refused]')
  troupectl('revoke', 'Alice Token')
  await typing
  await eventually('Bob sees everything Alice typed, once', async () => {
    const text = await editorText(bob.page)
    return text.split('[typed while the token was refused]').length === 2 || text
  }, 20000)
  await waitStatus(alice.page, 'green', 20000)
  assert.ok(alice.sockets.length > sockets, 'the page connected again (with its new token)')
  troupectl('revoke', 'Alice Token', '--lift')
})
