/* Metrics: per-worker counters, gauges and histograms, summed by the admin thread.
 *
 * The request path takes no lock and shares no cache line with another thread's writes: every
 * worker owns an mr_metrics_t and is the only thread that writes it. Values are C11 atomics
 * written with relaxed load + store (mr_m_add), which on x86-64 and arm64 compile to the plain
 * load, add and store a non-atomic counter would (no lock prefix, no fence); the admin thread
 * reads them with relaxed loads, so it sees each value whole, never torn, possibly a few
 * increments old. Nothing is ever reset or freed while the process runs: counters survive
 * reloads because they belong to the worker, not to a generation.
 *
 * Cells. Labelled values live in cells, one per label set per worker (a request cell per
 * route x upstream, a server cell per upstream x server, ...). A worker finds its cell through a
 * private hash keyed by small integer ids, and creates a missing one (malloc, first use only),
 * linking it at the head of a list it publishes with a release store; the admin thread walks
 * that list with acquire loads. A cell's key is written before it is published and never
 * changes; a cell never moves.
 *
 * Names. Route, upstream, server and label strings are interned process-wide into ids
 * (mr_metrics_name), under a mutex, on the main thread at config load or on a worker when a
 * generation or a run-time upstream is built: never per request. Ids are stable for the life of
 * the process, so a reload that keeps a route's name keeps its series.
 *
 * Server states (up / down / draining, set through the admin API) are process-wide atomics per
 * upstream x server, read by the balancers with one relaxed load (upstream/upstream.c). For
 * health checks: keep the checker's verdict in a second atomic beside the operator's (so an
 * operator's "up" does not undo an ejection, nor a recovery an operator's "down"), have the
 * balancer skip a server when either says so, report it as "health" next to "state" in
 * /-/upstreams and moonring_upstream_server_state, and count ejections in MR_MS_EJECTIONS of the
 * server cell (already exposed as moonring_upstream_server_ejections_total).
 *
 * Thread affinity: mr_metrics_* calls that take an mr_metrics_t are the owning worker's; the
 * mr_metrics_expo_* functions (metrics/expo.h) are the admin thread's; naming and server states
 * are any thread's. */
#ifndef MR_METRICS_H
#define MR_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/export.h"

/* Latency histograms: upper bounds in microseconds (Prometheus' default buckets from 5 ms, plus
 * 1 ms and 2.5 ms), then +Inf. */
#define MR_M_NBOUNDS 13
#define MR_M_NBUCKETS (MR_M_NBOUNDS + 1)
extern const uint32_t mr_m_bounds_us[MR_M_NBOUNDS];

/* Cell kinds and their value layouts. */
enum { MR_MK_REQ = 1, MR_MK_SRV, MR_MK_ADDR, MR_MK_LUA, MR_MK_USER };

/* MR_MK_REQ (a = route name id, b = upstream name id): */
enum { MR_MP_HTTP10 = 0, MR_MP_HTTP11, MR_MP_HTTP2, MR_MP_COUNT };
#define MR_MR_CODES 0                               /* [proto * 5 + class - 1]: requests */
#define MR_MR_BYTES_IN (MR_MP_COUNT * 5)            /* request body bytes received */
#define MR_MR_BYTES_OUT (MR_MR_BYTES_IN + 1)        /* response body bytes sent */
#define MR_MR_RETRIES (MR_MR_BYTES_IN + 2)          /* tries after the first */
#define MR_MR_LAT (MR_MR_BYTES_IN + 3)              /* request duration: buckets, then sum (us) */
#define MR_MR_UPLAT (MR_MR_LAT + MR_M_NBUCKETS + 1) /* upstream response time: buckets, sum */
#define MR_MR_NVALUES (MR_MR_UPLAT + MR_M_NBUCKETS + 1)

/* MR_MK_SRV (a = upstream name id, b = server address id): */
enum { MR_MS_TRIES = 0, MR_MS_FAILURES, MR_MS_EJECTIONS, MR_MS_NVALUES };
/* MR_MK_ADDR (a = server address id), gauges published by mr_metrics_tick: */
enum { MR_MA_ACTIVE = 0, MR_MA_IDLE, MR_MA_NVALUES };
/* MR_MK_LUA (a = route name id, b = filter name id): */
enum { MR_ML_ERRORS = 0, MR_ML_BUDGET, MR_ML_NVALUES };

/* Worker-level values (no labels). */
enum {
    MR_MW_CONNS_OPEN = 0,   /* gauge: client connections (tick) */
    MR_MW_INFLIGHT,         /* gauge: requests started and not ended */
    MR_MW_UP_ACTIVE,        /* gauge: upstream connections bound to requests (tick) */
    MR_MW_UP_IDLE,          /* gauge: pooled upstream connections (tick) */
    MR_MW_COUNT
};

typedef struct mr_mcell {
    struct mr_mcell *next;      /* the next older cell of the same worker */
    uint32_t kind, a, b, n;     /* key, and the number of values */
    _Atomic uint64_t v[];       /* counters; user gauges and sums hold double bits */
} mr_mcell_t;

