import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeLocalView, applyWriteToMap, applyIncrement, Double, Timestamp } from '../hearth-client.mjs';

const doc = (path, fields, version = 1) => ({ path, fields, version, create_time: 't', update_time: 't' });
const inc = (path, n) => ({ op: 'merge', path, transforms: [{ field: 'n', transform: 'increment', value: n }] });

test('an unacknowledged write is applied and flagged pending', () => {
  const target = { doc: 'c/x' };
  const view = computeLocalView(target, { docs: [doc('c/x', { n: 1 })], position: 5 }, [{ ops: [inc('c/x', 1)], acked: false, seq: null }]);
  assert.equal(view.length, 1);
  assert.equal(view[0].fields.n, 2);
  assert.equal(view[0].pending, true);
});

test('an acknowledged increment counts until the view reaches its seq, never twice', () => {
  const target = { doc: 'c/x' };
  const pending = [{ ops: [inc('c/x', 1)], acked: true, seq: 10 }];
  // write_ok arrived, the changes frame carrying seq 10 not yet: old value + increment
  let view = computeLocalView(target, { docs: [doc('c/x', { n: 1 })], position: 9 }, pending);
  assert.equal(view[0].fields.n, 2);
  assert.equal(view[0].pending, true);
  // the frame with resume p10 contains the write: the server value alone
  view = computeLocalView(target, { docs: [doc('c/x', { n: 2 }, 10)], position: 10 }, pending);
  assert.equal(view[0].fields.n, 2);
  assert.equal(view[0].pending, false);
});

test('writes apply oldest first; deletes remove; pending flag only on touched documents', () => {
  const target = { query: { collection: 'c', order_by: [{ field: 'n' }] } };
  const base = { docs: [doc('c/a', { n: 1 }), doc('c/b', { n: 2 })], position: 3 };
  const view = computeLocalView(target, base, [
    { ops: [{ op: 'set', path: 'c/z', data: { n: 0 } }], acked: false },
    { ops: [{ op: 'delete', path: 'c/b' }], acked: false },
    { ops: [{ op: 'update', path: 'c/z', fields: { n: 5 } }], acked: false },
  ]);
  assert.deepEqual(view.map((d) => [d.path, d.fields.n, d.pending]), [['c/a', 1, false], ['c/z', 5, true]]);
});

test('a query view is filtered, ordered and cut to its limit again', () => {
  const target = { query: { collection: 'c', where: { field: 'n', op: '>=', value: 1 }, order_by: [{ field: 'n', direction: 'desc' }], limit: 2 } };
  const base = { docs: [doc('c/b', { n: 3 }), doc('c/a', { n: 2 })], position: 3 };
  let view = computeLocalView(target, base, [{ ops: [{ op: 'set', path: 'c/new', data: { n: 9 } }], acked: false }]);
  assert.deepEqual(view.map((d) => d.path), ['c/new', 'c/b'], 'the new document pushes the second one out');
  view = computeLocalView(target, base, [{ ops: [{ op: 'set', path: 'c/low', data: { n: 0 } }], acked: false }]);
  assert.deepEqual(view.map((d) => d.path), ['c/b', 'c/a'], 'a document that does not match stays out');
  view = computeLocalView(target, base, [{ ops: [{ op: 'update', path: 'c/b', fields: { n: 0 } }], acked: false }]);
  assert.deepEqual(view.map((d) => d.path), ['c/a'], 'a document that stops matching leaves');
  view = computeLocalView(target, base, [{ ops: [{ op: 'set', path: 'other/x', data: { n: 9 } }], acked: false }]);
  assert.deepEqual(view.map((d) => [d.path, d.pending]), [['c/b', false], ['c/a', false]], 'writes elsewhere do not touch it');
});

test('update/merge of a document outside a query view is left to the server', () => {
  const target = { query: { collection: 'c' } };
  const base = { docs: [], position: 3 };
  assert.deepEqual(computeLocalView(target, base, [{ ops: [{ op: 'update', path: 'c/a', fields: { n: 1 } }], acked: false }]), []);
  assert.deepEqual(computeLocalView(target, base, [{ ops: [inc('c/a', 1)], acked: false }]), []);
});

test('for a document target absence is known: merge creates, update does not', () => {
  const base = { docs: [], position: 3 };
  let view = computeLocalView({ doc: 'c/a' }, base, [{ ops: [inc('c/a', 1)], acked: false }]);
  assert.deepEqual(view.map((d) => d.fields), [{ n: 1 }]);
  view = computeLocalView({ doc: 'c/a' }, base, [{ ops: [{ op: 'update', path: 'c/a', fields: { n: 1 } }], acked: false }]);
  assert.deepEqual(view, []);
});

test('applyWriteToMap: field paths, transforms and preconditions', () => {
  const map = new Map([['c/a', doc('c/a', { m: { x: 1, y: 2 }, tags: ['a'], gone: 1 })]]);
  applyWriteToMap(map, {
    op: 'update', path: 'c/a', fields: { 'm.x': 5, '`odd.key`': true },
    transforms: [
      { field: 'tags', transform: 'array_union', values: ['a', 'b'] },
      { field: 'gone', transform: 'delete' },
      { field: 'ts', transform: 'server_timestamp' },
    ],
  }, false);
  const f = map.get('c/a').fields;
  assert.deepEqual(f.m, { x: 5, y: 2 });
  assert.equal(f['odd.key'], true);
  assert.deepEqual(f.tags, ['a', 'b']);
  assert.ok(!('gone' in f));
  assert.ok(f.ts instanceof Timestamp);
  assert.equal(applyWriteToMap(map, { op: 'create', path: 'c/a', data: {} }, true), false, 'create of an existing document');
  assert.equal(applyWriteToMap(map, { op: 'set', path: 'c/a', data: { z: 1 }, precondition: { exists: false } }, true), false);
  applyWriteToMap(map, { op: 'merge', path: 'c/a', fields: { tags: [] }, transforms: [{ field: 'tags', transform: 'array_remove', values: [1] }] }, true);
  assert.deepEqual(map.get('c/a').fields.tags, []);
});

test('applyIncrement: int64 saturation, integer + double, missing field', () => {
  assert.equal(applyIncrement(9223372036854775800n, 100), 9223372036854775807n);
  assert.equal(applyIncrement(-9223372036854775800n, -100), -9223372036854775808n);
  assert.equal(applyIncrement(9007199254740991, 2), 9007199254740993n, 'exact past 2^53');
  const d = applyIncrement(1, new Double(1));
  assert.ok(d instanceof Double && d.value === 2, 'integer + double is a double');
  assert.equal(applyIncrement(1, 0.5), 1.5);
  assert.equal(applyIncrement(undefined, 3), 3);
  assert.equal(applyIncrement('text', 3), 3);
});
