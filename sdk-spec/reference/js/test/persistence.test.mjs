// Persistence of the pending-write queue (PROTOCOL.md §13 "Surviving a restart"):
// the journal, the file store's lock, and the client's restore / sent-marker / expiry rules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { HearthClient, HearthError, FileWriteStore, replayJournal, increment } from '../hearth-client.mjs';
import { fakeNetwork, tick, until, doc, ok, welcomed, serverAnswersRestoredWrites, cleanup } from './support.mjs';

const { track, tmpDir } = cleanup('hearth-persist-');
const journal = (dir) => fs.readFileSync(path.join(dir, 'writes.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));


test('journal replay: add/sent/done records in order, a torn last line is skipped', () => {
  const lines = [
    JSON.stringify({ format: 'hearth-pending-writes', version: 1 }),
    JSON.stringify({ op: 'add', id: 'm1', created_at: 1, sent_at: null, writes: '[1]' }),
    JSON.stringify({ op: 'add', id: 'm2', created_at: 2, sent_at: null, writes: '[2]' }),
    JSON.stringify({ op: 'sent', id: 'm2', at: 5 }),
    JSON.stringify({ op: 'add', id: 'm3', created_at: 3, sent_at: 4, writes: '[3]' }),
    JSON.stringify({ op: 'done', id: 'm1' }),
    JSON.stringify({ op: 'sent', id: 'm2', at: 9 }), // a second marker keeps the first time
  ];
  const text = lines.join('\n') + '\n{"op":"add","id":"m4","crea';
  const { writes, torn } = replayJournal(text);
  assert.equal(torn, 1);
  assert.deepEqual(writes, [
    { mutation_id: 'm2', writes: '[2]', created_at: 2, sent_at: 5 },
    { mutation_id: 'm3', writes: '[3]', created_at: 3, sent_at: 4 },
  ]);
});

test('file store: durable records survive a reopen, the journal is compacted on open, a torn tail is tolerated', () => {
  const dir = tmpDir();
  const s1 = new FileWriteStore(dir);
  assert.deepEqual(s1.open(), []);
  for (const id of ['a', 'b', 'c']) s1.add({ mutation_id: id, writes: `[{"op":"delete","path":"c/${id}"}]`, created_at: 10, sent_at: null });
  s1.markSent('b', 20);
  s1.remove('a');
  s1.close();
  assert.equal(fs.existsSync(path.join(dir, 'lock')), false, 'close releases the lock');
  assert.equal(journal(dir).length, 1 + 3 + 1 + 1);
  // a crash in the middle of an append
  fs.appendFileSync(path.join(dir, 'writes.jsonl'), '{"op":"add","id":"d","wri');
  const s2 = new FileWriteStore(dir);
  const loaded = s2.open();
  assert.deepEqual(loaded.map((w) => [w.mutation_id, w.sent_at]), [['b', 20], ['c', null]]);
  // compacted: the header and one line per live write, the torn line gone
  assert.deepEqual(journal(dir).map((r) => r.op || r.format), ['hearth-pending-writes', 'add', 'add']);
  s2.add({ mutation_id: 'e', writes: '[]', created_at: 30, sent_at: null });
  s2.close();
  const s3 = new FileWriteStore(dir);
  assert.deepEqual(s3.open().map((w) => w.mutation_id), ['b', 'c', 'e']);
  s3.close();
});

test('file store: a second instance is refused with failed-precondition; a dead owner\'s lock is taken over', () => {
  const dir = tmpDir();
  const s1 = new FileWriteStore(dir);
  s1.open();
  const s2 = new FileWriteStore(dir);
  assert.throws(() => s2.open(), (e) => e instanceof HearthError && e.code === 'failed-precondition');
  assert.throws(() => new HearthClient({ url: 'ws://x/v1/ws', persistence: { dir } }), (e) => e.code === 'failed-precondition');
  s1.close();
  // a lock left by a process that no longer runs (killed)
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
  fs.writeFileSync(path.join(dir, 'lock'), dead);
  const s3 = new FileWriteStore(dir);
  s3.open();
  assert.equal(fs.readFileSync(path.join(dir, 'lock'), 'utf8'), String(process.pid));
  s3.close();
});

test('client: stored before shown, marked sent before the wire, dropped once answered', async () => {
  const dir = tmpDir();
  const order = [];
  const net = fakeNetwork((f) => { if (f.type === 'write') order.push(['wire', f.mutation_id, journal(dir).filter((r) => r.id === f.mutation_id).map((r) => r.op)]); });
  const client = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: net.FakeWebSocket, persistence: { dir } }));
  const connected = client.connect();
  const s1 = await welcomed(net, 0);
  await connected;
  client.collection('c').onSnapshot((s) => order.push(['snapshot', s.docs.map((d) => d.path), journal(dir).filter((r) => r.op === 'add').length]));
  const sub = s1.sentOf('subscribe')[0];
  s1.frame({ type: 'snapshot', sub: sub.sub, resume: 'p1', docs: [] });
  const p = client.doc('c/a').set({ n: 1 });
  await tick();
  const w = s1.sentOf('write')[0];
  assert.deepEqual(order, [
    ['snapshot', [], 0],
    ['snapshot', ['c/a'], 1], // shown after it was stored
    ['wire', w.mutation_id, ['add', 'sent']], // on the wire after the sent marker
  ]);
  s1.frame(ok(w, 2));
  await p;
  assert.deepEqual(journal(dir).filter((r) => r.id === w.mutation_id).map((r) => r.op), ['add', 'sent', 'done']);
  // transactions are not stored
  const tx = client.runTransaction(async (t) => { t.set('c/t', { x: 1 }); });
  await tick();
  const tf = s1.sentOf('transaction')[0];
  assert.ok(tf);
  assert.equal(journal(dir).filter((r) => r.id === tf.mutation_id).length, 0);
  s1.frame(ok(tf, 3));
  await tx;
  client.close();
});

