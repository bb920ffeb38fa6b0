// Header-only shim for kernel constants that Swift cannot import because they
// are function-like macros (_IO/_IOR/_IOWR) or hidden behind _GNU_SOURCE.
#ifndef RINGBACK_SHIM_H
#define RINGBACK_SHIM_H

#include <stddef.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <linux/falloc.h>
// liburing ships its own copy of the io_uring UAPI header; include that one so
// that this module and CLiburing see one definition of struct io_uring_sqe.
#include <linux/time_types.h>
#include <liburing/io_uring.h>

#ifndef O_DIRECT
#define O_DIRECT 040000
#endif

static const int rb_O_DIRECT = O_DIRECT;
static const int rb_O_CLOEXEC = O_CLOEXEC;

static const unsigned long rb_BLKGETSIZE64 = BLKGETSIZE64;
static const unsigned long rb_BLKSSZGET = BLKSSZGET;
static const unsigned long rb_BLKPBSZGET = BLKPBSZGET;
static const unsigned long rb_BLKFLSBUF = BLKFLSBUF;
static const unsigned long rb_BLKZEROOUT = BLKZEROOUT;
static const unsigned long rb_BLKDISCARD = BLKDISCARD;
static const unsigned long rb_FIFREEZE = FIFREEZE;
static const unsigned long rb_FITHAW = FITHAW;

static const uint8_t rb_IOSQE_FIXED_FILE = IOSQE_FIXED_FILE;
static const uint8_t rb_IOSQE_IO_LINK = IOSQE_IO_LINK;
static const uint8_t rb_IOSQE_IO_DRAIN = IOSQE_IO_DRAIN;
static const uint8_t rb_IOSQE_ASYNC = IOSQE_ASYNC;

/// ioctl with an unsigned 64-bit out argument (BLKGETSIZE64).
static inline int rb_ioctl_u64(int fd, unsigned long req, uint64_t *out) {
    return ioctl(fd, req, out);
}
/// ioctl with an int out argument (BLKSSZGET, BLKPBSZGET).
static inline int rb_ioctl_int(int fd, unsigned long req, int *out) {
    return ioctl(fd, req, out);
}
/// ioctl with a {start, length} range argument (BLKZEROOUT, BLKDISCARD).
static inline int rb_ioctl_range(int fd, unsigned long req, uint64_t start, uint64_t len) {
    uint64_t range[2] = { start, len };
    return ioctl(fd, req, range);
}
/// ioctl without an argument (FIFREEZE, FITHAW, BLKFLSBUF).
static inline int rb_ioctl_none(int fd, unsigned long req) {
    return ioctl(fd, req, 0);
}
/// A pipe whose ends close on exec (pipe2 is hidden behind _GNU_SOURCE).
int pipe2(int pipefd[2], int flags);
static inline int rb_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}
/// open(2) with the flags Swift's Glibc overlay hides.
static inline int rb_open(const char *path, int flags, unsigned mode) {
    return open(path, flags, mode);
}
/// fallocate(2) freeing a range of a file while keeping its size (hidden
/// behind _GNU_SOURCE, as is the function itself).
int fallocate(int fd, int mode, off_t offset, off_t len);
static inline int rb_punch_hole(int fd, uint64_t offset, uint64_t len) {
    return fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, (off_t)offset, (off_t)len);
}

#endif
