#include "http/headers.h"

#include <errno.h>
#include <stdlib.h>
#include <strings.h>

#define DEFAULT_LIMIT (64u * 1024u)

void mr_hdrs_free(mr_hdrs_t *h)
{
    mr_vec_free(&h->buf);
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}

int mr_hdrs_push(mr_hdrs_t *h)
{
    if (h->n == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 16;
        mr_hdr_t *v = realloc(h->v, cap * sizeof *v);
        if (!v) return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    mr_hdr_t *e = &h->v[h->n];
    *e = (mr_hdr_t){ .name_off = h->buf.len, .val_off = h->buf.len };
    return (int)h->n++;
}

int mr_hdrs_add(mr_hdrs_t *h, const char *name, size_t nlen, const char *val, size_t vlen)
{
    if (nlen > 0xffff) return -E2BIG;
    int rc = mr_vec_reserve(&h->buf, nlen + vlen, h->limit ? h->limit : DEFAULT_LIMIT);
    if (rc < 0) return rc;
    int i = mr_hdrs_push(h);
    if (i < 0) return i;
    mr_hdr_t *e = &h->v[i];
    e->name_len = (uint16_t)nlen;
    mr_vec_put(&h->buf, name, nlen);
    e->val_off = h->buf.len;
    e->val_len = (uint32_t)vlen;
    mr_vec_put(&h->buf, val, vlen);
    return i;
}

bool mr_hdr_name_is(const mr_hdrs_t *h, const mr_hdr_t *e, const char *name, size_t len)
{
    return e->name_len == len && strncasecmp(mr_hdrs_str(h, e->name_off), name, len) == 0;
}

int mr_hdrs_find(const mr_hdrs_t *h, const char *name, size_t len, int from)
{
    for (uint32_t i = (uint32_t)(from < 0 ? 0 : from); i < h->n; i++)
        if (!(h->v[i].flags & MR_HDR_DELETED) && mr_hdr_name_is(h, &h->v[i], name, len)) return (int)i;
    return -1;
}

int mr_hdrs_del(mr_hdrs_t *h, const char *name, size_t len)
{
    int n = 0;
    for (int i = mr_hdrs_find(h, name, len, 0); i >= 0; i = mr_hdrs_find(h, name, len, i + 1)) {
        h->v[i].flags |= MR_HDR_DELETED;
        n++;
    }
    return n;
}
