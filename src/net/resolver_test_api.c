/* See resolver_test_api.h. */
#include "net/resolver_test_api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/loop.h"
#include "net/net.h"
#include "net/resolver.h"

#include "util/export.h"
#define SLOTS 64
#define NAMES 64

/* ---- the fake getaddrinfo (helper threads) ------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool hold;
    int blocked;
    struct { char name[MR_HOST_MAX + 1]; int calls; } names[NAMES];
} F = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, { { "", 0 } } };

static bool starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* Appends numeric host's answer to *res (glibc frees an addrinfo list node by node). */
static int add(const char *numeric, struct addrinfo **res)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST }, *one = NULL;
    int rc = getaddrinfo(numeric, NULL, &hints, &one);
    if (rc != 0) return rc;
    while (*res) res = &(*res)->ai_next;
    *res = one;
    return 0;
}

static int fake_gai(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    pthread_mutex_lock(&F.mu);
    int i = 0;
    while (i < NAMES && F.names[i].name[0] && strcmp(F.names[i].name, node) != 0) i++;
    if (i < NAMES) {
        snprintf(F.names[i].name, sizeof F.names[i].name, "%s", node);
        F.names[i].calls++;
    }
    pthread_mutex_unlock(&F.mu);
    size_t n = strlen(node);
    if (n < 5 || strcmp(node + n - 5, ".fake") != 0) return getaddrinfo(node, service, hints, res);
    *res = NULL;
    if (starts(node, "nx")) return EAI_NONAME;
    if (starts(node, "again")) return EAI_AGAIN;
    if (starts(node, "dual")) {
        int rc = add("::1", res);
        if (!rc) rc = add("127.0.0.2", res);
        if (!rc) rc = add("127.0.0.2", res);
        return rc;
    }
    if (starts(node, "many")) {
        for (int k = 1; k <= 20; k++) {
            char ip[32];
            snprintf(ip, sizeof ip, "127.0.1.%d", k);
            int rc = add(ip, res);
            if (rc) return rc;
        }
        return 0;
    }
    if (starts(node, "hold")) {
        pthread_mutex_lock(&F.mu);
        F.blocked++;
        while (F.hold) pthread_cond_wait(&F.cv, &F.mu);
        F.blocked--;
        pthread_mutex_unlock(&F.mu);
        return add("127.0.0.3", res);
    }
    return add("127.0.0.1", res);
}

MR_EXPORT void mr_resolver_test_hold(int on)
{
    pthread_mutex_lock(&F.mu);
    F.hold = on != 0;
    pthread_cond_broadcast(&F.cv);
    pthread_mutex_unlock(&F.mu);
}

MR_EXPORT int mr_resolver_test_calls(const char *name)
{
    int calls = 0;
    pthread_mutex_lock(&F.mu);
    for (int i = 0; i < NAMES && F.names[i].name[0]; i++)
        if (strcmp(F.names[i].name, name) == 0) calls = F.names[i].calls;
    pthread_mutex_unlock(&F.mu);
    return calls;
}

MR_EXPORT int mr_resolver_test_blocked(void)
{
    pthread_mutex_lock(&F.mu);
    int n = F.blocked;
    pthread_mutex_unlock(&F.mu);
    return n;
}

MR_EXPORT void mr_resolver_test_reset(void)
{
    pthread_mutex_lock(&F.mu);
    memset(F.names, 0, sizeof F.names);
    pthread_mutex_unlock(&F.mu);
}

/* ---- the harness (calling thread) ---------------------------------------------------------- */

typedef struct {
    mr_resolve_req_t rq;       /* first: the callback casts back */
    mr_resolver_test_t *t;
    int used, calls, rc, chained;
    bool chain;
    char text[1024];
    char host[MR_HOST_MAX + 1];
    int port;
} slot_t;

struct mr_resolver_test {
    mr_loop_t *loop;
    mr_resolver_t *r;
    mr_timer_t tick;
    uint64_t deadline;
    bool all, closing;
    bool in_submit;
    int sync_calls;
    slot_t slots[SLOTS];
};

