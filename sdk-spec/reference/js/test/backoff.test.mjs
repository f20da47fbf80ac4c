import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, resumePosition } from '../hearth-client.mjs';

test('full jitter: the cap doubles from 250 ms and stops at 30 s', () => {
  const max = () => 1 - Number.EPSILON;
  assert.ok(Math.abs(backoffDelay(0, {}, max) - 250) < 1e-6);
  assert.ok(Math.abs(backoffDelay(1, {}, max) - 500) < 1e-6);
  assert.ok(Math.abs(backoffDelay(2, {}, max) - 1000) < 1e-6);
  assert.ok(Math.abs(backoffDelay(7, {}, max) - 30000) < 1e-3);
  assert.ok(Math.abs(backoffDelay(1000, {}, max) - 30000) < 1e-3, 'no overflow for large n');
  assert.equal(backoffDelay(5, {}, () => 0), 0, 'the wait can be zero (full jitter)');
  assert.equal(backoffDelay(3, { baseMs: 100, maxMs: 500 }, () => 0.5), 250);
});

test('full jitter: waits are spread over [0, cap]', () => {
  const waits = Array.from({ length: 2000 }, () => backoffDelay(2));
  assert.ok(waits.every((w) => w >= 0 && w <= 1000));
  const mean = waits.reduce((a, b) => a + b, 0) / waits.length;
  assert.ok(mean > 400 && mean < 600, `mean ${mean}`);
});

test('resume tokens: p<seq> parses to its position, anything else to null', () => {
  assert.equal(resumePosition('p57'), 57);
  assert.equal(resumePosition('p0'), 0);
  assert.equal(resumePosition('x57'), null);
  assert.equal(resumePosition(null), null);
});
