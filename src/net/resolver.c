/* See resolver.h for the contract. Layout:
 *   entries  one per name: a cached answer (in the LRU list) or a lookup in flight (e->job), and
 *            the requests waiting for it;
 *   jobs     one getaddrinfo each, handed to the helper threads through a mutex-protected queue
 *            and back through `done` plus an eventfd write;
 *   delivery from the eventfd read's completion (answers) or from one deferred callback at the
 *            end of the turn (cache hits and numeric hosts), so never from a submitting call.
 * The resolver's memory is freed only when nothing can still call into it: the eventfd read has
 * completed, the deferred callback is not queued and no delivery is running (maybe_free). */
#include "net/resolver.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct rs_job rs_job_t;

struct rs_job {
    rs_job_t *next;
    mr_resolve_entry_t *entry;   /* worker side only; never read by a helper thread */
    int (*gai)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    int rc, naddrs;
    mr_addr_t *addrs;            /* filled by the helper thread */
    char name[MR_HOST_MAX + 1];
};

/* Shared by the worker side and the helper threads; freed by whichever lets go last (refs), so
 * neither waits for the other. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rs_job_t *todo, *todo_tail, *done;
    uint32_t ntodo, idle, nthreads;
    int efd;
    int refs;
    bool stop;
} rs_queue_t;

struct mr_resolve_entry {
    mr_resolve_entry_t *hnext;          /* hash chain */
    mr_resolve_entry_t *lnext, *lprev;  /* LRU list: cached answers only, newest first */
    mr_resolve_entry_t *rnext;          /* ready list (deliveries at the end of the turn) */
    mr_resolve_req_t *waiters, *wtail;  /* in order of arrival */
    rs_job_t *job;                      /* lookup in flight */
    mr_addr_t *addrs;
    int naddrs;
    int rc;                             /* 0 answer, -ENOENT no such name, else not cached */
    uint64_t expires;                   /* loop ms */
    uint32_t hash;
    bool in_lru, queued, busy;
    char name[];                        /* lower case */
};

struct mr_resolver {
    mr_loop_t *loop;
    mr_resolver_opts_t o;
    rs_queue_t *q;                      /* NULL until the first lookup that needs a thread */
    mr_op_t op;                         /* the eventfd read */
    uint64_t val;                       /* its 8 bytes: the kernel's until its completion */
    mr_defer_t defer;
    bool closing;
    int busy;                           /* deliveries running (a callback may close us) */
    mr_resolve_entry_t **slots;
    uint32_t nslots, nentries, pending;
    mr_resolve_entry_t *lru_head, *lru_tail;
    mr_resolve_entry_t *ready;
    mr_resolve_req_t *num_head, *num_tail;
    uint64_t seq;
    mr_resolver_stats_t st;
    mr_addr_t scratch[MR_RESOLVER_MAX_ADDRS];
};

static const mr_resolver_opts_t defaults = MR_RESOLVER_DEFAULTS;
static atomic_uint live;

static void set_opts(mr_resolver_t *r, const mr_resolver_opts_t *o)
{
    mr_resolver_opts_t v = o ? *o : defaults;
    if (!v.ttl_ms) v.ttl_ms = defaults.ttl_ms;
    if (!v.negative_ttl_ms) v.negative_ttl_ms = defaults.negative_ttl_ms;
    if (!v.cache_size) v.cache_size = defaults.cache_size;
    if (!v.max_pending) v.max_pending = defaults.max_pending;
    if (!v.threads) v.threads = defaults.threads;
    if (!v.getaddrinfo) v.getaddrinfo = getaddrinfo;
    r->o = v;
}

/* ---- helper threads ---------------------------------------------------------------------- */

static void job_free(rs_job_t *j)
{
    free(j->addrs);
    free(j);
}

