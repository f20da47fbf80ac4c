import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseJSON, stringifyJSON, encodeMsgpack, decodeMsgpack, decodeFrame, encodeFrame,
  fromHearthJSON, toHearthJSON, writeFromJSON, Double, Timestamp,
} from '../hearth-client.mjs';

test('JSON: integers stay exact beyond 2^53, as bigint', () => {
  const v = parseJSON('{"a":9007199254740993,"b":-9223372036854775808,"c":9223372036854775807,"d":42,"e":9007199254740991}');
  assert.equal(v.a, 9007199254740993n);
  assert.equal(v.b, -9223372036854775808n);
  assert.equal(v.c, 9223372036854775807n);
  assert.equal(v.d, 42);
  assert.equal(typeof v.e, 'number');
  assert.equal(stringifyJSON(v), '{"a":9007199254740993,"b":-9223372036854775808,"c":9223372036854775807,"d":42,"e":9007199254740991}');
});

test('JSON: doubles are told apart from integers by their text', () => {
  const v = parseJSON('[42.0, 1e2, 4.2E1, 0.5, -0.0, -0, 1.8446744073709552e+19, 18446744073709551616]');
  assert.ok(v[0] instanceof Double && v[0].value === 42);
  assert.ok(v[1] instanceof Double && v[1].value === 100);
  assert.ok(v[2] instanceof Double && v[2].value === 42);
  assert.equal(v[3], 0.5);
  assert.ok(v[4] instanceof Double && Object.is(v[4].value, -0));
  assert.ok(v[5] instanceof Double && Object.is(v[5].value, -0), '-0 is the double -0.0');
  assert.ok(v[6] instanceof Double);
  assert.ok(v[7] instanceof Double, 'an integer beyond 2^64 is taken as a double');
  assert.equal(stringifyJSON(v), '[42.0,100.0,42.0,0.5,-0.0,-0.0,18446744073709552000.0,18446744073709552000.0]');
  // the written text parses back to the same types
  const again = parseJSON(stringifyJSON(v));
  assert.ok(again.every((x, i) => (x instanceof Double) === (v[i] instanceof Double)));
});

test('JSON: a Double has number semantics for arithmetic and comparison', () => {
  const d = new Double(42);
  assert.equal(d + 1, 43);
  assert.ok(d < 43 && d > 41);
});

test('JSON: strings, escapes, nesting, __proto__ keys', () => {
  const v = parseJSON('{"s":"a\\"b\\\\c\\u00e9\\n","x":[true,false,null,{}],"__proto__":{"polluted":1}}');
  assert.equal(v.s, 'a"b\\cé\n');
  assert.deepEqual(v.x, [true, false, null, {}]);
  assert.equal(({}).polluted, undefined);
  assert.deepEqual(Object.keys(v), ['s', 'x', '__proto__']);
  assert.throws(() => parseJSON('{"a":1,}'), SyntaxError);
  assert.throws(() => parseJSON('[1] x'), SyntaxError);
});

test('JSON: non-finite numbers are written as $double objects', () => {
  assert.equal(stringifyJSON(toHearthJSON({ a: NaN, b: Infinity, c: -Infinity })), '{"a":{"$double":"NaN"},"b":{"$double":"Infinity"},"c":{"$double":"-Infinity"}}');
  const back = fromHearthJSON(parseJSON('{"a":{"$double":"NaN"},"b":{"$double":"Infinity"},"c":{"$double":42},"d":{"$double":"0.25"}}'));
  assert.ok(Number.isNaN(back.a));
  assert.equal(back.b, Infinity);
  assert.ok(back.c instanceof Double && back.c.value === 42);
  assert.equal(back.d, 0.25);
});

