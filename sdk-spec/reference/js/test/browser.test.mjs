// The IndexedDB write store (`persistence: {indexedDb}`) in a real browser:
// Debian's headless Chromium driven by playwright-core, against a real
// `hearth serve`. A loopback http server serves hearth-client.mjs (and
// @msgpack/msgpack, through an import map) to a page; in the page, with the
// server not yet running, a client makes writes that only IndexedDB holds;
// the page is reloaded (same profile, so IndexedDB and its data persist);
// the new client restores them, a second tab is refused the store's Web Lock
// meanwhile, and once the server is up the restored writes are sent and
// applied exactly once (read back over REST with the admin key); writes in
// doubt (sent to a server frozen with SIGSTOP, the page reloaded) count once.
// A second test kills the whole browser (SIGKILL) after the writes are
// stored and starts it again on the same profile: they are restored.
// A third runs the offline view cache (PROTOCOL.md section 13): a query's
// server view is saved in IndexedDB; with the server down a reloaded page
// shows it (fromCache); the collection changes while no page is connected;
// with the server back the page subscribes with the cached resume token and
// the view converges to the server's result.
//
// Needs HEARTH_BIN (the `hearth` binary; the Rust test
// crates/hearth-conformance/tests/js_reference_client.rs sets it), Chromium
// (/usr/bin/chromium or CHROMIUM) and playwright-core (a dev dependency).
// Outside CI a missing one skips this test with a banner on stderr; with
// CI set it fails. Every process it starts (hearth, Chromium) is stopped on
// every path; each step has a time limit.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url)); // sdk-spec/reference/js/
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const HEARTH_BIN = process.env.HEARTH_BIN;
const ADMIN_KEY = 'browser-test-admin-key-0123456789abcdef';
const STORE = 'browser-test-writes';

/** Why this test cannot run here, or null. */
function missing() {
  if (!HEARTH_BIN) return 'HEARTH_BIN is not set (the path of the hearth binary; cargo test -p hearth-conformance --test js_reference_client sets it)';
  if (!existsSync(HEARTH_BIN)) return `HEARTH_BIN=${HEARTH_BIN} does not exist`;
  if (!existsSync(CHROMIUM)) return `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`;
  try { createRequire(import.meta.url).resolve('playwright-core'); } catch { return 'playwright-core is missing: run `npm ci` here'; }
  return null;
}
const why = missing();
if (why) {
  if (process.env.CI) throw new Error(`CI must provide this (.ci/run installs it): ${why}`);
  console.error(`\n!!!!!!!!!! SKIPPED: the real-browser IndexedDB test: ${why} !!!!!!!!!!\n`);
}

/** Resolves with `p`'s value, or rejects after `ms` saying what was awaited. */
function within(ms, what, p) {
  let timer;
  return Promise.race([p, new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); })])
    .finally(() => clearTimeout(timer));
}

/** A free port on 127.0.0.1 (free when asked). */
async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = /** @type {any} */ (s.address());
  await new Promise((r) => s.close(r));
  return port;
}

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>hearth-client in a browser</title>
<script type="importmap">{"imports": {"@msgpack/msgpack": "/msgpack/index.mjs"}}</script>
<script type="module">
  import * as hearth from '/hearth-client.mjs';
  window.hearth = hearth;
</script>
<body>hearth-client test page</body>`;

/** Serves the page, hearth-client.mjs and @msgpack/msgpack's ES modules on 127.0.0.1. */
async function staticServer() {
  const msgpack = join(ROOT, 'node_modules/@msgpack/msgpack/dist.esm');
  const server = createServer((req, res) => {
    const path = new URL(req.url || '/', 'http://x').pathname;
    let file = null;
    if (path === '/') { res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }); res.end(PAGE); return; }
    if (path === '/hearth-client.mjs') file = join(ROOT, 'hearth-client.mjs');
    else if (path.startsWith('/msgpack/')) {
      const f = normalize(join(msgpack, path.slice('/msgpack/'.length)));
      if (f.startsWith(msgpack + sep) && f.endsWith('.mjs')) file = f;
    }
    if (!file || !existsSync(file) || !statSync(file).isFile()) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
    res.end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = /** @type {any} */ (server.address());
  return { url: `http://127.0.0.1:${port}/`, close: () => { server.closeAllConnections(); server.close(); } };
}

