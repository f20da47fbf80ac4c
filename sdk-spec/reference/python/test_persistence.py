"""Unit tests of the persistent pending-write queue (PROTOCOL.md §13 "Surviving a restart").

Run from this directory: ``python3 -m unittest test_persistence`` (needs the
client's packages, ``websockets`` and ``msgpack``; no server: the session is
simulated by calling the client's frame handling directly).
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hearth_client import (  # noqa: E402
    FileWriteStore, HearthClient, HearthError, StoredWrite, replay_journal,
)

H = 3600.0
WELCOME = {"type": "welcome", "session_id": "s", "protocol": 1, "heartbeat_ms": 25000, "idle_timeout_ms": 60000,
           "limits": {"max_inflight_writes": 32}, "uid": None, "admin": True}


def journal(d):
    with open(os.path.join(d, "writes.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def online(client):
    """Pretend a session is open: frames the client sends land in the returned queue."""
    client.welcome = WELCOME
    client._outbox = asyncio.Queue()
    client._requests = {}
    client._connected.set()
    return client._outbox


def drain(q):
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def write_ok(frame, seq, duplicate=False):
    return {"type": "write_ok", "id": frame["id"], "mutation_id": frame["mutation_id"], "duplicate": duplicate,
            "result": {"seq": seq, "commit_time": "2026-01-01T00:00:00Z", "results": []}}


def doc(path, fields, version):
    return {"path": path, "fields": fields, "version": version}


class JournalTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_replay_in_order_and_torn_tail(self):
        lines = [
            {"format": "hearth-pending-writes", "version": 1},
            {"op": "add", "id": "m1", "created_at": 1000, "sent_at": None, "writes": "[1]"},
            {"op": "add", "id": "m2", "created_at": 2000, "sent_at": None, "writes": "[2]"},
            {"op": "sent", "id": "m2", "at": 5000},
            {"op": "add", "id": "m3", "created_at": 3000, "sent_at": 4000, "writes": "[3.0]"},
            {"op": "done", "id": "m1"},
            {"op": "sent", "id": "m2", "at": 9000},    # the first send time is kept
        ]
        text = "".join(json.dumps(x) + "\n" for x in lines) + '{"op":"add","id":"m4","crea'
        writes, torn = replay_journal(text)
        self.assertEqual(torn, 1)
        self.assertEqual([(w.mutation_id, w.writes, w.created_at, w.sent_at) for w in writes],
                         [("m2", [2], 2.0, 5.0), ("m3", [3.0], 3.0, 4.0)])
        self.assertIsInstance(writes[1].writes[0], float)   # doubles stay doubles

    def test_reopen_compacts_and_tolerates_a_torn_tail(self):
        s1 = FileWriteStore(self.dir)
        self.assertEqual(s1.open(), [])
        for i in "abc":
            s1.add(StoredWrite(i, [{"op": "delete", "path": f"c/{i}"}], 10.0))
        s1.mark_sent("b", 20.0)
        s1.remove("a")
        s1.close()
        self.assertEqual(len(journal(self.dir)), 1 + 3 + 1 + 1)
        with open(os.path.join(self.dir, "writes.jsonl"), "a") as f:
            f.write('{"op":"add","id":"d","wri')           # a crash in the middle of an append
        s2 = FileWriteStore(self.dir)
        self.assertEqual([(w.mutation_id, w.sent_at) for w in s2.open()], [("b", 20.0), ("c", None)])
        self.assertEqual([r.get("op", r.get("format")) for r in journal(self.dir)],
                         ["hearth-pending-writes", "add", "add"])
        s2.add(StoredWrite("e", [], 30.0))
        s2.close()
        s3 = FileWriteStore(self.dir)
        self.assertEqual([w.mutation_id for w in s3.open()], ["b", "c", "e"])
        s3.close()

    def test_one_instance_per_directory(self):
        s1 = FileWriteStore(self.dir)
        s1.open()
        with self.assertRaises(HearthError) as e:
            FileWriteStore(self.dir).open()
        self.assertEqual(e.exception.code, "failed-precondition")
        with self.assertRaises(HearthError) as e:
            HearthClient("ws://x/v1/ws", persist_dir=self.dir)
        self.assertEqual(e.exception.code, "failed-precondition")
        s1.close()
        s2 = FileWriteStore(self.dir)      # released by close
        s2.open()
        s2.close()
        # a process holding the lock is killed: the kernel releases it
        code = ("import sys, time; sys.path.insert(0, %r); from hearth_client import FileWriteStore; "
                "FileWriteStore(%r).open(); print('locked', flush=True); time.sleep(60)"
                % (os.path.dirname(os.path.abspath(__file__)), self.dir))
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "locked")
            with self.assertRaises(HearthError):
                FileWriteStore(self.dir).open()
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stdout.close()
        s3 = FileWriteStore(self.dir)
        s3.open()
        s3.close()


class ClientTest(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.clients = []

    async def asyncTearDown(self):
        for c in self.clients:
            await c.close()
        self.tmp.cleanup()

    def client(self, **kw):
        c = HearthClient("ws://x/v1/ws", **kw)
        self.clients.append(c)
        return c

    async def test_stored_before_shown_marked_sent_before_the_wire_dropped_when_answered(self):
        c = self.client(persist_dir=self.dir)
        seen = []
        c.subscribe({"query": {"collection": "c"}},
                    lambda s: seen.append(([d["path"] for d in s.docs], [r["op"] for r in journal(self.dir)[1:]])))
        fut = c.write([{"op": "set", "path": "c/a", "data": {"n": 1}}])
        self.assertEqual(seen, [(["c/a"], ["add"])])            # shown after it was stored
        out = online(c)
        c._pump_writes()
        [frame] = drain(out)
        self.assertEqual([r["op"] for r in journal(self.dir)[1:]], ["add", "sent"])   # recorded before sending
        c._dispatch(write_ok(frame, 5))
        self.assertEqual((await fut)["seq"], 5)
        self.assertEqual([r["op"] for r in journal(self.dir)[1:]], ["add", "sent", "done"])

    async def test_restart_restores_in_order_and_never_counts_an_in_doubt_write_twice(self):
        # the first process: an increment sent (answer lost), then two writes made offline
        s = FileWriteStore(self.dir)
        s.open()
        inc = [{"op": "update", "path": "c/counter", "fields": {},
                "transforms": [{"field": "n", "transform": "increment", "value": 1}]}]
        s.add(StoredWrite("m-inc", inc, time.time() - 60))
        s.mark_sent("m-inc", time.time() - 59)
        s.add(StoredWrite("m-a", [{"op": "set", "path": "c/a", "data": {"n": 10}}], time.time() - 30))
        s.add(StoredWrite("m-b", [{"op": "set", "path": "c/b", "data": {"n": 20}}], time.time() - 20))
        s.close()       # (a SIGKILL would leave the journal the same; flock dies with the process)

        c = self.client(persist_dir=self.dir)
        self.assertEqual([m for m, _ in c.restored_writes], ["m-inc", "m-a", "m-b"])
        seen = []
        c.subscribe({"query": {"collection": "c"}},
                    lambda snap: seen.append({d["path"]: (d["fields"]["n"], d["pending"]) for d in snap.docs}))
        self.assertEqual(seen[-1], {"c/a": (10, True), "c/b": (20, True)})
        out = online(c)
        c._send_subscribe(next(iter(c._subs.values())))
        c._pump_writes()
        frames = drain(out)
        self.assertEqual([f["type"] for f in frames], ["subscribe", "write", "write", "write"])
        writes = frames[1:]
        self.assertEqual([f["mutation_id"] for f in writes], ["m-inc", "m-a", "m-b"])
        self.assertEqual(writes[0]["writes"], inc)
        # the server applied the increment before the crash: its first snapshot has n = 1
        c._dispatch({"type": "snapshot", "sub": frames[0]["sub"], "resume": "p7",
                     "docs": [doc("c/counter", {"n": 1}, 7)]})
        self.assertTrue(all(v.get("c/counter", (1,))[0] == 1 for v in seen), seen)
        c._dispatch(write_ok(writes[0], 7, duplicate=True))
        self.assertEqual(seen[-1]["c/counter"], (1, False))
        c._dispatch(write_ok(writes[1], 8))
        c._dispatch(write_ok(writes[2], 9))
        c._dispatch({"type": "changes", "sub": frames[0]["sub"], "resume": "p9", "changes": [
            {"kind": "added", "doc": doc("c/a", {"n": 10}, 8), "old_index": None, "new_index": 1},
            {"kind": "added", "doc": doc("c/b", {"n": 20}, 9), "old_index": None, "new_index": 2}]})
        self.assertTrue(all(v.get("c/counter", (1,))[0] == 1 for v in seen), seen)
        self.assertEqual(seen[-1], {"c/counter": (1, False), "c/a": (10, False), "c/b": (20, False)})
        self.assertEqual([(await f)["seq"] for _, f in c.restored_writes], [7, 8, 9])
        await c.close()
        s2 = FileWriteStore(self.dir)
        self.assertEqual(s2.open(), [])       # answered writes are dropped
        s2.close()

    async def test_first_sent_more_than_23_hours_ago_is_dropped_never_sent_is_sent(self):
        now = [1_800_000_000.0]
        clock = lambda: now[0]  # noqa: E731
        # without persistence
        c = self.client(clock=clock)
        old = c.write([{"op": "set", "path": "c/never-sent", "data": {}}])   # made offline, never sent
        now[0] += 30 * H
        out = online(c)
        lost = c.write([{"op": "set", "path": "c/lost", "data": {}}])
        frames = drain(out)
        self.assertEqual([f["writes"][0]["path"] for f in frames], ["c/never-sent", "c/lost"])
        c._dispatch(write_ok(frames[0], 3))
        await old
        c._connected.clear()              # the connection breaks: c/lost is in doubt
        c._requests = {}
        for w in c._writes:
            if w.request_id is not None and w.seq is None:
                w.in_doubt, w.request_id = True, None
        now[0] += 23 * H + 1
        out = online(c)
        c._pump_writes()
        self.assertEqual(drain(out), [])
        with self.assertRaises(HearthError) as e:
            await lost
        self.assertEqual(e.exception.code, "deadline-exceeded")

        # with persistence: a stored write sent 24 h ago is dropped (and its record)
        s = FileWriteStore(self.dir)
        s.open()
        s.add(StoredWrite("old-sent", [{"op": "delete", "path": "c/x"}], now[0] - 48 * H, now[0] - 24 * H))
        s.add(StoredWrite("old-unsent", [{"op": "delete", "path": "c/y"}], now[0] - 48 * H))
        s.add(StoredWrite("recent-sent", [{"op": "delete", "path": "c/z"}], now[0] - 48 * H, now[0] - 22 * H))
        s.close()
        c2 = self.client(persist_dir=self.dir, clock=clock)
        out = online(c2)
        with self.assertLogs("hearth", level="WARNING") as logs:
            c2._pump_writes()
        self.assertTrue(any("dropping write old-sent" in m for m in logs.output))
        self.assertEqual([f["mutation_id"] for f in drain(out)], ["old-unsent", "recent-sent"])
        with self.assertRaises(HearthError) as e:
            await c2.restored_writes[0][1]
        self.assertEqual(e.exception.code, "deadline-exceeded")
        self.assertIn({"op": "done", "id": "old-sent"}, journal(self.dir))


if __name__ == "__main__":
    unittest.main()
