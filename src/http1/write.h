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

/* A field the caller adds after the store's (forwarded-for, via, date, ...). With val2 its value
 * is "<val>, <val2>": a list the proxy appends to (X-Forwarded-For, Via). */
typedef struct {
    const char *name, *val, *val2;
    uint32_t nlen, vlen, vlen2;
} mr_h1_field_t;

typedef struct {
    const char *method;
    const char *path;           /* the target's path ("/" is written when empty) */
    size_t path_len;
    const char *query;          /* NULL: no "?" */
    size_t query_len;
    const char *host;           /* NULL: no Host field */
    size_t host_len;
    const mr_hdrs_t *hdrs;      /* NULL: none */
    uint16_t skip;
    const mr_h1_field_t *extra;
    int nextra;
    int framing;
    int64_t length;
    const char *upgrade;        /* non-NULL: "Connection: upgrade" and "Upgrade: <upgrade>" */
    size_t upgrade_len;
} mr_h1_req_head_t;

typedef struct {
    int status;
    const char *reason;         /* NULL: the registered phrase */
    size_t reason_len;
    const mr_hdrs_t *hdrs;
    uint16_t skip;
    const mr_h1_field_t *extra;
    int nextra;
    int framing;
    int64_t length;             /* MR_H1_FRAME_LENGTH, or >= 0 with FRAME_NONE for a bodiless
                                   response that states its representation's length (HEAD) */
    const char *connection;     /* "close", "keep-alive", "upgrade" or NULL */
    const char *upgrade;        /* with connection "upgrade" */
    size_t upgrade_len;
} mr_h1_resp_head_t;

/* Append the head to v (bounded by limit). Returns 0 or -E2BIG / -ENOMEM (v may hold part). */
int mr_http1_write_request(mr_vec_t *v, const mr_h1_req_head_t *h, size_t limit);
int mr_http1_write_response(mr_vec_t *v, const mr_h1_resp_head_t *h, size_t limit);

/* The chunk framer: "<hex size>\r\n" for a chunk of n bytes (n > 0) into out; returns its length.
 * The chunk's data is followed by MR_H1_CRLF, the body by MR_H1_LAST_CHUNK. */
#define MR_H1_CHUNK_LINE_MAX 20
size_t mr_http1_chunk_line(char out[MR_H1_CHUNK_LINE_MAX], size_t n);
#define MR_H1_CRLF "\r\n"
#define MR_H1_LAST_CHUNK "0\r\n\r\n"

#endif
