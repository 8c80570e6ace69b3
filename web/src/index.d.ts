// Hand-written types for @troupe/web (src/index.js). Keep in step with the JSDoc there.

import type * as Y from 'yjs'
import type { WebsocketProvider } from 'y-websocket'
import type { Awareness } from 'y-protocols/awareness'

/** 'offline' = stopped for good: a fatal close code, a refused token, or destroy(). */
export type SessionStatus = 'connecting' | 'syncing' | 'connected' | 'reconnecting' | 'autosave' | 'offline'

export interface StatusEvent { status: SessionStatus }
/** Fired when every local change so far is durably stored (hasUnsyncedChanges became false). */
export interface SavedEvent {}
/** Fired when the scene moved to another node (4301): `url` is the new owner's base URL. */
export interface MovedEvent { url: string }
/** Why the session went offline. */
export interface SessionError {
  /** The close code (4400, 4401, 4403, 4404, 4413, 4429, …); 4404 also when the router refuses the scene id. */
  code: number
  reason: string
  /** What getToken threw, or the router's refusal. */
  error?: unknown
}

export interface SessionEvents {
  status: StatusEvent
  saved: SavedEvent
  moved: MovedEvent
  error: SessionError
  /** The cluster told everyone in the scene something, e.g. "Restored to version 3 by Ada". */
  notice: NoticeEvent
  /** The node takes no edits from this client (a viewer, or realtime editing off), or does again. */
  readonly: { readOnly: boolean, reason: string }
  /** Autosave instead of live editing, or live again. */
  mode: { mode: 'live' | 'autosave', reason: string }
  /** Back from autosave on this fresh document: rebind the editor to it. */
  doc: { doc: Y.Doc, awareness: import('y-protocols/awareness').Awareness }
  /** An autosave failed; it is tried again. */
  'autosave-error': { error: unknown }
}

/** A notice written into the scene's document by the cluster (`doc.getMap('troupe').get('notice')`). */
export interface NoticeEvent {
  /** What happened: `restored`. */
  kind: string
  /** The sentence to show. */
  message: string
  /** Who did it. */
  by: string
  /** When, in Unix milliseconds. */
  at: number
}

/** An edit waiting this long (ms) for its ack makes the session ask the router whether the scene moved. */
export const STALL_TIMEOUT_MS: number
/** A look-up held by the router until the scene moves is abandoned after this many ms. */
export const ROUTE_WATCH_TIMEOUT_MS: number
/** After a held look-up failed, or came back at once unmoved, it is asked again after this many ms. */
export const ROUTE_WATCH_RETRY_MS: number
/** The close code reported for a connection dropped because its owner stalled. */
export const STALLED_CLOSE_CODE: number
/** A notice older than this when it arrives (a late joiner finding it) is not emitted. */
export const NOTICE_FRESH_MS: number
/** The subprotocol that says the token is presented in the handshake (the node selects it). */
export const TROUPE_PROTOCOL: 'troupe'
/** The offered subprotocol carrying the token: `troupe.bearer.<token>`. */
export const BEARER_PROTOCOL_PREFIX: 'troupe.bearer.'

export interface ConnectSceneOptions {
  /** Base URL of a Troupe router, e.g. `http://127.0.0.1:8080`. */
  router: string
  sceneId: string
  /** The JWT the app's backend minted for this user. Sent in the WebSocket handshake as the
   * offered subprotocol `troupe.bearer.<token>` (beside `troupe`), never in the URL. */
  token: string
  doc: Y.Doc
  /**
   * Called when the node closes with 4401 (expired or refused token). The session reconnects
   * with the token it returns; without it, or when it throws or returns nothing, or when the
   * new token is refused as well, the session goes offline.
   */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>
  /** WebSocket class; default `globalThis.WebSocket` (in Node.js pass the `ws` package's). */
  WebSocketPolyfill?: typeof WebSocket | (new (url: string, protocols?: string | string[]) => any)
  /** Awareness to use; default a new one, destroyed with the session. */
  awareness?: Awareness
  /** fetch for router look-ups; default `globalThis.fetch`. */
  fetch?: (url: string, init?: any) => Promise<{ ok: boolean, status: number, json (): Promise<any>, text (): Promise<string> }>
  /** Extra query parameters sent to the node (acks is set by the session; the token is not a
   * query parameter). */
  params?: Record<string, string>
  /** Disable y-websocket's cross-tab BroadcastChannel (default false). */
  disableBc?: boolean
  /** First backoff window in ms (default 100). */
  backoffBase?: number
  /** Largest backoff window in ms (default 5000). */
  backoffCap?: number
  /** Random source in [0, 1) for the jitter (default Math.random). */
  random?: () => number
  /** ms before an attempt stuck in CONNECTING is abandoned (default 10000; 0 disables). */
  connectTimeout?: number
  /** ms before a router look-up is abandoned (default 5000). */
  routeTimeout?: number
  /** ms without a synced connection before falling back to autosave (default 10000; 0: only on 4410). */
  fallbackAfter?: number
  /** Keep the doc in IndexedDB (browsers): edits made offline survive a closed tab and are sent on the next visit (default false). */
  persist?: boolean
  /** ms between autosaves in autosave mode (default 2000). */
  autosaveInterval?: number
  /** ms between checks, in autosave mode, whether live editing is possible again (default 5000). */
  probeInterval?: number
  /** ms an edit may wait for its durable ack before the session asks the router whether the
   * scene moved, and follows it at once if it did; asked again every half of it while the stall
   * lasts (default 500; 0 disables). */
  stallTimeout?: number
  /** While connected or reconnecting, keep a look-up open that the router answers when the
   * scene moves to another node, and follow it at once (default true). */
  watchMoves?: boolean
}

