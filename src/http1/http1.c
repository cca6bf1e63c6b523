#include "http1/http1.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MSG(p) ((mr_http1_msg_t *)(p)->data)

static int fail(mr_http1_msg_t *m, int status, const char *reason)
{
    if (!m->error_status) {
        m->error_status = status;
        m->error_reason = reason;
    }
    return -1;
}

static int buf_add(mr_http1_msg_t *m, const char *p, size_t n)
{
    uint32_t cap = m->limits->max_request_line + m->limits->max_header_size + 1024;
    if (mr_vec_append(&m->buf, p, n, cap) < 0)
        return fail(m, m->type == MR_HTTP1_REQUEST ? 431 : 502, "header section too large");
    return 0;
}

/* head_bytes counts the header section (and a response's status line); the request line has
 * its own limit (max_request_line), so each answers with its own status (414 vs 431). */
static int count_head(mr_http1_msg_t *m, size_t n, int status, const char *why)
{
    m->head_bytes += (uint32_t)n;
    if (m->head_bytes > m->limits->max_header_size) return fail(m, status, why);
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    m->buf.len = 0;
    m->nhdrs = 0;
    m->url_off = m->url_len = m->reason_off = m->reason_len = 0;
    m->head_bytes = 0;
    m->content_length = -1;
    m->chunked = m->keep_alive = m->upgrade = m->expect_continue = m->has_body = false;
    m->in_value = m->head_done = false;
    m->host_idx = -1;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->url_len == 0) m->url_off = m->buf.len;
    m->url_len += (uint32_t)n;
    if (m->url_len > m->limits->max_request_line) return fail(m, 414, "request line too long");
    return buf_add(m, at, n);
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->reason_len == 0) m->reason_off = m->buf.len;
    m->reason_len += (uint32_t)n;
    if (count_head(m, n, 502, "upstream status line too long") < 0) return -1;
    return buf_add(m, at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->in_value || m->nhdrs == 0 || m->hdrs[m->nhdrs - 1].flags & 0x8000) {
        /* A new header starts (0x8000 marks "value complete"). */
        int status = m->type == MR_HTTP1_REQUEST ? 431 : 502;
        if (m->nhdrs >= m->limits->max_headers) return fail(m, status, "too many headers");
        if (m->nhdrs == m->hdrs_cap) {
            uint32_t cap = m->hdrs_cap ? m->hdrs_cap * 2 : 16;
            mr_hdr_t *h = realloc(m->hdrs, cap * sizeof *h);
            if (!h) return fail(m, 500, "out of memory");
            m->hdrs = h;
            m->hdrs_cap = cap;
        }
        mr_hdr_t *h = &m->hdrs[m->nhdrs++];
        memset(h, 0, sizeof *h);
        h->name_off = m->buf.len;
        h->val_off = m->buf.len;
        m->in_value = false;
    }
    mr_hdr_t *h = &m->hdrs[m->nhdrs - 1];
    if ((size_t)h->name_len + n > 0xffff) return fail(m, 431, "header name too long");
    h->name_len = (uint16_t)(h->name_len + n);
    if (count_head(m, n + 4, m->type == MR_HTTP1_REQUEST ? 431 : 502, "header section too large") < 0) return -1;
    return buf_add(m, at, n);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    mr_hdr_t *h = &m->hdrs[m->nhdrs - 1];
    if (!m->in_value) {
        m->in_value = true;
        h->val_off = m->buf.len;
        h->val_len = 0;
    }
    h->val_len += (uint32_t)n;
    if (count_head(m, n, m->type == MR_HTTP1_REQUEST ? 431 : 502, "header section too large") < 0) return -1;
    return buf_add(m, at, n);
}

static int on_header_value_complete(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    if (m->nhdrs == 0) return 0;
    mr_hdr_t *h = &m->hdrs[m->nhdrs - 1];
    if (!m->in_value) h->val_off = m->buf.len, h->val_len = 0;
    m->in_value = true;
    h->flags |= 0x8000;
    /* llhttp 8 lets some control bytes through in values; RFC 9110 forbids CR, LF and NUL. */
    const unsigned char *v = (const unsigned char *)m->buf.p + h->val_off;
    for (uint32_t i = 0; i < h->val_len; i++)
        if ((v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f)
            return fail(m, 400, "invalid byte in header value");
    /* Trim trailing whitespace llhttp may leave. */
    while (h->val_len && (v[h->val_len - 1] == ' ' || v[h->val_len - 1] == '\t')) h->val_len--;
    return 0;
}

static bool name_is(const mr_http1_msg_t *m, const mr_hdr_t *h, const char *name, size_t len)
{
    return h->name_len == len && strncasecmp(m->buf.p + h->name_off, name, len) == 0;
}

static bool val_is(const char *v, size_t vlen, const char *s)
{
    size_t n = strlen(s);
    return vlen == n && strncasecmp(v, s, n) == 0;
}

/* Walks a comma-separated list, calling fn for each trimmed element. */
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
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (name_is(m, &m->hdrs[i], t, n)) m->hdrs[i].flags |= MR_HDR_HOP;
    return 0;
}

