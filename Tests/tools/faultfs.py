#!/usr/bin/python3
"""faultfs: a FUSE filesystem that serves one backing file and fails chosen
byte ranges of it with EIO, so that a loop device over it gets real kernel I/O
errors (tests of ringback's read-error policies).

Usage: faultfs.py BACKING_FILE MOUNTPOINT

The mount holds two files:

  MOUNTPOINT/disk.img   BACKING_FILE, read and written with pread/pwrite; its
                        size is fixed (truncate to another size and writes past
                        the end fail).
  MOUNTPOINT/control    Faults and counters. Write one command a line:

      read OFFSET LENGTH MODE    fail reads overlapping [OFFSET, OFFSET+LENGTH)
      write OFFSET LENGTH MODE   the same for writes
      clear                      remove every fault (counters are kept)

  MODE is `always`, `once` (fail the first overlapping request, then the fault
  is gone) or `off` (remove that fault). Setting a fault on a range that
  already has one of the same kind replaces its mode. A command takes effect
  before write(2) on the control file returns, so no request that starts
  afterwards misses it; a malformed command fails the write with EINVAL.

  Reading control gives the state as of open(2):

      read-failures N            EIO answers given to reads so far
      write-failures N           the same for writes
      fault KIND OFFSET LENGTH MODE failed=N     one line a fault

Every file is opened with direct_io (FOPEN_DIRECT_IO), so the kernel keeps no
FUSE page cache for them: each read the loop driver makes of disk.img reaches
this process, and a fault is seen every time, not a cached copy. (The loop
device's own page cache sits above; readers that must see the fault every
time read the loop device with O_DIRECT or drop its cache with BLKFLSBUF. A
buffered reader retries a failed readahead page by page, which can consume a
`once` fault before returning.)

Runs in the foreground; prints `ready` on stdout once the kernel has sent
FUSE_INIT (the mount is in place and requests are answered). It exits 0 when
unmounted (fusermount -u / umount) or on SIGTERM/SIGINT, which libfuse turns
into an unmount. If its parent process goes away, it stops as on SIGTERM so a
crashed test does not leave a mount behind.

The shebang names Debian's interpreter because python3-fusepy installs the
module (`fusepy`) only for it, not for other pythons on PATH.
"""
import errno
import os
import signal
import stat
import sys
import threading
import time

try:
    import fusepy as fuse  # Debian's python3-fusepy
except ImportError:
    import fuse  # the same module as installed by pip

DISK = "/disk.img"
CONTROL = "/control"
MODES = ("always", "once", "off")
KINDS = ("read", "write")


class Fault:
    def __init__(self, kind, offset, length, mode):
        self.kind, self.offset, self.length, self.mode = kind, offset, length, mode
        self.failed = 0

    def overlaps(self, offset, size):
        return offset < self.offset + self.length and self.offset < offset + size


