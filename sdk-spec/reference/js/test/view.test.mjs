import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  applyChanges, diffViews, compareValues, compareStrings, comparePaths, parseFieldPath,
  normalizedOrder, runQuery, Double, Timestamp,
} from '../hearth-client.mjs';

const doc = (path, fields) => ({ path, fields, version: 1 });

test('applyChanges: the limit-window example of PROTOCOL.md §12', () => {
  const bob = doc('scores/bob', { points: 90 });
  const ann = doc('scores/ann', { points: 70 });
  const cat = doc('scores/cat', { points: 50 });
  const out = applyChanges([bob, ann], [
    { kind: 'removed', doc: bob, old_index: 0, new_index: null },
    { kind: 'added', doc: cat, old_index: null, new_index: 1 },
  ]);
  assert.deepEqual(out.map((d) => d.path), ['scores/ann', 'scores/cat']);
});

test('applyChanges: modified documents move (absolute indexes)', () => {
  const a = doc('c/a', { n: 1 }); const b = doc('c/b', { n: 2 }); const c = doc('c/c', { n: 3 });
  const a2 = doc('c/a', { n: 4 });
  // a moves from first to last; b and c shift up without being reported
  const out = applyChanges([a, b, c], [{ kind: 'modified', doc: a2, old_index: 0, new_index: 2 }]);
  assert.deepEqual(out.map((d) => d.path), ['c/b', 'c/c', 'c/a']);
  assert.equal(out[2].fields.n, 4);
});

test('diffViews: lists every changed document and its application gives the new view', () => {
  let seed = 7;
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  for (let round = 0; round < 300; round++) {
    const mk = () => {
      const docs = [];
      for (let i = 0; i < 8; i++) if (rnd() < 0.6) docs.push({ path: `c/${i}`, fields: { n: Math.floor(rnd() * 3) }, pending: rnd() < 0.2 });
      // random order (a view need not be sorted by path)
      return docs.sort(() => rnd() - 0.5);
    };
    const prev = mk(); const next = mk();
    const ch = diffViews(prev, next);
    const applied = applyChanges(prev, ch);
    assert.deepEqual(applied.map((d) => d.path), next.map((d) => d.path));
    assert.deepEqual(applied.map((d) => d.fields), next.map((d) => d.fields));
    const paths = ch.map((c) => c.doc.path);
    assert.equal(new Set(paths).size, paths.length, 'each path at most once');
    for (const d of next) {
      const old = prev.find((p) => p.path === d.path);
      if (old && old.fields.n !== d.fields.n) assert.ok(paths.includes(d.path), 'every document whose fields changed is listed');
    }
    // removed first (ascending old_index), then the rest by ascending new_index
    const kinds = ch.map((c) => c.kind);
    const firstNonRemoved = kinds.findIndex((k) => k !== 'removed');
    if (firstNonRemoved >= 0) assert.ok(kinds.slice(firstNonRemoved).every((k) => k !== 'removed'));
  }
});

test('diffViews: an unchanged view yields no changes; the first view is all added', () => {
  const v = [doc('c/a', { n: 1 }), doc('c/b', { n: 2 })];
  assert.deepEqual(diffViews(v, v.map((d) => ({ ...d }))), []);
  assert.deepEqual(diffViews([], v).map((c) => [c.kind, c.old_index, c.new_index]), [['added', null, 0], ['added', null, 1]]);
});

test('compareValues: the cross-type order of PROTOCOL.md §2', () => {
  const ordered = [null, false, true, NaN, -1, 1n, new Double(1.5), 2, Timestamp.parse('2020-01-01T00:00:00Z'), 'a', new Uint8Array([0]), [1], { a: 1 }];
  for (let i = 0; i < ordered.length; i++) {
    for (let j = 0; j < ordered.length; j++) {
      const c = compareValues(ordered[i], ordered[j]);
      assert.equal(Math.sign(c), Math.sign(i - j), `${String(ordered[i])} vs ${String(ordered[j])}`);
    }
  }
  assert.equal(compareValues(1, new Double(1)), 0, 'integers and doubles compare numerically');
  assert.equal(compareValues(9007199254740993n, 9007199254740992), 1, 'exact beyond 2^53');
  assert.equal(compareValues([1, 2], [1]), 1, 'shorter array first');
  assert.equal(compareValues({ a: 1 }, { a: 1, b: 0 }), -1);
  assert.equal(compareValues({ a: 2 }, { b: 1 }), -1, 'maps compare by key first');
});

