// @ts-check
/**
 * Hearth JavaScript client SDK (protocol `hearth.v1`), for browsers and Node 18+.
 *
 * Written from the Hearth wire-protocol specification (sdk-spec/PROTOCOL.md) alone.
 *
 * Values
 * ------
 * Document values are plain JavaScript values, with these conventions so that
 * Hearth's types survive a round trip exactly:
 *
 * | Hearth type      | JavaScript                                                      |
 * |------------------|-----------------------------------------------------------------|
 * | null, bool, str  | `null`, `boolean`, `string`                                     |
 * | 64-bit integer   | `number` when within ±(2^53 − 1), otherwise `bigint`            |
 * | double           | `number` when not integral; {@link Double} when integral (`42.0`, `-0.0`) |
 * | bytes            | `Uint8Array`                                                    |
 * | timestamp        | {@link Timestamp} (nanosecond precision); a `Date` is accepted on write |
 * | array, map       | `Array`, plain object                                           |
 *
 * On write, a `number` with an integral value is sent as an integer and a
 * non-integral one as a double; wrap a value in `new Double(n)` to store an
 * integral double. `bigint` values are sent as exact integers. NaN and
 * ±Infinity are doubles. {@link Double} has `valueOf()`, so arithmetic and
 * `<` work on it, but `===` compares the wrapper.
 *
 * Both encodings keep these distinctions: for JSON (`hearth.v1`) the SDK
 * parses frames with its own parser that reads each number's text; for
 * MessagePack (`hearth.v1.msgpack`) it uses `@msgpack/msgpack` with int64
 * read as `bigint` and float64 kept apart from integers.
 *
 * @module hearth-client
 */

import { Encoder as MsgpackEncoder, Decoder as MsgpackDecoder } from '@msgpack/msgpack';

export const PROTOCOL_VERSION = 1;
export const SDK_NAME = '@hearth/client';
export const SDK_VERSION = '0.1.0';

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);
const TWO_63 = 2 ** 63;

// ---------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------

/**
 * A double-precision number that must stay a double on the wire even though
 * its value is integral (`42.0`, `-0.0`, `1e300`). Non-integral doubles are
 * plain `number`s. `valueOf()` returns the number, so `d + 1` and `d < 3` work.
 */
export class Double {
  /** @param {number} value */
  constructor(value) {
    /** @readonly */
    this.value = Number(value);
  }
  valueOf() { return this.value; }
  toString() { return formatDouble(this.value); }
  toJSON() { return this.value; }
}

/**
 * An instant with nanosecond precision (Hearth `$timestamp`).
 * `seconds` since the Unix epoch (may be negative) and `nanos` in 0..999999999.
 */
export class Timestamp {
  /**
   * @param {number} seconds
   * @param {number} nanos
   */
  constructor(seconds, nanos = 0) {
    this.seconds = seconds;
    this.nanos = nanos;
  }
  /** Parses an RFC 3339 timestamp (any number of fractional digits, `Z` or an offset). */
  static parse(/** @type {string} */ text) {
    const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$/.exec(text);
    if (!m) throw new HearthError('invalid-argument', `not an RFC 3339 timestamp: ${text}`);
    const ms = Date.parse(m[1] + (m[3] === 'z' ? 'Z' : m[3]));
    if (Number.isNaN(ms)) throw new HearthError('invalid-argument', `not an RFC 3339 timestamp: ${text}`);
    const nanos = m[2] ? Number(m[2].padEnd(9, '0')) : 0;
    return new Timestamp(Math.floor(ms / 1000), nanos);
  }
  /** @param {Date} date */
  static fromDate(date) {
    const ms = date.getTime();
    const s = Math.floor(ms / 1000);
    return new Timestamp(s, (ms - s * 1000) * 1e6);
  }
  static now() { return Timestamp.fromDate(new Date()); }
  toDate() { return new Date(this.seconds * 1000 + Math.floor(this.nanos / 1e6)); }
  /** RFC 3339 in UTC with exactly nine fractional digits, as the server writes it. */
  toString() {
    const iso = new Date(this.seconds * 1000).toISOString(); // YYYY-MM-DDTHH:MM:SS.000Z
    return iso.slice(0, 19) + '.' + String(this.nanos).padStart(9, '0') + 'Z';
  }
  toJSON() { return this.toString(); }
  /** @param {Timestamp} other */
  compareTo(other) {
    if (this.seconds !== other.seconds) return this.seconds < other.seconds ? -1 : 1;
    return this.nanos === other.nanos ? 0 : (this.nanos < other.nanos ? -1 : 1);
  }
  /** @param {Timestamp} other */
  isEqual(other) { return other instanceof Timestamp && this.compareTo(other) === 0; }
}

/** An error reported by the server or the SDK, with a canonical Hearth `code`. */
export class HearthError extends Error {
  /**
   * @param {string} code canonical code (`permission-denied`, `unavailable`, …)
   * @param {string} message
   * @param {object} [details]
   */
  constructor(code, message, details) {
    super(message);
    this.name = 'HearthError';
    this.code = code;
    this.details = details;
  }
}

// ---------------------------------------------------------------------------
// Field transforms (sentinels usable inside set/update/merge data)
// ---------------------------------------------------------------------------

class TransformSentinel {
  /** @param {object} spec */
  constructor(spec) { this.spec = spec; }
}

/** Adds `n` to the field (integer or double) on the server. */
export const increment = (/** @type {number|bigint|Double} */ n) => new TransformSentinel({ transform: 'increment', value: n });
/** Sets the field to the server's commit time. */
export const serverTimestamp = () => new TransformSentinel({ transform: 'server_timestamp' });
/** Adds the values that are not already in the array. */
export const arrayUnion = (/** @type {any[]} */ ...values) => new TransformSentinel({ transform: 'array_union', values });
/** Removes every occurrence of the values from the array. */
export const arrayRemove = (/** @type {any[]} */ ...values) => new TransformSentinel({ transform: 'array_remove', values });
/** Deletes the field (in `update`/`merge`). */
export const deleteField = () => new TransformSentinel({ transform: 'delete' });

// ---------------------------------------------------------------------------
// JSON codec that keeps integers and doubles apart
// ---------------------------------------------------------------------------

/**
 * Parses JSON text like `JSON.parse`, but reads numbers from their text:
 * an integer (no `.`/exponent) becomes a `number` if it is within ±(2^53−1)
 * and a `bigint` otherwise (beyond the int64 range it is a double, as the
 * server reads it); a number with `.` or an exponent becomes a `number`, or a
 * {@link Double} when its value is integral.
 * @param {string} text
 * @returns {any}
 */
export function parseJSON(text) {
  let i = 0;
  const n = text.length;
  const NUM = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  const skip = () => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 32 || c === 9 || c === 10 || c === 13) i++; else break;
    }
  };
  const fail = (/** @type {string} */ what) => { throw new SyntaxError(`JSON: ${what} at position ${i}`); };
  const str = () => {
    let j = i + 1;
    let esc = false;
    for (;;) {
      if (j >= n) fail('unterminated string');
      const c = text.charCodeAt(j);
      if (c === 34) break;
      if (c === 92) { esc = true; j += 2; continue; }
      j++;
    }
    const s = esc ? JSON.parse(text.slice(i, j + 1)) : text.slice(i + 1, j);
    i = j + 1;
    return s;
  };
  /** @returns {any} */
  const value = () => {
    skip();
    const c = text[i];
    if (c === '{') {
      i++;
      /** @type {Record<string, any>} */
      const o = {};
      skip();
      if (text[i] === '}') { i++; return o; }
      for (;;) {
        skip();
        if (text[i] !== '"') fail('expected a key');
        const k = str();
        skip();
        if (text[i] !== ':') fail('expected :');
        i++;
        const v = value();
        if (k === '__proto__') Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
        else o[k] = v;
        skip();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return o; }
        fail('expected , or }');
      }
    }
    if (c === '[') {
      i++;
      const a = [];
      skip();
      if (text[i] === ']') { i++; return a; }
      for (;;) {
        a.push(value());
        skip();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return a; }
        fail('expected , or ]');
      }
    }
    if (c === '"') return str();
    if (text.startsWith('true', i)) { i += 4; return true; }
    if (text.startsWith('false', i)) { i += 5; return false; }
    if (text.startsWith('null', i)) { i += 4; return null; }
    NUM.lastIndex = i;
    const m = NUM.exec(text);
    if (!m) fail('unexpected character');
    i = NUM.lastIndex;
    return numberFromText(/** @type {RegExpExecArray} */ (m)[0], !!(/** @type {RegExpExecArray} */ (m)[1] || /** @type {RegExpExecArray} */ (m)[2]));
  };
  const v = value();
  skip();
  if (i !== n) fail('trailing data');
  return v;
}

/**
 * @param {string} t
 * @param {boolean} isDouble
 */
function numberFromText(t, isDouble) {
  if (!isDouble) {
    if (t === '-0') return new Double(-0);
    if (t.length < 16) return Number(t);
    const b = BigInt(t);
    if (b >= -MAX_SAFE && b <= MAX_SAFE) return Number(b);
    if (b > INT64_MAX || b < INT64_MIN) return new Double(Number(t));
    return b;
  }
  const v = Number(t);
  return Number.isInteger(v) || Object.is(v, -0) ? new Double(v) : v;
}

/** @param {number} x */
function formatDouble(x) {
  if (Object.is(x, -0)) return '-0.0';
  const s = String(x);
  return /[.eE]/.test(s) ? s : s + '.0';
}

/**
 * Serializes a value (already in wire form, see {@link toHearthJSON}) to JSON
 * text: `bigint` as exact digits, integral `number`s as integers, {@link Double}
 * and non-integral numbers with a `.` or exponent.
 * @param {any} v
 * @param {boolean} [sortKeys] write object keys in sorted order (a canonical form)
 * @returns {string}
 */
export function stringifyJSON(v, sortKeys = false) {
  if (v === null || v === undefined) return 'null';
  switch (typeof v) {
    case 'boolean': return v ? 'true' : 'false';
    case 'string': return JSON.stringify(v);
    case 'bigint': return v.toString();
    case 'number':
      if (!Number.isFinite(v)) return `{"$double":"${Number.isNaN(v) ? 'NaN' : (v > 0 ? 'Infinity' : '-Infinity')}"}`;
      if (Number.isInteger(v) && !Object.is(v, -0)) {
        if (Number.isSafeInteger(v)) return String(v);
        if (Math.abs(v) < TWO_63) return BigInt(v).toString();
        return formatDouble(v);
      }
      return Object.is(v, -0) ? '0' : JSON.stringify(v);
    default:
  }
  if (v instanceof Double) {
    if (!Number.isFinite(v.value)) return stringifyJSON(v.value);
    return formatDouble(v.value);
  }
  if (Array.isArray(v)) return '[' + v.map((x) => stringifyJSON(x, sortKeys)).join(',') + ']';
  let out = '{';
  let first = true;
  const keys = Object.keys(v);
  if (sortKeys) keys.sort();
  for (const k of keys) {
    if (v[k] === undefined) continue;
    out += (first ? '' : ',') + JSON.stringify(k) + ':' + stringifyJSON(v[k], sortKeys);
    first = false;
  }
  return out + '}';
}

// ---------------------------------------------------------------------------
// MessagePack codec
// ---------------------------------------------------------------------------

class HearthMsgpackDecoder extends MsgpackDecoder {
  constructor() { super({ useBigInt64: true }); }
  readF64() {
    const v = super.readF64();
    return Number.isInteger(v) || Object.is(v, -0) ? /** @type {any} */ (new Double(v)) : v;
  }
  readF32() {
    const v = super.readF32();
    return Number.isInteger(v) || Object.is(v, -0) ? /** @type {any} */ (new Double(v)) : v;
  }
}

class HearthMsgpackEncoder extends MsgpackEncoder {
  constructor() { super({ useBigInt64: true, ignoreUndefined: true }); }
  /** @param {any} object @param {number} depth */
  doEncode(object, depth) {
    const self = /** @type {any} */ (this);
    if (object instanceof Double) { self.encodeNumberAsFloat(object.value); return; }
    if (typeof object === 'number') {
      if (Number.isInteger(object) && !Object.is(object, -0)) {
        if (object >= -0x80000000 && object < 0x100000000) { super.doEncode(object, depth); return; }
        if (Math.abs(object) < TWO_63) { self.encodeBigInt64(BigInt(object)); return; }
      }
      self.encodeNumberAsFloat(object);
      return;
    }
    if (typeof object === 'bigint') {
      if (object >= INT64_MIN && object <= INT64_MAX) { self.encodeBigInt64(object); return; }
      self.encodeNumberAsFloat(Number(object));
      return;
    }
    super.doEncode(object, depth);
  }
}

/** Turns safe-range bigints (int64 formats) into numbers, recursively. */
function normalizeInts(/** @type {any} */ v) {
  if (typeof v === 'bigint') return v >= -MAX_SAFE && v <= MAX_SAFE ? Number(v) : v;
  if (v === null || typeof v !== 'object' || v instanceof Double) return v;
  if (Array.isArray(v)) { for (let i = 0; i < v.length; i++) v[i] = normalizeInts(v[i]); return v; }
  if (v instanceof Uint8Array) return v;
  for (const k of Object.keys(v)) v[k] = normalizeInts(v[k]);
  return v;
}

/** @param {Uint8Array} bytes */
export function decodeMsgpack(bytes) {
  return normalizeInts(new HearthMsgpackDecoder().decode(bytes));
}
/** @param {any} value @returns {Uint8Array} */
export function encodeMsgpack(value) {
  return new HearthMsgpackEncoder().encode(value);
}

// ---------------------------------------------------------------------------
// Hearth value encoding (typed one-key objects) <-> JavaScript values
// ---------------------------------------------------------------------------

/** @param {string} b64 */
function base64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
/** @param {Uint8Array} bytes */
function bytesToBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, /** @type {any} */ (bytes.subarray(i, i + 0x8000)));
  return btoa(s);
}

/** @param {any} v */
function isPlainObject(v) {
  if (v === null || typeof v !== 'object') return false;
  const p = Object.getPrototypeOf(v);
  return p === Object.prototype || p === null;
}

/**
 * Converts a value in Hearth's JSON value encoding (as parsed by
 * {@link parseJSON} or decoded from MessagePack) to a JavaScript value:
 * `{"$bytes"}` → `Uint8Array`, `{"$timestamp"}` → {@link Timestamp},
 * `{"$double"}` → number/{@link Double}, `{"$map"}` → its plain object.
 * @param {any} v
 * @returns {any}
 */
export function fromHearthJSON(v) {
  if (v === null || typeof v !== 'object' || v instanceof Double) return v;
  if (Array.isArray(v)) return v.map(fromHearthJSON);
  const keys = Object.keys(v);
  if (keys.length === 1 && keys[0].startsWith('$')) {
    const k = keys[0];
    const x = v[k];
    if (k === '$double') {
      if (typeof x === 'string') {
        if (x === 'NaN') return NaN;
        if (x === 'Infinity') return Infinity;
        if (x === '-Infinity') return -Infinity;
        const d = Number(x);
        return Number.isInteger(d) || Object.is(d, -0) ? new Double(d) : d;
      }
      const d = Number(x instanceof Double ? x.value : x);
      return Number.isInteger(d) || Object.is(d, -0) ? new Double(d) : d;
    }
    if (k === '$bytes' && typeof x === 'string') return base64ToBytes(x);
    if (k === '$timestamp' && typeof x === 'string') return Timestamp.parse(x);
    if (k === '$map' && isPlainObject(x)) {
      /** @type {Record<string, any>} */
      const o = {};
      for (const kk of Object.keys(x)) setOwn(o, kk, fromHearthJSON(x[kk]));
      return o;
    }
  }
  /** @type {Record<string, any>} */
  const o = {};
  for (const k of keys) setOwn(o, k, fromHearthJSON(v[k]));
  return o;
}

/** @param {Record<string, any>} o @param {string} k @param {any} v */
function setOwn(o, k, v) {
  if (k === '__proto__') Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  else o[k] = v;
}

/**
 * Converts a JavaScript value to Hearth's value encoding (the inverse of
 * {@link fromHearthJSON}); numbers, bigints and {@link Double}s are kept for the
 * frame codec, which writes them with their exact type.
 * @param {any} v
 * @returns {any}
 */
export function toHearthJSON(v) {
  if (v === undefined) return null;
  if (v === null || typeof v === 'boolean' || typeof v === 'string' || typeof v === 'bigint') return v;
  if (typeof v === 'number') {
    if (Number.isNaN(v)) return { $double: 'NaN' };
    if (v === Infinity) return { $double: 'Infinity' };
    if (v === -Infinity) return { $double: '-Infinity' };
    return v;
  }
  if (v instanceof Double) return Number.isFinite(v.value) ? v : toHearthJSON(v.value);
  if (v instanceof Timestamp) return { $timestamp: v.toString() };
  if (v instanceof Date) return { $timestamp: Timestamp.fromDate(v).toString() };
  if (v instanceof Uint8Array) return { $bytes: bytesToBase64(v) };
  if (v instanceof ArrayBuffer) return { $bytes: bytesToBase64(new Uint8Array(v)) };
  if (v instanceof TransformSentinel) throw new HearthError('invalid-argument', 'a field transform can only be used as a top-level field value of set/update/merge');
  if (Array.isArray(v)) return v.map(toHearthJSON);
  if (typeof v === 'object') {
    /** @type {Record<string, any>} */
    const o = {};
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    for (const k of keys) setOwn(o, k, toHearthJSON(v[k]));
    if (keys.length === 1 && keys[0].startsWith('$')) return { $map: o };
    return o;
  }
  throw new HearthError('invalid-argument', `cannot encode a value of type ${typeof v}`);
}

