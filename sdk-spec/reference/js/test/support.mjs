// Shared by the unit tests: a scripted fake of the WebSocket API and polling helpers.
// (Not a test file itself: the runner takes `*.test.mjs`.)
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after } from 'node:test';
import { parseJSON, stringifyJSON } from '../hearth-client.mjs';

/**
 * A scripted fake of the browser WebSocket API, speaking hearth.v1 (JSON).
 * `onSend` sees every frame the client sends, as it is sent.
 */
export function fakeNetwork(onSend = () => {}) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.protocol = protocols[0];
      this.sent = [];
      this.closed = false;
      sockets.push(this);
      setTimeout(() => this.onopen && this.onopen({}), 0);
    }
    send(data) { const f = parseJSON(data); onSend(f); this.sent.push(f); }
    close() { this.drop(1000); }
    /** server side */
    frame(obj) { this.onmessage && this.onmessage({ data: stringifyJSON(obj) }); }
    drop(code = 1006, reason = '') {
      if (this.closed) return;
      this.closed = true;
      setTimeout(() => this.onclose && this.onclose({ code, reason }), 0);
    }
    welcome(extra = {}) {
      this.frame({
        type: 'welcome', session_id: 's', server_time: '2026-01-01T00:00:00.000000000Z', protocol: 1,
        heartbeat_ms: 25000, idle_timeout_ms: 60000,
        limits: { max_subscriptions: 100, max_frame_bytes: 2097152, max_inflight_writes: 32, max_pending_events: 128, max_queued_bytes: 16777216 },
        uid: null, admin: true, expires_at: null, ...extra,
      });
    }
    sentOf(type) { return this.sent.filter((f) => f.type === type); }
  }
  return { FakeWebSocket, sockets };
}

export const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
/** Polls `cond` (which may return a promise) until it holds. */
export async function until(cond, what, ms = 3000) {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await tick();
  }
}

/**
 * A fake of the Web Locks API's LockManager (`navigator.locks`), one per
 * "origin", after the Web Locks specification (w3c.github.io/web-locks):
 * - `request(name, [options], callback)` returns a promise settled with the
 *   callback's result once the lock is released; a name starting with `-` and
 *   the option clashes (`steal` with `ifAvailable`, `steal` with a shared mode,
 *   `signal` with either) reject with `NotSupportedError`.
 * - Requests and releases are steps of one FIFO "lock task queue", run after
 *   the caller's code (like the spec's "in parallel"): a request made right
 *   after a release was triggered is processed before that release.
 * - A granted lock is held until the promise returned by the callback settles
 *   (a callback that throws releases it at once); the callback runs in a later
 *   task with a `{name, mode}` lock.
 * - `ifAvailable`: when the lock cannot be granted at once (held, or other
 *   requests waiting for it), the callback is called with `null` instead.
 * - Otherwise a request waits in the name's queue (exclusive: nothing held;
 *   shared: only shared locks held), unless its `signal` aborts it first.
 * - `steal`: the held locks of the name are released at once and their
 *   requests' promises rejected with `AbortError`; the stealer gets the lock.
 * - `query()` lists the held and pending requests (a step of the queue too).
 */
