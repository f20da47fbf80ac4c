"""Conformance driver for the Python reference client (sdk-spec/conformance/CLIENT.md).

Reads JSON commands on stdin, writes JSON replies and events on stdout (one
object per line); logs go to stderr.  Commands are handled in arrival order;
those that wait for the server (``write``, ``set_token``) are answered from a
task so that the next command is read at once.
"""

import asyncio
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hearth_client import HearthClient, HearthError, ViewSnapshot  # noqa: E402

log = logging.getLogger("driver")


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def reply_error(cid, e: BaseException) -> None:
    if isinstance(e, HearthError):
        emit({"id": cid, "error": {"code": e.code, "message": e.message}})
    elif isinstance(e, asyncio.TimeoutError):
        emit({"id": cid, "error": {"code": "unavailable", "message": "timed out"}})
    else:
        emit({"id": cid, "error": {"code": "internal", "message": repr(e)}})


class Driver:
    def __init__(self):
        self.client = None
        self.subs = {}            # harness label -> Subscription
        self.tasks = set()

    def spawn(self, cid, coro, on_ok):
        async def run():
            try:
                emit({"id": cid, "ok": on_ok(await coro)})
            except BaseException as e:  # noqa: BLE001 - every command gets one reply
                reply_error(cid, e)
        t = asyncio.create_task(run())
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def handle(self, cmd: dict) -> bool:
        """Handle one command; return False after ``close``."""
        cid, name = cmd.get("id"), cmd.get("cmd")
        try:
            if name == "connect":
                # persist_dir: keep the queue of pending writes there across restarts (PROTOCOL.md §13).
                # A store still locked is retried for up to 5 s: the harness kills the previous
                # driver's process group (SIGKILL) and starts this one at once, having waited only
                # for the shell it started, so the killed driver may hold the lock a moment longer.
                # cache_views: true keeps the subscriptions' views in that store as an offline read
                # cache (§13); it needs persist_dir. Without it (or false) the cache is off, so the
                # other checks run as the harness describes them.
                cache_views = cmd.get("cache_views") is True
                if cache_views and not cmd.get("persist_dir"):
                    raise HearthError("unimplemented", "cache_views needs persist_dir")
                deadline = asyncio.get_running_loop().time() + 5
                while True:
                    try:
                        self.client = HearthClient(cmd["url"], cmd.get("token"),
                                                   encoding="msgpack" if cmd.get("encoding") == "msgpack" else "json",
                                                   persist_dir=cmd.get("persist_dir"), cache_views=cache_views)
                        break
                    except HearthError as e:
                        if e.code != "failed-precondition" or asyncio.get_running_loop().time() > deadline:
                            raise
                        log.warning("store locked, retrying: %s", e.message)
                        await asyncio.sleep(0.1)
                await self.client.connect()
                emit({"id": cid, "ok": {}})
            elif name == "subscribe":
                label = cmd["sub"]

                def on_snapshot(s: ViewSnapshot, label=label):
                    emit({"event": "snapshot", "sub": label, "docs": s.docs, "changes": s.changes,
                          "has_pending_writes": s.has_pending_writes, "from_cache": s.from_cache,
                          "reset": s.reset})

                def on_error(e: HearthError, label=label):
                    emit({"event": "sub_error", "sub": label, "code": e.code, "message": e.message})

                self.subs[label] = self.client.subscribe(cmd["target"], on_snapshot, on_error)
                emit({"id": cid, "ok": {}})
            elif name == "unsubscribe":
                sub = self.subs.pop(cmd["sub"], None)
                if sub is None:
                    raise HearthError("not-found", f"no subscription {cmd['sub']!r}")
                await sub.unsubscribe()
                emit({"id": cid, "ok": {}})
            elif name == "write":
                fut = self.client.write(cmd["writes"])      # queued and shown before we read on
                self.spawn(cid, fut, lambda result: {"result": result})
            elif name == "transaction_increment":
                path, field = cmd["path"], cmd["field"]

                async def increment(tx):
                    doc = await tx.get(path)
                    current = doc["fields"].get(field) if doc else None
                    value = current + 1 if isinstance(current, int) and not isinstance(current, bool) else 1
                    tx.write({"op": "merge", "path": path, "fields": {field: value}})
                    return value

                self.spawn(cid, self.client.run_transaction(increment), lambda v: {"value": v})
            elif name == "set_token":
                self.spawn(cid, self.client.set_token(cmd["token"]), lambda r: {})
            elif name == "close":
                if self.client:
                    await self.client.close()
                emit({"id": cid, "ok": {}})
                return False
            else:
                raise HearthError("unimplemented", f"unknown command {name!r}")
        except Exception as e:  # noqa: BLE001
            reply_error(cid, e)
        return True


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    driver = Driver()
    while True:
        line = await reader.readline()
        if not line:
            break
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
        except ValueError:
            log.error("not JSON: %r", line)
            continue
        log.info("command %s", cmd.get("cmd"))
        if not await driver.handle(cmd):
            break
    if driver.client:
        await driver.client.close()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    asyncio.run(main())