static void queue_unref_unlock(rs_queue_t *q)
{
    bool last = --q->refs == 0;
    pthread_mutex_unlock(&q->mu);
    if (!last) return;
    for (rs_job_t *l = q->todo; l;) { rs_job_t *n = l->next; job_free(l); l = n; }
    for (rs_job_t *l = q->done; l;) { rs_job_t *n = l->next; job_free(l); l = n; }
    close(q->efd);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}

static bool same_ip(const mr_addr_t *a, const struct sockaddr *sa)
{
    if (a->sa.ss_family != sa->sa_family) return false;
    if (sa->sa_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)&a->sa)->sin_addr, &((const struct sockaddr_in *)sa)->sin_addr,
                      sizeof(struct in_addr)) == 0;
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->sa, *y = (const struct sockaddr_in6 *)sa;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0 && x->sin6_scope_id == y->sin6_scope_id;
}

/* Runs on a helper thread: every address, IPv4 first, without duplicates, port 0. */
static void job_run(rs_job_t *j)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC }, *res = NULL;
    int rc = j->gai(j->name, NULL, &hints, &res);
    if (rc != 0) {
        j->rc = rc == EAI_AGAIN                                                 ? -EAGAIN
                : rc == EAI_NONAME || rc == EAI_NODATA || rc == EAI_ADDRFAMILY ? -ENOENT
                : rc == EAI_MEMORY                                              ? -ENOMEM
                                                                                : -EIO;
        return;
    }
    mr_addr_t *a = calloc(MR_RESOLVER_MAX_ADDRS, sizeof *a);
    int n = 0;
    for (int fam = 0; a && fam < 2; fam++) {
        for (struct addrinfo *ai = res; ai && n < MR_RESOLVER_MAX_ADDRS; ai = ai->ai_next) {
            if (ai->ai_family != (fam == 0 ? AF_INET : AF_INET6) || ai->ai_addrlen > sizeof a->sa) continue;
            bool dup = false;
            for (int i = 0; i < n && !dup; i++) dup = same_ip(&a[i], ai->ai_addr);
            if (dup) continue;
            memcpy(&a[n].sa, ai->ai_addr, ai->ai_addrlen);
            a[n].len = ai->ai_addrlen;
            mr_addr_set_port(&a[n], 0);
            n++;
        }
    }
    freeaddrinfo(res);
    if (!a) { j->rc = -ENOMEM; return; }
    if (n == 0) { free(a); j->rc = -ENOENT; return; }
    j->addrs = a;
    j->naddrs = n;
    j->rc = 0;
}

static void *thread_main(void *arg)
{
    rs_queue_t *q = arg;
    pthread_setname_np(pthread_self(), "mr-resolve");
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->todo && !q->stop) {
            q->idle++;
            pthread_cond_wait(&q->cv, &q->mu);
            q->idle--;
        }
        if (q->stop) break;
        rs_job_t *j = q->todo;
        q->todo = j->next;
        if (!q->todo) q->todo_tail = NULL;
        q->ntodo--;
        pthread_mutex_unlock(&q->mu);
        job_run(j);
        pthread_mutex_lock(&q->mu);
        j->next = q->done;
        q->done = j;
        uint64_t one = 1;
        ssize_t w = write(q->efd, &one, sizeof one);
        (void)w;
    }
    q->nthreads--;
    queue_unref_unlock(q);
    return NULL;
}

/* Starts one more helper thread. Called with q->mu held. */
static int thread_start(rs_queue_t *q)
{
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    q->refs++;
    q->nthreads++;
    int rc = pthread_create(&th, &at, thread_main, q);
    pthread_attr_destroy(&at);
    if (rc != 0) {
        q->refs--;
        q->nthreads--;
    }
    return -rc;
}

/* ---- worker side: the cache ---------------------------------------------------------------- */

