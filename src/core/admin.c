#include "core/admin.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/admin_page.h"
#include "log/log.h"
#include "metrics/expo.h"
#include "metrics/metrics.h"

#define ADMIN_MAX_THREADS 32
#define BODY_MAX 8192

struct mr_admin {
    int fd;
    atomic_bool stop;
    const mr_admin_hooks_t *hooks;
};

static atomic_bool stopping;
static atomic_int admin_threads;  /* accept threads still running */
static atomic_int admin_inflight; /* connection threads */

/* ---- replies --------------------------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) { if (w < 0 && errno == EINTR) continue; return; }
        p += w;
        n -= (size_t)w;
    }
}

static void reply(int fd, int status, const char *type, const char *extra, const char *body, size_t len)
{
    char head[512];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n", status, reason(status), type, len,
                     extra ? extra : "");
    write_all(fd, head, (size_t)n);
    write_all(fd, body, len);
}

static void reply_json(int fd, int status, const char *body) { reply(fd, status, "application/json", NULL, body, strlen(body)); }

static void reply_error(int fd, int status, const char *msg)
{
    mr_vec_t v = { 0 };
    mr_vec_lit(&v, "{\"error\":", 1 << 20);
    mr_expo_json_str(&v, msg, strlen(msg));
    mr_vec_lit(&v, "}\n", 1 << 20);
    reply(fd, status, "application/json", NULL, v.p ? v.p : "{}", v.p ? v.len : 2);
    mr_vec_free(&v);
}

/* ---- the request ------------------------------------------------------------------------------ */

typedef struct {
    char method[16];
    char path[2048];            /* percent-decoded later, per segment */
    char query[2048];
    char auth[512];
    char *body;
    size_t body_len;
} areq_t;

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into out (cap). Returns the length, or -1. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        }
        if (o + 1 >= cap) return -1;
        out[o++] = c;
    }
    out[o] = 0;
    return (int)o;
}

/* The value of key in a query string or form body ("a=1&b=2"), decoded; false when absent. */
static bool param(const char *q, const char *key, char *out, size_t cap)
{
    size_t kl = strlen(key);
    for (const char *p = q; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > kl && strncmp(p, key, kl) == 0 && p[kl] == '=')
            return pct_decode(p + kl + 1, len - kl - 1, out, cap) >= 0;
        p = amp ? amp + 1 : NULL;
    }
    return false;
}

/* Reads the head and up to BODY_MAX bytes of body. Returns 0, or -1 (malformed, too large). */
static int read_request(int fd, areq_t *q, char *buf, size_t cap)
{
    size_t len = 0;
    char *end = NULL;
    while (len < cap - 1) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r <= 0) break;
        len += (size_t)r;
        buf[len] = 0;
        if ((end = strstr(buf, "\r\n\r\n"))) break;
    }
    buf[len] = 0;
    if (!end) return -1;
    char target[2048];
    if (sscanf(buf, "%15s %2047s", q->method, target) != 2) return -1;
    char *qm = strchr(target, '?');
    if (qm) *qm = 0;
    snprintf(q->path, sizeof q->path, "%s", target);
    snprintf(q->query, sizeof q->query, "%s", qm ? qm + 1 : "");
    size_t clen = 0;
    for (char *line = strstr(buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        char *h = line + 2;
        if (strncasecmp(h, "content-length:", 15) == 0) clen = strtoul(h + 15, NULL, 10);
        else if (strncasecmp(h, "authorization:", 14) == 0) {
            const char *v = h + 14;
            while (*v == ' ' || *v == '\t') v++;
            const char *e = strstr(v, "\r\n");
            snprintf(q->auth, sizeof q->auth, "%.*s", (int)(e ? e - v : 0), v);
        }
    }
    if (clen > BODY_MAX) return -1;
    size_t have = len - (size_t)(end + 4 - buf);
    q->body = calloc(1, clen + 1);
    if (!q->body) return -1;
    memcpy(q->body, end + 4, have < clen ? have : clen);
    while (have < clen) {
        ssize_t r = read(fd, q->body + have, clen - have);
        if (r <= 0) break;
        have += (size_t)r;
    }
    q->body_len = have < clen ? have : clen;
    return 0;
}

