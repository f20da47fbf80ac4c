// The offline read cache of subscription views (PROTOCOL.md §13 "An offline read cache"):
// records of (target, server view, resume token) in the persistence store, shown at once after a
// restart and resumed from; the file store's records, their bound, torn records, the in-doubt rule.
// The IndexedDB variant is at the end (fake-indexeddb and the fake Web Locks, injected).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { IDBFactory } from 'fake-indexeddb';
import {
  HearthClient, HearthError, FileWriteStore, IndexedDbWriteStore, increment, Double, Timestamp,
  sha256Hex, canonicalTarget, encodeViewRecord, decodeViewRecord, MAX_CACHED_VIEWS,
} from '../hearth-client.mjs';
import {
  fakeNetwork, fakeLocks, tick, until, doc, ok, welcomed, cachedQuery, firstRunCachesView, restartShowsCachedView, cleanup,
} from './support.mjs';

const { track, tmpDir } = cleanup('hearth-views-');

/** The wire target of `cachedQuery` and the name of its record in a file store (computed independently). */
const QT = { query: { order_by: [{ direction: 'asc', field: 'n' }], collection: 'c' } };
const QKEY = '{"query":{"collection":"c","order_by":[{"direction":"asc","field":"n"}]}}';
const viewPath = (dir, key = QKEY) => path.join(dir, 'views', createHash('sha256').update(key).digest('hex') + '.json');
const readRecord = (dir, key = QKEY) => JSON.parse(fs.readFileSync(viewPath(dir, key), 'utf8'));
/** The process "dies": its lock file goes (the client object is left idle, offline with a long backoff). */
const kill = (dir) => fs.unlinkSync(path.join(dir, 'lock'));
const newClient = (net, persistence, extra = {}) => track(new HearthClient({
  url: 'ws://t/v1/ws', WebSocket: net.FakeWebSocket, persistence, cacheViewsDelayMs: 20, backoffBaseMs: 60000, ...extra,
}));

test('canonical target: keys sorted at every level, no whitespace; SHA-256 as node:crypto computes it', () => {
  assert.equal(canonicalTarget(QT), QKEY);
  assert.equal(canonicalTarget({ doc: 'c/z' }), '{"doc":"c/z"}');
  assert.equal(canonicalTarget({ query: { collection: 'c', where: { op: '==', value: new Double(1), field: 'x' } } }),
    '{"query":{"collection":"c","where":{"field":"x","op":"==","value":1.0}}}', 'an integral double stays a double');
  for (const t of ['', 'abc', 'a'.repeat(55), 'a'.repeat(56), 'a'.repeat(64), 'é✓𝄞'.repeat(40), QKEY]) {
    assert.equal(sha256Hex(t), createHash('sha256').update(t).digest('hex'), `length ${t.length}`);
  }
});

test('view record: exact values survive the round trip; a torn record, another target or another format is refused', () => {
  const fields = { i: 1, big: 2n ** 60n, d: new Double(2), f: 0.5, t: new Timestamp(5, 7), b: new Uint8Array([1, 2]), m: { $x: 1 }, a: [null, true, 's'] };
  const text = encodeViewRecord(QT, [{ path: 'c/a', fields, version: 3, create_time: 'x', update_time: 'y', pending: true }], 'p3', 42);
  const rec = decodeViewRecord(text, QKEY);
  assert.equal(rec.resume, 'p3');
  assert.equal(rec.savedAt, 42);
  assert.deepEqual(rec.docs, [{ path: 'c/a', fields, version: 3, create_time: 'x', update_time: 'y' }], 'no pending flag stored');
  assert.ok(rec.docs[0].fields.d instanceof Double);
  assert.equal(typeof rec.docs[0].fields.big, 'bigint');
  assert.ok(rec.docs[0].fields.t instanceof Timestamp);
  assert.equal(decodeViewRecord(text.slice(0, text.length - 7), QKEY), null, 'torn');
  assert.equal(decodeViewRecord(text, '{"doc":"c/a"}'), null, 'another target');
  assert.equal(decodeViewRecord(encodeViewRecord({ query: { collection: 'c' } }, [], 'p1'), QKEY), null, 'another target under this key');
  assert.equal(decodeViewRecord(text.replace('"hearth-view"', '"other"'), QKEY), null, 'another format');
  assert.equal(decodeViewRecord('{"format":"hearth-view","version":1,"target":' + QKEY + ',"resume":"p1","docs":[{"path":1}]}', QKEY), null, 'a malformed document');
});

