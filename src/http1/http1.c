#include "http1/http1.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MSG(p) ((mr_http1_msg_t *)(p)->data)
/* Internal mark on a field whose value is complete; cleared before anyone else sees the field. */
#define VALUE_DONE 0x8000

/* The stream is split into regions. Line-structured ones (head, chunk lines, trailers) are checked
 * byte by byte before llhttp sees them, and llhttp is handed at most one region per call, so it
 * can never run past a boundary whose meaning depends on its own (laxer) parse. */
enum {
    R_HEAD = 0,     /* start line and header section */
    R_AWAIT,        /* a head or trailer section ended: llhttp's callbacks decide what follows */
    R_DECIDE,       /* paused at a response head: whether a body follows is settled on resume */
    R_BODY,         /* sc_size bytes of Content-Length body or chunk data; opaque */
    R_CHUNK_LINE,   /* CRLF after chunk data (S_DATA_END), then chunk-size [ext] CRLF */
    R_TRAILERS,     /* trailer section after the last chunk */
    R_RAW,          /* read-until-close body or upgraded stream: not HTTP any more */
};

enum {
    S_LEAD = 0,     /* before a start line: empty lines are tolerated (RFC 9112 2.2) */
    S_METHOD, S_TARGET, S_VERSION,
    S_STATUS,
    S_FIELD, S_NAME, S_VALUE,
    S_DATA_END, S_CSIZE,
    /* chunk-ext = *( ";" name [ "=" ( token / quoted-string ) ] ), RFC 9112 7.1.1 without BWS */
    S_CEXT,         /* at a ';' */
    S_E_NAME0, S_E_NAME, S_E_VAL0, S_E_VAL, S_E_QS, S_E_QP, S_E_QEND,
};

/* RFC 9110 tchar as a bitmap. */
static const uint64_t TCHAR[4] = { 0x3ff6cfa00000000ull, 0x57ffffffc7fffffeull, 0, 0 };

static inline bool is_tchar(unsigned c) { return (TCHAR[c >> 6] >> (c & 63)) & 1; }
/* Control bytes no field value, status line or chunk extension may carry (HTAB is allowed). */
static inline bool is_bad_ctl(unsigned c) { return (c < 0x20 && c != '\t') || c == 0x7f; }

static int hexval(unsigned c)
{
    if (c >= '0' && c <= '9') return (int)(c - '0');
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    return -1;
}

static int fail(mr_http1_msg_t *m, int status, const char *reason)
{
    if (!m->error_status) {
        m->error_status = status;
        m->error_reason = reason;
    }
    return -1;
}

static inline int bad_status(const mr_http1_msg_t *m) { return m->type == MR_HTTP1_REQUEST ? 400 : 502; }

/* The pre-scan and llhttp disagree about where the message is: never expected, but if it happens
 * the framing is unknowable, so the message is rejected (and the fuzzers abort). */
static int mismatch(mr_http1_msg_t *m)
{
#ifdef MR_HTTP1_ABORT_ON_MISMATCH
    abort();
#endif
    return fail(m, bad_status(m), "internal: parser state mismatch");
}

/* ------------------------------------------------------------------------------------------ */
/* Pre-scan                                                                                     */

static void scan_head_start(mr_http1_msg_t *m)
{
    m->sc_region = R_HEAD;
    m->sc_state = S_LEAD;
    m->sc_cr = m->sc_seen = false;
    m->sc_line = m->sc_section = m->sc_lead = m->sc_ext = 0;
    m->sc_vlen = 0;
    m->head_bytes = 0;
}

static void scan_chunk_line(mr_http1_msg_t *m, uint8_t state)
{
    m->sc_region = R_CHUNK_LINE;
    m->sc_state = state;
    m->sc_line = 0;
    m->sc_size = 0;
    m->sc_seen = false;
}

/* A CR arrived. Lines that cannot end here are refused now, before llhttp sees the CR, so the
 * verdict does not depend on which of the two looks first. */
static int scan_cr(mr_http1_msg_t *m)
{
    switch (m->sc_state) {
    case S_METHOD:
    case S_TARGET:
        /* Includes HTTP/0.9's "GET /": there is no version to speak. */
        return fail(m, 400, "malformed request line");
    case S_VERSION:
        return m->sc_vlen == 8 ? 0 : fail(m, 400, "malformed HTTP version");
    case S_NAME:
        return fail(m, bad_status(m), "header line without a colon");
    case S_CEXT:
    case S_E_NAME0:
    case S_E_VAL0:
    case S_E_QS:
    case S_E_QP:
        return fail(m, bad_status(m), "malformed chunk extension");
    case S_CSIZE:
        return m->sc_seen ? 0 : fail(m, bad_status(m), "empty chunk size");
    default:
        return 0;
    }
}

/* A line ended (CRLF). Returns 1 when the region ended with it. */
static int scan_eol(mr_http1_msg_t *m)
{
    switch (m->sc_state) {
    case S_LEAD:
        return 0;
    case S_VERSION:
    case S_STATUS:
    case S_VALUE:
        m->sc_state = S_FIELD;
        return 0;
    case S_FIELD:
        m->sc_region = R_AWAIT;
        return 1;
    case S_DATA_END:
        scan_chunk_line(m, S_CSIZE);
        return 0;
    case S_CSIZE:
    case S_E_NAME:
    case S_E_VAL:
    case S_E_QEND:
        if (m->sc_size > 0) {
            m->sc_region = R_BODY;
            m->sc_next = R_CHUNK_LINE;
        } else {
            m->sc_region = R_TRAILERS;
            m->sc_state = S_FIELD;
            m->sc_section = 0;
            m->sc_seen = false;
        }
        return 1;
    }
    return mismatch(m);
}