static int te_token(mr_http1_msg_t *m, const char *t, size_t n, void *arg)
{
    int *state = arg; /* 0 none yet, 1 saw chunked last, 2 saw something after/other */
    if (n == 7 && strncasecmp(t, "chunked", 7) == 0) {
        if (*state == 1) return fail(m, 400, "chunked applied twice");
        *state = 1;
    } else {
        *state = 2;
    }
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

/* Classifies headers and enforces RFC 9112 framing rules llhttp 8 does not. */
static int normalise(mr_http1_msg_t *m)
{
    bool req = m->type == MR_HTTP1_REQUEST;
    int bad = req ? 400 : 502;
    int te_state = 0, n_te = 0, n_cl = 0;
    m->major = llhttp_get_http_major(&m->parser);
    m->minor = llhttp_get_http_minor(&m->parser);
    if (m->major != 1 || m->minor > 1) return fail(m, req ? 505 : 502, "unsupported HTTP version");
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        mr_hdr_t *h = &m->hdrs[i];
        h->flags &= (uint16_t)~0x8000;
        const char *v = m->buf.p + h->val_off;
        if (h->name_len == 0) return fail(m, bad, "empty header name");
        switch (h->name_len) {
        case 4:
            if (name_is(m, h, "host", 4)) {
                if (m->host_idx >= 0) return fail(m, bad, "duplicate Host");
                m->host_idx = (int)i;
                h->flags |= MR_HDR_HOST;
                if (memchr(v, '@', h->val_len) || memchr(v, '/', h->val_len) || memchr(v, ' ', h->val_len))
                    return fail(m, bad, "invalid Host");
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
                if (val_is(v, h->val_len, "100-continue")) m->expect_continue = true;
                else return fail(m, 417, "unsupported Expect");
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
                if (++n_cl > 1) return fail(m, bad, "duplicate Content-Length");
                if (parse_content_length(v, h->val_len, &m->content_length) < 0)
                    return fail(m, bad, "invalid Content-Length");
            }
            break;
        case 15:
            if (name_is(m, h, "x-forwarded-for", 15)) h->flags |= MR_HDR_XFF;
            break;
        case 17:
            if (name_is(m, h, "transfer-encoding", 17)) {
                h->flags |= MR_HDR_HOP;
                n_te++;
                each_token(m, v, h->val_len, te_token, &te_state);
                if (m->error_status) return -1;
            }
            break;
        }
        if (h->name_len > 6 && strncasecmp(m->buf.p + h->name_off, "proxy-", 6) == 0) h->flags |= MR_HDR_HOP;
    }
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (name_is(m, &m->hdrs[i], "connection", 10))
            each_token(m, m->buf.p + m->hdrs[i].val_off, m->hdrs[i].val_len, mark_connection_token, NULL);
    if (n_te) {
        if (req && m->minor == 0) return fail(m, 400, "Transfer-Encoding in an HTTP/1.0 request");
        if (n_cl) return fail(m, bad, "both Content-Length and Transfer-Encoding");
        if (te_state != 1) return fail(m, req ? 501 : 502, "unsupported transfer coding");
        m->chunked = true;
    }
    if (req && m->minor == 1 && m->host_idx < 0) return fail(m, 400, "missing Host");
    m->keep_alive = llhttp_should_keep_alive(&m->parser);
    m->upgrade = llhttp_get_upgrade(&m->parser);
    m->has_body = m->chunked || m->content_length > 0;
    m->method = llhttp_get_method(&m->parser);
    m->status = llhttp_get_status_code(&m->parser);
    m->head_done = true;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    if (normalise(m) < 0) return -1;
    if (m->type == MR_HTTP1_REQUEST) {
        if (m->method == HTTP_CONNECT) return fail(m, 405, "CONNECT not supported");
        m->cbs->on_head(m);
        return HPE_PAUSED;
    }
    int rc = m->cbs->on_head(m);
    if (rc < 0) return -1;
    return rc;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    mr_http1_msg_t *m = MSG(p);
    int rc = m->cbs->on_body(m, at, n);
    /* HPE_PAUSED here is backpressure: llhttp counts the span as consumed and resumes after it. */
    return rc == HPE_PAUSED ? HPE_PAUSED : rc < 0 ? -1 : 0;
}