test('compareStrings: by UTF-8 bytes, not UTF-16 code units', () => {
  // U+FF61 is above U+1F600 in UTF-16 (0xFF61 > 0xD83D) but below it in UTF-8
  assert.equal(compareStrings('\uff61', '\u{1f600}'), -1);
  assert.equal('\uff61' < '\u{1f600}', false, 'JavaScript < says otherwise');
  assert.equal(compareStrings('ab', 'abc'), -1);
  assert.equal(compareStrings('b', 'abc'), 1);
});

test('comparePaths: segment by segment', () => {
  assert.equal(comparePaths('c/a/x/1', 'c/a-b'), -1, '"a" < "a-b" although "/" > "-"');
  assert.equal(comparePaths('c/b', 'c/a'), 1);
});

test('parseFieldPath: backtick-quoted segments with escapes', () => {
  assert.deepEqual(parseFieldPath('a.b'), ['a', 'b']);
  assert.deepEqual(parseFieldPath('tags.`a.b`'), ['tags', 'a.b']);
  assert.deepEqual(parseFieldPath('`x\\`y`.z'), ['x`y', 'z']);
});

test('normalizedOrder and runQuery: inequality fields, __name__, limits, cursors', () => {
  const q = { collection: 'c', where: { and: [{ field: 'n', op: '>', value: 0 }, { field: 'a', op: '!=', value: 'x' }] }, order_by: [{ field: 'm', direction: 'desc' }] };
  // `__name__` takes the direction of the entry before it, here the implicit (ascending) `n`, as the server does.
  assert.deepEqual(normalizedOrder(q).map((o) => [o.field, o.desc]), [['m', true], ['a', false], ['n', false], ['__name__', false]]);
  assert.deepEqual(normalizedOrder({ collection: 'c', order_by: [{ field: 'm', direction: 'desc' }] }).map((o) => [o.field, o.desc]), [['m', true], ['__name__', true]]);
  assert.deepEqual(normalizedOrder({ collection: 'c' }).map((o) => [o.field, o.desc]), [['__name__', false]]);
  const docs = [
    doc('c/1', { n: 1, a: 'y', m: 1 }),
    doc('c/2', { n: 2, a: 'y', m: 2 }),
    doc('c/3', { n: 0, a: 'y', m: 3 }), // n not > 0
    doc('c/4', { n: 3, a: 'x', m: 4 }), // a == x
    doc('c/5', { n: 3, m: 5 }), // no a: no match
    doc('c/6', { n: '9', a: 'y', m: 6 }), // string not comparable with number
    doc('d/7', { n: 3, a: 'y', m: 7 }), // other collection
  ];
  assert.deepEqual(runQuery(q, docs).map((d) => d.path), ['c/2', 'c/1']);
  assert.deepEqual(runQuery({ ...q, limit: 1 }, docs).map((d) => d.path), ['c/2']);
  assert.deepEqual(runQuery({ ...q, limit: 1, limit_to_last: true }, docs).map((d) => d.path), ['c/1']);
  const byN = { collection: 'c', order_by: [{ field: 'n' }] };
  const nums = [doc('c/a', { n: 1 }), doc('c/b', { n: 2 }), doc('c/c', { n: 3 })];
  assert.deepEqual(runQuery({ ...byN, start_at: { values: [2] } }, nums).map((d) => d.path), ['c/b', 'c/c']);
  assert.deepEqual(runQuery({ ...byN, start_at: { values: [2], inclusive: false } }, nums).map((d) => d.path), ['c/c']);
  assert.deepEqual(runQuery({ ...byN, end_at: { values: [2], inclusive: false } }, nums).map((d) => d.path), ['c/a']);
  assert.deepEqual(runQuery({ ...byN, limit: 0 }, nums), []);
  const arr = [doc('c/a', { t: ['x', 1] }), doc('c/b', { t: ['y'] }), doc('c/c', { t: 'x' })];
  assert.deepEqual(runQuery({ collection: 'c', where: { field: 't', op: 'array-contains', value: 'x' } }, arr).map((d) => d.path), ['c/a']);
  assert.deepEqual(runQuery({ collection: 'c', where: { field: 't', op: 'array-contains-any', value: [new Double(1), 'y'] } }, arr).map((d) => d.path), ['c/a', 'c/b']);
  assert.deepEqual(runQuery({ collection: 'c', where: { or: [{ field: 't', op: '==', value: 'x' }, { field: 't', op: 'in', value: [['y']] }] } }, arr).map((d) => d.path), ['c/b', 'c/c']);
});