/* One byte of chunk extensions. These never reach llhttp: 8.1 rejects valid lists (";a=b;c") and
 * accepts invalid ones (";=b"), and we drop extensions anyway, so the grammar is checked here. */
static int scan_ext(mr_http1_msg_t *m, unsigned c)
{
    const mr_http1_limits_t *lim = m->limits;
    int bad = bad_status(m);
    if (++m->sc_line > lim->max_header_size || ++m->sc_ext > lim->max_header_size)
        return fail(m, bad, "chunk extensions too long");
    if (c == '\n') return fail(m, bad, "bare LF");
    switch (m->sc_state) {
    case S_CEXT:
        if (c != ';') break;
        m->sc_state = S_E_NAME0;
        return 0;
    case S_E_NAME0:
        if (!is_tchar(c)) break;
        m->sc_state = S_E_NAME;
        return 0;
    case S_E_NAME:
        if (is_tchar(c)) return 0;
        if (c == ';') { m->sc_state = S_E_NAME0; return 0; }
        if (c == '=') { m->sc_state = S_E_VAL0; return 0; }
        break;
    case S_E_VAL0:
        if (c == '"') { m->sc_state = S_E_QS; return 0; }
        if (!is_tchar(c)) break;
        m->sc_state = S_E_VAL;
        return 0;
    case S_E_VAL:
        if (is_tchar(c)) return 0;
        if (c == ';') { m->sc_state = S_E_NAME0; return 0; }
        break;
    case S_E_QS:
        if (c == '"') { m->sc_state = S_E_QEND; return 0; }
        if (c == '\\') { m->sc_state = S_E_QP; return 0; }
        if (!is_bad_ctl(c)) return 0;
        break;
    case S_E_QP:
        if (is_bad_ctl(c)) break;
        m->sc_state = S_E_QS;
        return 0;
    case S_E_QEND:
        if (c != ';') break;
        m->sc_state = S_E_NAME0;
        return 0;
    default:
        return mismatch(m);
    }
    return fail(m, bad, "malformed chunk extension");
}

static bool name_eq(const char *name, size_t len, const char *s)
{
    size_t n = strlen(s);
    return len == n && strncasecmp(name, s, n) == 0;
}

/* Trailer fields a recipient must not act on (RFC 9110 6.5.1): framing, routing, connection
 * control and how to process the content. They are dropped, never forwarded or merged. */
static bool trailer_forbidden(const char *name, size_t len)
{
    static const char *const deny[] = {
        "content-length", "transfer-encoding", "host", "connection", "keep-alive", "te", "trailer",
        "upgrade", "expect", "content-encoding", "content-type", "content-range", "range",
        "authorization", "cookie", "set-cookie", "cache-control", "max-forwards",
    };
    for (size_t i = 0; i < sizeof deny / sizeof deny[0]; i++)
        if (name_eq(name, len, deny[i])) return true;
    return len > 6 && strncasecmp(name, "proxy-", 6) == 0;
}

static int trailer_put(mr_http1_msg_t *m, unsigned c)
{
    char ch = (char)c;
    if (mr_vec_append(&m->t->buf, &ch, 1, (size_t)m->limits->max_header_size + 1024) < 0)
        return fail(m, m->type == MR_HTTP1_REQUEST ? 431 : 502, "trailer section too large");
    return 0;
}

/* A trailer line ended: trim the value, and drop the field if it may not be a trailer. */
static void trailer_end(mr_http1_msg_t *m)
{
    mr_hdr_t *h = &m->t->v[m->t->n - 1];
    const char *v = m->t->buf.p + h->val_off;
    while (h->val_len && (v[h->val_len - 1] == ' ' || v[h->val_len - 1] == '\t')) h->val_len--;
    if (trailer_forbidden(m->t->buf.p + h->name_off, h->name_len)) {
        m->t->buf.len = h->name_off;
        m->t->n--;
    }
}

/* One byte of a trailer field line. Trailers never reach llhttp either (it would act on
 * Connection, Content-Length or Transfer-Encoding there): they are checked and kept here, apart
 * from the head, and llhttp sees a last chunk without any. */
