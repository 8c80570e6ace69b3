/**
 * Autosave: how a session keeps saving when the scene cannot be edited live — collaboration
 * is switched off for it (close 4410, or `GET /v1/flags` says so) or no WebSocket gets
 * through. The editor keeps working on the same document; every few seconds the scene's
 * blocks are `PUT` to the content API against the blocks the server was last known to hold
 * (`base_blocks`), which the owner merges into the live scene like any autosave: what
 * others typed meanwhile stays, and a change sent twice is made once.
 *
 * The first base is the document's blocks at the last moment every local edit was
 * acknowledged (the server had all of them then; a newer one is not safe: an edit the
 * server never got would count as saved). After each save the base is what was saved, so
 * a save carries only what was typed since. Edits sent live but not acknowledged when the
 * session fell back may have reached the server: the merge keeps text typed further on one
 * side once, the longer.
 *
 * Also here: what the session's autosave mode needs around it — loading a scene's blocks
 * into an empty doc, the user a token names (for the router's flags), and whether a
 * WebSocket gets through again.
 *
 * @module autosave
 */

import * as Y from 'yjs'

/** The document fragment the editor keeps the scene in (y-prosemirror's default name). */
export const FRAGMENT = 'prosemirror'

/** The origin of the edits that load a scene's blocks into a doc for autosave. */
export const AUTOSAVE_ORIGIN = 'troupe-autosave'

/**
 * The scene's blocks as the content API takes them: one per element of the fragment, its
 * type the element's name, its text the element's text.
 * @param {import('yjs').Doc} doc
 * @returns {Array<{type: string, text: string}>}
 */
export function docBlocks (doc) {
  const fragment = doc.getXmlFragment(FRAGMENT)
  return fragment.toArray().map((node) => {
    const element = /** @type {any} */ (node)
    const type = typeof element.nodeName === 'string' ? element.nodeName : 'action'
    const text = typeof element.toArray === 'function'
      ? element.toArray().map((/** @type {any} */ part) => textOf(part)).join('')
      : ''
    return { type, text }
  })
}

/**
 * Appends `blocks` to the doc's fragment as the editor would (an element per block, its
 * text in one XML text): the base of a session that never synced.
 * @param {import('yjs').Doc} doc
 * @param {Array<{type: string, text: string}>} blocks
 */
export function writeBlocks (doc, blocks) {
  const fragment = doc.getXmlFragment(FRAGMENT)
  doc.transact(() => {
    for (const block of blocks) {
      const element = new Y.XmlElement(String(block.type))
      if (block.text) element.insert(0, [new Y.XmlText(String(block.text))])
      fragment.push([element])
    }
  }, AUTOSAVE_ORIGIN)
}

/**
 * The user a token names (its `sub`), for the router's flags; '' when it cannot be read.
 * @param {string} token
 */
export function tokenSubject (token) {
  try {
    const part = token.split('.')[1] || ''
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='))
    const sub = JSON.parse(json).sub
    return typeof sub === 'string' ? sub : ''
  } catch {
    return ''
  }
}

/**
 * Whether a WebSocket to `url` opens and is answered (a node refusing with 4410 closes
 * right after opening, so the first frame is what counts) within `timeoutMs`.
 * @param {any} WebSocketClass
 * @param {string} url
 * @param {string[]} protocols
 * @param {number} timeoutMs
 * @returns {Promise<boolean>}
 */
export function opensWebSocket (WebSocketClass, url, protocols, timeoutMs) {
  return new Promise((resolve) => {
    /** @type {any} */
    let socket
    try {
      socket = new WebSocketClass(url, protocols)
    } catch {
      resolve(false)
      return
    }
    const done = (/** @type {boolean} */ ok) => {
      clearTimeout(timer)
      socket.onopen = socket.onclose = socket.onerror = socket.onmessage = null
      try { socket.close() } catch { /* closing anyway */ }
      resolve(ok)
    }
    const timer = setTimeout(() => { done(false) }, timeoutMs)
    socket.onmessage = () => done(true)
    socket.onclose = () => done(false)
    socket.onerror = () => done(false)
  })
}

/** @param {any} part an XML text (or anything else, which holds no text) */
function textOf (part) {
  if (typeof part.toDelta !== 'function') return ''
  return part.toDelta().map((/** @type {any} */ op) => (typeof op.insert === 'string' ? op.insert : '')).join('')
}

/**
 * Saves a document through the content API while it cannot be edited live.
 */
export class Autosaver {
  /**
   * @param {object} opts
   * @param {string} opts.url the scene's content URL (`{router}/v1/scenes/{scene}/content`)
   * @param {() => string} opts.token the current access token
   * @param {(url: string, init: any) => Promise<any>} opts.fetch
   * @param {import('yjs').Doc} opts.doc
   * @param {Array<{type: string, text: string}>} opts.base blocks the server holds
   */
  constructor ({ url, token, fetch, doc, base }) {
    this.url = url
    this.token = token
    this.fetch = fetch
    this.doc = doc
    this.base = base
    /** The blocks last saved (JSON), to skip saving what is saved already. */
    this.saved = JSON.stringify(base)
    /** Whether a save is under way. */
    this.saving = false
    /** The P1 version the last save answered with (null for a scene P1 does not have). */
    this.version = /** @type {number|null} */ (null)
  }

  /** Whether the document holds something not saved yet. */
  get unsaved () {
    return JSON.stringify(docBlocks(this.doc)) !== this.saved
  }

  /**
   * Saves the document if it changed since the last save.
   * @returns {Promise<boolean>} true when everything is saved
   */
  async save () {
    if (this.saving) return false
    const blocks = docBlocks(this.doc)
    const body = JSON.stringify(blocks)
    if (body === this.saved) return true
    this.saving = true
    try {
      const res = await this.fetch(this.url, {
        method: 'PUT',
        headers: { authorization: `Bearer ${this.token()}`, 'content-type': 'application/json' },
        body: JSON.stringify({ base_blocks: this.base, blocks })
      })
      if (!res.ok) {
        let detail = ''
        try { detail = (await res.json()).message || '' } catch { /* no body */ }
        throw new AutosaveError(`autosave: HTTP ${res.status} ${detail}`.trim(), res.status)
      }
      const answer = await res.json()
      this.version = typeof answer.version === 'number' ? answer.version : null
      this.saved = body
      // The server holds these blocks now: the next save sends only what comes after.
      this.base = blocks
      return JSON.stringify(docBlocks(this.doc)) === body
    } finally {
      this.saving = false
    }
  }
}

/**
 * The last save, as the page goes away (`pagehide`): a `keepalive` request outlives the
 * page. Nothing to wait for, nothing to learn: the next visit sees the server's scene.
 * @param {Autosaver} saver
 */
export function saveOnExit (saver) {
  const blocks = docBlocks(saver.doc)
  if (JSON.stringify(blocks) === saver.saved) return
  try {
    saver.fetch(saver.url, {
      method: 'PUT',
      keepalive: true,
      headers: { authorization: `Bearer ${saver.token()}`, 'content-type': 'application/json' },
      body: JSON.stringify({ base_blocks: saver.base, blocks })
    }).catch(() => {})
  } catch { /* the page is going anyway */ }
}

/** A save the content API refused or could not take. */
export class AutosaveError extends Error {
  /** @param {string} message @param {number} status */
  constructor (message, status) {
    super(message)
    this.status = status
  }
}
