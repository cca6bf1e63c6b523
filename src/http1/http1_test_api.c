/* See http1_test_api.h. Drives mr_http1_msg_t the way proxy.c does (resume after every pause,
 * mr_http1_next between messages) so specs and fuzzers exercise the real call sequence. */
#include "http1/http1_test_api.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "http1/http1.h"

#define PREVIEW 512

typedef struct {
    char *out;
    size_t cap, len;
    bool truncated;
    int flags;
    bool in_msg, closed, head_parked;
    uint64_t body_len;
    char preview[PREVIEW];
    size_t plen;
} tctx_t;

static void put(tctx_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(tctx_t *t, const char *fmt, ...)
{
    if (t->truncated || t->cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->out + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= t->cap - t->len) {
        t->truncated = true;
        return;
    }
    t->len += (size_t)n;
}

/* Bytes as a C string body: printable ASCII as is, the rest as \xHH (so "\r" is visible). */
static void put_escaped(tctx_t *t, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') put(t, "%c", c);
        else put(t, "\\x%02x", c);
    }
}

static void put_field(tctx_t *t, const char *kind, const char *base, const mr_hdr_t *h)
{
    put(t, "%s ", kind);
    put_escaped(t, base + h->name_off, h->name_len);
    put(t, ": ");
    put_escaped(t, base + h->val_off, h->val_len);
    if (h->flags & (MR_HDR_HOP | MR_HDR_HOST | MR_HDR_XFF | MR_HDR_VIA)) {
        put(t, " [");
        const char *sep = "";
        if (h->flags & MR_HDR_HOP) put(t, "%shop", sep), sep = " ";
        if (h->flags & MR_HDR_HOST) put(t, "%shost", sep), sep = " ";
        if (h->flags & MR_HDR_XFF) put(t, "%sxff", sep), sep = " ";
        if (h->flags & MR_HDR_VIA) put(t, "%svia", sep), sep = " ";
        put(t, "]");
    }
    put(t, "\n");
}

static int t_head(mr_http1_msg_t *m)
{
    tctx_t *t = m->owner;
    t->in_msg = true;
    t->body_len = 0;
    t->plen = 0;
    put(t, "msg\n");
    if (m->type == MR_HTTP1_REQUEST) {
        put(t, "method %s\nurl ", mr_http1_method_str(m));
        put_escaped(t, mr_http1_str(m, m->url_off), m->url_len);
    } else {
        put(t, "status %d\nreason ", m->status);
        put_escaped(t, mr_http1_str(m, m->reason_off), m->reason_len);
    }
    put(t, "\nversion %d.%d\n", m->major, m->minor);
    for (uint32_t i = 0; i < m->h->n; i++) put_field(t, "header", m->h->buf.p, &m->h->v[i]);
    put(t, "cl %lld\nchunked %d\nkeepalive %d\nupgrade %d\nexpect %d\n", (long long)m->content_length,
        m->chunked, m->keep_alive, m->upgrade, m->expect_continue);
    if (m->type == MR_HTTP1_RESPONSE && (t->flags & MR_H1T_PAUSE_HEAD)) {
        t->head_parked = true;
        return HPE_PAUSED;
    }
    return m->type == MR_HTTP1_RESPONSE && (t->flags & MR_H1T_HEAD) ? 1 : 0;
}

static int t_body(mr_http1_msg_t *m, const char *p, size_t n)
{
    tctx_t *t = m->owner;
    t->body_len += n;
    size_t take = n < PREVIEW - t->plen ? n : PREVIEW - t->plen;
    memcpy(t->preview + t->plen, p, take);
    t->plen += take;
    return 0;
}

static int t_done(mr_http1_msg_t *m)
{
    tctx_t *t = m->owner;
    put(t, "body %llu \"", (unsigned long long)t->body_len);
    put_escaped(t, t->preview, t->plen);
    put(t, "\"\n");
    for (uint32_t i = 0; i < m->t->n; i++) put_field(t, "trailer", m->t->buf.p, &m->t->v[i]);
    put(t, "done\n");
    t->in_msg = false;
    if (!m->upgrade && !llhttp_should_keep_alive(&m->parser)) {
        t->closed = true;
        put(t, "closed\n");
    }
    mr_http1_next(m); /* as the proxy does before the next message */
    return 0;
}

static const mr_http1_cbs_t tcbs = { t_head, t_body, t_done };

int mr_http1_parse_ex(int type, int flags, size_t step, uint32_t max_request_line, uint32_t max_header_size,
                      uint32_t max_headers, const char *data, size_t len, char *out, size_t outlen)
{
    mr_http1_limits_t lim = {
        max_request_line ? max_request_line : 8192,
        max_header_size ? max_header_size : 32768,
        max_headers ? max_headers : 100,
    };
    tctx_t t = { .out = out, .cap = outlen, .flags = flags };
    if (outlen) out[0] = '\0';
    mr_http1_msg_t m;
    mr_hdrs_t head = { 0 }, trls = { 0 };
    mr_http1_init(&m, type ? MR_HTTP1_RESPONSE : MR_HTTP1_REQUEST, &lim, &tcbs, &t);
    mr_http1_set_store(&m, &head, &trls);
    if (!data) data = "";
    int status = 0;
    bool stop = false;
    size_t off = 0;
    unsigned idle_rounds = 0;
    while (!stop) {
        size_t end = step && len - off > step ? off + step : len;
        for (;;) {
            bool resumed = false;
            if (mr_http1_paused(&m)) {
                if (t.head_parked && (flags & MR_H1T_HEAD)) mr_http1_skip_body(&m);
                t.head_parked = false;
                mr_http1_resume(&m);
                resumed = true;
            }
            if (off == end && !resumed) break;
            size_t used = 0;
            int rc = mr_http1_feed(&m, data + off, end - off, &used);
            if (rc < 0) {
                status = m.error_status ? m.error_status : 400;
                put(&t, "error %d %s\n", status, m.error_reason ? m.error_reason : "?");
                stop = true;
                break;
            }
            off += used;
            if (rc == MR_HTTP1_UPGRADE) {
                put(&t, "rest %zu\n", len - off);
                stop = true;
                break;
            }
            /* Two pauses in a row without progress are normal (head, then a bodiless end);
             * more would be a parser that stopped moving. */
            idle_rounds = used ? 0 : idle_rounds + 1;
            if (idle_rounds > 4) {
                put(&t, "error 0 stuck\n");
                status = -1;
                stop = true;
                break;
            }
        }
        if (off >= len) break;
    }
    if (!stop && (flags & MR_H1T_EOF) && type) {
        if (mr_http1_finish(&m) < 0) {
            status = 502;
            put(&t, "error 502 truncated message\n");
            stop = true;
        }
    }
    if (!stop && !t.closed && (t.in_msg || !mr_http1_idle(&m))) put(&t, "partial\n");
    if (t.truncated && outlen >= 10) strcpy(out + outlen - 10, "truncated");
    mr_hdrs_free(&head);
    mr_hdrs_free(&trls);
    return status;
}
