/* A worker: one thread pinned to one CPU, owning one loop, its listening sockets, its upstream
 * pools, its Lua VM and its clients. Created and joined by the main thread (core/server.c);
 * everything else runs on the worker's own thread. Commands from the main thread arrive through
 * an eventfd the loop reads. */
#ifndef MR_WORKER_H
#define MR_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "net/resolver.h"
#include "loop/loop.h"
#include "core/gen.h"
#include "proxy/proxy.h"
#include "session/conn.h"

enum { MR_CMD_NONE = 0, MR_CMD_STOP = 1, MR_CMD_QUIT = 2, MR_CMD_RELOAD = 3, MR_CMD_RELOAD_COMMIT = 4,
       MR_CMD_RELOAD_ABORT = 5 };

/* One listening socket of one worker. Heap-allocated so its accept op never moves while in
 * flight; freed after its last completion once it is closing. */
typedef struct mr_listener {
    mr_op_t op;
    mr_worker_t *w;
    int fd;
    bool closing;
    char addr[64];
    struct mr_listener *next;
} mr_listener_t;

struct mr_worker {
    int id, cpu;
    char tag[16];
    pthread_t thread;
    const mr_config_t *cfg;       /* the current generation's (process-level settings) */
    mr_loop_t *loop;
    mr_resolver_t *resolver;      /* host names for cosockets (and, next, upstreams) */

    mr_listener_t *listeners;
    bool accepting, accept_paused;

    mr_proxy_t px;                /* the request core's per-worker state (current generation) */
    mr_conns_t conns;             /* client connections */

    int evfd;
    mr_op_t ev_op;
    uint64_t ev_val;
    atomic_int cmd;
    bool draining;
    mr_timer_t drain_timer;
    mr_timer_t accept_timer;      /* retries accepting after EMFILE and the like */
    mr_timer_t metrics_timer;     /* publishes connection gauges every second */
    int startup_rc;               /* 0 once serving, -errno on failure */
    atomic_int ready;             /* 1 serving, -1 failed */

    /* Reload hand-off, written by the main thread before MR_CMD_RELOAD and read back after
     * reload_state turns non-zero. */
    mr_config_t *reload_cfg;
    uint64_t reload_id;
    int *reload_fds;              /* per new listen entry: a new socket, or -1 to keep ours */
    char reload_err[1024];
    mr_gen_t *reload_gen;         /* built in phase one, switched to on commit */
    atomic_int reload_state;      /* 0 building, 1 built, -1 build failed, 2 committed/aborted */
};

/* Creates the worker's listening sockets (main thread, so bind errors surface at start).
 * inherited (or NULL): per cfg->listen entry, a socket handed over by a binary upgrade to adopt
 * instead of binding, or -1; the worker owns adopted sockets. */
int mr_worker_prepare(mr_worker_t *w, const mr_config_t *cfg, int id, int cpu, const int *inherited);
/* Main thread, phase one: hands the worker a new config (and new sockets) to build a
 * generation from; returns at once. Poll reload_state until it is 1 (built) or -1 (failed). */
void mr_worker_reload(mr_worker_t *w, mr_config_t *cfg, uint64_t id, int *fds);
/* Phase two, once every worker has built or failed: commit switches to the new generation and
 * listeners; abort drops them and closes the new sockets. reload_state turns 2 when done. */
void mr_worker_reload_finish(mr_worker_t *w, bool commit);
int mr_worker_start(mr_worker_t *w);
void mr_worker_command(mr_worker_t *w, int cmd);
void mr_worker_join(mr_worker_t *w);

#endif
