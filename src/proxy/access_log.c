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

void mr_access_log_request(mr_access_log_t *al, mr_client_t *c)
{
    if (al->off) return;
    time_t now = time(NULL);
    if (now != al->last_sec) {
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(al->date, sizeof al->date, al->json ? "%Y-%m-%dT%H:%M:%S%z" : "%d/%b/%Y:%H:%M:%S %z", &tm);
        al->last_sec = now;
    }
    mr_http1_msg_t *m = &c->req;
    char url[2048], ua[512] = "-", ref[512] = "-";
    json_str(url, sizeof url, m->buf.p + m->url_off, m->url_len);
    int i = mr_http1_find(m, "user-agent", 10, 0);
    if (i >= 0) json_str(ua, sizeof ua, m->buf.p + m->hdrs[i].val_off, m->hdrs[i].val_len);
    i = mr_http1_find(m, "referer", 7, 0);
    if (i >= 0) json_str(ref, sizeof ref, m->buf.p + m->hdrs[i].val_off, m->hdrs[i].val_len);
    uint64_t ms = mr_loop_now(al->loop) - c->started_ms;
    char *b = al->buf[al->cur] + al->len[al->cur];
    size_t room = AL_BUF - al->len[al->cur];
    if (room < 4096) return; /* both buffers full: drop rather than block */
    /* JSON lines of TLS connections say how the client connected (absent on plain TCP). */
    char tls[1024] = "";
    if (al->json && c->s.tls) {
        mr_tls_conn_t *t = c->s.tls;
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
    int n;
    if (al->json)
        n = snprintf(b, room,
                     "{\"time\":\"%s\",\"remote_addr\":\"%s\",\"method\":\"%s\",\"uri\":\"%s\",\"status\":%d,"
                     "\"bytes\":%llu,\"referer\":\"%s\",\"user_agent\":\"%s\",\"request_time_ms\":%llu%s}\n",
                     al->date, c->ip, mr_http1_method_str(m), url, c->status, (unsigned long long)c->resp_bytes,
                     ref, ua, (unsigned long long)ms, tls);
    else
        n = snprintf(b, room, "%s - - [%s] \"%s %s HTTP/1.%d\" %d %llu \"%s\" \"%s\" %llu\n", c->ip, al->date,
                     mr_http1_method_str(m), url, m->minor, c->status, (unsigned long long)c->resp_bytes, ref, ua,
                     (unsigned long long)ms);
    if (n > 0 && (size_t)n < room) al->len[al->cur] += (size_t)n;
    mr_loop_defer(al->loop, &al->flush);
}

void mr_access_log_free(mr_access_log_t *al)
{
    if (!al) return;
    /* Shutdown only: the loop is gone, so finish synchronously. Only the buffer being filled:
     * the other one was handed to the kernel, and the ring's teardown completed that write. */
    if (al->len[al->cur] && al->buf[al->cur]) {
        ssize_t w = write(al->fd, al->buf[al->cur], al->len[al->cur]);
        (void)w;
    }
    free(al->buf[0]);
    free(al->buf[1]);
    free(al);
}