/**
 * Converts a protocol `Write` object in Hearth's JSON encoding (as the REST
 * API and PROTOCOL.md §2 write it) to one with JavaScript values, ready for
 * {@link HearthClient#commit}.
 * @param {any} w
 */
export function writeFromJSON(w) {
  const out = { ...w };
  if (w.data !== undefined) out.data = fromFields(w.data);
  if (w.fields !== undefined) out.fields = fromFields(w.fields);
  if (w.transforms) out.transforms = w.transforms.map((/** @type {any} */ t) => ({
    ...t,
    ...(t.value !== undefined ? { value: fromHearthJSON(t.value) } : {}),
    ...(t.values !== undefined ? { values: t.values.map(fromHearthJSON) } : {}),
  }));
  return out;
}

/** @param {any} f */
function fromFields(f) {
  /** @type {Record<string, any>} */
  const o = {};
  for (const k of Object.keys(f)) setOwn(o, k, fromHearthJSON(f[k]));
  return o;
}
/** @param {any} f */
function toFields(f) {
  /** @type {Record<string, any>} */
  const o = {};
  for (const k of Object.keys(f)) if (f[k] !== undefined) setOwn(o, k, toHearthJSON(f[k]));
  return o;
}

/** @param {any} w */
function writeToWire(w) {
  const out = { ...w };
  if (w.data !== undefined) out.data = toFields(w.data);
  if (w.fields !== undefined) out.fields = toFields(w.fields);
  if (w.transforms) out.transforms = w.transforms.map((/** @type {any} */ t) => ({
    ...t,
    ...(t.value !== undefined ? { value: toHearthJSON(t.value) } : {}),
    ...(t.values !== undefined ? { values: t.values.map(toHearthJSON) } : {}),
  }));
  return out;
}

/**
 * Converts a protocol `Query` in Hearth's JSON encoding to one with JavaScript
 * values (filter operands and cursor values), for {@link HearthClient#query}.
 * @param {any} q
 */
export function queryFromJSON(q) { return mapQueryValues(q, fromHearthJSON); }

/** @param {any} q @param {(v: any) => any} f */
function mapQueryValues(q, f) {
  const out = { ...q };
  /** @param {any} flt @returns {any} */
  const mf = (flt) => {
    if (flt.and) return { and: flt.and.map(mf) };
    if (flt.or) return { or: flt.or.map(mf) };
    return { ...flt, value: f(flt.value) };
  };
  if (q.where) out.where = mf(q.where);
  if (q.start_at) out.start_at = { ...q.start_at, values: q.start_at.values.map(f) };
  if (q.end_at) out.end_at = { ...q.end_at, values: q.end_at.values.map(f) };
  return out;
}

/** @param {any} doc */
function hydrateDoc(doc) {
  return { ...doc, fields: fromFields(doc.fields || {}) };
}

// ---------------------------------------------------------------------------
// Frame codec
// ---------------------------------------------------------------------------

/**
 * Encodes a frame (an object whose values are already in wire form).
 * @param {any} frame
 * @param {'json'|'msgpack'} encoding
 * @returns {string|Uint8Array}
 */
export function encodeFrame(frame, encoding) {
  return encoding === 'msgpack' ? encodeMsgpack(frame) : stringifyJSON(frame);
}

/**
 * Decodes a frame and converts document fields to JavaScript values.
 * @param {string|ArrayBuffer|Uint8Array} data
 * @returns {any}
 */
export function decodeFrame(data) {
  let f;
  if (typeof data === 'string') f = parseJSON(data);
  else f = decodeMsgpack(data instanceof Uint8Array ? data : new Uint8Array(data));
  if (f && f.type === 'snapshot' && Array.isArray(f.docs)) f.docs = f.docs.map(hydrateDoc);
  if (f && f.type === 'changes' && Array.isArray(f.changes)) f.changes = f.changes.map((/** @type {any} */ c) => ({ ...c, doc: hydrateDoc(c.doc) }));
  return f;
}

// ---------------------------------------------------------------------------
// Field paths, ordering, query evaluation
// ---------------------------------------------------------------------------

/**
 * Splits a field path (`a.b`, `` tags.`a.b` ``) into its segments.
 * @param {string} path
 * @returns {string[]}
 */
export function parseFieldPath(path) {
  const segs = [];
  let i = 0;
  while (i <= path.length) {
    if (path[i] === '`') {
      let s = '';
      i++;
      while (i < path.length && path[i] !== '`') {
        if (path[i] === '\\') i++;
        s += path[i++];
      }
      i++; // closing backtick
      segs.push(s);
    } else {
      let j = path.indexOf('.', i);
      if (j < 0) j = path.length;
      segs.push(path.slice(i, j));
      i = j;
    }
    if (path[i] === '.') i++; else break;
  }
  return segs;
}

/**
 * Builds a field path from literal segments, quoting those that are not plain
 * identifiers: `fieldPath('tags', 'a.b')` is `` tags.`a.b` ``.
 * @param {...string} segments
 */
export function fieldPath(...segments) { return formatFieldPath(segments); }

/** @param {string[]} segs */
function formatFieldPath(segs) {
  return segs.map((s) => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(s) ? s : '`' + s.replace(/[`\\]/g, (c) => '\\' + c) + '`')).join('.');
}

/** @param {any} fields @param {string[]} segs */
function getField(fields, segs) {
  let v = fields;
  for (const s of segs) {
    if (!isPlainObject(v) || !Object.prototype.hasOwnProperty.call(v, s)) return undefined;
    v = v[s];
  }
  return v;
}
/** @param {any} fields @param {string[]} segs @param {any} value */
function setField(fields, segs, value) {
  let o = fields;
  for (let k = 0; k < segs.length - 1; k++) {
    if (!isPlainObject(o[segs[k]])) setOwn(o, segs[k], {});
    o = o[segs[k]];
  }
  setOwn(o, segs[segs.length - 1], value);
}
/** @param {any} fields @param {string[]} segs */
function deleteFieldAt(fields, segs) {
  let o = fields;
  for (let k = 0; k < segs.length - 1; k++) {
    if (!isPlainObject(o[segs[k]])) return;
    o = o[segs[k]];
  }
  delete o[segs[segs.length - 1]];
}

/** @param {any} v */
function typeRank(v) {
  if (v === null || v === undefined) return 0;
  if (typeof v === 'boolean') return 1;
  if (typeof v === 'number') return Number.isNaN(v) ? 2 : 3;
  if (typeof v === 'bigint' || v instanceof Double) return Number.isNaN(Number(v)) ? 2 : 3;
  if (v instanceof Timestamp) return 4;
  if (typeof v === 'string') return 5;
  if (v instanceof Uint8Array) return 6;
  if (Array.isArray(v)) return 7;
  return 8;
}

/**
 * Compares two strings by their UTF-8 bytes (= by code points).
 * @param {string} a @param {string} b
 */
export function compareStrings(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      x = x >= 0xd800 && x <= 0xdfff ? x + 0x2000 : (x >= 0xe000 ? x - 0x800 : x);
      y = y >= 0xd800 && y <= 0xdfff ? y + 0x2000 : (y >= 0xe000 ? y - 0x800 : y);
      return x < y ? -1 : 1;
    }
  }
  return a.length === b.length ? 0 : (a.length < b.length ? -1 : 1);
}

/** @param {any} a @param {any} b */
function compareNumbers(a, b) {
  const x = a instanceof Double ? a.value : a;
  const y = b instanceof Double ? b.value : b;
  // number/bigint comparisons are exact in JavaScript
  return x < y ? -1 : (x > y ? 1 : 0);
}

/**
 * Total order of Hearth values (PROTOCOL.md §2): `null < false < true < NaN <
 * numbers < timestamps < strings < bytes < arrays < maps`.
 * @param {any} a @param {any} b
 * @returns {number}
 */
export function compareValues(a, b) {
  const ra = typeRank(a);
  const rb = typeRank(b);
  if (ra !== rb) return ra < rb ? -1 : 1;
  switch (ra) {
    case 0: case 2: return 0;
    case 1: return a === b ? 0 : (a ? 1 : -1);
    case 3: return compareNumbers(a, b);
    case 4: return a.compareTo(b);
    case 5: return compareStrings(a, b);
    case 6: {
      const n = Math.min(a.length, b.length);
      for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
      return a.length === b.length ? 0 : (a.length < b.length ? -1 : 1);
    }
    case 7: {
      const n = Math.min(a.length, b.length);
      for (let i = 0; i < n; i++) { const c = compareValues(a[i], b[i]); if (c) return c; }
      return a.length === b.length ? 0 : (a.length < b.length ? -1 : 1);
    }
    default: {
      const ka = Object.keys(a).sort(compareStrings);
      const kb = Object.keys(b).sort(compareStrings);
      const n = Math.min(ka.length, kb.length);
      for (let i = 0; i < n; i++) {
        const c = compareStrings(ka[i], kb[i]) || compareValues(a[ka[i]], b[kb[i]]);
        if (c) return c;
      }
      return ka.length === kb.length ? 0 : (ka.length < kb.length ? -1 : 1);
    }
  }
}

/** @param {any} a @param {any} b */
function valuesEqual(a, b) { return compareValues(a, b) === 0; }

/** Compares document paths segment by segment. @param {string} a @param {string} b */
export function comparePaths(a, b) {
  const x = a.split('/');
  const y = b.split('/');
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) { const c = compareStrings(x[i], y[i]); if (c) return c; }
  return x.length === y.length ? 0 : (x.length < y.length ? -1 : 1);
}

const INEQUALITY_OPS = new Set(['<', '<=', '>', '>=', '!=', 'not-in']);

/** @param {any} filter @param {(f: any) => void} visit */
function forEachFieldFilter(filter, visit) {
  if (!filter) return;
  if (filter.and) filter.and.forEach((/** @type {any} */ f) => forEachFieldFilter(f, visit));
  else if (filter.or) filter.or.forEach((/** @type {any} */ f) => forEachFieldFilter(f, visit));
  else visit(filter);
}

/**
 * The query's normalized order: `order_by`, then every inequality field not yet
 * ordered on (ascending, by path), then `__name__` in the direction of the entry before it.
 * @param {any} query
 * @returns {{field: string, segs: string[], desc: boolean}[]}
 */
export function normalizedOrder(query) {
  /** @type {{field: string, segs: string[], desc: boolean}[]} */
  const order = [];
  const seen = new Set();
  for (const o of query.order_by || []) {
    const segs = parseFieldPath(o.field);
    const key = formatFieldPath(segs);
    if (seen.has(key)) continue;
    seen.add(key);
    order.push({ field: o.field, segs, desc: o.direction === 'desc' });
  }
  /** @type {string[][]} */
  const ineq = [];
  forEachFieldFilter(query.where, (f) => {
    if (!INEQUALITY_OPS.has(f.op)) return;
    const segs = parseFieldPath(f.field);
    const key = formatFieldPath(segs);
    if (seen.has(key)) return;
    seen.add(key);
    ineq.push(segs);
  });
  ineq.sort((a, b) => {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) { const c = compareStrings(a[i], b[i]); if (c) return c; }
    return a.length - b.length;
  });
  for (const segs of ineq) order.push({ field: formatFieldPath(segs), segs, desc: false });
  if (!seen.has('__name__')) {
    // In the direction of the entry before it, implicit inequality fields
    // included (PROTOCOL.md §2, corrected in session 7).
    const last = order.length ? order[order.length - 1].desc : false;
    order.push({ field: '__name__', segs: ['__name__'], desc: last });
  }
  return order;
}

/** @param {any} doc @param {string[]} segs */
function docValue(doc, segs) {
  if (segs.length === 1 && segs[0] === '__name__') return doc.path;
  return getField(doc.fields, segs);
}

/** @param {any} filter @param {any} doc @returns {boolean} */
function matchesFilter(filter, doc) {
  if (!filter) return true;
  if (filter.and) return filter.and.every((/** @type {any} */ f) => matchesFilter(f, doc));
  if (filter.or) return filter.or.some((/** @type {any} */ f) => matchesFilter(f, doc));
  const segs = parseFieldPath(filter.field);
  const isName = segs.length === 1 && segs[0] === '__name__';
  const v = docValue(doc, segs);
  if (v === undefined) return false;
  const x = filter.value;
  /** @param {any} a @param {any} b */
  const cmp = (a, b) => (isName && typeof b === 'string' ? comparePaths(a, b) : compareValues(a, b));
  /** @param {any} a @param {any} b */
  const eq = (a, b) => cmp(a, b) === 0 && (isName || typeRank(a) === typeRank(b));
  switch (filter.op) {
    case '==': return eq(v, x);
    case '!=': return !eq(v, x);
    case '<': case '<=': case '>': case '>=': {
      if (!isName && (typeRank(v) !== typeRank(x) || typeRank(v) === 2)) return false;
      const c = cmp(v, x);
      return filter.op === '<' ? c < 0 : filter.op === '<=' ? c <= 0 : filter.op === '>' ? c > 0 : c >= 0;
    }
    case 'in': return Array.isArray(x) && x.some((e) => eq(v, e));
    case 'not-in': return Array.isArray(x) && !x.some((e) => eq(v, e));
    case 'array-contains': return Array.isArray(v) && v.some((e) => eq(e, x));
    case 'array-contains-any': return Array.isArray(v) && Array.isArray(x) && v.some((e) => x.some((y) => eq(e, y)));
    default: return false;
  }
}

/**
 * Builds a comparator for documents in the query's normalized order.
 * @param {any} query
 */
export function documentComparator(query) {
  const order = normalizedOrder(query);
  return (/** @type {any} */ a, /** @type {any} */ b) => {
    for (const o of order) {
      const c = o.field === '__name__' ? comparePaths(a.path, b.path) : compareValues(docValue(a, o.segs), docValue(b, o.segs));
      if (c) return o.desc ? -c : c;
    }
    return 0;
  };
}

/** @param {any} doc @param {any} query @param {{field: string, segs: string[], desc: boolean}[]} order @param {any} cursor */
function cursorCompare(doc, query, order, cursor) {
  const vals = cursor.values;
  for (let i = 0; i < vals.length && i < order.length; i++) {
    const o = order[i];
    const c = o.field === '__name__'
      ? comparePaths(doc.path, typeof vals[i] === 'string' && !vals[i].includes('/') && query.collection ? `${query.collection}/${vals[i]}` : vals[i])
      : compareValues(docValue(doc, o.segs), vals[i]);
    if (c) return o.desc ? -c : c;
  }
  return 0;
}

/**
 * Whether a document belongs to a query's result (ignoring limits).
 * @param {any} query @param {any} doc
 */
export function documentMatchesQuery(query, doc) {
  if (query.collection !== undefined) {
    if (parentCollection(doc.path) !== query.collection) return false;
  } else if (query.collection_group !== undefined) {
    if (collectionId(doc.path) !== query.collection_group) return false;
  }
  if (!matchesFilter(query.where, doc)) return false;
  const order = normalizedOrder(query);
  for (const o of order) if (o.field !== '__name__' && docValue(doc, o.segs) === undefined) return false;
  if (query.start_at) {
    const c = cursorCompare(doc, query, order, query.start_at);
    if (c < 0 || (c === 0 && query.start_at.inclusive === false)) return false;
  }
  if (query.end_at) {
    const c = cursorCompare(doc, query, order, query.end_at);
    if (c > 0 || (c === 0 && query.end_at.inclusive === false)) return false;
  }
  return true;
}

/**
 * Evaluates a query over a set of documents: filter, order, limit.
 * @param {any} query @param {any[]} docs
 */
export function runQuery(query, docs) {
  let out = docs.filter((d) => documentMatchesQuery(query, d)).sort(documentComparator(query));
  if (typeof query.limit === 'number') {
    if (query.limit_to_last) out = out.slice(Math.max(0, out.length - query.limit));
    else out = out.slice(0, query.limit);
  }
  return out;
}

/** @param {string} path */
function parentCollection(path) {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}
/** @param {string} path */
function collectionId(path) {
  const segs = path.split('/');
  return segs[segs.length - 2];
}

/** Whether a write to `path` can affect a subscription target. @param {any} target @param {string} path */
function targetTouches(target, path) {
  if (target.doc !== undefined) return target.doc === path;
  const q = target.query;
  if (q.collection !== undefined) return parentCollection(path) === q.collection;
  if (q.collection_group !== undefined) return collectionId(path) === q.collection_group;
  return false;
}

// ---------------------------------------------------------------------------
// Applying writes locally (latency compensation)
// ---------------------------------------------------------------------------

/** @param {any} v @returns {any} */
function cloneValue(v) {
  if (Array.isArray(v)) return v.map(cloneValue);
  if (isPlainObject(v)) {
    /** @type {Record<string, any>} */
    const o = {};
    for (const k of Object.keys(v)) setOwn(o, k, cloneValue(v[k]));
    return o;
  }
  return v;
}

/** @param {any} v */
function isIntegerValue(v) {
  return typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v) && !Object.is(v, -0));
}
/** @param {any} v */
function isNumberValue(v) { return typeof v === 'number' || typeof v === 'bigint' || v instanceof Double; }

