#!/usr/bin/env python3
"""Run a command with io_uring refused by a seccomp filter, as a hardened
service or container would: io_uring_setup(2) fails with EPERM.

Usage: without-io-uring.py COMMAND [ARGS...]

The filter checks the architecture (x86_64 only) and returns EPERM for
io_uring_setup (425), io_uring_enter (426) and io_uring_register (427).
"""
import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1

BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15     # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06     # BPF_RET | BPF_K


def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


def main():
    if len(sys.argv) < 2 or os.uname().machine != "x86_64":
        sys.exit("usage: without-io-uring.py COMMAND [ARGS...] (x86_64 only)")
    prog = b"".join([
        insn(BPF_LD_W_ABS, 0, 0, 4),                  # seccomp_data.arch
        insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),     # other arch: leave alone
        insn(BPF_LD_W_ABS, 0, 0, 0),                  # seccomp_data.nr
        insn(BPF_JEQ_K, 3, 0, 425),
        insn(BPF_JEQ_K, 2, 0, 426),
        insn(BPF_JEQ_K, 1, 0, 427),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
    ])
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_NO_NEW_PRIVS) failed: %s" % os.strerror(ctypes.get_errno()))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit("prctl(PR_SET_SECCOMP) failed: %s" % os.strerror(ctypes.get_errno()))
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
