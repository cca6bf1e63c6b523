#include "lua/lua.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"

struct mr_lua_vm {
    lua_State *L;
    int handle_ref;   /* moonring.runtime.handle */
};

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int mr_lua_vm_new(mr_lua_vm_t **out, const mr_config_t *cfg, char *err, size_t errlen)
{
    mr_lua_vm_t *vm = calloc(1, sizeof *vm);
    if (!vm) return -1;
    lua_State *L = luaL_newstate();
    if (!L) { free(vm); snprintf(err, errlen, "cannot create a Lua state"); return -1; }
    vm->L = L;
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, cfg->lua_path);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.runtime");
    if (lua_pcall(L, 1, 1, -3) != 0) goto fail;
    lua_getfield(L, -1, "init");
    lua_pushstring(L, cfg->file);
    if (lua_pcall(L, 1, 0, -4) != 0) goto fail;
    lua_getfield(L, -1, "handle");
    vm->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    *out = vm;
    return 0;
fail:
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    lua_close(L);
    free(vm);
    return -1;
}

void mr_lua_vm_free(mr_lua_vm_t *vm)
{
    if (!vm) return;
    lua_close(vm->L);
    free(vm);
}

int mr_lua_handle(mr_lua_vm_t *vm, mr_client_t *c, const mr_route_conf_t *r)
{
    lua_State *L = vm->L;
    lua_pushcfunction(L, traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->handle_ref);
    lua_pushinteger(L, r->index);
    lua_pushlightuserdata(L, c);
    int rc = lua_pcall(L, 2, 0, -4);
    if (rc != 0) {
        mr_error("lua handler of route %s failed: %s", r->name, lua_tostring(L, -1));
        lua_settop(L, 0);
        return -1;
    }
    lua_settop(L, 0);
    return c->resp_started ? 0 : -1;
}
