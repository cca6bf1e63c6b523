#include "proxy/access_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define AL_BUF (64 * 1024)

struct mr_access_log {
    mr_loop_t *loop;
    int fd;
    bool json;
    bool off;           /* access_log = false since a reload (see mr_access_log_configure) */
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

void mr_access_log_configure(mr_access_log_t *al, bool on, bool json)
{
    al->off = !on;
    if (al->json != json) {
        al->json = json;
        al->last_sec = 0; /* the date is formatted per format */
    }
}

void mr_access_log_request(mr_access_log_t *al, const mr_req_t *r)
{
    if (al->off) return;
    time_t now = time(NULL);
    if (now != al->last_sec) {
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(al->date, sizeof al->date, al->json ? "%Y-%m-%dT%H:%M:%S%z" : "%d/%b/%Y:%H:%M:%S %z", &tm);
        al->last_sec = now;
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
    const char *ip = r->peer ? r->peer->ip : "-";
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
