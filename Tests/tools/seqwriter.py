#!/usr/bin/python3
"""A writer for point-in-time tests: creates numbered files, each holding the
SHA-256 of its payload, on one or more mounted filesystems in turn.

    seqwriter.py [--delay SECONDS] [--max N] MOUNT [MOUNT...]

File i goes to MOUNT[i % len(MOUNTS)] as f%08d. Each is written under a
temporary name, fsynced, renamed into place, and its folder fsynced before
file i+1 is begun: so any image of the filesystems taken at one point in time
holds exactly the files 0..k-1 for some k, each complete. Runs until SIGTERM
(or N files); prints the number of files written.

    seqwriter.py --check MOUNT [MOUNT...]

checks that the files found form such a prefix and that every checksum holds;
prints k, exits 1 with the reason otherwise.
"""
import hashlib
import os
import random
import signal
import sys
import time

def write_all(mounts, delay, limit):
    stop = []
    # A parent may hand down SIGTERM blocked (Swift's test runner does).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    i = 0
    rng = random.Random(1234)
    while not stop and (limit is None or i < limit):
        payload = rng.randbytes(rng.randint(1024, 32 * 1024))
        digest = hashlib.sha256(payload).hexdigest().encode()
        folder = mounts[i % len(mounts)]
        tmp = os.path.join(folder, ".tmp-%08d" % i)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, digest + b"\n" + payload)
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, os.path.join(folder, "f%08d" % i))
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
        except OSError as e:
            # A full filesystem ends the sequence; what was written stands.
            print("stopped at file %d: %s" % (i, e), file=sys.stderr)
            break
        i += 1
        if delay:
            time.sleep(delay)
    print(i, flush=True)

def check(mounts):
    found = {}
    for folder in mounts:
        for name in os.listdir(folder):
            if name.startswith("f") and len(name) == 9 and name[1:].isdigit():
                found[int(name[1:])] = os.path.join(folder, name)
    k = len(found)
    missing = [i for i in range(k) if i not in found]
    if missing:
        print("not a prefix: %d files but %d is missing (highest %d)" % (k, missing[0], max(found)), file=sys.stderr)
        return 1
    for i in range(k):
        if found[i] != os.path.join(mounts[i % len(mounts)], "f%08d" % i):
            print("file %d is on the wrong filesystem: %s" % (i, found[i]), file=sys.stderr)
            return 1
        with open(found[i], "rb") as f:
            data = f.read()
        head, _, payload = data.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != head:
            print("file %d has a wrong checksum" % i, file=sys.stderr)
            return 1
    print(k)
    return 0

def main(argv):
    delay, limit, mounts, checking = 0.0, None, [], False
    it = iter(argv)
    for a in it:
        if a == "--delay":
            delay = float(next(it))
        elif a == "--max":
            limit = int(next(it))
        elif a == "--check":
            checking = True
        else:
            mounts.append(a)
    if not mounts:
        print(__doc__, file=sys.stderr)
        return 2
    if checking:
        return check(mounts)
    write_all(mounts, delay, limit)
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