test('client: a restart restores the stored writes in order, sends them with their original ids, and an in-doubt one is never counted twice', async () => {
  const dir = tmpDir();
  // first process: an increment whose answer is lost, then two writes made offline
  const net1 = fakeNetwork();
  const c1 = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: net1.FakeWebSocket, persistence: { dir }, backoffBaseMs: 60000 }));
  const conn = c1.connect();
  const s1 = await welcomed(net1, 0);
  await conn;
  c1.doc('c/counter').update({ n: increment(1) }).catch(() => {});
  await tick();
  const inc = s1.sentOf('write')[0];
  s1.drop();
  await tick(20);
  c1.doc('c/a').set({ n: 10 }).catch(() => {});
  c1.doc('c/b').set({ n: 20 }).catch(() => {});
  const sentIds = journal(dir).filter((r) => r.op === 'sent').map((r) => r.id);
  assert.deepEqual(sentIds, [inc.mutation_id]);
  // the process dies: its lock stays (simulated by releasing the lock file only)
  fs.unlinkSync(path.join(dir, 'lock'));

  // second process
  const net2 = fakeNetwork();
  const c2 = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: net2.FakeWebSocket, persistence: { dir } }));
  assert.deepEqual(c2.restoredWrites.map((w) => w.mutationId).slice(0, 1), [inc.mutation_id]);
  assert.equal(c2.restoredWrites.length, 3);
  assert.equal(c2.pendingWriteCount, 3);
  const seen = [];
  c2.collection('c').onSnapshot((s) => seen.push(Object.fromEntries(s.docs.map((d) => [d.path, [d.fields.n, d.pending]]))));
  assert.deepEqual(seen.at(-1), { 'c/a': [10, true], 'c/b': [20, true] }, 'restored writes shown as pending before any connection');
  const conn2 = c2.connect();
  const s2 = await welcomed(net2, 0);
  await conn2;
  const writes = s2.sentOf('write');
  assert.deepEqual(writes.map((f) => f.mutation_id), c2.restoredWrites.map((w) => w.mutationId), 'sent in order, original ids');
  assert.deepEqual(writes[0].writes, inc.writes, 'same writes');
  assert.deepEqual(s2.sent.map((f) => f.type), ['hello', 'subscribe', 'write', 'write', 'write']);
  await serverAnswersRestoredWrites(s2, c2, seen);
  c2.close();
  c1.close();
  const s3 = new FileWriteStore(dir);
  assert.deepEqual(s3.open(), [], 'answered writes are dropped from the store');
  s3.close();
});

