/* The asynchronous name resolver of one worker: getaddrinfo on helper threads, answers delivered
 * on the worker's loop, a TTL cache with negative entries, and one lookup per name however many
 * callers wait for it. Any module of the worker uses the same resolver (cosockets, upstream
 * servers named by host, req:set_upstream).
 *
 * Thread affinity: a resolver belongs to the thread of the loop it was created with; every
 * function here must be called from that thread, and every callback runs there. Helper threads
 * (at most opts.threads, started on the first lookup that needs one) only run getaddrinfo and
 * hand results back through an eventfd the loop reads; they never touch callers' memory.
 *
 * Callbacks: a request that was accepted (mr_resolver_lookup returned 0) calls back exactly once,
 * later, from the loop (a loop completion or the end of the current loop turn), never
 * synchronously from mr_resolver_lookup, unless it is cancelled first: a cancelled request never
 * calls back, and a getaddrinfo result that arrives after everybody cancelled still fills the
 * cache. The caller embeds the mr_resolve_req_t in its own object; that memory must stay valid
 * until the callback ran or mr_resolver_cancel returned, and may be reused for a new lookup from
 * inside the callback. A callback may call any function here (lookup, cancel of other requests).
 *
 * Answers: every IPv4 and IPv6 address of the name (at most MR_RESOLVER_MAX_ADDRS), IPv4 first
 * (services on "localhost" usually listen on 127.0.0.1), each family in getaddrinfo's order,
 * duplicates removed, with the port of the request set. The array passed to a callback is valid
 * during the callback only.
 *
 * Cache: per resolver (so per worker), keyed by the name in lower case, at most opts.cache_size
 * names, least recently used evicted first. Answers are kept opts.ttl_ms (getaddrinfo gives no
 * TTL), "no such name" (-ENOENT) opts.negative_ttl_ms; temporary failures (-EAGAIN, -EIO) are
 * not cached, so the next request asks again.
 *
 * Shutdown never waits for a helper thread: the work queue is reference-counted by the threads
 * and the worker side, and whichever lets go last frees it, so a getaddrinfo stuck on a dead DNS
 * server outlives the resolver harmlessly. The eventfd read follows the loop's buffer rule: its
 * 8 bytes belong to the kernel until its completion (see mr_resolver_close and _free). */
#ifndef MR_RESOLVER_H
#define MR_RESOLVER_H

#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop/loop.h"
#include "net/net.h"

#define MR_RESOLVER_MAX_ADDRS 16

typedef struct mr_resolver mr_resolver_t;
typedef struct mr_resolve_req mr_resolve_req_t;
typedef struct mr_resolve_entry mr_resolve_entry_t;

/* rc: 0 with naddrs >= 1 addresses; -ENOENT no such name or no address (cached negatively);
 * -EAGAIN temporary failure (no DNS server answered); -EIO any other getaddrinfo failure;
 * -ENOMEM. */
typedef void (*mr_resolve_fn)(mr_resolve_req_t *rq, int rc, const mr_addr_t *addrs, int naddrs);

/* Embedded in the caller's object (container_of to get back to it), zeroed before its first use
 * (calloc). Fields are internal. */
struct mr_resolve_req {
    mr_resolve_fn fn;
    mr_resolve_entry_t *entry;  /* the name waited for, or NULL for a numeric host */
    mr_resolve_req_t *next, *prev;
    mr_resolver_t *r;
    uint64_t seq;               /* order of arrival: a delivery round serves only earlier ones */
    uint16_t port;
    bool pending;
    mr_addr_t num;              /* a numeric host's address, delivered at the end of the turn */
};

/* Every field 0 takes the default given here (MR_RESOLVER_DEFAULTS). Proposed config key:
 * resolver = { ttl = "30s", negative_ttl = "5s", cache_size = 1024, max_pending = 256,
 *              threads = 2 }. */