static uint32_t hash_name(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static size_t lower_key(const char *host, size_t len, char *key)
{
    for (size_t i = 0; i < len; i++) key[i] = (char)(host[i] >= 'A' && host[i] <= 'Z' ? host[i] + 32 : host[i]);
    key[len] = 0;
    return len;
}

static mr_resolve_entry_t *find(mr_resolver_t *r, const char *key, size_t n, uint32_t h)
{
    if (!r->nslots) return NULL;
    for (mr_resolve_entry_t *e = r->slots[h & (r->nslots - 1)]; e; e = e->hnext)
        if (e->hash == h && strncmp(e->name, key, n) == 0 && e->name[n] == 0) return e;
    return NULL;
}

static void lru_unlink(mr_resolver_t *r, mr_resolve_entry_t *e)
{
    if (!e->in_lru) return;
    if (e->lprev) e->lprev->lnext = e->lnext;
    else r->lru_head = e->lnext;
    if (e->lnext) e->lnext->lprev = e->lprev;
    else r->lru_tail = e->lprev;
    e->lnext = e->lprev = NULL;
    e->in_lru = false;
}

static void lru_push(mr_resolver_t *r, mr_resolve_entry_t *e)
{
    lru_unlink(r, e);
    e->lnext = r->lru_head;
    if (r->lru_head) r->lru_head->lprev = e;
    else r->lru_tail = e;
    r->lru_head = e;
    e->in_lru = true;
}

static void entry_remove(mr_resolver_t *r, mr_resolve_entry_t *e)
{
    lru_unlink(r, e);
    mr_resolve_entry_t **pp = &r->slots[e->hash & (r->nslots - 1)];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    r->nentries--;
    free(e->addrs);
    free(e);
}

static bool idle_entry(const mr_resolve_entry_t *e) { return !e->job && !e->waiters && !e->queued && !e->busy; }

/* Least recently used first, a few steps at most: entries that are in use are skipped. */
static void evict(mr_resolver_t *r, uint32_t room)
{
    mr_resolve_entry_t *e = r->lru_tail;
    for (int steps = 0; e && r->nentries + room > r->o.cache_size && steps < 16; steps++) {
        mr_resolve_entry_t *prev = e->lprev;
        if (idle_entry(e)) entry_remove(r, e);
        e = prev;
    }
}

static int grow(mr_resolver_t *r)
{
    uint32_t n = r->nslots ? r->nslots * 2 : 64;
    mr_resolve_entry_t **s = calloc(n, sizeof *s);
    if (!s) return -ENOMEM;
    for (uint32_t i = 0; i < r->nslots; i++) {
        for (mr_resolve_entry_t *e = r->slots[i]; e;) {
            mr_resolve_entry_t *next = e->hnext;
            e->hnext = s[e->hash & (n - 1)];
            s[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(r->slots);
    r->slots = s;
    r->nslots = n;
    return 0;
}

static mr_resolve_entry_t *entry_new(mr_resolver_t *r, const char *key, size_t n, uint32_t h)
{
    evict(r, 1);
    if (r->nentries + 1 > r->nslots && grow(r) < 0) return NULL;
    mr_resolve_entry_t *e = calloc(1, sizeof *e + n + 1);
    if (!e) return NULL;
    memcpy(e->name, key, n + 1);
    e->hash = h;
    e->rc = -EAGAIN; /* nothing cached yet */
    e->hnext = r->slots[h & (r->nslots - 1)];
    r->slots[h & (r->nslots - 1)] = e;
    r->nentries++;
    return e;
}

static bool fresh(mr_resolver_t *r, const mr_resolve_entry_t *e)
{
    return !e->job && (e->rc == 0 || e->rc == -ENOENT) && e->expires > mr_loop_now(r->loop);
}

/* ---- worker side: requests and deliveries ------------------------------------------------- */

static void attach(mr_resolver_t *r, mr_resolve_entry_t *e, mr_resolve_req_t *rq)
{
    rq->entry = e;
    rq->seq = ++r->seq;
    rq->pending = true;
    rq->next = NULL;
    rq->prev = e ? e->wtail : r->num_tail;
    mr_resolve_req_t **head = e ? &e->waiters : &r->num_head, **tail = e ? &e->wtail : &r->num_tail;
    if (*tail) (*tail)->next = rq;
    else *head = rq;
    *tail = rq;
}

static void detach(mr_resolver_t *r, mr_resolve_req_t *rq)
{
    mr_resolve_entry_t *e = rq->entry;
    mr_resolve_req_t **head = e ? &e->waiters : &r->num_head, **tail = e ? &e->wtail : &r->num_tail;
    if (rq->prev) rq->prev->next = rq->next;
    else *head = rq->next;
    if (rq->next) rq->next->prev = rq->prev;
    else *tail = rq->prev;
    rq->next = rq->prev = NULL;
    rq->pending = false;
}

static void free_all(mr_resolver_t *r)
{
    for (uint32_t i = 0; i < r->nslots; i++) {
        for (mr_resolve_entry_t *e = r->slots[i]; e;) {
            mr_resolve_entry_t *next = e->hnext;
            free(e->addrs);
            free(e);
            e = next;
        }
    }
    free(r->slots);
    if (r->q) {
        pthread_mutex_lock(&r->q->mu);
        r->q->stop = true;
        pthread_cond_broadcast(&r->q->cv);
        queue_unref_unlock(r->q);
    }
    free(r);
    atomic_fetch_sub(&live, 1);
}

static void maybe_free(mr_resolver_t *r)
{
    if (r->closing && !r->op.active && !mr_defer_queued(&r->defer) && r->busy == 0) free_all(r);
}

/* Calls back the requests that were waiting on e when this round started (later arrivals wait
 * for a round of their own, so nothing is answered from inside its own submitting call). Returns
 * false when a callback closed the resolver. */
static bool deliver(mr_resolver_t *r, mr_resolve_entry_t *e)
{
    uint64_t limit = r->seq;
    e->busy = true;
    mr_resolve_req_t *rq;
    while (!r->closing && (rq = e->waiters) && rq->seq <= limit) {
        detach(r, rq);
        int n = 0;
        if (e->rc == 0) {
            for (; n < e->naddrs; n++) {
                r->scratch[n] = e->addrs[n];
                mr_addr_set_port(&r->scratch[n], rq->port);
            }
        }
        rq->fn(rq, e->rc, n ? r->scratch : NULL, n);
    }
    e->busy = false;
    if (r->closing) return false;
    /* A temporary failure is not kept: the next request asks again. */
    if (e->rc != 0 && e->rc != -ENOENT && idle_entry(e)) entry_remove(r, e);
    return true;
}

static void on_defer(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    mr_resolver_t *r = (mr_resolver_t *)((char *)d - offsetof(mr_resolver_t, defer));
    if (r->closing) { maybe_free(r); return; }
    r->busy++;
    uint64_t limit = r->seq;
    mr_resolve_req_t *rq;
    while (!r->closing && (rq = r->num_head) && rq->seq <= limit) {
        detach(r, rq);
        r->scratch[0] = rq->num;
        rq->fn(rq, 0, r->scratch, 1);
    }
    mr_resolve_entry_t *e = r->closing ? NULL : r->ready;
    r->ready = NULL;
    /* Entries stay `queued` (so they cannot be evicted) until their own turn comes. */
    while (e) {
        mr_resolve_entry_t *next = e->rnext;
        e->queued = false;
        if (!deliver(r, e)) break;
        e = next;
    }
    r->busy--;
    if (r->closing) maybe_free(r);
}

static void arm_read(mr_resolver_t *r);

static void apply(mr_resolver_t *r, rs_job_t *j)
{
    mr_resolve_entry_t *e = j->entry;
    e->job = NULL;
    r->pending--;
    free(e->addrs);
    e->addrs = NULL;
    e->naddrs = 0;
    e->rc = j->rc;
    if (j->rc == 0) {
        e->addrs = j->addrs;
        e->naddrs = j->naddrs;
        j->addrs = NULL;
        e->expires = mr_loop_now(r->loop) + r->o.ttl_ms;
    } else if (j->rc == -ENOENT) {
        e->expires = mr_loop_now(r->loop) + r->o.negative_ttl_ms;
    }
    if (e->rc == 0 || e->rc == -ENOENT) lru_push(r, e);
}

static void on_read(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)loop;
    (void)flags;
    mr_resolver_t *r = (mr_resolver_t *)((char *)op - offsetof(mr_resolver_t, op));
    if (r->closing) { maybe_free(r); return; }
    pthread_mutex_lock(&r->q->mu);
    rs_job_t *l = r->q->done, *fifo = NULL;
    r->q->done = NULL;
    pthread_mutex_unlock(&r->q->mu);
    while (l) { rs_job_t *n = l->next; l->next = fifo; fifo = l; l = n; }
    r->busy++;
    while (fifo) {
        rs_job_t *j = fifo;
        fifo = j->next;
        if (!r->closing) {
            apply(r, j);
            deliver(r, j->entry);
        }
        job_free(j);
    }
    r->busy--;
    if (r->closing) { maybe_free(r); return; }
    /* Any other error would repeat at once; the eventfd cannot really fail. */
    if (res >= 0 || res == -EINTR || res == -EAGAIN || res == -ECANCELED) arm_read(r);
}

static void arm_read(mr_resolver_t *r)
{
    r->op.fn = on_read;
    mr_loop_read(r->loop, &r->op, r->q->efd, &r->val, sizeof r->val);
}

static int queue_new(mr_resolver_t *r)
{
    rs_queue_t *q = calloc(1, sizeof *q);
    if (!q) return -ENOMEM;
    q->efd = eventfd(0, EFD_CLOEXEC);
    if (q->efd < 0) {
        int rc = -errno;
        free(q);
        return rc;
    }
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->refs = 1;
    r->q = q;
    arm_read(r);
    return 0;
}

static int job_start(mr_resolver_t *r, mr_resolve_entry_t *e)
{
    if (r->pending >= r->o.max_pending) return -ENOSPC;
    if (!r->q) {
        int rc = queue_new(r);
        if (rc < 0) return rc;
    }
    rs_job_t *j = calloc(1, sizeof *j);
    if (!j) return -ENOMEM;
    memcpy(j->name, e->name, strlen(e->name) + 1);
    j->entry = e;
    j->gai = r->o.getaddrinfo;
    rs_queue_t *q = r->q;
    pthread_mutex_lock(&q->mu);
    if (q->ntodo + 1 > q->idle && q->nthreads < r->o.threads) {
        int rc = thread_start(q);
        if (rc < 0 && q->nthreads == 0) {
            pthread_mutex_unlock(&q->mu);
            free(j);
            return rc;
        }
    }
    if (q->todo_tail) q->todo_tail->next = j;
    else q->todo = j;
    q->todo_tail = j;
    q->ntodo++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    lru_unlink(r, e);
    e->job = j;
    r->pending++;
    r->st.lookups++;
    return 0;
}

/* ---- API ------------------------------------------------------------------------------------ */

mr_resolver_t *mr_resolver_new(mr_loop_t *loop, const mr_resolver_opts_t *opts)
{
    mr_resolver_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->loop = loop;
    r->defer.fn = on_defer;
    set_opts(r, opts);
    atomic_fetch_add(&live, 1);
    return r;
}

void mr_resolver_configure(mr_resolver_t *r, const mr_resolver_opts_t *opts) { set_opts(r, opts); }

int mr_resolver_lookup(mr_resolver_t *r, const char *host, size_t len, uint16_t port, mr_resolve_req_t *rq,
                       mr_resolve_fn fn)
{
    mr_hostport_t hp;
    if (rq->pending) return -EBUSY;
    if (r->closing) return -EINVAL;
    int kind = mr_addr_parse_host(host, len, port, &hp, NULL);
    if (kind < 0) return kind;
    rq->fn = fn;
    rq->r = r;
    rq->port = port;
    if (kind == MR_ADDR_NUMERIC) {
        rq->num = hp.addr;
        attach(r, NULL, rq);
        mr_loop_defer(r->loop, &r->defer);
        return 0;
    }
    char key[MR_HOST_MAX + 1];
    size_t n = lower_key(hp.host, hp.hlen, key);
    uint32_t h = hash_name(key, n);
    mr_resolve_entry_t *e = find(r, key, n, h);
    if (e && fresh(r, e)) {
        r->st.hits++;
        if (e->rc == -ENOENT) r->st.negative_hits++;
        lru_push(r, e);
        attach(r, e, rq);
        if (!e->queued) {
            e->queued = true;
            e->rnext = r->ready;
            r->ready = e;
        }
        mr_loop_defer(r->loop, &r->defer);
        return 0;
    }
    if (e && e->job) {
        r->st.coalesced++;
        attach(r, e, rq);
        return 0;
    }
    bool created = !e;
    if (!e && !(e = entry_new(r, key, n, h))) return -ENOMEM;
    int rc = job_start(r, e);
    if (rc < 0) {
        if (created) entry_remove(r, e);
        return rc;
    }
    attach(r, e, rq);
    return 0;
}

void mr_resolver_cancel(mr_resolve_req_t *rq)
{
    if (!rq->pending) return;
    mr_resolver_t *r = rq->r;
    detach(r, rq);
    /* An entry left without waiters stays: its lookup's answer still fills the cache. */
}

int mr_resolver_cached(mr_resolver_t *r, const char *host, size_t len, uint16_t port, mr_addr_t *out, int max)
{
    char key[MR_HOST_MAX + 1];
    if (len == 0 || len > MR_HOST_MAX || max < 1) return 0;
    size_t n = lower_key(host, len, key);
    uint32_t h = hash_name(key, n);
    mr_resolve_entry_t *e = find(r, key, n, h);
    if (!e || !fresh(r, e)) return 0;
    r->st.hits++;
    lru_push(r, e);
    if (e->rc == -ENOENT) {
        r->st.negative_hits++;
        return -ENOENT;
    }
    int k = e->naddrs < max ? e->naddrs : max;
    for (int i = 0; i < k; i++) {
        out[i] = e->addrs[i];
        mr_addr_set_port(&out[i], port);
    }
    return k;
}

void mr_resolver_stats(const mr_resolver_t *r, mr_resolver_stats_t *out)
{
    *out = r->st;
    out->pending = r->pending;
    out->entries = r->nentries;
    out->threads = 0;
    if (r->q) {
        pthread_mutex_lock(&r->q->mu);
        out->threads = r->q->nthreads;
        pthread_mutex_unlock(&r->q->mu);
    }
}

unsigned mr_resolver_live(void) { return atomic_load(&live); }

void mr_resolver_close(mr_resolver_t *r)
{
    if (!r || r->closing) return;
    r->closing = true;
    if (r->q) {
        pthread_mutex_lock(&r->q->mu);
        r->q->stop = true;
        pthread_cond_broadcast(&r->q->cv);
        pthread_mutex_unlock(&r->q->mu);
        if (r->op.active) {
            /* The cancel ends a pending read under either backend; the write makes sure of it
             * should the cancel race with a completion already on its way. */
            uint64_t one = 1;
            ssize_t w = write(r->q->efd, &one, sizeof one);
            (void)w;
            mr_loop_cancel(r->loop, &r->op);
        }
    }
    maybe_free(r);
}

void mr_resolver_free(mr_resolver_t *r)
{
    if (!r) return;
    free_all(r);
}
