// Client behaviour against an in-process fake WebSocket (no server needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HearthClient, increment } from '../hearth-client.mjs';
import { fakeNetwork, tick, until } from './support.mjs';

/** A client connected to the fake network: its first socket got `hello` and was welcomed. */
async function connected(options = {}) {
  const net = fakeNetwork();
  const client = new HearthClient({ url: 'ws://test/v1/ws', WebSocket: net.FakeWebSocket, ...options });
  const p = client.connect();
  await until(() => net.sockets[0]?.sent.length, 'hello');
  const s = net.sockets[0];
  s.welcome();
  await p;
  return { net, client, s };
}
const doc = (path, fields, version) => ({ path, fields, create_time: '2026-01-01T00:00:00.000000000Z', update_time: '2026-01-01T00:00:00.000000000Z', version });

test('handshake, resume after a drop, and a write in doubt counted once', async () => {
  const net = fakeNetwork();
  const client = new HearthClient({ url: 'ws://test/v1/ws', token: 'tok', WebSocket: net.FakeWebSocket });
  const connected = client.connect();
  await until(() => net.sockets[0]?.sent.length, 'hello');
  const s1 = net.sockets[0];
  assert.deepEqual(s1.protocols, ['hearth.v1']);
  assert.equal(s1.sent[0].type, 'hello');
  assert.equal(s1.sent[0].protocol, 1);
  assert.equal(s1.sent[0].token, 'tok');
  s1.welcome();
  await connected;

  const seen = [];
  client.doc('c/x').onSnapshot((s) => seen.push(s.doc ? [s.doc.fields.n, s.doc.pending] : null));
  const sub = s1.sentOf('subscribe')[0];
  assert.deepEqual(sub.target, { doc: 'c/x' });
  assert.equal(sub.resume, undefined);
  s1.frame({ type: 'snapshot', sub: sub.sub, resume: 'p5', reset: false, docs: [doc('c/x', { n: 0 }, 5)] });
  assert.deepEqual(seen, [[0, false]]);

  let answered = null;
  client.doc('c/x').merge({ n: increment(1) }).then((r) => { answered = r; });
  assert.deepEqual(seen.at(-1), [1, true], 'shown at once, pending');
  const w1 = s1.sentOf('write')[0];
  assert.deepEqual(w1.writes, [{ op: 'merge', path: 'c/x', transforms: [{ field: 'n', transform: 'increment', value: 1 }] }]);

  // the answer is lost with the connection
  s1.drop();
  await until(() => net.sockets.length === 2 && net.sockets[1].sent.length, 'a reconnect');
  const s2 = net.sockets[1];
  s2.welcome();
  await tick();
  const types = s2.sent.map((f) => f.type);
  assert.deepEqual(types, ['hello', 'subscribe', 'write'], 'resubscribe first, then resend');
  const sub2 = s2.sentOf('subscribe')[0];
  assert.equal(sub2.sub, sub.sub);
  assert.equal(sub2.resume, 'p5', 'resumes from the newest token');
  const w2 = s2.sentOf('write')[0];
  assert.equal(w2.mutation_id, w1.mutation_id, 'same mutation id');
  assert.deepEqual(w2.writes, w1.writes, 'same writes');

  // the resumed frame carries the commit before the retry's answer
  s2.frame({ type: 'changes', sub: sub.sub, resume: 'p6', changes: [{ kind: 'modified', doc: doc('c/x', { n: 1 }, 6), old_index: 0, new_index: 0 }] });
  assert.ok(seen.every(([n]) => n <= 1), `never counted twice: ${JSON.stringify(seen)}`);
  s2.frame({ type: 'write_ok', id: w2.id, mutation_id: w2.mutation_id, duplicate: true, result: { seq: 6, commit_time: '2026-01-01T00:00:00.000000000Z', results: [{ path: 'c/x', version: 6, update_time: '2026-01-01T00:00:00.000000000Z' }] } });
  await tick();
  assert.equal(answered.duplicate, true);
  assert.equal(answered.result.seq, 6);
  assert.deepEqual(seen.at(-1), [1, false]);
  client.close();
});

test('answers server pings, and sends its own ping when quiet', async () => {
  const net = fakeNetwork();
  const client = new HearthClient({ url: 'ws://test/v1/ws', WebSocket: net.FakeWebSocket });
  const p = client.connect();
  await until(() => net.sockets[0]?.sent.length, 'hello');
  const s = net.sockets[0];
  assert.equal(s.sent[0].token, undefined, 'anonymous hello has no token');
  s.welcome({ heartbeat_ms: 100, idle_timeout_ms: 1000 });
  await p;
  s.frame({ type: 'ping', id: 77 });
  assert.deepEqual(s.sentOf('pong'), [{ type: 'pong', id: 77 }]);
  await until(() => s.sentOf('ping').length > 0, 'a client ping');
  client.close();
});