/** `hearth serve` on 127.0.0.1:`port` with the data directory `dataDir`; resolves once /readyz answers. */
async function startHearth(port, dataDir) {
  const log = [];
  const child = spawn(HEARTH_BIN, ['serve', '--data', dataDir, '--listen', `127.0.0.1:${port}`], {
    env: { ...process.env, HEARTH_ADMIN_KEY: ADMIN_KEY, RUST_LOG: process.env.RUST_LOG || 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => log.push(String(d)));
  child.stderr.on('data', (d) => log.push(String(d)));
  const stop = () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); };
  process.on('exit', stop);
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`hearth exited with ${child.exitCode}:\n${log.join('')}`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(2000) });
      if (r.ok) break;
    } catch { /* not yet */ }
    if (Date.now() > deadline) { stop(); throw new Error(`hearth not ready within 30 s:\n${log.join('')}`); }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    stop,
    // SIGSTOP / SIGCONT: the server keeps its sockets but answers nothing meanwhile.
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
    log: () => log.join(''),
  };
}

/** A REST request with the admin key: the response's status and parsed JSON body (null when empty). */
async function rest(port, method, path, body) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await r.text();
  return { status: r.status, text, json: text ? JSON.parse(text) : null };
}

/** GET /v1/db/{path} with the admin key: the document, or null when missing. */
async function restGet(port, path) {
  const r = await rest(port, 'GET', `/v1/db/${path}`);
  if (r.status === 404) return null;
  assert.equal(r.status, 200, `GET ${path}: ${r.text}`);
  return r.json;
}

/** A write over REST with the admin key (PUT replaces a document's fields, DELETE removes it); asserts it succeeded. */
async function restWrite(port, method, path, fields) {
  const r = await rest(port, method, `/v1/db/${path}`, fields);
  assert.equal(r.status, 200, `${method} ${path}: ${r.text}`);
}

/** In the page: every record of an object store of the store's IndexedDB database (read directly, not through the client). */
function idbRecords(page, objectStore) {
  return page.evaluate(([name, objectStore]) => new Promise((resolve, reject) => {
    const req = indexedDB.open(name);
    req.onerror = () => reject(req.error);
    req.onsuccess = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains(objectStore)) { db.close(); resolve([]); return; }
      const all = db.transaction(objectStore, 'readonly').objectStore(objectStore).getAll();
      all.onsuccess = () => { db.close(); resolve(all.result); };
      all.onerror = () => { db.close(); reject(all.error); };
    };
  }), [STORE, objectStore]);
}

/** In the page: the stored writes (the store's `writes` records). */
async function storedRecords(page) {
  return (await idbRecords(page, 'writes')).map((r) => ({ order: r.order, mutation_id: r.mutation_id, sent_at: r.sent_at ?? null }));
}

/** In the page: a client on the store, kept in `window.client` (not connected yet). */
function newClient(page, port) {
  return page.evaluate(([url, token, store]) => {
    window.client = new window.hearth.HearthClient({
      url, token, persistence: { indexedDb: store }, backoffBaseMs: 50, backoffMaxMs: 300, logger: () => {},
    });
  }, [`ws://127.0.0.1:${port}/v1/ws`, ADMIN_KEY, STORE]);
}

/** Reloads `page` (same profile: its IndexedDB stays) and waits for the module to load. */
async function reloadPage(page) {
  await page.reload();
  await page.waitForFunction(() => !!window.hearth, null, { timeout: 10_000 });
}

/**
 * In the page: a new client on the store, connecting; resolves with the
 * mutation ids of the writes it restored from IndexedDB, whose results are
 * kept in `window.restoredResults`.
 */