static int scan_trailer(mr_http1_msg_t *m, unsigned c)
{
    const bool req = m->type == MR_HTTP1_REQUEST;
    const int bad = bad_status(m);
    if (m->sc_cr) {
        m->sc_cr = false;
        if (c != '\n') return fail(m, bad, "bare CR");
        trailer_end(m);
        m->sc_state = S_FIELD;
        return 0;
    }
    if (c == '\n') return fail(m, bad, "bare LF");
    if (c == '\r') {
        if (m->sc_state == S_NAME) return fail(m, bad, "header line without a colon");
        m->sc_cr = true;
        return 0;
    }
    if (++m->sc_section > m->limits->max_header_size) return fail(m, req ? 431 : 502, "trailer section too large");
    mr_hdr_t *h = m->t->n ? &m->t->v[m->t->n - 1] : NULL;
    switch (m->sc_state) {
    case S_FIELD:
        if (c == ' ' || c == '\t') return fail(m, bad, "obsolete line folding");
        if (c == ':') return fail(m, bad, "empty header name");
        if (!is_tchar(c)) return fail(m, bad, "invalid header name");
        if (m->t->n >= m->limits->max_headers) return fail(m, req ? 431 : 502, "too many trailer fields");
        if (mr_hdrs_push(m->t) < 0) return fail(m, 500, "out of memory");
        h = &m->t->v[m->t->n - 1];
        m->sc_state = S_NAME;
        /* fall through */
    case S_NAME:
        if (is_tchar(c)) {
            h->name_len++;
            return trailer_put(m, c);
        }
        if (c == ':') {
            h->val_off = m->t->buf.len;
            m->sc_seen = false;
            m->sc_state = S_VALUE;
            return 0;
        }
        if (c == ' ' || c == '\t') return fail(m, bad, "whitespace before the colon");
        return fail(m, bad, "invalid header name");
    case S_VALUE:
        if (is_bad_ctl(c)) return fail(m, bad, "invalid byte in header value");
        if (!m->sc_seen && (c == ' ' || c == '\t')) return 0; /* leading OWS */
        m->sc_seen = true;
        h->val_len++;
        return trailer_put(m, c);
    default:
        return mismatch(m);
    }
}

/* Checks the bytes of a line-structured region and sets *k to how many of them belong to it: up to
 * and including the LF that ends it, or all n. *hide asks the caller to consume those bytes
 * without showing them to llhttp (chunk extensions, trailer fields). On error *k is the offending
 * byte's index. */
static int scan(mr_http1_msg_t *m, const unsigned char *p, size_t n, size_t *k, bool *hide)
{
    const bool req = m->type == MR_HTTP1_REQUEST;
    const int bad = bad_status(m);
    const int big = req ? 431 : 502;
    const mr_http1_limits_t *lim = m->limits;
    size_t i = 0;
    *hide = false;
#define BAD(status, why) do { *k = i - 1; return fail(m, (status), (why)); } while (0)
    if (m->sc_region == R_CHUNK_LINE && m->sc_state >= S_CEXT && !m->sc_cr) {
        for (; i < n && p[i] != '\r'; i++)
            if (scan_ext(m, p[i]) < 0) {
                *k = i;
                *hide = true; /* nothing of it is for llhttp, valid prefix or not */
                return -1;
            }
        if (i) {
            *k = i;
            *hide = true;
            return 0;
        }
    }
    if (m->sc_region == R_TRAILERS) {
        /* Everything but the CRLF that ends the section (which may be split across feeds). */
        for (; i < n && !(m->sc_state == S_FIELD && (m->sc_cr || p[i] == '\r')); i++)
            if (scan_trailer(m, p[i]) < 0) {
                *k = i;
                *hide = true;
                return -1;
            }
        if (i) {
            *k = i;
            *hide = true;
            return 0;
        }
    }
    while (i < n) {
        unsigned c = p[i++];
        uint8_t st = m->sc_state;
        bool head = m->sc_region == R_HEAD && st != S_LEAD;
        if (head) m->head_bytes++;
        else if (m->sc_region == R_HEAD && ++m->sc_lead > lim->max_header_size) BAD(bad, "too many empty lines");
        if (m->sc_cr) {
            m->sc_cr = false;
            if (c != '\n') BAD(bad, "bare CR");
            int rc = scan_eol(m);
            if (rc < 0) { *k = i - 1; return -1; }
            if (rc) {
                *k = i;
                return 0;
            }
            continue;
        }
        if (c == '\r') {
            if (scan_cr(m) < 0) { *k = i - 1; return -1; }
            m->sc_cr = true;
            continue;
        }
        /* RFC 9112 2.2 tolerates a bare LF, but hops that do not would see other lines. */
        if (c == '\n') BAD(bad, "bare LF");
        switch (st) {
        case S_LEAD:
            m->head_bytes = 1;
            m->sc_state = req ? S_METHOD : S_STATUS;
            m->sc_line = 0;
            m->sc_vlen = 0;
            m->sc_seen = false;
            if (!req) goto status;
            /* fall through */
        case S_METHOD:
            if (++m->sc_line > lim->max_request_line) BAD(414, "request line too long");
            if (is_tchar(c)) {
                /* sc_vlen: how much of "PRI" the method is so far (0xff: not it). */
                m->sc_vlen = m->sc_vlen < 3 && c == (unsigned)"PRI"[m->sc_vlen] ? m->sc_vlen + 1 : 0xff;
                break;
            }
            if (c == ' ' && m->sc_line > 1) {
                /* The HTTP/2 preface: llhttp 8 then waits for "SM" and never reports a head. */
                if (m->sc_vlen == 3) BAD(400, "HTTP/2 preface on an HTTP/1 connection");
                m->sc_state = S_TARGET;
                break;
            }
            BAD(400, "invalid request method");
        case S_TARGET:
            if (++m->sc_line > lim->max_request_line) BAD(414, "request line too long");
            if (c > 0x20 && c < 0x7f) {
                m->sc_seen = true;
                break;
            }
            if (c == ' ' && m->sc_seen) {
                m->sc_state = S_VERSION;
                m->sc_vlen = 0;
                break;
            }
            BAD(400, "invalid request target");
        case S_VERSION: {
            if (++m->sc_line > lim->max_request_line) BAD(414, "request line too long");
            uint8_t v = m->sc_vlen++;
            bool digit = c >= '0' && c <= '9';
            if (v < 5 && c == (unsigned)"HTTP/"[v]) break;
            if (v == 6 && c == '.') break;
            /* Judged digit by digit, ahead of llhttp (which takes some, e.g. 2.0, and not others). */
            if (v == 5 && digit) {
                if (c != '1') BAD(505, "unsupported HTTP version");
                break;
            }
            if (v == 7 && digit) {
                if (c > '1') BAD(505, "unsupported HTTP version");
                break;
            }
            BAD(400, "malformed HTTP version");
        }
        case S_STATUS:
        status:
            if (++m->sc_line > lim->max_header_size) BAD(502, "status line too long");
            if (is_bad_ctl(c)) BAD(502, "invalid byte in status line");
            break;
        case S_FIELD:
            if (++m->sc_section > lim->max_header_size) BAD(big, "header section too large");
            /* A line starting with whitespace is obs-fold (or, right after the start line, a
             * smuggling vector): RFC 9112 5.2 lets us reject it, and we do. */
            if (c == ' ' || c == '\t') BAD(bad, "obsolete line folding");
            if (c == ':') BAD(bad, "empty header name");
            if (!is_tchar(c)) BAD(bad, "invalid header name");
            m->sc_state = S_NAME;
            break;
        case S_NAME:
            if (++m->sc_section > lim->max_header_size) BAD(big, "header section too large");
            if (is_tchar(c)) break;
            if (c == ':') { m->sc_state = S_VALUE; break; }
            if (c == ' ' || c == '\t') BAD(bad, "whitespace before the colon");
            BAD(bad, "invalid header name");
        case S_VALUE: {
            if (is_bad_ctl(c)) BAD(bad, "invalid byte in header value");
            /* The common case, in a tight loop: plain value bytes up to the next CR. */
            size_t j = i;
            while (j < n && !is_bad_ctl(p[j])) j++;
            size_t run = j - (i - 1);
            if ((size_t)m->sc_section + run > lim->max_header_size) {
                /* Blame the exact byte past the limit: llhttp must see the ones before it. */
                i += lim->max_header_size - m->sc_section;
                BAD(big, "header section too large");
            }
            m->sc_section += (uint32_t)run;
            if (head) m->head_bytes += (uint32_t)(run - 1);
            i = j;
            break;
        }
        case S_DATA_END:
            BAD(bad, "chunk data not followed by CRLF");
        case S_CSIZE: {
            if (++m->sc_line > lim->max_header_size) BAD(bad, "chunk line too long");
            int v = hexval(c);
            if (v >= 0) {
                /* 2^60 is far beyond any body we would accept, and keeps sizes signed-safe. */
                if (m->sc_size >> 56) BAD(bad, "chunk size too large");
                m->sc_size = m->sc_size << 4 | (uint64_t)v;
                m->sc_seen = true;
                break;
            }
            /* No whitespace, sign or "0x": only ';' may follow the digits. The extension is
             * scanned (and hidden) by the next call, so llhttp gets the digits alone first. */
            if (c == ';' && m->sc_seen) {
                m->sc_line--;
                m->sc_state = S_CEXT;
                *k = i - 1;
                return 0;
            }
            BAD(bad, "invalid chunk size");
        }
        default:
            *k = i - 1;
            return mismatch(m);
        }
    }
#undef BAD
    *k = n;
    return 0;
}