static void addr_text(const mr_addr_t *a, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->sa.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&a->sa;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
        snprintf(out, len, "%s:%d", ip, ntohs(s->sin_port));
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&a->sa;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
        snprintf(out, len, "[%s]:%d", ip, ntohs(s->sin6_port));
    }
}

static void addrs_text(const mr_addr_t *a, int n, char *out, size_t len)
{
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < n && o + 1 < len; i++) {
        o += (size_t)snprintf(out + o, len - o, "%s", i ? " " : "");
        if (o >= len) break;
        addr_text(&a[i], out + o, len - o);
        o += strlen(out + o);
    }
}

static int submit(mr_resolver_test_t *t, const char *host, int port, int chain);

static void answered(mr_resolve_req_t *rq, int rc, const mr_addr_t *addrs, int n)
{
    slot_t *s = (slot_t *)rq;
    mr_resolver_test_t *t = s->t;
    if (t->in_submit) t->sync_calls++;
    s->calls++;
    s->rc = rc;
    char list[900];
    addrs_text(addrs, n, list, sizeof list);
    snprintf(s->text, sizeof s->text, "rc=%d n=%d%s%s", rc, n, n ? " " : "", list);
    if (s->chain) {
        s->chain = false;
        s->chained = submit(t, s->host, s->port, 0);
    }
}

static int submit(mr_resolver_test_t *t, const char *host, int port, int chain)
{
    int i = 0;
    while (i < SLOTS && t->slots[i].used) i++;
    if (i == SLOTS) return -ENOSPC;
    slot_t *s = &t->slots[i];
    memset(s, 0, sizeof *s);
    s->t = t;
    s->chain = chain != 0;
    s->chained = -1;
    s->port = port;
    snprintf(s->host, sizeof s->host, "%s", host);
    bool was = t->in_submit;
    t->in_submit = true;
    int rc = mr_resolver_lookup(t->r, host, strlen(host), (uint16_t)port, &s->rq, answered);
    t->in_submit = was;
    if (rc < 0) return rc;
    s->used = 1;
    return i;
}

static bool waiting(mr_resolver_test_t *t)
{
    for (int i = 0; i < SLOTS; i++)
        if (t->slots[i].used && mr_resolve_pending(&t->slots[i].rq)) return true;
    return false;
}

static void tick(mr_loop_t *loop, mr_timer_t *tm)
{
    mr_resolver_test_t *t = (mr_resolver_test_t *)((char *)tm - offsetof(mr_resolver_test_t, tick));
    bool done = t->closing ? mr_resolver_live() == 0 : t->all && !waiting(t);
    if (done || mr_loop_now(loop) >= t->deadline) mr_loop_stop(loop);
    else mr_timer_set(loop, tm, 1);
}

static void run(mr_resolver_test_t *t, int ms)
{
    t->deadline = mr_loop_now(t->loop) + (uint64_t)(ms > 0 ? ms : 0);
    t->tick.fn = tick;
    mr_timer_set(t->loop, &t->tick, 0);
    mr_loop_run(t->loop);
    mr_timer_stop(t->loop, &t->tick);
}

MR_EXPORT mr_resolver_test_t *mr_resolver_test_new(int backend, uint32_t ttl_ms, uint32_t negative_ttl_ms,
                                                   uint32_t cache_size, uint32_t max_pending, uint32_t threads)
{
    mr_resolver_test_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    mr_loop_opts_t lo = { .entries = 64, .buf_count = 16, .buf_size = 4096,
                          .backend = backend == 1 ? MR_LOOP_IO_URING : backend == 2 ? MR_LOOP_EPOLL : MR_LOOP_AUTO };
    if (mr_loop_init(&t->loop, &lo) < 0) { free(t); return NULL; }
    mr_resolver_opts_t o = { .ttl_ms = ttl_ms, .negative_ttl_ms = negative_ttl_ms, .cache_size = cache_size,
                             .max_pending = max_pending, .threads = threads, .getaddrinfo = fake_gai };
    t->r = mr_resolver_new(t->loop, &o);
    if (!t->r) {
        mr_loop_free(t->loop);
        free(t);
        return NULL;
    }
    return t;
}

MR_EXPORT const char *mr_resolver_test_backend(mr_resolver_test_t *t)
{
    return mr_loop_backend_name(mr_loop_backend(t->loop));
}