test('MessagePack: int64 as bigint, float64 kept apart from integers', () => {
  const frame = { a: 9007199254740993n, b: -9223372036854775808n, c: 5, d: new Double(5), e: 0.5, f: 2 ** 40, g: -(2 ** 40), h: [new Double(-0)] };
  const bytes = encodeMsgpack(frame);
  // 5 is a positive fixint, Double(5) a float 64 (0xcb)
  assert.ok(bytes.includes(0xcb));
  const v = decodeMsgpack(bytes);
  assert.equal(v.a, 9007199254740993n);
  assert.equal(v.b, -9223372036854775808n);
  assert.equal(v.c, 5);
  assert.ok(v.d instanceof Double && v.d.value === 5);
  assert.equal(v.e, 0.5);
  assert.equal(v.f, 2 ** 40, 'safe int64 values come back as numbers');
  assert.equal(typeof v.f, 'number');
  assert.equal(v.g, -(2 ** 40));
  assert.ok(v.h[0] instanceof Double && Object.is(v.h[0].value, -0));
});

test('MessagePack: integral numbers beyond 2^32 are encoded as integers, not floats', () => {
  const bytes = encodeMsgpack({ n: 2 ** 40 });
  assert.ok(!bytes.includes(0xcb), 'no float 64 marker');
  assert.ok(bytes.includes(0xd3) || bytes.includes(0xcf), 'an int64/uint64 marker');
});

test('frames: typed values of document fields are converted both ways', () => {
  const wire = '{"type":"snapshot","sub":"s1","resume":"p7","reset":false,"docs":[{"path":"c/a","fields":{"b":{"$bytes":"AQL/"},"t":{"$timestamp":"2024-05-01T12:00:00.123456789Z"},"m":{"$map":{"$x":1}},"n":9007199254740993,"d":1.0},"create_time":"2024-05-01T12:00:00.000000000Z","update_time":"2024-05-01T12:00:00.000000000Z","version":7}]}';
  for (const data of [wire, encodeMsgpack(parseJSON(wire))]) {
    const f = decodeFrame(data);
    const fields = f.docs[0].fields;
    assert.deepEqual([...fields.b], [1, 2, 255]);
    assert.ok(fields.t instanceof Timestamp);
    assert.equal(fields.t.nanos, 123456789);
    assert.equal(fields.t.toString(), '2024-05-01T12:00:00.123456789Z');
    assert.deepEqual(fields.m, { $x: 1 });
    assert.equal(fields.n, 9007199254740993n);
    assert.ok(fields.d instanceof Double);
    assert.equal(f.docs[0].version, 7);
    // and back to the wire encoding
    assert.equal(stringifyJSON(toHearthJSON(fields)), '{"b":{"$bytes":"AQL/"},"t":{"$timestamp":"2024-05-01T12:00:00.123456789Z"},"m":{"$map":{"$x":1}},"n":9007199254740993,"d":1.0}');
  }
});

test('frames: encodeFrame writes text for JSON and bytes for MessagePack', () => {
  const f = { type: 'ping', id: 3 };
  assert.equal(encodeFrame(f, 'json'), '{"type":"ping","id":3}');
  const b = encodeFrame(f, 'msgpack');
  assert.ok(b instanceof Uint8Array);
  assert.deepEqual(decodeMsgpack(/** @type {Uint8Array} */ (b)), f);
});

test('writeFromJSON converts values of data, fields and transforms', () => {
  const w = writeFromJSON(parseJSON('{"op":"merge","path":"c/a","fields":{"x.y":{"$timestamp":"2024-05-01T12:00:00Z"}},"transforms":[{"field":"n","transform":"increment","value":1.0},{"field":"t","transform":"array_union","values":[{"$bytes":"AA=="}]}]}'));
  assert.ok(w.fields['x.y'] instanceof Timestamp);
  assert.ok(w.transforms[0].value instanceof Double);
  assert.ok(w.transforms[1].values[0] instanceof Uint8Array);
});

test('Timestamp: parsing, nanoseconds, ordering as instants', () => {
  const a = Timestamp.parse('2024-05-01T12:00:00Z');
  const b = Timestamp.parse('2024-05-01T14:00:00.5+02:00');
  assert.equal(a.toString(), '2024-05-01T12:00:00.000000000Z');
  assert.equal(b.toString(), '2024-05-01T12:00:00.500000000Z');
  assert.equal(a.compareTo(b), -1);
  assert.throws(() => Timestamp.parse('yesterday'));
});