async function restoreWrites(page, port) {
  await newClient(page, port);
  return page.evaluate(async () => {
    const c = window.client;
    c.connect().catch(() => {});
    // The store opens asynchronously; restoredWrites is filled once it has.
    for (let i = 0; i < 200 && c.restoredWrites.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
    window.restoredResults = Promise.allSettled(c.restoredWrites.map((w) => w.result));
    return c.restoredWrites.map((w) => w.mutationId);
  });
}

/**
 * In the page: a new client on the store listening to `VIEW_QUERY`; every
 * snapshot is kept in `window.snaps` ({fromCache, docs: [[id, n]]}) and
 * whether each subscribe frame carried a resume token in `window.resumes`.
 */
async function watchView(page, port) {
  await newClient(page, port);
  await page.evaluate((collection) => {
    const c = window.client;
    window.snaps = [];
    window.resumes = [];
    const send = c._sendRaw.bind(c); // observed, not changed
    c._sendRaw = (frame) => { if (frame.type === 'subscribe') window.resumes.push(!!frame.resume); return send(frame); };
    c.connect().catch(() => {});
    c.collection(collection).orderBy('n').onSnapshot((s) => window.snaps.push({ fromCache: s.fromCache, docs: s.docs.map((d) => [d.id, d.fields.n]) }));
  }, VIEW_QUERY);
}
const VIEW_QUERY = 'cached-view';

/** Waits for the page's `n`th snapshot (1-based) of {@link watchView} and returns it. */
async function nthSnapshot(page, n, what) {
  await page.waitForFunction((n) => window.snaps.length >= n, n, { timeout: 20_000 })
    .catch((e) => { throw new Error(`waiting for snapshot ${n} (${what}): ${e.message}`); });
  return page.evaluate((n) => window.snaps[n - 1], n);
}

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** The ids of the processes whose command line names `profile` (a Chromium we started on it). */
function processesUsing(profile) {
  const pids = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(`--user-data-dir=${profile}`)) pids.push(Number(entry));
    } catch { /* gone */ }
  }
  return pids;
}

