#include "proxy/access_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/gen.h"
#include "log/logfmt.h"

#define AL_BUF (64 * 1024)

struct mr_access_log {
    mr_loop_t *loop;
    int fd;
    bool json;
    bool off;           /* access_log = false since a reload (see mr_access_log_configure) */
    const mr_logfmt_t *fmt; /* a named format (log_formats), or NULL for combined / json */
    time_t iso_sec;
    char iso[40];
    mr_op_t op;
    char *buf[2];
    size_t len[2];
    int cur;            /* buffer being filled; the other may be in flight */
    mr_defer_t flush;
    time_t last_sec;
    char date[40];
    void (*on_idle)(void *);
    void *idle_arg;
};

static void start_write(mr_access_log_t *al);

static void write_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)loop; (void)flags;
    mr_access_log_t *al = (mr_access_log_t *)((char *)op - offsetof(mr_access_log_t, op));
    int done = 1 - al->cur;
    if (res > 0 && (size_t)res < al->len[done]) {
        memmove(al->buf[done], al->buf[done] + res, al->len[done] - (size_t)res);
        al->len[done] -= (size_t)res;
        mr_loop_write(al->loop, &al->op, al->fd, al->buf[done], al->len[done]);
        return;
    }
    al->len[done] = 0; /* on error the lines are dropped: logging must not stall serving */
    if (al->len[al->cur]) start_write(al);
    else if (al->on_idle && mr_access_log_idle(al)) al->on_idle(al->idle_arg);
}

static void start_write(mr_access_log_t *al)
{
    if (al->op.active || !al->len[al->cur]) return;
    int w = al->cur;
    al->cur = 1 - al->cur;
    mr_loop_write(al->loop, &al->op, al->fd, al->buf[w], al->len[w]);
}

static void flush_cb(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    start_write((mr_access_log_t *)((char *)d - offsetof(mr_access_log_t, flush)));
}

bool mr_access_log_idle(const mr_access_log_t *al)
{
    return !al || (!al->op.active && !mr_defer_queued(&al->flush) && !al->len[0] && !al->len[1]);
}

void mr_access_log_on_idle(mr_access_log_t *al, void (*fn)(void *), void *arg)
{
    al->on_idle = fn;
    al->idle_arg = arg;
}

mr_access_log_t *mr_access_log_new(mr_loop_t *loop, int fd, bool json)
{
    mr_access_log_t *al = calloc(1, sizeof *al);
    if (!al) return NULL;
    al->loop = loop;
    al->fd = fd;
    al->json = json;
    al->op.fn = write_done;
    al->flush.fn = flush_cb;
    al->buf[0] = malloc(AL_BUF);
    al->buf[1] = malloc(AL_BUF);
    if (!al->buf[0] || !al->buf[1]) { mr_access_log_free(al); return NULL; }
    return al;
}

static void json_str(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') { out[o++] = '\\'; out[o++] = (char)ch; }
        else if (ch < 0x20 || ch >= 0x7f) o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        else out[o++] = (char)ch;
    }
    out[o] = 0;
}

void mr_access_log_configure(mr_access_log_t *al, bool on, bool json, const mr_logfmt_t *fmt)
{
    al->off = !on;
    if (al->fmt != fmt) al->last_sec = 0; /* the cached date's style depends on the format */
    al->fmt = fmt;
    if (al->json != json) {
        al->json = json;
        al->last_sec = 0; /* the date is formatted per format */
    }
}

/* ---- named formats ------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (o->len + n > o->cap) n = o->cap - o->len;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

/* A variable's value, escaped as the format says; "-" when empty or unknown (nginx). */
static void put_val(out_t *o, int esc, const char *s, size_t n)
{
    if (!s || n == 0) { put(o, "-", 1); return; }
    for (size_t i = 0; i < n && o->len + 6 < o->cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (esc == MR_LOGFMT_NONE) { o->p[o->len++] = (char)c; continue; }
        if (esc == MR_LOGFMT_JSON) {
            if (c == '"' || c == '\\') { o->p[o->len++] = '\\'; o->p[o->len++] = (char)c; }
            else if (c < 0x20) o->len += (size_t)snprintf(o->p + o->len, o->cap - o->len, "\\u%04x", c);
            else o->p[o->len++] = (char)c;
            continue;
        }
        if (c == '"' || c == '\\' || c < 0x20 || c > 0x7e) o->len += (size_t)snprintf(o->p + o->len, o->cap - o->len, "\\x%02X", c);
        else o->p[o->len++] = (char)c;
    }
}

static void put_str(out_t *o, int esc, const char *s) { put_val(o, esc, s, s ? strlen(s) : 0); }