export function fakeLocks() {
  /** @type {Map<string, {name: string, mode: string, req: any}[]>} */
  const held = new Map();
  /** @type {Map<string, any[]>} */
  const queues = new Map();
  const steps = [];
  let draining = false;
  const enqueue = (step) => {
    steps.push(step);
    if (!draining) { draining = true; setTimeout(drain, 0); }
  };
  function drain() {
    while (steps.length) steps.shift()();
    draining = false;
  }
  const domError = (name, msg) => new DOMException(msg, name);
  const grantable = (req, ahead) => {
    const h = held.get(req.name) || [];
    if (ahead.length) return false;
    return req.mode === 'exclusive' ? h.length === 0 : h.every((l) => l.mode === 'shared');
  };
  function grant(req) {
    const lock = { name: req.name, mode: req.mode };
    const entry = { name: req.name, mode: req.mode, req };
    if (!held.has(req.name)) held.set(req.name, []);
    held.get(req.name).push(entry);
    const release = () => enqueue(() => {
      const h = held.get(req.name) || [];
      const i = h.indexOf(entry);
      if (i >= 0) { h.splice(i, 1); processQueue(req.name); }
    });
    setTimeout(() => { // "enqueue a task": the callback runs in a later task
      let waiting;
      try { waiting = Promise.resolve(req.callback(lock)); } catch (e) { waiting = Promise.reject(e); }
      waiting.then((v) => { release(); req.resolve(v); }, (e) => { release(); req.reject(e); });
    }, 0);
  }
  function processQueue(name) {
    const q = queues.get(name) || [];
    while (q.length && grantable(q[0], [])) grant(q.shift());
  }
  return {
    request(name, options, callback) {
      if (typeof options === 'function') { callback = options; options = {}; }
      const { mode = 'exclusive', ifAvailable = false, steal = false, signal } = options || {};
      if (typeof callback !== 'function') return Promise.reject(new TypeError('callback is not a function'));
      name = String(name);
      if (name.startsWith('-')) return Promise.reject(domError('NotSupportedError', 'a lock name may not start with "-"'));
      if ((steal && ifAvailable) || (steal && mode !== 'exclusive') || (signal && (steal || ifAvailable))) {
        return Promise.reject(domError('NotSupportedError', 'unsupported combination of options'));
      }
      if (signal?.aborted) return Promise.reject(signal.reason ?? domError('AbortError', 'aborted'));
      return new Promise((resolve, reject) => {
        const req = { name, mode, callback, resolve, reject };
        enqueue(() => {
          if (!queues.has(name)) queues.set(name, []);
          const q = queues.get(name);
          if (steal) {
            for (const e of held.get(name) || []) e.req.reject(domError('AbortError', 'the lock was stolen'));
            held.set(name, []);
            q.unshift(req);
            processQueue(name);
            return;
          }
          if (ifAvailable && !grantable(req, q)) {
            setTimeout(() => {
              let r;
              try { r = Promise.resolve(callback(null)); } catch (e) { r = Promise.reject(e); }
              r.then(resolve, reject);
            }, 0);
            return;
          }
          q.push(req);
          if (signal) {
            signal.addEventListener('abort', () => enqueue(() => {
              const i = q.indexOf(req);
              if (i >= 0) { q.splice(i, 1); reject(signal.reason ?? domError('AbortError', 'aborted')); }
            }), { once: true });
          }
          processQueue(name);
        });
      });
    },
    query() {
      return new Promise((resolve) => enqueue(() => resolve({
        held: [...held.values()].flat().map((l) => ({ name: l.name, mode: l.mode })),
        pending: [...queues.values()].flat().map((r) => ({ name: r.name, mode: r.mode })),
      })));
    },
  };
}

export const T = '2026-01-01T00:00:00.000000000Z';
export const doc = (p, fields, version) => ({ path: p, fields, create_time: T, update_time: T, version });
export const ok = (w, seq, duplicate = false) => ({ type: 'write_ok', id: w.id, mutation_id: w.mutation_id, duplicate, result: { seq, commit_time: T, results: [] } });

/** Waits for `hello` on socket `i` of `net`, answers `welcome`; returns the socket. */
export async function welcomed(net, i) {
  await until(() => net.sockets[i]?.sent.length, `hello on socket ${i}`);
  net.sockets[i].welcome();
  await tick();
  return net.sockets[i];
}

/**
 * The server's side after a restart (both persistence tests): client `c2` resent its three
 * restored writes on socket `s2` (an increment of `c/counter` the server had applied before
 * the restart, then creates of `c/a` = 10 and `c/b` = 20). The server's first snapshot already
 * holds the increment (n = 1), its retry is answered `duplicate`, the creates are applied.
 * `seen` collects the subscription's views as `{path: [n, pending]}`: the counter must never
 * show 2 (the in-doubt increment counted twice).
 */
export async function serverAnswersRestoredWrites(s2, c2, seen) {
  const writes = s2.sentOf('write');
  const sub = s2.sentOf('subscribe')[0];
  s2.frame({ type: 'snapshot', sub: sub.sub, resume: 'p7', docs: [doc('c/counter', { n: 1 }, 7)] });
  assert.ok(seen.every((v) => !v['c/counter'] || v['c/counter'][0] === 1), `never 2: ${JSON.stringify(seen)}`);
  s2.frame(ok(writes[0], 7, true));
  assert.deepEqual(seen.at(-1)['c/counter'], [1, false]);
  s2.frame(ok(writes[1], 8));
  s2.frame(ok(writes[2], 9));
  s2.frame({ type: 'changes', sub: sub.sub, resume: 'p9', changes: [
    { kind: 'added', doc: doc('c/a', { n: 10 }, 8), old_index: null, new_index: 1 },
    { kind: 'added', doc: doc('c/b', { n: 20 }, 9), old_index: null, new_index: 2 },
  ] });
  const results = await Promise.all(c2.restoredWrites.map((w) => w.result));
  assert.deepEqual(results.map((r) => r.duplicate), [true, false, false]);
  assert.ok(seen.every((v) => !v['c/counter'] || v['c/counter'][0] === 1), `never 2: ${JSON.stringify(seen)}`);
  assert.deepEqual(seen.at(-1), { 'c/counter': [1, false], 'c/a': [10, false], 'c/b': [20, false] });
}

