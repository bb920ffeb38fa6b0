// liburing.h defines _XOPEN_SOURCE/_GNU_SOURCE itself, which changes glibc's
// fd_set and other types relative to what Swift's Glibc module saw. Include the
// glibc headers first so that both agree.
#ifndef RINGBACK_CLIBURING_SHIM_H
#define RINGBACK_CLIBURING_SHIM_H
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/select.h>
#include <signal.h>
#include <time.h>
#include <fcntl.h>
#include <sched.h>
#include <liburing.h>
#endif