/**
 * `increment` as the server computes it: integers saturate at the int64
 * bounds, integer + double is a double, a missing/non-numeric field takes the operand.
 * @param {any} current @param {any} operand
 */
export function applyIncrement(current, operand) {
  if (!isNumberValue(current)) return operand;
  if (isIntegerValue(current) && isIntegerValue(operand)) {
    let r = BigInt(current) + BigInt(operand);
    if (r > INT64_MAX) r = INT64_MAX;
    if (r < INT64_MIN) r = INT64_MIN;
    return r >= -MAX_SAFE && r <= MAX_SAFE ? Number(r) : r;
  }
  const r = Number(current instanceof Double ? current.value : current) + Number(operand instanceof Double ? operand.value : operand);
  return Number.isInteger(r) || Object.is(r, -0) ? new Double(r) : r;
}

/** @param {any} fields @param {any[]} transforms */
function applyTransforms(fields, transforms) {
  for (const t of transforms || []) {
    const segs = parseFieldPath(t.field);
    const cur = getField(fields, segs);
    switch (t.transform) {
      case 'increment': setField(fields, segs, applyIncrement(cur, t.value)); break;
      case 'server_timestamp': setField(fields, segs, Timestamp.now()); break;
      case 'array_union': {
        const arr = Array.isArray(cur) ? cur.slice() : [];
        for (const v of t.values || []) if (!arr.some((e) => valuesEqual(e, v))) arr.push(cloneValue(v));
        setField(fields, segs, arr);
        break;
      }
      case 'array_remove': {
        const arr = Array.isArray(cur) ? cur : [];
        setField(fields, segs, arr.filter((e) => !(t.values || []).some((/** @type {any} */ v) => valuesEqual(e, v))));
        break;
      }
      case 'delete': deleteFieldAt(fields, segs); break;
      default:
    }
  }
}

/**
 * Applies one protocol write (with JavaScript values) to a map of documents
 * (path → document). Returns whether the write changed the map.
 * `authoritative`: the map knows whether documents outside it exist
 * (a document target), so `merge` may create and `update` may be refused.
 * @param {Map<string, any>} map @param {any} w @param {boolean} authoritative
 */
export function applyWriteToMap(map, w, authoritative) {
  const existing = map.get(w.path);
  const pre = w.precondition;
  if (pre) {
    if (pre.exists === true && !existing) return false;
    if (pre.exists === false && existing) return false;
    if (pre.version !== undefined && existing && existing.version !== undefined && existing.version !== pre.version) return false;
  }
  const now = Timestamp.now().toString();
  /** @param {any} fields */
  const put = (fields) => {
    applyTransforms(fields, w.transforms);
    const doc = { path: w.path, fields, create_time: existing ? existing.create_time : now, update_time: now };
    if (existing && existing.version !== undefined) /** @type {any} */ (doc).version = existing.version;
    map.set(w.path, doc);
    return true;
  };
  switch (w.op) {
    case 'set': return put(cloneValue(w.data || {}));
    case 'create': return existing ? false : put(cloneValue(w.data || {}));
    case 'update':
    case 'merge': {
      if (!existing && (w.op === 'update' || !authoritative)) return false;
      const fields = existing ? cloneValue(existing.fields) : {};
      for (const k of Object.keys(w.fields || {})) setField(fields, parseFieldPath(k), cloneValue(w.fields[k]));
      return put(fields);
    }
    case 'delete':
      if (!existing) return false;
      map.delete(w.path);
      return true;
    default: return false;
  }
}

// ---------------------------------------------------------------------------
// Views: applying change frames, diffing
// ---------------------------------------------------------------------------

/**
 * Applies a `changes` frame's change list to a view (PROTOCOL.md §5): remove
 * every entry at an `old_index`, then insert `added`/`modified` documents at
 * their `new_index` in ascending order. Returns a new array.
 * @param {any[]} docs @param {any[]} changes
 */
export function applyChanges(docs, changes) {
  const drop = new Set();
  for (const c of changes) if (c.old_index !== null && c.old_index !== undefined) drop.add(c.old_index);
  const out = docs.filter((_, i) => !drop.has(i));
  const ins = changes.filter((c) => c.kind !== 'removed').sort((a, b) => a.new_index - b.new_index);
  for (const c of ins) out.splice(c.new_index, 0, c.doc);
  return out;
}

/** @param {any} d */
function docKey(d) { return stringifyJSON(toFields(d.fields), true) + (d.pending ? '#p' : ''); }

/**
 * Computes the change list turning view `prev` into view `next` (both arrays
 * of documents with `path`, `fields`, `pending`), with absolute indexes as in
 * PROTOCOL.md §5. Applying it with {@link applyChanges} to `prev` gives `next`.
 * @param {any[]} prev @param {any[]} next
 * @returns {{kind: 'added'|'modified'|'removed', doc: any, old_index: number|null, new_index: number|null}[]}
 */
export function diffViews(prev, next) {
  const oldIdx = new Map(prev.map((d, i) => [d.path, i]));
  const newIdx = new Map(next.map((d, i) => [d.path, i]));
  /** @type {any[]} */
  const removed = [];
  /** @type {any[]} */
  const rest = [];
  prev.forEach((d, i) => { if (!newIdx.has(d.path)) removed.push({ kind: 'removed', doc: d, old_index: i, new_index: null }); });
  next.forEach((d, i) => {
    const o = oldIdx.get(d.path);
    if (o === undefined) rest.push({ kind: 'added', doc: d, old_index: null, new_index: i });
    else if (docKey(prev[o]) !== docKey(d)) rest.push({ kind: 'modified', doc: d, old_index: o, new_index: i });
  });
  let changes = removed.concat(rest);
  // Documents that only moved are not listed; check that the list is complete
  // and, if a move was not explained by others coming and going, list the moved ones too.
  const check = applyChanges(prev, changes);
  if (check.length !== next.length || check.some((d, i) => d.path !== next[i].path)) {
    const listed = new Set(rest.map((c) => c.doc.path));
    next.forEach((d, i) => {
      if (!listed.has(d.path) && oldIdx.has(d.path)) rest.push({ kind: 'modified', doc: d, old_index: oldIdx.get(d.path), new_index: i });
    });
    rest.sort((a, b) => a.new_index - b.new_index);
    changes = removed.concat(rest);
  }
  return changes;
}

// ---------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------

/**
 * Full-jitter backoff (PROTOCOL.md §13): a random wait in
 * [0, min(maxMs, baseMs × 2^n)] where `n` counts consecutive failures.
 * @param {number} n
 * @param {{baseMs?: number, maxMs?: number}} [opts]
 * @param {() => number} [random]
 */
export function backoffDelay(n, opts = {}, random = Math.random) {
  const base = opts.baseMs ?? 250;
  const max = opts.maxMs ?? 30000;
  const cap = Math.min(max, base * 2 ** Math.min(n, 30));
  return random() * cap;
}

/** Parses the position out of a resume token `p<seq>` (null if not of that form). @param {string|null|undefined} token */
export function resumePosition(token) {
  if (typeof token !== 'string' || !/^p\d+$/.test(token)) return null;
  return Number(token.slice(1));
}

// ---------------------------------------------------------------------------
// Random ids
// ---------------------------------------------------------------------------

/** @type {any} */
let nodeCrypto = null;
// Node 18 normally has the Web Crypto global; older or unusual runtimes get
// node:crypto (loaded asynchronously: no top-level await, for bundlers).
if (!globalThis.crypto?.getRandomValues && typeof process !== 'undefined' && process.versions?.node) {
  import('node:crypto').then((m) => { nodeCrypto = m; }, () => { /* no crypto */ });
}

/** A random UUID v4, used for mutation ids. */
export function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  if (nodeCrypto?.randomUUID) return nodeCrypto.randomUUID();
  const b = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---------------------------------------------------------------------------
// Local view computation (server view + pending writes)
// ---------------------------------------------------------------------------

/**
 * Computes a subscription's local view: the server view (`base.docs` at
 * position `base.position`) with the pending writes applied on top, oldest
 * first (PROTOCOL.md §13). A write not yet acknowledged is always applied; an
 * acknowledged one (with `seq`) only while `base.position < seq`.
 * Returns the documents (with a `pending` flag) in query order.
 * @param {any} target `{doc: path}` or `{query: Query}` (JavaScript values)
 * @param {{docs: any[], position: number|null}} base
 * @param {{ops: any[], seq?: number|null, acked?: boolean}[]} pending
 * @param {{authoritative?: boolean}} [opts]
 */
export function computeLocalView(target, base, pending, opts = {}) {
  const relevant = [];
  for (const pw of pending) {
    if (pw.acked && !(base.position === null || base.position < /** @type {number} */ (pw.seq))) continue;
    if (pw.ops.some((w) => targetTouches(target, w.path))) relevant.push(pw);
  }
  if (!relevant.length) return base.docs.map((d) => ({ ...d, pending: false }));
  const map = new Map(base.docs.map((d) => [d.path, d]));
  const touched = new Set();
  const authoritative = target.doc !== undefined && opts.authoritative !== false;
  for (const pw of relevant) {
    for (const w of pw.ops) {
      if (!targetTouches(target, w.path)) continue;
      if (applyWriteToMap(map, w, authoritative)) touched.add(w.path);
    }
  }
  let docs = [...map.values()];
  if (target.query) docs = runQuery(target.query, docs);
  return docs.map((d) => ({ ...d, pending: touched.has(d.path) }));
}

// ---------------------------------------------------------------------------
// WebSocket implementation
// ---------------------------------------------------------------------------

/** @type {any} */
let WebSocketImpl = globalThis.WebSocket;
async function getWebSocket() {
  if (WebSocketImpl) return WebSocketImpl;
  const name = 'ws';
  const mod = await import(name);
  WebSocketImpl = mod.WebSocket || mod.default;
  return WebSocketImpl;
}

// ---------------------------------------------------------------------------
// Public snapshot types
// ---------------------------------------------------------------------------

/**
 * @typedef {object} DocumentSnapshot
 * @property {string} path the document path
 * @property {string} id the last path segment
 * @property {Record<string, any>} fields the document's fields (JavaScript values)
 * @property {number|bigint} [version] changelog position of the last server write
 * @property {string} [create_time]
 * @property {string} [update_time]
 * @property {boolean} pending true when the document shows a write of this client the server's view does not contain yet
 * @property {() => Record<string, any>} data returns `fields`
 */

/**
 * @typedef {object} DocumentChange
 * @property {'added'|'modified'|'removed'} kind
 * @property {DocumentSnapshot} doc
 * @property {number|null} oldIndex position in the previous snapshot's `docs`
 * @property {number|null} newIndex position in this snapshot's `docs`
 */

/**
 * @typedef {object} ViewSnapshot
 * @property {DocumentSnapshot[]} docs the whole local view, in query order (0 or 1 for a document)
 * @property {DocumentChange[]} changes what changed since the previous snapshot delivered to this listener
 * @property {boolean} hasPendingWrites some document is pending
 * @property {boolean} fromCache no server frame for this subscription on the current connection yet
 * @property {boolean} reset the server replaced the view after a resume token too old (PROTOCOL.md §6)
 * @property {DocumentSnapshot|null} [doc] for a document subscription: the document or null
 * @property {boolean} [exists] for a document subscription
 */

/** @param {any} d @returns {DocumentSnapshot} */
function toDocSnapshot(d) {
  const snap = {
    path: d.path,
    id: d.path.slice(d.path.lastIndexOf('/') + 1),
    fields: d.fields,
    version: d.version,
    create_time: d.create_time,
    update_time: d.update_time,
    pending: !!d.pending,
    data() { return this.fields; },
  };
  return snap;
}

// ---------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------

let subCounter = 0;

class Subscription {
  /**
   * @param {HearthClient} client
   * @param {any} target target with JavaScript values
   * @param {(s: ViewSnapshot) => void} onNext
   * @param {(e: HearthError) => void} onError
   * @param {{raw?: boolean}} [opts]
   */
  constructor(client, target, onNext, onError, opts = {}) {
    this.client = client;
    this.target = target;
    this.wireTarget = target.doc !== undefined ? { doc: target.doc } : { query: mapQueryValues(target.query, toHearthJSON) };
    this.name = `s${++subCounter}`;
    this.onNext = onNext;
    this.onError = onError;
    this.raw = !!opts.raw;
    /** @type {any[]} */
    this.serverDocs = [];
    /** @type {string|null} */
    this.resume = null;
    /** @type {number|null} */
    this.position = null;
    this.received = false; // any server frame ever
    this.current = false; // a server frame on the current connection
    this.ended = false;
    /** @type {{docs: any[], position: number|null, unknown?: boolean}|null} the in-doubt base (`unknown`: an empty stand-in) */
    this.frozen = null;
    /** @type {any[]|null} */
    this.emitted = null;
    this.lastReset = false;
    this.sentResume = false; // the current connection's subscribe carried a resume token
    /** @type {number|null} the id of the unsettled subscribe request */
    this.requestId = null;
    /** @type {any[]} */
    this.early = [];
    /** @type {string|null} the canonical target, when the view is cached (PROTOCOL.md §13) */
    this.cacheKey = null;
    this.cached = false; // the server view came from the offline read cache
    this.loading = false; // the cache lookup is not done yet: nothing shown, not sent
  }

  /**
   * Starts from a cached view: its documents are the server view, and its
   * token is sent as `resume` (PROTOCOL.md §13).
   * @param {{docs: any[], resume: string|null}} rec
   */
  useCached(rec) {
    this.serverDocs = rec.docs;
    this.resume = rec.resume;
    this.position = resumePosition(rec.resume);
    this.cached = true;
  }

  /** @param {any} frame */
  /**
   * Applies a `snapshot`/`changes` frame to the server view. Returns false if
   * the frame was set aside: a `changes` frame that arrives before the first
   * frame of a subscription sent without a resume token has no base to apply
   * to (PROTOCOL.md §3: the first frame is a `snapshot`, or `changes` only on a
   * resume). Such a frame is kept and applied after the snapshot if it is newer
   * than it (frames delivered out of order, see SPEC-NOTES.md).
   * @param {any} frame
   */
  onFrame(frame) {
    if (!this.current && frame.type === 'changes' && !this.sentResume) {
      this.client._log(`protocol violation: changes (${frame.resume}) before the first snapshot of ${this.name}; kept until the snapshot arrives`);
      this.early.push(frame);
      return false;
    }
    this._apply(frame);
    if (frame.type === 'snapshot' && this.early.length) {
      const early = this.early;
      this.early = [];
      for (const f of early) {
        const p = resumePosition(f.resume);
        if (p !== null && this.position !== null && p > this.position) this._apply(f);
      }
    }
    return true;
  }

  /** @param {any} frame */
  _apply(frame) {
    if (frame.type === 'snapshot') {
      this.serverDocs = frame.docs;
      this.lastReset = !!frame.reset;
    } else {
      this.serverDocs = applyChanges(this.serverDocs, frame.changes || []);
    }
    if (typeof frame.resume === 'string') {
      this.resume = frame.resume;
      const p = resumePosition(frame.resume);
      if (p !== null) this.position = p;
    }
    this.received = true;
    this.current = true;
  }

  /** Recomputes the local view and notifies the listener if it changed. */
  refresh() {
    if (this.ended || this.loading) return;
    const c = this.client;
    // A transaction is not shown before the server committed it (it may abort,
    // PROTOCOL.md §13 "Transactions"); once acknowledged it is overlaid like a write.
    const shown = c._writes.filter((pw) => pw.kind !== 'transaction' || pw.state === 'acked');
    const inDoubt = shown.some((pw) => pw.inDoubt && pw.ops.some((w) => targetTouches(this.target, w.path)));
    if (!inDoubt) this.frozen = null;
    // A subscription made after the break (or after a restart) never saw the
    // server view without the write in doubt: its base is empty until the
    // retry is answered (PROTOCOL.md §13), even if a cached view exists (the
    // record may have been saved after the write's commit reached the view).
    else if (!this.frozen) this.frozen = { docs: [], position: null, unknown: true };
    const base = inDoubt && this.frozen ? this.frozen : { docs: this.serverDocs, position: this.position };
    // the view is known (from a frame or the cache), not an empty stand-in
    const known = (this.received || this.cached) && !(inDoubt && this.frozen?.unknown);
    let docs;
    if (this.raw) docs = base.docs.map((d) => ({ ...d, pending: false }));
    else docs = computeLocalView(this.target, base, shown.map((pw) => ({ ops: pw.ops, seq: pw.seq, acked: pw.state === 'acked' })), { authoritative: known });
    if (this.emitted === null && !known && !docs.length) return;
    const reset = this.lastReset;
    this.lastReset = false;
    if (this.emitted !== null && !reset && docs.length === this.emitted.length && docs.every((d, i) => d.path === this.emitted?.[i].path && docKey(d) === docKey(this.emitted[i]))) return;
    const prev = this.emitted || [];
    const changes = diffViews(prev, docs);
    this.emitted = docs;
    const snaps = docs.map(toDocSnapshot);
    /** @type {ViewSnapshot} */
    const snapshot = {
      docs: snaps,
      changes: changes.map((ch) => ({
        kind: ch.kind,
        doc: ch.new_index !== null ? snaps[ch.new_index] : toDocSnapshot(ch.doc),
        oldIndex: ch.old_index,
        newIndex: ch.new_index,
      })),
      hasPendingWrites: docs.some((d) => d.pending),
      fromCache: !this.current,
      reset,
    };
    if (this.target.doc !== undefined) {
      snapshot.doc = snaps[0] || null;
      snapshot.exists = snaps.length > 0;
    }
    try { this.onNext(snapshot); } catch (e) { c._log('listener threw', e); }
  }