test('a write first sent more than 23 h ago is dropped with deadline-exceeded; one never sent is sent however old', async () => {
  let now = Date.parse('2026-01-01T00:00:00Z');
  const clock = () => now;
  const H = 3600 * 1000;
  // without persistence
  const net = fakeNetwork();
  const client = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: net.FakeWebSocket, clock, backoffBaseMs: 1 }));
  const old = client.doc('c/never-sent').set({ n: 1 }); // made offline, never sent
  now += 30 * H;
  const c = client.connect();
  const s1 = await welcomed(net, 0);
  await c;
  const lost = client.doc('c/lost').set({ n: 2 });
  let lostErr = null;
  lost.catch((e) => { lostErr = e; });
  await tick();
  assert.deepEqual(s1.sentOf('write').map((f) => f.writes[0].path), ['c/never-sent', 'c/lost']);
  s1.frame(ok(s1.sentOf('write')[0], 3));
  await old;
  s1.drop(); // the answer to c/lost is lost
  now += 23 * H + 1000;
  const s2 = await welcomed(net, 1);
  assert.equal(s2.sentOf('write').length, 0, 'not resent');
  assert.ok(lostErr instanceof HearthError);
  assert.equal(lostErr.code, 'deadline-exceeded');
  assert.equal(client.pendingWriteCount, 0);
  client.close();

  // with persistence: a stored write marked sent 24 h ago is dropped (and its record too)
  const dir = tmpDir();
  const st = new FileWriteStore(dir);
  st.open();
  st.add({ mutation_id: 'old-sent', writes: '[{"op":"delete","path":"c/x"}]', created_at: now - 48 * H, sent_at: now - 24 * H });
  st.add({ mutation_id: 'old-unsent', writes: '[{"op":"delete","path":"c/y"}]', created_at: now - 48 * H, sent_at: null });
  st.add({ mutation_id: 'recent-sent', writes: '[{"op":"delete","path":"c/z"}]', created_at: now - 48 * H, sent_at: now - 22 * H });
  st.close();
  const net3 = fakeNetwork();
  const logs = [];
  const c3 = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: net3.FakeWebSocket, clock, persistence: { dir }, logger: (m) => logs.push(m) }));
  c3.connect();
  const s3 = await welcomed(net3, 0);
  assert.deepEqual(s3.sentOf('write').map((f) => f.mutation_id), ['old-unsent', 'recent-sent']);
  await assert.rejects(c3.restoredWrites[0].result, (e) => e.code === 'deadline-exceeded');
  assert.ok(logs.some((m) => m.startsWith('warning: dropping write old-sent')), 'a warning is logged');
  assert.ok(journal(dir).some((r) => r.op === 'done' && r.id === 'old-sent'));
  c3.close();
});

test('an asynchronous store: writes shown only once stored, in order; sent only once marked sent', async () => {
  const events = [];
  /** @type {Map<string, any>} */
  const recs = new Map();
  const later = (fn) => new Promise((resolve) => setTimeout(() => { fn(); resolve(); }, 15));
  const store = {
    open: () => later(() => events.push('open')).then(() => [{ mutation_id: 'r1', writes: '[{"op":"set","path":"c/r","data":{"n":1}}]', created_at: 1, sent_at: null }]),
    add: (w) => later(() => { events.push(`add ${w.mutation_id === undefined ? '?' : 'w'}`); recs.set(w.mutation_id, w); }),
    markSent: (id) => later(() => events.push(`sent ${id === 'r1' ? 'r1' : 'w'}`)),
    remove: (id) => later(() => events.push(`remove ${id === 'r1' ? 'r1' : 'w'}`)),
    close: () => { events.push('close'); },
  };
  const net = fakeNetwork((f) => { if (f.type === 'write') events.push(`wire ${f.mutation_id === 'r1' ? 'r1' : 'w'}`); });
  const client = track(new HearthClient({ url: 'ws://t/v1/ws', WebSocket: net.FakeWebSocket, persistence: store }));
  const seen = [];
  client.collection('c').onSnapshot((s) => seen.push(s.docs.map((d) => d.path)));
  const p = client.doc('c/w').set({ n: 2 });
  assert.deepEqual(seen, [], 'not shown before it is stored');
  const c = client.connect();
  const s1 = await welcomed(net, 0);
  await c;
  await until(() => s1.sentOf('write').length === 2, 'both writes sent');
  assert.deepEqual(seen[0], ['c/r']);
  assert.deepEqual(seen.at(-1), ['c/r', 'c/w']);
  assert.deepEqual(events.slice(0, 2), ['open', 'add w']);
  assert.ok(events.indexOf('sent r1') < events.indexOf('wire r1'));
  assert.ok(events.indexOf('sent w') < events.indexOf('wire w'));
  assert.deepEqual(s1.sentOf('write').map((f) => f.mutation_id === 'r1'), [true, false], 'restored first');
  for (const w of s1.sentOf('write')) s1.frame(ok(w, 5));
  await p;
  await until(() => events.includes('remove w') && events.includes('remove r1'), 'records dropped');
  client.close();
  assert.equal(events.at(-1), 'close');
});
