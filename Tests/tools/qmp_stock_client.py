#!/usr/bin/env python3
"""Drives ringbackd with the stock QEMU QMP client library, qemu.qmp
(DESIGN.md §12: "a stock QMP client must be able to drive every command").
Run it with the interpreter of the venv that scripts/setup.sh makes:

    /opt/ringback-test-venv/bin/python Tests/tools/qmp_stock_client.py SOCKET \\
        --node /dev/loopN --target /path/backup.qcow2 [--stage basics|transaction]

It holds qemu-storage-daemon to the same checks (--node NODE-NAME --size BYTES),
which is how its expectations are known to be QEMU's.

basics: negotiation, query-version, query-commands, errors as ExecuteError,
and a dirty bitmap added, seen in query-block and removed.

transaction: QEMU's semantics for a transaction of block-dirty-bitmap-add and
drive-backup (DESIGN §9, §10): JOB_STATUS_CHANGE created → running → waiting
→ pending → concluded, BLOCK_JOB_COMPLETED {type, device: job id, len, offset,
speed}, query-jobs showing the concluded job until job-dismiss (then null and
an empty list), and the new bitmap clean (count 0) in query-block.

Every event must carry a QMP timestamp. Any mismatch exits 1 with a message
that says what was expected and what came; success prints "ok" lines.
"""

import argparse
import asyncio
import os
import sys

from qemu.qmp import ExecuteError, QMPClient

STATUSES = ["created", "running", "waiting", "pending", "concluded"]   # DESIGN §9
EVENT_WAIT = 300          # seconds; only so that a lost event fails instead of hanging


class Mismatch(Exception):
    """What ringbackd did differs from what QEMU's protocol says."""


def expect(condition, message):
    if not condition:
        raise Mismatch(message)


def without_pauses(statuses):
    """The statuses with each paused -> running step taken out: QEMU pauses a
    job while the transaction that made it drains its nodes."""
    out = []
    for status in statuses:
        if status == "running" and out[-1:] == ["paused"]:
            out.pop()
        else:
            out.append(status)
    return out


def check_timestamp(event):
    stamp = event.get("timestamp")
    expect(isinstance(stamp, dict) and isinstance(stamp.get("seconds"), int)
           and isinstance(stamp.get("microseconds"), int) and 0 <= stamp["microseconds"] < 1_000_000
           and stamp["seconds"] > 0,
           f"event {event.get('event')} has no valid QMP timestamp: {dict(event)}")