test('declares a silent server dead after idle_timeout_ms and reconnects', async () => {
  const net = fakeNetwork();
  const client = new HearthClient({ url: 'ws://test/v1/ws', WebSocket: net.FakeWebSocket });
  const p = client.connect();
  await until(() => net.sockets[0]?.sent.length, 'hello');
  net.sockets[0].welcome({ heartbeat_ms: 50, idle_timeout_ms: 200 });
  await p;
  await until(() => net.sockets.length === 2, 'a reconnect after the idle timeout', 3000);
  client.close();
});

test('unavailable answers keep the write queued and resend it unchanged', async () => {
  const { net, client, s } = await connected();
  let result = null;
  let failure = null;
  client.doc('c/y').set({ a: 1 }).then((r) => { result = r; }, (e) => { failure = e; });
  for (let i = 1; i <= 2; i++) {
    await until(() => s.sentOf('write').length === i, `send ${i}`);
    const w = s.sentOf('write')[i - 1];
    s.frame({ type: 'error', id: w.id, code: 'unavailable', message: 'shutting down' });
  }
  await until(() => s.sentOf('write').length === 3, 'third send');
  const ws = s.sentOf('write');
  assert.equal(new Set(ws.map((w) => w.mutation_id)).size, 1);
  assert.deepEqual(ws[2].writes, ws[0].writes);
  s.frame({ type: 'write_ok', id: ws[2].id, mutation_id: ws[2].mutation_id, duplicate: false, result: { seq: 3, commit_time: '2026-01-01T00:00:00.000000000Z', results: [] } });
  await tick();
  assert.equal(failure, null);
  assert.equal(result.result.seq, 3);

  // a refusal with another code is reported and leaves the queue
  const denied = client.doc('c/z').set({ a: 1 });
  await until(() => s.sentOf('write').length === 4, 'fourth write');
  s.frame({ type: 'error', id: s.sentOf('write')[3].id, code: 'permission-denied', message: 'no' });
  await assert.rejects(denied, (e) => e.code === 'permission-denied');
  assert.equal(client.pendingWriteCount, 0);
  client.close();
});

test('close 4003 (revoked): no reconnect until a new token is given', async () => {
  const { net, client, s } = await connected({ token: 'a' });
  net.sockets[0].drop(4003, 'session revoked');
  await tick(600);
  assert.equal(net.sockets.length, 1, 'no reconnect attempt');
  assert.equal(client.state, 'auth-required');
  const done = client.setToken('b');
  await until(() => net.sockets.length === 2 && net.sockets[1].sent.length, 'reconnect with the new token');
  assert.equal(net.sockets[1].sent[0].token, 'b');
  net.sockets[1].welcome();
  await done;
  client.close();
});

test('setToken on a live session sends auth on the same socket', async () => {
  const { net, client, s } = await connected({ token: 'a' });
  const done = client.setToken('b');
  const auth = s.sentOf('auth')[0];
  assert.equal(auth.token, 'b');
  s.frame({ type: 'auth_ok', id: auth.id, uid: 'u', admin: false, expires_at: null });
  const ok = await done;
  assert.equal(ok.uid, 'u');
  assert.equal(net.sockets.length, 1);
  client.close();
});

test('a session dropped right after welcome counts as a failed attempt (backoff grows)', async () => {
  const net = fakeNetwork();
  const client = new HearthClient({ url: 'ws://test/v1/ws', WebSocket: net.FakeWebSocket, backoffBaseMs: 40 });
  client.connect();
  const t0 = Date.now();
  // welcome then drop, every time, for 1.2 s
  while (Date.now() - t0 < 1200) {
    const s = net.sockets.at(-1);
    if (s && s.sent.length && !s.closed) { s.welcome(); s.drop(); }
    await tick(2);
  }
  const n = net.sockets.length;
  // without growth (cap 40 ms) there would be ~60 attempts; with doubling far fewer
  assert.ok(n >= 2 && n <= 12, `${n} attempts`);
  assert.ok(client._failures >= 3, 'consecutive failures counted');
  client.close();
});

test('with getToken, a 4001 on a live session fetches a fresh token and reconnects with it', async () => {
  let calls = 0;
  const { net, client, s } = await connected({ token: 'old', getToken: async () => `fresh${++calls}` });
  net.sockets[0].frame({ type: 'error', code: 'unauthenticated', message: 'the access token expired; send auth with a fresh token before expires_at' });
  net.sockets[0].drop(4001, 'token expired');
  await until(() => net.sockets.length === 2 && net.sockets[1].sent.length, 'a reconnect');
  assert.equal(net.sockets[1].sent[0].token, 'fresh1');
  // the fresh token is refused at hello, and so is the next one: then it stops
  net.sockets[1].frame({ type: 'error', code: 'unauthenticated', message: 'access token expired; refresh it' });
  net.sockets[1].drop(4001, 'unauthenticated');
  await until(() => net.sockets.length === 3 && net.sockets[2].sent.length, 'a second reconnect');
  net.sockets[2].drop(4001, 'unauthenticated');
  await tick(700);
  assert.equal(net.sockets.length, 3);
  assert.equal(client.state, 'auth-required');
  client.close();
});