export declare class SceneSession {
  constructor (opts: ConnectSceneOptions)
  /** The stock y-websocket provider (awareness: `provider.awareness`). */
  readonly provider: WebsocketProvider
  readonly doc: Y.Doc
  readonly sceneId: string
  /** The router's base URL. */
  readonly router: string
  readonly status: SessionStatus
  /** The owner's base URL (ws://host:port) this session connects to, once known. */
  readonly url: string | null
  /** Why the session went offline (null unless a close code or the token refresh stopped it). */
  readonly error: SessionError | null
  /** True while some local change (sent or not) is not yet acknowledged as durably stored. */
  readonly hasUnsyncedChanges: boolean
  /** True while the node takes no edits from this client (it said "permission denied"). */
  readonly readOnly: boolean
  /** `live`, or `autosave` while the scene cannot be edited live. */
  readonly mode: 'live' | 'autosave'
  on<K extends keyof SessionEvents> (name: K, fn: (event: SessionEvents[K]) => void): this
  off<K extends keyof SessionEvents> (name: K, fn: (event: SessionEvents[K]) => void): this
  once<K extends keyof SessionEvents> (name: K, fn: (event: SessionEvents[K]) => void): this
  /** Close the connection and destroy the provider (and the awareness it made); the doc is left alone. */
  destroy (): void
}

/** Connect `doc` to a scene through a Troupe router. */
export declare function connectScene (opts: ConnectSceneOptions): SceneSession

/** Upper bound of the n-th retry's pause: min(cap, base · 2^n) ms. */
export declare function backoffCeiling (attempt: number, opts?: { base?: number, cap?: number }): number
/** Pause before the n-th retry in a row (n from 0): uniform in [0, min(cap, base · 2^n)] ms. */
export declare function backoffDelay (attempt: number, opts?: { base?: number, cap?: number, random?: () => number }): number
export declare const BACKOFF_BASE_MS: 100
export declare const BACKOFF_CAP_MS: 5000
export declare const CONNECT_TIMEOUT_MS: number
export declare const ROUTE_TIMEOUT_MS: number
export declare const RERESOLVE_AFTER_FAILURES: number

export declare const CloseCode: Readonly<{
  MOVED: 4301
  BAD_MESSAGE: 4400
  UNAUTHORIZED: 4401
  FORBIDDEN: 4403
  UNKNOWN_SCENE: 4404
  TOO_LARGE: 4413
  RATE_LIMITED: 4429
  GOING_AWAY: 1001
}>
/** Every 44xx code except 4401. */
export declare function isFatalCloseCode (code: number): boolean
/** A URL as a node's ws(s) base without trailing slash (http(s) → ws(s)); null if it is not one. */
export declare function toWsBase (value: unknown): string | null

/** Message type of the node's durable-ack frame (`varuint 100, varuint n`). */
export declare const MESSAGE_ACK: 100
/** 'step2' / 'update' for update-bearing y-protocols frames (sync step 2 / sync update), else null. */
export declare function classifyFrame (data: unknown): 'step2' | 'update' | null

/** Bookkeeping of local updates until a durable ack covers them. */
export declare class AckTracker {
  readonly pending: Array<number | null>
  readonly sent: number
  readonly acked: number
  readonly localUpdates: number
  readonly ackedUpdates: number
  readonly unsynced: boolean
  localUpdate (): void
  newConnection (): void
  frameSent (kind: 'step2' | 'update'): number
  /** Returns true when this ack made every local update durable. */
  ack (n: number): boolean
}