class FaultFS(fuse.Operations):
    use_ns = True

    def __init__(self, backing):
        self.backing = backing
        self.fd = os.open(backing, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        # Not `self.lock`: that name is the FUSE lock operation of Operations.
        self.guard = threading.Lock()
        self.faults = []
        self.failures = {"read": 0, "write": 0}
        self.snapshots = {}  # control file handle -> state text at open
        self.next_fh = 1
        self.started = time.time_ns()

    # Faults

    def inject(self, kind, offset, size):
        """Raises EIO when a fault of `kind` overlaps the request; counts it."""
        with self.guard:
            for f in self.faults:
                if f.kind == kind and f.overlaps(offset, size):
                    f.failed += 1
                    self.failures[kind] += 1
                    if f.mode == "once":
                        self.faults.remove(f)
                    raise fuse.FuseOSError(errno.EIO)

    def command(self, line):
        words = line.split()
        if words == ["clear"]:
            self.faults.clear()
            return
        if len(words) != 4 or words[0] not in KINDS or words[3] not in MODES:
            raise fuse.FuseOSError(errno.EINVAL)
        kind, mode = words[0], words[3]
        try:
            offset, length = int(words[1]), int(words[2])
        except ValueError:
            raise fuse.FuseOSError(errno.EINVAL)
        if offset < 0 or length <= 0:
            raise fuse.FuseOSError(errno.EINVAL)
        self.faults = [f for f in self.faults if (f.kind, f.offset, f.length) != (kind, offset, length)]
        if mode != "off":
            self.faults.append(Fault(kind, offset, length, mode))

    def state(self):
        with self.guard:
            lines = ["read-failures %d" % self.failures["read"], "write-failures %d" % self.failures["write"]]
            lines += ["fault %s %d %d %s failed=%d" % (f.kind, f.offset, f.length, f.mode, f.failed)
                      for f in self.faults]
        return ("\n".join(lines) + "\n").encode()

    # Filesystem

    def getattr(self, path, fh=None):
        now = self.started
        base = {"st_uid": os.getuid(), "st_gid": os.getgid(), "st_atime": now, "st_mtime": now, "st_ctime": now}
        if path == "/":
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == DISK:
            return dict(base, st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=self.size)
        if path == CONTROL:
            # Size 0: with direct_io the kernel passes reads through regardless.
            return dict(base, st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=0)
        raise fuse.FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", DISK[1:], CONTROL[1:]]

    def open(self, path, flags):
        if path == DISK:
            return 0
        if path == CONTROL:
            with self.guard:
                fh = self.next_fh
                self.next_fh += 1
            self.snapshots[fh] = self.state()
            return fh
        raise fuse.FuseOSError(errno.ENOENT)

    def release(self, path, fh):
        self.snapshots.pop(fh, None)
        return 0

    def truncate(self, path, length, fh=None):
        if path == CONTROL:
            return 0
        if path == DISK and length == self.size:
            return 0
        raise fuse.FuseOSError(errno.EPERM if path == DISK else errno.ENOENT)

    def read(self, path, size, offset, fh):
        if path == CONTROL:
            return self.snapshots.get(fh, b"")[offset:offset + size]
        if offset >= self.size:
            return b""
        size = min(size, self.size - offset)
        self.inject("read", offset, size)
        return os.pread(self.fd, size, offset)

    def write(self, path, data, offset, fh):
        if path == CONTROL:
            with self.guard:
                for line in data.decode(errors="replace").splitlines():
                    if line.strip():
                        self.command(line)
            return len(data)
        if offset + len(data) > self.size:
            raise fuse.FuseOSError(errno.ENOSPC)
        self.inject("write", offset, len(data))
        return os.pwrite(self.fd, data, offset)

    def fsync(self, path, datasync, fh):
        if path == DISK:
            (os.fdatasync if datasync else os.fsync)(self.fd)
        return 0

    def flush(self, path, fh):
        return 0

    def init(self, path):
        print("ready", flush=True)

    def destroy(self, path):
        os.close(self.fd)


def watch_parent():
    """Stops the filesystem as SIGTERM would when the parent exits."""
    # Only the main thread may take the signal: libfuse's handler sets a flag
    # that the main loop re-checks when its wait is interrupted; taken by this
    # thread it would interrupt nothing. (libfuse's workers block all signals.)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    backing, mountpoint = sys.argv[1], sys.argv[2]
    if not os.path.isfile(backing):
        sys.exit("faultfs: %s is not a regular file" % backing)
    # A parent may start us with these signals blocked (a Swift test's worker
    # thread blocks nearly all, and the mask survives exec) or ignored; then
    # libfuse, which installs its handlers only over SIG_DFL, would never see
    # SIGTERM. Take them back before the loop starts.
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    for s in stop_signals:
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    threading.Thread(target=watch_parent, daemon=True).start()
    # direct_io: no FUSE page cache, every read reaches us (see above).
    # big_writes: libfuse 2 splits writes into 4 KiB requests without it.
    # attr_timeout/entry_timeout 0: the control file's state is never cached.
    fuse.FUSE(FaultFS(backing), mountpoint, foreground=True, direct_io=True, big_writes=True,
              attr_timeout=0, entry_timeout=0, fsname="faultfs", subtype="faultfs")


if __name__ == "__main__":
    main()