  /** @param {HearthError} err */
  fail(err) {
    if (this.ended) return;
    this.ended = true;
    this.client._subs.delete(this.name);
    this.client._dropView(this);
    try { this.onError(err); } catch (e) { this.client._log('error listener threw', e); }
  }
}

// ---------------------------------------------------------------------------
// References, queries, batches, transactions
// ---------------------------------------------------------------------------

/**
 * Splits `data` into plain values and field-transform sentinels.
 * @param {Record<string, any>} data @param {boolean} pathKeys
 */
function extractTransforms(data, pathKeys) {
  /** @type {any[]} */
  const transforms = [];
  /** @param {any} obj @param {string[]} prefix */
  const walk = (obj, prefix) => {
    /** @type {Record<string, any>} */
    const out = {};
    for (const k of Object.keys(obj)) {
      const v = obj[k];
      const segs = pathKeys && prefix.length === 0 ? parseFieldPath(k) : [...prefix, k];
      if (v instanceof TransformSentinel) {
        transforms.push({ field: formatFieldPath(segs), ...v.spec });
      } else if (!pathKeys && isPlainObject(v)) {
        setOwn(out, k, walk(v, segs));
      } else if (v !== undefined) {
        setOwn(out, k, v);
      }
    }
    return out;
  };
  const clean = walk(data || {}, []);
  return { clean, transforms };
}

/**
 * @typedef {object} WriteOptions
 * @property {{exists: boolean}|{version: number}} [precondition] a precondition the server checks
 * @property {any[]} [transforms] explicit protocol transforms (`{field, transform, value|values}`)
 */

/** Builds protocol writes; shared by {@link WriteBatch} and {@link Transaction}. */
class WriteBuilder {
  constructor() {
    /** @type {any[]} */
    this._ops = [];
  }
  /**
   * @param {string} op @param {string} path @param {any} payload @param {WriteOptions} [opts]
   */
  _add(op, path, payload, opts = {}) {
    /** @type {any} */
    const w = { op, path };
    /** @type {any[]} */
    let transforms = [];
    if (op === 'set' || op === 'create') {
      const { clean, transforms: t } = extractTransforms(payload, false);
      w.data = clean;
      transforms = t;
    } else if (op === 'update' || op === 'merge') {
      const { clean, transforms: t } = extractTransforms(payload || {}, true);
      w.fields = clean;
      transforms = t;
    }
    if (opts.transforms) transforms = transforms.concat(opts.transforms);
    if (transforms.length) w.transforms = transforms;
    if ((op === 'update' || op === 'merge') && transforms.length && Object.keys(w.fields).length === 0) delete w.fields;
    if (opts.precondition) w.precondition = opts.precondition;
    this._ops.push(w);
    return this;
  }
  /** Replaces the document (creates it if missing). @param {string|DocumentRef} ref @param {Record<string, any>} data @param {WriteOptions} [opts] */
  set(ref, data, opts) { return this._add('set', pathOf(ref), data, opts); }
  /** Creates the document; fails with `already-exists` if it exists. @param {string|DocumentRef} ref @param {Record<string, any>} data @param {WriteOptions} [opts] */
  create(ref, data, opts) { return this._add('create', pathOf(ref), data, opts); }
  /** Updates field paths of an existing document (`not-found` if missing). @param {string|DocumentRef} ref @param {Record<string, any>} fields @param {WriteOptions} [opts] */
  update(ref, fields, opts) { return this._add('update', pathOf(ref), fields, opts); }
  /** Sets field paths, creating the document if missing. @param {string|DocumentRef} ref @param {Record<string, any>} fields @param {WriteOptions} [opts] */
  merge(ref, fields, opts) { return this._add('merge', pathOf(ref), fields, opts); }
  /** Deletes the document. @param {string|DocumentRef} ref @param {WriteOptions} [opts] */
  delete(ref, opts) { return this._add('delete', pathOf(ref), undefined, opts); }
}

/** @param {string|DocumentRef} ref */
function pathOf(ref) { return typeof ref === 'string' ? ref : ref.path; }

/**
 * An atomic batch of writes, sent as one `write` frame.
 * `client.batch().set('a/1', {...}).update('a/2', {...}).commit()`.
 */
export class WriteBatch extends WriteBuilder {
  /** @param {HearthClient} client */
  constructor(client) { super(); this._client = client; }
  /** Commits the batch; resolves with `{result, duplicate}` once the server confirmed it. */
  commit() { return this._client.commit(this._ops); }
}

/**
 * The object passed to {@link HearthClient#runTransaction}'s callback: reads
 * record the version they saw, writes are buffered and committed atomically
 * with a `transaction` frame that fails with `aborted` if a read changed.
 */
export class Transaction extends WriteBuilder {
  /** @param {HearthClient} client */
  constructor(client) {
    super();
    this._client = client;
    /** @type {Map<string, number|null>} */
    this._reads = new Map();
  }
  /**
   * Reads a document from the server and records its version.
   * @param {string|DocumentRef} ref
   * @returns {Promise<DocumentSnapshot|null>}
   */
  async get(ref) {
    if (this._ops.length) throw new HearthError('invalid-argument', 'a transaction reads every document before its first write');
    const path = pathOf(ref);
    const doc = await this._client._getDoc(path);
    if (!this._reads.has(path)) this._reads.set(path, doc ? /** @type {number} */ (doc.version) : null);
    return doc;
  }
}

/** A reference to one document. Obtain with `client.doc(path)`. */
export class DocumentRef {
  /** @param {HearthClient} client @param {string} path */
  constructor(client, path) {
    this.client = client;
    this.path = path;
    this.id = path.slice(path.lastIndexOf('/') + 1);
  }
  /**
   * Listens to the document. The callback gets a {@link ViewSnapshot} with
   * `doc` (or null) every time the local view changes. Returns a function that
   * stops listening.
   * @param {(s: ViewSnapshot) => void} onNext
   * @param {(e: HearthError) => void} [onError]
   * @returns {() => void}
   */
  onSnapshot(onNext, onError) { return this.client._listen({ doc: this.path }, onNext, onError); }
  /** Async iterator over the document's snapshots. @returns {AsyncIterableIterator<ViewSnapshot>} */
  snapshots() { return this.client._iterate({ doc: this.path }); }
  /** Reads the document once from the server (null if missing). @returns {Promise<DocumentSnapshot|null>} */
  get() { return this.client._getDoc(this.path); }
  /** @param {Record<string, any>} data @param {WriteOptions} [opts] */
  set(data, opts) { return this.client.batch().set(this.path, data, opts).commit(); }
  /** @param {Record<string, any>} data @param {WriteOptions} [opts] */
  create(data, opts) { return this.client.batch().create(this.path, data, opts).commit(); }
  /** @param {Record<string, any>} fields @param {WriteOptions} [opts] */
  update(fields, opts) { return this.client.batch().update(this.path, fields, opts).commit(); }
  /** @param {Record<string, any>} fields @param {WriteOptions} [opts] */
  merge(fields, opts) { return this.client.batch().merge(this.path, fields, opts).commit(); }
  /** @param {WriteOptions} [opts] */
  delete(opts) { return this.client.batch().delete(this.path, opts).commit(); }
  /** A subcollection of this document. @param {string} id */
  collection(id) { return new Query(this.client, { collection: `${this.path}/${id}` }); }
}

/**
 * An immutable query builder. `client.collection('scores').where('n', '>', 1)
 * .orderBy('n', 'desc').limit(10).onSnapshot(cb)`.
 */
export class Query {
  /** @param {HearthClient} client @param {any} q protocol Query with JavaScript values */
  constructor(client, q) {
    this.client = client;
    this._q = q;
  }
  /** @param {any} patch */
  _with(patch) { return new Query(this.client, { ...this._q, ...patch }); }
  /**
   * Adds a filter (AND-ed with the others). Either `where(field, op, value)`
   * or `where(filter)` with a composite filter built by {@link and}/{@link or}/{@link field}.
   * @param {string|any} fieldOrFilter @param {string} [op] @param {any} [value]
   */
  where(fieldOrFilter, op, value) {
    const f = typeof fieldOrFilter === 'string' ? { field: fieldOrFilter, op, value } : fieldOrFilter;
    const cur = this._q.where;
    const where = !cur ? f : cur.and ? { and: [...cur.and, f] } : { and: [cur, f] };
    return this._with({ where });
  }
  /** @param {string} fieldPath @param {'asc'|'desc'} [direction] */
  orderBy(fieldPath, direction = 'asc') {
    return this._with({ order_by: [...(this._q.order_by || []), { field: fieldPath, direction }] });
  }
  /** The first `n` results. @param {number} n */
  limit(n) { return this._with({ limit: n, limit_to_last: false }); }
  /** The last `n` results (still delivered in query order). @param {number} n */
  limitToLast(n) { return this._with({ limit: n, limit_to_last: true }); }
  /** @param {...any} values */
  startAt(...values) { return this._with({ start_at: { values, inclusive: true } }); }
  /** @param {...any} values */
  startAfter(...values) { return this._with({ start_at: { values, inclusive: false } }); }
  /** @param {...any} values */
  endAt(...values) { return this._with({ end_at: { values, inclusive: true } }); }
  /** @param {...any} values */
  endBefore(...values) { return this._with({ end_at: { values, inclusive: false } }); }
  /** The protocol Query object (JavaScript values). */
  toProtocol() { return this._q; }
  /**
   * Listens to the query's results; see {@link DocumentRef#onSnapshot}.
   * @param {(s: ViewSnapshot) => void} onNext
   * @param {(e: HearthError) => void} [onError]
   * @returns {() => void}
   */
  onSnapshot(onNext, onError) { return this.client._listen({ query: this._q }, onNext, onError); }
  /** Async iterator over the query's snapshots. @returns {AsyncIterableIterator<ViewSnapshot>} */
  snapshots() { return this.client._iterate({ query: this._q }); }
  /** Reads the results once from the server. @returns {Promise<DocumentSnapshot[]>} */
  async get() {
    const docs = await this.client._getOnce({ query: this._q });
    return docs.map(toDocSnapshot);
  }
}

/** A single-field filter for {@link Query#where}. @param {string} fieldPath @param {string} op @param {any} value */
export const field = (fieldPath, op, value) => ({ field: fieldPath, op, value });
/** A conjunction of filters. @param {...any} filters */
export const and = (...filters) => ({ and: filters });
/** A disjunction of filters. @param {...any} filters */
export const or = (...filters) => ({ or: filters });

// ---------------------------------------------------------------------------
// Persistence of the pending-write queue (PROTOCOL.md §13 "Surviving a restart")
// ---------------------------------------------------------------------------

/**
 * A stored plain write (transactions are never stored).
 * @typedef {object} StoredWrite
 * @property {string} mutation_id
 * @property {string} writes the frame's `writes`, as Hearth JSON text (exact integers and doubles)
 * @property {number} created_at when the application made the write (ms since the epoch)
 * @property {number|null} sent_at when the write first went on the wire (ms), null if never
 */

/**
 * The storage interface of the pending-write queue. Every method may return
 * its result directly (a synchronous store: the change is durable when it
 * returns) or a Promise (durable when it resolves). Errors are thrown or
 * rejected; a lock held by another instance is a {@link HearthError} with code
 * `failed-precondition`.
 *
 * @typedef {object} WriteStore
 * @property {() => StoredWrite[] | Promise<StoredWrite[]>} open takes the store's lock and loads the
 *   stored writes in the order they were made
 * @property {(w: StoredWrite) => void | Promise<void>} add stores a new write (after every earlier one)
 * @property {(mutationId: string, sentAt: number) => void | Promise<void>} markSent records that the
 *   write went (or is about to go) on the wire, and when
 * @property {(mutationId: string) => void | Promise<void>} remove drops a write's record (it was answered)
 * @property {() => void | Promise<void>} close releases the lock
 * @property {(key: string) => string | null | Promise<string | null>} [loadView] the offline read cache
 *   (PROTOCOL.md §13 "An offline read cache"): the view record stored under `key` (the canonical JSON of
 *   the target), as text, or null. The client parses and verifies it ({@link decodeViewRecord}).
 * @property {(key: string, text: string) => void | Promise<void>} [saveView] stores a view record
 *   atomically in place of the old one (need not be durable); the store keeps at most its bound
 *   (100 by default) and drops the least recently saved beyond it
 * @property {(key: string) => void | Promise<void>} [deleteView] drops a view record
 * @property {() => void | Promise<void>} [destroy] deletes everything the store holds (pending writes and
 *   cached views), e.g. at sign-out; refused with `failed-precondition` while a client uses the store
 */

/** The most view records a store keeps (PROTOCOL.md §13: least recently saved dropped first). */
export const MAX_CACHED_VIEWS = 100;
const VIEW_FORMAT = 'hearth-view';

/**
 * The canonical form of a subscription target (wire values): its JSON with
 * object keys sorted and no whitespace. A cached view is found by it, so only
 * a subscription to exactly the same target uses it (PROTOCOL.md §13).
 * @param {any} wireTarget
 */
export function canonicalTarget(wireTarget) { return stringifyJSON(wireTarget, true); }

/**
 * The text of a view record: the target, the server view (documents in wire
 * form, without pending writes) and the resume token of the last frame applied
 * to it, in one JSON object (exact integers and doubles).
 * @param {any} wireTarget @param {any[]} docs documents with JavaScript values @param {string|null} resume
 * @param {number} [savedAt]
 */
export function encodeViewRecord(wireTarget, docs, resume, savedAt = Date.now()) {
  const wireDocs = docs.map((d) => {
    /** @type {any} */
    const o = { path: d.path, fields: toFields(d.fields || {}) };
    for (const k of ['version', 'create_time', 'update_time']) if (d[k] !== undefined && d[k] !== null) o[k] = d[k];
    return o;
  });
  return stringifyJSON({ format: VIEW_FORMAT, version: 1, target: wireTarget, resume, saved_at: savedAt, docs: wireDocs });
}

/**
 * Parses and verifies a view record found under `key`: null if it does not
 * parse (torn), is not a view record, or holds another target (the record is
 * then ignored, PROTOCOL.md §13).
 * @param {string} text @param {string} key
 * @returns {{target: any, docs: any[], resume: string|null, savedAt: number}|null}
 */
export function decodeViewRecord(text, key) {
  let r;
  try { r = parseJSON(text); } catch { return null; }
  if (!isPlainObject(r) || r.format !== VIEW_FORMAT || r.version !== 1 || !isPlainObject(r.target)) return null;
  if (canonicalTarget(r.target) !== key) return null;
  if (!(r.resume === null || typeof r.resume === 'string') || !Array.isArray(r.docs)) return null;
  if (!r.docs.every((/** @type {any} */ d) => isPlainObject(d) && typeof d.path === 'string' && isPlainObject(d.fields))) return null;
  try {
    return { target: r.target, docs: r.docs.map(hydrateDoc), resume: r.resume, savedAt: Number(r.saved_at) || 0 };
  } catch { return null; }
}

const SHA256_K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/**
 * SHA-256 of a string's UTF-8 bytes, as 64 hex digits. Synchronous and
 * dependency-free (the file store names view records by it, on any Node).
 * @param {string} text
 */
export function sha256Hex(text) {
  const msg = new TextEncoder().encode(text);
  const total = Math.ceil((msg.length + 9) / 64) * 64;
  const buf = new Uint8Array(total);
  buf.set(msg);
  buf[msg.length] = 0x80;
  const dv = new DataView(buf.buffer);
  const bits = msg.length * 8;
  dv.setUint32(total - 8, Math.floor(bits / 0x100000000));
  dv.setUint32(total - 4, bits >>> 0);
  const H = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const W = new Uint32Array(64);
  const ror = (/** @type {number} */ x, /** @type {number} */ n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < total; off += 64) {
    for (let i = 0; i < 16; i++) W[i] = dv.getUint32(off + 4 * i);
    for (let i = 16; i < 64; i++) {
      const a = W[i - 15];
      const b = W[i - 2];
      W[i] = W[i - 16] + (ror(a, 7) ^ ror(a, 18) ^ (a >>> 3)) + W[i - 7] + (ror(b, 17) ^ ror(b, 19) ^ (b >>> 10));
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + W[i]) | 0;
      const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    H[0] += a; H[1] += b; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += h;
  }
  return [...H].map((x) => x.toString(16).padStart(8, '0')).join('');
}

const JOURNAL_FILE = 'writes.jsonl';
const LOCK_FILE = 'lock';
const VIEWS_DIR = 'views';
const JOURNAL_HEADER = { format: 'hearth-pending-writes', version: 1 };

/**
 * Replays journal text into the live records, in order. A line that is not
 * JSON (the torn last line of an append cut short by a crash) is skipped;
 * `torn` counts such lines.
 * @param {string} text
 * @returns {{writes: StoredWrite[], torn: number}}
 */