typedef struct mr_metrics {
    int worker;
    _Atomic(mr_mcell_t *) head; /* published cells, newest first */
    mr_mcell_t **tab;           /* the worker's private index (open addressing) */
    uint32_t cap, count;
    _Atomic uint64_t w[MR_MW_COUNT];
    struct mr_metrics *next;    /* every worker's, for the admin thread */
} mr_metrics_t;

/* A single writer's increment: relaxed load and store, no read-modify-write instruction. */
static inline void mr_m_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}
static inline void mr_m_set(_Atomic uint64_t *c, uint64_t v) { atomic_store_explicit(c, v, memory_order_relaxed); }
static inline uint64_t mr_m_get(_Atomic uint64_t *c) { return atomic_load_explicit(c, memory_order_relaxed); }

/* ---- names: any thread -------------------------------------------------------------------- */
/* The id of a string (interned on first use; "" is 0). Stable for the life of the process. */
uint32_t mr_metrics_name(const char *s, size_t n);
static inline uint32_t mr_metrics_cname(const char *s) { return s ? mr_metrics_name(s, __builtin_strlen(s)) : 0; }
/* The string of an id (valid for the life of the process). */
const char *mr_metrics_str(uint32_t id);

/* ---- workers ----------------------------------------------------------------------------- */
/* A worker's metrics, registered for the admin thread; never freed before mr_metrics_free_all. */
mr_metrics_t *mr_metrics_worker(int worker);
/* The calling worker's (set by mr_metrics_worker on that thread), or NULL elsewhere. */
mr_metrics_t *mr_metrics_self(void);
/* The cell for a key, created on first use (NULL only when memory ran out). */
mr_mcell_t *mr_metrics_cell(mr_metrics_t *m, uint32_t kind, uint32_t a, uint32_t b, uint32_t n);
/* Adds v (microseconds) to the histogram whose first bucket is h (buckets, then the sum). */
void mr_metrics_observe_us(_Atomic uint64_t *h, uint64_t us);
/* Every worker's metrics, newest first (admin thread; the list only grows). */
mr_metrics_t *mr_metrics_workers(void);
/* At exit, after every worker and admin thread ended. */
void mr_metrics_free_all(void);

/* ---- process-wide counters (main and admin threads) -------------------------------------- */
void mr_metrics_reload(bool ok, uint64_t generation);
void mr_metrics_get_reloads(uint64_t *ok, uint64_t *refused, uint64_t *generation);

/* Live generation objects per id (one per worker that still holds it): core/gen.c reports them,
 * the admin API lists the current and the draining ones. */
void mr_metrics_gen_live(uint64_t id, int delta);
int mr_metrics_gens(uint64_t *ids, int *counts, int max);

/* The built-in families' names (NULL-terminated): user metrics may not take them. */
extern const char *const mr_metrics_builtin_names[];

/* ---- server states ----------------------------------------------------------------------- */
enum { MR_SRV_UP = 0, MR_SRV_DOWN = 1, MR_SRV_DRAINING = 2 };
/* The state cell of server `addr` in upstream `up` (name ids), created up on first use; the
 * pointer is valid for the life of the process. NULL when memory ran out. */
_Atomic int *mr_metrics_srv_state(uint32_t up, uint32_t addr);
const char *mr_metrics_srv_state_name(int state);
int mr_metrics_srv_state_parse(const char *s, size_t n); /* -1 when unknown */

/* ---- Lua errors (worker) ------------------------------------------------------------------ */
/* A Lua phase failed on route `route` (name id) with message msg (the runtime names the filter
 * in it: "filter api.filters[2] (mod): ..." or "handler: ..."). */
void mr_metrics_lua_error(uint32_t route, const char *msg);

/* ---- user metrics (moonring.metrics, FFI) ------------------------------------------------- */
enum { MR_MU_COUNTER = 0, MR_MU_GAUGE = 1, MR_MU_HISTOGRAM = 2 };
/* Declares a metric (any thread: each VM declares it when its config or module loads). The same
 * name with the same type, help, labels and buckets gives the same id; a clash is refused.
 * labels: label names separated by '\n'; bounds: histogram upper bounds (ascending). Returns the
 * id (>= 1), MR_FFI_EXISTS (same name, different declaration), MR_FFI_BAD_ARG or MR_FFI_NOMEM. */
MR_EXPORT int mr_metrics_user_define(const char *name, size_t nl, int type, const char *help, size_t hl,
                                     const char *labels, size_t ll, const double *bounds, int nbounds);
/* The calling worker's value slots of metric id for one label-value set (values separated by
 * '\n'), as doubles: counter and gauge [0]; histogram: nbounds+1 bucket counts, then the sum. The
 * pointer stays valid for the life of the process: Lua caches it and adds with plain stores, the
 * worker being the only writer. NULL off a worker (the scratch VM of a config check), for an
 * unknown id, a wrong number of label values, or when memory ran out. */
MR_EXPORT double *mr_metrics_user_slots(int id, const char *values, size_t vl);
/* For the exposition: the number of user metrics, and a copy of one's declaration (free each). */
int mr_metrics_user_count(void);
int mr_metrics_user_get(int id, char **name, char **help, char **labels, int *type, double **bounds, int *nbounds);

#endif
