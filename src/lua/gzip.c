/* Streaming gzip compression for Lua (the moonring.filters.gzip stock filter), on zlib, through
 * FFI: one deflate stream per response, fed chunk by chunk from on_body.
 *
 * mr_gzip_feed compresses a chunk and returns the compressed bytes produced so far in the
 * stream's own output buffer, valid until the next call on the stream (Lua copies them at once).
 * A stream is freed by mr_gzip_free (Lua's GC finalizer, or the filter at the end of the body).
 * Thread affinity: one stream is used by one thread at a time. Return codes: the FFI set. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "util/export.h"

typedef struct mr_gzip {
    z_stream z;
    unsigned char *out;
    size_t cap;
    bool ended;
} mr_gzip_t;

/* level 1-9; mem_level 1-9 (zlib's default 8; less memory per response, slightly worse
 * compression). MR_FFI_OK with *out, MR_FFI_BAD_ARG or MR_FFI_NOMEM. */
MR_EXPORT int mr_gzip_new(int level, int mem_level, mr_gzip_t **out)
{
    if (level < 1 || level > 9 || mem_level < 1 || mem_level > 9) return MR_FFI_BAD_ARG;
    mr_gzip_t *g = calloc(1, sizeof *g);
    if (!g) return MR_FFI_NOMEM;
    /* windowBits 15 + 16: a gzip header and trailer rather than zlib's */
    if (deflateInit2(&g->z, level, Z_DEFLATED, 15 + 16, mem_level, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(g);
        return MR_FFI_NOMEM;
    }
    *out = g;
    return MR_FFI_OK;
}

MR_EXPORT void mr_gzip_free(mr_gzip_t *g)
{
    if (!g) return;
    deflateEnd(&g->z);
    free(g->out);
    free(g);
}

/* Compresses in[0..n). mode 0: deflate decides when to emit; 1: end the stream (the gzip
 * trailer is in the output); 2: emit everything so far (a sync flush: a streamed response's
 * chunk reaches the client at once, at some cost in ratio). Returns
 * the number of compressed bytes now at *p (0 is common: deflate keeps input until it has a
 * block), or MR_FFI_NOMEM, or MR_FFI_BAD_CONTEXT after the stream ended. */
MR_EXPORT int64_t mr_gzip_feed(mr_gzip_t *g, const char *in, size_t n, int mode, const unsigned char **p)
{
    if (g->ended) return MR_FFI_BAD_CONTEXT;
    size_t need = deflateBound(&g->z, (uLong)n) + 64;
    if (need > g->cap) {
        unsigned char *nb = realloc(g->out, need);
        if (!nb) return MR_FFI_NOMEM;
        g->out = nb;
        g->cap = need;
    }
    g->z.next_in = (Bytef *)(uintptr_t)in;
    g->z.avail_in = (uInt)n;
    size_t have = 0;
    for (;;) {
        g->z.next_out = g->out + have;
        g->z.avail_out = (uInt)(g->cap - have);
        int rc = deflate(&g->z, mode == 1 ? Z_FINISH : mode == 2 ? Z_SYNC_FLUSH : Z_NO_FLUSH);
        have = g->cap - g->z.avail_out;
        if (rc == Z_STREAM_END) { g->ended = true; break; }
        if (rc != Z_OK && rc != Z_BUF_ERROR) return MR_FFI_ERROR;
        if (g->z.avail_out > 0 && g->z.avail_in == 0) break; /* all taken, nothing more pending */
        unsigned char *nb = realloc(g->out, g->cap * 2);
        if (!nb) return MR_FFI_NOMEM;
        g->out = nb;
        g->cap *= 2;
    }
    *p = g->out;
    return (int64_t)have;
}
