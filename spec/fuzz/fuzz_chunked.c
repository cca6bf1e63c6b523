/* libFuzzer target: chunked body decoding (src/http1), against a reference decoder.
 *
 * Input: one control byte (request or response, split size), then a chunked body that follows a
 * fixed head. The reference below decodes RFC 9112 7.1 strictly, as moonring's policy states it
 * (sizes below 2^60, no whitespace in chunk lines, chunk-ext = *( ";" token [ "=" ( token /
 * quoted-string ) ] ), trailer lines as header lines). Invariants (abort on violation):
 *  - the wrapper completes the message iff the reference does, with the same body;
 *  - it refuses the body iff the reference does, and waits for more iff the reference does;
 *  - the outcome does not depend on how the bytes are split; no pre-scan/llhttp disagreement. */
#include <stdint.h>

#include "fuzz_common.h"

static const char REQ_HEAD[] = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
static const char RESP_HEAD[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
static const size_t LIMIT = (size_t)1 << 26;

static int hexv(unsigned c)
{
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') return (int)((c | 0x20) - 'a' + 10);
    return -1;
}
static bool tchar(unsigned c) { return c > 0x20 && c < 0x7f && !strchr("\"(),/:;<=>?@[\\]{}", (int)c); }
static bool ctl(unsigned c) { return (c < 0x20 && c != '\t') || c == 0x7f; }

/* 1 complete, 0 needs more input, -1 invalid. */
static int ref_chunked(const unsigned char *p, size_t n, mr_vec_t *body)
{
    size_t i = 0;
#define NEED() do { if (i >= n) return 0; } while (0)
    for (;;) {
        uint64_t v = 0;
        size_t digits = 0;
        for (; i < n && hexv(p[i]) >= 0; i++, digits++) {
            if (v >> 56) return -1;
            v = v << 4 | (uint64_t)hexv(p[i]);
        }
        NEED();
        if (!digits) return -1;
        while (p[i] == ';') {
            i++;
            size_t s = i;
            while (i < n && tchar(p[i])) i++;
            NEED();
            if (i == s) return -1;
            if (p[i] == '=') {
                i++;
                NEED();
                if (p[i] == '"') {
                    for (i++;; i++) {
                        NEED();
                        if (p[i] == '"') break;
                        if (p[i] == '\\') {
                            i++;
                            NEED();
                            if (ctl(p[i])) return -1;
                        } else if (ctl(p[i])) {
                            return -1;
                        }
                    }
                    i++;
                } else {
                    s = i;
                    while (i < n && tchar(p[i])) i++;
                    if (i == s && i < n) return -1;
                }
                NEED();
            }
        }
        if (p[i++] != '\r') return -1;
        NEED();
        if (p[i++] != '\n') return -1;
        if (v == 0) break;
        if (n - i < v) return 0;
        mr_vec_append(body, p + i, (size_t)v, LIMIT);
        i += (size_t)v;
        NEED();
        if (p[i++] != '\r') return -1;
        NEED();
        if (p[i++] != '\n') return -1;
    }
    for (;;) {
        NEED();
        if (p[i] == '\r') {
            i++;
            NEED();
            return p[i] == '\n' ? 1 : -1;
        }
        size_t s = i;
        while (i < n && tchar(p[i])) i++;
        NEED();
        if (i == s || p[i] != ':') return -1;
        for (i++; i < n && p[i] != '\r'; i++)
            if (ctl(p[i])) return -1;
        NEED();
        i++;
        NEED();
        if (p[i++] != '\n') return -1;
    }
#undef NEED
}

typedef struct {
    mr_vec_t body;
    bool done;
} cap_t;

static int c_head(mr_http1_msg_t *m) { (void)m; return 0; }
static int c_body(mr_http1_msg_t *m, const char *p, size_t n)
{
    cap_t *c = m->owner;
    if (!c->done) mr_vec_append(&c->body, p, n, LIMIT);
    return 0;
}
static int c_done(mr_http1_msg_t *m)
{
    cap_t *c = m->owner;
    c->done = true;
    mr_http1_next(m);
    return 0;
}
static const mr_http1_cbs_t ccbs = { c_head, c_body, c_done };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t ctl0 = data[0];
    int type = ctl0 & 1 ? MR_HTTP1_RESPONSE : MR_HTTP1_REQUEST;
    size_t step = (size_t)((ctl0 >> 1) & 15) + 1;
    const char *head = type == MR_HTTP1_REQUEST ? REQ_HEAD : RESP_HEAD;
    size_t hl = strlen(head), n = size - 1;
    char *msg = malloc(hl + n + 1);
    memcpy(msg, head, hl);
    memcpy(msg + hl, data + 1, n);
    /* Limits far above the input so only the grammar decides. */
    uint32_t big = 1u << 24;
    fuzz_split_invariant(type, 0, msg, hl + n, step, big, big, big);

    mr_http1_limits_t lim = { big, big, big };
    cap_t c;
    memset(&c, 0, sizeof c);
    mr_http1_msg_t m;
    mr_hdrs_t m_head = { 0 }, m_trls = { 0 };
    mr_http1_init(&m, type, &lim, &ccbs, &c);
    mr_http1_set_store(&m, &m_head, &m_trls);
    int rc = fuzz_feed(&m, msg, hl + n, 0);
    bool idle = mr_http1_idle(&m);
    mr_hdrs_free(&m_head);
    mr_hdrs_free(&m_trls);
    if (rc < 0) fuzz_die("parser stopped making progress", NULL, NULL);

    mr_vec_t ref = { 0 };
    int want = ref_chunked(data + 1, n, &ref);
    char why[160];
    if (want == 1) {
        if (!c.done) {
            snprintf(why, sizeof why, "the reference decodes it, the wrapper %s", rc ? "refused it" : "waits");
            fuzz_die(why, msg, NULL);
        }
        if (c.body.len != ref.len || (ref.len && memcmp(c.body.p, ref.p, ref.len) != 0))
            fuzz_die("decoded bodies differ", msg, NULL);
    } else if (c.done) {
        fuzz_die(want < 0 ? "the wrapper accepted an invalid body" : "the wrapper completed an incomplete body", msg, NULL);
    } else if (want < 0 && rc == 0) {
        fuzz_die("the wrapper did not refuse an invalid body", msg, NULL);
    } else if (want == 0 && (rc != 0 || idle)) {
        fuzz_die("the wrapper refused a valid, incomplete body", msg, NULL);
    }
    mr_vec_free(&ref);
    mr_vec_free(&c.body);
    free(msg);
    return 0;
}
