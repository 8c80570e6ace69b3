/**
 * Troupe's browser client: a thin layer over the stock yjs + y-websocket 1.5 client.
 *
 * `connectScene` asks a Troupe router which node owns a scene, connects a stock
 * `WebsocketProvider` there with durable acks (`?acks=1`), and keeps it connected as the
 * cluster changes: it follows 4301 moves to the owner named in the close reason, reconnects
 * with jittered exponential backoff, asks the router again when the node it knew stops
 * answering, refreshes an expired token once, and stops on the close codes that mean
 * "do not retry". It also tells the app when every local edit is durably stored.
 *
 * @module @troupe/web
 */

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as decoding from 'lib0/decoding'
import * as urlParams from 'lib0/url'

import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, backoffCeiling, backoffDelay } from './backoff.js'
import { AckTracker, MESSAGE_ACK, classifyFrame } from './acks.js'
import { IndexeddbPersistence } from 'y-indexeddb'
import {
  Autosaver, AutosaveError, docBlocks, saveOnExit, writeBlocks, tokenSubject, opensWebSocket, FRAGMENT
} from './autosave.js'

export { BACKOFF_BASE_MS, BACKOFF_CAP_MS, backoffCeiling, backoffDelay }
export { AckTracker, MESSAGE_ACK, classifyFrame }
export { Autosaver, AutosaveError, docBlocks, FRAGMENT }

/** Close codes a Troupe node uses (README, "Close codes"). */
export const CloseCode = Object.freeze({
  MOVED: 4301,
  BAD_MESSAGE: 4400,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
  UNKNOWN_SCENE: 4404,
  TOO_LARGE: 4413,
  RATE_LIMITED: 4429,
  COLLABORATION_OFF: 4410,
  GOING_AWAY: 1001
})

/**
 * Whether a close code means "stop": every 44xx code except 4401 (which a new token may
 * cure, see `getToken`). 4301 is outside the range and is followed.
 * @param {number} code
 */
export function isFatalCloseCode (code) {
  return code >= 4400 && code <= 4499 && code !== CloseCode.UNAUTHORIZED
}

/** How long a connection attempt may stay in CONNECTING before it is abandoned. */
export const CONNECT_TIMEOUT_MS = 10_000
/** How long a router look-up may take before it counts as failed. */
export const ROUTE_TIMEOUT_MS = 5_000
/** Failed attempts in a row after which the router is asked again before the next one. */
export const RERESOLVE_AFTER_FAILURES = 2

/** The subprotocol that says the token is presented in the handshake (the node selects it). */
export const TROUPE_PROTOCOL = 'troupe'
/** The offered subprotocol carrying the token: `troupe.bearer.<token>`. */
export const BEARER_PROTOCOL_PREFIX = 'troupe.bearer.'

/** An edit that waits this long (ms) for its durable ack makes the session ask the router
 * whether the scene moved (a frozen or cut-off owner), and move at once if it did; it asks
 * again every half of it while the stall lasts. Acks take milliseconds (p99 ~10 ms), so a
 * half-second wait is already a stall, and an answer naming the same owner costs only the
 * look-up. */
export const STALL_TIMEOUT_MS = 500

/** A look-up held by the router until the scene moves (`?unless=`) is abandoned after this
 * many ms: the router answers within 25 s, moved or not. */
export const ROUTE_WATCH_TIMEOUT_MS = 30000

/** After a held look-up failed, or a router answered it at once without the scene having
 * moved (one that does not hold look-ups), the session waits this many ms to ask again. */
export const ROUTE_WATCH_RETRY_MS = 5000

/** The close code the session reports for a connection it dropped because it stalled. */
export const STALLED_CLOSE_CODE = 4000

/** With no connection for this long (ms), a session falls back to autosave. */
export const FALLBACK_AFTER_MS = 10000
/** How often (ms) a session in autosave mode saves what changed. */
export const AUTOSAVE_INTERVAL_MS = 2000
/** How often (ms) a session in autosave mode asks whether it can be live again. */
export const PROBE_INTERVAL_MS = 5000

/** A notice older than this when it arrives (a late joiner finding it) is not emitted. */
export const NOTICE_FRESH_MS = 5 * 60 * 1000

const WS_OPEN = 1
/** y-protocols message type "auth" (permission denied / granted). */
const MESSAGE_AUTH = 2

/**
 * A base URL as the node's WebSocket base: ws(s)://host[:port][/path] without a trailing
 * slash; http(s) becomes ws(s). Null for anything else (an empty or garbled close reason).
 * @param {unknown} value
 * @returns {string|null}
 */
