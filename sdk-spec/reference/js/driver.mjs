#!/usr/bin/env node
// Conformance driver for the Hearth JavaScript client (sdk-spec/conformance/CLIENT.md).
//
// Reads JSON-line commands on stdin, turns them into calls of the public API
// of hearth-client.mjs, and writes replies and events as JSON lines on stdout.
// Logs go to stderr.

import { createInterface } from 'node:readline';
import * as fs from 'node:fs';
import {
  HearthClient, HearthError, parseJSON, stringifyJSON, toHearthJSON, writeFromJSON, queryFromJSON, fieldPath,
} from './hearth-client.mjs';

// HEARTH_DRIVER_DEBUG=1: log commands and the SDK's debug log (every frame) on stderr.
// HEARTH_DRIVER_LOGFILE=path: also append every log line to that file.
const debug = !!process.env.HEARTH_DRIVER_DEBUG;
const logFile = process.env.HEARTH_DRIVER_LOGFILE;
const log = (...args) => {
  const line = `[driver ${new Date().toISOString()}] ${args.map((a) => (typeof a === 'string' ? a : (a && a.stack) || String(a))).join(' ')}\n`;
  process.stderr.write(line);
  if (logFile) { try { fs.appendFileSync(logFile, line); } catch { /* ignore */ } }
};

/** Writes one JSON line (values already in wire form; bigints and doubles kept exact). */
function out(obj) {
  process.stdout.write(stringifyJSON(obj) + '\n');
}

/** @type {HearthClient|null} */
let client = null;
/** label → stop function */
const subs = new Map();
let closing = false;

function errorOf(e) {
  if (e instanceof HearthError) return { code: e.code, message: e.message };
  return { code: 'internal', message: String((e && e.message) || e) };
}

/** A document of a snapshot, in the driver's event format. */
function docOut(d) {
  const o = { path: d.path, fields: toHearthJSON(d.fields), pending: d.pending };
  if (d.version !== undefined && d.version !== null) o.version = d.version;
  if (d.create_time) o.create_time = d.create_time;
  if (d.update_time) o.update_time = d.update_time;
  return o;
}

/**
 * Creates the client. With persistence, a store still locked by a live process
 * is retried for up to 5 s: the harness kills the previous driver's process
 * group with SIGKILL and starts this one at once, having waited only for the
 * shell it started, so the killed driver under it may hold the lock a moment.
 * @param {any} options
 */
async function newClient(options) {
  const t0 = Date.now();
  for (;;) {
    try {
      return new HearthClient(options);
    } catch (e) {
      if (!(e instanceof HearthError) || e.code !== 'failed-precondition' || !options.persistence || Date.now() - t0 > 5000) throw e;
      log('store locked, retrying:', e.message);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function handle(cmd) {
  const { id } = cmd;
  const reply = (ok) => out({ id, ok: ok ?? {} });
  const fail = (e) => out({ id, error: errorOf(e) });
  try {
    switch (cmd.cmd) {
      case 'connect': {
        if (client) client.close();
        client = null;
        // cache_views: keep the subscriptions' views in the persist_dir store as an offline
        // read cache (PROTOCOL.md §13); it needs the store, so without persist_dir: unimplemented
        if (cmd.cache_views === true && !cmd.persist_dir) {
          throw new HearthError('unimplemented', 'cache_views needs persist_dir: the views are kept in the persistence store');
        }
        client = await newClient({
          url: cmd.url,
          token: cmd.token ?? null,
          encoding: cmd.encoding === 'msgpack' ? 'msgpack' : 'json',
          clientInfo: { name: 'hearth-js-conformance-driver', version: '0.1.0' },
          logger: debug ? (...a) => log(...a) : (msg) => { if (String(msg).startsWith('warning:')) log(msg); },
          // persist_dir: keep the queue of pending writes there across restarts (PROTOCOL.md §13)
          // `fs` given explicitly so that the driver runs on Node 18 too.
          persistence: cmd.persist_dir ? { dir: cmd.persist_dir, fs } : null,
          // the file store can cache views; only when asked (other checks run with a plain queue)
          cacheViews: cmd.persist_dir ? cmd.cache_views === true : undefined,
        });
        client.on('state', (s) => log('state', s));
        if (client.restoredWrites.length) log(`restored ${client.restoredWrites.length} stored write(s) from ${cmd.persist_dir}`);
        client.on('closed', (c) => log('socket closed', c.code, c.reason));
        client.on('error', (e) => log('client error', e.code, e.message));
        await client.connect({ timeoutMs: 18000 });
        reply({});
        return;
      }
      case 'subscribe': {
        if (!client) throw new HearthError('failed-precondition', 'not connected');
        const label = cmd.sub;
        const target = cmd.target;
        const onNext = (snap) => {
          out({
            event: 'snapshot',
            sub: label,
            docs: snap.docs.map(docOut),
            changes: snap.changes.map((c) => ({ kind: c.kind, path: c.doc.path, old_index: c.oldIndex, new_index: c.newIndex })),
            has_pending_writes: snap.hasPendingWrites,
            from_cache: snap.fromCache,
            reset: snap.reset,
          });
        };
        const onError = (e) => {
          subs.delete(label);
          out({ event: 'sub_error', sub: label, code: e.code, message: e.message });
        };
        let stop;
        if (target && typeof target.doc === 'string') stop = client.doc(target.doc).onSnapshot(onNext, onError);
        else if (target && target.query) stop = client.query(queryFromJSON(target.query)).onSnapshot(onNext, onError);
        else throw new HearthError('invalid-argument', 'target must be {"doc": path} or {"query": {...}}');
        subs.set(label, stop);
        reply({});
        return;
      }
      case 'unsubscribe': {
        const stop = subs.get(cmd.sub);
        subs.delete(cmd.sub);
        if (stop) stop();
        reply({});
        return;
      }
      case 'write': {
        if (!client) throw new HearthError('failed-precondition', 'not connected');
        // queued (and shown in local views) synchronously, before the next command is read
        const p = client.commit((cmd.writes || []).map(writeFromJSON));
        p.then((r) => reply({ result: r.result }), fail);
        return;
      }
      case 'set_token': {
        if (!client) throw new HearthError('failed-precondition', 'not connected');
        await client.setToken(cmd.token);
        reply({});
        return;
      }
      case 'transaction_increment': {
        if (!client) throw new HearthError('failed-precondition', 'not connected');
        const { path, field } = cmd;
        const value = await client.runTransaction(async (tx) => {
          const snap = await tx.get(path);
          const cur = snap ? snap.fields[field] : undefined;
          let next = 1;
          if (typeof cur === 'bigint') next = cur + 1n;
          else if (typeof cur === 'number' && Number.isInteger(cur)) next = cur + 1;
          tx.merge(path, { [fieldPath(field)]: next });
          return next;
        });
        reply({ value });
        return;
      }
      case 'close': {
        closing = true;
        if (client) client.close();
        reply({});
        setTimeout(() => process.exit(0), 50);
        return;
      }
      default:
        out({ id, error: { code: 'unimplemented', message: `unknown command ${cmd.cmd}` } });
    }
  } catch (e) {
    fail(e);
  }
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = parseJSON(line);
  } catch (e) {
    log('bad command line', line, e);
    return;
  }
  if (debug) log('<<', line);
  handle(cmd);
});
rl.on('close', () => {
  if (client) client.close();
  if (!closing) setTimeout(() => process.exit(0), 50);
});
process.on('unhandledRejection', (e) => log('unhandled rejection', e));