/* Seconds with millisecond resolution between two loop times ("-" when either is unknown). */
static void put_secs(out_t *o, uint64_t from, uint64_t to)
{
    if (!from || !to || to < from) { put(o, "-", 1); return; }
    char b[32];
    uint64_t us = to - from;
    int n = snprintf(b, sizeof b, "%llu.%03llu", (unsigned long long)(us / 1000000), (unsigned long long)(us / 1000 % 1000));
    put(o, b, (size_t)n);
}

static void put_num(out_t *o, uint64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    put(o, b, (size_t)n);
}

static const char *hdr(const mr_req_t *r, const char *name, size_t nlen, size_t *vlen)
{
    int i = mr_hdrs_find(&r->hdrs, name, nlen, 0);
    if (i < 0) { *vlen = 0; return NULL; }
    *vlen = r->hdrs.v[i].val_len;
    return mr_hdr_value(&r->hdrs, &r->hdrs.v[i]);
}

static void render(mr_access_log_t *al, const mr_logfmt_t *f, const mr_req_t *r, out_t *o)
{
    uint64_t now = mr_loop_now_us(al->loop);
    mr_tls_conn_t *t = r->peer ? r->peer->tls : NULL;
    char b[64];
    size_t n;
    const char *v;
    for (int k = 0; k < f->nops; k++) {
        const mr_logfmt_op_t *op = &f->ops[k];
        int e = f->escape;
        switch (op->var) {
        case MR_LV_LITERAL: put(o, op->text, op->len); break;
        case MR_LV_REMOTE_ADDR: put_str(o, e, mr_req_client_ip(r)); break;
        case MR_LV_CONNECTION_PEER: put_str(o, e, r->peer ? r->peer->ip : NULL); break;
        case MR_LV_REMOTE_USER: put(o, "-", 1); break;
        case MR_LV_TIME_LOCAL: put_str(o, MR_LOGFMT_NONE, al->date); break;
        case MR_LV_TIME_ISO8601: put_str(o, MR_LOGFMT_NONE, al->iso); break;
        case MR_LV_MSEC: {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            put(o, b, (size_t)snprintf(b, sizeof b, "%lld.%03ld", (long long)ts.tv_sec, ts.tv_nsec / 1000000));
            break;
        }
        case MR_LV_REQUEST:
            if (!r->line_known) { put(o, "-", 1); break; }
            put_str(o, e, r->method_name);
            put(o, " ", 1);
            put_val(o, e, mr_req_target_raw(r), r->target_len);
            put(o, b, (size_t)snprintf(b, sizeof b, " HTTP/%d.%d", r->version / 10, r->version % 10));
            break;
        case MR_LV_REQUEST_METHOD: put_str(o, e, r->line_known ? r->method_name : NULL); break;
        case MR_LV_REQUEST_URI: put_val(o, e, r->line_known ? mr_req_target_raw(r) : NULL, r->target_len); break;
        case MR_LV_URI: put_val(o, e, r->norm.p ? mr_req_view_path(r) : NULL, r->path_len); break;
        case MR_LV_ARGS: put_val(o, e, r->query_off ? mr_req_view_query(r) : NULL, r->query_len); break;
        case MR_LV_SERVER_PROTOCOL:
            if (!r->line_known) { put(o, "-", 1); break; }
            if (r->version >= 20) put(o, "HTTP/2.0", 8);
            else put(o, b, (size_t)snprintf(b, sizeof b, "HTTP/%d.%d", r->version / 10, r->version % 10));
            break;
        case MR_LV_STATUS: put_num(o, (uint64_t)r->resp.status); break;
        case MR_LV_BODY_BYTES_SENT: put_num(o, r->resp_bytes); break;
        case MR_LV_REQUEST_LENGTH: put_num(o, r->body_seen > 0 ? (uint64_t)r->body_seen : 0); break;
        case MR_LV_REQUEST_TIME: put_secs(o, r->t_start_us, now ? now : 1); break;
        case MR_LV_UPSTREAM_ADDR: put_str(o, e, r->up_addr); break;
        case MR_LV_UPSTREAM_STATUS:
            if (r->up_status) put_num(o, (uint64_t)r->up_status);
            else put(o, "-", 1);
            break;
        case MR_LV_UPSTREAM_CONNECT_TIME: put_secs(o, r->t_try_us, r->t_up_conn_us); break;
        case MR_LV_UPSTREAM_HEADER_TIME: put_secs(o, r->t_try_us, r->t_up_head_us); break;
        case MR_LV_UPSTREAM_RESPONSE_TIME:
            put_secs(o, r->t_try_us, r->t_up_end_us ? r->t_up_end_us : r->t_try_us ? now : 0);
            break;
        case MR_LV_UPSTREAM_NAME: put_str(o, e, r->upstream ? r->upstream->conf->name : NULL); break;
        case MR_LV_ROUTE: put_str(o, e, r->route ? r->route->name : NULL); break;
        case MR_LV_REQUEST_ID: v = hdr(r, "x-request-id", 12, &n); put_val(o, e, v, n); break;
        case MR_LV_HOST: put_val(o, e, r->norm.p ? mr_req_view_host(r) : NULL, r->host_len); break;
        case MR_LV_SCHEME: put_str(o, e, t ? "https" : "http"); break;
        case MR_LV_SSL_PROTOCOL: put_str(o, e, t ? mr_tls_protocol(t) : NULL); break;
        case MR_LV_SSL_CIPHER: put_str(o, e, t ? mr_tls_cipher(t) : NULL); break;
        case MR_LV_SSL_SESSION_REUSED: put_str(o, e, t ? (mr_tls_session_reused(t) ? "r" : ".") : NULL); break;
        case MR_LV_SSL_SERVER_NAME: put_str(o, e, t ? mr_tls_sni(t) : NULL); break;
        case MR_LV_SSL_CLIENT_S_DN: put_str(o, e, t ? mr_tls_peer_subject(t) : NULL); break;
        case MR_LV_PID: put_num(o, (uint64_t)getpid()); break;
        case MR_LV_HTTP: v = hdr(r, op->text, op->len, &n); put_val(o, e, v, n); break;
        default: put(o, "-", 1); break;
        }
    }
    put(o, "\n", 1);
    if (o->len == o->cap) o->p[o->len - 1] = '\n'; /* cut short: still one line */
}

