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
#include "proxy/proxy.h"

typedef struct mr_lua_vm mr_lua_vm_t;

enum { MR_LUA_ERROR = -1, MR_LUA_DONE = 0, MR_LUA_YIELD = 1, MR_LUA_RESPONDED = 2 };
enum { MR_PH_REQUEST = 1, MR_PH_HANDLER, MR_PH_RESPONSE, MR_PH_BODY, MR_PH_LOG };
/* Which phases a route's chain defines; C skips the VM for the others. */
enum { MR_RF_REQUEST = 1, MR_RF_RESPONSE = 2, MR_RF_BODY = 4, MR_RF_LOG = 8, MR_RF_HANDLER = 16 };

typedef struct {
    uint64_t sleep_ms;  /* MR_LUA_YIELD: how long to park */
    char *chunk;        /* MR_PH_BODY: malloc'd output (caller owns), NULL = drop */
    size_t chunk_len;
} mr_lua_out_t;

int mr_lua_vm_new(mr_lua_vm_t **out, const mr_config_t *cfg, char *err, size_t errlen);
void mr_lua_vm_free(mr_lua_vm_t *vm);
int mr_lua_route_flags(const mr_lua_vm_t *vm, int route_index);
/* Runs a phase for the client's current request (chunk/eof only for MR_PH_BODY). */
int mr_lua_run(mr_lua_vm_t *vm, mr_client_t *c, const mr_route_conf_t *r, int phase,
               const char *chunk, size_t n, bool eof, mr_lua_out_t *out);
/* Resumes the request's parked phase after what it waited for happened. */
int mr_lua_resume(mr_lua_vm_t *vm, mr_client_t *c, const mr_route_conf_t *r, mr_lua_out_t *out);
/* Matches the request against the routes in Lua (predicates, router). Returns the 1-based route
 * index, 0 for no match, or MR_LUA_ERROR. */
int mr_lua_route(mr_lua_vm_t *vm, mr_client_t *c);
/* Forgets the request's Lua state (request done, or client gone). */
void mr_lua_finish(mr_lua_vm_t *vm, mr_client_t *c);

#endif