/* Compares in time independent of where the first difference is. */
static bool token_ok(const char *want, const char *got)
{
    size_t wl = strlen(want), gl = strlen(got);
    unsigned char d = (unsigned char)(wl != gl);
    for (size_t i = 0; i < wl; i++) d |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return d == 0;
}

static bool authorized(const mr_config_t *cfg, const areq_t *q)
{
    if (!cfg || !cfg->admin_token) return true;
    if (strncasecmp(q->auth, "Bearer ", 7) == 0 && token_ok(cfg->admin_token, q->auth + 7)) return true;
    char tok[512];
    return param(q->query, "token", tok, sizeof tok) && token_ok(cfg->admin_token, tok);
}

/* ---- JSON views of the config ---------------------------------------------------------------- */

static void routes_json(const mr_config_t *cfg, mr_vec_t *o)
{
    const size_t L = 64u << 20;
    mr_vec_lit(o, "{\"routes\":[", L);
    for (int i = 0; i < cfg->nroutes; i++) {
        const mr_route_conf_t *r = &cfg->routes[i];
        mr_vec_str(o, i ? ",{\"name\":" : "{\"name\":", L);
        mr_expo_json_str(o, r->name, strlen(r->name));
        mr_vec_printf(o, L, ",\"index\":%d", r->index);
        if (r->path) { mr_vec_lit(o, ",\"path\":", L); mr_expo_json_str(o, r->path, strlen(r->path)); }
        if (r->exact) { mr_vec_lit(o, ",\"exact\":", L); mr_expo_json_str(o, r->exact, strlen(r->exact)); }
        if (r->nhosts) {
            mr_vec_lit(o, ",\"host\":[", L);
            for (int h = 0; h < r->nhosts; h++) {
                if (h) mr_vec_lit(o, ",", L);
                mr_expo_json_str(o, r->hosts[h], strlen(r->hosts[h]));
            }
            mr_vec_lit(o, "]", L);
        }
        if (r->kind == MR_ROUTE_HANDLER) mr_vec_lit(o, ",\"handler\":true", L);
        const char *up = r->upstream_id >= 0 ? cfg->upstreams[r->upstream_id].name : r->adhoc ? r->adhoc->name : NULL;
        if (up) { mr_vec_lit(o, ",\"upstream\":", L); mr_expo_json_str(o, up, strlen(up)); }
        mr_vec_printf(o, L, ",\"filters\":%s,\"strip_prefix\":%s}", r->has_filters ? "true" : "false",
                      r->strip_prefix ? "true" : "false");
    }
    mr_vec_lit(o, "]}\n", L);
}

static void generations_json(uint64_t current, mr_vec_t *o)
{
    uint64_t ids[64];
    int counts[64];
    int n = mr_metrics_gens(ids, counts, 64);
    mr_vec_printf(o, 1 << 20, "{\"current\":%llu,\"generations\":[", (unsigned long long)current);
    for (int i = 0; i < n; i++)
        mr_vec_printf(o, 1 << 20, "%s{\"id\":%llu,\"state\":\"%s\",\"workers\":%d}", i ? "," : "",
                      (unsigned long long)ids[i], ids[i] == current ? "current" : "draining", counts[i]);
    mr_vec_lit(o, "]}\n", 1 << 20);
}

static void workers_json(mr_vec_t *o)
{
    mr_vec_lit(o, "{\"workers\":[", 1 << 20);
    int n = 0;
    for (mr_metrics_t *m = mr_metrics_workers(); m; m = m->next) {
        uint64_t reqs = 0;
        for (mr_mcell_t *c = atomic_load_explicit(&m->head, memory_order_acquire); c; c = c->next)
            if (c->kind == MR_MK_REQ)
                for (int k = 0; k < MR_MP_COUNT * 5; k++) reqs += mr_m_get(&c->v[MR_MR_CODES + k]);
        mr_vec_printf(o, 1 << 20, "%s{\"id\":%d,\"requests\":%llu,\"in_flight\":%llu,\"connections\":%llu,"
                      "\"upstream_active\":%llu,\"upstream_idle\":%llu}", n++ ? "," : "", m->worker,
                      (unsigned long long)reqs, (unsigned long long)mr_m_get(&m->w[MR_MW_INFLIGHT]),
                      (unsigned long long)mr_m_get(&m->w[MR_MW_CONNS_OPEN]),
                      (unsigned long long)mr_m_get(&m->w[MR_MW_UP_ACTIVE]),
                      (unsigned long long)mr_m_get(&m->w[MR_MW_UP_IDLE]));
    }
    mr_vec_lit(o, "]}\n", 1 << 20);
}

