"""Hearth reference client (Python, asyncio) for the ``hearth.v1`` WebSocket protocol.

Written from ``sdk-spec/PROTOCOL.md`` alone (section 13, "Client guidance",
describes the design).  One :class:`HearthClient` owns one logical session
that survives network failures:

* **Handshake** -- ``hello`` / ``welcome`` (PROTOCOL.md section 3, 4).
* **Subscriptions** -- per subscription the *server view* (a list of
  documents built only from ``snapshot`` and ``changes`` frames, section 5)
  and the newest resume token (section 6).
* **Pending writes** -- one queue, in application order; the *local view*
  each listener sees is the server view with the pending writes applied on
  top (latency compensation, section 13).
* **Reconnect** -- exponential backoff with full jitter; after ``welcome``
  every subscription is re-sent with its resume token and every
  unacknowledged write with its ORIGINAL ``mutation_id``.
* **Liveness** -- answers server pings, pings when it has been quiet for
  ``heartbeat_ms``, gives up on a connection silent for ``idle_timeout_ms``.
* **Token refresh** -- :meth:`HearthClient.set_token` sends ``auth`` on the
  live socket.
* **Transactions** -- :meth:`HearthClient.run_transaction`: reads of the
  server's documents, then one ``transaction`` frame carrying the versions
  read (section 7); re-run on ``aborted``. Added after the clean-room
  version, for the ``client-20-transaction`` check.
* **Persistence** -- ``HearthClient(..., persist_dir=path)`` keeps the queue
  of pending plain writes in a directory (:class:`FileWriteStore`), so that
  it survives a restart (section 13, "Surviving a restart"), and the views of
  subscriptions as an offline read cache (:class:`FileViewCache`, section 13,
  "An offline read cache"; ``cache_views=False`` turns it off).

JSON (``hearth.v1``) and, since session 7, MessagePack
(``hearth.v1.msgpack``, ``encoding="msgpack"``; the ``msgpack`` package).
Values are kept in Hearth's JSON encoding as Python's ``json`` module
decodes it (``42`` -> int, ``42.0`` -> float, so integers and doubles stay
distinct); MessagePack decodes to exactly the same values.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import msgpack
import websockets

log = logging.getLogger("hearth")

CLIENT_INFO = {"name": "hearth-python-reference", "version": "0.1.0"}
_NO_RECONNECT = (4001, 4003)      # need a new credential first (section 10)
ACK_GRACE_S = 5.0                 # an acknowledged write leaves the queue at the latest then
STABLE_SESSION = 5.0              # a session this long (or with any frame after welcome) resets the backoff
MAX_SENT_AGE_S = 23 * 3600        # a write first sent longer ago is dropped, not resent (section 7: 24 h records)


class HearthError(Exception):
    """An error answered by the server (``code`` is the protocol's canonical code)."""

    def __init__(self, code: str, message: str = "", details: Optional[dict] = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.details = code, message, details or {}


class _Fatal(Exception):
    """The handshake was refused in a way reconnecting cannot fix (close 4000/4001/4003)."""

    def __init__(self, close_code: int, error: HearthError):
        super().__init__(str(error))
        self.close_code, self.error = close_code, error


# --------------------------------------------------------------------------
# Values, field paths and local application of writes (PROTOCOL.md section 2)
# --------------------------------------------------------------------------

_RANK_NULL, _RANK_BOOL, _RANK_NAN, _RANK_NUM, _RANK_TS, _RANK_STR, _RANK_BYTES, _RANK_ARR, _RANK_MAP = range(9)


def _typed(v: Any) -> tuple[int, Any]:
    """Return ``(type rank, comparable value)`` for a value in Hearth's JSON encoding."""
    if v is None:
        return _RANK_NULL, None
    if isinstance(v, bool):
        return _RANK_BOOL, v
    if isinstance(v, (int, float)):
        return (_RANK_NAN, None) if v != v else (_RANK_NUM, v)
    if isinstance(v, str):
        return _RANK_STR, v
    if isinstance(v, list):
        return _RANK_ARR, v
    if isinstance(v, dict) and len(v) == 1:
        (k, x), = v.items()
        if k == "$double":
            f = float({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(x, x))
            return (_RANK_NAN, None) if f != f else (_RANK_NUM, f)
        if k == "$timestamp":
            secs, _, frac = x.rstrip("Z").partition(".")
            return _RANK_TS, (secs, int((frac + "000000000")[:9]))  # fixed-width UTC text + nanos
        if k == "$bytes":
            return _RANK_BYTES, base64.b64decode(x)
        if k == "$map":
            return _RANK_MAP, x
    return _RANK_MAP, v


def compare_values(a: Any, b: Any) -> int:
    """Total order of values: null < bool < NaN < numbers < timestamps < strings < bytes < arrays < maps."""
    (ra, va), (rb, vb) = _typed(a), _typed(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra == _RANK_ARR:
        for x, y in zip(va, vb):
            c = compare_values(x, y)
            if c:
                return c
        return (len(va) > len(vb)) - (len(va) < len(vb))
    if ra == _RANK_MAP:   # assumption (SPEC-NOTES): sorted keys, then values, then size
        for (ka, xa), (kb, xb) in zip(sorted(va.items()), sorted(vb.items())):
            if ka != kb:
                return -1 if ka < kb else 1
            c = compare_values(xa, xb)
            if c:
                return c
        return (len(va) > len(vb)) - (len(va) < len(vb))
    if va is None:        # null, NaN
        return 0
    return (va > vb) - (va < vb)


def _as_map(v: Any) -> Optional[dict]:
    """The entries of a map value (plain object or ``{"$map": {...}}``), else None."""
    if not isinstance(v, dict):
        return None
    if len(v) == 1:
        k = next(iter(v))
        if k == "$map":
            return v[k]
        if k.startswith("$"):
            return None   # a typed value ($double, $bytes, $timestamp)
    return v


_MISSING = object()


def split_field_path(path: str) -> list[str]:
    """Split ``a.b`` into segments; a segment in backticks (`` `x.y` ``) may hold dots.

    (The server accepts backtick-quoted segments; the spec does not describe them.)"""
    segs, cur, quoted = [], "", False
    for ch in path:
        if ch == "`":
            quoted = not quoted
        elif ch == "." and not quoted:
            segs.append(cur); cur = ""
        else:
            cur += ch
    return segs + [cur]


def get_field(fields: dict, path: str) -> Any:
    """Read a dotted field path (``"topic.text"``); ``_MISSING`` when absent."""
    cur: Any = fields
    for seg in split_field_path(path):
        m = _as_map(cur)
        if m is None or seg not in m:
            return _MISSING
        cur = m[seg]
    return cur


def set_field(fields: dict, path: str, value: Any) -> None:
    """Write a dotted field path in place, creating (or replacing non-map) parents."""
    segs = split_field_path(path)
    cur = fields
    for seg in segs[:-1]:
        nxt = _as_map(cur.get(seg))
        if nxt is None:
            nxt = cur[seg] = {}
        cur = nxt
    cur[segs[-1]] = value


def delete_field(fields: dict, path: str) -> None:
    segs = split_field_path(path)
    cur: Any = fields
    for seg in segs[:-1]:
        cur = _as_map(cur.get(seg)) if isinstance(cur, dict) else None
        if cur is None:
            return
    cur.pop(segs[-1], None)


def _num(v: Any) -> Optional[float | int]:
    rank, x = _typed(v)
    if rank == _RANK_NUM:
        return float(x) if isinstance(v, dict) else x
    return None


def now_timestamp() -> dict:
    """The local clock as a ``$timestamp`` value (stand-in for ``server_timestamp``)."""
    ns = time.time_ns()
    secs = datetime.fromtimestamp(ns // 10**9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return {"$timestamp": f"{secs}.{ns % 10**9:09d}Z"}


def apply_transform(fields: dict, t: dict) -> None:
    """Apply one field transform locally, as the server would."""
    f, kind = t["field"], t["transform"]
    cur = get_field(fields, f)
    if kind == "increment":
        a, b = _num(cur), _num(t.get("value"))
        if b is None:
            return
        if a is None:
            new = t["value"]                       # not a number yet: the operand replaces it
        elif isinstance(a, int) and isinstance(b, int):
            new = a + b
        else:
            new = float(a) + float(b)
        set_field(fields, f, new)
    elif kind == "server_timestamp":
        set_field(fields, f, now_timestamp())
    elif kind == "array_union":
        arr = list(cur) if isinstance(cur, list) else []
        for v in t.get("values", []):
            if not any(compare_values(v, x) == 0 for x in arr):
                arr.append(v)
        set_field(fields, f, arr)
    elif kind == "array_remove":
        arr = list(cur) if isinstance(cur, list) else []
        set_field(fields, f, [x for x in arr if not any(compare_values(v, x) == 0 for v in t.get("values", []))])
    elif kind == "delete":
        delete_field(fields, f)


def apply_write(current: Optional[dict], w: dict) -> Optional[dict]:
    """Return the fields a protocol ``Write`` leaves when applied to ``current`` (None: no document).

    Preconditions are not evaluated locally (the server judges them)."""
    op = w["op"]
    if op == "delete":
        return None
    if op == "create" and current is not None:
        return current                              # the server will refuse it
    if op == "update" and current is None:
        return None                                 # left to the server (not-found)
    if op in ("set", "create"):
        out = json.loads(json.dumps(w.get("data", {})))
    else:                                           # update, merge: field paths
        out = json.loads(json.dumps(current or {}))
        for path, value in (w.get("fields") or {}).items():
            set_field(out, path, value)
    for t in w.get("transforms") or []:
        apply_transform(out, t)
    return out


# --------------------------------------------------------------------------
# Queries evaluated locally (only needed to place pending writes in a view)
# --------------------------------------------------------------------------

_INEQUALITY = {"<", "<=", ">", ">=", "!=", "not-in"}


def _path_key(path: str) -> list:
    return path.split("/")


class LocalQuery:
    """The parts of a protocol Query the client needs to filter and order documents."""

    def __init__(self, q: dict):
        self.q = q
        explicit = [(o["field"], o.get("direction", "asc")) for o in q.get("order_by", [])]
        ordered = {f for f, _ in explicit}
        ineq = sorted({f["field"] for f in self._filters(q.get("where")) if f["op"] in _INEQUALITY} - ordered)
        self.order = explicit + [(f, "asc") for f in ineq if f != "__name__"]
        if "__name__" not in ordered:   # in the direction of the entry before it (PROTOCOL.md §2)
            self.order.append(("__name__", self.order[-1][1] if self.order else "asc"))

    @staticmethod
    def _filters(flt: Optional[dict]):
        if not flt:
            return
        if "and" in flt or "or" in flt:
            for sub in flt.get("and", flt.get("or", [])):
                yield from LocalQuery._filters(sub)
        else:
            yield flt

    def in_scope(self, path: str) -> bool:
        segs = path.split("/")
        if "collection" in self.q:
            return "/".join(segs[:-1]) == self.q["collection"]
        return len(segs) >= 2 and segs[-2] == self.q.get("collection_group")

    def _value(self, path: str, fields: dict, field: str) -> Any:
        return path if field == "__name__" else get_field(fields, field)

    def _eval(self, flt: Optional[dict], path: str, fields: dict) -> bool:
        if not flt:
            return True
        if "and" in flt:
            return all(self._eval(f, path, fields) for f in flt["and"])
        if "or" in flt:
            return any(self._eval(f, path, fields) for f in flt["or"])
        v, op, want = self._value(path, fields, flt["field"]), flt["op"], flt["value"]
        if v is _MISSING:
            return False
        eq = lambda a, b: compare_values(a, b) == 0
        if op == "==":
            return eq(v, want)
        if op == "!=":
            return not eq(v, want)
        if op in ("<", "<=", ">", ">="):
            if _typed(v)[0] != _typed(want)[0]:
                return False                        # comparisons stay within one type
            if flt["field"] == "__name__":          # paths: segment by segment (PROTOCOL.md §2)
                pa, pb = _path_key(v), _path_key(want)
                c = (pa > pb) - (pa < pb)
            else:
                c = compare_values(v, want)
            return {"<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]
        if op == "in":
            return any(eq(v, x) for x in want)
        if op == "not-in":
            return not any(eq(v, x) for x in want)
        if op == "array-contains":
            return isinstance(v, list) and any(eq(x, want) for x in v)
        if op == "array-contains-any":
            return isinstance(v, list) and any(eq(x, y) for x in v for y in want)
        return False

    def sort_key_cmp(self, a: tuple[str, dict], b: tuple[str, dict]) -> int:
        """Compare two ``(path, fields)`` in the query's normalized order."""
        for field, direction in self.order:
            if field == "__name__":
                pa, pb = _path_key(a[0]), _path_key(b[0])
                c = (pa > pb) - (pa < pb)
            else:
                c = compare_values(get_field(a[1], field), get_field(b[1], field))
            if c:
                return -c if direction == "desc" else c
        return 0

    def _cursor_cmp(self, path: str, fields: dict, cursor: dict) -> int:
        for (field, direction), want in zip(self.order, cursor["values"]):
            if field == "__name__" and isinstance(want, str):
                # A full path, or a bare document id for a `collection`
                # query; compared segment by segment (PROTOCOL.md §2).
                if "/" not in want and "collection" in self.q:
                    want = f'{self.q["collection"]}/{want}'
                pa, pb = _path_key(path), _path_key(want)
                c = (pa > pb) - (pa < pb)
            else:
                c = compare_values(self._value(path, fields, field), want)
            if c:
                return -c if direction == "desc" else c
        return 0

    def matches(self, path: str, fields: dict) -> bool:
        if not self.in_scope(path) or not self._eval(self.q.get("where"), path, fields):
            return False
        if any(f != "__name__" and get_field(fields, f) is _MISSING for f, _ in self.order):
            return False                            # lacking an ordered field: not in the result
        if "start_at" in self.q:
            c = self._cursor_cmp(path, fields, self.q["start_at"])
            if c < 0 or (c == 0 and not self.q["start_at"].get("inclusive", True)):
                return False
        if "end_at" in self.q:
            c = self._cursor_cmp(path, fields, self.q["end_at"])
            if c > 0 or (c == 0 and not self.q["end_at"].get("inclusive", True)):
                return False
        return True


# --------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------

def apply_changes(view: list[dict], changes: list[dict]) -> list[dict]:
    """Apply a ``changes`` frame to a server view (PROTOCOL.md section 5, absolute indexes)."""
    drop = {c["old_index"] for c in changes if c.get("old_index") is not None}
    out = [d for i, d in enumerate(view) if i not in drop]
    for c in sorted((c for c in changes if c.get("new_index") is not None), key=lambda c: c["new_index"]):
        out.insert(c["new_index"], c["doc"])
    return out


def diff_views(old: list[dict], new: list[dict]) -> list[dict]:
    """Changes (same absolute-index convention as the protocol) turning ``old`` into ``new``.

    Documents equal in both that keep their relative order (a longest increasing
    subsequence of old positions) are not reported; every other one is."""
    old_at = {d["path"]: i for i, d in enumerate(old)}
    new_paths = {d["path"] for d in new}
    same = [(old_at[d["path"]], d["path"]) for d in new if d["path"] in old_at and old[old_at[d["path"]]] == d]
    # longest increasing subsequence of old indexes, O(n log n)
    import bisect
    tails, tails_i, prev = [], [], [-1] * len(same)
    for k, (oi, _) in enumerate(same):
        j = bisect.bisect_left(tails, oi)
        if j == len(tails):
            tails.append(oi); tails_i.append(k)
        else:
            tails[j] = oi; tails_i[j] = k
        prev[k] = tails_i[j - 1] if j else -1
    keep, k = set(), tails_i[-1] if tails_i else -1
    while k >= 0:
        keep.add(same[k][1]); k = prev[k]
    changes = [{"kind": "removed", "path": d["path"], "old_index": i, "new_index": None}
               for i, d in enumerate(old) if d["path"] not in new_paths]
    for i, d in enumerate(new):
        if d["path"] not in old_at:
            changes.append({"kind": "added", "path": d["path"], "old_index": None, "new_index": i})
        elif d["path"] not in keep:
            changes.append({"kind": "modified", "path": d["path"], "old_index": old_at[d["path"]], "new_index": i})
    return changes


@dataclasses.dataclass
class ViewSnapshot:
    """What a listener receives: the whole local view and what changed since the last one."""
    docs: list[dict]            # {"path", "fields", "pending", [version, create_time, update_time]}
    changes: list[dict]         # {"kind", "path", "old_index", "new_index"} vs the previous snapshot
    has_pending_writes: bool
    from_cache: bool
    reset: bool


@dataclasses.dataclass
class _PendingWrite:
    mutation_id: str
    writes: list[dict]
    future: asyncio.Future
    request_id: Optional[int] = None      # set while in flight on the current connection
    seq: Optional[int] = None             # result.seq once acknowledged
    in_doubt: bool = False                # was in flight on a connection that died unanswered
    unavailable: int = 0                  # consecutive `unavailable` answers (kept queued, retried)
    retry_at: float = 0.0                 # monotonic time before which it is not resent
    reads: Optional[list[dict]] = None    # a transaction's reads; never shown locally (it may abort)
    sent_at: Optional[float] = None       # wall-clock time it first went on the wire (None: never)
    stored: bool = False                  # it has a record in the write store


# --------------------------------------------------------------------------
# Persistence of the pending-write queue (PROTOCOL.md §13 "Surviving a restart")
# --------------------------------------------------------------------------

JOURNAL_FILE = "writes.jsonl"
LOCK_FILE = "lock"
JOURNAL_HEADER = {"format": "hearth-pending-writes", "version": 1}


@dataclasses.dataclass
class StoredWrite:
    mutation_id: str
    writes: list[dict]                    # the frame's writes (Hearth JSON values)
    created_at: float                     # wall clock, seconds
    sent_at: Optional[float] = None       # wall clock, seconds; None if never sent


def replay_journal(text: str) -> tuple[list[StoredWrite], int]:
    """The live writes of a journal, in order, and the number of unreadable lines skipped.

    A line that is not JSON is the torn end of an append cut short by a crash.
    Times in the journal are milliseconds (the JavaScript client's format)."""
    live: dict[str, StoredWrite] = {}
    torn = 0
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError("not an object")
            op, mid = r.get("op"), r.get("id")
            if op == "add" and isinstance(mid, str) and isinstance(r.get("writes"), str):
                live.pop(mid, None)
                sent = r.get("sent_at")
                live[mid] = StoredWrite(mid, json.loads(r["writes"]), float(r.get("created_at") or 0) / 1000,
                                        float(sent) / 1000 if isinstance(sent, (int, float)) else None)
            elif op == "sent" and mid in live:
                if live[mid].sent_at is None:
                    live[mid].sent_at = float(r["at"]) / 1000
            elif op == "done" and isinstance(mid, str):
                live.pop(mid, None)
        except (ValueError, TypeError, KeyError):
            torn += 1
    return list(live.values()), torn


def _ms(t: Optional[float]) -> Optional[int]:
    return None if t is None else int(round(t * 1000))


def _journal_add(w: StoredWrite) -> str:
    return json.dumps({"op": "add", "id": w.mutation_id, "created_at": _ms(w.created_at),
                       "sent_at": _ms(w.sent_at), "writes": json.dumps(w.writes)}) + "\n"


class FileWriteStore:
    """The pending-write queue in a directory.

    ``writes.jsonl`` is an append-only journal of JSON lines -- ``add``,
    ``sent`` and ``done`` records, the same format as the JavaScript
    reference client's -- each ``add`` and ``sent`` followed by ``os.fsync``.
    On open it is compacted: the live writes are written to a temporary
    file, fsynced and renamed over it; a line torn by a crash is skipped.
    ``lock`` is held with ``fcntl.flock`` (exclusive, non-blocking) while the
    store is open; the kernel releases it when the process dies, so a lock is
    never stale. A second instance gets :class:`HearthError`
    ``failed-precondition``."""

    def __init__(self, directory: str):
        self.dir = directory
        self.journal_path = os.path.join(directory, JOURNAL_FILE)
        self.lock_path = os.path.join(directory, LOCK_FILE)
        self._lock_fd: Optional[int] = None
        self._fd: Optional[int] = None

    def lock(self) -> None:
        """Create the directory if needed and take its lock (``failed-precondition`` if held)."""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise HearthError("failed-precondition",
                                  f"the persistence directory {self.dir} is in use by another client") from None
            raise
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())     # informative only

    def open(self) -> list[StoredWrite]:
        """Lock the directory and return the stored writes, in order (the journal is compacted)."""
        self.lock()
        try:
            try:
                with open(self.journal_path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except FileNotFoundError:
                text = ""
            writes, torn = replay_journal(text)
            if torn:
                log.warning("skipped %d unreadable journal line(s) in %s (a torn append)", torn, self.journal_path)
            tmp = self.journal_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(JOURNAL_HEADER) + "\n" + "".join(_journal_add(w) for w in writes))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.journal_path)
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
            return writes
        except BaseException:
            self.close()
            raise

    def _append(self, line: str, sync: bool) -> None:
        if self._fd is None:
            raise HearthError("failed-precondition", "the write store is closed")
        os.write(self._fd, line.encode())
        if sync:
            os.fsync(self._fd)

    def add(self, w: StoredWrite) -> None:
        self._append(_journal_add(w), True)

    def mark_sent(self, mutation_id: str, sent_at: float) -> None:
        self._append(json.dumps({"op": "sent", "id": mutation_id, "at": _ms(sent_at)}) + "\n", True)

    def remove(self, mutation_id: str) -> None:
        # Not synced: a `done` lost in a crash only makes the next start resend
        # an answered write, which the server answers `duplicate`.
        self._append(json.dumps({"op": "done", "id": mutation_id}) + "\n", False)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)          # releases the flock
            self._lock_fd = None


# --------------------------------------------------------------------------
# The offline read cache (PROTOCOL.md §13 "An offline read cache")
# --------------------------------------------------------------------------

VIEWS_DIR = "views"               # the subdirectory of the persistence directory holding the records
MAX_VIEW_RECORDS = 100            # records kept; the least recently saved go first
VIEW_SAVE_DELAY_S = 0.5           # a changed view is saved at most this long after the frame (coalesced)


def canonical_target(target: dict) -> str:
    """A target's canonical form: its JSON with object keys sorted and no whitespace.

    Records are found by it (hashed) and compared with it on load."""
    return json.dumps(target, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclasses.dataclass
class CachedView:
    """A cached server view: the server's documents exactly at ``resume``."""
    docs: list[dict]
    resume: str


class FileViewCache:
    """Subscription views kept in ``<persistence dir>/views``, one file per target.

    A record is ``{"target", "resume", "saved_ms", "docs"}`` (the same shape as
    the Rust client's): the server view (no pending writes) and the token of
    the last frame applied to it, which must never be mixed with another
    position's, so each record is written to a temporary file and renamed
    over the old one (``os.replace``): a reader sees a whole record, old or
    new. Records are not fsynced: an older record is still a correct pair,
    and a torn one fails to parse and is ignored. A file is named by the
    SHA-256 of the target's canonical form (:func:`canonical_target`, first
    16 bytes in hex) and holds the target, which must equal the one asked
    for. At most ``max_records`` are kept, the least recently saved removed
    first. The directory's lock (:class:`FileWriteStore`) covers it too."""

    def __init__(self, persist_dir: str, max_records: int = MAX_VIEW_RECORDS):
        self.dir = os.path.join(persist_dir, VIEWS_DIR)
        self.max_records = max_records
        os.makedirs(self.dir, exist_ok=True)
        found = []
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):        # a save a crash cut short
                try:
                    os.remove(path)
                except OSError:
                    pass
            elif name.endswith(".json"):
                try:
                    found.append((os.stat(path).st_mtime_ns, name))
                except OSError:
                    pass
        # least recently saved first (mtimes from earlier processes, then this process's saves in order)
        self._order: dict[str, None] = dict.fromkeys(name for _, name in sorted(found))

    def _name(self, target: dict) -> str:
        return hashlib.sha256(canonical_target(target).encode()).hexdigest()[:32] + ".json"

    def load(self, target: dict) -> Optional[CachedView]:
        """The cached view of exactly ``target``, or None (no record, torn, or another target's)."""
        path = os.path.join(self.dir, self._name(target))
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("unreadable cached view %s ignored: %r", path, e)
            return None
        try:
            if canonical_target(record["target"]) != canonical_target(target):
                log.warning("cached view %s is for another target; ignored", path)
                return None
            docs, resume = record["docs"], record["resume"]
            if not (isinstance(resume, str) and _position(resume) is not None and isinstance(docs, list)
                    and all(isinstance(d, dict) and isinstance(d.get("path"), str)
                            and isinstance(d.get("fields"), dict) for d in docs)):
                raise ValueError("not a view record")
        except (KeyError, TypeError, ValueError) as e:
            log.warning("malformed cached view %s ignored: %r", path, e)
            return None
        return CachedView(docs, resume)

    def save(self, target: dict, docs: list[dict], resume: str) -> None:
        """Replace ``target``'s record with ``docs`` at ``resume`` (one rename), then evict beyond the bound."""
        name = self._name(target)
        path = os.path.join(self.dir, name)
        tmp = path[:-len(".json")] + ".tmp"
        record = {"target": target, "resume": resume, "saved_ms": int(time.time() * 1000), "docs": docs}
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False))
        os.replace(tmp, path)
        self._order.pop(name, None)
        self._order[name] = None
        while len(self._order) > self.max_records:
            oldest = next(iter(self._order))
            del self._order[oldest]
            try:
                os.remove(os.path.join(self.dir, oldest))
            except OSError:
                pass

    def remove(self, target: dict) -> None:
        """Forget ``target``'s record (the server refused the subscription)."""
        name = self._name(target)
        self._order.pop(name, None)
        try:
            os.remove(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not delete the cached view %s: %r", name, e)


def clear_persistence(persist_dir: str) -> None:
    """Delete what a client keeps in ``persist_dir``: the queue of pending writes
    (they will never be sent) and the cached views, then the directory itself if
    nothing else is in it. Call it when the user signs out, after
    :meth:`HearthClient.close`: the store belongs to one signed-in user (cached
    documents are plain text). Raises :class:`HearthError`
    ``failed-precondition`` while a client uses the directory."""
    if not os.path.isdir(persist_dir):
        return
    store = FileWriteStore(persist_dir)
    store.lock()
    try:
        for name in (JOURNAL_FILE, JOURNAL_FILE + ".tmp"):
            try:
                os.remove(os.path.join(persist_dir, name))
            except FileNotFoundError:
                pass
        views = os.path.join(persist_dir, VIEWS_DIR)
        if os.path.isdir(views):
            shutil.rmtree(views)
    finally:
        store.close()
    try:
        os.remove(os.path.join(persist_dir, LOCK_FILE))
        os.rmdir(persist_dir)
    except OSError:
        pass


class Subscription:
    """A live subscription; keep it to :meth:`HearthClient.unsubscribe` later."""

    def __init__(self, client: "HearthClient", name: str, target: dict,
                 on_snapshot: Callable[[ViewSnapshot], None], on_error: Callable[[HearthError], None]):
        self.client, self.name, self.target = client, name, target
        self.on_snapshot, self.on_error = on_snapshot, on_error
        self.query = LocalQuery(target["query"]) if "query" in target else None
        self.server_view: list[dict] = []
        self.resume: Optional[str] = None       # newest token received
        self.position: Optional[int] = None     # the number in `resume`
        self.synced = False                     # a frame arrived on the current connection
        self.emitted: Optional[list[dict]] = None   # the docs of the last snapshot given to the listener
        self.reset_pending = False              # a reset snapshot arrived and was not yet reported
        self.request_id: Optional[int] = None   # the subscribe request awaiting its first frame
        self.ended = False
        self.cache_dirty = False                # a frame changed the view since its record was saved
        self.server_only = False                # no pending writes in its views (a transaction's read)
        # (server view, position) at the first break while a write touching it is in doubt: the base
        # of its local view until that write is answered (section 13); ([], None) if it did not exist then
        self.frozen: Optional[tuple[list[dict], Optional[int]]] = None

    def covers(self, path: str) -> bool:
        """Could a write to ``path`` change this subscription's view?"""
        return self.query.in_scope(path) if self.query else path == self.target["doc"]

    def local_view(self, writes: list[_PendingWrite], server_view: Optional[list[dict]] = None,
                   position: Optional[int] = -1) -> list[dict]:
        """Server view + the pending writes this subscription's position has not seen yet.

        ``server_view``/``position`` default to the live ones (a frozen base is given while in doubt)."""
        if server_view is None:
            server_view, position = self.server_view, self.position
        def out(d: dict, pending: bool = False) -> dict:
            e = {k: d[k] for k in ("path", "fields", "version", "create_time", "update_time") if k in d}
            e["pending"] = pending
            return e
        if self.server_only:
            return [out(d) for d in server_view]
        overlay = [w for w in writes if w.reads is None and
                   (w.seq is None or position is None or position < w.seq)]
        local: dict[str, Optional[dict]] = {}
        pending: set[str] = set()
        base = {d["path"]: d["fields"] for d in server_view}
        for w in overlay:
            for op in w.writes:
                p = op["path"]
                if self.covers(p):
                    if self.query and op["op"] == "merge" and p not in local and p not in base:
                        # The document may exist with fields this view never saw:
                        # the merged fields alone would be a state that never exists.
                        continue                    # left to the server (PROTOCOL.md §13)
                    local[p] = apply_write(local[p] if p in local else base.get(p), op)
                    if w.seq is None:
                        pending.add(p)
        docs = [out(d) for d in server_view if d["path"] not in local]
        for p, fields in local.items():
            if fields is None or (self.query and not self.query.matches(p, fields)):
                continue
            doc = {"path": p, "fields": fields, "pending": p in pending}
            i = 0
            if self.query:   # insert at its place, keeping the server's order for the rest
                while i < len(docs) and self.query.sort_key_cmp((docs[i]["path"], docs[i]["fields"]), (p, fields)) <= 0:
                    i += 1
            docs.insert(i, doc)
        limit = self.query.q.get("limit") if self.query else None
        if limit is not None and len(docs) > limit:
            docs = docs[-limit:] if self.query.q.get("limit_to_last") else docs[:limit]
        return docs

    async def unsubscribe(self) -> None:
        await self.client.unsubscribe(self)


# --------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------

class HearthClient:
    """A Hearth session that reconnects by itself.

    Usage::

        client = HearthClient("ws://127.0.0.1:8080/v1/ws", token=access_token)
        await client.connect()
        sub = client.subscribe({"query": {"collection": "rooms"}}, on_snapshot)
        result = await client.write([{"op": "set", "path": "rooms/r1", "data": {"n": 1}}])
    """

    def __init__(self, url: str, token: Optional[str] = None, *, encoding: str = "json",
                 backoff_base: float = 0.25, backoff_cap: float = 30.0, attempt_timeout: float = 10.0,
                 persist_dir: Optional[str] = None, max_sent_age: float = MAX_SENT_AGE_S,
                 clock: Callable[[], float] = time.time, cache_views: Optional[bool] = None,
                 view_save_delay: float = VIEW_SAVE_DELAY_S, max_cached_views: int = MAX_VIEW_RECORDS):
        """``persist_dir``: keep the queue of pending writes there across restarts
        (raises :class:`HearthError` ``failed-precondition`` if another client
        uses it). ``max_sent_age``: a write first sent longer ago (seconds) is
        failed with ``deadline-exceeded`` instead of being sent again.
        ``clock``: the wall clock for that rule (for tests).
        ``cache_views``: also keep each subscription's server view and resume
        token in ``persist_dir`` as an offline read cache (default: on when
        ``persist_dir`` is given; ``False`` turns it off). A changed view is
        saved at most ``view_save_delay`` seconds after the frame, at
        unsubscribe and at close; at most ``max_cached_views`` records are
        kept. Delete the directory at sign-out with :func:`clear_persistence`."""
        if encoding not in ("json", "msgpack"):
            raise ValueError(f"unknown encoding {encoding!r}: 'json' or 'msgpack'")
        if cache_views and persist_dir is None:
            raise ValueError("cache_views needs a persist_dir")
        self.url, self.token, self.encoding = url, token, encoding
        self.backoff_base, self.backoff_cap, self.attempt_timeout = backoff_base, backoff_cap, attempt_timeout
        self.welcome: Optional[dict] = None
        self._subs: dict[str, Subscription] = {}
        self._writes: list[_PendingWrite] = []
        self._requests: dict[int, tuple[str, Any]] = {}   # request id -> (kind, object), current connection
        self._next_id = 0
        self._next_sub = 0
        self._ws = None
        self._outbox: Optional[asyncio.Queue] = None
        self._connected = asyncio.Event()
        self._token_changed = asyncio.Event()
        self._auth_waiters: list[asyncio.Future] = []     # set_token calls waiting for the next welcome
        self._first: Optional[asyncio.Future] = None
        self._runner: Optional[asyncio.Task] = None
        self._closed = False
        self._last_sent = self._last_recv = 0.0
        self._frames_in_session = 0
        self.max_sent_age, self._clock = max_sent_age, clock
        self.restored_writes: list[tuple[str, asyncio.Future]] = []   # (mutation id, future) per restored write
        self._store: Optional[FileWriteStore] = None
        self._to_restore: Optional[list[StoredWrite]] = None
        self._views: Optional[FileViewCache] = None
        self._view_save_delay = view_save_delay
        self._view_save_handle: Optional[asyncio.TimerHandle] = None
        if persist_dir is not None:
            self._store = FileWriteStore(persist_dir)
            self._to_restore = self._store.open()
            if cache_views is not False:
                try:
                    self._views = FileViewCache(persist_dir, max_cached_views)
                except OSError as e:        # the cache is an optimisation: run without it
                    log.warning("offline read cache disabled: cannot use %s: %r", persist_dir, e)
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass                        # restored in connect(): futures need the event loop
            else:
                self._restore()

    def _restore(self) -> None:
        """Put the stored writes back in the queue, in order, before any new one
        (section 13). One that had been sent is in doubt: the server may have applied it."""
        if not self._to_restore:
            self._to_restore = None
            return
        loop = asyncio.get_running_loop()
        restored = []
        for r in self._to_restore:
            fut = loop.create_future()
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())   # nobody may await it
            restored.append(_PendingWrite(r.mutation_id, r.writes, fut, in_doubt=r.sent_at is not None,
                                          sent_at=r.sent_at, stored=True))
            self.restored_writes.append((r.mutation_id, fut))
        self._to_restore = None
        self._writes[:0] = restored
        log.info("restored %d stored write(s), %d in doubt", len(restored), sum(w.in_doubt for w in restored))
        self._refresh_all()
        self._pump_writes()

    def _unstore(self, w: _PendingWrite) -> None:
        """Drop the record of an answered write."""
        if w.stored and self._store is not None:
            w.stored = False
            try:
                self._store.remove(w.mutation_id)
            except Exception as e:  # noqa: BLE001
                log.warning("could not drop the stored write %s: %r", w.mutation_id, e)

    # ---- public API --------------------------------------------------------

    async def connect(self, timeout: float = 20.0) -> dict:
        """Start the session loop; return the first ``welcome`` (raise if the server refuses us)."""
        self._first = asyncio.get_running_loop().create_future()
        if self._to_restore is not None:
            self._restore()
        self._runner = asyncio.create_task(self._run())
        try:
            return await asyncio.wait_for(asyncio.shield(self._first), timeout)
        except BaseException:
            await self.close()
            raise

    def subscribe(self, target: dict, on_snapshot: Callable[[ViewSnapshot], None],
                  on_error: Callable[[HearthError], None] = lambda e: None,
                  *, _server_only: bool = False) -> Subscription:
        """Subscribe to ``{"doc": path}`` or ``{"query": Query}``; works offline too (sent on connect)."""
        self._next_sub += 1
        sub = Subscription(self, f"s{self._next_sub}", target, on_snapshot, on_error)
        sub.server_only = _server_only
        if self._to_restore is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass                        # restored by connect()
            else:
                self._restore()             # restored writes (some in doubt) decide what it may show
        if self._views is not None and not _server_only:
            cached = self._views.load(target)
            if cached is not None:
                # Shown at once (from_cache, pending writes on top) and resumed from its
                # token: the server's first frame is what changed since (section 13).
                sub.server_view, sub.resume, sub.position = list(cached.docs), cached.resume, _position(cached.resume)
        self._subs[sub.name] = sub
        if self._connected.is_set():
            self._send_subscribe(sub)
        self._refresh(sub)                  # pending writes may already show in it
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        """End a subscription; its listener is not called again. Its cached view is saved."""
        sub.ended = True
        if sub.cache_dirty:
            self._save_view(sub)
        if self._subs.pop(sub.name, None) is not None and self._connected.is_set():
            self._request({"type": "unsubscribe", "sub": sub.name}, "unsubscribe", sub)

    def write(self, writes: list[dict]) -> asyncio.Future:
        """Queue one atomic batch; shown in local views at once.

        Returns a future resolved with the ``CommitResult`` once the server
        acknowledged it (or failed with :class:`HearthError` if it refused)."""
        pw = _PendingWrite(str(uuid.uuid4()), writes, asyncio.get_running_loop().create_future())
        if self._to_restore is not None:
            self._restore()
        if self._store is not None:
            # durable before it is shown or sent (section 13); raises if the disk refuses
            try:
                self._store.add(StoredWrite(pw.mutation_id, writes, self._clock()))
            except HearthError:
                raise
            except Exception as e:  # noqa: BLE001
                raise HearthError("internal", f"could not store the write: {e!r}") from e
            pw.stored = True
        self._writes.append(pw)
        self._refresh_all()
        self._pump_writes()
        return pw.future

    async def run_transaction(self, fn: Callable[["Transaction"], Any], max_attempts: int = 5) -> Any:
        """Run ``await fn(tx)`` as a transaction and return its value.

        ``tx.get(path)`` reads the server's document (a dict with ``fields``
        and ``version``, or None); ``tx.write(op)`` stages a protocol Write.
        The writes commit in one ``transaction`` frame only if nothing read
        changed meanwhile; on ``aborted`` ``fn`` runs again on fresh reads."""
        for attempt in range(1, max_attempts + 1):
            tx = Transaction(self)
            value = await fn(tx)
            if not tx.writes:
                return value
            reads = [{"path": p, "version": d["version"] if d else None} for p, d in tx.reads.items()]
            pw = _PendingWrite(str(uuid.uuid4()), tx.writes, asyncio.get_running_loop().create_future(),
                               reads=reads)
            self._writes.append(pw)
            self._pump_writes()
            try:
                await pw.future
                return value
            except HearthError as e:
                if e.code != "aborted" or attempt == max_attempts:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * 2 ** attempt))

    async def _read_server(self, path: str) -> Optional[dict]:
        """The server's current document at ``path`` (None: absent), without pending writes."""
        fut = asyncio.get_running_loop().create_future()

        def on_snapshot(s: ViewSnapshot) -> None:
            if not fut.done() and not s.from_cache:
                fut.set_result(s.docs[0] if s.docs else None)

        def on_error(e: HearthError) -> None:
            if not fut.done():
                fut.set_exception(e)

        sub = self.subscribe({"doc": path}, on_snapshot, on_error, _server_only=True)
        try:
            return await fut
        finally:
            await self.unsubscribe(sub)

    async def set_token(self, token: str) -> dict:
        """Give the client a fresh credential: ``auth`` on the live socket, else used by the next hello."""
        fut = asyncio.get_running_loop().create_future()
        if self._connected.is_set():
            self._request({"type": "auth", "token": token}, "auth", (fut, token))
        else:
            self.token = token
            self._auth_waiters.append(fut)
            self._token_changed.set()
        return await fut

    async def close(self) -> None:
        """Shut down: close the socket (1000) and fail whatever still waits."""
        self._closed = True
        self._token_changed.set()
        if self._ws is not None:
            await self._ws.close()
        if self._runner:
            self._runner.cancel()
            try:
                await self._runner
            except BaseException:
                pass
        err = HearthError("unavailable", "client closed")
        if self._view_save_handle is not None:
            self._view_save_handle.cancel()
        self._save_views()                   # (the last frames' views; not fsynced)
        self._views = None
        if self._store is not None:          # stored writes stay stored: the next client sends them
            self._store.close()
            self._store = None
        for f in [w.future for w in self._writes] + self._auth_waiters + [self._first]:
            if f is not None and not f.done():
                f.set_exception(err)
                f.exception()   # mark retrieved

    # ---- connection loop ---------------------------------------------------

    async def _run(self) -> None:
        failures, first = 0, True
        while not self._closed:
            if not first:   # full jitter: random in [0, min(cap, base * 2^failures)]
                delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** failures))
                log.info("reconnecting in %.3f s (failures=%d)", delay, failures)
                await asyncio.sleep(delay)
            first = False
            try:
                ws, welcome = await asyncio.wait_for(self._open(), self.attempt_timeout)
            except _Fatal as e:
                log.warning("handshake refused (%d): %s", e.close_code, e.error)
                self._fail_handshake(e.error)
                await self._wait_for_token()
                failures, first = 0, True
                continue
            except Exception as e:          # refused, reset, timed out, bad upgrade...
                log.info("connection attempt failed: %r", e)
                failures += 1
                continue
            # A session that ends before any frame after welcome (and within
            # STABLE_SESSION) counts as a failure, or a server that drops
            # every connection right after welcome would be hammered.
            started, self._frames_in_session = time.monotonic(), 0
            code = await self._session(ws, welcome)
            if self._frames_in_session > 0 or time.monotonic() - started >= STABLE_SESSION:
                failures = 0
            else:
                failures += 1
            if code in _NO_RECONNECT and not self._closed:
                await self._wait_for_token()
                first = True

    async def _wait_for_token(self) -> None:
        """After 4001/4003: wait until the application gives a new token (set_token)."""
        self._token_changed.clear()
        await self._token_changed.wait()

    def _fail_handshake(self, err: HearthError) -> None:
        for f in self._auth_waiters + [self._first]:
            if f is not None and not f.done():
                f.set_exception(err)
        self._auth_waiters.clear()

    async def _open(self):
        """Connect, send hello, wait for welcome."""
        subprotocol = "hearth.v1.msgpack" if self.encoding == "msgpack" else "hearth.v1"
        ws = await websockets.connect(self.url, subprotocols=[subprotocol], ping_interval=None,
                                      max_size=None, close_timeout=1, open_timeout=None)
        try:
            hello = {"type": "hello", "protocol": 1, "client": CLIENT_INFO}
            if self.token:
                hello["token"] = self.token
            await ws.send(self._encode(hello))
            error = None
            while True:
                try:
                    msg = self._decode(await ws.recv())
                except websockets.ConnectionClosed as e:
                    code = _close_code(e)
                    if error is not None and code in (4000, 4001, 4003):
                        raise _Fatal(code, error)
                    raise
                if msg.get("type") == "welcome":
                    return ws, msg
                if msg.get("type") == "error":
                    error = HearthError(msg.get("code", "internal"), msg.get("message", ""), msg.get("details"))
        except BaseException:
            await ws.close()
            raise

    async def _session(self, ws, welcome: dict) -> Optional[int]:
        """Run one connection from its welcome to its end; return the close code."""
        self._ws, self.welcome, self._requests = ws, welcome, {}
        self._outbox = asyncio.Queue()
        self._last_sent = self._last_recv = time.monotonic()
        log.info("welcome: session %s uid=%s", welcome.get("session_id"), welcome.get("uid"))
        writer = asyncio.create_task(self._writer(ws, self._outbox))
        keepalive = asyncio.create_task(self._keepalive(ws, welcome))
        self._connected.set()
        # Before anything else: every subscription (with its resume token), then unacknowledged writes.
        for sub in list(self._subs.values()):
            sub.synced = False
            self._send_subscribe(sub)
        self._pump_writes()
        for f in self._auth_waiters:
            if not f.done():
                f.set_result({k: welcome.get(k) for k in ("uid", "admin", "expires_at")})
        self._auth_waiters.clear()
        if self._first and not self._first.done():
            self._first.set_result(welcome)
        code = None
        try:
            async for raw in ws:
                self._last_recv = time.monotonic()
                self._frames_in_session += 1
                try:
                    msg = self._decode(raw)
                except (TypeError, ValueError):
                    log.warning("undecodable frame ignored")
                    continue
                self._dispatch(msg)
        except websockets.ConnectionClosed as e:
            code = _close_code(e)
        else:
            code = _close_code(None, ws)
        finally:
            log.info("connection ended (close code %s)", code)
            self._connected.clear()
            self._ws = self._outbox = None
            writer.cancel()
            keepalive.cancel()
            self._requests = {}
            for w in self._writes:           # unacknowledged writes go out again on the next connection
                if w.request_id is not None and w.seq is None:
                    w.in_doubt = True        # the server may or may not have applied it
                w.request_id = None
            for sub in self._subs.values():  # the server view at the (first) break: the base while in doubt
                if sub.frozen is None:
                    sub.frozen = (list(sub.server_view), sub.position)
            self._refresh_all()              # (drops the frozen base of subscriptions no write in doubt touches)
            try:
                await ws.close()
            except Exception:
                pass
        return code

    def _encode(self, frame: dict) -> str | bytes:
        """A frame for the wire: JSON text, or a MessagePack map in a binary frame (section 1).

        Values are the same in both (typed values are the same one-key maps);
        a Python float is a float 64, an int a MessagePack integer."""
        if self.encoding == "msgpack":
            return msgpack.packb(frame, use_bin_type=True)
        return json.dumps(frame)

    def _decode(self, raw: str | bytes) -> dict:
        if self.encoding == "msgpack":
            if not isinstance(raw, (bytes, bytearray)):
                raise ValueError("a text frame on a MessagePack connection")
            msg = msgpack.unpackb(raw, raw=False)
        else:
            msg = json.loads(raw)
        if not isinstance(msg, dict):
            raise ValueError("a frame that is not an object")
        return msg

    async def _writer(self, ws, outbox: asyncio.Queue) -> None:
        try:
            while True:
                frame = await outbox.get()
                await ws.send(self._encode(frame))
                self._last_sent = time.monotonic()
        except websockets.ConnectionClosed:
            pass

    async def _keepalive(self, ws, welcome: dict) -> None:
        """Ping after heartbeat_ms of silence from us; drop the socket after idle_timeout_ms from the server."""
        hb = max(welcome.get("heartbeat_ms", 25000), 100) / 1000
        idle = max(welcome.get("idle_timeout_ms", 60000), 200) / 1000
        while True:
            await asyncio.sleep(min(hb, idle) / 4)
            now = time.monotonic()
            if now - self._last_recv > idle:
                log.warning("nothing received for %.1f s: reconnecting", idle)
                transport = getattr(ws, "transport", None)
                if transport is not None:
                    transport.abort()       # a dead peer would not answer a close handshake
                return
            if now - self._last_sent >= hb:
                self._request({"type": "ping"}, "ping", None)

    def _send(self, frame: dict) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(frame)

    def _request(self, frame: dict, kind: str, obj: Any) -> int:
        self._next_id += 1
        frame["id"] = self._next_id
        self._requests[self._next_id] = (kind, obj)
        self._send(frame)
        return self._next_id

    def _send_subscribe(self, sub: Subscription) -> None:
        frame = {"type": "subscribe", "sub": sub.name, "target": sub.target}
        if sub.resume is not None:
            frame["resume"] = sub.resume
        sub.request_id = self._request(frame, "subscribe", sub)

    def _pump_writes(self) -> None:
        """Send unacknowledged writes, oldest first, up to limits.max_inflight_writes."""
        if not self._connected.is_set():
            return
        limit = self.welcome.get("limits", {}).get("max_inflight_writes", 32)
        now = self._clock()
        # A write first sent more than max_sent_age ago may have been applied and its
        # mutation record may be gone (24 h, section 7): a resend could apply it twice.
        # One never sent is safe to send however old it is.
        stale = [w for w in self._writes if w.seq is None and w.request_id is None
                 and w.sent_at is not None and now - w.sent_at > self.max_sent_age]
        for w in stale:
            log.warning("dropping write %s: first sent %.1f h ago and never answered; the server may have "
                        "forgotten its mutation id, so a resend could apply it twice",
                        w.mutation_id, (now - w.sent_at) / 3600)
            self._writes.remove(w)
            self._unstore(w)
            if not w.future.done():
                w.future.set_exception(HearthError(
                    "deadline-exceeded", "the write was first sent longer ago than max_sent_age and never "
                    "answered; the server would no longer recognise its mutation id, so it was not sent again"))
        if stale:
            self._refresh_all()
        inflight = sum(1 for w in self._writes if w.request_id is not None and w.seq is None)
        for w in self._writes:
            if inflight >= limit:
                break
            if w.seq is None and w.request_id is None and w.retry_at > time.monotonic():
                # The server applies a connection's writes in the order they
                # arrive (PROTOCOL.md §7): nothing newer overtakes a write
                # waiting to be resent.
                break
            if w.seq is None and w.request_id is None and w.retry_at <= time.monotonic():
                if w.sent_at is None:
                    w.sent_at = now
                    if w.stored and self._store is not None:
                        try:     # durably recorded as sent (and when) before it goes on the wire
                            self._store.mark_sent(w.mutation_id, now)
                        except Exception as e:  # noqa: BLE001
                            log.warning("could not record that write %s is sent: %r; retrying", w.mutation_id, e)
                            w.sent_at = None
                            w.retry_at = time.monotonic() + 1.0
                            asyncio.get_running_loop().call_later(1.0, self._pump_writes)
                            continue
                frame = {"type": "write", "mutation_id": w.mutation_id, "writes": w.writes}
                if w.reads is not None:
                    frame.update(type="transaction", reads=w.reads)
                w.request_id = self._request(frame, "write", w)
                inflight += 1

    # ---- incoming frames ---------------------------------------------------

    def _dispatch(self, msg: dict) -> None:
        t = msg.get("type")
        if t in ("snapshot", "changes"):
            sub = self._subs.get(msg.get("sub"))
            if sub is not None:
                self._on_view_frame(sub, msg)
        elif t == "ping":
            self._send({"type": "pong", "id": msg.get("id")})
        elif t == "write_ok":
            kind, w = self._requests.pop(msg.get("id"), (None, None))
            if kind == "write":
                self._on_write_ok(w, msg)
        elif t == "auth_ok":
            kind, obj = self._requests.pop(msg.get("id"), (None, None))
            if kind == "auth":
                fut, token = obj
                self.token = token
                if not fut.done():
                    fut.set_result({k: msg.get(k) for k in ("uid", "admin", "expires_at")})
        elif t == "unsubscribed":
            self._requests.pop(msg.get("id"), None)
        elif t == "pong":
            self._requests.pop(msg.get("id"), None)
        elif t == "error":
            self._on_error(msg)
        # welcome twice or an unknown type: ignored (section 2)

    def _on_view_frame(self, sub: Subscription, msg: dict) -> None:
        if sub.request_id is not None:          # the first frame answers the subscribe
            self._requests.pop(sub.request_id, None)
            sub.request_id = None
        if msg["type"] == "snapshot":
            sub.server_view = list(msg["docs"])     # replaces the view, reset or not
            sub.reset_pending |= bool(msg.get("reset"))
        else:
            sub.server_view = apply_changes(sub.server_view, msg["changes"])
        sub.resume = msg["resume"]
        sub.position = _position(msg["resume"])
        sub.synced = True
        self._view_changed(sub)
        self._prune_acknowledged()
        self._refresh(sub)

    def _on_write_ok(self, w: _PendingWrite, msg: dict) -> None:
        w.seq = msg["result"]["seq"]
        w.request_id, w.in_doubt = None, False
        self._unstore(w)
        if not w.future.done():
            w.future.set_result(msg["result"])
        asyncio.get_running_loop().call_later(ACK_GRACE_S, self._drop_write, w)
        self._prune_acknowledged()
        self._refresh_all()
        self._pump_writes()

    def _on_error(self, msg: dict) -> None:
        err = HearthError(msg.get("code", "internal"), msg.get("message", ""), msg.get("details"))
        if "id" in msg:
            kind, obj = self._requests.pop(msg["id"], (None, None))
            if kind == "subscribe":
                self._end_sub(obj, err)
            elif kind == "write" and err.code == "unavailable":
                # The server cannot take writes for now (shutting down, or its
                # storage failed until a restart, section 7): keep it queued and
                # resend it, same mutation id, after a backoff.
                obj.request_id = None
                obj.unavailable += 1
                delay = max(self.backoff_base / 2,
                            random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** obj.unavailable)))
                obj.retry_at = time.monotonic() + delay
                asyncio.get_running_loop().call_later(delay, self._pump_writes)
            elif kind == "write":      # refused: leaves the queue, the view falls back
                self._unstore(obj)
                self._drop_write(obj)
                if not obj.future.done():
                    obj.future.set_exception(err)
                self._pump_writes()
            elif kind == "auth":       # the session keeps its current credential
                if not obj[0].done():
                    obj[0].set_exception(err)
            else:
                log.warning("error for request %s (%s): %s", msg["id"], kind, err)
        elif "sub" in msg:
            if msg["sub"] in self._subs:
                self._end_sub(self._subs[msg["sub"]], err)
        else:
            log.warning("server error: %s", err)

    def _end_sub(self, sub: Subscription, err: HearthError) -> None:
        """The server ended a subscription (section 3): tell the application once."""
        if self._subs.get(sub.name) is sub:
            del self._subs[sub.name]
        sub.request_id = None
        if self._views is not None and not sub.server_only:
            # A refused subscription (permission-denied, say) keeps nothing it may no longer read.
            sub.cache_dirty = False
            self._views.remove(sub.target)
        if not sub.ended:
            sub.ended = True
            sub.on_error(err)

    # ---- the offline read cache ----------------------------------------------

    def _view_changed(self, sub: Subscription) -> None:
        """A frame changed ``sub``'s server view: save its record soon (frames of that delay coalesce)."""
        if self._views is None or sub.server_only:
            return
        sub.cache_dirty = True
        if self._view_save_handle is None:
            self._view_save_handle = asyncio.get_running_loop().call_later(self._view_save_delay, self._save_views)

    def _save_views(self) -> None:
        self._view_save_handle = None
        for sub in list(self._subs.values()):
            if sub.cache_dirty:
                self._save_view(sub)

    def _save_view(self, sub: Subscription) -> None:
        """One record: the server view and the token of the last frame applied to it."""
        sub.cache_dirty = False
        if self._views is None or sub.resume is None:
            return
        try:
            self._views.save(sub.target, sub.server_view, sub.resume)
        except (OSError, TypeError, ValueError) as e:
            log.warning("could not save the cached view of %s: %r", sub.name, e)

    # ---- pending-write bookkeeping and view emission ----------------------

    def _drop_write(self, w: _PendingWrite) -> None:
        if w in self._writes:
            self._writes.remove(w)
            self._refresh_all()

    def _prune_acknowledged(self) -> None:
        """Drop acknowledged writes that every subscription they touch has caught up with."""
        for w in [w for w in self._writes if w.seq is not None]:
            touched = [s for s in self._subs.values() if w.reads is None and not s.server_only
                       and any(s.covers(op["path"]) for op in w.writes)]
            if all(s.position is not None and s.position >= w.seq
                   and (s.frozen is None or (s.frozen[1] is not None and s.frozen[1] >= w.seq)) for s in touched):
                self._writes.remove(w)

    def _refresh_all(self) -> None:
        for sub in list(self._subs.values()):
            self._refresh(sub)

    def _refresh(self, sub: Subscription) -> None:
        """Recompute the local view; call the listener if it changed (or on the first frame / a reset)."""
        if sub.ended:
            return
        if not sub.server_only and any(w.in_doubt and w.reads is None and any(sub.covers(op["path"]) for op in w.writes)
                                       for w in self._writes):
            # A write whose answer was lost may already be in the server view (a resumed frame can
            # carry its commit before the duplicate write_ok arrives): overlaying it again would
            # count it twice. Until its answer tells us its seq, build the view on the server view
            # as it was at the break (which cannot contain it), with every pending write on top;
            # a subscription that did not exist then (or after a restart) starts from nothing.
            # A cached view is no such base either: its record may have been saved after the
            # write's commit reached it (section 13, "An offline read cache").
            if sub.frozen is None:
                sub.frozen = ([], None)
            docs = sub.local_view(self._writes, *sub.frozen)
            known = sub.frozen[1] is not None
        else:
            sub.frozen = None
            docs = sub.local_view(self._writes)
            known = sub.resume is not None         # a frame, or a cached view, says what the server holds
        if sub.emitted is None:
            if not known and not docs:
                return                              # nothing to show before the first frame
        elif docs == sub.emitted and not sub.reset_pending:
            return
        changes = diff_views(sub.emitted or [], docs)
        sub.emitted, reset, sub.reset_pending = docs, sub.reset_pending, False
        sub.on_snapshot(ViewSnapshot(docs, changes, any(d["pending"] for d in docs),
                                     from_cache=not sub.synced, reset=reset))


class Transaction:
    """One attempt of :meth:`HearthClient.run_transaction`: all reads, then writes."""

    def __init__(self, client: HearthClient):
        self.client = client
        self.reads: dict[str, Optional[dict]] = {}
        self.writes: list[dict] = []

    async def get(self, path: str) -> Optional[dict]:
        if path not in self.reads:
            if self.writes:
                raise HearthError("invalid-argument", "a transaction must do all its reads before its writes")
            self.reads[path] = await self.client._read_server(path)
        return self.reads[path]

    def write(self, op: dict) -> None:
        self.writes.append(op)


def _position(token: str) -> Optional[int]:
    """The changelog position in a resume token ``"p<seq>"`` (section 6)."""
    return int(token[1:]) if token.startswith("p") and token[1:].isdigit() else None


def _close_code(e: Optional[Exception], ws: Any = None) -> Optional[int]:
    rcvd = getattr(e, "rcvd", None) if e is not None else getattr(ws, "close_code", None)
    if isinstance(rcvd, int):
        return rcvd
    return getattr(rcvd, "code", None)
