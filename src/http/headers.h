/* A header store: the fields of one message head (request, response, a local response, trailers),
 * independent of the protocol that carried them. Names and values are copied into one growable
 * buffer and addressed by offsets, so growth never invalidates an index; the HTTP/1 parser fills a
 * store, the Lua API edits it, and the HTTP/1 writer serialises it.
 *
 * Entries are never removed: deleting one sets MR_HDR_DELETED (indices stay stable for the parser's
 * host_idx and for Lua iterating by position). mr_hdrs_reset forgets every entry and keeps the
 * capacity, so a store reused for the next message on a connection does not allocate again.
 * Owner: the embedding object (a request, an upstream connection); not thread-safe. */
#ifndef MR_HTTP_HEADERS_H
#define MR_HTTP_HEADERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/vec.h"

/* Field flags, set by parsers (classification) and editors. */
enum {
    MR_HDR_HOP = 1,        /* hop-by-hop or framing: never forwarded as-is */
    MR_HDR_HOST = 2,
    MR_HDR_XFF = 4,
    MR_HDR_VIA = 8,
    MR_HDR_DELETED = 16,   /* removed (by a filter, or replaced) */
    MR_HDR_XFP = 32,       /* X-Forwarded-Proto */
};

typedef struct {
    uint32_t name_off, val_off;
    uint16_t name_len;
    uint16_t flags;
    uint32_t val_len;
} mr_hdr_t;

typedef struct mr_hdrs {
    mr_vec_t buf;          /* names, values, and whatever else the owner stores (a target) */
    mr_hdr_t *v;
    uint32_t n, cap;
    uint32_t limit;        /* bytes buf may grow to (0: 64 KiB) */
} mr_hdrs_t;

/* A field a writer adds after a store's (forwarded-for, via, date, ...). With val2 its value is
 * "<val>, <val2>": a list the proxy appends to (X-Forwarded-For, Via). */
typedef struct {
    const char *name, *val, *val2;
    uint32_t nlen, vlen, vlen2;
} mr_field_t;

/* A request head as the proxy forwards it, described rather than serialised: each upstream
 * protocol writes it its own way (HTTP/1.1 request line and fields, HTTP/2 pseudo-headers and
 * HPACK). Everything points into the caller's memory, valid during the call that takes it. */
typedef struct {
    const char *method;
    const char *scheme;         /* "http" or "https" (HTTP/2's :scheme) */
    const char *path;           /* the target's path ("/" is used when empty) */
    size_t path_len;
    const char *query;          /* NULL: no "?" */
    size_t query_len;
    const char *authority;      /* Host / :authority; NULL: none */
    size_t authority_len;
    const mr_hdrs_t *hdrs;      /* NULL: none; entries with a `skip` flag are left out */
    uint16_t skip;
    const mr_field_t *extra;
    int nextra;
    int64_t content_length;     /* sent as such when >= 0 */
    bool body;                  /* a body follows; with content_length < 0 its length is unknown */
    const char *upgrade;        /* HTTP/1.1: "Connection: upgrade" and "Upgrade: <upgrade>" */
    size_t upgrade_len;
} mr_http_req_head_t;

void mr_hdrs_free(mr_hdrs_t *h);
static inline void mr_hdrs_reset(mr_hdrs_t *h) { h->buf.len = 0; h->n = 0; }
/* Appends an entry whose name and value are already in buf (the parser's path). Returns its
 * index or -ENOMEM. */
int mr_hdrs_push(mr_hdrs_t *h);
/* Appends a field (name and value copied). Returns its index, or -E2BIG / -ENOMEM. */
int mr_hdrs_add(mr_hdrs_t *h, const char *name, size_t nlen, const char *val, size_t vlen);
/* Index of the first live field named `name` (ASCII case-insensitive) at or after `from`, or -1. */
int mr_hdrs_find(const mr_hdrs_t *h, const char *name, size_t len, int from);
/* Marks every live field named `name` deleted; returns how many. */
int mr_hdrs_del(mr_hdrs_t *h, const char *name, size_t len);

/* Before the first byte is stored the buffer is NULL, and NULL + 0 is undefined: hence the "". */
static inline const char *mr_hdrs_str(const mr_hdrs_t *h, uint32_t off) { return h->buf.p ? h->buf.p + off : ""; }
static inline const char *mr_hdr_name(const mr_hdrs_t *h, const mr_hdr_t *e) { return mr_hdrs_str(h, e->name_off); }
static inline const char *mr_hdr_value(const mr_hdrs_t *h, const mr_hdr_t *e) { return mr_hdrs_str(h, e->val_off); }
bool mr_hdr_name_is(const mr_hdrs_t *h, const mr_hdr_t *e, const char *name, size_t len);

#endif
