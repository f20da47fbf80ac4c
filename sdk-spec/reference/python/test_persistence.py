"""Unit tests of the persistent pending-write queue (PROTOCOL.md §13 "Surviving a restart")
and of the offline read cache of subscription views ("An offline read cache").

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
    FileViewCache, FileWriteStore, HearthClient, HearthError, StoredWrite, canonical_target, clear_persistence,
    replay_journal,
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


class ClientFixture(unittest.IsolatedAsyncioTestCase):
    """A temporary store directory and clients closed after each test."""

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


class ClientTest(ClientFixture):
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


def views_dir(d):
    return os.path.join(d, "views")


def records(d):
    """The cached view records in ``d``: {canonical target: record}."""
    out = {}
    if os.path.isdir(views_dir(d)):
        for name in os.listdir(views_dir(d)):
            with open(os.path.join(views_dir(d), name)) as f:
                r = json.load(f)
            out[canonical_target(r["target"])] = r
    return out


Q = {"query": {"collection": "c", "order_by": [{"field": "n", "direction": "asc"}]}}


def paths(snap):
    return [d["path"] for d in snap.docs]


class ViewCacheTest(ClientFixture):
    """The offline read cache (PROTOCOL.md §13 "An offline read cache"), with the session simulated."""

    def client(self, **kw):
        kw.setdefault("persist_dir", self.dir)
        kw.setdefault("view_save_delay", 0.05)
        return super().client(**kw)

    async def first_process(self, target=Q, docs=None, resume="p5"):
        """A client that saw ``docs`` at ``resume`` for ``target`` and was closed."""
        c = self.client()
        out = online(c)
        c.subscribe(target, lambda s: None)
        [sub] = [f for f in drain(out) if f["type"] == "subscribe"]
        c._dispatch({"type": "snapshot", "sub": sub["sub"], "resume": resume,
                     "docs": docs if docs is not None else [doc("c/a", {"n": 1}, 3), doc("c/b", {"n": 2}, 4)]})
        await asyncio.sleep(0.2)
        await c.close()
        self.clients.remove(c)

    async def test_restart_shows_the_cached_view_offline_then_resumes_from_its_token_and_applies_changes(self):
        await self.first_process()
        c = self.client()
        seen = []
        c.subscribe(Q, seen.append)                      # offline: never connected
        self.assertEqual(len(seen), 1)
        self.assertEqual(paths(seen[0]), ["c/a", "c/b"])
        self.assertEqual([d["fields"] for d in seen[0].docs], [{"n": 1}, {"n": 2}])
        self.assertTrue(seen[0].from_cache)
        self.assertFalse(seen[0].has_pending_writes)
        self.assertEqual([ch["kind"] for ch in seen[0].changes], ["added", "added"])
        out = online(c)
        c._send_subscribe(next(iter(c._subs.values())))
        [sub] = drain(out)
        self.assertEqual((sub["type"], sub["target"], sub.get("resume")), ("subscribe", Q, "p5"))
        # only what changed since p5: a deleted, b moved after a new c
        c._dispatch({"type": "changes", "sub": sub["sub"], "resume": "p9", "changes": [
            {"kind": "removed", "doc": doc("c/a", {"n": 1}, 3), "old_index": 0, "new_index": None},
            {"kind": "added", "doc": doc("c/c", {"n": 3}, 8), "old_index": None, "new_index": 0},
            {"kind": "modified", "doc": doc("c/b", {"n": 20}, 9), "old_index": 1, "new_index": 1}]})
        self.assertEqual(len(seen), 2)
        self.assertEqual([(d["path"], d["fields"]["n"]) for d in seen[1].docs], [("c/c", 3), ("c/b", 20)])
        self.assertFalse(seen[1].from_cache)
        self.assertFalse(seen[1].reset)
        await asyncio.sleep(0.2)                          # the new view and token are saved
        [r] = records(self.dir).values()
        self.assertEqual((r["resume"], [d["path"] for d in r["docs"]]), ("p9", ["c/c", "c/b"]))

    async def test_pending_writes_show_on_top_of_the_cached_view(self):
        await self.first_process()
        c = self.client()
        c.write([{"op": "set", "path": "c/x", "data": {"n": 1.5}}])     # never sent: not in doubt
        seen = []
        c.subscribe(Q, seen.append)
        self.assertEqual([(d["path"], d["pending"]) for d in seen[-1].docs],
                         [("c/a", False), ("c/x", True), ("c/b", False)])
        self.assertTrue(seen[-1].from_cache and seen[-1].has_pending_writes)
        [r] = records(self.dir).values()
        self.assertEqual([d["path"] for d in r["docs"]], ["c/a", "c/b"])   # the record is the server view

    async def test_a_reset_snapshot_replaces_the_cached_view_and_is_flagged(self):
        await self.first_process()
        c = self.client()
        seen = []
        c.subscribe(Q, seen.append)
        out = online(c)
        c._send_subscribe(next(iter(c._subs.values())))
        [sub] = drain(out)
        self.assertEqual(sub["resume"], "p5")
        c._dispatch({"type": "snapshot", "sub": sub["sub"], "resume": "p90", "reset": True,
                     "docs": [doc("c/b", {"n": 2}, 4), doc("c/z", {"n": 7}, 80)]})
        self.assertEqual(paths(seen[-1]), ["c/b", "c/z"])     # not merged into the cached a, b
        self.assertTrue(seen[-1].reset)
        self.assertFalse(seen[-1].from_cache)

    async def test_saved_after_the_delay_coalesced_at_unsubscribe_and_at_close(self):
        c = self.client(view_save_delay=0.3)
        out = online(c)
        s1 = c.subscribe(Q, lambda s: None)
        c.subscribe({"doc": "c/d"}, lambda s: None)
        f1, f2 = drain(out)
        c._dispatch({"type": "snapshot", "sub": f1["sub"], "resume": "p5", "docs": [doc("c/a", {"n": 1}, 3)]})
        c._dispatch({"type": "changes", "sub": f1["sub"], "resume": "p6", "changes": [
            {"kind": "added", "doc": doc("c/b", {"n": 2}, 6), "old_index": None, "new_index": 1}]})
        self.assertEqual(records(self.dir), {})              # not yet: frames of the delay coalesce
        await asyncio.sleep(0.5)
        self.assertEqual({k: r["resume"] for k, r in records(self.dir).items()}, {canonical_target(Q): "p6"})
        c._dispatch({"type": "changes", "sub": f1["sub"], "resume": "p7", "changes": [
            {"kind": "removed", "doc": doc("c/a", {"n": 1}, 3), "old_index": 0, "new_index": None}]})
        await s1.unsubscribe()                                # saved at once
        self.assertEqual(records(self.dir)[canonical_target(Q)]["resume"], "p7")
        self.assertEqual([d["path"] for d in records(self.dir)[canonical_target(Q)]["docs"]], ["c/b"])
        c._dispatch({"type": "snapshot", "sub": f2["sub"], "resume": "p8", "docs": []})
        await c.close()                                       # saved at close
        self.assertEqual(records(self.dir)[canonical_target({"doc": "c/d"})]["resume"], "p8")

    async def test_a_torn_or_foreign_record_is_ignored_and_key_order_does_not_matter(self):
        await self.first_process()
        [name] = os.listdir(views_dir(self.dir))
        with open(os.path.join(views_dir(self.dir), name)) as f:
            whole = f.read()
        # the same target with its keys in another order finds the record
        c = self.client()
        seen = []
        c.subscribe({"query": {"order_by": [{"direction": "asc", "field": "n"}], "collection": "c"}}, seen.append)
        self.assertEqual(paths(seen[-1]), ["c/a", "c/b"])
        await c.close()
        self.clients.remove(c)
        foreign = json.loads(whole)
        foreign["target"]["query"]["collection"] = "other"
        for bad in (whole[: len(whole) // 2],                                          # torn
                    json.dumps(foreign),                                               # another target's
                    json.dumps({"target": Q, "resume": "oops", "docs": []})):          # not a view record
            with open(os.path.join(views_dir(self.dir), name), "w") as f:
                f.write(bad)
            c = self.client()
            seen = []
            c.subscribe(Q, seen.append)
            self.assertEqual(seen, [], bad)                   # nothing shown before the server answers
            out = online(c)
            c._send_subscribe(next(iter(c._subs.values())))
            [sub] = drain(out)
            self.assertNotIn("resume", sub)                   # and a fresh subscription
            await c.close()
            self.clients.remove(c)

    async def test_a_cached_view_serves_only_its_own_target(self):
        await self.first_process()
        c = self.client()
        seen = []
        c.subscribe({"doc": "c/a"}, seen.append)
        c.subscribe({"query": {"collection": "c"}}, seen.append)         # same collection, another query
        c.subscribe({"query": {"collection": "c", "order_by": [{"field": "n", "direction": "desc"}]}}, seen.append)
        self.assertEqual(seen, [])
        out = online(c)
        for s in c._subs.values():
            c._send_subscribe(s)
        self.assertTrue(all("resume" not in f for f in drain(out)))

    async def test_at_most_max_records_the_least_recently_saved_are_evicted(self):
        c = self.client(max_cached_views=3)
        out = online(c)
        for i in range(5):
            c.subscribe({"doc": f"c/d{i}"}, lambda s: None)
        subs = drain(out)
        for i, f in enumerate(subs):
            c._dispatch({"type": "snapshot", "sub": f["sub"], "resume": f"p{i + 1}", "docs": []})
            c._save_views()
        self.assertEqual(sorted(records(self.dir)), sorted(canonical_target({"doc": f"c/d{i}"}) for i in (2, 3, 4)))
        c._dispatch({"type": "changes", "sub": subs[2]["sub"], "resume": "p9", "changes": []})
        c._save_views()                                       # d2 is now the most recently saved
        c._dispatch({"type": "changes", "sub": subs[0]["sub"], "resume": "p10", "changes": []})
        c._save_views()
        self.assertEqual(sorted(records(self.dir)), sorted(canonical_target({"doc": f"c/d{i}"}) for i in (0, 2, 4)))
        await c.close()
        self.clients.remove(c)
        # the order survives a restart (file times): d4 is the oldest now; a save a crash cut short is removed
        with open(os.path.join(views_dir(self.dir), "0123.tmp"), "w") as f:
            f.write('{"target": {"doc"')
        cache = FileViewCache(self.dir, max_records=3)
        self.assertFalse(os.path.exists(os.path.join(views_dir(self.dir), "0123.tmp")))
        cache.save({"doc": "c/new"}, [], "p11")
        self.assertEqual(sorted(records(self.dir)),
                         sorted(canonical_target({"doc": p}) for p in ("c/d0", "c/d2", "c/new")))

    async def test_a_subscription_the_server_refuses_deletes_its_record(self):
        await self.first_process()
        self.assertEqual(len(records(self.dir)), 1)
        c = self.client()
        errors, seen = [], []
        c.subscribe(Q, seen.append, errors.append)
        self.assertEqual(len(seen), 1)                        # shown from the cache
        out = online(c)
        c._send_subscribe(next(iter(c._subs.values())))
        [sub] = drain(out)
        c._dispatch({"type": "error", "id": sub["id"], "code": "permission-denied", "message": "no"})
        self.assertEqual([e.code for e in errors], ["permission-denied"])
        self.assertEqual(records(self.dir), {})
        await asyncio.sleep(0.2)
        await c.close()
        self.assertEqual(records(self.dir), {})               # and nothing saved it back
        self.clients.remove(c)
        c = self.client()
        seen = []
        c.subscribe(Q, seen.append)
        self.assertEqual(seen, [])

    async def test_a_write_in_doubt_hides_the_cached_view_until_answered(self):
        # The record was saved after the increment's commit reached the view (n = 1) while its
        # `done` mark was lost: showing the increment on top of it would count it twice.
        inc = [{"op": "update", "path": "c/counter", "fields": {},
                "transforms": [{"field": "n", "transform": "increment", "value": 1}]}]
        cache = FileViewCache(self.dir)
        cache.save(Q, [doc("c/counter", {"n": 1}, 7)], "p7")
        s = FileWriteStore(self.dir)
        s.open()
        s.add(StoredWrite("m-inc", inc, time.time() - 60))
        s.mark_sent("m-inc", time.time() - 59)
        s.close()
        c = self.client()
        seen = []
        c.subscribe(Q, seen.append)
        self.assertEqual(seen, [])                            # nothing, cached or not
        out = online(c)
        c._send_subscribe(next(iter(c._subs.values())))
        c._pump_writes()
        sub, w = drain(out)
        self.assertEqual(sub["resume"], "p7")
        c._dispatch({"type": "changes", "sub": sub["sub"], "resume": "p8", "changes": []})
        c._dispatch(write_ok(w, 7, duplicate=True))
        self.assertEqual([[d["fields"]["n"] for d in s.docs] for s in seen], [[1]])
        await c.close()
        self.clients.remove(c)
        # the same when the client was made outside the event loop and subscribes before connect()
        s = FileWriteStore(self.dir)
        s.open()
        s.add(StoredWrite("m-inc2", inc, time.time() - 60))
        s.mark_sent("m-inc2", time.time() - 59)
        s.close()
        c = await asyncio.to_thread(HearthClient, "ws://x/v1/ws", persist_dir=self.dir)
        self.clients.append(c)
        seen = []
        c.subscribe(Q, seen.append)
        self.assertEqual(seen, [])
        self.assertEqual([m for m, _ in c.restored_writes], ["m-inc2"])

    async def test_cache_views_false_neither_saves_nor_serves(self):
        await self.first_process()
        c = self.client(cache_views=False)
        seen = []
        c.subscribe(Q, seen.append)
        self.assertEqual(seen, [])
        out = online(c)
        c._send_subscribe(next(iter(c._subs.values())))
        [sub] = drain(out)
        self.assertNotIn("resume", sub)
        c._dispatch({"type": "snapshot", "sub": sub["sub"], "resume": "p50", "docs": []})
        await asyncio.sleep(0.2)
        await c.close()
        self.assertEqual(records(self.dir)[canonical_target(Q)]["resume"], "p5")   # untouched
        with self.assertRaises(ValueError):
            HearthClient("ws://x/v1/ws", cache_views=True)                    # needs a persist_dir

    async def test_clear_persistence_deletes_the_store_but_not_while_in_use(self):
        await self.first_process()
        c = self.client()
        c.write([{"op": "set", "path": "c/x", "data": {}}])
        with self.assertRaises(HearthError) as e:
            clear_persistence(self.dir)
        self.assertEqual(e.exception.code, "failed-precondition")
        await c.close()
        self.clients.remove(c)
        clear_persistence(self.dir)
        self.assertFalse(os.path.exists(self.dir))
        c = self.client()
        seen = []
        c.subscribe(Q, seen.append)
        self.assertEqual((seen, c.restored_writes), ([], []))

    def test_the_driver_answers_unimplemented_for_cache_views_without_persist_dir(self):
        driver = os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.py")
        cmd = {"id": 1, "cmd": "connect", "url": "ws://127.0.0.1:9/v1/ws", "cache_views": True}
        p = subprocess.run([sys.executable, driver], input=json.dumps(cmd) + "\n", capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(json.loads(p.stdout.splitlines()[0])["error"]["code"], "unimplemented")


if __name__ == "__main__":
    unittest.main()