static int on_message_complete(llhttp_t *p)
{
    mr_http1_msg_t *m = MSG(p);
    int rc = m->cbs->on_done(m);
    if (rc < 0) return -1;
    return m->type == MR_HTTP1_REQUEST || rc == HPE_PAUSED ? HPE_PAUSED : 0;
}

static int on_chunk_ext(llhttp_t *p, const char *at, size_t n)
{
    /* Extensions are dropped (we re-frame), but their size is client-controlled: cap it. */
    mr_http1_msg_t *m = MSG(p);
    m->head_bytes += (uint32_t)n;
    if (m->head_bytes > m->limits->max_header_size + 4096)
        return fail(m, 400, "chunk extensions too long");
    (void)at;
    return 0;
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
    settings.on_message_complete = on_message_complete;
    settings.on_chunk_extension_name = on_chunk_ext;
    settings.on_chunk_extension_value = on_chunk_ext;
    settings_ready = 1;
}

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
    llhttp_init(&m->parser, type == MR_HTTP1_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
    m->parser.data = m;
}

void mr_http1_free(mr_http1_msg_t *m)
{
    mr_vec_free(&m->buf);
    free(m->hdrs);
    m->hdrs = NULL;
    m->nhdrs = m->hdrs_cap = 0;
}

void mr_http1_next(mr_http1_msg_t *m)
{
    m->buf.len = 0;
    m->nhdrs = 0;
    m->head_done = false;
    m->error_status = 0;
}

bool mr_http1_paused(const mr_http1_msg_t *m) { return llhttp_get_errno(&m->parser) == HPE_PAUSED; }

void mr_http1_resume(mr_http1_msg_t *m)
{
    if (llhttp_get_errno(&m->parser) == HPE_PAUSED) llhttp_resume(&m->parser);
}

int mr_http1_feed(mr_http1_msg_t *m, const char *p, size_t n, size_t *consumed)
{
    llhttp_errno_t e = llhttp_execute(&m->parser, p, n);
    switch (e) {
    case HPE_OK:
        *consumed = n;
        return MR_HTTP1_OK;
    case HPE_PAUSED:
        *consumed = (size_t)(llhttp_get_error_pos(&m->parser) - p);
        return MR_HTTP1_PAUSED;
    case HPE_PAUSED_UPGRADE:
        *consumed = (size_t)(llhttp_get_error_pos(&m->parser) - p);
        return MR_HTTP1_UPGRADE;
    default:
        *consumed = 0;
        if (!m->error_status) {
            bool req = m->type == MR_HTTP1_REQUEST;
            m->error_status = req ? 400 : 502;
            m->error_reason = llhttp_get_error_reason(&m->parser);
            if (req && e == HPE_INVALID_VERSION) m->error_status = 505;
            if (!m->error_reason) m->error_reason = llhttp_errno_name(e);
        }
        return -1;
    }
}

int mr_http1_finish(mr_http1_msg_t *m)
{
    return llhttp_finish(&m->parser) == HPE_OK ? 0 : -1;
}

int mr_http1_find(const mr_http1_msg_t *m, const char *name, size_t len, int from)
{
    for (uint32_t i = (uint32_t)(from < 0 ? 0 : from); i < m->nhdrs; i++)
        if (!(m->hdrs[i].flags & MR_HDR_DELETED) && name_is(m, &m->hdrs[i], name, len)) return (int)i;
    return -1;
}

int mr_http1_add_header(mr_http1_msg_t *m, const char *name, size_t nlen, const char *val, size_t vlen)
{
    if (nlen > 0xffff) return -E2BIG;
    if (m->nhdrs == m->hdrs_cap) {
        uint32_t cap = m->hdrs_cap ? m->hdrs_cap * 2 : 16;
        mr_hdr_t *h = realloc(m->hdrs, cap * sizeof *h);
        if (!h) return -ENOMEM;
        m->hdrs = h;
        m->hdrs_cap = cap;
    }
    size_t limit = (size_t)m->limits->max_request_line + m->limits->max_header_size + 65536;
    if (mr_vec_reserve(&m->buf, nlen + vlen, limit) < 0) return -E2BIG;
    mr_hdr_t *h = &m->hdrs[m->nhdrs];
    memset(h, 0, sizeof *h);
    h->name_off = m->buf.len;
    h->name_len = (uint16_t)nlen;
    mr_vec_put(&m->buf, name, nlen);
    h->val_off = m->buf.len;
    h->val_len = (uint32_t)vlen;
    mr_vec_put(&m->buf, val, vlen);
    return (int)m->nhdrs++;
}

const char *mr_http1_method_str(const mr_http1_msg_t *m)
{
    return llhttp_method_name((llhttp_method_t)m->method);
}

const char *mr_http1_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