test('file store: one record per target in views/ (named by the SHA-256 of the canonical target, written aside and renamed), at most 100, least recently saved evicted', () => {
  const dir = tmpDir();
  const s1 = new FileWriteStore(dir);
  s1.open();
  assert.equal(s1.loadView(QKEY), null);
  s1.saveView(QKEY, 'one');
  s1.saveView(QKEY, 'two');
  assert.equal(fs.readFileSync(viewPath(dir), 'utf8'), 'two');
  assert.deepEqual(fs.readdirSync(path.join(dir, 'views')), [path.basename(viewPath(dir))], 'one file, no temporary left');
  assert.equal(s1.loadView(QKEY), 'two');
  s1.deleteView(QKEY);
  s1.deleteView(QKEY); // absent: no error
  assert.equal(s1.loadView(QKEY), null);
  // the bound: 101 targets saved, the first one is gone; saving again makes a record the most recent
  const key = (i) => `{"doc":"c/d${i}"}`;
  for (let i = 0; i < MAX_CACHED_VIEWS; i++) s1.saveView(key(i), `v${i}`);
  s1.saveView(key(0), 'v0 again');
  s1.saveView(key(100), 'v100');
  assert.equal(fs.readdirSync(path.join(dir, 'views')).length, MAX_CACHED_VIEWS);
  assert.equal(s1.loadView(key(0)), 'v0 again', 're-saved: kept');
  assert.equal(s1.loadView(key(1)), null, 'least recently saved: evicted');
  assert.equal(s1.loadView(key(100)), 'v100');
  s1.close();
  assert.throws(() => s1.loadView(key(0)), (e) => e.code === 'failed-precondition', 'closed');
  // on open: the order comes from the files' times; a temporary left by a crash is removed; the bound applies
  const vdir = path.join(dir, 'views');
  for (const [i, name] of fs.readdirSync(vdir).entries()) fs.utimesSync(path.join(vdir, name), 1000 + i, 1000 + i);
  const oldest = fs.readdirSync(vdir)[0];
  fs.writeFileSync(path.join(vdir, 'abc.json.tmp'), 'half');
  const s2 = new FileWriteStore(dir, { maxViews: 50 });
  s2.open();
  const left = fs.readdirSync(vdir);
  assert.equal(left.length, 50);
  assert.ok(!left.includes('abc.json.tmp'));
  assert.ok(!left.includes(oldest));
  assert.ok(left.includes(fs.readdirSync(vdir).at(-1)));
  s2.close();
});

test('restart: the cached view is shown at once offline, the subscribe carries its token, the server\'s changes are applied on it, and the new view is saved', async () => {
  const dir = tmpDir();
  const persistence = { dir };
  const net1 = fakeNetwork();
  const c1 = newClient(net1, persistence);
  await firstRunCachesView(c1, net1, () => fs.existsSync(viewPath(dir)));
  const saved = readRecord(dir);
  assert.deepEqual(saved.target, QT);
  assert.equal(saved.resume, 'p5');
  assert.deepEqual(saved.docs.map((d) => [d.path, d.fields.n]), [['c/a', 1], ['c/b', 2], ['c/c', 3]]);
  kill(dir);

  const net2 = fakeNetwork();
  const c2 = newClient(net2, persistence);
  await restartShowsCachedView(c2, net2);
  await until(() => readRecord(dir).resume === 'p9', 'the changed view saved');
  assert.deepEqual(readRecord(dir).docs.map((d) => [d.path, d.fields.n]), [['c/c', 3], ['c/d', 4], ['c/b', 20]]);
  c2.close();
});