export function replayJournal(text) {
  /** @type {Map<string, StoredWrite>} */
  const live = new Map();
  let torn = 0;
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let r;
    try { r = JSON.parse(line); } catch { torn++; continue; }
    if (!r || typeof r !== 'object') { torn++; continue; }
    if (r.op === 'add' && typeof r.id === 'string' && typeof r.writes === 'string') {
      live.delete(r.id);
      live.set(r.id, { mutation_id: r.id, writes: r.writes, created_at: Number(r.created_at) || 0, sent_at: typeof r.sent_at === 'number' ? r.sent_at : null });
    } else if (r.op === 'sent' && typeof r.id === 'string') {
      const w = live.get(r.id);
      if (w && w.sent_at === null) w.sent_at = Number(r.at);
    } else if (r.op === 'done' && typeof r.id === 'string') {
      live.delete(r.id);
    }
  }
  return { writes: [...live.values()], torn };
}

/** @param {StoredWrite} w */
function journalAdd(w) {
  return JSON.stringify({ op: 'add', id: w.mutation_id, created_at: w.created_at, sent_at: w.sent_at, writes: w.writes }) + '\n';
}

/** @param {number} pid */
function pidAlive(pid) {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try { process.kill(pid, 0); return true; } catch (e) { return /** @type {any} */ (e).code === 'EPERM'; }
}

/**
 * The Node store: a directory holding `writes.jsonl`, an append-only journal
 * of JSON lines (`add`, `sent`, `done` records; each `add` and `sent` is
 * followed by an fsync), rewritten with only the live writes when opened
 * (to a temporary file, fsynced, renamed over the journal, directory fsynced),
 * and `lock`, created exclusively (`wx`) with this process's pid. A lock whose
 * pid is not a running process is stale (its owner crashed) and is taken
 * over. Synchronous: a write is on disk when `commit()` returns its promise.
 *
 * The offline read cache lives in `views/`: one file per target, named by the
 * SHA-256 of the target's canonical JSON (`<hex>.json`), written to
 * `<hex>.json.tmp` and renamed over the old one (not fsynced: a record lost in
 * a crash is only a cache miss, a torn one fails to parse and is ignored). At
 * most `maxViews` (100) files are kept; the least recently saved go first.
 *
 * `fs` defaults to Node's (`process.getBuiltinModule`, Node 20.16+); on older
 * Node pass `import * as fs from 'node:fs'`.
 * @implements {WriteStore}
 */
export class FileWriteStore {
  /** @param {string} dir @param {{fs?: any, log?: (msg: string) => void, maxViews?: number}} [opts] */
  constructor(dir, opts = {}) {
    const fs = opts.fs || (typeof process !== 'undefined' && /** @type {any} */ (process).getBuiltinModule?.('node:fs'));
    if (!fs) throw new HearthError('unimplemented', 'FileWriteStore needs Node 20.16+ or an `fs` option (import * as fs from "node:fs")');
    this.fs = fs;
    this.dir = dir.replace(/\/+$/, '') || '/';
    this.journalPath = `${this.dir}/${JOURNAL_FILE}`;
    this.lockPath = `${this.dir}/${LOCK_FILE}`;
    this.viewsDir = `${this.dir}/${VIEWS_DIR}`;
    this.maxViews = opts.maxViews ?? MAX_CACHED_VIEWS;
    this.log = opts.log || (() => {});
    /** @type {number|null} */
    this.fd = null;
    this.locked = false;
    /** @type {Map<string, true>} the view files, least recently saved first */
    this.views = new Map();
  }

  _lock() {
    const fs = this.fs;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = fs.openSync(this.lockPath, 'wx');
        fs.writeSync(fd, String(process.pid));
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        this.locked = true;
        return;
      } catch (e) {
        if (/** @type {any} */ (e).code !== 'EEXIST') throw e;
      }
      let text = '';
      let age = Infinity;
      try { text = fs.readFileSync(this.lockPath, 'utf8'); age = Date.now() - fs.statSync(this.lockPath).mtimeMs; } catch { /* gone meanwhile */ }
      const pid = Number.parseInt(text, 10);
      // an empty lock file that is a few seconds old: its creator died before writing its pid
      const live = text.trim() ? pidAlive(pid) : age < 5000;
      if (live) throw new HearthError('failed-precondition', `the persistence directory ${this.dir} is in use by another client (pid ${text.trim() || '?'})`);
      this.log(`taking over the stale lock of pid ${text.trim() || '?'} in ${this.dir}`);
      try { fs.unlinkSync(this.lockPath); } catch { /* someone else took it over */ }
    }
    throw new HearthError('failed-precondition', `could not lock the persistence directory ${this.dir}`);
  }

  /** @returns {StoredWrite[]} */
  open() {
    const fs = this.fs;
    fs.mkdirSync(this.dir, { recursive: true });
    this._lock();
    try {
      let text = '';
      try { text = fs.readFileSync(this.journalPath, 'utf8'); } catch (e) { if (/** @type {any} */ (e).code !== 'ENOENT') throw e; }
      const { writes, torn } = replayJournal(text);
      if (torn) this.log(`skipped ${torn} unreadable journal line(s) (a torn append)`);
      // compaction: the live writes alone, written aside and renamed over the journal
      const tmp = `${this.journalPath}.tmp`;
      const fd = fs.openSync(tmp, 'w');
      fs.writeSync(fd, JSON.stringify(JOURNAL_HEADER) + '\n' + writes.map(journalAdd).join(''));
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, this.journalPath);
      this._syncDir();
      this._openViews();
      this.fd = fs.openSync(this.journalPath, 'a');
      return writes;
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Lists the view files (oldest saved first, by mtime); drops leftovers of interrupted saves. */
  _openViews() {
    const fs = this.fs;
    fs.mkdirSync(this.viewsDir, { recursive: true });
    /** @type {[string, number][]} */
    const found = [];
    for (const name of fs.readdirSync(this.viewsDir)) {
      const file = `${this.viewsDir}/${name}`;
      if (name.endsWith('.tmp')) { try { fs.unlinkSync(file); } catch { /* ignore */ } continue; }
      if (!name.endsWith('.json')) continue;
      try { found.push([name, fs.statSync(file).mtimeMs]); } catch { /* gone */ }
    }
    found.sort((a, b) => a[1] - b[1]);
    this.views = new Map(found.map(([name]) => [name, true]));
    this._evictViews();
  }

  _evictViews() {
    for (const name of this.views.keys()) {
      if (this.views.size <= this.maxViews) break;
      this.views.delete(name);
      try { this.fs.unlinkSync(`${this.viewsDir}/${name}`); } catch { /* ignore */ }
    }
  }

  /** @param {string} key */
  _viewFile(key) { return `${sha256Hex(key)}.json`; }

  /** @param {string} key @returns {string|null} */
  loadView(key) {
    if (!this.locked) throw new HearthError('failed-precondition', 'the store is closed');
    try { return this.fs.readFileSync(`${this.viewsDir}/${this._viewFile(key)}`, 'utf8'); } catch (e) {
      if (/** @type {any} */ (e).code === 'ENOENT') return null;
      throw e;
    }
  }

  /** @param {string} key @param {string} text */
  saveView(key, text) {
    if (!this.locked) throw new HearthError('failed-precondition', 'the store is closed');
    const name = this._viewFile(key);
    const file = `${this.viewsDir}/${name}`;
    this.fs.writeFileSync(`${file}.tmp`, text);
    this.fs.renameSync(`${file}.tmp`, file);
    this.views.delete(name);
    this.views.set(name, true);
    this._evictViews();
  }

  /** @param {string} key */
  deleteView(key) {
    if (!this.locked) throw new HearthError('failed-precondition', 'the store is closed');
    const name = this._viewFile(key);
    this.views.delete(name);
    try { this.fs.unlinkSync(`${this.viewsDir}/${name}`); } catch (e) { if (/** @type {any} */ (e).code !== 'ENOENT') throw e; }
  }

  /**
   * Deletes the pending writes and the cached views (sign-out). Takes the lock
   * for the duration: refused with `failed-precondition` while a client uses
   * the directory. The directory itself stays.
   */
  destroy() {
    const fs = this.fs;
    if (!fs.existsSync(this.dir)) return;
    this._lock();
    try {
      for (const f of [this.journalPath, `${this.journalPath}.tmp`]) { try { fs.unlinkSync(f); } catch { /* absent */ } }
      fs.rmSync(this.viewsDir, { recursive: true, force: true });
      this.views = new Map();
    } finally {
      this.close();
    }
  }

  _syncDir() {
    try { const d = this.fs.openSync(this.dir, 'r'); try { this.fs.fsyncSync(d); } finally { this.fs.closeSync(d); } } catch { /* not supported everywhere */ }
  }

  /** @param {string} line @param {boolean} sync */
  _append(line, sync) {
    if (this.fd === null) throw new HearthError('failed-precondition', 'the write store is closed');
    this.fs.writeSync(this.fd, line);
    if (sync) this.fs.fsyncSync(this.fd);
  }

  /** @param {StoredWrite} w */
  add(w) { this._append(journalAdd(w), true); }
  /** @param {string} id @param {number} at */
  markSent(id, at) { this._append(JSON.stringify({ op: 'sent', id, at }) + '\n', true); }
  /** Not synced: a `done` lost in a crash only makes the next start resend an answered write (answered `duplicate`). @param {string} id */
  remove(id) { this._append(JSON.stringify({ op: 'done', id }) + '\n', false); }

  close() {
    const fs = this.fs;
    if (this.fd !== null) { try { fs.closeSync(this.fd); } catch { /* ignore */ } this.fd = null; }
    if (this.locked) {
      this.locked = false;
      try { if (fs.readFileSync(this.lockPath, 'utf8').trim() === String(process.pid)) fs.unlinkSync(this.lockPath); } catch { /* ignore */ }
    }
  }
}

/**
 * Web Locks being released by a store of this page, by lock name: a new store
 * waits for the release before asking for the lock (the Web Locks API
 * releases a lock only after the callback's promise settles, a step behind
 * `close()`, so asking at once would be refused).
 * @type {Map<string, Promise<void>>}
 */
const idbLockReleases = new Map();

/** The IndexedDB schema version: 1 had the `writes` store only, 2 adds `views`. */
const IDB_VERSION = 2;

/**
 * The browser store: an IndexedDB database (object store `writes`, keyed by
 * an increasing `order`), each change in its own `readwrite` transaction with
 * `durability: 'strict'`, durable when the transaction completes. The lock is
 * a Web Lock (`navigator.locks`) named after the database, held until
 * `close()` (whose promise settles once it is released); without the Web
 * Locks API there is no lock (a warning is logged). Asynchronous: the client
 * shows and sends a write once it is stored.
 *
 * The offline read cache is the object store `views` (database version 2; a
 * version-1 database is upgraded in place, its writes kept): records
 * `{key, saved_at, record}` keyed by the target's canonical JSON, with an index
 * on `saved_at`; each save is one `put` and, beyond `maxViews` (100) records,
 * deletes the least recently saved in the same transaction.
 *
 * Tested against fake-indexeddb and a fake of the Web Locks API
 * (test/indexeddb.test.mjs, test/viewcache.test.mjs), and its write queue in
 * Debian's headless Chromium (test/browser.test.mjs: a reload, a second tab,
 * Chromium killed with SIGKILL), and its view cache there too (shown offline
 * after a reload, then resumed with its token and converged to the server).
 * @implements {WriteStore}
 */
export class IndexedDbWriteStore {
  /** @param {string} name database name @param {{indexedDB?: any, locks?: any, log?: (msg: string) => void, maxViews?: number}} [opts] */
  constructor(name, opts = {}) {
    this.name = name;
    this.maxViews = opts.maxViews ?? MAX_CACHED_VIEWS;
    /** the newest `saved_at` given (strictly increasing, so the least recently saved is well defined) */
    this.lastSavedAt = 0;
    this.idb = opts.indexedDB || globalThis.indexedDB;
    this.locks = opts.locks !== undefined ? opts.locks : globalThis.navigator?.locks;
    this.log = opts.log || (() => {});
    this.lockName = `hearth-pending-writes:${name}`;
    if (!this.idb) throw new HearthError('unimplemented', 'IndexedDB is not available here');
    /** @type {any} */
    this.db = null;
    /** @type {Map<string, Promise<number>>} mutation id → key (once its record is stored) */
    this.keys = new Map();
    this.next = 1;
    /** @type {(() => void)|null} */
    this.releaseLock = null;
    /** @type {Promise<void>|null} settles once the lock is released */
    this.lockReleased = null;
  }

  async _lock() {
    if (!this.locks) {
      this.log(`no Web Locks API (navigator.locks): the IndexedDB store ${this.name} is not locked, so two tabs could use it at once`);
      return;
    }
    const releasing = idbLockReleases.get(this.lockName);
    if (releasing) await releasing;
    /** @type {(v: boolean) => void} */
    let acquired = () => {};
    /** @type {(e: any) => void} */
    let failed = () => {};
    const got = new Promise((resolve, reject) => { acquired = resolve; failed = reject; });
    let request;
    try {
      request = this.locks.request(this.lockName, { ifAvailable: true }, (/** @type {any} */ lock) => {
        if (!lock) { acquired(false); return undefined; }
        acquired(true);
        return new Promise((release) => { this.releaseLock = () => release(undefined); });
      });
    } catch (e) { request = Promise.reject(e); }
    this.lockReleased = Promise.resolve(request).then(() => {}, (e) => failed(e));
    try {
      if (!(await got)) throw new HearthError('failed-precondition', `the IndexedDB store ${this.name} is in use by another client (tab)`);
    } catch (e) {
      if (e instanceof HearthError) throw e;
      throw new HearthError('failed-precondition', `could not lock the IndexedDB store ${this.name}: ${e}`); // e.g. a SecurityError
    }
  }