/* POST /-/upstreams/NAME/servers/ADDR with state=S (query or body). */
static void set_state(int fd, const mr_config_t *cfg, const areq_t *q, const char *rest)
{
    const char *sep = strstr(rest, "/servers/");
    char name[256], addr[512], st[32] = "";
    if (!sep || pct_decode(rest, (size_t)(sep - rest), name, sizeof name) < 0 ||
        pct_decode(sep + 9, strlen(sep + 9), addr, sizeof addr) < 0) {
        reply_error(fd, 404, "expected /-/upstreams/NAME/servers/ADDR");
        return;
    }
    if (!param(q->query, "state", st, sizeof st) && !(q->body && param(q->body, "state", st, sizeof st)) && q->body) {
        /* {"state":"down"} */
        const char *k = strstr(q->body, "\"state\"");
        const char *v = k ? strchr(k + 7, '"') : NULL;
        const char *e = v ? strchr(v + 1, '"') : NULL;
        if (e && (size_t)(e - v - 1) < sizeof st) snprintf(st, sizeof st, "%.*s", (int)(e - v - 1), v + 1);
    }
    int state = mr_metrics_srv_state_parse(st, strlen(st));
    if (state < 0) {
        reply_error(fd, 400, "state must be up, down or draining");
        return;
    }
    const mr_upstream_conf_t *uc = NULL;
    for (int i = 0; i < cfg->nupstreams && !uc; i++)
        if (strcmp(cfg->upstreams[i].name, name) == 0) uc = &cfg->upstreams[i];
    int found = -1;
    for (int s = 0; uc && s < uc->nservers && found < 0; s++)
        if (strcmp(uc->servers[s].addr, addr) == 0) found = s;
    if (found < 0) {
        char msg[900];
        snprintf(msg, sizeof msg, uc ? "upstream %s has no server %s" : "no upstream %s", name, addr);
        reply_error(fd, 404, msg);
        return;
    }
    _Atomic int *cell = mr_metrics_srv_state(mr_metrics_cname(name), mr_metrics_cname(addr));
    if (!cell) { reply_error(fd, 500, "out of memory"); return; }
    int old = atomic_exchange(cell, state);
    mr_notice("admin: upstream %s server %s: %s -> %s", name, addr, mr_metrics_srv_state_name(old),
              mr_metrics_srv_state_name(state));
    mr_vec_t v = { 0 };
    mr_vec_lit(&v, "{\"upstream\":", 1 << 20);
    mr_expo_json_str(&v, name, strlen(name));
    mr_vec_lit(&v, ",\"server\":", 1 << 20);
    mr_expo_json_str(&v, addr, strlen(addr));
    mr_vec_printf(&v, 1 << 20, ",\"state\":\"%s\",\"previous\":\"%s\"}\n", mr_metrics_srv_state_name(state),
                  mr_metrics_srv_state_name(old));
    reply_json(fd, 200, v.p ? v.p : "{}");
    mr_vec_free(&v);
}

/* ---- routing ---------------------------------------------------------------------------------- */

enum { GET = 1, POST = 2 };

static const struct {
    const char *path;
    bool prefix;
    int methods;
} endpoints[] = {
    { "/metrics", false, GET }, { "/-/", false, GET }, { "/-/stats", false, GET }, { "/-/status", false, GET },
    { "/-/upstreams", false, GET }, { "/-/upstreams/", true, POST }, { "/-/routes", false, GET },
    { "/-/generations", false, GET }, { "/-/workers", false, GET }, { "/-/config", false, GET },
    { "/-/reload", false, POST }, { "/-/upgrade", false, POST }, { "/-/reopen", false, POST },
};