test('frames of one moment are saved as one record; saved at unsubscribe and at close, not before the delay', async () => {
  const dir = tmpDir();
  const inner = new FileWriteStore(dir);
  const saves = [];
  // a store object: the file store, counting saves
  const store = {
    open: () => inner.open(), add: (w) => inner.add(w), markSent: (i, a) => inner.markSent(i, a), remove: (i) => inner.remove(i), close: () => inner.close(),
    loadView: (k) => inner.loadView(k), deleteView: (k) => inner.deleteView(k),
    saveView: (k, t) => { saves.push([k, JSON.parse(t).resume]); inner.saveView(k, t); },
  };
  const net = fakeNetwork();
  const c = newClient(net, store, { cacheViewsDelayMs: 200 });
  c.connect();
  const s = await welcomed(net, 0);
  const stopQ = cachedQuery(c).onSnapshot(() => {});
  c.doc('c/z').onSnapshot(() => {});
  const [q, z] = s.sentOf('subscribe');
  s.frame({ type: 'snapshot', sub: q.sub, resume: 'p5', reset: false, docs: [doc('c/a', { n: 1 }, 5)] });
  s.frame({ type: 'changes', sub: q.sub, resume: 'p6', changes: [{ kind: 'added', doc: doc('c/b', { n: 2 }, 6), old_index: null, new_index: 1 }] });
  s.frame({ type: 'snapshot', sub: z.sub, resume: 'p6', reset: false, docs: [] });
  await tick(50);
  assert.deepEqual(saves, [], 'not saved at once');
  await until(() => saves.length === 2, 'saved after the delay', 2000);
  assert.deepEqual(saves, [[QKEY, 'p6'], ['{"doc":"c/z"}', 'p6']], 'one save per view for the frames of that second');
  // unsubscribe saves a changed view at once; close saves the rest
  s.frame({ type: 'changes', sub: q.sub, resume: 'p7', changes: [{ kind: 'removed', doc: doc('c/a', { n: 1 }, 5), old_index: 0, new_index: null }] });
  s.frame({ type: 'changes', sub: z.sub, resume: 'p7', changes: [{ kind: 'added', doc: doc('c/z', { n: 9 }, 7), old_index: null, new_index: 0 }] });
  stopQ();
  assert.deepEqual(saves.at(-1), [QKEY, 'p7']);
  assert.equal(saves.length, 3);
  c.close();
  assert.deepEqual(saves.at(-1), ['{"doc":"c/z"}', 'p7']);
  assert.equal(saves.length, 4);
  assert.equal(JSON.parse(fs.readFileSync(viewPath(dir, '{"doc":"c/z"}'), 'utf8')).docs[0].fields.n, 9);
});

test('the server\'s first frame after a cached view: a snapshot replaces it, a reset snapshot replaces it and is flagged reset', async () => {
  for (const reset of [false, true]) {
    const dir = tmpDir();
    const net1 = fakeNetwork();
    await firstRunCachesView(newClient(net1, { dir }), net1, () => fs.existsSync(viewPath(dir)));
    kill(dir);
    const net2 = fakeNetwork();
    const c2 = newClient(net2, { dir });
    const seen = [];
    cachedQuery(c2).onSnapshot((s) => seen.push(s));
    assert.equal(seen.length, 1, 'shown at once (the file store is synchronous)');
    c2.connect();
    const s2 = await welcomed(net2, 0);
    const q = s2.sentOf('subscribe')[0];
    assert.equal(q.resume, 'p5');
    s2.frame({ type: 'snapshot', sub: q.sub, resume: 'p40', reset, docs: [doc('c/b', { n: 2 }, 4), doc('c/x', { n: 7 }, 40)] });
    const last = seen.at(-1);
    assert.deepEqual(last.docs.map((d) => d.id), ['b', 'x'], 'exactly the server\'s documents (a, c gone)');
    assert.equal(last.reset, reset);
    assert.equal(last.fromCache, false);
    assert.deepEqual(last.changes.map((c) => [c.kind, c.doc.id]), [['removed', 'a'], ['removed', 'c'], ['added', 'x']]);
    await until(() => readRecord(dir).resume === 'p40', 'the replaced view saved');
    c2.close();
  }
});

test('a torn record, or one holding another target, is ignored: nothing shown from the cache, no resume token', async () => {
  for (const content of ['{"format":"hearth-view","version":1,"target":{"query":{"coll', encodeViewRecord({ doc: 'c/other' }, [doc('c/other', { n: 1 })], 'p3')]) {
    const dir = tmpDir();
    const st = new FileWriteStore(dir);
    st.open();
    st.close();
    fs.writeFileSync(viewPath(dir), content);
    const net = fakeNetwork();
    const logs = [];
    const c = newClient(net, { dir }, { logger: (m) => logs.push(m) });
    const seen = [];
    cachedQuery(c).onSnapshot((s) => seen.push(s));
    assert.deepEqual(seen, []);
    assert.ok(logs.some((m) => m.startsWith('warning: ignoring an unreadable cached view')));
    c.connect();
    const s = await welcomed(net, 0);
    const q = s.sentOf('subscribe')[0];
    assert.equal(q.resume, undefined);
    s.frame({ type: 'snapshot', sub: q.sub, resume: 'p8', reset: false, docs: [doc('c/a', { n: 1 }, 8)] });
    assert.deepEqual(seen.map((x) => [x.docs.map((d) => d.id), x.fromCache]), [[['a'], false]]);
    await until(() => { try { return readRecord(dir).resume === 'p8'; } catch { return false; } }, 'replaced by a good record');
    c.close();
  }
});