/* What follows a head, mirroring llhttp__after_headers_complete for the cases normalise admits. */
static void scan_after_head(mr_http1_msg_t *m)
{
    bool skip = m->parser.flags & F_SKIPBODY;
    if (skip) m->has_body = false;
    if (skip || (m->upgrade && !m->has_body)) {
        m->sc_region = R_AWAIT;
    } else if (m->chunked) {
        scan_chunk_line(m, S_CSIZE);
    } else if (m->content_length > 0) {
        m->sc_region = R_BODY;
        m->sc_size = (uint64_t)m->content_length;
        m->sc_next = R_AWAIT;
    } else if (m->content_length == 0 || m->type == MR_HTTP1_REQUEST) {
        m->sc_region = R_AWAIT;
    } else {
        m->sc_region = R_RAW; /* read until close */
    }
}

/* ------------------------------------------------------------------------------------------ */
/* llhttp callbacks                                                                             */

static int buf_add(mr_http1_msg_t *m, mr_vec_t *v, const char *p, size_t n)
{
    uint32_t cap = m->limits->max_request_line + m->limits->max_header_size + 1024;
    if (mr_vec_append(v, p, n, cap) < 0)
        return fail(m, m->type == MR_HTTP1_REQUEST ? 431 : 502, "header section too large");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    m->h->buf.len = 0;
    m->h->n = 0;
    m->t->buf.len = 0;
    m->t->n = 0;
    m->url_off = m->url_len = m->reason_off = m->reason_len = 0;
    m->content_length = -1;
    m->chunked = m->keep_alive = m->upgrade = m->expect_continue = m->has_body = false;
    m->in_value = m->head_done = false;
    m->host_idx = -1;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->url_len == 0) m->url_off = m->h->buf.len;
    m->url_len += (uint32_t)n;
    if (m->url_len > m->limits->max_request_line) return fail(m, 414, "request line too long");
    return buf_add(m, &m->h->buf, at, n);
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->reason_len == 0) m->reason_off = m->h->buf.len;
    m->reason_len += (uint32_t)n;
    return buf_add(m, &m->h->buf, at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->head_done) return mismatch(m); /* trailers are the pre-scan's, never llhttp's */
    if (m->in_value || m->h->n == 0 || m->h->v[m->h->n - 1].flags & VALUE_DONE) {
        if (m->h->n >= m->limits->max_headers)
            return fail(m, m->type == MR_HTTP1_REQUEST ? 431 : 502, "too many headers");
        if (mr_hdrs_push(m->h) < 0) return fail(m, 500, "out of memory");
        m->in_value = false;
    }
    mr_hdr_t *h = &m->h->v[m->h->n - 1];
    if ((size_t)h->name_len + n > 0xffff) return fail(m, m->type == MR_HTTP1_REQUEST ? 431 : 502, "header name too long");
    h->name_len = (uint16_t)(h->name_len + n);
    return buf_add(m, &m->h->buf, at, n);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->head_done || m->h->n == 0) return mismatch(m); /* the pre-scan rejects a value without a name */
    mr_hdr_t *h = &m->h->v[m->h->n - 1];
    if (!m->in_value) {
        m->in_value = true;
        h->val_off = m->h->buf.len;
        h->val_len = 0;
    }
    h->val_len += (uint32_t)n;
    return buf_add(m, &m->h->buf, at, n);
}

