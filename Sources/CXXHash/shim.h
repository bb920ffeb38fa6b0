// xxHash with its x86 dispatcher: XXH3_128bits_dispatch picks the AVX2 or
// AVX-512 kernel at run time where the CPU has one (twice the SSE2 speed),
// which keeps per-cluster digests off the copy's critical path.
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
static inline XXH128_hash_t rb_xxh3_128(const void *p, size_t n) { return XXH3_128bits_dispatch(p, n); }
#else
static inline XXH128_hash_t rb_xxh3_128(const void *p, size_t n) { return XXH3_128bits(p, n); }
#endif