test('a subscription refused by the server drops its record; a later one shows nothing cached', async () => {
  const dir = tmpDir();
  const net1 = fakeNetwork();
  await firstRunCachesView(newClient(net1, { dir }), net1, () => fs.existsSync(viewPath(dir)));
  kill(dir);
  const net2 = fakeNetwork();
  const c2 = newClient(net2, { dir });
  const seen = [];
  const errors = [];
  cachedQuery(c2).onSnapshot((s) => seen.push(s), (e) => errors.push(e.code));
  assert.equal(seen.length, 1, 'the cached view, shown before the server is asked');
  c2.connect();
  const s2 = await welcomed(net2, 0);
  const q = s2.sentOf('subscribe')[0];
  s2.frame({ type: 'error', id: q.id, sub: q.sub, code: 'permission-denied', message: 'rules' });
  assert.deepEqual(errors, ['permission-denied']);
  assert.equal(fs.existsSync(viewPath(dir)), false, 'record dropped');
  const again = [];
  cachedQuery(c2).onSnapshot((s) => again.push(s), () => {});
  await tick(30);
  assert.deepEqual(again, []);
  assert.equal(s2.sentOf('subscribe')[1].resume, undefined);
  c2.close();
  assert.equal(fs.existsSync(viewPath(dir)), false, 'not saved again at close');
});

test('a write in doubt touching a cached subscription: nothing shown until its retry is answered, the increment never counted twice', async () => {
  // The journal still holds an increment that was sent (its `done` mark lost), and the cached view was
  // saved after the increment's commit reached it (n = 1 at p4).
  const dir = tmpDir();
  const st = new FileWriteStore(dir);
  st.open();
  st.add({ mutation_id: 'inc', writes: '[{"op":"update","path":"c/counter","transforms":[{"field":"n","transform":"increment","value":1}]}]', created_at: Date.now(), sent_at: Date.now() });
  st.add({ mutation_id: 'new', writes: '[{"op":"set","path":"c/new","data":{"n":50}}]', created_at: Date.now(), sent_at: null });
  st.saveView(QKEY, encodeViewRecord(QT, [doc('c/counter', { n: 1 }, 4)], 'p4'));
  st.saveView('{"doc":"c/counter"}', encodeViewRecord({ doc: 'c/counter' }, [doc('c/counter', { n: 1 }, 4)], 'p4'));
  st.close();
  const net = fakeNetwork();
  const c = newClient(net, { dir });
  const seen = [];
  cachedQuery(c).onSnapshot((s) => seen.push(s.docs.map((d) => [d.id, d.fields.n, d.pending])));
  const counter = [];
  c.doc('c/counter').onSnapshot((s) => counter.push(s.doc && s.doc.fields.n));
  // only the never-sent write shows (on an empty stand-in), not the cached counter with the increment on top
  assert.deepEqual(seen, [[['new', 50, true]]]);
  assert.deepEqual(counter, [], 'the counter\'s document: nothing shown');
  c.connect();
  const s = await welcomed(net, 0);
  const [q, d] = s.sentOf('subscribe');
  assert.equal(q.resume, 'p4', 'resumed from the cached token all the same');
  assert.equal(d.resume, 'p4');
  const [inc, nw] = s.sentOf('write');
  s.frame({ type: 'changes', sub: q.sub, resume: 'p4', changes: [] });
  s.frame({ type: 'changes', sub: d.sub, resume: 'p4', changes: [] });
  assert.deepEqual(counter, [], 'still nothing: the retry is not answered');
  assert.ok(seen.every((v) => v.every(([id, n]) => id !== 'counter' || n === 1)), JSON.stringify(seen));
  s.frame(ok(inc, 4, true));
  assert.deepEqual(seen.at(-1), [['counter', 1, false], ['new', 50, true]]);
  assert.equal(counter.at(-1), 1);
  s.frame(ok(nw, 5));
  s.frame({ type: 'changes', sub: q.sub, resume: 'p5', changes: [{ kind: 'added', doc: doc('c/new', { n: 50 }, 5), old_index: null, new_index: 1 }] });
  assert.deepEqual(seen.at(-1), [['counter', 1, false], ['new', 50, false]]);
  assert.ok(seen.every((v) => v.every(([id, n]) => id !== 'counter' || n === 1)), `never 2: ${JSON.stringify(seen)}`);
  assert.ok(counter.every((n) => n === 1), `never 2: ${JSON.stringify(counter)}`);
  c.close();
});

