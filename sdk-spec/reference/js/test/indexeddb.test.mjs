// The browser store of the pending-write queue (IndexedDbWriteStore, PROTOCOL.md §13
// "Surviving a restart") against fake-indexeddb (an in-memory IndexedDB for Node) and
// a fake of the Web Locks API (test/support.mjs), both injected: no globals are set.
// A "restart" is a new store (or client) on the same IDBFactory, as a reloaded page
// finds its origin's databases.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { IDBFactory } from 'fake-indexeddb';
import { HearthClient, HearthError, IndexedDbWriteStore, increment } from '../hearth-client.mjs';
import { fakeNetwork, fakeLocks, tick, until, doc, ok, welcomed, serverAnswersRestoredWrites } from './support.mjs';

const clients = [];
after(() => { for (const c of clients) c.close(); });
const track = (c) => { clients.push(c); return c; };

const rec = (id, created_at = 10, sent_at = null) => ({ mutation_id: id, writes: `[{"op":"delete","path":"c/${id}"}]`, created_at, sent_at });
const isFailedPrecondition = (e) => e instanceof HearthError && e.code === 'failed-precondition';

/** Every record of the `writes` object store, read with the plain IndexedDB API. */
function rawRecords(idb, name) {
  return new Promise((resolve, reject) => {
    const req = idb.open(name);
    req.onerror = () => reject(req.error);
    req.onsuccess = () => {
      const db = req.result;
      const get = db.transaction('writes', 'readonly').objectStore('writes').getAll();
      get.onsuccess = () => { db.close(); resolve(get.result); };
      get.onerror = () => { db.close(); reject(get.error); };
    };
  });
}

test('the fake Web Locks: ifAvailable gets null while the lock is held; held until the callback\'s promise settles; requests and releases keep their order', async () => {
  const locks = fakeLocks();
  let release;
  const held = new Promise((r) => { release = r; });
  const events = [];
  const p1 = locks.request('x', (lock) => { events.push(['1', lock && lock.mode]); return held.then(() => 'one'); });
  const p2 = locks.request('x', { ifAvailable: true }, (lock) => { events.push(['2', lock]); return 'two'; });
  const p3 = locks.request('x', (lock) => { events.push(['3', lock && lock.name]); });
  assert.equal(await p2, 'two');
  assert.deepEqual(events, [['1', 'exclusive'], ['2', null]]);
  assert.deepEqual((await locks.query()).held, [{ name: 'x', mode: 'exclusive' }]);
  assert.deepEqual((await locks.query()).pending, [{ name: 'x', mode: 'exclusive' }]);
  release();
  // a request made right after the release was triggered is processed before that release
  const p4 = locks.request('x', { ifAvailable: true }, (lock) => lock);
  assert.equal(await p1, 'one');
  assert.equal(await p4, null, 'still held (and a request waiting) when the ifAvailable request was processed');
  await p3;
  assert.deepEqual(events.at(-1), ['3', 'x']);
  assert.deepEqual(await locks.query(), { held: [], pending: [] });
  // a callback that throws releases the lock; the request rejects with its error
  await assert.rejects(locks.request('y', () => { throw new Error('boom'); }), /boom/);
  assert.ok(await locks.request('y', { ifAvailable: true }, (lock) => lock));
  await assert.rejects(locks.request('-z', () => {}), (e) => e.name === 'NotSupportedError');
  await assert.rejects(locks.request('z', { ifAvailable: true, steal: true }, () => {}), (e) => e.name === 'NotSupportedError');
  // steal: the holder's request rejects with AbortError, the stealer gets the lock
  const victim = locks.request('s', () => new Promise(() => {})).then(() => null, (e) => e);
  await tick();
  const thief = await locks.request('s', { steal: true }, (lock) => lock.name);
  assert.equal(thief, 's');
  assert.equal((await victim)?.name, 'AbortError');
});