static void serve(int fd, const mr_admin_hooks_t *hooks)
{
    struct timeval tv = { .tv_sec = 2 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[16384];
    areq_t q = { 0 };
    uint64_t gen = 0;
    int nworkers = 0;
    mr_config_t *cfg = NULL;
    mr_vec_t v = { 0 };
    if (read_request(fd, &q, buf, sizeof buf) < 0) { reply_error(fd, 400, "bad request"); goto out; }
    cfg = hooks->snapshot(&gen, &nworkers);
    if (!cfg) { reply_error(fd, 503, "shutting down"); goto out; }
    if (!authorized(cfg, &q)) {
        const char *body = "{\"error\":\"this admin endpoint takes a token: Authorization: Bearer TOKEN\"}\n";
        reply(fd, 401, "application/json", "WWW-Authenticate: Bearer realm=\"moonring\"\r\n", body, strlen(body));
        goto out;
    }
    int m = strcmp(q.method, "GET") == 0 ? GET : strcmp(q.method, "POST") == 0 ? POST : 0;
    int ep = -1;
    for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0] && ep < 0; i++)
        if (endpoints[i].prefix ? strncmp(q.path, endpoints[i].path, strlen(endpoints[i].path)) == 0
                                : strcmp(q.path, endpoints[i].path) == 0)
            ep = (int)i;
    if (ep < 0) {
        reply_error(fd, 404, "not found; try GET /-/ (status page), GET /metrics, GET /-/upstreams, POST /-/reload");
        goto out;
    }
    if (!(endpoints[ep].methods & m)) {
        char allow[64];
        snprintf(allow, sizeof allow, "Allow: %s\r\n", endpoints[ep].methods == GET ? "GET" : "POST");
        const char *body = "{\"error\":\"method not allowed\"}\n";
        reply(fd, 405, "application/json", allow, body, strlen(body));
        goto out;
    }
    mr_expo_ctx_t ctx = { .cfg = cfg, .nworkers = nworkers, .generation = gen };
    const char *p = q.path;
    if (strcmp(p, "/metrics") == 0) {
        if (mr_expo_prometheus(&ctx, &v) < 0) { reply_error(fd, 500, "out of memory"); goto out; }
        reply(fd, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, v.p, v.len);
    } else if (strcmp(p, "/-/") == 0) {
        reply(fd, 200, "text/html; charset=utf-8", NULL, mr_admin_page, sizeof mr_admin_page - 1);
    } else if (strcmp(p, "/-/stats") == 0) {
        if (mr_expo_stats_json(&ctx, &v) < 0) { reply_error(fd, 500, "out of memory"); goto out; }
        reply(fd, 200, "application/json", NULL, v.p, v.len);
    } else if (strcmp(p, "/-/upstreams") == 0) {
        if (mr_expo_upstreams_json(&ctx, &v) < 0) { reply_error(fd, 500, "out of memory"); goto out; }
        reply(fd, 200, "application/json", NULL, v.p, v.len);
    } else if (strncmp(p, "/-/upstreams/", 13) == 0) {
        set_state(fd, cfg, &q, p + 13);
    } else if (strcmp(p, "/-/routes") == 0) {
        routes_json(cfg, &v);
        reply(fd, 200, "application/json", NULL, v.p, v.len);
    } else if (strcmp(p, "/-/generations") == 0) {
        generations_json(gen, &v);
        reply(fd, 200, "application/json", NULL, v.p, v.len);
    } else if (strcmp(p, "/-/workers") == 0) {
        workers_json(&v);
        reply(fd, 200, "application/json", NULL, v.p, v.len);
    } else if (strcmp(p, "/-/config") == 0) {
        const char *c = cfg->config_json ? cfg->config_json : "{}\n";
        reply(fd, 200, "application/json", NULL, c, strlen(c));
    } else if (strcmp(p, "/-/status") == 0) {
        mr_vec_printf(&v, 1 << 20, "{\"generation\":%llu,\"workers\":%d,\"pid\":%d}\n", (unsigned long long)gen,
                      nworkers, (int)getpid());
        reply(fd, 200, "application/json", NULL, v.p, v.len);
    } else {
        /* POST actions: the snapshot goes first, a reload must not wait behind our reference. */
        mr_config_unref(cfg);
        cfg = NULL;
        char msg[2048] = "";
        if (strcmp(p, "/-/reload") == 0) {
            uint64_t g = hooks->reload(msg, sizeof msg);
            if (g) {
                mr_vec_printf(&v, 1 << 20, "{\"generation\":%llu}\n", (unsigned long long)g);
                reply_json(fd, 200, v.p);
            } else {
                reply_error(fd, 500, msg);
            }
        } else if (strcmp(p, "/-/upgrade") == 0) {
            pid_t pid = hooks->upgrade(msg, sizeof msg);
            if (pid) {
                mr_vec_printf(&v, 1 << 20, "{\"pid\":%d}\n", (int)pid);
                reply_json(fd, 200, v.p);
                close(fd);
                fd = -1;
                kill(getpid(), SIGTERM); /* the main thread drains and exits */
            } else {
                reply_error(fd, 500, msg);
            }
        } else if (hooks->reopen(msg, sizeof msg) == 0) {
            reply_json(fd, 200, "{\"reopened\":true}\n");
        } else {
            reply_error(fd, 500, msg);
        }
    }