int mr_access_log_line(mr_access_log_t *al, const char *line, size_t n)
{
    if (!al || al->off) return -1;
    size_t room = AL_BUF - al->len[al->cur];
    if (n + 1 > room || n + 1 > AL_BUF / 2) return 0; /* full: dropped rather than block */
    char *b = al->buf[al->cur] + al->len[al->cur];
    memcpy(b, line, n);
    size_t len = n;
    if (!n || line[n - 1] != '\n') b[len++] = '\n';
    al->len[al->cur] += len;
    mr_loop_defer(al->loop, &al->flush);
    return 0;
}

void mr_access_log_request(mr_access_log_t *al, const mr_req_t *r)
{
    if (al->off || r->log_written) return;
    time_t now = time(NULL);
    if (now != al->last_sec) {
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(al->date, sizeof al->date, al->json && !al->fmt ? "%Y-%m-%dT%H:%M:%S%z" : "%d/%b/%Y:%H:%M:%S %z",
                 &tm);
        /* nginx's $time_iso8601: the offset with a colon (+00:00). */
        size_t k = strftime(al->iso, sizeof al->iso, "%Y-%m-%dT%H:%M:%S%z", &tm);
        if (k >= 5 && k + 1 < sizeof al->iso) {
            memmove(al->iso + k - 1, al->iso + k - 2, 3);
            al->iso[k - 2] = ':';
        }
        al->last_sec = now;
    }
    if (al->fmt) {
        out_t o = { al->buf[al->cur] + al->len[al->cur], 0, AL_BUF - al->len[al->cur] };
        if (o.cap < 4096) return; /* both buffers full: drop rather than block */
        if (o.cap > 16384) o.cap = 16384;
        render(al, al->fmt, r, &o);
        al->len[al->cur] += o.len;
        mr_loop_defer(al->loop, &al->flush);
        return;
    }
    const mr_hdrs_t *h = &r->hdrs;
    char url[2048] = "", ua[512] = "-", ref[512] = "-";
    if (r->line_known) json_str(url, sizeof url, mr_req_target_raw(r), r->target_len);
    int i = mr_hdrs_find(h, "user-agent", 10, 0);
    if (i >= 0) json_str(ua, sizeof ua, mr_hdr_value(h, &h->v[i]), h->v[i].val_len);
    i = mr_hdrs_find(h, "referer", 7, 0);
    if (i >= 0) json_str(ref, sizeof ref, mr_hdr_value(h, &h->v[i]), h->v[i].val_len);
    uint64_t ms = r->started_ms ? mr_loop_now(al->loop) - r->started_ms : 0;
    char *b = al->buf[al->cur] + al->len[al->cur];
    size_t room = AL_BUF - al->len[al->cur];
    if (room < 4096) return; /* both buffers full: drop rather than block */
    /* The request line as received; "-" when the client never sent a whole one (nginx's $request). */
    char line[2200];
    if (r->line_known)
        snprintf(line, sizeof line, "%s %s HTTP/%d.%d", r->method_name ? r->method_name : "-", url, r->version / 10,
                 r->version % 10);
    else
        snprintf(line, sizeof line, "-");
    /* JSON lines of TLS connections say how the client connected (absent on plain TCP). */
    char tls[1024] = "";
    mr_tls_conn_t *t = r->peer ? r->peer->tls : NULL;
    if (al->json && t) {
        const char *sni = mr_tls_sni(t), *subj = mr_tls_peer_subject(t);
        char esni[300] = "", esubj[600] = "";
        if (sni) json_str(esni, sizeof esni, sni, strlen(sni));
        if (subj) json_str(esubj, sizeof esubj, subj, strlen(subj));
        int k = snprintf(tls, sizeof tls, ",\"tls_protocol\":\"%s\",\"tls_cipher\":\"%s\",\"tls_reused\":%s",
                         mr_tls_protocol(t), mr_tls_cipher(t), mr_tls_session_reused(t) ? "true" : "false");
        if (sni && k > 0 && (size_t)k < sizeof tls) k += snprintf(tls + k, sizeof tls - (size_t)k, ",\"tls_sni\":\"%s\"", esni);
        if (subj && k > 0 && (size_t)k < sizeof tls)
            snprintf(tls + k, sizeof tls - (size_t)k, ",\"tls_client_subject\":\"%s\"", esubj);
    }
    const char *ip = mr_req_client_ip(r);
    int n;
    if (al->json)
        n = snprintf(b, room,
                     "{\"time\":\"%s\",\"remote_addr\":\"%s\",\"method\":\"%s\",\"uri\":\"%s\",\"status\":%d,"
                     "\"bytes\":%llu,\"referer\":\"%s\",\"user_agent\":\"%s\",\"request_time_ms\":%llu,"
                     "\"protocol\":\"HTTP/%d.%d\"%s}\n",
                     al->date, ip, r->line_known && r->method_name ? r->method_name : "", url, r->resp.status,
                     (unsigned long long)r->resp_bytes, ref, ua, (unsigned long long)ms, r->version / 10,
                     r->version % 10, tls);
    else /* exactly nginx's "combined" */
        n = snprintf(b, room, "%s - - [%s] \"%s\" %d %llu \"%s\" \"%s\"\n", ip, al->date, line, r->resp.status,
                     (unsigned long long)r->resp_bytes, ref, ua);
    if (n > 0 && (size_t)n < room) al->len[al->cur] += (size_t)n;
    mr_loop_defer(al->loop, &al->flush);
}

