#!/usr/bin/env python3
"""Fuzzes ringbackd's QMP socket with malformed, truncated, wrongly typed and
oversized messages (DESIGN.md §12: "the daemon never dies from client input").

Every message must get a well-formed error reply (with the id echoed when the
message parsed and carried one) or cost the sender its own connection, while a
second, long-lived client keeps getting correct answers to query-version, the
daemon's resident memory stays under a bound, and it leaks neither threads nor
file descriptors.

What the server is expected to send for a byte stream follows QMP framing (the
brace counting of QEMU's json-streamer, which ringbackd's splitter mirrors):
every complete top-level object gets exactly one reply, in order; a top-level
byte that cannot start an object gets one error and the connection is closed;
an object over the size limit likewise; an unfinished object waits for more
and is dropped when the client closes.

Standard library only. Reproduce a failure with the seed it prints:

    python3 Tests/tools/qmp_fuzz.py --socket S --pid P --node /dev/loopN --seed SEED

The last line is `RESULT {json}` with the figures a caller asserts on. The
cases themselves are made in qmp_fuzz_cases.py.
"""

import argparse
import json
import math
import os
import random
import re
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True          # leave no __pycache__ in the source tree
from qmp_fuzz_cases import LIMIT, Generator  # noqa: E402  (after the line above)

REPLY_TIMEOUT = 60       # a hung daemon fails the run instead of hanging it
NESTING_ACCEPTED = 256   # messages nested up to this deep must parse (QEMU allows 1024)


class Failure(Exception):
    """A reply (or a missing one) that breaks the protocol's promise."""


# MARK: framing and the oracle

OUTSIDE = re.compile(rb'[{}\[\]",]')     # bytes that matter between strings
INSIDE = re.compile(rb'["\\]')          # bytes that matter inside one
LEADING = re.compile(rb"[ \t\r\n]*")


def tokens(data, start=0):
    """(offset, byte) of each structural byte outside strings: brackets, commas
    and the quote that opens a string. Strings are skipped, escapes honoured;
    an unterminated string ends the scan."""
    i = start
    while True:
        m = OUTSIDE.search(data, i)
        if not m:
            return
        i = m.start()
        c = data[i]
        yield i, c
        i += 1
        if c == 0x22:
            while True:
                m = INSIDE.search(data, i)
                if not m:
                    return
                i = m.end()
                if data[m.start()] == 0x22:
                    break
                i += 1                  # the escaped byte


def frame(data, limit=LIMIT):
    """Splits bytes as QMP framing does. Returns (objects, tail): tail is None
    when the stream ends between objects, 'partial' inside an unfinished one,
    'garbage' at a byte that cannot start an object, 'oversize' past the limit."""
    objects, i, n = [], 0, len(data)
    while True:
        i = LEADING.match(data, i).end()
        if i == n:
            return objects, None
        if data[i] != ord("{"):
            return objects, "garbage"
        start, depth, end = i, 0, None
        for j, c in tokens(data, i):
            if c in b"{[":
                depth += 1
            elif c in b"}]":
                depth -= 1
                if depth == 0:
                    end = j + 1
                    break
        if end is None:
            return objects, ("oversize" if n - start > limit else "partial")
        if end - start > limit:
            return objects, "oversize"
        objects.append(data[start:end])
        i = end


ABSENT = object()   # the reply must carry no id
MAYBE = object()    # the reply may carry the id or none


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def strict_parse(raw):
    """RFC 8259 JSON or ValueError: UTF-8 only, no NaN/Infinity, no numbers
    that overflow a double, no lone surrogates."""
    value = json.loads(raw.decode("utf-8"), parse_float=_finite, parse_constant=_reject_constant)
    json.dumps(value, ensure_ascii=False).encode("utf-8")   # lone surrogates raise here
    return value