static int on_header_value_complete(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->head_done || m->h->n == 0) return mismatch(m);
    mr_hdr_t *h = &m->h->v[m->h->n - 1];
    if (!m->in_value) h->val_off = m->h->buf.len, h->val_len = 0;
    m->in_value = true;
    h->flags |= VALUE_DONE;
    /* The pre-scan already refuses these; kept so the value list itself is the guarantee. */
    const unsigned char *v = (const unsigned char *)m->h->buf.p + h->val_off;
    for (uint32_t i = 0; i < h->val_len; i++)
        if (is_bad_ctl(v[i])) return fail(m, bad_status(m), "invalid byte in header value");
    /* llhttp may leave trailing whitespace in the span. */
    while (h->val_len && (v[h->val_len - 1] == ' ' || v[h->val_len - 1] == '\t')) h->val_len--;
    return 0;
}

static bool name_is(const mr_http1_msg_t *m, const mr_hdr_t *h, const char *name, size_t len)
{
    return h->name_len == len && strncasecmp(m->h->buf.p + h->name_off, name, len) == 0;
}

static bool val_is(const char *v, size_t vlen, const char *s)
{
    size_t n = strlen(s);
    return vlen == n && strncasecmp(v, s, n) == 0;
}

/* Walks a comma-separated list, calling fn for each trimmed, non-empty element. */
typedef int (*tok_fn)(mr_http1_msg_t *m, const char *t, size_t n, void *arg);
static int each_token(mr_http1_msg_t *m, const char *v, size_t len, tok_fn fn, void *arg)
{
    size_t i = 0;
    while (i <= len) {
        size_t s = i;
        while (i < len && v[i] != ',') i++;
        size_t e = i;
        while (s < e && (v[s] == ' ' || v[s] == '\t')) s++;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e > s) {
            int rc = fn(m, v + s, e - s, arg);
            if (rc) return rc;
        }
        i++;
    }
    return 0;
}

static int mark_connection_token(mr_http1_msg_t *m, const char *t, size_t n, void *arg)
{
    (void)arg;
    for (uint32_t i = 0; i < m->h->n; i++)
        if (name_is(m, &m->h->v[i], t, n)) m->h->v[i].flags |= MR_HDR_HOP;
    return 0;
}

typedef struct {
    int chunked, other; /* how many of each */
    bool last_chunked;
} te_t;

static int te_token(mr_http1_msg_t *m, const char *t, size_t n, void *arg)
{
    (void)m;
    te_t *te = arg;
    te->last_chunked = n == 7 && strncasecmp(t, "chunked", 7) == 0;
    if (te->last_chunked) te->chunked++;
    else te->other++;
    return 0;
}

static int parse_content_length(const char *v, size_t n, int64_t *out)
{
    if (n == 0 || n > 15) return -1;  /* 15 digits: far above any limit, and no overflow */
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return 0;
}

/* reg-name / IP-literal characters (RFC 3986): unreserved, pct-encoded, sub-delims. */
static bool host_char(unsigned c)
{
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
    if (c >= '0' && c <= '9') return true;
    return c && strchr("-._~%!$&'()*+,;=", (int)c) != NULL;
}

/* An authority without userinfo: host [ ":" port ]. Anything else (userinfo, path, query,
 * spaces, backslashes) would let routing and the upstream disagree on the target host. */
static bool authority_valid(const char *v, size_t n)
{
    size_t i = 0;
    if (n && v[0] == '[') {
        for (i = 1; i < n && v[i] != ']'; i++)
            if (!host_char((unsigned char)v[i]) && v[i] != ':') return false;
        if (i == n || i == 1) return false;
        i++;
    } else {
        while (i < n && v[i] != ':') {
            if (!host_char((unsigned char)v[i])) return false;
            i++;
        }
        if (i == 0) return false;
    }
    if (i == n) return true;
    if (v[i++] != ':' || n - i > 5) return false;
    for (; i < n; i++)
        if (v[i] < '0' || v[i] > '9') return false;
    return true;
}

/* absolute-form (RFC 9112 3.2.2): the target's authority replaces any Host header, and the target
 * becomes origin-form, so routing, filters and the upstream all see one host. */
