/* HTTP/1.1 serialisation: the one head writer (requests to upstreams, responses to clients, local
 * and proxied alike) and the one chunk framer. Pure functions over a caller's buffer; no I/O.
 * Fields come from a header store (http/headers.h); entries carrying any of the `skip` flags
 * (hop-by-hop, deleted, ...) are left out, and the writer adds the framing itself, so what it
 * writes is always framed the way the caller decided, whatever the store holds. */
#ifndef MR_HTTP1_WRITE_H
#define MR_HTTP1_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "http/headers.h"
#include "util/vec.h"

/* How a message's body is delimited. */
enum {
    MR_H1_FRAME_NONE = 0,   /* no framing field: no body, or (responses) read until close */
    MR_H1_FRAME_LENGTH,     /* Content-Length: length */
    MR_H1_FRAME_CHUNKED,    /* Transfer-Encoding: chunked */
};

typedef struct {
    int status;
    const char *reason;         /* NULL: the registered phrase */
    size_t reason_len;
    const mr_hdrs_t *hdrs;
    uint16_t skip;
    const mr_field_t *extra;
    int nextra;
    int framing;
    int64_t length;             /* MR_H1_FRAME_LENGTH, or >= 0 with FRAME_NONE for a bodiless
                                   response that states its representation's length (HEAD) */
    const char *connection;     /* "close", "keep-alive", "upgrade" or NULL */
    const char *upgrade;        /* with connection "upgrade" */
    size_t upgrade_len;
} mr_h1_resp_head_t;

/* Append the head to v (bounded by limit). A request's body is chunked when its length is unknown.
 * Returns 0 or -E2BIG / -ENOMEM (v may hold part). */
int mr_http1_write_request(mr_vec_t *v, const mr_http_req_head_t *h, size_t limit);
int mr_http1_write_response(mr_vec_t *v, const mr_h1_resp_head_t *h, size_t limit);

/* The end of a chunked body with trailer fields: "0", the fields (entries with a `skip` flag left
 * out), and the empty line. */
int mr_http1_write_last_chunk(mr_vec_t *v, const mr_hdrs_t *trailers, uint16_t skip, size_t limit);

/* The chunk framer: "<hex size>\r\n" for a chunk of n bytes (n > 0) into out; returns its length.
 * The chunk's data is followed by MR_H1_CRLF, the body by MR_H1_LAST_CHUNK. */
#define MR_H1_CHUNK_LINE_MAX 20
size_t mr_http1_chunk_line(char out[MR_H1_CHUNK_LINE_MAX], size_t n);
#define MR_H1_CRLF "\r\n"
#define MR_H1_LAST_CHUNK "0\r\n\r\n"

#endif
