#include "lua/lua.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"

#define MR_EXPORT __attribute__((visibility("default"), used))

struct mr_lua_vm {
    lua_State *L;
    int run_ref, resume_ref, finish_ref, route_ref, tb_ref;
    uint8_t *route_flags;
    int nroutes;
};

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

static int ref_field(lua_State *L, int t, const char *name)
{
    lua_getfield(L, t, name);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

int mr_lua_vm_new(mr_lua_vm_t **out, const mr_config_t *cfg, char *err, size_t errlen)
{
    mr_lua_vm_t *vm = calloc(1, sizeof *vm);
    if (!vm) return -1;
    lua_State *L = luaL_newstate();
    if (!L) { free(vm); snprintf(err, errlen, "cannot create a Lua state"); return -1; }
    vm->L = L;
    luaL_openlibs(L);
    /* Ours first, then LuaJIT's own default path (jit.*, system modules). */
    lua_getglobal(L, "package");
    lua_pushstring(L, cfg->lua_path);
    lua_pushstring(L, ";");
    lua_getfield(L, -3, "path");
    lua_concat(L, 3);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.runtime");
    if (lua_pcall(L, 1, 1, 1) != 0) goto fail;
    int rt = lua_gettop(L);
    lua_getfield(L, rt, "init");
    lua_pushstring(L, cfg->file);
    if (lua_pcall(L, 1, 1, 1) != 0) goto fail;
    vm->nroutes = (int)lua_objlen(L, -1);
    vm->route_flags = calloc((size_t)vm->nroutes + 1, 1);
    for (int i = 1; i <= vm->nroutes; i++) {
        lua_rawgeti(L, -1, i);
        vm->route_flags[i] = (uint8_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    vm->run_ref = ref_field(L, rt, "run");
    vm->resume_ref = ref_field(L, rt, "resume");
    vm->finish_ref = ref_field(L, rt, "finish");
    vm->route_ref = ref_field(L, rt, "route");
    /* One traceback closure for every call: lua_pushcfunction would allocate one per call. */
    lua_pushcfunction(L, traceback);
    vm->tb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
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
    free(vm->route_flags);
    free(vm);
}

int mr_lua_route_flags(const mr_lua_vm_t *vm, int idx)
{
    return idx > 0 && idx <= vm->nroutes ? vm->route_flags[idx] : 0;
}

static int collect(mr_lua_vm_t *vm, int base, int rc, const mr_route_conf_t *r, int phase, mr_lua_out_t *out)
{
    lua_State *L = vm->L;
    if (rc != 0) {
        mr_error("lua: route %s, phase %d: %s", r ? r->name : "?", phase, lua_tostring(L, -1));
        lua_settop(L, base);
        return MR_LUA_ERROR;
    }
    int code = (int)lua_tointeger(L, base + 2);
    if (code == MR_LUA_YIELD) {
        const char *what = lua_tostring(L, base + 3);
        if (what && strcmp(what, "sleep") == 0) {
            double s = lua_tonumber(L, base + 4);
            out->sleep_ms = s > 0 ? (uint64_t)ceil(s * 1000.0) : 0;
        } else {
            mr_error("lua: route %s: yielded on '%s', which the core does not know", r ? r->name : "?",
                     what ? what : "(nil)");
            lua_settop(L, base);
            return MR_LUA_ERROR;
        }
    } else if (phase == MR_PH_BODY && code == MR_LUA_DONE) {
        size_t n = 0;
        const char *s = lua_tolstring(L, base + 3, &n);
        out->chunk = NULL;
        out->chunk_len = 0;
        if (s && n) {
            out->chunk = malloc(n);
            if (out->chunk) { memcpy(out->chunk, s, n); out->chunk_len = n; }
        }
    }
    lua_settop(L, base);
    return code;
}

int mr_lua_run(mr_lua_vm_t *vm, mr_client_t *c, const mr_route_conf_t *r, int phase,
               const char *chunk, size_t n, bool eof, mr_lua_out_t *out)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tb_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->run_ref);
    lua_pushinteger(L, r->index);
    lua_pushinteger(L, phase);
    lua_pushlightuserdata(L, c);
    if (phase == MR_PH_BODY) {
        lua_pushlstring(L, chunk ? chunk : "", n);
        lua_pushboolean(L, eof);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    int rc = lua_pcall(L, 5, 3, base + 1);
    return collect(vm, base, rc, r, phase, out);
}

int mr_lua_resume(mr_lua_vm_t *vm, mr_client_t *c, const mr_route_conf_t *r, mr_lua_out_t *out)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tb_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->resume_ref);
    lua_pushlightuserdata(L, c);
    int rc = lua_pcall(L, 1, 3, base + 1);
    return collect(vm, base, rc, r, c->lua_phase, out);
}

int mr_lua_route(mr_lua_vm_t *vm, mr_client_t *c)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tb_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->route_ref);
    lua_pushlightuserdata(L, c);
    int rc = MR_LUA_ERROR;
    if (lua_pcall(L, 1, 1, base + 1) != 0) mr_error("lua: routing failed: %s", lua_tostring(L, -1));
    else rc = (int)lua_tointeger(L, -1);
    lua_settop(L, base);
    return rc;
}

void mr_lua_finish(mr_lua_vm_t *vm, mr_client_t *c)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->finish_ref);
    lua_pushlightuserdata(L, c);
    if (lua_pcall(L, 1, 0, 0) != 0) mr_error("lua: finish: %s", lua_tostring(L, -1));
    lua_settop(L, base);
}

MR_EXPORT double mr_lua_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

MR_EXPORT void mr_lua_log(int level, const char *msg, size_t len)
{
    if (level < MR_LOG_DEBUG || level > MR_LOG_ERROR) level = MR_LOG_INFO;
    mr_log((mr_log_level_t)level, "[lua] %.*s", (int)(len > 3000 ? 3000 : len), msg);
}