test('a changes frame delivered before the snapshot of a fresh subscription is applied after it', async () => {
  const { net, client, s } = await connected();
  const seen = [];
  client.doc('c/counter').onSnapshot((snap) => seen.push(snap.doc && snap.doc.fields.n));
  const got = client.doc('c/counter').get();
  const [sub1, sub2] = s.sentOf('subscribe');
  for (const sub of [sub1, sub2]) {
    // out of order: p6 before p5
    s.frame({ type: 'changes', sub: sub.sub, resume: 'p6', changes: [{ kind: 'modified', doc: doc('c/counter', { n: 10 }, 6), old_index: 0, new_index: 0 }] });
    s.frame({ type: 'snapshot', sub: sub.sub, resume: 'p5', reset: false, docs: [doc('c/counter', { n: 0 }, 2)] });
  }
  const read = await got;
  assert.equal(read.version, 2, 'a one-shot read answers with the snapshot');
  assert.deepEqual(seen, [10], 'the listener sees the newest state, never a view built on nothing');
  client.close();
});

test('transactions: reads before writes, not shown until committed, new mutation id after aborted', async () => {
  const { net, client, s } = await connected();
  const seen = [];
  client.doc('c/t').onSnapshot((snap) => seen.push(snap.doc && [snap.doc.fields.n, snap.doc.pending]));
  const view = s.sentOf('subscribe')[0];
  s.frame({ type: 'snapshot', sub: view.sub, resume: 'p5', reset: false, docs: [doc('c/t', { n: 1 }, 5)] });
  let attempts = 0;
  const done = client.runTransaction(async (tx) => {
    attempts++;
    const d = await tx.get('c/t');
    tx.update('c/t', { n: d.fields.n + 1 });
    await assert.rejects(tx.get('c/other'), (e) => e.code === 'invalid-argument');
    return d.fields.n + 1;
  });
  const answerRead = async (k, n, v) => {
    await until(() => s.sentOf('subscribe').length === k + 1, `read ${k}`);
    const read = s.sentOf('subscribe')[k];
    s.frame({ type: 'snapshot', sub: read.sub, resume: `p${v}`, reset: false, docs: [doc('c/t', { n }, v)] });
  };
  await answerRead(1, 1, 5);
  await until(() => s.sentOf('transaction').length === 1, 'first commit');
  const t1 = s.sentOf('transaction')[0];
  assert.deepEqual(t1.reads, [{ path: 'c/t', version: 5 }]);
  assert.deepEqual(seen, [[1, false]], 'not shown before the server commits it');
  s.frame({ type: 'error', id: t1.id, code: 'aborted', message: 'a read changed' });
  await answerRead(2, 7, 8);
  await until(() => s.sentOf('transaction').length === 2, 'retry');
  const t2 = s.sentOf('transaction')[1];
  assert.notEqual(t2.mutation_id, t1.mutation_id, 'a new mutation id for the new attempt');
  assert.deepEqual(t2.reads, [{ path: 'c/t', version: 8 }]);
  assert.deepEqual(t2.writes, [{ op: 'update', path: 'c/t', fields: { n: 8 } }]);
  s.frame({ type: 'write_ok', id: t2.id, mutation_id: t2.mutation_id, duplicate: false, result: { seq: 9, commit_time: '2026-01-01T00:00:00.000000000Z', results: [] } });
  assert.equal(await done, 8);
  assert.equal(attempts, 2);
  assert.deepEqual(seen.at(-1), [8, true], 'once committed it is overlaid until the view reaches its seq');
  client.close();
});

test('an internal error is reported with retry(), which resends the same frame under the same mutation id', async () => {
  const { net, client, s } = await connected();
  const first = client.doc('c/i').set({ a: 1 });
  const w1 = s.sentOf('write')[0];
  s.frame({ type: 'error', id: w1.id, code: 'internal', message: 'store failure' });
  const err = await first.catch((e) => e);
  assert.equal(err.code, 'internal');
  assert.equal(err.mutationId, w1.mutation_id);
  const again = err.retry();
  const w2 = s.sentOf('write')[1];
  assert.equal(w2.mutation_id, w1.mutation_id);
  assert.deepEqual(w2.writes, w1.writes);
  s.frame({ type: 'write_ok', id: w2.id, mutation_id: w2.mutation_id, duplicate: true, result: { seq: 4, commit_time: '2026-01-01T00:00:00.000000000Z', results: [] } });
  assert.equal((await again).duplicate, true);
  client.close();
});
