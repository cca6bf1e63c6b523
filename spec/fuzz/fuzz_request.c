/* libFuzzer target: request parsing and normalisation (src/http1).
 *
 * Input: one control byte (how to split the stream, which limits), then the bytes a client sends.
 * Invariants (abort on violation):
 *  - the outcome does not depend on how the bytes are split across feeds;
 *  - the pre-scan and llhttp never disagree about where a message is (the wrapper is built with
 *    MR_HTTP1_ABORT_ON_MISMATCH), and the parser never stops making progress;
 *  - round trip: every accepted request, written out the way the proxy forwards it (origin-form,
 *    Host, end-to-end fields only, our own framing), parses back without error into exactly the
 *    same bytes. So what an upstream receives is always one unambiguous request per request. */
#include <stdint.h>

#include "fuzz_common.h"

typedef struct {
    mr_vec_t out, cur;
    bool stop;
} fwd_t;

static const size_t LIMIT = (size_t)1 << 26;

static int f_head(mr_http1_msg_t *m)
{
    fwd_t *f = m->owner;
    mr_vec_reset(&f->cur);
    if (m->upgrade) {
        f->stop = true; /* the rest is another protocol */
        return 0;
    }
    mr_vec_printf(&f->cur, LIMIT, "%s %.*s HTTP/1.1\r\n", mr_http1_method_str(m), (int)m->url_len,
                  mr_http1_str(m, m->url_off));
    if (m->host_idx >= 0) {
        mr_hdr_t *h = &m->h->v[m->host_idx];
        mr_vec_printf(&f->cur, LIMIT, "Host: %.*s\r\n", (int)h->val_len, mr_http1_str(m, h->val_off));
    } else {
        mr_vec_printf(&f->cur, LIMIT, "Host: \r\n");
    }
    for (uint32_t i = 0; i < m->h->n; i++) {
        mr_hdr_t *h = &m->h->v[i];
        if (h->flags & (MR_HDR_HOP | MR_HDR_HOST | MR_HDR_DELETED)) continue;
        mr_vec_printf(&f->cur, LIMIT, "%.*s: %.*s\r\n", (int)h->name_len, mr_http1_str(m, h->name_off),
                      (int)h->val_len, mr_http1_str(m, h->val_off));
    }
    if (m->chunked) mr_vec_printf(&f->cur, LIMIT, "Transfer-Encoding: chunked\r\n");
    else if (m->content_length >= 0) mr_vec_printf(&f->cur, LIMIT, "Content-Length: %lld\r\n", (long long)m->content_length);
    mr_vec_printf(&f->cur, LIMIT, "\r\n");
    return 0;
}

static int f_body(mr_http1_msg_t *m, const char *p, size_t n)
{
    fwd_t *f = m->owner;
    if (n == 0 || f->stop) return 0;
    if (m->chunked) mr_vec_printf(&f->cur, LIMIT, "%zx\r\n", n);
    mr_vec_append(&f->cur, p, n, LIMIT);
    if (m->chunked) mr_vec_append(&f->cur, "\r\n", 2, LIMIT);
    return 0;
}

static int f_done(mr_http1_msg_t *m)
{
    fwd_t *f = m->owner;
    if (f->stop) return 0;
    if (m->chunked) mr_vec_append(&f->cur, "0\r\n\r\n", 5, LIMIT);
    mr_vec_append(&f->out, f->cur.p, f->cur.len, LIMIT);
    mr_vec_reset(&f->cur);
    mr_http1_next(m);
    return 0;
}

static const mr_http1_cbs_t fcbs = { f_head, f_body, f_done };

/* Parses data and writes the forwarded form of each complete request into f->out. */
static int forward(fwd_t *f, const char *data, size_t len, const mr_http1_limits_t *lim)
{
    mr_http1_msg_t m;
    mr_hdrs_t m_head = { 0 }, m_trls = { 0 };
    memset(f, 0, sizeof *f);
    mr_http1_init(&m, MR_HTTP1_REQUEST, lim, &fcbs, f);
    mr_http1_set_store(&m, &m_head, &m_trls);
    int rc = fuzz_feed(&m, data, len, 0);
    mr_hdrs_free(&m_head);
    mr_hdrs_free(&m_trls);
    mr_vec_free(&f->cur);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t ctl = data[0];
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    size_t step = (size_t)(ctl & 15) + 1;
    bool small = ctl & 0x80;
    uint32_t line = small ? 64 : 0, hdr = small ? 256 : 0, count = small ? 8 : 0;
    fuzz_split_invariant(MR_HTTP1_REQUEST, 0, p, n, step, line, hdr, count);

    mr_http1_limits_t lim = { small ? 64 : 8192, small ? 256 : 32768, small ? 8 : 100 };
    mr_http1_limits_t big = { 1 << 20, 1 << 22, 1 << 16 }; /* forwarding may add a Host field */
    fwd_t f1, f2;
    int rc = forward(&f1, p, n, &lim);
    if (rc < 0) fuzz_die("parser stopped making progress", NULL, NULL);
    if (f1.out.len) {
        int rc2 = forward(&f2, f1.out.p, f1.out.len, &big);
        mr_vec_append(&f1.out, "", 1, LIMIT);
        mr_vec_append(&f2.out, "", 1, LIMIT);
        if (rc2 != 0) fuzz_die("a forwarded request does not parse", f1.out.p, f2.out.p);
        if (strcmp(f1.out.p, f2.out.p) != 0) fuzz_die("forwarding is not idempotent", f1.out.p, f2.out.p);
        mr_vec_free(&f2.out);
    }
    mr_vec_free(&f1.out);
    return 0;
}
