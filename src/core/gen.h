/* A configuration generation inside one worker: the config, the Lua VM evaluated from it, and
 * the upstream groups built from it. Requests hold a reference for their whole life, so a reload
 * never changes the code a request started with; the old generation is freed when its last
 * request ends. Thread affinity: the owning worker (the config itself is shared read-only and
 * refcounted across workers). */
#ifndef MR_GEN_H
#define MR_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "loop/loop.h"
#include "upstream/upstream.h"

typedef struct mr_lua_vm mr_lua_vm_t;
typedef struct mr_worker mr_worker_t;

typedef struct mr_gen {
    uint64_t id;
    mr_config_t *cfg;
    mr_lua_vm_t *lua;
    mr_upstream_t *ups;         /* one per cfg->upstreams */
    mr_upstream_t *adhoc;       /* one per route (routes with upstream = "host:port") */
    uint32_t refs;
    bool listed;                /* reported to mr_metrics_gen_live */
    /* Set once a reload retires this generation while requests still hold it (core/worker.c):
     * the drain deadline timer, armed on the owning worker's loop. */
    mr_loop_t *drain_loop;
    mr_timer_t drain_timer;
    mr_worker_t *drain_worker;
} mr_gen_t;

/* Builds a generation on the calling worker thread (evaluates the config in a new VM). Takes a
 * reference on cfg. Returns 0, or -1 with err filled. */
int mr_gen_new(mr_config_t *cfg, uint64_t id, mr_server_registry_t *reg, mr_gen_t **out, char *err, size_t errlen);
static inline void mr_gen_ref(mr_gen_t *g) { g->refs++; }
void mr_gen_unref(mr_gen_t *g);

#endif
