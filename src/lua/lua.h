/* One LuaJIT VM per worker. It evaluates the config file again (so routes can hold functions),
 * keeps route handlers by route index, and runs them. Thread affinity: the owning worker.
 * Calls into Lua are always protected; an error becomes a logged traceback and a -1 return. */
#ifndef MR_LUA_H
#define MR_LUA_H

#include <stddef.h>

#include "config/config.h"
#include "proxy/proxy.h"

typedef struct mr_lua_vm mr_lua_vm_t;

int mr_lua_vm_new(mr_lua_vm_t **out, const mr_config_t *cfg, char *err, size_t errlen);
void mr_lua_vm_free(mr_lua_vm_t *vm);
/* Runs the route's handler for the client's current request. 0 when a response was produced. */
int mr_lua_handle(mr_lua_vm_t *vm, mr_client_t *c, const mr_route_conf_t *r);

#endif
