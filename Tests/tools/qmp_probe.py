#!/usr/bin/env python3
"""Connects to a QMP socket as whoever runs it and prints, as one JSON line,
what happened: whether connect() succeeded (else its errno name), the greeting
or whatever came instead, and, after a greeting, the replies to
qmp_capabilities and query-version; `closed` tells whether the server ended
the connection. Standard library only; it reads no file but the socket, so an
unprivileged user can run it from standard input:

    setpriv --reuid=nobody --regid=nogroup --clear-groups python3 -I - SOCKET < qmp_probe.py
"""

import errno
import json
import socket
import sys


def main(path):
    outcome = {"connect": "ok", "greeting": None, "before_close": [], "closed": False}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(path)
    except OSError as e:
        outcome["connect"] = errno.errorcode.get(e.errno, str(e.errno))
        return outcome
    stream = sock.makefile("rwb")

    def receive():
        line = stream.readline()
        if not line:
            outcome["closed"] = True
            return None
        return json.loads(line)

    first = receive()
    if first is None or "QMP" not in first:
        # Not greeted: record what came before the server closed.
        while first is not None:
            outcome["before_close"].append(first)
            first = receive()
        return outcome
    outcome["greeting"] = first
    for key, command in (("capabilities", "qmp_capabilities"), ("version", "query-version")):
        stream.write(json.dumps({"execute": command, "id": key}).encode() + b"\n")
        stream.flush()
        outcome[key] = receive()
    return outcome


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
