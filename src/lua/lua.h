/* One LuaJIT VM per worker. It evaluates the config file again (so routes can hold functions),
 * compiles each route's filter chain, and runs request phases in coroutines.
 * Thread affinity: the owning worker. Every call into Lua is protected; an error becomes a logged
 * traceback and MR_LUA_ERROR. Nothing here calls back into the proxy synchronously except the
 * FFI request API (src/lua/api.c) that Lua code uses during a phase. */
#ifndef MR_LUA_H
#define MR_LUA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

typedef struct mr_lua_vm mr_lua_vm_t;
typedef struct mr_req mr_req_t;

enum { MR_LUA_ERROR = -1, MR_LUA_DONE = 0, MR_LUA_YIELD = 1, MR_LUA_RESPONDED = 2 };
enum { MR_PH_REQUEST = 1, MR_PH_HANDLER, MR_PH_RESPONSE, MR_PH_BODY, MR_PH_LOG };
/* Which phases a route's chain defines; C skips the VM for the others. */
enum { MR_RF_REQUEST = 1, MR_RF_RESPONSE = 2, MR_RF_BODY = 4, MR_RF_LOG = 8, MR_RF_HANDLER = 16 };

typedef struct {
    uint64_t sleep_ms;  /* MR_LUA_YIELD: how long to park */
    bool wait_io;       /* MR_LUA_YIELD on I/O: park with no timer; a cosocket or the core wakes
                           the request by arming its park timer (lua_timer) at 0 ms */
    char *chunk;        /* MR_PH_BODY: malloc'd output (caller owns), NULL = drop */
    size_t chunk_len;
} mr_lua_out_t;

int mr_lua_vm_new(mr_lua_vm_t **out, const mr_config_t *cfg, char *err, size_t errlen);
/* Drops a reference (the creator holds one; every timer and detached on_log holds one, so the VM
 * outlives the generation that made it while they run). The last one frees the VM: never from
 * inside Lua code of that VM. */
void mr_lua_vm_unref(mr_lua_vm_t *vm);
int mr_lua_route_flags(const mr_lua_vm_t *vm, int route_index);
/* Runs a phase for the request (chunk/eof only for MR_PH_BODY). */
int mr_lua_run(mr_lua_vm_t *vm, mr_req_t *r, const mr_route_conf_t *rt, int phase,
               const char *chunk, size_t n, bool eof, mr_lua_out_t *out);
/* Resumes the request's parked phase after what it waited for happened. */
int mr_lua_resume(mr_lua_vm_t *vm, mr_req_t *r, const mr_route_conf_t *rt, int phase, mr_lua_out_t *out);
/* Matches the request against the routes in Lua (predicates, router). Returns the 1-based route
 * index, 0 for no match, or MR_LUA_ERROR. */
int mr_lua_route(mr_lua_vm_t *vm, mr_req_t *r);
/* Forgets the request's Lua state (request done, or client gone). */
void mr_lua_finish(mr_lua_vm_t *vm, mr_req_t *r);

/* Timers (moonring.timer) and detached coroutines run as "fibers": a park timer plus a coroutine
 * in the VM. Each holds a reference on the VM (mr_lua_vm_unref), so the VM outlives the generation
 * that made it while a timer of it is pending. */
/* The VM starts serving: runs the config's init_worker (as a timer); timers may be created. */
void mr_lua_vm_start(mr_lua_vm_t *vm);
/* The generation stops being current (reload, shutdown): its pending timers fire once at once
 * with premature = true and are not rescheduled; new timers are refused. */
void mr_lua_vm_retire(mr_lua_vm_t *vm);
/* Timers and detached on_log tasks of this VM still alive on the calling worker: while any
 * exists, the VM must not be freed (their coroutines and parked sockets live in it). */
int mr_lua_vm_fibers(const mr_lua_vm_t *vm);
/* Hands a parked on_log phase over to a fiber so the request can end (its req/res die now).
 * Returns 0, or -1 when it cannot (the rest of the phase is then dropped). */
int mr_lua_detach(mr_lua_vm_t *vm, mr_req_t *r, const mr_lua_out_t *out);
/* The config the VM was built from (NULL before mr_lua_vm_start). Cosockets take
 * their TLS client contexts from it. */
const mr_config_t *mr_lua_vm_config(const mr_lua_vm_t *vm);
/* After the worker's loop stopped: drops every fiber left on this thread without running it. */
void mr_lua_thread_abort(void);

#endif