MR_EXPORT int mr_resolver_test_lookup(mr_resolver_test_t *t, const char *host, int port, int chain)
{
    return submit(t, host, port, chain);
}

MR_EXPORT void mr_resolver_test_cancel(mr_resolver_test_t *t, int slot)
{
    if (slot >= 0 && slot < SLOTS && t->slots[slot].used) mr_resolver_cancel(&t->slots[slot].rq);
}

MR_EXPORT int mr_resolver_test_cached(mr_resolver_test_t *t, const char *host, int port, char *out, size_t len)
{
    mr_addr_t a[MR_RESOLVER_MAX_ADDRS];
    int n = mr_resolver_cached(t->r, host, strlen(host), (uint16_t)port, a, MR_RESOLVER_MAX_ADDRS);
    addrs_text(a, n > 0 ? n : 0, out, len);
    return n;
}

MR_EXPORT int mr_resolver_test_run(mr_resolver_test_t *t, int ms, int all)
{
    t->all = all != 0;
    if (!(t->all && !waiting(t))) run(t, ms);
    int n = 0;
    for (int i = 0; i < SLOTS; i++)
        if (t->slots[i].used && mr_resolve_pending(&t->slots[i].rq)) n++;
    return n;
}

MR_EXPORT int mr_resolver_test_result(mr_resolver_test_t *t, int slot, char *out, size_t len)
{
    if (slot < 0 || slot >= SLOTS || !t->slots[slot].used) return -1;
    slot_t *s = &t->slots[slot];
    if (s->chained >= 0) snprintf(out, len, "%s chained=%d", s->text, s->chained);
    else snprintf(out, len, "%s", s->text);
    return s->calls;
}

MR_EXPORT int mr_resolver_test_sync_calls(mr_resolver_test_t *t) { return t->sync_calls; }

MR_EXPORT long long mr_resolver_test_stat(mr_resolver_test_t *t, const char *name)
{
    mr_resolver_stats_t st;
    mr_resolver_stats(t->r, &st);
    if (strcmp(name, "lookups") == 0) return (long long)st.lookups;
    if (strcmp(name, "hits") == 0) return (long long)st.hits;
    if (strcmp(name, "negative_hits") == 0) return (long long)st.negative_hits;
    if (strcmp(name, "coalesced") == 0) return (long long)st.coalesced;
    if (strcmp(name, "pending") == 0) return st.pending;
    if (strcmp(name, "entries") == 0) return st.entries;
    if (strcmp(name, "threads") == 0) return st.threads;
    return -1;
}

MR_EXPORT int mr_resolver_test_close(mr_resolver_test_t *t, int ms)
{
    unsigned before = mr_resolver_live();
    int calls = 0;
    for (int i = 0; i < SLOTS; i++) calls += t->slots[i].calls;
    mr_resolver_close(t->r);
    t->r = NULL;
    t->closing = true;
    if (mr_resolver_live() == before) run(t, ms);
    int rc = mr_resolver_live() < before ? 0 : -1;
    for (int i = 0; i < SLOTS; i++) calls -= t->slots[i].calls;
    if (calls != 0) rc = -2; /* a dropped request was called back */
    mr_loop_free(t->loop);
    free(t);
    return rc;
}

MR_EXPORT void mr_resolver_test_free_after_loop(mr_resolver_test_t *t)
{
    mr_loop_free(t->loop);
    mr_resolver_free(t->r);
    free(t);
}

MR_EXPORT unsigned mr_resolver_test_live(void) { return mr_resolver_live(); }

MR_EXPORT int mr_resolver_test_parse(const char *s, size_t n, int port, char *out, size_t len)
{
    mr_hostport_t hp;
    const char *why = NULL;
    int rc = port < 0 ? mr_addr_parse(s, n, &hp, &why) : mr_addr_parse_host(s, n, port, &hp, &why);
    if (rc < 0) {
        snprintf(out, len, "%s", why ? why : "?");
        return rc;
    }
    char a[80] = "-";
    if (rc == MR_ADDR_NUMERIC) addr_text(&hp.addr, a, sizeof a);
    snprintf(out, len, "host=%s port=%d addr=%s", hp.host, hp.port, a);
    return rc;
}