out:
    mr_vec_free(&v);
    mr_config_unref(cfg);
    free(q.body);
    if (fd >= 0) close(fd);
}

/* ---- threads ----------------------------------------------------------------------------------- */

typedef struct {
    int fd;
    const mr_admin_hooks_t *hooks;
} conn_arg_t;

static void *conn_main(void *arg)
{
    conn_arg_t *c = arg;
    mr_log_set_thread_tag("admin");
    serve(c->fd, c->hooks);
    free(c);
    atomic_fetch_sub(&admin_inflight, 1);
    return NULL;
}

/* One detached accept thread per listener, which frees its mr_admin_t when it ends. Each
 * connection gets its own thread (up to ADMIN_MAX_THREADS, inline beyond): a reload request
 * waits in the reload while others arrive, which lets a storm of them share reloads. */
static void *admin_main(void *arg)
{
    mr_admin_t *a = arg;
    mr_log_set_thread_tag("admin");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (!atomic_load(&stopping) && !atomic_load(&a->stop)) {
        struct pollfd p = { .fd = a->fd, .events = POLLIN };
        if (poll(&p, 1, 200) <= 0) continue;
        int fd = accept4(a->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        pthread_t t;
        conn_arg_t *c = malloc(sizeof *c);
        if (c) *c = (conn_arg_t){ fd, a->hooks };
        if (!c || atomic_fetch_add(&admin_inflight, 1) >= ADMIN_MAX_THREADS ||
            pthread_create(&t, &attr, conn_main, c) != 0) {
            if (c) atomic_fetch_sub(&admin_inflight, 1);
            free(c);
            serve(fd, a->hooks); /* over the cap: inline */
        }
    }
    pthread_attr_destroy(&attr);
    close(a->fd);
    /* Connection threads end within their 2 s read timeout, or at their next reload (which
     * answers "shutting down"); wait for them so none outlives the workers. (Not when a reload
     * moved the endpoint: the reload itself may be running in one of them.) */
    for (int i = 0; atomic_load(&stopping) && i < 300 && atomic_load(&admin_inflight) > 0; i++) usleep(10000);
    free(a);
    atomic_fetch_sub(&admin_threads, 1);
    return NULL;
}

mr_admin_t *mr_admin_start(int fd, const mr_admin_hooks_t *hooks)
{
    mr_admin_t *a = calloc(1, sizeof *a);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (a) {
        a->fd = fd;
        a->hooks = hooks;
        atomic_init(&a->stop, false);
        atomic_fetch_add(&admin_threads, 1);
        pthread_t t;
        if (pthread_create(&t, &attr, admin_main, a) == 0) {
            pthread_attr_destroy(&attr);
            return a;
        }
        atomic_fetch_sub(&admin_threads, 1);
        free(a);
    }
    pthread_attr_destroy(&attr);
    close(fd);
    return NULL;
}

void mr_admin_stop(mr_admin_t *a)
{
    if (a) atomic_store(&a->stop, true);
}

void mr_admin_set_stopping(void) { atomic_store(&stopping, true); }

void mr_admin_wait(void)
{
    for (int i = 0; i < 600 && atomic_load(&admin_threads) > 0; i++) usleep(10000);
}