  async open() {
    await this._lock();
    try {
      this.db = await new Promise((resolve, reject) => {
        const req = this.idb.open(this.name, IDB_VERSION);
        req.onupgradeneeded = () => {
          const db = req.result;
          // version 1: the write queue; version 2 adds the view cache
          if (!db.objectStoreNames.contains('writes')) db.createObjectStore('writes', { keyPath: 'order' });
          if (!db.objectStoreNames.contains('views')) db.createObjectStore('views', { keyPath: 'key' }).createIndex('saved_at', 'saved_at');
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
        req.onblocked = () => reject(new HearthError('failed-precondition', `the IndexedDB database ${this.name} is blocked by another connection`));
      });
      /** @type {any[]} */
      const rows = await new Promise((resolve, reject) => {
        const tx = this.db.transaction('writes', 'readonly');
        const req = tx.objectStore('writes').getAll(); // in key order
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
      for (const r of rows) { this.keys.set(r.mutation_id, Promise.resolve(r.order)); this.next = Math.max(this.next, r.order + 1); }
      this.lastSavedAt = await new Promise((resolve, reject) => {
        const req = this.db.transaction('views', 'readonly').objectStore('views').index('saved_at').openCursor(null, 'prev');
        req.onsuccess = () => resolve(req.result ? Number(req.result.value.saved_at) || 0 : 0);
        req.onerror = () => reject(req.error);
      });
      return rows.map((r) => ({ mutation_id: r.mutation_id, writes: r.writes, created_at: r.created_at, sent_at: r.sent_at ?? null }));
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /**
   * Runs `fn` in one transaction on an object store; resolves with what `fn`
   * returned once the transaction completed.
   * @param {(store: any) => any} fn @param {string} [storeName] @param {'readwrite'|'readonly'} [mode]
   * @param {'strict'|'relaxed'} [durability]
   */
  _tx(fn, storeName = 'writes', mode = 'readwrite', durability = 'strict') {
    return new Promise((resolve, reject) => {
      if (!this.db) { reject(new HearthError('failed-precondition', 'the write store is closed')); return; }
      const tx = this.db.transaction(storeName, mode, { durability });
      /** @type {any} */
      let out;
      tx.oncomplete = () => resolve(typeof out === 'function' ? out() : out);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new HearthError('aborted', 'IndexedDB transaction aborted'));
      out = fn(tx.objectStore(storeName));
    });
  }

  /** @param {string} key @returns {Promise<string|null>} */
  loadView(key) {
    return this._tx((s) => {
      const req = s.get(key);
      return () => (req.result && typeof req.result.record === 'string' ? req.result.record : null);
    }, 'views', 'readonly');
  }

  /**
   * One `put`; beyond `maxViews` records the least recently saved are deleted
   * in the same transaction. Relaxed durability: a lost record is a cache miss.
   * @param {string} key @param {string} text
   */
  saveView(key, text) {
    this.lastSavedAt = Math.max(Date.now(), this.lastSavedAt + 1);
    const savedAt = this.lastSavedAt;
    return this._tx((s) => {
      s.put({ key, saved_at: savedAt, record: text });
      const count = s.count();
      count.onsuccess = () => {
        let excess = count.result - this.maxViews;
        if (excess <= 0) return;
        const cur = s.index('saved_at').openCursor();
        cur.onsuccess = () => {
          const c = cur.result;
          if (!c || excess <= 0) return;
          if (c.value.key !== key) { c.delete(); excess--; }
          c.continue();
        };
      };
    }, 'views', 'readwrite', 'relaxed');
  }

  /** @param {string} key */
  deleteView(key) { return this._tx((s) => { s.delete(key); }, 'views', 'readwrite', 'relaxed'); }

  /**
   * Deletes the database (pending writes and cached views), e.g. at sign-out.
   * Takes the Web Lock for the duration: refused with `failed-precondition`
   * while a client (another tab) uses the store.
   */
  async destroy() {
    await this._lock();
    try {
      await new Promise((resolve, reject) => {
        const req = this.idb.deleteDatabase(this.name);
        req.onsuccess = () => resolve(undefined);
        req.onerror = () => reject(req.error);
        req.onblocked = () => this.log(`deleting the IndexedDB database ${this.name} waits for other connections to close`);
      });
    } finally {
      await this.close();
    }
  }

  /**
   * The key is taken in the write's own transaction, after the last one in the
   * database: instances sharing it without a lock (no Web Locks) never
   * overwrite each other's records.
   * @param {StoredWrite} w
   */
  add(w) {
    let order = 0;
    const done = this._tx((s) => {
      const last = s.openCursor(null, 'prev');
      last.onsuccess = () => {
        order = Math.max(this.next, last.result ? last.result.key + 1 : 1);
        this.next = order + 1;
        s.add({ order, ...w });
      };
    });
    const key = done.then(() => order);
    key.catch(() => { if (this.keys.get(w.mutation_id) === key) this.keys.delete(w.mutation_id); });
    this.keys.set(w.mutation_id, key);
    return done;
  }

  /** @param {string} id @param {number} at */
  markSent(id, at) {
    const key = this.keys.get(id);
    if (key === undefined) return Promise.resolve();
    return key.then((order) => this._tx((s) => {
      const req = s.get(order);
      req.onsuccess = () => { if (req.result) s.put({ ...req.result, sent_at: at }); };
    }));
  }

  /** @param {string} id */
  remove(id) {
    const key = this.keys.get(id);
    this.keys.delete(id);
    if (key === undefined) return Promise.resolve();
    return key.then((order) => this._tx((s) => { s.delete(order); }));
  }

  /** @returns {Promise<void>} settles once the lock is released */
  close() {
    if (this.db) { try { this.db.close(); } catch { /* ignore */ } this.db = null; }
    if (this.releaseLock) {
      this.releaseLock();
      this.releaseLock = null;
      const released = /** @type {Promise<void>} */ (this.lockReleased);
      idbLockReleases.set(this.lockName, released);
      released.then(() => { if (idbLockReleases.get(this.lockName) === released) idbLockReleases.delete(this.lockName); });
    }
    return this.lockReleased || Promise.resolve();
  }
}

/** @param {any} v @returns {v is Promise<any>} */
function isPromise(v) { return !!v && typeof v.then === 'function'; }

/** @param {any} p @returns {WriteStore|null} */
function storeFromOption(p, /** @type {(msg: string) => void} */ log) {
  if (!p) return null;
  if (typeof p.open === 'function' && typeof p.add === 'function') return p;
  if (typeof p.dir === 'string') return new FileWriteStore(p.dir, { fs: p.fs, log, maxViews: p.maxViews });
  if (typeof p.indexedDb === 'string') return new IndexedDbWriteStore(p.indexedDb, { indexedDB: p.indexedDB, locks: p.locks, log, maxViews: p.maxViews });
  throw new HearthError('invalid-argument', 'persistence: give {dir} (Node), {indexedDb: name} (browser) or a WriteStore');
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/**
 * @typedef {object} ClientOptions
 * @property {string} url WebSocket URL, e.g. `ws://127.0.0.1:8080/v1/ws` (an `http(s)://host:port` base is accepted too)
 * @property {string|null} [token] access token or admin key for `hello`
 * @property {'json'|'msgpack'} [encoding] `json` (`hearth.v1`, default) or `msgpack` (`hearth.v1.msgpack`)
 * @property {{name: string, version: string}} [clientInfo] sent in `hello.client`
 * @property {number} [backoffBaseMs] first reconnect wait cap (default 250)
 * @property {number} [backoffMaxMs] reconnect wait cap (default 30000)
 * @property {number} [connectTimeoutMs] time allowed for connect + hello + welcome (default 10000)
 * @property {() => Promise<string|null>} [getToken] called for a fresh access token about a minute before
 *   `expires_at` (sent on the live socket as `auth`) and after a close 4001 (then the client reconnects
 *   with it). Without it, the application calls {@link HearthClient#setToken} itself.
 * @property {number} [maxQueuedWriteAgeMs] a write first sent longer ago than this and still unanswered
 *   is dropped (rejected with `deadline-exceeded`) instead of being sent again: the server forgets
 *   mutation ids after 24 h (default 23 h). A write never sent is sent however old it is.
 * @property {WriteStore|{dir: string, fs?: any}|{indexedDb: string, indexedDB?: any, locks?: any}|null} [persistence] keep the queue of
 *   pending plain writes across restarts (PROTOCOL.md §13): `{dir}` (Node: a directory), `{indexedDb: name}`
 *   (browser; `indexedDB` and `locks` replace the global `indexedDB` and `navigator.locks`, e.g. for tests;
 *   `locks: null` means no lock) or any {@link WriteStore}. Default: none (in memory). `maxViews`: the bound
 *   of the offline read cache (default 100).
 * @property {boolean} [cacheViews] keep the subscriptions' server views in the persistence store as an offline
 *   read cache (PROTOCOL.md §13 "An offline read cache"). Default: on when `persistence` is given and its store
 *   supports it (the file and IndexedDB stores do); `false` turns it off; `true` without a store that supports
 *   it is an error (`invalid-argument` without persistence, `unimplemented` for a store without view methods).
 * @property {number} [cacheViewsDelayMs] how long after a frame changed a view it is saved, gathering the frames
 *   of that time into one save (default 1000)
 * @property {() => number} [clock] wall clock in ms for the write-age rule (default `Date.now`; for tests)
 * @property {any} [WebSocket] a WebSocket constructor (default: global, else the `ws` package)
 * @property {(msg: string, ...args: any[]) => void} [logger] debug logger (default: none)
 */

/**
 * @typedef {object} PendingWrite
 * @property {string} mutationId
 * @property {'write'|'transaction'} kind
 * @property {any[]} ops writes with JavaScript values (for the local view)
 * @property {any} frame the frame without `id` (wire values), resent unchanged
 * @property {'queued'|'inflight'|'acked'} state
 * @property {boolean} inDoubt sent on a connection that broke before its answer
 * @property {number|null} seq
 * @property {number} attempts consecutive `unavailable` answers
 * @property {any} retryTimer
 * @property {number} ackedAt
 * @property {number} createdAt
 * @property {number|null} sentAt when it first went on the wire (wall clock, ms), null if never
 * @property {boolean} stored it has a record in the write store
 * @property {boolean} sentMarked the store durably knows it was sent
 * @property {boolean} marking a `markSent` is in progress (asynchronous store)
 * @property {(v: any) => void} resolve
 * @property {(e: any) => void} reject
 */

/**
 * A Hearth realtime client: one WebSocket session, kept alive across network
 * failures, with subscriptions, an offline write queue and latency compensation.
 *
 * ```js
 * const client = new HearthClient({ url: 'ws://127.0.0.1:8080/v1/ws', token });
 * await client.connect();
 * const stop = client.collection('scores').orderBy('points', 'desc').limit(10)
 *   .onSnapshot((snap) => render(snap.docs));
 * await client.doc('scores/ann').merge({ points: increment(5) });
 * ```
 *
 * Events (`client.on(name, cb)`): `state` (`'connecting'|'open'|'offline'|'auth-required'|'closed'`),
 * `welcome` (the welcome frame), `error` (a HearthError not tied to a request),
 * `closed` (`{code, reason}` of each connection).
 */
export class HearthClient {
  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options || !options.url) throw new HearthError('invalid-argument', 'HearthClient: `url` is required');
    let url = options.url;
    if (/^https?:\/\//.test(url)) url = url.replace(/^http/, 'ws').replace(/\/+$/, '') + '/v1/ws';
    this.url = url;
    this.token = options.token ?? null;
    this.encoding = options.encoding === 'msgpack' ? 'msgpack' : 'json';
    this.clientInfo = options.clientInfo || { name: SDK_NAME, version: SDK_VERSION };
    this.backoff = { baseMs: options.backoffBaseMs ?? 250, maxMs: options.backoffMaxMs ?? 30000 };
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this._WebSocket = options.WebSocket || null;
    this._getToken = options.getToken || null;
    this.maxQueuedWriteAgeMs = options.maxQueuedWriteAgeMs ?? 23 * 3600 * 1000;
    this._clock = options.clock || Date.now;
    /** @type {any} */
    this._refreshTimer = null;
    this._logger = options.logger || null;
    /** @type {'idle'|'connecting'|'open'|'offline'|'auth-required'|'closed'} */
    this.state = 'idle';
    /** The current session's `welcome` frame (null while offline). @type {any} */
    this.session = null;
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** @type {PendingWrite[]} */
    this._writes = [];
    /** @type {Map<number, any>} */
    this._requests = new Map();
    this._nextId = 1;
    /** @type {any} */
    this._ws = null;
    this._failures = 0;
    /** @type {any} */
    this._reconnectTimer = null;
    /** @type {any} */
    this._attemptTimer = null;
    /** @type {any} */
    this._heartbeatTimer = null;
    /** @type {any} */
    this._pruneTimer = null;
    this._lastSent = 0;
    this._lastReceived = 0;
    this._welcomeAt = 0;
    this._frameAfterWelcome = false;
    /** @type {{resolve: (v: any) => void, reject: (e: any) => void}[]} */
    this._connectWaiters = [];
    /** @type {{resolve: (v: any) => void, reject: (e: any) => void, token: string}[]} */
    this._authWaiters = [];
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    this._started = false;
    this._welcomed = false;
    this._freshTokenRefused = false;
    /** @type {HearthError|null} */
    this._handshakeError = null;
    /** @type {{mutationId: string, writes: any[], result: Promise<any>}[]} */
    this.restoredWrites = [];
    /** @type {Promise<any>|null} the tail of the asynchronous store's operations (null: none pending) */
    this._storeTail = null;
    /** @type {HearthError|null} the asynchronous store could not be opened */
    this._storeError = null;
    /** @type {Promise<void>|null} an asynchronous store being opened */
    this._storeOpening = null;
    /** @type {WriteStore|null} */
    this._store = storeFromOption(options.persistence, (m) => this._warn(m));
    this._persistence = options.persistence ?? null;
    // the offline read cache of subscription views (PROTOCOL.md §13)
    const viewsSupported = !!this._store && ['loadView', 'saveView', 'deleteView'].every((m) => typeof /** @type {any} */ (this._store)[m] === 'function');
    if (options.cacheViews === true && !this._store) throw new HearthError('invalid-argument', 'cacheViews needs a persistence store');
    if (options.cacheViews === true && !viewsSupported) throw new HearthError('unimplemented', 'this persistence store cannot cache views (no loadView/saveView/deleteView)');
    this._cacheViews = options.cacheViews !== false && viewsSupported;
    this._cacheViewsDelayMs = options.cacheViewsDelayMs ?? 1000;
    /** the subscriptions whose cached view is being looked up (an asynchronous store) */
    this._loadingViews = 0;
    /** @type {Set<Subscription>} subscriptions whose view changed since it was saved */
    this._dirtyViews = new Set();
    /** @type {any} */
    this._viewTimer = null;
    /** @type {Promise<void>} settles once the store is closed (its lock released) after close() */
    this._storeClosed = Promise.resolve();
    if (this._store) {
      const loaded = this._store.open(); // a synchronous store throws here (e.g. failed-precondition: locked)
      if (isPromise(loaded)) {
        this._storeTail = this._storeOpening = loaded.then((ws) => { this._storeOpening = null; this._restore(ws); }, (e) => {
          this._store = null;
          this._storeError = e instanceof HearthError ? e : new HearthError('internal', `could not open the write store: ${e}`);
          throw this._storeError;
        });
        this._storeTail.catch(() => {});
      } else {
        this._restore(loaded);
      }
    }
  }

  /** @param {string} msg */
  _warn(msg) { if (this._logger) this._logger(`warning: ${msg}`); else console.warn(`[hearth] ${msg}`); }

  /**
   * Puts the stored writes back in the queue, in order, before any new one
   * (PROTOCOL.md §13). One that had been sent is in doubt: the server may have
   * applied it. Their outcomes are in {@link HearthClient#restoredWrites}.
   * @param {StoredWrite[]} stored
   */
  _restore(stored) {
    const restored = [];
    for (const r of stored) {
      let wire;
      try { wire = parseJSON(r.writes); } catch (e) { this._warn(`dropping unreadable stored write ${r.mutation_id}: ${e}`); continue; }
      /** @type {any} */
      let pw = null;
      const result = new Promise((resolve, reject) => {
        pw = {
          mutationId: r.mutation_id, kind: 'write', ops: wire.map(writeFromJSON), frame: { type: 'write', mutation_id: r.mutation_id, writes: wire },
          state: 'queued', inDoubt: r.sent_at !== null, seq: null, attempts: 0, retryTimer: null, ackedAt: 0,
          createdAt: r.created_at, sentAt: r.sent_at, stored: true, sentMarked: r.sent_at !== null, marking: false, resolve, reject,
        };
      });
      result.catch(() => {}); // the application may not look at it
      restored.push(pw);
      this.restoredWrites.push({ mutationId: r.mutation_id, writes: pw.ops, result });
    }
    this._writes = [...restored, ...this._writes];
    if (restored.length) this._log(`restored ${restored.length} stored write(s), ${restored.filter((w) => w.inDoubt).length} in doubt`);
    this._refreshAll();
    this._pumpWrites();
  }

  /**
   * Runs a store operation; `then` runs with its result once it is durable (at
   * once for a synchronous store), `fail` if it failed. Operations of an
   * asynchronous store are chained, so they complete (and `then` runs) in call
   * order; one queued before `close()` still runs before the store is closed.
   * @param {(s: WriteStore) => any} op @param {(result: any) => void} then @param {(e: any) => void} fail
   */
  _storeDo(op, then, fail) {
    const store = this._store;
    if (!store) { fail(this._storeError || new HearthError('failed-precondition', 'the store is closed')); return; }
    if (this._storeTail === null) {
      let r;
      try { r = op(store); } catch (e) { fail(e); return; }
      if (!isPromise(r)) { then(r); return; }
      this._storeTail = r;
    } else {
      this._storeTail = this._storeTail.catch(() => {}).then(() => (this._storeError ? Promise.reject(this._storeError) : op(store)));
    }
    const tail = this._storeTail;
    tail.then((r) => {
      if (this._storeTail === tail) this._storeTail = null;
      then(r);
    }, (e) => {
      if (this._storeTail === tail) this._storeTail = null;
      fail(e);
    });
  }

  /** Drops a write's record once it is answered. @param {PendingWrite} pw */
  _unstore(pw) {
    if (!pw.stored || !this._store) return;
    pw.stored = false;
    this._storeDo((s) => s.remove(pw.mutationId), () => {}, (e) => this._warn(`could not drop the stored write ${pw.mutationId}: ${e}`));
  }

  // -- the offline read cache (PROTOCOL.md §13 "An offline read cache") -------------

  /**
   * Looks up the cached view of a new subscription. Until the lookup is done
   * (at once with the file store) the subscription shows nothing and is not
   * sent; then it shows the cached view (`fromCache`) and is sent with the
   * record's resume token.
   * @param {Subscription} sub
   */
  _loadView(sub) {
    const key = canonicalTarget(sub.wireTarget);
    sub.cacheKey = key;
    sub.loading = true;
    this._loadingViews++;
    const ready = () => {
      sub.loading = false;
      this._loadingViews--;
      if (!sub.ended) {
        this._sendSubscribe(sub);
        sub.refresh();
      }
      // writes wait for the subscriptions being looked up (PROTOCOL.md §13: subscribes first)
      if (this._loadingViews === 0) this._pumpWrites();
    };
    this._storeDo((s) => /** @type {any} */ (s).loadView(key), (text) => {
      if (typeof text === 'string' && !sub.ended) {
        const rec = decodeViewRecord(text, key);
        if (rec) sub.useCached(rec);
        else this._warn(`ignoring an unreadable cached view (torn, or of another target) for ${key}`);
      }
      ready();
    }, (e) => {
      this._warn(`could not read the cached view of ${key}: ${e}`);
      ready();
    });
  }

  /** A frame changed a subscription's server view: save it within `cacheViewsDelayMs`. @param {Subscription} sub */
  _viewChanged(sub) {
    if (!sub.cacheKey || sub.ended) return;
    this._dirtyViews.add(sub);
    if (!this._viewTimer) {
      this._viewTimer = setTimeout(() => { this._viewTimer = null; this._flushViews(); }, this._cacheViewsDelayMs);
    }
  }

  _flushViews() {
    for (const sub of [...this._dirtyViews]) this._saveView(sub);
  }

  /** Saves a subscription's server view with the token of the last frame applied to it, as one record. @param {Subscription} sub */
  _saveView(sub) {
    this._dirtyViews.delete(sub);
    if (!sub.cacheKey || !this._store) return;
    const key = sub.cacheKey;
    const text = encodeViewRecord(sub.wireTarget, sub.serverDocs, sub.resume);
    this._storeDo((s) => /** @type {any} */ (s).saveView(key, text), () => {}, (e) => this._warn(`could not save the cached view of ${key}: ${e}`));
  }

  /** The server refused the subscription: drop its record (it may no longer be readable). @param {Subscription} sub */
  _dropView(sub) {
    this._dirtyViews.delete(sub);
    if (!sub.cacheKey || !this._store) return;
    const key = sub.cacheKey;
    this._storeDo((s) => /** @type {any} */ (s).deleteView(key), () => {}, (e) => this._warn(`could not drop the cached view of ${key}: ${e}`));
  }

  // -- events ---------------------------------------------------------------

  /**
   * Registers an event listener; returns a function that removes it.
   * @param {'state'|'welcome'|'error'|'closed'} event @param {(arg: any) => void} cb
   */
  on(event, cb) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    /** @type {Set<Function>} */ (this._listeners.get(event)).add(cb);
    return () => this._listeners.get(event)?.delete(cb);
  }
  /** @param {string} event @param {any} arg */
  _emit(event, arg) {
    for (const cb of this._listeners.get(event) || []) {
      try { cb(arg); } catch (e) { this._log('event listener threw', e); }
    }
  }
  /** @param {string} msg @param {...any} args */
  _log(msg, ...args) { if (this._logger) this._logger(msg, ...args); }
  /** @param {any} s */
  _setState(s) {
    if (this.state === s) return;
    this.state = s;
    this._emit('state', s);
  }

  // -- connection -------------------------------------------------------------

  /**
   * Starts the client (if not started) and resolves once a session is open
   * (`welcome` received). Rejects if the server refuses the credential
   * (4001/4003), if the client is closed, or after `timeoutMs` (default: never).
   * Works offline: writes and subscriptions made before it resolves are queued.
   * @param {{timeoutMs?: number}} [opts]
   * @returns {Promise<any>} the welcome frame
   */
  connect(opts = {}) {
    if (this._storeError) return Promise.reject(this._storeError);
    if (this.state === 'closed') return Promise.reject(new HearthError('failed-precondition', 'the client is closed'));
    if (this.state === 'auth-required') return Promise.reject(new HearthError('unauthenticated', 'the server refused the credential; give a new one with setToken()'));
    this._start();
    if (this.state === 'open') return Promise.resolve(this.session);
    return new Promise((resolve, reject) => {
      /** @type {any} */
      let timer = null;
      const waiter = {
        resolve: (/** @type {any} */ v) => { if (timer) clearTimeout(timer); resolve(v); },
        reject: (/** @type {any} */ e) => { if (timer) clearTimeout(timer); reject(e); },
      };
      if (opts.timeoutMs) {
        timer = setTimeout(() => {
          this._connectWaiters = this._connectWaiters.filter((w) => w !== waiter);
          reject(new HearthError('unavailable', `could not connect to ${this.url} within ${opts.timeoutMs} ms`));
        }, opts.timeoutMs);
      }
      this._connectWaiters.push(waiter);
    });
  }

  _start() {
    if (this._started || this.state === 'closed') return;
    this._started = true;
    if (this._storeOpening) {
      // an asynchronous store is opening: its writes go first
      this._storeOpening.then(() => this._openSocket(), (e) => {
        this._failConnectWaiters(e);
        this._emit('error', e);
        this.close();
      });
      return;
    }
    this._openSocket();
  }

  _scheduleReconnect() {
    if (this.state === 'closed' || this.state === 'auth-required' || this._reconnectTimer) return;
    const delay = backoffDelay(this._failures, this.backoff);
    this._log(`reconnecting in ${Math.round(delay)} ms (failures: ${this._failures})`);
    this._reconnectTimer = setTimeout(() => { this._reconnectTimer = null; this._openSocket(); }, delay);
  }

  async _openSocket() {
    if (this.state === 'closed' || this.state === 'auth-required') return;
    this._setState('connecting');
    let WS;
    try { WS = this._WebSocket || await getWebSocket(); } catch (e) {
      this._log('no WebSocket implementation', e);
      this._failConnectWaiters(new HearthError('unimplemented', 'no WebSocket implementation: install the `ws` package'));
      return;
    }
    if (this.state === 'closed') return;
    const protocol = this.encoding === 'msgpack' ? 'hearth.v1.msgpack' : 'hearth.v1';
    /** @type {any} */
    let ws;
    try {
      ws = new WS(this.url, [protocol]);
    } catch (e) {
      this._log('WebSocket constructor failed', e);
      this._failures++;
      this._scheduleReconnect();
      return;
    }
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    this._welcomed = false;
    this._handshakeError = null;
    this._frameAfterWelcome = false;
    this._attemptTimer = setTimeout(() => {
      if (this._ws === ws && !this._welcomed) {
        this._log('connection attempt timed out');
        this._dropSocket(ws, 4000, 'connect timeout');
      }
    }, this.connectTimeoutMs);
    ws.onopen = () => {
      if (this._ws !== ws) return;
      /** @type {any} */
      const hello = { type: 'hello', protocol: PROTOCOL_VERSION, client: this.clientInfo };
      if (this.token) hello.token = this.token;
      this._sendRaw(hello);
    };
    ws.onmessage = (/** @type {any} */ ev) => {
      if (this._ws !== ws) return;
      let frame;
      try {
        frame = decodeFrame(typeof ev.data === 'string' ? ev.data : ev.data instanceof ArrayBuffer ? new Uint8Array(ev.data) : new Uint8Array(ev.data.buffer, ev.data.byteOffset, ev.data.byteLength));
      } catch (e) {
        this._log('undecodable frame', e);
        return;
      }
      this._onFrame(frame);
    };
    ws.onclose = (/** @type {any} */ ev) => {
      if (this._ws !== ws) return;
      this._onClose(ev.code, ev.reason || '');
    };
    ws.onerror = (/** @type {any} */ ev) => {
      // An error event means the connection failed or is failing. Some
      // implementations (Node's built-in WebSocket when the upgrade is refused)
      // fire no `close` after it, so treat it as the end of the connection now.
      this._log('socket error', ev && ev.message);
      if (this._ws === ws) this._dropSocket(ws, 1006, 'socket error');
    };
  }

  /** Abandons a socket at once (treated as a network failure). @param {any} ws @param {number} code @param {string} reason */
  _dropSocket(ws, code, reason) {
    const current = this._ws === ws;
    // detach first: closing may synchronously fire `error` again
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close(code >= 3000 ? code : 1000, reason);
    } catch { /* ignore */ }
    if (current) this._onClose(1006, reason);
  }

  /** @param {any} frame */
  _sendRaw(frame) {
    const ws = this._ws;
    if (!ws) return false;
    if (this._logger) this._log(`-> ${frame.type}${frame.id !== undefined ? ' id=' + frame.id : ''}${frame.sub !== undefined ? ' sub=' + frame.sub : ''}${frame.mutation_id ? ' ' + frame.mutation_id : ''}`);
    try {
      ws.send(encodeFrame(frame, this.encoding));
      this._lastSent = Date.now();
      return true;
    } catch (e) {
      this._log('send failed', e);
      return false;
    }
  }

  /** @param {any} frame */
  _onFrame(frame) {
    this._lastReceived = Date.now();
    if (this._logger) this._log(`<- ${frame.type}${frame.id !== undefined ? ' id=' + frame.id : ''}${frame.sub !== undefined ? ' sub=' + frame.sub : ''}${frame.resume ? ' ' + frame.resume : ''}${frame.code ? ' ' + frame.code : ''}`);
    if (!this._welcomed) {
      if (frame.type === 'welcome') { this._onWelcome(frame); return; }
      if (frame.type === 'error') {
        this._handshakeError = new HearthError(frame.code, frame.message, frame.details);
        this._log('handshake refused', frame.code, frame.message);
      }
      return;
    }
    this._frameAfterWelcome = true;
    switch (frame.type) {
      case 'ping': this._sendRaw({ type: 'pong', id: frame.id }); break;
      case 'pong': break;
      case 'snapshot':
      case 'changes': {
        const sub = this._subs.get(frame.sub);
        if (!sub) break;
        const firstDocs = frame.type === 'snapshot' ? frame.docs : null;
        if (!sub.onFrame(frame)) break;
        this._viewChanged(sub);
        // the subscribe is settled by its first frame (PROTOCOL.md §2)
        if (sub.requestId !== null) { this._requests.delete(sub.requestId); sub.requestId = null; }
        // a one-shot read answers with the server's first frame (not with
        // frames delivered out of order after it)
        if (sub.getWaiter) { const w = sub.getWaiter; sub.getWaiter = null; w(firstDocs || sub.serverDocs); }
        this._refreshAll();
        this._pruneAcked();
        break;
      }
      case 'write_ok': this._onWriteOk(frame); break;
      case 'auth_ok': {
        const req = this._requests.get(frame.id);
        this._requests.delete(frame.id);
        if (this.session) Object.assign(this.session, { uid: frame.uid, admin: frame.admin, expires_at: frame.expires_at });
        if (req && req.kind === 'auth') req.resolve(frame);
        this._scheduleTokenRefresh(frame.expires_at);
        break;
      }
      case 'unsubscribed': this._requests.delete(frame.id); break;
      case 'error': this._onError(frame); break;
      default: break; // unknown types are ignored (PROTOCOL.md §2)
    }
  }

  /** @param {any} welcome */
  _onWelcome(welcome) {
    this._welcomed = true;
    this._welcomeAt = Date.now();
    this._handshakeError = null;
    this._freshTokenRefused = false;
    clearTimeout(this._attemptTimer);
    this.session = welcome;
    this._setState('open');
    this._emit('welcome', welcome);
    // 1. resubscribe, with the newest resume token of each subscription
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    // 2. resend unacknowledged writes, oldest first, same mutation ids
    for (const pw of this._writes) {
      if (pw.retryTimer) { clearTimeout(pw.retryTimer); pw.retryTimer = null; }
    }
    this._pumpWrites();
    // token refresh waiters: the hello carried the newest token
    const waiters = this._authWaiters.splice(0);
    for (const w of waiters) if (w.token === this.token) w.resolve(welcome); else this._sendAuth(w);
    const cw = this._connectWaiters.splice(0);
    for (const w of cw) w.resolve(welcome);
    this._startHeartbeat();
    this._scheduleTokenRefresh(welcome.expires_at);
  }

  _startHeartbeat() {
    clearInterval(this._heartbeatTimer);
    const hb = Math.max(50, Number(this.session?.heartbeat_ms) || 25000);
    const idle = Math.max(hb, Number(this.session?.idle_timeout_ms) || 60000);
    const tick = Math.max(25, Math.min(1000, Math.floor(hb / 4)));
    const ws = this._ws;
    this._heartbeatTimer = setInterval(() => {
      if (this._ws !== ws || !this._welcomed) return;
      const now = Date.now();
      if (now - this._lastReceived > idle) {
        this._log('no frame for idle_timeout_ms: the connection is dead');
        this._dropSocket(ws, 4010, 'idle');
        return;
      }
      if (now - this._lastSent >= hb) this._sendRaw({ type: 'ping', id: this._nextId++ });
    }, tick);
  }

  /**
   * @param {number} code @param {string} reason
   */
  _onClose(code, reason) {
    const ws = this._ws;
    this._ws = null;
    clearTimeout(this._attemptTimer);
    clearInterval(this._heartbeatTimer);
    if (ws) { ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null; }
    this._emit('closed', { code, reason });
    this._log(`connection closed: ${code} ${reason}`);
    const wasWelcomed = this._welcomed;
    const goodSession = wasWelcomed && (this._frameAfterWelcome || Date.now() - this._welcomeAt >= 5000);
    this._welcomed = false;
    this.session = null;
    // writes in flight: their answer is lost (in doubt); keep them queued
    for (const pw of this._writes) {
      if (pw.state === 'inflight') { pw.state = 'queued'; pw.inDoubt = true; }
    }
    for (const sub of this._subs.values()) {
      sub.current = false;
      if (!sub.frozen) sub.frozen = { docs: sub.serverDocs, position: sub.position, unknown: !sub.received && !sub.cached };
    }
    for (const req of this._requests.values()) {
      if (req.kind === 'auth') this._authWaiters.push(req);
    }
    this._requests.clear();
    if (this.state === 'closed') return;
    if (code === 4001 && this._getToken && !this._freshTokenRefused) {
      // the credential expired (on the live session or while offline): fetch a
      // fresh one and reconnect; if the fresh one is refused too, stop
      this._freshTokenRefused = !wasWelcomed;
      this._failures++;
      this._setState('offline');
      this._refreshAll();
      Promise.resolve().then(() => /** @type {any} */ (this._getToken)()).then((token) => {
        if (this.state === 'closed') return;
        this.token = token;
        this._scheduleReconnect();
      }, (e) => {
        this._setState('auth-required');
        this._emit('error', new HearthError('unauthenticated', `token refresh failed: ${e}`));
      });
      return;
    }
    if (code === 4001 || code === 4003) {
      const err = this._handshakeError || new HearthError('unauthenticated', code === 4003 ? `access revoked (${reason})` : `unauthenticated (${reason})`);
      this._setState('auth-required');
      this._failConnectWaiters(err);
      for (const w of this._authWaiters.splice(0)) w.reject(err);
      this._emit('error', err);
      return;
    }
    if (goodSession) this._failures = 0; else this._failures++;
    if (code === 4000 && this._handshakeError) {
      // the server refused our hello (PROTOCOL.md §10): the same hello will be
      // refused again. Report it; keep retrying with the backoff (capped at
      // 30 s) in case the server is upgraded.
      const err = this._handshakeError;
      this._failConnectWaiters(err);
      this._emit('error', err);
    }
    this._setState('offline');
    this._refreshAll();
    this._scheduleReconnect();
  }

  /** @param {HearthError} err */
  _failConnectWaiters(err) {
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
  }

  /** @param {any} frame */
  _onError(frame) {
    const err = new HearthError(frame.code, frame.message, frame.details);
    if (frame.id !== undefined && frame.id !== null) {
      const req = this._requests.get(frame.id);
      this._requests.delete(frame.id);
      if (!req) return;
      if (req.kind === 'write') { this._onWriteError(req.pw, err); return; }
      if (req.kind === 'subscribe') {
        const sub = this._subs.get(req.sub);
        if (sub) {
          if (sub.getWaiter) { const w = sub.getWaiter; sub.getWaiter = null; w(null, err); }
          sub.fail(err);
        }
        return;
      }
      if (req.kind === 'auth') { req.reject(err); return; }
      return;
    }
    if (frame.sub !== undefined) {
      const sub = this._subs.get(frame.sub);
      if (sub) sub.fail(err);
      return;
    }
    this._log('session error', frame.code, frame.message);
    this._emit('error', err);
  }

  // -- subscriptions ------------------------------------------------------------

  /** @param {Subscription} sub */
  _sendSubscribe(sub) {
    if (!this._welcomed || sub.loading) return;
    const id = this._nextId++;
    /** @type {any} */
    const frame = { type: 'subscribe', id, sub: sub.name, target: sub.wireTarget };
    if (sub.resume) frame.resume = sub.resume;
    sub.sentResume = !!sub.resume;
    sub.current = false;
    sub.early = [];
    sub.requestId = id;
    this._requests.set(id, { kind: 'subscribe', sub: sub.name });
    this._sendRaw(frame);
  }

  /**
   * @param {any} target @param {(s: ViewSnapshot) => void} onNext @param {(e: HearthError) => void} [onError]
   * @param {{raw?: boolean}} [opts]
   */
  _listen(target, onNext, onError, opts) {
    const sub = this._listenSub(target, onNext, onError, opts);
    return () => this._unlisten(sub);
  }

  /**
   * @param {any} target @param {(s: ViewSnapshot) => void} onNext @param {(e: HearthError) => void} [onError]
   * @param {{raw?: boolean}} [opts]
   */
  _listenSub(target, onNext, onError, opts) {
    if (this.state === 'closed') throw new HearthError('failed-precondition', 'the client is closed');
    const sub = new Subscription(this, target, onNext, onError || ((e) => this._log('subscription error', e.code, e.message)), opts);
    this._subs.set(sub.name, sub);
    this._start();
    if (this._cacheViews && !sub.raw) {
      this._loadView(sub); // then sends it, and shows the cached view
      return sub;
    }
    this._sendSubscribe(sub);
    sub.refresh(); // pending writes may already populate it (offline)
    return sub;
  }

  /** @param {Subscription} sub */
  _unlisten(sub) {
    if (sub.ended) return;
    sub.ended = true;
    this._subs.delete(sub.name);
    if (this._dirtyViews.has(sub)) this._saveView(sub);
    if (this._welcomed) {
      const id = this._nextId++;
      this._requests.set(id, { kind: 'unsubscribe', sub: sub.name });
      this._sendRaw({ type: 'unsubscribe', id, sub: sub.name });
    }
  }

  /** @param {any} target @returns {AsyncIterableIterator<ViewSnapshot>} */
  _iterate(target) {
    /** @type {any[]} */
    const queue = [];
    /** @type {((r: IteratorResult<any>) => void)[]} */
    const waiting = [];
    /** @type {any} */
    let failure = null;
    let done = false;
    /** @type {() => void} */
    let stop = () => {};
    const push = (/** @type {any} */ s) => {
      const w = waiting.shift();
      if (w) w({ value: s, done: false }); else queue.push(s);
    };
    stop = this._listen(target, push, (e) => {
      failure = e;
      for (const w of waiting.splice(0)) w(/** @type {any} */ (Promise.reject(e)));
    });
    /** @type {AsyncIterableIterator<ViewSnapshot>} */
    const it = {
      next: () => {
        if (queue.length) return Promise.resolve({ value: queue.shift(), done: false });
        if (failure) return Promise.reject(failure);
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => waiting.push(resolve));
      },
      return: () => {
        done = true;
        stop();
        for (const w of waiting.splice(0)) w({ value: undefined, done: true });
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() { return it; },
    };
    return it;
  }

  /** One-shot read of a target from the server: subscribe, take the first frame, unsubscribe. @param {any} target @returns {Promise<any[]>} */
  _getOnce(target) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const sub = this._listenSub(target, () => {}, (e) => { if (!settled) { settled = true; reject(e); } }, { raw: true });
      /** @type {any} */ (sub).getWaiter = (/** @type {any} */ docs, /** @type {any} */ err) => {
        this._unlisten(sub);
        if (settled) return;
        settled = true;
        if (err) reject(err); else resolve(docs);
      };
    });
  }

  /** @param {string} path @returns {Promise<DocumentSnapshot|null>} */
  async _getDoc(path) {
    const docs = await this._getOnce({ doc: path });
    return docs.length ? toDocSnapshot({ ...docs[0], pending: false }) : null;
  }

  _refreshAll() {
    for (const sub of [...this._subs.values()]) sub.refresh();
  }

  // -- writes -------------------------------------------------------------------

  /**
   * Commits protocol writes (PROTOCOL.md §2 `Write` objects, with JavaScript
   * values; use {@link writeFromJSON} to convert Hearth-JSON ones) atomically
   * as one `write` frame. The write is queued at once (shown, flagged pending,
   * in local views) and sent when a session is open; after a lost answer it is
   * resent with the same mutation id. Resolves with `{result, duplicate}` once
   * the server confirmed it; rejects with a {@link HearthError} if the server
   * refused it (`unavailable` answers are retried, not reported). An
   * `internal` error carries `retry()`, which resends the same frame under the
   * same mutation id (the only safe retry, PROTOCOL.md §13).
   * @param {any[]} writes
   * @returns {Promise<{result: any, duplicate: boolean, mutationId: string}>}
   */
  commit(writes) {
    return this._enqueue('write', writes, null);
  }

  /**
   * @param {'write'|'transaction'} kind @param {any[]} ops @param {{path: string, version: number|null}[]|null} reads
   * @returns {Promise<any>}
   */
  _enqueue(kind, ops, reads) {
    if (this.state === 'closed') return Promise.reject(new HearthError('failed-precondition', 'the client is closed'));
    if (!Array.isArray(ops) || ops.length < 1 || ops.length > 500) return Promise.reject(new HearthError('invalid-argument', 'a write carries 1 to 500 writes'));
    let wire;
    try { wire = ops.map(writeToWire); } catch (e) { return Promise.reject(e); }
    const mutationId = randomId();
    /** @type {any} */
    const frame = { type: kind, mutation_id: mutationId, writes: wire };
    if (kind === 'transaction') frame.reads = reads || [];
    const maxBytes = Number(this.session?.limits?.max_frame_bytes) || 2 * 1024 * 1024;
    const encoded = encodeFrame({ ...frame, id: Number.MAX_SAFE_INTEGER }, this.encoding);
    const size = typeof encoded === 'string' ? new TextEncoder().encode(encoded).length : encoded.length;
    if (size > maxBytes) return Promise.reject(new HearthError('payload-too-large', `the write frame is ${size} bytes; the server accepts at most ${maxBytes}`));
    return new Promise((resolve, reject) => {
      /** @type {PendingWrite} */
      const pw = {
        mutationId, kind, ops: ops.map((w) => ({ ...w })), frame, state: 'queued', inDoubt: false,
        seq: null, attempts: 0, retryTimer: null, ackedAt: 0, createdAt: this._clock(), sentAt: null,
        stored: false, sentMarked: false, marking: false, resolve, reject,
      };
      this._queueWrite(pw);
    });
  }

  /**
   * Queues a write: a plain write is stored first when persistence is on
   * (PROTOCOL.md §13: before it is shown or sent; transactions are not stored).
   * @param {PendingWrite} pw
   */
  _queueWrite(pw) {
    const show = () => {
      if (this.state === 'closed') { pw.reject(new HearthError('unavailable', 'the client was closed')); return; }
      this._writes.push(pw);
      this._start();
      this._refreshAll();
      this._pumpWrites();
    };
    if (!this._store || pw.kind !== 'write') { show(); return; }
    /** @type {StoredWrite} */
    const rec = { mutation_id: pw.mutationId, writes: stringifyJSON(pw.frame.writes), created_at: pw.createdAt, sent_at: pw.sentAt };
    this._storeDo((s) => s.add(rec), () => {
      pw.stored = true;
      pw.sentMarked = pw.sentAt !== null;
      show();
    }, (e) => pw.reject(e instanceof HearthError ? e : new HearthError('internal', `could not store the write: ${e && e.message || e}`)));
  }

  _pumpWrites() {
    // after a welcome the subscribes go first (PROTOCOL.md §13), also those whose cached view is being read
    if (!this._welcomed || this._loadingViews > 0) return;
    const max = Number(this.session?.limits?.max_inflight_writes) || 32;
    const now = this._clock();
    // A write first sent more than maxQueuedWriteAgeMs ago may have been applied
    // and its mutation record may be gone by now (24 h, PROTOCOL.md §7): a resend
    // could apply it twice. One never sent is safe to send however old it is.
    const stale = this._writes.filter((w) => w.state === 'queued' && w.sentAt !== null && now - w.sentAt > this.maxQueuedWriteAgeMs);
    if (stale.length) {
      this._writes = this._writes.filter((w) => !stale.includes(w));
      for (const w of stale) {
        if (w.retryTimer) clearTimeout(w.retryTimer);
        this._warn(`dropping write ${w.mutationId}: first sent ${Math.round((now - /** @type {number} */ (w.sentAt)) / 60000)} min ago and never answered; the server may have forgotten its mutation id, so a resend could apply it twice`);
        this._unstore(w);
        w.reject(new HearthError('deadline-exceeded', 'the write was first sent longer ago than maxQueuedWriteAgeMs and never answered; the server would no longer recognise its mutation id, so it was not sent again'));
      }
      this._refreshAll();
    }
    let inflight = this._writes.filter((w) => w.state === 'inflight' || w.marking).length;
    for (const pw of this._writes) {
      if (inflight >= max) break;
      // The server applies a connection's writes in the order they arrive
      // (PROTOCOL.md §7): nothing newer overtakes a write waiting to be resent.
      if (pw.state === 'queued' && pw.retryTimer && !pw.marking) break;
      if (pw.state !== 'queued' || pw.retryTimer || pw.marking) continue;
      if (pw.sentAt === null) pw.sentAt = now;
      if (pw.stored && !pw.sentMarked) {
        // record durably that it is sent (and when) before it goes on the wire
        pw.marking = true;
        inflight++;
        let sync = true;
        let done = false;
        this._storeDo((s) => s.markSent(pw.mutationId, /** @type {number} */ (pw.sentAt)), () => {
          pw.marking = false;
          pw.sentMarked = true;
          done = true;
          if (!sync) this._pumpWrites();
        }, (e) => {
          pw.marking = false;
          done = true;
          this._warn(`could not record that write ${pw.mutationId} is sent: ${e}; retrying`);
          pw.retryTimer = setTimeout(() => { pw.retryTimer = null; this._pumpWrites(); }, backoffDelay(pw.attempts++, this.backoff));
        });
        sync = false;
        if (!done) continue; // an asynchronous store: sent once it is recorded
        inflight--;
        if (!pw.sentMarked) continue;
      }
      const id = this._nextId++;
      this._requests.set(id, { kind: 'write', pw });
      pw.state = 'inflight';
      inflight++;
      this._sendRaw({ ...pw.frame, id });
    }
  }

  /** @param {any} frame */
  _onWriteOk(frame) {
    const req = this._requests.get(frame.id);
    this._requests.delete(frame.id);
    const pw = req?.pw || this._writes.find((w) => w.mutationId === frame.mutation_id && w.state !== 'acked');
    if (!pw || pw.state === 'acked') return;
    pw.state = 'acked';
    pw.inDoubt = false;
    pw.attempts = 0;
    pw.seq = Number(frame.result?.seq);
    pw.ackedAt = Date.now();
    this._unstore(pw);
    pw.resolve({ result: frame.result, duplicate: !!frame.duplicate, mutationId: pw.mutationId });
    this._pruneAcked();
    this._refreshAll();
    this._pumpWrites();
    if (!this._pruneTimer) {
      this._pruneTimer = setTimeout(() => { this._pruneTimer = null; this._pruneAcked(); this._refreshAll(); }, 5100);
    }
  }

  /** @param {PendingWrite} pw @param {HearthError} err */
  _onWriteError(pw, err) {
    if (err.code === 'unavailable' || err.code === 'resource-exhausted') {
      // nothing was applied: keep it queued and resend the same frame after a backoff
      pw.state = 'queued';
      const delay = backoffDelay(pw.attempts++, this.backoff);
      this._log(`write ${pw.mutationId}: ${err.code}; retrying in ${Math.round(delay)} ms`);
      pw.retryTimer = setTimeout(() => { pw.retryTimer = null; this._pumpWrites(); }, delay);
      this._pumpWrites();
      return;
    }
    this._writes = this._writes.filter((w) => w !== pw);
    this._unstore(pw);
    if (err.code === 'internal') {
      // The commit may have been applied without being durable (PROTOCOL.md §7,
      // §13): the only safe retry is the same frame under the same mutation id.
      // It is the application's decision; `err.retry()` does exactly that.
      /** @type {any} */ (err).mutationId = pw.mutationId;
      /** @type {any} */ (err).retry = () => {
        if (this.state === 'closed') return Promise.reject(new HearthError('failed-precondition', 'the client is closed'));
        return new Promise((resolve, reject) => {
          this._queueWrite({
            ...pw, state: 'queued', inDoubt: false, seq: null, attempts: 0, retryTimer: null, ackedAt: 0,
            stored: false, sentMarked: false, marking: false, resolve, reject,
          });
        });
      };
    }
    pw.reject(err);
    this._refreshAll();
    this._pumpWrites();
  }

  /** Drops acknowledged writes that every touched subscription already shows (or after 5 s). */
  _pruneAcked() {
    const now = Date.now();
    const keep = this._writes.filter((pw) => {
      if (pw.state !== 'acked') return true;
      if (now - pw.ackedAt >= 5000) return false;
      for (const sub of this._subs.values()) {
        if (!pw.ops.some((w) => targetTouches(sub.target, w.path))) continue;
        if (sub.position === null || sub.position < /** @type {number} */ (pw.seq)) return true;
        if (sub.frozen && (sub.frozen.position === null || sub.frozen.position < /** @type {number} */ (pw.seq))) return true;
      }
      return false;
    });
    if (keep.length !== this._writes.length) this._writes = keep;
    if (!this._writes.some((w) => w.state === 'acked') && this._pruneTimer) {
      clearTimeout(this._pruneTimer);
      this._pruneTimer = null;
    }
  }

  /** The number of writes not yet confirmed by the server. */
  get pendingWriteCount() { return this._writes.filter((w) => w.state !== 'acked').length; }

  /**
   * Runs `fn` as an optimistic transaction: reads made with `tx.get()` (all
   * before the first write) return the server's document and record its
   * version; writes are buffered and committed in one `transaction` frame,
   * which the server refuses with `aborted` if a read changed. On `aborted` the
   * function is run again on fresh reads with a new mutation id (up to
   * `maxAttempts`, default 5, after a short random pause). The commit goes
   * through the write queue (resent unchanged after a lost answer), but is not
   * shown in local views before the server confirmed it. A function that only
   * reads commits nothing.
   * @template T
   * @param {(tx: Transaction) => Promise<T>} fn
   * @param {{maxAttempts?: number}} [opts]
   * @returns {Promise<T>}
   */
  async runTransaction(fn, opts = {}) {
    const max = opts.maxAttempts ?? 5;
    for (let attempt = 0; ; attempt++) {
      const tx = new Transaction(this);
      const value = await fn(tx);
      if (!tx._ops.length) return value;
      const reads = [...tx._reads].map(([path, version]) => ({ path, version }));
      try {
        await this._enqueue('transaction', tx._ops, reads);
        return value;
      } catch (e) {
        if (!(e instanceof HearthError) || e.code !== 'aborted' || attempt + 1 >= max) throw e;
        await new Promise((r) => setTimeout(r, backoffDelay(attempt, this.backoff)));
      }
    }
  }

  // -- credentials --------------------------------------------------------------

  /**
   * Gives the client a new credential. On a live session it is sent as an
   * `auth` frame (the session and its subscriptions continue); resolves with
   * `auth_ok`. Offline, it is used by the next `hello` (and resolves once that
   * session is open). After a 4001/4003 close it reconnects with the new token.
   * @param {string|null} token
   * @returns {Promise<any>}
   */
  setToken(token) {
    this.token = token;
    if (this.state === 'closed') return Promise.reject(new HearthError('failed-precondition', 'the client is closed'));
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, token: /** @type {string} */ (token) };
      if (this.state === 'auth-required') {
        this._authWaiters.push(waiter);
        this._failures = 0;
        this._setState('offline');
        this._openSocket();
        return;
      }
      if (this._welcomed && token) this._sendAuth(waiter);
      else { this._authWaiters.push(waiter); this._start(); }
    });
  }

  /** Arms the automatic refresh (with `getToken`) about a minute before `expires_at`. @param {string|null|undefined} expiresAt */
  _scheduleTokenRefresh(expiresAt) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._getToken || !expiresAt) return;
    let exp;
    try { exp = Timestamp.parse(expiresAt).toDate().getTime(); } catch { return; }
    const remaining = exp - Date.now();
    const delay = Math.max(0, remaining > 120000 ? remaining - 60000 : remaining / 2);
    this._refreshTimer = setTimeout(async () => {
      this._refreshTimer = null;
      try {
        const token = await /** @type {any} */ (this._getToken)();
        if (token && this.state !== 'closed') await this.setToken(token);
      } catch (e) {
        this._log('token refresh failed', e);
        this._emit('error', e instanceof HearthError ? e : new HearthError('unauthenticated', `token refresh failed: ${e}`));
      }
    }, delay);
  }

  /** @param {{resolve: Function, reject: Function, token: string}} waiter */
  _sendAuth(waiter) {
    const id = this._nextId++;
    this._requests.set(id, { kind: 'auth', ...waiter });
    this._sendRaw({ type: 'auth', id, token: waiter.token });
  }

  // -- API entry points -----------------------------------------------------------

  /** A reference to the document at `path` (`rooms/r1`). @param {string} path */
  doc(path) { return new DocumentRef(this, path); }
  /** A query over the collection at `path` (`rooms`, `rooms/r1/messages`). @param {string} path */
  collection(path) { return new Query(this, { collection: path }); }
  /** A query over every collection with this id. @param {string} id */
  collectionGroup(id) { return new Query(this, { collection_group: id }); }
  /**
   * A query from a protocol Query object (JavaScript values; use
   * {@link queryFromJSON} for Hearth-JSON ones).
   * @param {any} q
   */
  query(q) { return new Query(this, q); }
  /** A new atomic write batch. */
  batch() { return new WriteBatch(this); }

  /**
   * Shuts the client down: closes the socket (1000), stops reconnecting and
   * rejects every pending write with `cancelled`-like `unavailable`.
   */
  close() {
    if (this.state === 'closed') return;
    this._setState('closed');
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._attemptTimer);
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._pruneTimer);
    clearTimeout(this._refreshTimer);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000, 'client closed'); } catch { /* ignore */ }
    }
    clearTimeout(this._viewTimer);
    this._viewTimer = null;
    const err = new HearthError('unavailable', 'the client was closed');
    // the views changed since their last save are saved now (PROTOCOL.md §13)
    this._flushViews();
    // stored writes stay stored: the next client on this store sends them
    const store = this._store;
    this._store = null;
    if (store) {
      this._storeClosed = new Promise((resolve) => {
        const release = () => {
          try {
            const r = store.close();
            if (isPromise(r)) r.then(() => resolve(), () => resolve()); else resolve();
          } catch (e) { this._log('closing the write store failed', e); resolve(); }
        };
        if (this._storeTail) this._storeTail.then(release, release); else release();
      });
    }
    for (const pw of this._writes) {
      if (pw.retryTimer) clearTimeout(pw.retryTimer);
      if (pw.state !== 'acked') pw.reject(err);
    }
    this._writes = [];
    this._failConnectWaiters(err);
    for (const w of this._authWaiters.splice(0)) w.reject(err);
    for (const req of this._requests.values()) if (req.kind === 'auth') req.reject(err);
    this._requests.clear();
    for (const sub of this._subs.values()) sub.ended = true;
    this._subs.clear();
  }

  /**
   * Deletes everything this client's persistence store holds: the pending
   * writes (unanswered ones are lost) and the cached views. For signing a user
   * out (PROTOCOL.md §13: a store belongs to one user). Closes the client
   * first; resolves once the store is gone.
   * @returns {Promise<void>}
   */
  async clearPersistence() {
    const persistence = this._persistence;
    this.close();
    await this._storeClosed;
    await HearthClient.clearPersistence(persistence);
  }

  /**
   * Deletes a persistence store (pending writes and cached views) that no
   * client uses: `{dir}`, `{indexedDb: name}` or a store with `destroy()`.
   * Refused with `failed-precondition` while a client (another process, another
   * tab) holds it.
   * @param {WriteStore|{dir: string, fs?: any}|{indexedDb: string, indexedDB?: any, locks?: any}|null} persistence
   * @returns {Promise<void>}
   */
  static async clearPersistence(persistence) {
    const store = storeFromOption(persistence, () => {});
    if (!store) return;
    if (typeof store.destroy !== 'function') throw new HearthError('unimplemented', 'this persistence store cannot be deleted (no destroy())');
    await store.destroy();
  }
}

export default HearthClient;
