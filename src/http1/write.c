#include "http1/write.h"

#include <errno.h>

#include "http/status.h"

/* Appends every field of the store without a skip flag, then the extra ones. Reserves per field,
 * then copies without further checks: heads are written on every request. */
static int put_fields(mr_vec_t *v, const mr_hdrs_t *h, uint16_t skip, const mr_field_t *extra, int nextra,
                      size_t limit)
{
    for (uint32_t i = 0; h && i < h->n; i++) {
        const mr_hdr_t *e = &h->v[i];
        if (e->flags & skip) continue;
        if (mr_vec_reserve(v, (size_t)e->name_len + e->val_len + 4, limit) < 0) return -E2BIG;
        mr_vec_put(v, mr_hdr_name(h, e), e->name_len);
        mr_vec_put(v, ": ", 2);
        mr_vec_put(v, mr_hdr_value(h, e), e->val_len);
        mr_vec_put(v, "\r\n", 2);
    }
    for (int i = 0; i < nextra; i++) {
        const mr_field_t *f = &extra[i];
        if (mr_vec_reserve(v, (size_t)f->nlen + f->vlen + f->vlen2 + 6, limit) < 0) return -E2BIG;
        mr_vec_put(v, f->name, f->nlen);
        mr_vec_put(v, ": ", 2);
        mr_vec_put(v, f->val, f->vlen);
        if (f->val2) {
            mr_vec_put(v, ", ", 2);
            mr_vec_put(v, f->val2, f->vlen2);
        }
        mr_vec_put(v, "\r\n", 2);
    }
    return 0;
}

static int put_framing(mr_vec_t *v, int framing, int64_t length, size_t limit)
{
    int rc = 0;
    if (framing == MR_H1_FRAME_CHUNKED) {
        rc |= mr_vec_lit(v, "Transfer-Encoding: chunked\r\n", limit);
    } else if (framing == MR_H1_FRAME_LENGTH || length >= 0) {
        rc |= mr_vec_lit(v, "Content-Length: ", limit);
        rc |= mr_vec_num(v, (uint64_t)(length < 0 ? 0 : length), limit);
        rc |= mr_vec_lit(v, "\r\n", limit);
    }
    return rc ? -E2BIG : 0;
}

int mr_http1_write_request(mr_vec_t *v, const mr_http_req_head_t *h, size_t limit)
{
    int rc = 0;
    rc |= mr_vec_reserve(v, h->path_len + h->query_len + 64, limit);
    if (rc) return -E2BIG;
    rc |= mr_vec_str(v, h->method, limit);
    rc |= mr_vec_lit(v, " ", limit);
    if (h->path_len == 0 || h->path[0] != '/') rc |= mr_vec_lit(v, "/", limit);
    rc |= mr_vec_append(v, h->path, h->path_len, limit);
    if (h->query) {
        rc |= mr_vec_lit(v, "?", limit);
        rc |= mr_vec_append(v, h->query, h->query_len, limit);
    }
    rc |= mr_vec_lit(v, " HTTP/1.1\r\n", limit);
    if (h->authority) {
        rc |= mr_vec_lit(v, "Host: ", limit);
        rc |= mr_vec_append(v, h->authority, h->authority_len, limit);
        rc |= mr_vec_lit(v, "\r\n", limit);
    }
    if (rc || put_fields(v, h->hdrs, h->skip, h->extra, h->nextra, limit) < 0) return -E2BIG;
    if (h->upgrade) {
        rc |= mr_vec_lit(v, "Connection: upgrade\r\nUpgrade: ", limit);
        rc |= mr_vec_append(v, h->upgrade, h->upgrade_len, limit);
        rc |= mr_vec_lit(v, "\r\n", limit);
    }
    if (h->body && h->content_length < 0) rc |= put_framing(v, MR_H1_FRAME_CHUNKED, -1, limit);
    else rc |= put_framing(v, MR_H1_FRAME_NONE, h->content_length, limit);
    rc |= mr_vec_lit(v, "\r\n", limit);
    return rc ? -E2BIG : 0;
}

int mr_http1_write_response(mr_vec_t *v, const mr_h1_resp_head_t *h, size_t limit)
{
    int rc = 0;
    rc |= mr_vec_lit(v, "HTTP/1.1 ", limit);
    rc |= mr_vec_num(v, (uint64_t)h->status, limit);
    rc |= mr_vec_lit(v, " ", limit);
    if (h->reason) rc |= mr_vec_append(v, h->reason, h->reason_len, limit);
    else rc |= mr_vec_str(v, mr_http_reason(h->status), limit);
    rc |= mr_vec_lit(v, "\r\n", limit);
    if (rc || put_fields(v, h->hdrs, h->skip, h->extra, h->nextra, limit) < 0) return -E2BIG;
    rc |= put_framing(v, h->framing, h->length, limit);
    if (h->connection) {
        rc |= mr_vec_lit(v, "Connection: ", limit);
        rc |= mr_vec_str(v, h->connection, limit);
        rc |= mr_vec_lit(v, "\r\n", limit);
        if (h->upgrade) {
            rc |= mr_vec_lit(v, "Upgrade: ", limit);
            rc |= mr_vec_append(v, h->upgrade, h->upgrade_len, limit);
            rc |= mr_vec_lit(v, "\r\n", limit);
        }
    }
    rc |= mr_vec_lit(v, "\r\n", limit);
    return rc ? -E2BIG : 0;
}

size_t mr_http1_chunk_line(char out[MR_H1_CHUNK_LINE_MAX], size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = hex[n & 15];
        n >>= 4;
    } while (n);
    size_t len = sizeof tmp - i;
    for (size_t k = 0; k < len; k++) out[k] = tmp[i + k];
    out[len] = '\r';
    out[len + 1] = '\n';
    return len + 2;
}

int mr_http1_write_last_chunk(mr_vec_t *v, const mr_hdrs_t *trailers, uint16_t skip, size_t limit)
{
    int rc = mr_vec_lit(v, "0\r\n", limit);
    if (rc || put_fields(v, trailers, skip, NULL, 0, limit) < 0) return -E2BIG;
    return mr_vec_lit(v, "\r\n", limit) ? -E2BIG : 0;
}
