/**
 * Reconnect pauses: exponential backoff with "full jitter".
 *
 * The n-th retry in a row (n = 0, 1, 2, …) waits a uniformly random time in
 * [0, min(cap, base · 2^n)] milliseconds. Spreading retries over the whole window (rather
 * than around its upper end) keeps the clients of a crashed node from reconnecting in
 * lock-step and flooding its successor.
 *
 * @module backoff
 */

/** First window, in milliseconds. */
export const BACKOFF_BASE_MS = 100
/** Largest window, in milliseconds. */
export const BACKOFF_CAP_MS = 5000

/**
 * The upper bound of the n-th retry's window: min(cap, base · 2^n).
 * @param {number} attempt 0 for the first retry after a failure, 1 for the next, …
 * @param {{base?: number, cap?: number}} [opts]
 * @returns {number} milliseconds
 */
export function backoffCeiling (attempt, { base = BACKOFF_BASE_MS, cap = BACKOFF_CAP_MS } = {}) {
  const n = Number.isFinite(attempt) && attempt > 0 ? Math.floor(attempt) : 0
  // 2^n overflows to Infinity for huge n, which Math.min handles; a negative cap or base is
  // treated as 0.
  return Math.max(0, Math.min(cap, base * Math.pow(2, n)))
}

/**
 * A pause before the n-th retry in a row: uniform in [0, min(cap, base · 2^n)].
 * @param {number} attempt 0 for the first retry after a failure, 1 for the next, …
 * @param {{base?: number, cap?: number, random?: () => number}} [opts]
 *   random: a source of numbers in [0, 1) (Math.random by default; tests pin it)
 * @returns {number} milliseconds
 */
export function backoffDelay (attempt, { base = BACKOFF_BASE_MS, cap = BACKOFF_CAP_MS, random = Math.random } = {}) {
  const ceiling = backoffCeiling(attempt, { base, cap })
  const r = random()
  const unit = Number.isFinite(r) ? Math.min(1, Math.max(0, r)) : 0
  return unit * ceiling
}