static int absolute_form(mr_http1_msg_t *m)
{
    const char *u = m->h->buf.p + m->url_off;
    uint32_t ul = m->url_len;
    uint32_t a = u[4] == ':' ? 7 : 8, e = a;
    while (e < ul && u[e] != '/' && u[e] != '?' && u[e] != '#') e++;
    if (e == a || !authority_valid(u + a, e - a)) return fail(m, 400, "invalid authority in request target");
    uint32_t auth_off = m->url_off + a, auth_len = e - a;
    if (e == ul || u[e] != '/') {
        /* "http://h" or "http://h?q": the path is empty, and origin-form needs the "/". */
        uint32_t rest_off = m->url_off + e, rest_len = ul - e;
        size_t limit = (size_t)m->limits->max_request_line + m->limits->max_header_size + 1024;
        if (mr_vec_reserve(&m->h->buf, (size_t)rest_len + 1, limit) < 0) return fail(m, 414, "request line too long");
        uint32_t off = m->h->buf.len;
        mr_vec_put(&m->h->buf, "/", 1);
        mr_vec_put(&m->h->buf, m->h->buf.p + rest_off, rest_len);
        m->url_off = off;
        m->url_len = rest_len + 1;
    } else {
        m->url_off += e;
        m->url_len = ul - e;
    }
    if (m->host_idx < 0) {
        int i = mr_http1_add_header(m, "Host", 4, "", 0);
        if (i < 0) return fail(m, 431, "header section too large");
        m->host_idx = i;
        m->h->v[i].flags |= MR_HDR_HOST;
    }
    m->h->v[m->host_idx].val_off = auth_off;
    m->h->v[m->host_idx].val_len = auth_len;
    return 0;
}

static int check_target(mr_http1_msg_t *m)
{
    const char *u = m->h->buf.p + m->url_off;
    uint32_t ul = m->url_len;
    if (ul == 0) return fail(m, 400, "empty request target");
    if (u[0] == '/') return 0;
    if (ul == 1 && u[0] == '*') return m->method == HTTP_OPTIONS ? 0 : fail(m, 400, "asterisk-form outside OPTIONS");
    if ((ul > 7 && strncasecmp(u, "http://", 7) == 0) || (ul > 8 && strncasecmp(u, "https://", 8) == 0))
        return absolute_form(m);
    return fail(m, 400, "invalid request target");
}

