#ifndef RINGBACK_ZLIB_SHIM_H
#define RINGBACK_ZLIB_SHIM_H

#include <zlib.h>

/// inflateInit2 is a macro (it passes ZLIB_VERSION and sizeof(z_stream)), which
/// Swift cannot import.
static inline int rb_inflateInit2(z_streamp strm, int windowBits) {
    return inflateInit2(strm, windowBits);
}

#endif