test('IndexedDB store: open on an empty database, add / markSent / remove, a reopen restores the order, sent marks and removals', async () => {
  const indexedDB = new IDBFactory();
  const locks = fakeLocks();
  const s1 = new IndexedDbWriteStore('app', { indexedDB, locks });
  assert.deepEqual(await s1.open(), []);
  for (const id of ['a', 'b', 'c', 'd']) await s1.add(rec(id));
  await s1.markSent('b', 20);
  await s1.markSent('c', 30);
  await s1.remove('a');
  await s1.remove('c');
  await s1.markSent('nope', 1); // unknown ids are ignored
  await s1.remove('nope');
  // the records as documented: {order, mutation_id, writes, created_at, sent_at}, keyed by order
  assert.deepEqual(await rawRecords(indexedDB, 'app'), [
    { order: 2, ...rec('b', 10, 20) },
    { order: 4, ...rec('d') },
  ]);
  await s1.close();

  const s2 = new IndexedDbWriteStore('app', { indexedDB, locks });
  assert.deepEqual(await s2.open(), [rec('b', 10, 20), rec('d')]);
  await s2.add(rec('e', 40));
  await s2.markSent('d', 50);
  await s2.close();

  const s3 = new IndexedDbWriteStore('app', { indexedDB, locks });
  assert.deepEqual(await s3.open(), [rec('b', 10, 20), rec('d', 10, 50), rec('e', 40)], 'new writes go after the restored ones');
  for (const id of ['b', 'd', 'e']) await s3.remove(id);
  await s3.close();
  const s4 = new IndexedDbWriteStore('app', { indexedDB, locks });
  assert.deepEqual(await s4.open(), []);
  // a closed store refuses changes
  await s4.close();
  await assert.rejects(async () => s4.add(rec('f')), isFailedPrecondition);
  // another database name is another store
  const other = new IndexedDbWriteStore('other', { indexedDB, locks });
  assert.deepEqual(await other.open(), []);
  await other.close();
});

test('IndexedDB store: a second instance is refused with failed-precondition while the first holds the Web Lock; close releases it', async () => {
  const indexedDB = new IDBFactory();
  const locks = fakeLocks();
  const s1 = new IndexedDbWriteStore('app', { indexedDB, locks });
  await s1.open();
  await s1.add(rec('a'));
  assert.deepEqual((await locks.query()).held, [{ name: 'hearth-pending-writes:app', mode: 'exclusive' }]);
  const s2 = new IndexedDbWriteStore('app', { indexedDB, locks });
  await assert.rejects(s2.open(), isFailedPrecondition);
  await assert.rejects(async () => s2.add(rec('x')), isFailedPrecondition, 'the refused instance stays closed');
  // the same database name in another "origin" (another lock manager and factory) is independent
  const elsewhere = new IndexedDbWriteStore('app', { indexedDB: new IDBFactory(), locks: fakeLocks() });
  assert.deepEqual(await elsewhere.open(), []);
  await elsewhere.close();
  // a new instance made right after close() (same page) waits for the release instead of being refused
  s1.close();
  const s3 = new IndexedDbWriteStore('app', { indexedDB, locks });
  assert.deepEqual((await s3.open()).map((w) => w.mutation_id), ['a']);
  await s3.close();
  assert.deepEqual(await locks.query(), { held: [], pending: [] });
});

test('IndexedDB store: without IndexedDB (plain Node, nothing injected) it is unimplemented; a Web Locks request that fails is reported as failed-precondition with its cause', async () => {
  if (!globalThis.indexedDB) {
    assert.throws(() => new IndexedDbWriteStore('app'), (e) => e instanceof HearthError && e.code === 'unimplemented');
    assert.throws(() => new HearthClient({ url: 'ws://t/v1/ws', persistence: { indexedDb: 'app' } }), (e) => e.code === 'unimplemented');
  }
  const locks = { request: () => Promise.reject(new DOMException('opaque origin', 'SecurityError')) };
  const s = new IndexedDbWriteStore('app', { indexedDB: new IDBFactory(), locks });
  await assert.rejects(s.open(), (e) => isFailedPrecondition(e) && /SecurityError|opaque origin/.test(e.message));
});