/* Classifies headers and enforces the RFC 9112 framing rules llhttp 8 does not. */
static int normalise(mr_http1_msg_t *m)
{
    bool req = m->type == MR_HTTP1_REQUEST;
    int bad = bad_status(m);
    int n_te = 0, n_cl = 0;
    te_t te = { 0, 0, false };
    m->major = llhttp_get_http_major(&m->parser);
    m->minor = llhttp_get_http_minor(&m->parser);
    m->method = llhttp_get_method(&m->parser);
    m->status = llhttp_get_status_code(&m->parser);
    if (m->major != 1 || m->minor > 1) return fail(m, req ? 505 : 502, "unsupported HTTP version");
    if (req && m->method == HTTP_CONNECT) return fail(m, 405, "CONNECT not supported");
    for (uint32_t i = 0; i < m->h->n; i++) {
        mr_hdr_t *h = &m->h->v[i];
        h->flags &= (uint16_t)~VALUE_DONE;
        const char *v = m->h->buf.p + h->val_off;
        if (h->name_len == 0) return fail(m, bad, "empty header name");
        switch (h->name_len) {
        case 4:
            if (name_is(m, h, "host", 4)) {
                if (m->host_idx >= 0) return fail(m, bad, "duplicate Host");
                m->host_idx = (int)i;
                h->flags |= MR_HDR_HOST;
                /* Empty is allowed: the target may carry the authority (or have none). */
                if (h->val_len && !authority_valid(v, h->val_len)) return fail(m, bad, "invalid Host");
            }
            break;
        case 2:
            if (name_is(m, h, "te", 2)) h->flags |= MR_HDR_HOP;
            break;
        case 3:
            if (name_is(m, h, "via", 3)) h->flags |= MR_HDR_VIA;
            break;
        case 6:
            if (name_is(m, h, "expect", 6)) {
                h->flags |= MR_HDR_HOP; /* we answer 100-continue ourselves */
                if (!req) break;
                if (!val_is(v, h->val_len, "100-continue")) return fail(m, 417, "unsupported Expect");
                /* RFC 9110 10.1.1: an HTTP/1.0 client cannot have meant it. */
                if (m->minor >= 1) m->expect_continue = true;
            }
            break;
        case 7:
            if (name_is(m, h, "trailer", 7) || name_is(m, h, "upgrade", 7)) h->flags |= MR_HDR_HOP;
            break;
        case 10:
            if (name_is(m, h, "connection", 10) || name_is(m, h, "keep-alive", 10)) h->flags |= MR_HDR_HOP;
            break;
        case 14:
            if (name_is(m, h, "content-length", 14)) {
                h->flags |= MR_HDR_HOP; /* we write the framing ourselves */
                /* Even equal duplicates: some hops merge them into a list, others take the first. */
                if (++n_cl > 1) return fail(m, bad, "duplicate Content-Length");
                if (parse_content_length(v, h->val_len, &m->content_length) < 0)
                    return fail(m, bad, "invalid Content-Length");
            }
            break;
        case 15:
            if (name_is(m, h, "x-forwarded-for", 15)) h->flags |= MR_HDR_XFF;
            break;
        case 17:
            if (name_is(m, h, "x-forwarded-proto", 17)) h->flags |= MR_HDR_XFP;
            if (name_is(m, h, "transfer-encoding", 17)) {
                h->flags |= MR_HDR_HOP;
                n_te++;
                each_token(m, v, h->val_len, te_token, &te);
            }
            break;
        }
        if (h->name_len > 6 && strncasecmp(m->h->buf.p + h->name_off, "proxy-", 6) == 0) h->flags |= MR_HDR_HOP;
    }
    for (uint32_t i = 0; i < m->h->n; i++)
        if (name_is(m, &m->h->v[i], "connection", 10))
            each_token(m, m->h->buf.p + m->h->v[i].val_off, m->h->v[i].val_len, mark_connection_token, NULL);
    if (n_te) {
        if (req && m->minor == 0) return fail(m, 400, "Transfer-Encoding in an HTTP/1.0 request");
        if (n_cl) return fail(m, bad, "both Content-Length and Transfer-Encoding");
        if (!te.last_chunked) return fail(m, bad, "chunked is not the final transfer coding");
        if (te.chunked > 1) return fail(m, bad, "chunked applied twice");
        /* We re-frame bodies and decode no other coding, so forwarding one would corrupt it. */
        if (te.other) return fail(m, req ? 501 : 502, "unsupported transfer coding");
        m->chunked = true;
    }
    if (req) {
        if (m->minor == 1 && m->host_idx < 0) return fail(m, 400, "missing Host");
        if (check_target(m) < 0) return -1;
    }
    /* llhttp frames the body from its own reading of the same headers: they must agree. */
    uint16_t fl = m->parser.flags;
    bool agree = m->chunked == !!(fl & F_CHUNKED);
    if (!m->chunked && m->content_length >= 0)
        agree = agree && (fl & F_CONTENT_LENGTH) && m->parser.content_length == (uint64_t)m->content_length;
    if (m->content_length < 0 && (fl & F_CONTENT_LENGTH)) agree = false;
    if (!agree) return fail(m, bad, "ambiguous message framing");
    m->keep_alive = llhttp_should_keep_alive(&m->parser);
    /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing. */
    if (n_te && m->minor == 0) m->keep_alive = false;
    m->upgrade = llhttp_get_upgrade(&m->parser);
    m->has_body = m->chunked || m->content_length > 0;
    m->head_done = true;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    if (normalise(m) < 0) return -1;
    if (m->type == MR_HTTP1_REQUEST) {
        scan_after_head(m);
        m->cbs->on_head(m);
        return HPE_PAUSED;
    }
    /* 1xx, 204 and 304 never have a body whatever their headers say; llhttp 8 would wait for a
     * Content-Length body after a 304 (RFC 9110 8.6 lets it carry the representation's length).
     * The flag is set here rather than by returning 1 so it also holds across a pause. */
    int st = m->status;
    if (st / 100 == 1 || st == 204 || st == 304) m->parser.flags |= F_SKIPBODY;
    int rc = m->cbs->on_head(m);
    if (rc < 0) return -1;
    if (rc == 1) m->parser.flags |= F_SKIPBODY;
    if (rc == HPE_PAUSED) {
        /* llhttp resumes at after_headers_complete and reads F_SKIPBODY then; so do we. */
        m->sc_region = R_DECIDE;
        return HPE_PAUSED;
    }
    scan_after_head(m);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->sc_region == R_BODY) {
        if (n > m->sc_size) return mismatch(m);
        m->sc_size -= n;
        if (m->sc_size == 0) {
            if (m->sc_next == R_CHUNK_LINE) scan_chunk_line(m, S_DATA_END);
            else m->sc_region = R_AWAIT;
        }
    } else if (m->sc_region != R_RAW) {
        return mismatch(m);
    }
    int rc = m->cbs->on_body(m, at, n);
    /* HPE_PAUSED here is backpressure: llhttp counts the span as consumed and resumes after it. */
    return rc == HPE_PAUSED ? HPE_PAUSED : rc < 0 ? -1 : 0;
}

static int on_chunk_header(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    uint64_t size = m->parser.content_length;
    if (!(m->sc_region == R_BODY && m->sc_size == size) && !(m->sc_region == R_TRAILERS && size == 0))
        return mismatch(m);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->sc_region != R_AWAIT && m->sc_region != R_RAW) return mismatch(m);
    /* After an upgrade the stream is another protocol; after a non-persistent message llhttp
     * ignores whatever follows (and the caller closes). Either way it is not ours to scan. */
    if (m->upgrade || !llhttp_should_keep_alive(&m->parser)) m->sc_region = R_RAW;
    else scan_head_start(m);
    int rc = m->cbs->on_done(m);
    if (rc < 0) return -1;
    return m->type == MR_HTTP1_REQUEST || rc == HPE_PAUSED ? HPE_PAUSED : 0;
}

static llhttp_settings_t settings;
static int settings_ready;

static void settings_init(void)
{
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_status = on_status;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_chunk_header = on_chunk_header;
    settings.on_message_complete = on_message_complete;
    settings_ready = 1;
}

/* ------------------------------------------------------------------------------------------ */
/* API                                                                                          */