void mr_access_log_free(mr_access_log_t *al)
{
    if (!al) return;
    /* Shutdown only, after the loop stopped. A draining worker stops only once the log is idle
     * (mr_access_log_idle), so nothing is in flight; a quit (SIGQUIT) may leave a buffer that
     * never went out: write it synchronously rather than lose it. A write still in flight
     * there means the kernel owns that buffer: leak it rather than free it under the kernel. */
    if (al->op.active) return;
    for (int i = 0; i < 2; i++) {
        int k = (al->cur + 1 + i) % 2; /* the older buffer first */
        if (al->len[k] && al->buf[k]) {
            ssize_t w = write(al->fd, al->buf[k], al->len[k]);
            (void)w;
        }
    }
    free(al->buf[0]);
    free(al->buf[1]);
    free(al);
}

/* ---- FFI (the request API, lua/moonring/runtime.lua) ------------------------------------------ */

#include "proxy/proxy.h"
#include "util/export.h"

/* req:log_line(line): the line goes to the worker's access log in place of the configured
 * format's (the stock JSON log filter). MR_FFI_DECLINED when no access log is open. */
MR_EXPORT int mr_req_log_line(void *p, const char *line, size_t n)
{
    mr_req_t *r = p;
    if (!r->px->alog || mr_access_log_line(r->px->alog, line, n) < 0) return MR_FFI_DECLINED;
    r->log_written = true;
    return MR_FFI_OK;
}

/* req:upstream_info(): the last try's server, status and times (seconds; -1 unknown). */
MR_EXPORT int mr_req_upstream_info(void *p, const char **addr, size_t *alen, int *status, double *times)
{
    mr_req_t *r = p;
    *addr = r->up_addr;
    *alen = r->up_addr ? strlen(r->up_addr) : 0;
    *status = r->up_status;
    uint64_t now = mr_loop_now_us(r->px->loop), t0 = r->t_try_us;
    uint64_t ends[3] = { r->t_up_conn_us, r->t_up_head_us, r->t_up_end_us ? r->t_up_end_us : t0 ? now : 0 };
    for (int i = 0; i < 3; i++) times[i] = t0 && ends[i] >= t0 && ends[i] ? (double)(ends[i] - t0) / 1e6 : -1;
    return r->up_addr ? MR_FFI_OK : MR_FFI_DECLINED;
}
