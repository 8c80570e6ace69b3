// Unit tests of the reconnect backoff: full jitter within [0, min(cap, base * 2^n)].

import { test } from 'node:test'
import assert from 'node:assert/strict'

import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, backoffCeiling, backoffDelay } from '../src/index.js'

test('defaults are base 100 ms and cap 5 s', () => {
  assert.equal(BACKOFF_BASE_MS, 100)
  assert.equal(BACKOFF_CAP_MS, 5000)
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 20, 2000].map((n) => backoffCeiling(n)),
    [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000])
})

test('every delay lies within [0, min(cap, base * 2^n)], reaching both ends', () => {
  for (let n = 0; n < 40; n++) {
    const ceiling = Math.min(5000, 100 * 2 ** n)
    assert.equal(backoffDelay(n, { random: () => 0 }), 0, `attempt ${n}, random 0`)
    // random() is in [0, 1); a source returning 1 (or more) must still respect the ceiling.
    assert.equal(backoffDelay(n, { random: () => 1 }), ceiling, `attempt ${n}, random 1`)
    assert.equal(backoffDelay(n, { random: () => 7 }), ceiling, `attempt ${n}, random 7`)
    assert.equal(backoffDelay(n, { random: () => -3 }), 0, `attempt ${n}, random -3`)
    assert.equal(backoffDelay(n, { random: () => 0.5 }), ceiling / 2, `attempt ${n}, random 0.5`)
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(n)
      assert.ok(d >= 0 && d <= ceiling, `attempt ${n}: ${d} outside [0, ${ceiling}]`)
    }
  }
})

test('the window grows with the attempt and stops at the cap', () => {
  let prev = -1
  for (let n = 0; n < 12; n++) {
    const c = backoffCeiling(n)
    assert.ok(c >= prev, `ceiling shrank at attempt ${n}: ${prev} -> ${c}`)
    if (100 * 2 ** n <= 5000) assert.equal(c, 100 * 2 ** n)
    prev = c
  }
  // Jitter is spread over the whole window: the mean of many draws is about half of it,
  // so the mean grows with the attempt too.
  const mean = (n) => {
    let sum = 0
    for (let i = 0; i < 4000; i++) sum += backoffDelay(n)
    return sum / 4000
  }
  const m0 = mean(0)
  const m3 = mean(3)
  const m10 = mean(10)
  assert.ok(m0 > 35 && m0 < 65, `mean of attempt 0: ${m0}`)
  assert.ok(m3 > 340 && m3 < 460, `mean of attempt 3: ${m3}`)
  assert.ok(m10 > 2200 && m10 < 2800, `mean of attempt 10 (capped): ${m10}`)
  assert.ok(m0 < m3 && m3 < m10)
})

test('custom base and cap; nonsense attempts count as the first', () => {
  assert.equal(backoffCeiling(0, { base: 50, cap: 300 }), 50)
  assert.equal(backoffCeiling(2, { base: 50, cap: 300 }), 200)
  assert.equal(backoffCeiling(3, { base: 50, cap: 300 }), 300)
  assert.equal(backoffCeiling(-4), 100)
  assert.equal(backoffCeiling(NaN), 100)
  assert.equal(backoffCeiling(Infinity), 100)
  assert.equal(backoffDelay(1e6, { random: () => 1 }), 5000)
})