/** Opens the test page in `context` and waits for the module to load. */
async function openPage(context, url, problems, label) {
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => problems.push(`${label}: uncaught ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => !!window.hearth, null, { timeout: 10_000 });
  return page;
}

/**
 * Runs `body(env)` with a Chromium on a fresh temporary profile
 * (`env.browser`), the page server (`env.site`), a data directory
 * (`env.dataDir`) and a free port (`env.port`, nothing listens there until
 * the body starts hearth and keeps it in `env.hearth`). Page errors the body
 * collects in `env.problems` fail the test; a failure carries hearth's log.
 * Every process is stopped and the directory removed on every path.
 */
async function inChromium(body) {
  const { chromium } = createRequire(import.meta.url)('playwright-core');
  const env = { browser: null, hearth: null, problems: [], dataDir: mkdtempSync(join(tmpdir(), 'hearth-browser-test-')), port: await freePort(), site: await staticServer() };
  // A last resort if a step hangs past the test's timeout: exiting kills
  // Chromium (playwright-core's exit handler) and hearth (startHearth's).
  const watchdog = setTimeout(() => { console.error('browser.test.mjs: hung for 110 s, exiting'); process.exit(1); }, 110_000);
  watchdog.unref();
  try {
    // Playwright gives every launch a fresh temporary profile (--user-data-dir).
    env.browser = await within(30_000, 'Chromium to start', chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS }));
    await body(env);
    assert.deepEqual(env.problems, []);
  } catch (e) {
    if (env.hearth) e.message += `\nhearth log:\n${env.hearth.log()}`;
    throw e;
  } finally {
    clearTimeout(watchdog);
    if (env.browser) await within(10_000, 'Chromium to close', env.browser.close()).catch(() => {});
    if (env.hearth) env.hearth.stop();
    env.site.close();
    rmSync(env.dataDir, { recursive: true, force: true });
  }
}

test('in Chromium, writes made offline survive a reload in IndexedDB, a second tab is refused the store lock, and restored writes (unsent or in doubt) are applied once', { skip: why ? `SKIPPED: ${why}` : false, timeout: 120_000 }, async () => inChromium(async (env) => {
  const { browser, port, dataDir, site, problems } = env;
  // One browser profile: both tabs share the origin's IndexedDB and Web Locks.
  const context = await browser.newContext();
  const tab1 = await openPage(context, site.url, problems, 'tab 1');

  // 1. The server is unreachable: the writes are stored, not sent.
  await newClient(tab1, port);
  const made = await tab1.evaluate(() => {
    const { increment } = window.hearth;
    const c = window.client;
    c.connect().catch(() => {}); // keeps retrying: nothing listens yet
    // Writes that commute: pipelined writes may commit in any order
    // (PROTOCOL.md section 3), so none depends on another.
    const promises = [
      c.doc('notes/n1').set({ text: 'written offline', n: 1 }),
      c.doc('counters/c').merge({ hits: increment(1) }),
      c.doc('counters/c').merge({ hits: increment(1) }),
      c.doc('counters/c').merge({ hits: increment(1) }),
      c.doc('notes/n2').set({ text: 'also offline', tags: ['a', 'b'] }),
    ];
    promises.forEach((p) => p.catch(() => {})); // rejected (unavailable) when the page goes away
    return promises.length;
  });
  await within(10_000, 'the five writes to be in IndexedDB', (async () => {
    while ((await storedRecords(tab1)).length < made) await new Promise((r) => setTimeout(r, 50));
  })());
  const before = await storedRecords(tab1);
  assert.equal(before.length, 5);
  assert.ok(before.every((r) => r.sent_at === null), `never sent: ${JSON.stringify(before)}`);
  // The store holds its Web Lock while the client is open.
  const held = await tab1.evaluate(async () => (await navigator.locks.query()).held.map((l) => l.name));
  assert.deepEqual(held, [`hearth-pending-writes:${STORE}`]);
  assert.match(await tab1.evaluate(() => window.client.state), /^(connecting|offline)$/, 'no server, no session');

  // 2. Reload: the page (and its client) is gone; IndexedDB keeps the writes.
  await reloadPage(tab1);
  assert.equal(await tab1.evaluate(() => typeof window.client), 'undefined', 'a fresh page');
  const restored = await restoreWrites(tab1, port);
  assert.deepEqual(restored, before.map((r) => r.mutation_id), 'restored in order, with their mutation ids');

  // 3. A second tab of the same profile is refused the store while tab 1 holds it.
  const tab2 = await openPage(context, site.url, problems, 'tab 2');
  await newClient(tab2, port);
  const second = await tab2.evaluate(async () => {
    try { await window.client.connect({ timeoutMs: 5000 }); return 'connected'; } catch (e) { return `${e.code}: ${e.message}`; } finally { window.client.close(); }
  });
  assert.match(second, /^failed-precondition: .*in use by another client/);

  // 4. The server comes up: the restored writes are sent and applied, once each.
  const hearth = env.hearth = await startHearth(port, dataDir);
  const results = await within(20_000, 'the restored writes to be answered', tab1.evaluate(async () => {
    const settled = await window.restoredResults;
    return settled.map((s) => (s.status === 'fulfilled' ? { ok: true, duplicate: s.value.duplicate } : { ok: false, error: `${s.reason.code}: ${s.reason.message}` }));
  }));
  assert.deepEqual(results, Array(5).fill({ ok: true, duplicate: false }), JSON.stringify(results));
  const counter = await restGet(port, 'counters/c');
  assert.equal(counter.fields.hits, 3, `each increment applied once: ${JSON.stringify(counter)}`);
  const n1 = await restGet(port, 'notes/n1');
  assert.deepEqual(n1.fields, { text: 'written offline', n: 1 });
  const n2 = await restGet(port, 'notes/n2');
  assert.deepEqual(n2.fields, { text: 'also offline', tags: ['a', 'b'] });
  // Answered writes leave the store.
  await within(10_000, 'the store to be emptied', (async () => {
    while ((await storedRecords(tab1)).length > 0) await new Promise((r) => setTimeout(r, 50));
  })());

  // 5. Tab 1 closes: its lock is released, tab 2 gets the store, with nothing to resend.
  // Chromium releases a closed tab's locks a moment after close() returns.
  await tab1.close();
  await within(10_000, "tab 1's Web Lock to be released", (async () => {
    while (await tab2.evaluate(async (name) => (await navigator.locks.query()).held.some((l) => l.name === name), `hearth-pending-writes:${STORE}`))
      await new Promise((r) => setTimeout(r, 50));
  })());
  await newClient(tab2, port);
  const again = await tab2.evaluate(async () => {
    const c = window.client;
    const welcome = await c.connect({ timeoutMs: 10_000 });
    const w = await c.doc('counters/c').merge({ hits: window.hearth.increment(1) });
    c.close();
    return { admin: welcome.admin, restored: c.restoredWrites.length, duplicate: w.duplicate };
  });
  assert.deepEqual(again, { admin: true, restored: 0, duplicate: false });
  assert.equal((await restGet(port, 'counters/c')).fields.hits, 4, 'nothing was applied twice');

  // 6. In doubt: writes sent on a live session to a server that froze
  // (SIGSTOP) before answering; the page reloads; the server resumes. The
  // restored writes are resent with their mutation ids: each increment
  // counts once, whether the server first applied it from the dead
  // socket (then the retry is answered `duplicate`) or only from the retry.
  const tab3 = await openPage(context, site.url, problems, 'tab 3');
  await newClient(tab3, port);
  await tab3.evaluate(() => window.client.connect({ timeoutMs: 10_000 }));
  hearth.pause();
  let paused = true;
  try {
    await tab3.evaluate((n) => {
      for (let i = 0; i < n; i++) window.client.doc('counters/c').merge({ hits: window.hearth.increment(1) }).catch(() => {});
    }, 20);
    await within(10_000, 'the 20 writes to be stored and marked sent', (async () => {
      for (;;) {
        const rows = await storedRecords(tab3);
        if (rows.length === 20 && rows.every((r) => r.sent_at !== null)) return;
        await new Promise((r) => setTimeout(r, 50));
      }
    })());
    await reloadPage(tab3);
    const inDoubt = (await restoreWrites(tab3, port)).length;
    assert.equal(inDoubt, 20, 'every unanswered write restored');
    hearth.resume();
    paused = false;
  } finally {
    if (paused) hearth.resume();
  }
  const retried = await within(30_000, 'the in-doubt writes to be answered', tab3.evaluate(async () => {
    const settled = await window.restoredResults;
    return settled.map((s) => (s.status === 'fulfilled' ? (s.value.duplicate ? 'duplicate' : 'applied') : `${s.reason.code}: ${s.reason.message}`));
  }));
  assert.ok(retried.every((r) => r === 'applied' || r === 'duplicate'), JSON.stringify(retried));
  assert.equal((await restGet(port, 'counters/c')).fields.hits, 24, `each in-doubt increment counted once (${retried.filter((r) => r === 'duplicate').length} of 20 answered duplicate)`);
  await within(10_000, 'the store to be emptied', (async () => {
    while ((await storedRecords(tab3)).length > 0) await new Promise((r) => setTimeout(r, 50));
  })());
  console.log(`in-doubt retries: ${retried.filter((r) => r === 'duplicate').length} of 20 answered duplicate (applied from the dead socket)`);
}));

test('in Chromium, writes stored in IndexedDB survive the browser being killed (SIGKILL) and are applied once after it starts again', { skip: why ? `SKIPPED: ${why}` : false, timeout: 120_000 }, async () => {
  const { chromium } = createRequire(import.meta.url)('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'hearth-browser-profile-')); // kept across the kill
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-browser-test-'));
  const port = await freePort(); // nothing listens here until startHearth
  const site = await staticServer();
  const problems = [];
  let context = null;
  let hearth = null;
  const watchdog = setTimeout(() => { console.error('browser.test.mjs: hung for 110 s, exiting'); process.exit(1); }, 110_000);
  watchdog.unref();
  const launch = () => within(30_000, 'Chromium to start', chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS,
  }));
  try {
    context = await launch();
    let page = await openPage(context, site.url, problems, 'before the kill');
    await newClient(page, port);
    await page.evaluate(() => {
      const c = window.client;
      c.connect().catch(() => {});
      for (const p of [
        c.doc('crash/a').set({ text: 'stored before the kill' }),
        c.doc('crash/counter').merge({ n: window.hearth.increment(1) }),
        c.doc('crash/counter').merge({ n: window.hearth.increment(1) }),
      ]) p.catch(() => {});
    });
    await within(10_000, 'the three writes to be in IndexedDB', (async () => {
      while ((await storedRecords(page)).length < 3) await new Promise((r) => setTimeout(r, 50));
    })());

    // Kill -9 every process of this browser: nothing gets to flush or close.
    const pids = processesUsing(profile);
    assert.ok(pids.length > 0, 'found the Chromium processes');
    for (const pid of pids) { try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ } }
    await within(10_000, 'the killed Chromium to be gone', (async () => {
      while (processesUsing(profile).length) await new Promise((r) => setTimeout(r, 50));
    })());
    await context.close().catch(() => {});

    // The same profile in a new browser: the writes are restored and, once
    // the server is up, applied once.
    context = await launch();
    page = await openPage(context, site.url, problems, 'after the kill');
    const restored = (await restoreWrites(page, port)).length;
    assert.equal(restored, 3, 'the three writes survived the kill');
    hearth = await startHearth(port, dataDir);
    const results = await within(20_000, 'the restored writes to be answered', page.evaluate(async () =>
      (await window.restoredResults).map((s) => (s.status === 'fulfilled' ? 'applied' : `${s.reason.code}: ${s.reason.message}`))));
    assert.deepEqual(results, ['applied', 'applied', 'applied']);
    assert.deepEqual((await restGet(port, 'crash/a')).fields, { text: 'stored before the kill' });
    assert.equal((await restGet(port, 'crash/counter')).fields.n, 2);
    await within(10_000, 'the store to be emptied', (async () => {
      while ((await storedRecords(page)).length > 0) await new Promise((r) => setTimeout(r, 50));
    })());
    assert.deepEqual(problems, []);
  } catch (e) {
    if (hearth) e.message += `\nhearth log:\n${hearth.log()}`;
    throw e;
  } finally {
    clearTimeout(watchdog);
    if (context) await within(10_000, 'Chromium to close', context.close()).catch(() => {});
    for (const pid of processesUsing(profile)) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    if (hearth) hearth.stop();
    site.close();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(profile, { recursive: true, force: true });
  }
});

test('in Chromium, a query\'s view cached in IndexedDB is shown (fromCache) after a reload with the server down, and converges to the server\'s result once it is back', { skip: why ? `SKIPPED: ${why}` : false, timeout: 120_000 }, async () => inChromium(async (env) => {
  const { browser, port, dataDir, site, problems } = env;
  const page = await openPage(await browser.newContext(), site.url, problems, 'view cache');

  // 1. Online: the server's view is shown, then saved in IndexedDB
  // (cacheViews is on by default, saved cacheViewsDelayMs = 1 s later).
  env.hearth = await startHearth(port, dataDir);
  for (const [id, n] of [['a', 1], ['b', 2], ['c', 3]]) await restWrite(port, 'PUT', `${VIEW_QUERY}/${id}`, { n });
  await watchView(page, port);
  assert.deepEqual(await nthSnapshot(page, 1, "the server's view"), { fromCache: false, docs: [['a', 1], ['b', 2], ['c', 3]] }, 'nothing cached yet: the first snapshot is the server\'s');
  await within(10_000, 'the view to be saved in IndexedDB', (async () => {
    while ((await idbRecords(page, 'views')).length === 0) await new Promise((r) => setTimeout(r, 50));
  })());
  assert.deepEqual(await page.evaluate(() => window.resumes), [false], 'the first subscribe had no token');

  // 2. The server is gone; after a reload the cached view is shown without it.
  env.hearth.stop();
  await reloadPage(page);
  await watchView(page, port);
  assert.deepEqual(await nthSnapshot(page, 1, 'the cached view, offline'), { fromCache: true, docs: [['a', 1], ['b', 2], ['c', 3]] });
  assert.match(await page.evaluate(() => window.client.state), /^(connecting|offline)$/, 'no server, no session');
  await page.evaluate(() => window.client.close());

  // 3. While no page is connected the collection changes; the server comes
  // back (same data); a reloaded page shows the cached view, then the
  // server's current result, having subscribed with the cached resume token.
  env.hearth = await startHearth(port, dataDir);
  await restWrite(port, 'DELETE', `${VIEW_QUERY}/b`);
  await restWrite(port, 'PUT', `${VIEW_QUERY}/c`, { n: 0 });
  await restWrite(port, 'PUT', `${VIEW_QUERY}/d`, { n: 4 });
  const query = await rest(port, 'POST', '/v1/query', { collection: VIEW_QUERY, order_by: [{ field: 'n', direction: 'asc' }] });
  assert.equal(query.status, 200, query.text);
  const serverResult = query.json.documents.map((d) => [d.path.split('/').pop(), d.fields.n]);
  assert.deepEqual(serverResult, [['c', 0], ['a', 1], ['d', 4]]);
  await reloadPage(page);
  await watchView(page, port);
  assert.deepEqual(await nthSnapshot(page, 1, 'the cached view, before the server answers'), { fromCache: true, docs: [['a', 1], ['b', 2], ['c', 3]] });
  await page.waitForFunction((want) => {
    const last = window.snaps[window.snaps.length - 1];
    return !last.fromCache && JSON.stringify(last.docs) === want;
  }, JSON.stringify(serverResult), { timeout: 20_000 })
    .catch(async (e) => { throw new Error(`the view did not converge to ${JSON.stringify(serverResult)}: ${JSON.stringify(await page.evaluate(() => window.snaps))}: ${e.message}`); });
  assert.deepEqual(await page.evaluate(() => window.resumes), [true], 'subscribed with the cached resume token');
  await page.evaluate(() => window.client.close());
}));