void mr_http1_init(mr_http1_msg_t *m, int type, const mr_http1_limits_t *limits,
                   const mr_http1_cbs_t *cbs, void *owner)
{
    if (!settings_ready) settings_init(); /* idempotent; benign if two threads race */
    memset(m, 0, sizeof *m);
    m->type = type;
    m->limits = limits;
    m->cbs = cbs;
    m->owner = owner;
    m->host_idx = -1;
    m->content_length = -1;
    scan_head_start(m);
    llhttp_init(&m->parser, type == MR_HTTP1_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
    m->parser.data = m;
}

void mr_http1_set_store(mr_http1_msg_t *m, mr_hdrs_t *h, mr_hdrs_t *t)
{
    m->h = h;
    m->t = t;
}

void mr_http1_next(mr_http1_msg_t *m)
{
    if (m->h) mr_hdrs_reset(m->h);
    if (m->t) mr_hdrs_reset(m->t);
    m->head_done = false;
    m->error_status = 0;
}

bool mr_http1_paused(const mr_http1_msg_t *m) { return llhttp_get_errno(&m->parser) == HPE_PAUSED; }

void mr_http1_skip_body(mr_http1_msg_t *m)
{
    m->parser.flags |= F_SKIPBODY;
    m->has_body = false;
}

bool mr_http1_idle(const mr_http1_msg_t *m)
{
    return m->sc_region == R_HEAD && m->sc_state == S_LEAD && !m->sc_cr;
}

bool mr_http1_line_done(const mr_http1_msg_t *m)
{
    return m->head_done || (m->sc_region == R_HEAD && m->sc_state >= S_FIELD);
}

void mr_http1_resume(mr_http1_msg_t *m)
{
    if (llhttp_get_errno(&m->parser) == HPE_PAUSED) llhttp_resume(&m->parser);
}

static int llhttp_failed(mr_http1_msg_t *m, llhttp_errno_t e)
{
    if (!m->error_status) {
        bool req = m->type == MR_HTTP1_REQUEST;
        m->error_status = req ? 400 : 502;
        m->error_reason = llhttp_get_error_reason(&m->parser);
        if (!m->error_reason) m->error_reason = llhttp_errno_name(e);
    }
    return -1;
}

/* The pre-scan refused byte k. llhttp has not seen the k bytes before it; if it would have
 * refused one of them, its error comes first, as it would had the bytes arrived one at a time:
 * the answer must not depend on how the stream was split. */
static int prefix_failed(mr_http1_msg_t *m, const char *p, size_t k)
{
    if (k == 0) return -1;
    int status = m->error_status;
    const char *reason = m->error_reason;
    m->error_status = 0;
    m->error_reason = NULL;
    llhttp_errno_t e = llhttp_execute(&m->parser, p, k);
    if (e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) return llhttp_failed(m, e);
    if (m->error_status) return -1;
    m->error_status = status;
    m->error_reason = reason;
    return -1;
}

int mr_http1_feed(mr_http1_msg_t *m, const char *p, size_t n, size_t *consumed)
{
    size_t off = 0;
    *consumed = 0;
    if (!p) p = "";
    if (m->sc_region == R_DECIDE && !mr_http1_paused(m)) scan_after_head(m);
    for (;;) {
        uint8_t region = m->sc_region;
        size_t k;
        bool hide = false;
        switch (region) {
        case R_BODY: k = n - off < m->sc_size ? n - off : (size_t)m->sc_size; break;
        case R_RAW: k = n - off; break;
        case R_AWAIT:
        case R_DECIDE: k = 0; break;
        default:
            if (scan(m, (const unsigned char *)p + off, n - off, &k, &hide) < 0)
                return hide ? -1 : prefix_failed(m, p + off, k);
            if (hide) {
                off += k;
                if (off == n) {
                    *consumed = n;
                    return MR_HTTP1_OK;
                }
                continue;
            }
        }
        llhttp_errno_t e = llhttp_execute(&m->parser, p + off, k);
        if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            size_t used = (size_t)(llhttp_get_error_pos(&m->parser) - (p + off));
            /* Inside a line region llhttp can only stop where the region ends; otherwise the
             * pre-scan has run ahead of it. */
            if (used != k && region != R_BODY && region != R_RAW) return mismatch(m);
            *consumed = off + used;
            return e == HPE_PAUSED ? MR_HTTP1_PAUSED : MR_HTTP1_UPGRADE;
        }
        if (e != HPE_OK) return llhttp_failed(m, e);
        off += k;
        if (off == n) {
            *consumed = n;
            return MR_HTTP1_OK;
        }
        /* Input is left but nothing could be handed over: the callback that ends R_AWAIT did not
         * come where the pre-scan expected it. */
        if (k == 0 && (m->sc_region == R_AWAIT || m->sc_region == R_DECIDE)) return mismatch(m);
    }
}

int mr_http1_finish(mr_http1_msg_t *m)
{
    return llhttp_finish(&m->parser) == HPE_OK ? 0 : -1;
}

int mr_http1_add_header(mr_http1_msg_t *m, const char *name, size_t nlen, const char *val, size_t vlen)
{
    size_t limit = (size_t)m->limits->max_request_line + m->limits->max_header_size + 65536;
    if (m->h->limit < limit) m->h->limit = (uint32_t)limit;
    return mr_hdrs_add(m->h, name, nlen, val, vlen);
}

const char *mr_http1_method_str(const mr_http1_msg_t *m)
{
    return llhttp_method_name((llhttp_method_t)m->method);
}