test('IndexedDB store without the Web Locks API: no lock (a second instance opens too) and a warning is logged', async () => {
  const indexedDB = new IDBFactory();
  const logs = [];
  // locks: null stands for a browser without navigator.locks (undefined: take navigator.locks if any)
  const s1 = new IndexedDbWriteStore('app', { indexedDB, locks: null, log: (m) => logs.push(m) });
  await s1.open();
  await s1.add(rec('a'));
  const s2 = new IndexedDbWriteStore('app', { indexedDB, locks: null, log: (m) => logs.push(m) });
  assert.deepEqual((await s2.open()).map((w) => w.mutation_id), ['a'], 'not refused');
  assert.equal(logs.length, 2);
  assert.match(logs[0], /Web Locks/);
  // two unlocked instances adding at once keep both records, and one's remove leaves the other's
  await Promise.all([s1.add(rec('from-1')), s2.add(rec('from-2'))]);
  await s1.add(rec('more-1'));
  await s2.remove('from-2');
  assert.deepEqual((await rawRecords(indexedDB, 'app')).map((r) => r.mutation_id), ['a', 'from-1', 'more-1']);
  await s1.close();
  await s2.close();
  // the client passes its logger (prefixed "warning:")
  const clientLogs = [];
  const c = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: fakeNetwork().FakeWebSocket, persistence: { indexedDb: 'app', indexedDB, locks: null }, logger: (m) => clientLogs.push(m) }));
  await until(() => c.restoredWrites.length === 3, 'restored');
  assert.ok(clientLogs.some((m) => m.startsWith('warning:') && /Web Locks/.test(m)));
  c.close();
});

test('client on IndexedDB: writes queued offline survive a restart, go out in order with their original ids, and an in-doubt one is never counted twice', async () => {
  const indexedDB = new IDBFactory();
  const locks = fakeLocks();
  const persistence = { indexedDb: 'chat', indexedDB, locks };
  // first "page": an increment is sent and its answer lost, then two writes made offline
  const net1 = fakeNetwork();
  const c1 = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: net1.FakeWebSocket, persistence, backoffBaseMs: 60000 }));
  const conn = c1.connect();
  const s1 = await welcomed(net1, 0);
  await conn;
  c1.doc('c/counter').update({ n: increment(1) }).catch(() => {});
  await until(() => s1.sentOf('write').length === 1, 'the increment sent');
  const inc = s1.sentOf('write')[0];
  assert.equal((await rawRecords(indexedDB, 'chat'))[0].sent_at !== null, true, 'marked sent before it went on the wire');
  s1.drop();
  await tick(20);
  c1.doc('c/a').set({ n: 10 }).catch(() => {});
  c1.doc('c/b').set({ n: 20 }).catch(() => {});
  await until(() => c1.pendingWriteCount === 3, 'both offline writes stored and queued');
  const stored = await rawRecords(indexedDB, 'chat');
  assert.deepEqual(stored.map((r) => r.sent_at !== null), [true, false, false]);
  assert.equal(stored[0].mutation_id, inc.mutation_id);
  // a second client while the first runs: refused (connect() rejects)
  const intruder = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: fakeNetwork().FakeWebSocket, persistence }));
  await assert.rejects(intruder.connect(), isFailedPrecondition);
  await assert.rejects(intruder.doc('c/x').set({ n: 0 }), isFailedPrecondition, 'its writes are refused, not queued');
  c1.close();

  // second "page", made right after the first closed
  const net2 = fakeNetwork();
  const c2 = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: net2.FakeWebSocket, persistence }));
  const seen = [];
  c2.collection('c').onSnapshot((s) => seen.push(Object.fromEntries(s.docs.map((d) => [d.path, [d.fields.n, d.pending]]))));
  const conn2 = c2.connect();
  const s2 = await welcomed(net2, 0);
  await conn2;
  assert.deepEqual(c2.restoredWrites.map((w) => w.mutationId), stored.map((r) => r.mutation_id));
  assert.deepEqual(seen[0], { 'c/a': [10, true], 'c/b': [20, true] }, 'restored writes shown as pending before the server view');
  await until(() => s2.sentOf('write').length === 3, 'the restored writes resent');
  const writes = s2.sentOf('write');
  assert.deepEqual(writes.map((f) => f.mutation_id), stored.map((r) => r.mutation_id), 'in order, original ids');
  assert.deepEqual(writes[0].writes, inc.writes, 'same writes');
  assert.deepEqual(s2.sent.map((f) => f.type), ['hello', 'subscribe', 'write', 'write', 'write']);
  await serverAnswersRestoredWrites(s2, c2, seen);
  // answered writes are dropped from the database
  const left = async () => (await rawRecords(indexedDB, 'chat')).length;
  for (let i = 0; i < 100 && (await left()) > 0; i++) await tick();
  assert.equal(await left(), 0, 'answered writes dropped');
  c2.close();
});