/** The query both offline-read-cache restart tests (file store, IndexedDB) cache: collection `c` ordered by `n`. */
export const cachedQuery = (client) => client.collection('c').orderBy('n');

/**
 * The first process of the offline-read-cache restart tests: client `c1` (not yet connected) subscribes
 * to {@link cachedQuery}, the server answers a snapshot of `a`, `b`, `c` (n = 1, 2, 3) at `p5`, and the
 * view is saved (`isSaved` polled; it may be async). Then the connection drops (the client should have a long backoff).
 */
export async function firstRunCachesView(c1, net, isSaved) {
  const conn = c1.connect();
  const s1 = await welcomed(net, 0);
  await conn;
  const seen = [];
  cachedQuery(c1).onSnapshot((s) => seen.push(s));
  await until(() => s1.sentOf('subscribe').length === 1, 'subscribe sent');
  const sub = s1.sentOf('subscribe')[0];
  assert.equal(sub.resume, undefined, 'nothing cached yet: no resume token');
  s1.frame({ type: 'snapshot', sub: sub.sub, resume: 'p5', reset: false, docs: [doc('c/a', { n: 1 }, 3), doc('c/b', { n: 2 }, 4), doc('c/c', { n: 3 }, 5)] });
  assert.deepEqual(seen.at(-1).docs.map((d) => d.id), ['a', 'b', 'c']);
  await until(isSaved, 'the view saved');
  s1.drop();
  await tick(10);
}

/**
 * The second process: client `c2` on the same store subscribes to the same query (and to targets it
 * never subscribed to) before connecting. The cached view shows at once (`fromCache`), nothing for the
 * other targets; the query's subscribe carries the cached token; the server's `changes` (a deleted,
 * b moved to n = 20, d added) applied on the cached view give `c`, `d`, `b`.
 * Returns the query's snapshots and the socket.
 */
export async function restartShowsCachedView(c2, net) {
  const seen = [];
  const others = [];
  cachedQuery(c2).onSnapshot((s) => seen.push(s));
  c2.doc('c/z').onSnapshot((s) => others.push(['z', s]));
  cachedQuery(c2).limit(2).onSnapshot((s) => others.push(['limit', s]));
  await until(() => seen.length === 1, 'the cached view shown');
  const first = seen[0];
  assert.deepEqual(first.docs.map((d) => [d.id, d.fields.n, d.pending]), [['a', 1, false], ['b', 2, false], ['c', 3, false]]);
  assert.equal(first.fromCache, true);
  assert.equal(first.hasPendingWrites, false);
  assert.deepEqual(first.changes.map((c) => [c.kind, c.doc.id, c.oldIndex, c.newIndex]), [['added', 'a', null, 0], ['added', 'b', null, 1], ['added', 'c', null, 2]]);
  assert.equal(first.docs[1].version, 4, 'document metadata kept');
  const conn = c2.connect();
  const s2 = await welcomed(net, 0);
  await conn;
  await until(() => s2.sentOf('subscribe').length === 3, 'the three subscriptions sent');
  const [q, z, lim] = s2.sentOf('subscribe');
  assert.deepEqual(q.target, { query: { collection: 'c', order_by: [{ field: 'n', direction: 'asc' }] } });
  assert.equal(q.resume, 'p5', 'resumed from the cached token');
  assert.equal(z.resume, undefined, 'a cache is per target');
  assert.equal(lim.resume, undefined, 'a cache is per target (same collection, another limit)');
  assert.deepEqual(others, [], 'nothing shown for targets without a record');
  s2.frame({ type: 'changes', sub: q.sub, resume: 'p9', changes: [
    { kind: 'removed', doc: doc('c/a', { n: 1 }, 3), old_index: 0, new_index: null },
    { kind: 'modified', doc: doc('c/b', { n: 20 }, 8), old_index: 1, new_index: 2 },
    { kind: 'added', doc: doc('c/d', { n: 4 }, 9), old_index: null, new_index: 1 },
  ] });
  const last = seen.at(-1);
  assert.deepEqual(last.docs.map((d) => [d.id, d.fields.n]), [['c', 3], ['d', 4], ['b', 20]], 'changes applied on the cached view');
  assert.equal(last.fromCache, false);
  assert.equal(seen.length, 2);
  return { seen, s2, q };
}

/**
 * Clients and temporary directories cleaned up when the test file ends, even after a failed
 * assertion (a client's timers would keep the process alive): `track(client)` and `tmpDir()`.
 */
export function cleanup(prefix) {
  const clients = [];
  const dirs = [];
  after(() => {
    for (const c of clients) c.close();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  return {
    track: (c) => { clients.push(c); return c; },
    tmpDir: () => { const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix)); dirs.push(d); return d; },
  };
}