export function toWsBase (value) {
  if (typeof value !== 'string') return null
  let s = value.trim()
  if (/^https?:\/\//i.test(s)) s = s.replace(/^http/i, 'ws')
  if (!/^wss?:\/\/[^/\s?#]+/i.test(s) || /\s/.test(s)) return null
  return s.replace(/\/+$/, '')
}

/** An error the session cannot recover from by retrying (e.g. the router calls the scene id invalid). */
class FatalRouteError extends Error {
  /** @param {string} message @param {number} status */
  constructor (message, status) {
    super(message)
    this.status = status
  }
}

/**
 * @typedef {'connecting'|'syncing'|'connected'|'reconnecting'|'autosave'|'offline'} SessionStatus
 */

/**
 * @typedef {object} ConnectSceneOptions
 * @property {string} router base URL of a Troupe router, e.g. `http://127.0.0.1:8080`
 * @property {string} sceneId the scene (room) id
 * @property {string} token the JWT the app's backend minted for this user
 * @property {import('yjs').Doc} doc the document to sync
 * @property {() => (string|Promise<string|null|undefined>|null|undefined)} [getToken]
 *   called when the node closes with 4401 (expired or refused token): the session reconnects
 *   with the token it returns; without it, or if it throws or returns nothing, or if the new
 *   token is refused too, the session goes offline
 * @property {typeof WebSocket} [WebSocketPolyfill] WebSocket class (default: globalThis.WebSocket;
 *   in Node.js pass `ws`)
 * @property {import('y-protocols/awareness').Awareness} [awareness] awareness to use (default:
 *   a new one, destroyed with the session)
 * @property {typeof fetch} [fetch] fetch for the router look-ups (default: globalThis.fetch)
 * @property {Record<string, string>} [params] extra query parameters for the node
 * @property {boolean} [disableBc] disable y-websocket's cross-tab BroadcastChannel
 * @property {number} [backoffBase] first backoff window in ms (default 100)
 * @property {number} [backoffCap] largest backoff window in ms (default 5000)
 * @property {() => number} [random] random source in [0, 1) for the jitter (tests pin it)
 * @property {number} [connectTimeout] ms before an attempt stuck in CONNECTING is abandoned
 *   (default 10000; 0 disables)
 * @property {number} [routeTimeout] ms before a router look-up is abandoned (default 5000)
 * @property {number} [stallTimeout] ms an edit may wait for its durable ack before the
 *   session asks the router whether the scene moved, and follows it at once; asked again
 *   every half of it while the stall lasts (default 500; 0 disables)
 * @property {boolean} [watchMoves] while connected or reconnecting, keep a look-up open that the router
 *   answers when the scene moves to another node, and follow it at once (default true): a
 *   paused or cut-off owner cannot say so, and an editor who is not typing would not notice
 */

/**
 * A live connection of one document to its scene on a Troupe cluster.
 * Create it with {@link connectScene}.
 */
export class SceneSession {
  /** @param {ConnectSceneOptions} opts */
  constructor (opts) {
    const {
      router, sceneId, token, doc, getToken, WebSocketPolyfill, awareness, params,
      disableBc = false,
      backoffBase = BACKOFF_BASE_MS,
      backoffCap = BACKOFF_CAP_MS,
      random = Math.random,
      connectTimeout = CONNECT_TIMEOUT_MS,
      routeTimeout = ROUTE_TIMEOUT_MS,
      stallTimeout = STALL_TIMEOUT_MS,
      watchMoves = true,
      fallbackAfter = FALLBACK_AFTER_MS,
      autosaveInterval = AUTOSAVE_INTERVAL_MS,
      probeInterval = PROBE_INTERVAL_MS,
      persist = false
    } = opts || /** @type {any} */ ({})
    if (typeof router !== 'string' || !/^https?:\/\/[^/]/i.test(router)) {
      throw new TypeError('connectScene: `router` must be an http(s) URL')
    }
    if (typeof sceneId !== 'string' || sceneId === '') throw new TypeError('connectScene: `sceneId` must be a non-empty string')
    if (typeof token !== 'string') throw new TypeError('connectScene: `token` must be a string')
    if (!doc || typeof doc.on !== 'function') throw new TypeError('connectScene: `doc` must be a Y.Doc')
    const BaseWS = WebSocketPolyfill || /** @type {any} */ (globalThis).WebSocket
    if (typeof BaseWS !== 'function') {
      throw new TypeError('connectScene: no WebSocket class: pass `WebSocketPolyfill` (e.g. the `ws` package in Node.js)')
    }
    const fetchImpl = opts.fetch || /** @type {any} */ (globalThis).fetch
    if (typeof fetchImpl !== 'function') throw new TypeError('connectScene: no fetch: pass `fetch`')

    /** The router's base URL (no trailing slash). */
    this.router = router.replace(/\/+$/, '')
    /** The scene id. */
    this.sceneId = sceneId
    /** @private */ this._token = token
    /** @private */ this._getToken = typeof getToken === 'function' ? getToken : null
    /** @private */ this._params = { ...(params || {}) }
    // A plain function: calling `opts.fetch(...)` would bind `this` to opts, which a browser's
    // fetch refuses ("Illegal invocation").
    /** @private */ this._fetch = (/** @type {string} */ url, /** @type {any} */ init) => fetchImpl(url, init)
    /** @private */ this._backoffOpts = { base: backoffBase, cap: backoffCap, random }
    /** @private */ this._connectTimeout = connectTimeout
    /** @private */ this._routeTimeout = routeTimeout
    /** @private */ this._stallTimeout = stallTimeout
    /** @private */ this._watchMoves = watchMoves !== false
    /** @private */ this._watching = false // a held look-up loop runs
    /** @private @type {AbortController|null} */ this._watchAbort = null
    /** @private @type {(() => void)|null} */ this._watchWake = null
    /** @private */ this._lastStallCheck = 0
    /** @private */ this._stallCheck = false // a router look-up for a stall is under way
    /** @private */ this._stallMove = false // the socket was dropped to follow the scene
    /** @private */ this._fallbackAfter = fallbackAfter
    /** @private */ this._autosaveInterval = autosaveInterval
    /** @private */ this._probeInterval = probeInterval
    /** @private */ this._stallTimer = setInterval(() => {
      if (this._stallTimeout > 0) this._checkStall()
      this._checkFallback()
    }, Math.max(50, Math.floor((stallTimeout > 0 ? stallTimeout : 1000) / 4)))
    /**
     * How the scene is edited: `live` over the WebSocket, or `autosave` through the content
     * API while that is not possible.
     * @type {'live'|'autosave'}
     */
    this.mode = 'live'
    /** @private Since when no connection is synced (ms), null while one is. */ this._lostSince = Date.now()
    /** @private The doc's blocks when the server last had every local edit. */ this._base = /** @type {Array<{type: string, text: string}>|null} */ (null)
    /** @private */ this._baseAt = 0
    /** @private No fallback check before this (ms): the last found no network. */ this._fallbackCheckAt = 0
    /** @private @type {Autosaver|null} */ this._autosaver = null
    /** @private @type {any} */ this._autosaveTimer = null
    /** @private @type {any} */ this._probeTimer = null
    /** @private */ this._probing = false
    // Local persistence (IndexedDB, in browsers): edits made offline survive a closed tab
    // and are sent on the next visit, as ordinary Yjs updates (never twice).
    /** @private */ this._persist = Boolean(persist) && typeof indexedDB !== 'undefined'
    /** @private @type {IndexeddbPersistence|null} */ this._persistence = null
    /** @private */ this._onPageHide = () => {
      if (this._autosaver !== null) saveOnExit(this._autosaver)
    }
    if (typeof addEventListener === 'function') addEventListener('pagehide', this._onPageHide)

    /** @type {SessionStatus} */
    this.status = 'connecting'
    /** True while the node takes no edits from this client (it said "permission denied"). */
    this.readOnly = false
    /** @private */ this._deniedHere = false // the current connection said read-only
    /**
     * The owner's base URL this session connects to (ws://host:port), once known.
     * @type {string|null}
     */
    this.url = null
    /**
     * Why the session went offline, when a close code or the token refresh stopped it.
     * @type {{code: number, reason: string, error?: unknown}|null}
     */
    this.error = null

    /** @private */ this._listeners = new Map()
    /** @private */ this._stopped = false
    /** @private */ this._destroyed = false
    /** @private */ this._opened = false // some connection opened at least once
    /** @private */ this._failures = 0 // failed attempts since the last sync
    /** @private */ this._moves = 0 // 4301s since the last sync
    /** @private */ this._tokenRefreshed = false // a 4401 was answered with getToken since the last sync
    /** @private @type {any} */ this._timer = null
    /** @private @type {any} */ this._connectTimer = null
    /** @private @type {any} */ this._socket = null // the current (wrapped) WebSocket
    /** @private */ this._acks = new AckTracker()

    const session = this
    /** The WebSocket class y-websocket builds its sockets with: counts outgoing update frames. */
    class TroupeWebSocket extends BaseWS {
      /**
       * The token rides in the offered subprotocols, never in the URL (which proxies and
       * browser tooling record): `troupe` and `troupe.bearer.<token>`; the node selects
       * `troupe`.
       * @param {string} url
       */
      constructor (url) {
        super(url, [TROUPE_PROTOCOL, BEARER_PROTOCOL_PREFIX + session._token])
        session._socketCreated(this)
      }

      /**
       * Drops a connection that stopped answering at once: the closing handshake with a
       * frozen node would never finish. Its handlers see a close now, and nothing later.
       */
      /** @param {string} reason */
      abandon (reason) {
        const onclose = this.onclose
        this.onclose = null
        this.onmessage = null
        this.onerror = null
        this.onopen = null
        try { super.close() } catch { /* closing anyway */ }
        if (typeof onclose === 'function') onclose.call(this, { code: STALLED_CLOSE_CODE, reason })
      }

      /** @param {any} data */
      send (data) {
        const open = this.readyState === WS_OPEN
        const result = super.send(data)
        if (open) session._socketSent(this, data)
        return result
      }
    }

    /** @private */ this._WebSocket = TroupeWebSocket
    /** @private */ this._BaseWebSocket = BaseWS
    /** @private */ this._disableBc = disableBc
    this._attach(doc, awareness || null)

    this._schedule(0, { resolve: true })
  }

  /**
   * @private Binds the session to `doc`: its observers, and a stock provider for it.
   * @param {import('yjs').Doc} doc
   * @param {import('y-protocols/awareness').Awareness|null} awareness
   */
  _attach (doc, awareness) {
    /** @type {import('yjs').Doc} */
    this.doc = doc
    if (this._persist) this._persistence = new IndexeddbPersistence(`troupe:${this.sceneId}`, doc)
      // Local updates must be seen before y-websocket sends them: register before the
      // provider registers its own 'update' handler (handlers run in registration order).
      /** @private */
      this._onDocUpdate = (/** @type {Uint8Array} */ _update, /** @type {any} */ origin) => {
        if (this.provider !== undefined && origin === this.provider) return // from the server
        this._acks.localUpdate()
      }
      doc.on('update', this._onDocUpdate)
      // Notices the cluster writes into the document (`troupe.notice`: a restore, say) arrive
      // with the change they explain; one older than NOTICE_FRESH_MS when it arrives (found
      // by a late joiner) is history, not news.
      /** @private */ this._notices = doc.getMap('troupe')
      /** @private */ this._onNotice = (/** @type {any} */ event) => {
        if (!event.keysChanged.has('notice')) return
        const notice = this._notices.get('notice')
        if (!notice || typeof notice.message !== 'string' || typeof notice.at !== 'number') return
        if (Date.now() - notice.at > NOTICE_FRESH_MS) return
        this._emit('notice', { kind: notice.kind, message: notice.message, by: notice.by, at: notice.at })
      }
      this._notices.observe(this._onNotice)
      // Content the doc already holds (restored from a local cache, say) is a local change the
      // node may lack: pending until the first handshake's step 2 is acknowledged.
      if (Y.encodeStateVector(doc).length > 1) this._acks.localUpdate()

      /** @private */ this._ownsAwareness = !awareness
      // Built with the router's URL as a placeholder and connect: false; every connection sets
      // `provider.url` to the owner first. The placeholder also makes the BroadcastChannel name
      // (serverUrl/room) the same in every tab, whichever node owns the scene.
      const placeholder = this.router.replace(/^http/i, 'ws') + '/ws/scenes'
      /**
       * The stock y-websocket provider (awareness: `provider.awareness`).
       * @type {WebsocketProvider}
       */
      this.provider = new WebsocketProvider(placeholder, this.sceneId, doc, {
        connect: false,
        params: this._query(),
        WebSocketPolyfill: /** @type {any} */ (this._WebSocket),
        ...(awareness ? { awareness } : {}),
        disableBc: this._disableBc
      })
      const provider = this.provider

      // Durable acks: `varuint 100, varuint n`. No reply (the encoder stays empty).
      provider.messageHandlers[MESSAGE_ACK] = (_encoder, decoder, _provider, fromSocket) => {
        const n = decoding.readVarUint(decoder)
        // readMessage passes emitSynced=true for socket frames, false for BroadcastChannel ones.
        if (fromSocket) this._ack(n)
      }
      // "Permission denied" (y-websocket's auth message): the node takes no edits from this
      // client (a viewer's token, or realtime editing switched off): read-only until a
      // connection syncs without one.
      provider.messageHandlers[MESSAGE_AUTH] = (_encoder, decoder, _provider, fromSocket) => {
        if (!fromSocket) return
        if (decoding.readVarUint(decoder) === 0) {
          this._deniedHere = true
          this._setReadOnly(true, decoding.readVarString(decoder))
        } else {
          this._setReadOnly(false, '')
        }
      }
      provider.on('status', (/** @type {{status: string}} */ e) => {
        if (this._stopped || e.status !== 'connected') return
        this._opened = true
        this._clearConnectTimer()
        if (this.status === 'connecting') this._setStatus('syncing')
      })
      provider.on('sync', (/** @type {boolean} */ synced) => {
        if (this._stopped || !synced) return
        this._failures = 0
        this._moves = 0
        this._tokenRefreshed = false
        this._lostSince = null
        if (!this._deniedHere) this._setReadOnly(false, '')
        this._noteBase(true)
        this._setStatus('connected')
        this._watchForMoves()
      })
      provider.on('connection-close', (/** @type {any} */ event) => this._closed(event))
  }

  /** @private Lets go of the doc: its observers and its provider (and an owned awareness). */
  _detach () {
    if (this._persistence !== null) this._persistence.destroy()
    this._persistence = null
    this.doc.off('update', this._onDocUpdate)
    this._notices.unobserve(this._onNotice)
    const awareness = this.provider.awareness
    this.provider.destroy()
    if (this._ownsAwareness) awareness.destroy()
  }

  /** True while some local change (sent or not) is not yet acknowledged as durably stored. */
  get hasUnsyncedChanges () {
    if (this._autosaver !== null) return this._autosaver.saving || this._autosaver.unsaved
    return this._acks.unsynced
  }

  /**
   * @param {'status'|'saved'|'moved'|'error'|'notice'|'mode'|'doc'|'autosave-error'|'readonly'} name
   * @param {(event: any) => void} fn
   */
  on (name, fn) {
    let set = this._listeners.get(name)
    if (!set) this._listeners.set(name, (set = new Set()))
    set.add(fn)
    return this
  }

  /**
   * @param {'status'|'saved'|'moved'|'error'|'notice'|'mode'|'doc'|'autosave-error'|'readonly'} name
   * @param {(event: any) => void} fn
   */
  off (name, fn) {
    const set = this._listeners.get(name)
    if (set) set.delete(fn)
    return this
  }

  /**
   * @param {'status'|'saved'|'moved'|'error'|'notice'|'mode'|'doc'|'autosave-error'|'readonly'} name
   * @param {(event: any) => void} fn
   */
  once (name, fn) {
    const wrapped = (/** @type {any} */ e) => { this.off(name, wrapped); fn(e) }
    return this.on(name, wrapped)
  }

  /** Stop for good: close the connection, destroy the provider (and the awareness it made). */
  destroy () {
    if (this._destroyed) return
    this._destroyed = true
    this._stop()
    this._stopAutosave()
    this._detach()
    if (typeof removeEventListener === 'function') removeEventListener('pagehide', this._onPageHide)
    this._setStatus('offline')
  }

  // -------------------------------------------------------------------------------------
  // Internals
  // -------------------------------------------------------------------------------------

  /** @private */
  _emit (/** @type {string} */ name, /** @type {any} */ event) {
    const set = this._listeners.get(name)
    if (!set) return
    for (const fn of [...set]) {
      try {
        fn(event)
      } catch (err) {
        // A throwing listener must not break the session's state machine.
        console.error(`@troupe/web: a '${name}' listener threw`, err)
      }
    }
  }

  /** @private The node takes this client's edits or not; tells the app on a change. */
  _setReadOnly (/** @type {boolean} */ readOnly, /** @type {string} */ reason) {
    if (this.readOnly === readOnly) return
    this.readOnly = readOnly
    this._emit('readonly', { readOnly, reason })
  }

  /** @private */
  _setStatus (/** @type {SessionStatus} */ status) {
    if (this.status === status) return
    this.status = status
    this._emit('status', { status })
  }

  /** @private The node's query parameters (the token goes in the subprotocol header). */
  _query () {
    return { ...this._params, acks: '1' }
  }

  /** @private A scene's WebSocket URL on the node at `base`. */
  _sceneUrl (/** @type {string} */ base) {
    return `${base}/ws/scenes/${encodeURIComponent(this.sceneId)}?${urlParams.encodeQueryParams(this._query())}`
  }

  /** @private */
  _backoff (/** @type {number} */ attempt) {
    return backoffDelay(attempt, this._backoffOpts)
  }

  /** @private */
  _clearConnectTimer () {
    if (this._connectTimer !== null) clearTimeout(this._connectTimer)
    this._connectTimer = null
  }

  /** @private Cancel everything pending and keep y-websocket from reconnecting. */
  _stop () {
    this._stopped = true
    this._stopAutosave()
    if (this._stallTimer !== null) clearInterval(this._stallTimer)
    this._stallTimer = null
    if (this._timer !== null) clearTimeout(this._timer)
    this._timer = null
    this._clearConnectTimer()
    this._endWatch()
    this.provider.shouldConnect = false
  }

  /** @private Go offline for good, telling the app why. */
  _fail (/** @type {number} */ code, /** @type {string} */ reason, /** @type {unknown} */ error) {
    if (this._stopped) return
    this._stop()
    try {
      this.provider.disconnect()
    } catch { /* already closed */ }
    this.error = error === undefined ? { code, reason } : { code, reason, error }
    this._setStatus('offline')
    this._emit('error', this.error)
  }

  /**
   * @private Next attempt after `delay` ms; `resolve`: ask the router first; `moved`: emit
   * 'moved' with the owner it names.
   */
  _schedule (/** @type {number} */ delay, /** @type {{resolve?: boolean, moved?: boolean}} */ how) {
    if (this._stopped) return
    if (this._timer !== null) clearTimeout(this._timer)
    this._timer = setTimeout(() => {
      this._timer = null
      this._attempt(how)
    }, Math.max(0, delay))
  }

  /** @private */
  async _attempt (/** @type {{resolve?: boolean, moved?: boolean}} */ { resolve = false, moved = false }) {
    if (this._stopped) return
    if (resolve || this.url === null) {
      let owner = null
      try {
        owner = await this._resolve()
      } catch (err) {
        if (this._stopped) return
        if (err instanceof FatalRouteError) {
          this._fail(CloseCode.UNKNOWN_SCENE, err.message, err)
          return
        }
        if (this.url === null) {
          // Nowhere to go yet: try the router again later.
          this._failures++
          this._schedule(this._backoff(this._failures - 1), { resolve: true, moved })
          return
        }
        // The router is unreachable: try the node we knew (it may well be fine).
      }
      if (this._stopped) return
      if (owner !== null) {
        this.url = owner
        if (moved) this._emit('moved', { url: owner })
      }
    }
    this._open()
  }

  /**
   * @private Ask the router for the scene's owner: its ws base URL. `unless`: an owner the
   * router is to hold the answer for until the scene is elsewhere; `controller`: aborts it.
   * @param {{ unless?: string, timeout?: number, controller?: AbortController }} [opts]
   */
  async _resolve (opts = {}) {
    const controller = opts.controller || (typeof AbortController === 'function' ? new AbortController() : null)
    const timeout = opts.timeout !== undefined ? opts.timeout : this._routeTimeout
    const timer = controller && timeout > 0
      ? setTimeout(() => controller.abort(), timeout)
      : null
    try {
      /** @type {any} */
      const init = { headers: { accept: 'application/json' } }
      if (controller) init.signal = controller.signal
      const unless = opts.unless !== undefined ? `?unless=${encodeURIComponent(opts.unless)}` : ''
      const res = await this._fetch(`${this.router}/v1/route/${encodeURIComponent(this.sceneId)}${unless}`, init)
      if (res.status === 400) { // the router's answer to an invalid scene id
        let detail = ''
        try { detail = (await res.text()).trim() } catch { /* no body */ }
        throw new FatalRouteError(`router refused scene ${JSON.stringify(this.sceneId)}: HTTP ${res.status} ${detail}`.trim(), res.status)
      }
      if (!res.ok) throw new Error(`router: HTTP ${res.status}`)
      const body = await res.json()
      const owner = toWsBase(body && body.url)
      if (owner === null) throw new Error(`router: no owner URL in ${JSON.stringify(body)}`)
      return owner
    } finally {
      if (timer !== null) clearTimeout(timer)
    }
  }

  /** @private Connect the provider to the current owner. */
  _open () {
    if (this._stopped || this.url === null) return
    const provider = this.provider
    provider.url = this._sceneUrl(/** @type {string} */ (this.url))
    try {
      provider.connect()
    } catch (err) {
      // The WebSocket constructor threw (e.g. a URL the browser refuses): a failed attempt.
      provider.shouldConnect = false
      this._failures++
      this._schedule(this._backoff(this._failures - 1), { resolve: true })
      return
    }
    this._clearConnectTimer()
    if (this._connectTimeout > 0) {
      const socket = this._socket
      this._connectTimer = setTimeout(() => {
        this._connectTimer = null
        // Still CONNECTING (a black-holed address): give up; the close event retries.
        if (!this._stopped && socket !== null && socket === this._socket && !provider.wsconnected) {
          try { socket.close() } catch { /* closing anyway */ }
        }
      }, this._connectTimeout)
    }
  }

  /** @private A socket was created for a new connection. */
  _socketCreated (/** @type {any} */ socket) {
    this._socket = socket
    this._deniedHere = false
    this._acks.newConnection()
  }

  /** @private A frame went out on `socket` while it was open. */
  _socketSent (/** @type {any} */ socket, /** @type {any} */ data) {
    if (socket !== this._socket) return
    const kind = classifyFrame(data)
    if (kind !== null) this._acks.frameSent(kind, Date.now())
  }

  /**
   * @private While connected or reconnecting, keep one look-up open that the router holds
   * until the scene is on another node (`?unless=` the owner the session knows), and follow
   * the answer at once: a paused or cut-off owner cannot say that its scenes moved, an
   * editor who is not typing would not notice a stall, and an editor whose owner died
   * learns of the takeover the moment the router does, instead of at its next retry. One
   * loop at a time; it starts at a sync and ends when the session stops, falls back to
   * autosave (which abandons the held look-up) or goes offline.
   */
  async _watchForMoves () {
    if (!this._watchMoves || this._watching || this._stopped) return
    this._watching = true
    const live = () => !this._stopped && this.mode === 'live' && this.url !== null &&
      (this.status === 'connected' || this.status === 'reconnecting')
    try {
      while (live()) {
        const owner = this.url
        const asked = Date.now()
        const controller = typeof AbortController === 'function' ? new AbortController() : undefined
        this._watchAbort = controller || null
        /** @type {string|null} */
        let named = null
        try {
          named = await this._resolve({ unless: owner, timeout: ROUTE_WATCH_TIMEOUT_MS, controller })
        } catch { /* the router is down, or the look-up was abandoned */ }
        this._watchAbort = null
        if (!live() || owner !== this.url) continue
        if (named !== null && named !== owner) {
          this.url = named
          this._emit('moved', { url: named })
          this._followNow('the scene moved; following it to the new owner')
          continue
        }
        if (Date.now() - asked < ROUTE_WATCH_RETRY_MS) {
          await new Promise((resolve) => {
            const timer = setTimeout(resolve, ROUTE_WATCH_RETRY_MS)
            this._watchWake = () => { clearTimeout(timer); resolve(undefined) }
          })
          this._watchWake = null
        }
      }
    } finally {
      this._watching = false
    }
  }

  /** @private Abandon the held look-up and wake the watch from its pause: it ends (see `live`). */
  _endWatch () {
    if (this._watchAbort !== null) this._watchAbort.abort()
    if (this._watchWake !== null) this._watchWake()
  }

  /**
   * @private Go to `this.url` now: drop the current connection (open, or still trying a
   * node that is gone), or cut the pause before the next attempt short.
   */
  _followNow (/** @type {string} */ reason) {
    if (this._socket !== null) {
      this._stallMove = true
      this._socket.abandon(reason)
    } else {
      this._schedule(0, {})
    }
  }

  /**
   * @private An edit has waited over `stallTimeout` for its ack: the owner may be frozen or
   * cut off while the cluster moved the scene. Ask the router (at most once per half of
   * `stallTimeout`: the cluster may move the scene only a moment after the stall began);
   * if another node owns the scene now, drop this connection and go there.
   */
  async _checkStall () {
    if (this._stopped || this._stallCheck || this._socket === null || !this.provider.wsconnected) return
    const now = Date.now()
    if (this._acks.oldestWait(now) < this._stallTimeout || now - this._lastStallCheck < this._stallTimeout / 2) return
    this._lastStallCheck = now
    this._stallCheck = true
    const socket = this._socket
    try {
      const owner = await this._resolve()
      if (this._stopped || owner === this.url || socket !== this._socket) return
      this.url = owner
      this._emit('moved', { url: owner })
      this._followNow('edits unacknowledged; moving to the new owner')
    } catch {
      // The router does not answer: keep waiting on this connection.
    } finally {
      this._stallCheck = false
    }
  }

  /** @private An ack frame arrived on the current connection. */
  _ack (/** @type {number} */ n) {
    if (this._acks.ack(n)) {
      this._noteBase(false)
      this._emit('saved', {})
    }
  }

  // -------------------------------------------------------------------------------------
  // Autosave: the fallback while the scene cannot be edited live
  // -------------------------------------------------------------------------------------

  /**
   * @private Everything local is acknowledged: the doc's blocks are what the server has
   * (at least), the base an autosave is made against. Taken at most once a second unless
   * `now` (a fresh sync): an older base is as safe, only larger to send.
   */
  _noteBase (/** @type {boolean} */ now) {
    if (this._acks.unsynced || this.mode !== 'live') return
    if (!now && Date.now() - this._baseAt < 1000) return
    this._base = docBlocks(this.doc)
    this._baseAt = Date.now()
  }

  /**
   * @private No connection for `fallbackAfter`: autosave instead — if HTTP gets through
   * (WebSockets blocked, a proxy that drops them). With no network at all the session stays
   * as it is: the edits wait in the doc (and in IndexedDB) for the connection.
   */
  async _checkFallback () {
    if (this._stopped || this.mode !== 'live' || this._fallbackAfter <= 0 || this._lostSince === null) return
    if (this._probing || Date.now() - this._lostSince < this._fallbackAfter || Date.now() < this._fallbackCheckAt) return
    this._probing = true
    try {
      const res = await this._fetch(`${this.router}/v1/flags?scene=${encodeURIComponent(this.sceneId)}&user=`, {
        headers: { accept: 'application/json' }
      })
      if (!res.ok) return
    } catch {
      // No network: nothing to fall back to. Asked again in a while.
      this._fallbackCheckAt = Date.now() + 2000
      return
    } finally {
      this._probing = false
    }
    if (this._stopped || this.mode !== 'live' || this._lostSince === null) return
    this._fallBack(`no connection for ${Math.round((Date.now() - this._lostSince) / 1000)} s`)
  }

  /**
   * @private Switches to autosave: the WebSocket is let go, the doc keeps being edited and
   * is saved through the content API every `autosaveInterval`, and every `probeInterval`
   * the session asks whether it may be live again.
   */
  async _fallBack (/** @type {string} */ reason) {
    if (this._stopped || this.mode !== 'live') return
    this.mode = 'autosave'
    this._pauseLive()
    // The local copy keeps what it has (live edits only: safe to send live on a next
    // visit) but takes no autosave-mode edits; it is deleted once the server has them all.
    if (this._persistence !== null) this._persistence.destroy()
    let base = this._base
    if (base === null) {
      // Never synced: start from the scene as the server has it, if the doc is empty.
      try {
        base = await this._loadForAutosave()
      } catch (err) {
        this.mode = 'live'
        this._fail(CloseCode.COLLABORATION_OFF, `cannot autosave: ${err instanceof Error ? err.message : String(err)}`, err)
        return
      }
    }
    if (this._stopped) return
    this._autosaver = new Autosaver({
      url: `${this.router}/v1/scenes/${encodeURIComponent(this.sceneId)}/content`,
      token: () => this._token,
      fetch: this._fetch,
      doc: this.doc,
      base
    })
    this._autosaveTimer = setInterval(() => { this._autosaveTick() }, Math.max(100, this._autosaveInterval))
    this._probeTimer = setInterval(() => { this._probe() }, Math.max(100, this._probeInterval))
    this._setStatus('autosave')
    this._emit('mode', { mode: 'autosave', reason })
    this._autosaveTick()
  }

  /** @private Stops connecting (for now): the provider lets its socket go and stays idle. */
  _pauseLive () {
    if (this._timer !== null) clearTimeout(this._timer)
    this._timer = null
    this._endWatch()
    this._clearConnectTimer()
    this.provider.shouldConnect = false
    try { this.provider.disconnect() } catch { /* already closed */ }
    this._socket = null
  }

  /**
   * @private The scene's blocks from the content API, written into the (empty) doc as the
   * editor would: the base of a session that never synced.
   * @returns {Promise<Array<{type: string, text: string}>>}
   */
  async _loadForAutosave () {
    if (this.doc.getXmlFragment(FRAGMENT).length > 0) {
      throw new Error('the document holds edits the server never acknowledged')
    }
    const res = await this._fetch(`${this.router}/v1/scenes/${encodeURIComponent(this.sceneId)}/content`, {
      headers: { authorization: `Bearer ${this._token}`, accept: 'application/json' }
    })
    if (res.status === 404) return [] // a scene nobody has yet
    if (!res.ok) throw new Error(`content API: HTTP ${res.status}`)
    const body = await res.json()
    writeBlocks(this.doc, Array.isArray(body && body.blocks) ? body.blocks : [])
    return docBlocks(this.doc)
  }

  /** @private Saves what changed; a refused token is renewed once through `getToken`. */
  async _autosaveTick () {
    const saver = this._autosaver
    if (saver === null || this._stopped) return
    const before = this.hasUnsyncedChanges
    try {
      if (await saver.save()) {
        // The server holds everything now; the local copy would be sent live a second
        // time (as edits of its own) on the next visit: let it go.
        if (this._persistence !== null) {
          const local = this._persistence
          this._persistence = null
          local.clearData().catch(() => {})
        }
        if (before) this._emit('saved', {})
      }
    } catch (err) {
      if (err instanceof AutosaveError && err.status === 401 && this._getToken !== null) {
        try {
          const token = await this._getToken()
          if (typeof token === 'string' && token !== '') this._token = token
        } catch { /* next tick tries again */ }
        return
      }
      this._emit('autosave-error', { error: err })
    }
  }

  /**
   * @private In autosave: may the scene be live again? The router's flags must say `live`
   * and a WebSocket must get through to the owner; then the session goes back.
   */
  async _probe () {
    if (this._probing || this._stopped || this.mode !== 'autosave') return
    this._probing = true
    try {
      const user = tokenSubject(this._token)
      const res = await this._fetch(
        `${this.router}/v1/flags?scene=${encodeURIComponent(this.sceneId)}&user=${encodeURIComponent(user)}`,
        { headers: { accept: 'application/json' } })
      if (!res.ok) return
      const flags = await res.json()
      if (!flags || flags.mode !== 'live') return
      const owner = await this._resolve()
      if (!(await this._reaches(owner))) return
      await this._returnLive()
    } catch {
      // Not yet: the next probe asks again.
    } finally {
      this._probing = false
    }
  }

  /** @private Whether a WebSocket to the scene on `owner` opens (and is accepted). */
  _reaches (/** @type {string} */ owner) {
    return opensWebSocket(this._BaseWebSocket, this._sceneUrl(owner),
      [TROUPE_PROTOCOL, BEARER_PROTOCOL_PREFIX + this._token], Math.max(1000, this._connectTimeout || 5000))
  }

  /**
   * @private Back to live editing: the last autosave first (everything typed is on the
   * server then), then a fresh doc synced from the server replaces this one — the old one
   * holds the same text as edits of its own, which would be sent a second time. The app
   * rebinds its editor to the `doc` event's document.
   */
  async _returnLive () {
    const saver = this._autosaver
    if (saver === null) return
    if (!(await saver.save())) return // typed during the save: the next probe tries again
    if (this._stopped || this._autosaver !== saver) return
    this._stopAutosave()
    this._detach()
    const doc = new Y.Doc()
    this._acks = new AckTracker()
    this._attach(doc, null)
    this._base = null
    this._lostSince = Date.now()
    this._failures = 0
    this.mode = 'live'
    this._setStatus('connecting')
    this._emit('doc', { doc, awareness: this.provider.awareness })
    this._emit('mode', { mode: 'live', reason: 'collaboration is available again' })
    this._schedule(0, { resolve: true })
  }

  /** @private */
  _stopAutosave () {
    if (this._autosaveTimer !== null) clearInterval(this._autosaveTimer)
    if (this._probeTimer !== null) clearInterval(this._probeTimer)
    this._autosaveTimer = null
    this._probeTimer = null
    this._autosaver = null
  }

  /** @private y-websocket's 'connection-close': decide what comes next. */
  _closed (/** @type {any} */ event) {
    if (this._stopped || this.mode !== 'live') return
    if (this._lostSince === null) this._lostSince = Date.now()
    // Take the reconnect away from y-websocket: its own timer (set right after this event)
    // finds shouldConnect false and does nothing; _open() sets it again.
    this.provider.shouldConnect = false
    this._clearConnectTimer()
    this._socket = null
    const code = event && typeof event.code === 'number' ? event.code : 1006
    const reason = event && typeof event.reason === 'string' ? event.reason : ''
    if (code === CloseCode.COLLABORATION_OFF) {
      this._fallBack(reason || 'collaboration is off for this scene')
      return
    }
    if (isFatalCloseCode(code) || (code === CloseCode.UNAUTHORIZED && (this._getToken === null || this._tokenRefreshed))) {
      this._fail(code, reason)
      return
    }
    this._setStatus(this._opened ? 'reconnecting' : 'connecting')

    if (this._stallMove) {
      // Dropped to follow the scene: its new owner is known, go now.
      this._stallMove = false
      this._schedule(0, {})
      return
    }
    if (code === CloseCode.MOVED) {
      this._moves++
      // The first move is followed at once; a ping-pong between nodes backs off.
      const delay = this._moves > 1 ? this._backoff(this._moves - 2) : 0
      const owner = toWsBase(reason)
      if (owner !== null) {
        this.url = owner
        this._emit('moved', { url: owner })
        this._schedule(delay, {})
      } else {
        this._schedule(delay, { resolve: true, moved: true })
      }
      return
    }
    if (code === CloseCode.UNAUTHORIZED) {
      this._refreshToken(reason)
      return
    }
    this._failures++
    // After RERESOLVE_AFTER_FAILURES failures in a row the owner may be gone: ask the router.
    // A node that is shutting down (1001) will not be back as the owner: ask at once.
    const resolve = this._failures >= RERESOLVE_AFTER_FAILURES || code === CloseCode.GOING_AWAY
    this._schedule(this._backoff(this._failures - 1), { resolve })
  }

  /** @private 4401: ask the app for a new token once, then reconnect with it. */
  _refreshToken (/** @type {string} */ reason) {
    const getToken = this._getToken
    if (getToken === null || this._tokenRefreshed) {
      this._fail(CloseCode.UNAUTHORIZED, reason)
      return
    }
    this._tokenRefreshed = true
    Promise.resolve()
      .then(() => getToken())
      .then((token) => {
        if (this._stopped) return
        if (typeof token !== 'string' || token === '') {
          this._fail(CloseCode.UNAUTHORIZED, reason || 'token refused and getToken returned no token')
          return
        }
        this._token = token
        this._schedule(0, {})
      }, (err) => {
        if (!this._stopped) this._fail(CloseCode.UNAUTHORIZED, reason || 'token refused and getToken failed', err)
      })
  }
}

/**
 * Connect `doc` to scene `sceneId` through the router at `router`.
 * @param {ConnectSceneOptions} opts
 * @returns {SceneSession}
 */
export function connectScene (opts) {
  return new SceneSession(opts)
}