test('pending writes show on top of the cached view; cacheViews: false keeps no views; the option needs a store that can', async () => {
  const dir = tmpDir();
  const net1 = fakeNetwork();
  await firstRunCachesView(newClient(net1, { dir }), net1, () => fs.existsSync(viewPath(dir)));
  kill(dir);
  const c2 = newClient(fakeNetwork(), { dir });
  const seen = [];
  cachedQuery(c2).onSnapshot((s) => seen.push(s));
  c2.doc('c/b').update({ n: 2.5 }).catch(() => {});
  assert.deepEqual(seen.at(-1).docs.map((d) => [d.id, d.fields.n, d.pending]), [['a', 1, false], ['b', 2.5, true], ['c', 3, false]]);
  assert.equal(seen.at(-1).hasPendingWrites, true);
  assert.equal(seen.at(-1).fromCache, true);
  c2.close();

  // cacheViews: false: the record is neither used nor written
  const net3 = fakeNetwork();
  const c3 = newClient(net3, { dir }, { cacheViews: false });
  const seen3 = [];
  cachedQuery(c3).onSnapshot((s) => seen3.push(s));
  c3.connect();
  const s3 = await welcomed(net3, 0);
  assert.ok(seen3.every((s) => !s.docs.some((d) => d.id === 'a')), 'the cached a, b, c not shown');
  assert.equal(s3.sentOf('subscribe')[0].resume, undefined);
  const before = fs.readFileSync(viewPath(dir), 'utf8');
  s3.frame({ type: 'snapshot', sub: s3.sentOf('subscribe')[0].sub, resume: 'p30', reset: false, docs: [] });
  await tick(60);
  c3.close();
  assert.equal(fs.readFileSync(viewPath(dir), 'utf8'), before, 'not written');

  assert.throws(() => new HearthClient({ url: 'ws://t/v1/ws', cacheViews: true }), (e) => e instanceof HearthError && e.code === 'invalid-argument');
  const bare = { open: () => [], add() {}, markSent() {}, remove() {}, close() {} };
  assert.throws(() => new HearthClient({ url: 'ws://t/v1/ws', persistence: bare, cacheViews: true }), (e) => e.code === 'unimplemented');
  const plain = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: fakeNetwork().FakeWebSocket, persistence: bare }));
  assert.equal(plain._cacheViews, false, 'a store without view methods: no cache, no error');
  plain.close();
});

test('clearPersistence (sign-out) deletes the pending writes and the cached views; refused while another client uses the store', async () => {
  const dir = tmpDir();
  const net1 = fakeNetwork();
  const c1 = newClient(net1, { dir });
  await firstRunCachesView(c1, net1, () => fs.existsSync(viewPath(dir)));
  c1.doc('c/q').set({ n: 1 }).catch(() => {}); // queued offline, stored
  assert.equal(fs.readFileSync(path.join(dir, 'writes.jsonl'), 'utf8').split('\n').filter(Boolean).length, 2);
  await assert.rejects(HearthClient.clearPersistence({ dir }), (e) => e.code === 'failed-precondition', 'c1 holds the lock');
  assert.ok(fs.existsSync(viewPath(dir)));
  await c1.clearPersistence();
  assert.equal(c1.state, 'closed');
  assert.deepEqual(fs.readdirSync(dir), [], 'journal, views and lock gone');
  // a new client on the directory starts empty
  const c2 = newClient(fakeNetwork(), { dir });
  assert.equal(c2.restoredWrites.length, 0);
  const seen = [];
  cachedQuery(c2).onSnapshot((s) => seen.push(s));
  assert.deepEqual(seen, []);
  c2.close();
  await HearthClient.clearPersistence({ dir });
  await HearthClient.clearPersistence({ dir: path.join(dir, 'never-made') });
});

// --- IndexedDB ---------------------------------------------------------------------------------

/** A record of the `views` object store, read with the plain IndexedDB API. */
function rawView(idb, name, key) {
  return new Promise((resolve, reject) => {
    const req = idb.open(name);
    req.onerror = () => reject(req.error);
    req.onsuccess = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains('views')) { db.close(); resolve(undefined); return; }
      const get = db.transaction('views', 'readonly').objectStore('views').get(key);
      get.onsuccess = () => { db.close(); resolve(get.result); };
      get.onerror = () => { db.close(); reject(get.error); };
    };
  });
}