def without_trailing_commas(raw):
    """The text with each comma that directly precedes a closing bracket (outside
    strings) removed: Foundation's JSONDecoder accepts `[1,]` and `{"a":1,}`."""
    drop = [i for i, c in tokens(raw) if c == 0x2C and raw[LEADING.match(raw, i + 1).end():][:1] in (b"}", b"]")]
    out, last = bytearray(), 0
    for i in drop:
        out += raw[last:i]
        last = i + 1
    return bytes(out + raw[last:])


def nesting(raw):
    """The deepest nesting of brackets outside strings."""
    depth = deepest = 0
    for _, c in tokens(raw):
        if c in b"{[":
            depth += 1
            deepest = max(deepest, depth)
        elif c in b"}]":
            depth -= 1
    return deepest


def expected_id(raw):
    """The id the reply must carry: the message's own when it parses as an
    object with one, none when it does not parse; MAYBE when it parses only
    with trailing commas, which the daemon's parser tolerates, or is nested
    deeper than NESTING_ACCEPTED, where a parser may stop."""
    for text, outcome in ((raw, None), (without_trailing_commas(raw), MAYBE)):
        try:
            message = strict_parse(text)
        except (ValueError, UnicodeError, RecursionError):
            continue
        if nesting(raw) > NESTING_ACCEPTED:
            outcome = MAYBE
        if not isinstance(message, dict) or "id" not in message:
            return ABSENT
        return message["id"] if outcome is None else (MAYBE, message["id"])
    return ABSENT


def check_error(reply, want_id, want_class=None):
    """A reply is a well-formed QMP error: {"error": {"class", "desc"}}, id as sent."""
    if not isinstance(reply, dict) or "return" in reply:
        raise Failure(f"expected an error reply, got {short(reply)}")
    error = reply.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("class"), str) \
            or not isinstance(error.get("desc"), str) or not error["class"] or not error["desc"]:
        raise Failure(f"malformed error reply {short(reply)}")
    if want_class and error["class"] != want_class:
        raise Failure(f"expected error class {want_class}, got {short(reply)}")
    check_id(reply, want_id)


def check_id(reply, want_id):
    if isinstance(want_id, tuple) and want_id and want_id[0] is MAYBE:
        if "id" in reply:
            check_id(reply, want_id[1])
        return
    if want_id is ABSENT:
        if "id" in reply:
            raise Failure(f"reply carries an id the message did not have: {short(reply)}")
    elif "id" not in reply or reply["id"] != want_id or (type(reply["id"]) is bool) != (type(want_id) is bool):
        raise Failure(f"reply does not echo id {short(want_id)}: {short(reply)}")


def short(value, n=300):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


# MARK: connections