typedef struct {
    uint32_t ttl_ms;            /* 30000: how long an answer is reused */
    uint32_t negative_ttl_ms;   /* 5000: how long "no such name" is reused */
    uint32_t cache_size;        /* 1024 names per worker */
    uint32_t max_pending;       /* 256 names queued or being resolved per worker; more: -ENOSPC */
    uint32_t threads;           /* 2 helper threads at most, so one name stuck on a dead DNS
                                 * server does not hold up every other */
    /* getaddrinfo by default. Tests substitute a fake; it runs on a helper thread, and its
     * result is released with freeaddrinfo. */
    int (*getaddrinfo)(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res);
} mr_resolver_opts_t;

#define MR_RESOLVER_DEFAULTS { .ttl_ms = 30000, .negative_ttl_ms = 5000, .cache_size = 1024, \
                               .max_pending = 256, .threads = 2, .getaddrinfo = NULL }

typedef struct {
    uint64_t lookups;           /* getaddrinfo calls started */
    uint64_t hits;              /* requests answered from the cache, negative answers included */
    uint64_t negative_hits;     /* of which "no such name" */
    uint64_t coalesced;         /* requests that joined a lookup already in flight */
    uint32_t pending;           /* names queued or being resolved now */
    uint32_t entries;           /* names in the cache (in flight included) */
    uint32_t threads;           /* helper threads started and not yet stopped */
} mr_resolver_stats_t;

/* A resolver on `loop` (the calling thread's); opts NULL = defaults. No thread, no fd yet.
 * Returns NULL on allocation failure. */
mr_resolver_t *mr_resolver_new(mr_loop_t *loop, const mr_resolver_opts_t *opts);
/* New settings (a reload): TTLs apply to answers that arrive from now on; a smaller cache_size
 * evicts at the next insertion; threads and max_pending apply to new lookups. */
void mr_resolver_configure(mr_resolver_t *r, const mr_resolver_opts_t *opts);

/* Resolves host (a name, or an IPv4/IPv6 literal, which is answered without a lookup) for port.
 * Returns 0: fn will be called once, later (see above); or, with no callback to come:
 * -EINVAL (not a valid host: mr_addr_parse_host's rules), -ENOSPC (max_pending names are being
 * resolved), -EBUSY (rq is pending already), -ENOMEM, or -errno from starting the first helper thread or its eventfd. */
int mr_resolver_lookup(mr_resolver_t *r, const char *host, size_t len, uint16_t port, mr_resolve_req_t *rq,
                       mr_resolve_fn fn);
/* Drops a request: its callback will not run. Harmless on a request that is not pending. Call it
 * before the resolver is closed or freed; after that, requests are simply forgotten. */
void mr_resolver_cancel(mr_resolve_req_t *rq);
static inline bool mr_resolve_pending(const mr_resolve_req_t *rq) { return rq->pending; }

/* The cached answer for a name, now, for the hot path: copies up to max addresses with port set
 * into out and returns how many (>= 1); -ENOENT when the name is cached as not existing; 0 when
 * the cache has nothing fresh (use mr_resolver_lookup). Counts as a hit when it answers. Never
 * starts a lookup. host must be a name (not a literal), already validated by mr_addr_parse*. */
int mr_resolver_cached(mr_resolver_t *r, const char *host, size_t len, uint16_t port, mr_addr_t *out, int max);

void mr_resolver_stats(const mr_resolver_t *r, mr_resolver_stats_t *out);
/* Resolvers of this process not yet freed (any thread): lets tests check that close frees. */
unsigned mr_resolver_live(void);

/* Closes a resolver whose loop still runs: pending requests are dropped without a callback (their
 * memory is not touched), helper threads are told to stop, and the eventfd read is cancelled; the
 * resolver's memory goes at that read's final completion, on a later loop turn. r is dead to the
 * caller at once. */
void mr_resolver_close(mr_resolver_t *r);
/* Frees a resolver after its loop was freed (mr_loop_free: the ring's teardown ended the eventfd
 * read), at once. Pending requests are dropped as in mr_resolver_close. NULL is ignored. */
void mr_resolver_free(mr_resolver_t *r);

#endif
