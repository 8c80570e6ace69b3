/**
 * Durable-ack bookkeeping: which local edits the server has confirmed as stored.
 *
 * A connection opened with `?acks=1` receives frames `varuint 100, varuint n`: the first n
 * *update-bearing* messages this connection sent (y-protocols sync step 2 and sync update,
 * i.e. `varuint 0` followed by subtype 1 or 2), counted from 1 per connection, are committed
 * to the store. Acks are cumulative.
 *
 * Every local document update is pending until a frame that carries it is acknowledged:
 *  - a sync *update* frame (subtype 2) carries exactly the update being broadcast (y-websocket
 *    sends one per local update, synchronously, while connected);
 *  - a sync *step 2* frame (subtype 1, the answer to the server's step 1 after connecting)
 *    carries everything in the document the server lacks, so it covers every local update
 *    made before it that no earlier frame of this connection covers.
 * When a connection is lost, its unacknowledged frames count for nothing: every pending
 * update waits for a frame of the next connection (its step 2 carries them all).
 *
 * @module acks
 */

import * as decoding from 'lib0/decoding'

/** Message type of the server's ack frame. */
export const MESSAGE_ACK = 100
/** y-protocols message type "sync". */
export const MESSAGE_SYNC = 0
/** y-protocols sync subtypes. */
export const SYNC_STEP_1 = 0
export const SYNC_STEP_2 = 1
export const SYNC_UPDATE = 2

/**
 * What an outgoing frame is, as far as acks are concerned.
 * @param {ArrayBuffer|ArrayBufferView|string|Blob|unknown} data what was passed to WebSocket.send
 * @returns {'step2'|'update'|null} 'step2' / 'update' for update-bearing frames, else null
 */
export function classifyFrame (data) {
  /** @type {Uint8Array} */
  let bytes
  if (data instanceof Uint8Array) {
    bytes = data
  } else if (data instanceof ArrayBuffer) {
    bytes = new Uint8Array(data)
  } else if (ArrayBuffer.isView(data)) {
    bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  } else {
    return null
  }
  try {
    const decoder = decoding.createDecoder(bytes)
    if (decoding.readVarUint(decoder) !== MESSAGE_SYNC) return null
    const sub = decoding.readVarUint(decoder)
    if (sub === SYNC_STEP_2) return 'step2'
    if (sub === SYNC_UPDATE) return 'update'
    return null
  } catch {
    return null // too short to be a sync message
  }
}

/**
 * Tracks local updates until an ack covers them. Pure bookkeeping: the session feeds it
 * local updates, connections, sent frames and acks.
 */
export class AckTracker {
  constructor () {
    /**
     * One entry per pending local update: the number of the frame of the current connection
     * that carries it, or null while no frame of this connection does.
     * @type {Array<number|null>}
     */
    this.pending = []
    /**
     * When the frame carrying each pending update was sent (ms, the clock given to
     * frameSent), or null while none of this connection carries it.
     * @type {Array<number|null>}
     */
    this.sentAt = []
    /** Update-bearing frames sent on the current connection. */
    this.sent = 0
    /** Highest ack received on the current connection (never above `sent`). */
    this.acked = 0
    /** Local updates seen so far. */
    this.localUpdates = 0
    /** Local updates acknowledged so far (over all connections). */
    this.ackedUpdates = 0
  }

  /** True while some local update is not yet acknowledged as durable. */
  get unsynced () {
    return this.pending.length > 0
  }

  /**
   * A local update happened (it must be reported before the frame carrying it is sent).
   */
  localUpdate () {
    this.localUpdates++
    this.pending.push(null)
    this.sentAt.push(null)
  }

  /**
   * How long the oldest update sent on this connection has waited for its ack (ms), 0 when
   * none waits.
   * @param {number} now the clock frameSent was given
   */
  oldestWait (now) {
    let oldest = null
    for (const at of this.sentAt) {
      if (at !== null && (oldest === null || at < oldest)) oldest = at
    }
    return oldest === null ? 0 : Math.max(0, now - oldest)
  }

  /**
   * A new connection starts: frames are counted from 1 again, and frames of the previous
   * connection that were not acknowledged cover nothing any more.
   */
  newConnection () {
    this.sent = 0
    this.acked = 0
    for (let i = 0; i < this.pending.length; i++) {
      this.pending[i] = null
      this.sentAt[i] = null
    }
  }

  /**
   * An update-bearing frame went out on the current connection.
   * @param {'step2'|'update'} kind from classifyFrame
   * @param {number} [now] when it was sent (ms), for oldestWait
   * @returns {number} the frame's number on this connection
   */
  frameSent (kind, now = 0) {
    const n = ++this.sent
    if (kind === 'step2') {
      // The whole document the server lacks: every local update so far that no earlier
      // frame of this connection carries.
      for (let i = 0; i < this.pending.length; i++) {
        if (this.pending[i] === null) {
          this.pending[i] = n
          this.sentAt[i] = now
        }
      }
    } else if (kind === 'update') {
      // y-websocket broadcasts each local update as it happens: the newest one.
      const last = this.pending.length - 1
      if (last >= 0 && this.pending[last] === null) {
        this.pending[last] = n
        this.sentAt[last] = now
      }
    }
    return n
  }

  /**
   * The server acknowledged the first n update-bearing frames of the current connection.
   * @param {number} n
   * @returns {boolean} true when this ack made every local update durable (time for 'saved')
   */
  ack (n) {
    if (!Number.isFinite(n)) return false
    // "The first n frames this connection sent are committed", read when it arrives: it
    // cannot cover frames sent later (an ack past `sent` comes from a confused server).
    const covered = Math.min(n, this.sent)
    // Acks are cumulative: one not above the highest so far is no news.
    if (covered <= this.acked) return false
    this.acked = covered
    if (this.pending.length === 0) return false
    const acked = covered
    const before = this.pending.length
    const keep = this.pending.map((frame) => frame === null || frame > acked)
    this.sentAt = this.sentAt.filter((_, i) => keep[i])
    this.pending = this.pending.filter((_, i) => keep[i])
    this.ackedUpdates += before - this.pending.length
    return before > 0 && this.pending.length === 0
  }
}