test('IndexedDB store: views keyed by the canonical target, bounded (least recently saved evicted); a version-1 database is upgraded with its writes kept', async () => {
  const indexedDB = new IDBFactory();
  const locks = fakeLocks();
  // a database made by the previous version of the client: version 1, the `writes` store only
  await new Promise((resolve, reject) => {
    const req = indexedDB.open('app', 1);
    req.onupgradeneeded = () => { req.result.createObjectStore('writes', { keyPath: 'order' }).add({ order: 1, mutation_id: 'old', writes: '[]', created_at: 1, sent_at: null }); };
    req.onsuccess = () => { req.result.close(); resolve(); };
    req.onerror = () => reject(req.error);
  });
  const s1 = new IndexedDbWriteStore('app', { indexedDB, locks, maxViews: 3 });
  assert.deepEqual((await s1.open()).map((w) => w.mutation_id), ['old'], 'the queued write survives the upgrade');
  assert.equal(await s1.loadView(QKEY), null);
  await s1.saveView(QKEY, 'q1');
  await s1.saveView(QKEY, 'q2');
  assert.equal(await s1.loadView(QKEY), 'q2');
  const rec = await rawView(indexedDB, 'app', QKEY);
  assert.deepEqual(Object.keys(rec).sort(), ['key', 'record', 'saved_at']);
  for (const k of ['{"doc":"a"}', '{"doc":"b"}']) await s1.saveView(k, k);
  await s1.saveView(QKEY, 'q3'); // now the most recently saved
  await s1.saveView('{"doc":"c"}', 'c');
  assert.equal(await s1.loadView('{"doc":"a"}'), null, 'least recently saved: evicted');
  for (const [k, v] of [['{"doc":"b"}', '{"doc":"b"}'], [QKEY, 'q3'], ['{"doc":"c"}', 'c']]) assert.equal(await s1.loadView(k), v);
  await s1.deleteView(QKEY);
  assert.equal(await s1.loadView(QKEY), null);
  await s1.close();
  // the order survives a reopen (saved_at continues after the newest)
  const s2 = new IndexedDbWriteStore('app', { indexedDB, locks, maxViews: 2 });
  await s2.open();
  await s2.saveView('{"doc":"d"}', 'd');
  assert.equal(await s2.loadView('{"doc":"b"}'), null);
  assert.equal(await s2.loadView('{"doc":"c"}'), 'c');
  assert.equal(await s2.loadView('{"doc":"d"}'), 'd');
  await s2.close();
});

test('client on IndexedDB: after a restart the cached view shows before any connection, the subscribe resumes from its token, changes apply on it; clearPersistence deletes the database', async () => {
  const indexedDB = new IDBFactory();
  const locks = fakeLocks();
  const persistence = { indexedDb: 'chat', indexedDB, locks };
  const net1 = fakeNetwork();
  const c1 = newClient(net1, persistence);
  const token = async (key) => { const r = await rawView(indexedDB, 'chat', key); return r ? decodeViewRecord(r.record, key)?.resume : undefined; };
  await firstRunCachesView(c1, net1, async () => (await token(QKEY)) === 'p5');
  c1.close();

  const net2 = fakeNetwork();
  const c2 = newClient(net2, persistence);
  await restartShowsCachedView(c2, net2);
  await until(async () => (await token(QKEY)) === 'p9', 'the changed view saved');
  // a refused subscription drops its record
  const s2 = net2.sockets[0];
  c2.doc('c/secret').onSnapshot(() => {}, () => {});
  await until(() => s2.sentOf('subscribe').length === 4, 'subscribed');
  const sec = s2.sentOf('subscribe')[3];
  s2.frame({ type: 'snapshot', sub: sec.sub, resume: 'p9', reset: false, docs: [doc('c/secret', { n: 1 }, 2)] });
  await until(async () => (await token('{"doc":"c/secret"}')) === 'p9', 'secret cached');
  s2.frame({ type: 'error', sub: sec.sub, code: 'permission-denied', message: 'revoked' });
  await until(async () => (await rawView(indexedDB, 'chat', '{"doc":"c/secret"}')) === undefined, 'secret dropped');
  // sign-out
  await c2.clearPersistence();
  const names = (await indexedDB.databases()).map((d) => d.name);
  assert.ok(!names.includes('chat'), `database deleted: ${names}`);
  assert.deepEqual(await locks.query(), { held: [], pending: [] });
});