class Connection:
    """One client connection; reads CRLF-terminated JSON lines and validates
    the greeting. Events on the way are checked and set aside."""

    def __init__(self, path, negotiate=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.connect(path)
        self.buffer = b""
        self.events = 0
        self.sender, self.sender_error = None, None
        greeting = self.receive()
        qmp = greeting.get("QMP") if isinstance(greeting, dict) else None
        if not isinstance(qmp, dict) or not isinstance(qmp.get("capabilities"), list) \
                or not isinstance(qmp.get("version", {}).get("qemu"), dict):
            raise Failure(f"bad greeting {short(greeting)}")
        if negotiate:
            self.send(b'{"execute": "qmp_capabilities", "id": "negotiate"}')
            reply = self.receive()
            if reply != {"return": {}, "id": "negotiate"}:
                raise Failure(f"qmp_capabilities answered {short(reply)}")

    def send(self, data, pieces=None):
        """Sends data, in the given pieces if any. A large payload is sent from
        another thread: the daemon answers while it reads, and a client that
        stopped reading until it had written everything would deadlock with it."""
        def write():
            for a, b in zip(pieces or [0], (pieces or [0, len(data)])[1:]):
                self.sock.sendall(data[a:b])
        self.sender, self.sender_error = None, None
        if len(data) < 1 << 15:
            write()
            return

        def guarded():
            try:
                write()
            except OSError as e:     # the daemon may close first (oversize, garbage)
                self.sender_error = e
        self.sender = threading.Thread(target=guarded, daemon=True)
        self.sender.start()

    def sent(self):
        """Waits for a background send to finish."""
        if self.sender:
            self.sender.join()
            self.sender = None

    def receive(self):
        """The next message that is not an event; None at end of stream."""
        while True:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    if self.buffer:
                        raise Failure(f"connection closed inside a reply: {short(self.buffer)}")
                    return None
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            if not line.endswith(b"\r"):
                raise Failure(f"reply not terminated by CRLF: {short(line)}")
            try:
                message = json.loads(line[:-1].decode("utf-8"))
            except (ValueError, UnicodeError) as e:
                raise Failure(f"reply is not JSON ({e}): {short(line)}") from None
            if not isinstance(message, dict):
                raise Failure(f"reply is not an object: {short(message)}")
            if "event" in message:
                stamp = message.get("timestamp", {})
                if not isinstance(stamp.get("seconds"), int) or not isinstance(stamp.get("microseconds"), int):
                    raise Failure(f"event without a QMP timestamp: {short(message)}")
                self.events += 1
                continue
            return message

    def expect_closed(self):
        """After a half-close: nothing more but the end of the stream."""
        extra = self.receive()
        if extra is not None:
            raise Failure(f"expected the connection to close, got {short(extra)}")

    def close(self):
        self.sock.close()


class VersionProbe:
    """The long-lived client: query-version must keep returning what it
    returned first."""

    def __init__(self, path, name):
        self.conn = Connection(path)
        self.name = name
        self.answers = 0
        self.expected = None

    def ask(self):
        self.answers += 1
        ident = f"{self.name}-{self.answers}"
        self.conn.send(json.dumps({"execute": "query-version", "id": ident}).encode())
        reply = self.conn.receive()
        if reply is None:
            raise Failure(f"{self.name}: the daemon closed the long-lived connection")
        if reply.get("id") != ident or not isinstance(reply.get("return"), dict):
            raise Failure(f"{self.name}: query-version answered {short(reply)}")
        if self.expected is None:
            self.expected = reply["return"]
            if not isinstance(self.expected.get("qemu"), dict) or "package" not in self.expected:
                raise Failure(f"{self.name}: query-version returned {short(self.expected)}")
        elif reply["return"] != self.expected:
            raise Failure(f"{self.name}: query-version changed to {short(reply)}")


class BackgroundProbe(threading.Thread):
    """A second long-lived client asking from its own thread while the fuzz
    runs, so the daemon serves two clients at the same moment."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.probe = VersionProbe(path, "background")
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.wait(0.002):      # leave the daemon to the fuzz mostly
                self.probe.ask()
        except Exception as e:          # reported by the main thread
            self.error = e


# MARK: the daemon's resources

def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def kib(status, key):
    return int(status[key].split()[0])


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive(pid):
    try:
        return proc_status(pid)["State"][0] not in "ZX"
    except OSError:          # gone (ENOENT), or going while read (ESRCH)
        return False


def still_serving(pid, path):
    """After a failure: does the daemon still answer a new client? A daemon
    that crashed may linger while it prints its backtrace, so wait (bounded)
    for either answer."""
    for _ in range(100):
        if not alive(pid):
            return False
        try:
            probe = VersionProbe(path, "after-failure")
            probe.ask()
            probe.conn.close()
            return True
        except (Failure, OSError):
            time.sleep(0.1)
    return alive(pid)


# MARK: the run

class Fuzz:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.gen = Generator(self.rng, args.node)
        self.sent = 0             # fuzz messages (the count the issue asks for)
        self.controls = 0         # valid messages sent among them
        self.connections = 0
        self.by_category = {}
        self.rss_samples = []
        self.last = None          # the case being checked, for the failure report

    def pick(self, table, excluding=()):
        excluded = set(self.args.exclude) | set(excluding)
        rows = [row for row in table if row[0] not in excluded]
        name, make, _ = self.rng.choices(rows, weights=[w for _, _, w in rows])[0]
        payload, expects = make(self.gen)
        return name, payload, expects

    def pieces(self, payload):
        """Split points for sending one payload in many writes."""
        if len(payload) < 2:
            return None
        count = self.rng.randrange(2, min(len(payload), 64) + 1)
        cuts = sorted(self.rng.sample(range(1, len(payload)), count - 1))
        return [0] + cuts + [len(payload)]

    def verify(self, conn, payload, expects, tail_allowed):
        """Checks every reply the framing of `payload` calls for."""
        objects, tail = frame(payload)
        if len(objects) != len(expects) or (tail is not None and not tail_allowed):
            raise Failure(f"generator error: {len(objects)} objects, tail {tail}, expected {len(expects)}")
        for raw, expect in zip(objects, expects):
            reply = conn.receive()
            if reply is None:
                raise Failure(f"connection closed instead of answering {short(raw, 400)}")
            want_id = expected_id(raw)
            try:
                if expect == "version":
                    check_id(reply, want_id)
                    if not isinstance(reply.get("return"), dict) or "qemu" not in reply["return"]:
                        raise Failure(f"query-version answered {short(reply)}")
                else:
                    check_error(reply, want_id, "CommandNotFound" if expect == "not-found" else None)
            except Failure as e:
                raise Failure(f"message {short(raw, 200)}: {e}") from None
        return tail

    def count(self, name, n=1):
        self.sent += n
        self.by_category[name] = self.by_category.get(name, 0) + n

    def framed_batch(self, main):
        """One or more framed cases in one write (sometimes split in many)."""
        k = 1 if self.rng.random() < 0.85 else self.rng.randrange(2, 41)
        cases = [self.pick(Generator.framed) for _ in range(k)]
        payload = b"".join(p + self.rng.choice([b"", b"\n", b"\r\n", b" \t "]) for _, p, _ in cases)
        expects = [e for _, _, es in cases for e in es]
        self.last = ("batch of %d" % k if k > 1 else cases[0][0], payload)
        pieces = self.pieces(payload) if self.rng.random() < 0.1 else None
        main.send(payload, pieces)
        self.verify(main, payload, expects, tail_allowed=False)
        main.sent()
        if main.sender_error:
            raise Failure(f"sending failed: {main.sender_error}")
        for name, _, _ in cases:
            self.count(name)

    def closing_case(self):
        name, payload, expects = self.pick(Generator.closing)
        _, tail = frame(payload)
        negotiate = self.rng.random() < 0.8
        if self.rng.random() < 0.3:     # complete messages first, in the same write
            # (Without negotiation, qmp_capabilities is no repetition but the real one.)
            before = [self.pick(Generator.framed, () if negotiate else ("repeated-capabilities",))
                      for _ in range(self.rng.randrange(1, 6))]
            payload = b"".join(p for _, p, _ in before) + payload
            expects = [e for _, _, es in before for e in es] + expects
            name = "+".join(n for n, _, _ in before) + "+" + name
        if not negotiate:           # before qmp_capabilities, a command is refused, not run
            expects = [{"version": "not-found"}.get(e, e) for e in expects]
        self.last = (name, payload)
        conn = Connection(self.args.socket, negotiate=negotiate)
        self.connections += 1
        try:
            conn.send(payload, self.pieces(payload) if self.rng.random() < 0.2 else None)
            conn.sent()
            conn.sock.shutdown(socket.SHUT_WR)
            self.verify(conn, payload, expects, tail_allowed=True)
            if tail in ("garbage", "oversize"):
                reply = conn.receive()
                if reply is None:
                    raise Failure(f"closed without an error reply after {tail}")
                check_error(reply, ABSENT)
            conn.expect_closed()
        finally:
            conn.close()
        for part in name.split("+"):
            self.count(part)

    def before_capabilities(self):
        conn = Connection(self.args.socket, negotiate=False)
        self.connections += 1
        try:
            cases = [self.gen.valid_version()[0],
                     self.gen.dump(self.gen.message("query-block")),
                     self.gen.dump(self.gen.message("block-dirty-bitmap-add", {"node": self.args.node, "name": "early"}))]
            payload = b"".join(self.rng.sample(cases, self.rng.randrange(1, 4)))
            self.last = ("before-capabilities", payload)
            conn.send(payload)
            self.verify(conn, payload, ["not-found"] * len(frame(payload)[0]), tail_allowed=False)
            self.count("before-capabilities", len(frame(payload)[0]))
        finally:
            conn.close()

    def split_valid(self, main, probe):
        """A valid command split into one-byte writes, with the long-lived
        client answered while this one holds half a message."""
        payload, expects = self.gen.valid_version()
        self.last = ("split-valid", payload)
        half = len(payload) // 2
        for i in range(half):
            main.send(payload[i:i + 1])
        probe.ask()
        for i in range(half, len(payload)):
            main.send(payload[i:i + 1])
        self.verify(main, payload, expects, tail_allowed=False)
        self.controls += 1

    def sample(self, phase):
        s = proc_status(self.args.pid)
        self.rss_samples.append((phase, self.sent, kib(s, "VmRSS")))
        return s

    def run(self):
        a = self.args
        print(f"qmp_fuzz: seed {a.seed}, {a.count} messages, socket {a.socket}, daemon pid {a.pid}", flush=True)
        probe = VersionProbe(a.socket, "long-lived")
        probe.ask()
        background = BackgroundProbe(a.socket)
        main = Connection(a.socket)
        # Settle the daemon: first use of each path allocates for good. A
        # VG/LV-shaped node name makes ringbackd run lvs once: the first
        # child process starts Foundation's reaper thread for good.
        for _ in range(3):
            self.split_valid(main, probe)
        main.send(json.dumps({"execute": "block-dirty-bitmap-add",
                              "arguments": {"node": "fuzz-warmup-vg/lv", "name": "w"}}).encode())
        main.receive()
        start = self.sample("before")
        base_rss, base_threads, base_fds = kib(start, "VmRSS"), int(start["Threads"]), open_fds(a.pid)
        try:        # peak RSS from here on (root only; proc(5) clear_refs)
            with open(f"/proc/{a.pid}/clear_refs", "w") as f:
                f.write("5")
            peak_reset = True
        except OSError:
            peak_reset = False
        background.start()
        next_sample = 250
        while self.sent < a.count:
            roll = self.rng.random()
            if roll < 0.12:
                self.closing_case()
            elif roll < 0.14:
                self.before_capabilities()
            elif roll < 0.15:
                self.split_valid(main, probe)
            else:
                self.framed_batch(main)
            if self.sent >= next_sample:
                next_sample += 250
                probe.ask()
                self.sample("during")
                if background.error:
                    raise background.error
        self.last = None
        background.stop.set()
        background.join()
        if background.error:
            raise background.error
        probe.ask()
        main.close()
        background.probe.conn.close()
        # Leave the device as found: the bitmap-add cases start tracking it.
        cleanup = VersionProbe(a.socket, "cleanup")
        cleanup.conn.send(json.dumps({"execute": "x-track-stop", "arguments": {"node": a.node}, "id": 1}).encode())
        cleanup.conn.receive()
        cleanup.ask()
        cleanup.conn.close()
        # The server closes each connection after our close; wait (bounded)
        # for the counts to settle before judging leaks.
        for _ in range(100):
            end = proc_status(a.pid)
            if int(end["Threads"]) <= base_threads and open_fds(a.pid) <= base_fds:
                break
            time.sleep(0.1)
        end = self.sample("after")
        peak = kib(end, "VmHWM") if peak_reset else max(kb for _, _, kb in self.rss_samples)
        probe.ask()
        result = {
            "seed": a.seed, "messages": self.sent, "controls": self.controls, "connections": self.connections,
            "probe_answers": probe.answers, "background_answers": background.probe.answers,
            "rss_before_kib": base_rss, "rss_max_sampled_kib": max(kb for _, _, kb in self.rss_samples),
            "rss_peak_kib": peak, "peak_measured_by": "VmHWM" if peak_reset else "samples",
            "rss_after_kib": kib(end, "VmRSS"), "rss_bound_kib": base_rss + a.rss_slack_mib * 1024,
            "threads_before": base_threads, "threads_after": int(end["Threads"]),
            "fds_before": base_fds, "fds_after": open_fds(a.pid), "alive": alive(a.pid),
            "by_category": dict(sorted(self.by_category.items())),
        }
        probe.conn.close()
        return result


def check_result(r, slack_mib):
    problems = []
    if not r["alive"]:
        problems.append("the daemon is not alive")
    if r["rss_peak_kib"] > r["rss_bound_kib"]:
        problems.append(f"peak RSS {r['rss_peak_kib']} KiB over the bound {r['rss_bound_kib']} KiB "
                        f"(start + {slack_mib} MiB)")
    if r["rss_after_kib"] > r["rss_bound_kib"]:
        problems.append(f"RSS after the run {r['rss_after_kib']} KiB over the bound {r['rss_bound_kib']} KiB")
    # Our long-lived connection is closed by now; nothing else of ours remains.
    if r["threads_after"] > r["threads_before"]:
        problems.append(f"threads grew from {r['threads_before']} to {r['threads_after']}")
    if r["fds_after"] > r["fds_before"]:
        problems.append(f"open descriptors grew from {r['fds_before']} to {r['fds_after']}")
    return problems


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--pid", type=int, required=True, help="ringbackd's pid, for /proc/PID/status")
    p.add_argument("--node", required=True, help="a block device the daemon may track (a loop device)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--rss-slack-mib", type=int, default=64)
    p.add_argument("--exclude", action="append", default=[], metavar="CATEGORY",
                   help="leave a category out (to look past a known failure)")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    fuzz = Fuzz(args)
    try:
        result = fuzz.run()
    except (Failure, OSError) as e:
        where = ""
        if fuzz.last:
            name, payload = fuzz.last
            where = f" in case '{name}' after {fuzz.sent} messages; payload {short(payload, 400)}"
        serving = still_serving(args.pid, args.socket)
        state = "still serving" if serving else "DEAD or not answering"
        print(f"qmp_fuzz: FAILED (seed {args.seed}){where}: {e}; daemon {state}", file=sys.stderr, flush=True)
        print("RESULT " + json.dumps({"seed": args.seed, "failed": str(e), "messages": fuzz.sent,
                                      "alive": serving}))
        return 1
    for phase, sent, kb in fuzz.rss_samples[:: max(1, len(fuzz.rss_samples) // 8)] + fuzz.rss_samples[-1:]:
        print(f"qmp_fuzz: VmRSS {kb} KiB {phase} (after {sent} messages)")
    problems = check_result(result, args.rss_slack_mib)
    print(f"qmp_fuzz: {result['messages']} messages in {len(result['by_category'])} categories over "
          f"{result['connections']} extra connections; peak RSS {result['rss_peak_kib']} KiB "
          f"(start {result['rss_before_kib']}, bound {result['rss_bound_kib']}); "
          f"long-lived client answered {result['probe_answers']} + {result['background_answers']} times")
    print("RESULT " + json.dumps(result), flush=True)
    for problem in problems:
        print(f"qmp_fuzz: FAILED (seed {args.seed}): {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