def device_size(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


async def bitmaps_of(qmp, node, commands):
    """The dirty-bitmaps list query-block reports for a node (None if absent).
    A node that has no device, as in qemu-storage-daemon, is looked up with
    query-named-block-nodes instead."""
    block = await qmp.execute("query-block")
    expect(isinstance(block, list), f"query-block returned {block!r}")
    for entry in block:
        if entry.get("device") == node or entry.get("node-name") == node:
            return entry.get("dirty-bitmaps", [])
    if "query-named-block-nodes" in commands:
        for entry in await qmp.execute("query-named-block-nodes"):
            if entry.get("node-name") == node:
                return entry.get("dirty-bitmaps", [])
    return None


async def expect_error(qmp, command, arguments, error_class, words):
    try:
        result = await qmp.execute(command, arguments)
    except ExecuteError as e:
        expect(e.error_class == error_class, f"{command}: error class {e.error_class}, expected {error_class}")
        expect(words in str(e), f"{command}: error '{e}' does not say '{words}'")
        return
    raise Mismatch(f"{command} {arguments} succeeded ({result!r}); expected {error_class}")


async def basics(qmp, args, commands):
    version = await qmp.execute("query-version")
    qemu = version.get("qemu", {}) if isinstance(version, dict) else {}
    expect(all(isinstance(qemu.get(k), int) for k in ("major", "minor", "micro"))
           and isinstance(version.get("package"), str), f"query-version returned {version!r}")
    print(f"ok: query-version {qemu['major']}.{qemu['minor']}.{qemu['micro']} {version['package']}")
    needed = {"qmp_capabilities", "query-version", "query-commands", "query-block", "block-dirty-bitmap-add",
              "block-dirty-bitmap-remove", "drive-backup"}
    expect(needed <= commands, f"query-commands lacks {sorted(needed - commands)}")
    print(f"ok: query-commands lists {len(commands)} commands")

    await expect_error(qmp, "x-no-such-command", None, "CommandNotFound", "x-no-such-command")
    name = "stock-basics"
    await qmp.execute("block-dirty-bitmap-add", {"node": args.node, "name": name, "granularity": 65536})
    await expect_error(qmp, "block-dirty-bitmap-add", {"node": args.node, "name": name}, "GenericError", name)
    bitmaps = await bitmaps_of(qmp, args.node, commands)
    expect(bitmaps is not None, f"query-block does not list {args.node} after block-dirty-bitmap-add")
    mine = [b for b in bitmaps if b.get("name") == name]
    expect(len(mine) == 1 and mine[0].get("count") == 0 and mine[0].get("granularity") == 65536
           and mine[0].get("recording") is True, f"query-block shows {bitmaps!r}")
    await qmp.execute("block-dirty-bitmap-remove", {"node": args.node, "name": name})
    after = await bitmaps_of(qmp, args.node, commands)
    expect(not any(b.get("name") == name for b in after or []), f"bitmap still listed after remove: {after!r}")
    print("ok: block-dirty-bitmap-add, query-block, block-dirty-bitmap-remove")


async def next_event(listener, waiting_for):
    try:
        return await asyncio.wait_for(listener.get(), EVENT_WAIT)
    except asyncio.TimeoutError:
        raise Mismatch(f"no event within {EVENT_WAIT} s while waiting for {waiting_for}") from None


async def transaction(qmp, args, commands):
    needed = {"transaction", "query-jobs", "job-dismiss"}
    expect(needed <= commands, f"query-commands lacks {sorted(needed - commands)} (the job model)")
    job, name = "stock-backup", "stock-bitmap"
    size = args.size if args.size is not None else device_size(args.node)
    statuses, completed, pending_event, others = [], None, None, []
    with qmp.listener() as listener:
        result = await qmp.execute("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": args.node, "name": name}},
            {"type": "drive-backup", "data": {"device": args.node, "target": args.target, "sync": "full",
                                               "job-id": job, "format": "qcow2", "auto-dismiss": False}},
        ]})
        expect(result == {}, f"transaction returned {result!r}, expected {{}}")
        while "concluded" not in statuses or completed is None:
            event = await next_event(listener, "the job to conclude and BLOCK_JOB_COMPLETED")
            check_timestamp(event)
            data = event.get("data", {})
            if event["event"] == "JOB_STATUS_CHANGE" and data.get("id") == job:
                statuses.append(data.get("status"))
            elif event["event"] == "BLOCK_JOB_COMPLETED" and data.get("device") == job:
                expect(completed is None, f"a second BLOCK_JOB_COMPLETED: {dict(event)}")
                completed = data
            elif event["event"] == "BLOCK_JOB_PENDING" and data.get("id") == job:
                # QEMU sends it only for jobs with auto-finalize false; if sent, it is well-formed.
                pending_event = data
            else:
                others.append(event["event"])
            expect(statuses[-1:] != ["aborting"] and statuses[-1:] != ["null"],
                   f"job statuses {statuses}, expected {STATUSES}")
        expect(without_pauses(statuses) == STATUSES, f"job statuses {statuses}, expected {STATUSES} "
               "(with running -> paused -> running allowed, as QEMU drains jobs in a transaction)")
        print(f"ok: JOB_STATUS_CHANGE {' -> '.join(statuses)}")
        expect(completed.get("type") == "backup" and "error" not in completed
               and completed.get("len") == size and completed.get("offset") == size
               and completed.get("speed") == 0,
               f"BLOCK_JOB_COMPLETED data {completed!r}, expected type backup, device {job}, "
               f"len = offset = {size}, speed 0, no error")
        print(f"ok: BLOCK_JOB_COMPLETED len {size} offset {size}")
        if pending_event is not None:
            expect(pending_event == {"type": "backup", "id": job}, f"BLOCK_JOB_PENDING data {pending_event!r}")

        jobs = await qmp.execute("query-jobs")
        expect(isinstance(jobs, list) and len(jobs) == 1, f"query-jobs returned {jobs!r}, expected our one job")
        info = jobs[0]
        expect(info.get("id") == job and info.get("type") == "backup" and info.get("status") == "concluded"
               and info.get("current-progress") == size and info.get("total-progress") == size
               and "error" not in info,
               f"query-jobs entry {info!r}, expected {job} backup concluded with progress {size}/{size}")
        print("ok: query-jobs shows the job concluded")
        await expect_error(qmp, "job-finalize", {"id": job}, "GenericError", "cannot accept command verb 'finalize'")

        dismissed = await qmp.execute("job-dismiss", {"id": job})
        expect(dismissed == {}, f"job-dismiss returned {dismissed!r}")
        event = await next_event(listener, "JOB_STATUS_CHANGE null after job-dismiss")
        check_timestamp(event)
        expect(event["event"] == "JOB_STATUS_CHANGE" and event["data"] == {"id": job, "status": "null"},
               f"after job-dismiss: {dict(event)}, expected JOB_STATUS_CHANGE {job} null")
    jobs = await qmp.execute("query-jobs")
    expect(jobs == [], f"query-jobs after job-dismiss returned {jobs!r}")
    print("ok: job-dismiss, JOB_STATUS_CHANGE null, query-jobs empty")

    bitmaps = await bitmaps_of(qmp, args.node, commands)
    mine = [b for b in bitmaps or [] if b.get("name") == name]
    expect(len(mine) == 1 and mine[0].get("count") == 0 and mine[0].get("busy") is False,
           f"query-block shows {bitmaps!r}, expected bitmap {name} with count 0, not busy")
    print(f"ok: query-block shows {name} with count 0")
    if others:
        print(f"note: other events on the way: {sorted(set(others))}")
    await qmp.execute("block-dirty-bitmap-remove", {"node": args.node, "name": name})


async def run(args):
    qmp = QMPClient("ringback-stock-client")
    await qmp.connect(args.socket)          # greeting and qmp_capabilities
    try:
        greeting = qmp.greeting
        expect(greeting is not None and isinstance(greeting.QMP.capabilities, list),
               f"no usable greeting: {greeting!r}")
        print("ok: greeting and capabilities negotiation")
        listed = await qmp.execute("query-commands")
        expect(isinstance(listed, list) and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in listed),
               f"query-commands returned {listed!r}")
        commands = {c["name"] for c in listed}
        await basics(qmp, args, commands)
        if args.stage == "transaction":
            await transaction(qmp, args, commands)
    finally:
        await qmp.disconnect()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("socket")
    p.add_argument("--node", required=True, help="the block device (a loop device)")
    p.add_argument("--target", help="where drive-backup writes its qcow2 image (transaction stage)")
    p.add_argument("--stage", choices=["basics", "transaction"], default="transaction")
    p.add_argument("--size", type=int, help="the node's size in bytes, when --node is a node name, not a path")
    args = p.parse_args()
    if args.stage == "transaction" and not args.target:
        p.error("--target is needed for the transaction stage")
    try:
        asyncio.run(run(args))
    except Mismatch as e:
        print(f"qmp_stock_client: MISMATCH: {e}", file=sys.stderr)
        return 1
    except ExecuteError as e:
        print(f"qmp_stock_client: MISMATCH: {e.sent.get('execute')} failed: {e.error_class}: {e}", file=sys.stderr)
        return 1
    except Exception as e:                # connection or protocol errors of the library
        print(f"qmp_stock_client: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"qmp_stock_client: {args.stage}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
