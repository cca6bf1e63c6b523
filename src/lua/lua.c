#include "lua/lua.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>

#include "core/watch.h"
#include "loop/loop.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "util/export.h"

struct mr_lua_vm {
    lua_State *L;
    int run_ref, resume_ref, finish_ref, route_ref, tb_ref;
    uint8_t *route_flags;
    int nroutes;
    int fiber_ref, adopt_ref;   /* moonring.timer's _run and _adopt */
    const mr_config_t *cfg;     /* referenced for the VM's whole life (cosockets read it) */
    int refs;                   /* the generation's, plus one per fiber (timers, detached on_log) */
    bool started;               /* serving: init_worker ran, timers may be created */
    bool retired;

    /* Time budget (lua.time_budget). A "run" is one call from C into the VM (a phase, until it
     * returns or yields). budget[1] is the current run's sequence number (worker writes),
     * budget[0] the number of a run found over budget (watchdog writes); the runtime reads both
     * through FFI at every request-API call and yield, and raises an error when they are equal. */
    _Atomic int32_t budget[2];
    _Atomic uint64_t run_start_ns;      /* 0 between runs */
    _Atomic(const char *) run_route;    /* for the watchdog's log lines */
    _Atomic int run_phase;
    _Atomic(const char *) run_tag;      /* the worker's log tag */
    uint64_t budget_ns;
    atomic_bool hooked;
    bool hook_fired;                    /* worker only: the hook raised once in this run */
    pthread_mutex_t hook_lock;          /* lua_sethook from the watchdog vs from the worker */
    int32_t stuck_seq;                  /* watchdog only: last run reported as uninterruptible */
    int32_t wd_seen_seq;                /* watchdog only: budget[1] at its previous look */
    uint64_t stuck_logged_ns;
    mr_lua_vm_t *wd_next, *wd_prev;     /* watchdog list, under wd_lock */
};

/* ------------------------------------------------------------------------------------------ */
/* Runaway scripts                                                                              */
/*
 * LuaJIT offers no safe way to stop code from another thread, so the budget is enforced in three
 * layers, from strongest to weakest:
 *  1. Every request-API call and every yield checks budget[] (moonring.runtime) and raises a Lua
 *     error once the run is over budget: loops that touch the request stop, compiled or not.
 *  2. The watchdog thread, finding a run over budget, installs a count hook (lua_sethook is
 *     documented as safe to call asynchronously; LuaJIT's own interpreter uses it from a signal
 *     handler). The hook raises the error at the next hook point of interpreted code.
 *  3. JIT-compiled code never runs hooks. A compiled loop that neither calls the API nor leaves
 *     its trace cannot be stopped: the watchdog logs it loudly (route, phase, worker), repeatedly.
 * The error ends the phase like any Lua error: 500, traceback in the log, the worker goes on.
 *
 * The watchdog wakes only when a check can be due: at the deadline (start + budget) of the oldest
 * run in progress, every WD_RECHECK_MS while a run is over budget, and once per budget period
 * while runs keep starting. After a budget period without any run it parks, and the next run
 * wakes it (wd_armed). A worker pinned to a CPU with its watchdog would otherwise be interrupted
 * a hundred times a second for nothing: at one connection that showed in the p99 latency. */

static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cond;
static mr_lua_vm_t *wd_list;
static pthread_once_t wd_once = PTHREAD_ONCE_INIT;
/* True while the watchdog is sure to look again within any VM's budget: a run that begins then
 * needs nothing from it. False while it is parked: the run that begins wakes it. */
static atomic_bool wd_armed;
static _Thread_local mr_lua_vm_t *tl_vm; /* the VM this worker thread is running, for the hook */

#define WD_RECHECK_MS 10
#define WD_HOOK_COUNT 1000

/* The coarse clock (a few ms resolution, no vDSO time read) is plenty for a budget of at least
 * tens of ms, and every run reads it, so it should cost nothing. */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define PH_TIMER (MR_PH_LOG + 1) /* a moonring.timer callback or a detached on_log */

static const char *phase_name(int phase)
{
    static const char *const names[] = { "route", "on_request", "handler", "on_response", "on_body", "on_log",
                                         "timer" };
    return phase >= 0 && phase <= PH_TIMER ? names[phase] : "?";
}

static void unhook(mr_lua_vm_t *vm, lua_State *L)
{
    pthread_mutex_lock(&vm->hook_lock);
    lua_sethook(L, NULL, 0, 0);
    atomic_store(&vm->hooked, false);
    pthread_mutex_unlock(&vm->hook_lock);
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    mr_lua_vm_t *vm = tl_vm;
    if (vm && atomic_load(&vm->run_start_ns) && atomic_load(&vm->budget[0]) == atomic_load(&vm->budget[1])) {
        /* Still running after the first error: something caught it (pcall). From now on every
         * instruction raises, so the catching frame fails at its next instruction, and so on up. */
        if (vm->hook_fired) lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
        vm->hook_fired = true;
        luaL_error(L, "time budget exceeded: this phase ran %d ms without yielding (lua.time_budget)",
                   (int)(vm->budget_ns / 1000000));
    }
    if (vm) unhook(vm, L); /* installed for a run that has ended since */
}

static void wd_check(mr_lua_vm_t *vm, uint64_t now)
{
    int32_t seq = atomic_load(&vm->budget[1]);
    uint64_t start = atomic_load(&vm->run_start_ns);
    if (!start || atomic_load(&vm->budget[1]) != seq || now < start || now - start <= vm->budget_ns) return;
    if (atomic_load(&vm->budget[0]) != seq) {
        pthread_mutex_lock(&vm->hook_lock);
        if (atomic_load(&vm->run_start_ns) == start) {
            atomic_store(&vm->budget[0], seq);
            lua_sethook(vm->L, budget_hook, LUA_MASKCOUNT, WD_HOOK_COUNT);
            atomic_store(&vm->hooked, true);
        }
        pthread_mutex_unlock(&vm->hook_lock);
        return;
    }
    /* Hooked a while ago and still running the same phase: compiled code that never reaches a
     * hook or the API. Say so, loudly and more than once, but do not flood. */
    uint64_t grace = vm->budget_ns > 1000000000u ? vm->budget_ns : 1000000000u;
    if (now - start < vm->budget_ns + grace) return;
    if (vm->stuck_seq == seq && now - vm->stuck_logged_ns < 30000000000ull) return;
    vm->stuck_seq = seq;
    vm->stuck_logged_ns = now;
    const char *route = atomic_load(&vm->run_route);
    const char *tag = atomic_load(&vm->run_tag);
    mr_error("lua: worker %s is stuck: route %s, phase %s has run %llu ms (time budget %llu ms) inside "
             "JIT-compiled code that neither calls the request API nor leaves its trace; LuaJIT cannot "
             "interrupt it, and this worker serves nothing until it returns. Fix the loop, or call "
             "jit.off() on that function so the budget can stop it",
             tag ? tag : "?", route ? route : "?", phase_name(atomic_load(&vm->run_phase)),
             (unsigned long long)((now - start) / 1000000), (unsigned long long)(vm->budget_ns / 1000000));
}

/* Sleeps until `at` (the coarse clock) or a signal; wd_lock held. */
static void wd_sleep_until(uint64_t at, uint64_t now)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (at < now) at = now;
    /* The coarse clock lags the precise one by up to a tick: a little slack saves a second wake
     * that would find the deadline not quite reached. */
    uint64_t t = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + (at - now) + 2000000u;
    ts.tv_sec = (time_t)(t / 1000000000u);
    ts.tv_nsec = (long)(t % 1000000000u);
    pthread_cond_timedwait(&wd_cond, &wd_lock, &ts);
}

static void *wd_main(void *arg)
{
    (void)arg;
    mr_log_set_thread_tag("lua-watchdog");
    pthread_mutex_lock(&wd_lock);
    for (;;) {
        uint64_t now = now_ns(), next = UINT64_MAX, min_budget = UINT64_MAX;
        bool ran = false;
        for (mr_lua_vm_t *vm = wd_list; vm; vm = vm->wd_next) {
            wd_check(vm, now);
            if (vm->budget_ns < min_budget) min_budget = vm->budget_ns;
            int32_t seq = atomic_load(&vm->budget[1]);
            if (seq != vm->wd_seen_seq) ran = true;
            vm->wd_seen_seq = seq;
            uint64_t start = atomic_load(&vm->run_start_ns);
            if (!start) continue;
            ran = true;
            uint64_t due = start + vm->budget_ns;
            if (due <= now) due = now + WD_RECHECK_MS * 1000000u; /* over budget: hooked, or stuck */
            if (due < next) next = due;
        }
        if (ran) {
            /* Armed, the watchdog must look again before any run beginning from now on can be
             * over budget: within the smallest budget. Runs starting and ending keep it armed
             * for that long, rather than each waking it. */
            if (now + min_budget < next) next = now + min_budget;
            wd_sleep_until(next, now);
            continue;
        }
        /* Nothing ran for a budget period: park. Publish that first and look once more, since a
         * run beginning meanwhile may have read wd_armed still true (both sides are seq_cst). */
        atomic_store(&wd_armed, false);
        bool begun = false;
        for (mr_lua_vm_t *vm = wd_list; vm && !begun; vm = vm->wd_next) begun = atomic_load(&vm->run_start_ns) != 0;
        if (begun) { atomic_store(&wd_armed, true); continue; }
        while (!atomic_load(&wd_armed)) pthread_cond_wait(&wd_cond, &wd_lock);
    }
    return NULL;
}

/* A run began while the watchdog was parked. */
static void wd_wake(void)
{
    pthread_mutex_lock(&wd_lock);
    if (!atomic_load(&wd_armed)) {
        atomic_store(&wd_armed, true);
        pthread_cond_signal(&wd_cond);
    }
    pthread_mutex_unlock(&wd_lock);
}

static void wd_start(void)
{
    pthread_t t;
    sigset_t all, old;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wd_cond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_store(&wd_armed, true); /* it starts by looking */
    sigfillset(&all); /* signals belong to the main thread */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_create(&t, NULL, wd_main, NULL) == 0) pthread_detach(t);
    else mr_error("lua: cannot start the watchdog thread; lua.time_budget is enforced at API calls only");
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void wd_register(mr_lua_vm_t *vm)
{
    pthread_once(&wd_once, wd_start);
    pthread_mutex_lock(&wd_lock);
    vm->wd_next = wd_list;
    if (wd_list) wd_list->wd_prev = vm;
    wd_list = vm;
    pthread_mutex_unlock(&wd_lock);
}

static void wd_unregister(mr_lua_vm_t *vm)
{
    pthread_mutex_lock(&wd_lock);
    if (vm->wd_prev) vm->wd_prev->wd_next = vm->wd_next;
    else if (wd_list == vm) wd_list = vm->wd_next;
    if (vm->wd_next) vm->wd_next->wd_prev = vm->wd_prev;
    vm->wd_next = vm->wd_prev = NULL;
    pthread_mutex_unlock(&wd_lock);
}

static void run_begin(mr_lua_vm_t *vm, const mr_route_conf_t *r, int phase)
{
    tl_vm = vm;
    atomic_store(&vm->run_route, r ? r->name : phase == PH_TIMER ? "(timer)" : "(routing)");
    atomic_store(&vm->run_phase, phase);
    atomic_store(&vm->run_tag, mr_log_thread_tag());
    int32_t seq = atomic_load(&vm->budget[1]);
    seq = seq >= INT32_MAX - 1 ? 1 : seq + 1;
    atomic_store(&vm->budget[1], seq);
    atomic_store(&vm->run_start_ns, now_ns());
    if (!atomic_load(&wd_armed)) wd_wake();
}

static void run_end(mr_lua_vm_t *vm)
{
    vm->hook_fired = false;
    atomic_store(&vm->run_start_ns, 0);
    if (atomic_load(&vm->hooked)) unhook(vm, vm->L);
}

/* Snapshot loader's report of a module read from disk at request time (see core/watch.h). */
static int note_source(lua_State *L)
{
    mr_watch_note(lua_tostring(L, 1));
    return 0;
}

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
    if (cfg->nsrcs > 0) {
        /* Serve what validation read (cfg->srcs) before the disk; see mr_config_t. */
        static const char snap_lua[] =
            "local snap, note = ...\n"
            "local function load_snap(key)\n"
            "  local e = snap[key]\n"
            "  if e then return assert(loadstring(e[2], '@' .. e[1])) end\n"
            "end\n"
            "table.insert(package.loaders, 2, function(name)\n"
            "  return load_snap('m:' .. name) or ('\\n\\tno validated copy of ' .. name)\n"
            "end)\n"
            /* A module required lazily comes from disk: --watch should follow it too. */
            "local searchpath, disk = package.searchpath, package.loaders[3]\n"
            "package.loaders[3] = function(name)\n"
            "  local f = searchpath(name, package.path)\n"
            "  if f then note(f) end\n"
            "  return disk(name)\n"
            "end\n"
            "local lf = loadfile\n"
            "loadfile = function(f, ...)\n"
            "  local fn = type(f) == 'string' and snap['f:' .. f]\n"
            "  if fn then return loadstring(fn[2], '@' .. fn[1]) end\n"
            "  return lf(f, ...)\n"
            "end\n"
            "dofile = function(f) return assert(loadfile(f))() end\n";
        if (luaL_loadbuffer(L, snap_lua, sizeof snap_lua - 1, "=snapshot") != 0) goto fail;
        lua_createtable(L, 0, cfg->nsrcs);
        for (int i = 0; i < cfg->nsrcs; i++) {
            lua_createtable(L, 2, 0);
            lua_pushstring(L, cfg->srcs[i].file);
            lua_rawseti(L, -2, 1);
            lua_pushlstring(L, cfg->srcs[i].text, cfg->srcs[i].len);
            lua_rawseti(L, -2, 2);
            lua_setfield(L, -2, cfg->srcs[i].key);
        }
        lua_pushcfunction(L, note_source);
        if (lua_pcall(L, 2, 0, 1) != 0) goto fail;
    }
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.runtime");
    if (lua_pcall(L, 1, 1, 1) != 0) goto fail;
    int rt = lua_gettop(L);
    vm->budget_ns = (uint64_t)cfg->lua_time_budget_ms * 1000000u; /* the schema sets it (>= 1ms) */
    atomic_store(&vm->budget[0], -1);
    atomic_store(&vm->budget[1], 0);
    lua_getfield(L, rt, "init");
    lua_pushstring(L, cfg->file);
    lua_pushlightuserdata(L, vm);
    lua_pushlightuserdata(L, (void *)vm->budget);
    lua_pushinteger(L, (lua_Integer)(vm->budget_ns / 1000000));
    if (lua_pcall(L, 4, 1, 1) != 0) goto fail;
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
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.timer");
    if (lua_pcall(L, 1, 1, 1) != 0) goto fail;
    vm->fiber_ref = ref_field(L, lua_gettop(L), "_run");
    vm->adopt_ref = ref_field(L, lua_gettop(L), "_adopt");
    /* One traceback closure for every call: lua_pushcfunction would allocate one per call. */
    lua_pushcfunction(L, traceback);
    vm->tb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    pthread_mutex_init(&vm->hook_lock, NULL);
    wd_register(vm);
    mr_config_ref((mr_config_t *)cfg);
    vm->cfg = cfg;
    vm->refs = 1;
    *out = vm;
    return 0;
fail:
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    lua_close(L);
    free(vm);
    return -1;
}

void mr_lua_vm_unref(mr_lua_vm_t *vm)
{
    if (!vm || --vm->refs > 0) return;
    wd_unregister(vm);
    if (tl_vm == vm) tl_vm = NULL;
    lua_close(vm->L);
    pthread_mutex_destroy(&vm->hook_lock);
    free(vm->route_flags);
    mr_config_unref((mr_config_t *)vm->cfg);
    free(vm);
}

int mr_lua_route_flags(const mr_lua_vm_t *vm, int idx)
{
    return idx > 0 && idx <= vm->nroutes ? vm->route_flags[idx] : 0;
}

/* What a parked coroutine waits for: ("sleep", seconds) or ("io"). */
static int parse_yield(lua_State *L, int base, mr_lua_out_t *out)
{
    const char *what = lua_tostring(L, base + 3);
    out->wait_io = false;
    if (what && strcmp(what, "sleep") == 0) {
        double s = lua_tonumber(L, base + 4);
        out->sleep_ms = s > 0 ? (uint64_t)ceil(s * 1000.0) : 0;
        return 0;
    }
    if (what && strcmp(what, "io") == 0) {
        out->wait_io = true;
        return 0;
    }
    return -1;
}

static int collect(mr_lua_vm_t *vm, int base, int rc, const mr_route_conf_t *r, int phase, mr_lua_out_t *out)
{
    lua_State *L = vm->L;
    if (rc != 0) {
        mr_error("lua: route %s, %s: %s", r ? r->name : "?", phase_name(phase), lua_tostring(L, -1));
        mr_metrics_lua_error(r ? r->mid : 0, lua_tostring(L, -1));
        lua_settop(L, base);
        return MR_LUA_ERROR;
    }
    int code = (int)lua_tointeger(L, base + 2);
    if (code == MR_LUA_YIELD) {
        if (parse_yield(L, base, out) < 0) {
            const char *what = lua_tostring(L, base + 3);
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

int mr_lua_run(mr_lua_vm_t *vm, mr_req_t *r, const mr_route_conf_t *rt, int phase,
               const char *chunk, size_t n, bool eof, mr_lua_out_t *out)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tb_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->run_ref);
    lua_pushinteger(L, rt->index);
    lua_pushinteger(L, phase);
    lua_pushlightuserdata(L, r);
    if (phase == MR_PH_BODY) {
        lua_pushlstring(L, chunk ? chunk : "", n);
        lua_pushboolean(L, eof);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    run_begin(vm, rt, phase);
    int rc = lua_pcall(L, 5, 3, base + 1);
    run_end(vm);
    return collect(vm, base, rc, rt, phase, out);
}

int mr_lua_resume(mr_lua_vm_t *vm, mr_req_t *r, const mr_route_conf_t *rt, int phase, mr_lua_out_t *out)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tb_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->resume_ref);
    lua_pushlightuserdata(L, r);
    run_begin(vm, rt, phase);
    int rc = lua_pcall(L, 1, 3, base + 1);
    run_end(vm);
    return collect(vm, base, rc, rt, phase, out);
}

int mr_lua_route(mr_lua_vm_t *vm, mr_req_t *r)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tb_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->route_ref);
    lua_pushlightuserdata(L, r);
    int rc = MR_LUA_ERROR;
    run_begin(vm, NULL, 0);
    int prc = lua_pcall(L, 1, 1, base + 1);
    run_end(vm);
    if (prc != 0) mr_error("lua: routing failed: %s", lua_tostring(L, -1));
    else rc = (int)lua_tointeger(L, -1);
    lua_settop(L, base);
    return rc;
}

void mr_lua_finish(mr_lua_vm_t *vm, mr_req_t *r)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->finish_ref);
    lua_pushlightuserdata(L, r);
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

/* ------------------------------------------------------------------------------------------ */
/* Fibers: moonring.timer callbacks and detached on_log phases. The Lua side keeps one record
 * per fiber, keyed by the fiber's address; the park timer both schedules the callback and wakes
 * it after a yield (sleep arms it, a cosocket arms it at 0 ms). */

typedef struct mr_lua_fiber {
    mr_timer_t timer;        /* first member: the fiber's address is its waker */
    mr_lua_vm_t *vm;
    uint64_t interval_ms;    /* timer.every; 0 = once */
    bool started;            /* a coroutine is parked: resume it rather than start one */
    bool premature, cancelled;
    struct mr_lua_fiber *next, *prev;
} mr_lua_fiber_t;

static __thread mr_lua_fiber_t *tls_fibers;
static __thread int tls_nfibers;

void mr_lua_vm_start(mr_lua_vm_t *vm)
{
    vm->started = true;
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushstring(L, "moonring.timer");
    if (lua_pcall(L, 1, 1, base + 1) == 0) {
        lua_getfield(L, -1, "_start");
        if (lua_pcall(L, 0, 0, base + 1) != 0) mr_error("lua: init_worker: %s", lua_tostring(L, -1));
    }
    lua_settop(L, base);
}

static void fiber_fire(mr_loop_t *loop, mr_timer_t *t);

static mr_lua_fiber_t *fiber_new(mr_lua_vm_t *vm)
{
    mr_lua_fiber_t *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->vm = vm;
    f->timer.fn = fiber_fire;
    f->next = tls_fibers;
    if (tls_fibers) tls_fibers->prev = f;
    tls_fibers = f;
    tls_nfibers++;
    vm->refs++;
    return f;
}

/* Frees the fiber and drops its VM reference, which may free the VM: call it only when no Lua
 * code of that VM is on the C stack, or when another reference is known to exist. */
static void fiber_free(mr_lua_fiber_t *f)
{
    mr_loop_t *loop = mr_loop_current();
    if (loop) mr_timer_stop(loop, &f->timer);
    if (f->prev) f->prev->next = f->next;
    else tls_fibers = f->next;
    if (f->next) f->next->prev = f->prev;
    tls_nfibers--;
    mr_lua_vm_t *vm = f->vm;
    free(f);
    mr_lua_vm_unref(vm);
}

static void fiber_fire(mr_loop_t *loop, mr_timer_t *t)
{
    mr_lua_fiber_t *f = (mr_lua_fiber_t *)t;
    mr_lua_vm_t *vm = f->vm;
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_pushcfunction(L, traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->fiber_ref);
    lua_pushnumber(L, (lua_Number)(uintptr_t)f);
    lua_pushboolean(L, f->premature);
    f->started = true;
    bool keep = false;
    /* Timer callbacks get the same time budget as request phases. */
    run_begin(vm, NULL, PH_TIMER);
    int rc = lua_pcall(L, 2, 3, base + 1);
    run_end(vm);
    if (rc != 0) {
        mr_error("lua: timer: %s", lua_tostring(L, -1));
    } else if (lua_tointeger(L, base + 2) == MR_LUA_YIELD) {
        mr_lua_out_t out = { 0 };
        if (parse_yield(L, base, &out) == 0) {
            lua_settop(L, base);
            if (!out.wait_io) mr_timer_set(loop, &f->timer, out.sleep_ms);
            return;
        }
        mr_error("lua: timer yielded on '%s', which the core does not know", lua_tostring(L, base + 3));
    } else {
        keep = lua_toboolean(L, base + 3);
    }
    lua_settop(L, base);
    f->started = false;
    if (keep && f->interval_ms && !f->premature && !f->cancelled && !vm->retired) {
        mr_timer_set(loop, &f->timer, f->interval_ms);
        return;
    }
    fiber_free(f);
}

/* moonring.timer.at/every: MR_FFI_OK (the fiber at *out), MR_FFI_BAD_CONTEXT (not on a serving
 * worker), MR_FFI_RETIRED (the VM's generation was retired by a reload), MR_FFI_LIMIT (cap
 * pending timers on this worker already) or MR_FFI_NOMEM. */
MR_EXPORT int mr_lua_timer_new(void *v, double delay, double interval, int cap, void **out)
{
    mr_lua_vm_t *vm = v;
    mr_loop_t *loop = mr_loop_current();
    if (!loop || !vm->started) return MR_FFI_BAD_CONTEXT;
    if (vm->retired) return MR_FFI_RETIRED;
    if (tls_nfibers >= cap) return MR_FFI_LIMIT;
    mr_lua_fiber_t *f = fiber_new(vm);
    if (!f) return MR_FFI_NOMEM;
    f->interval_ms = interval > 0 ? (uint64_t)ceil(interval * 1000.0) : 0;
    mr_timer_set(loop, &f->timer, delay > 0 ? (uint64_t)ceil(delay * 1000.0) : 0);
    *out = f;
    return MR_FFI_OK;
}

/* A running timer only stops being rescheduled; a pending one goes now (the caller's VM is on
 * the stack, but its request or fiber holds another generation reference). */
MR_EXPORT void mr_lua_timer_cancel(void *p)
{
    mr_lua_fiber_t *f = p;
    f->cancelled = true;
    if (!f->started) fiber_free(f);
}

MR_EXPORT int mr_lua_timer_count(void) { return tls_nfibers; }

int mr_lua_vm_fibers(const mr_lua_vm_t *vm)
{
    int n = 0;
    for (const mr_lua_fiber_t *f = tls_fibers; f; f = f->next) n += f->vm == vm;
    return n;
}

void mr_lua_vm_retire(mr_lua_vm_t *vm)
{
    mr_loop_t *loop = mr_loop_current();
    vm->retired = true;
    if (!loop) return;
    for (mr_lua_fiber_t *f = tls_fibers; f; f = f->next) {
        if (f->vm != vm || f->started || f->cancelled) continue;
        f->premature = true;
        mr_timer_set(loop, &f->timer, 0);
    }
}

int mr_lua_detach(mr_lua_vm_t *vm, mr_req_t *r, const mr_lua_out_t *out)
{
    mr_loop_t *loop = mr_loop_current();
    if (!loop || !vm->started) return -1;
    mr_lua_fiber_t *f = fiber_new(vm);
    if (!f) return -1;
    f->started = true;
    lua_State *L = vm->L;
    int base = lua_gettop(L);
    lua_pushcfunction(L, traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->adopt_ref);
    lua_pushlightuserdata(L, r);
    lua_pushnumber(L, (lua_Number)(uintptr_t)f);
    lua_pushlightuserdata(L, f);
    if (lua_pcall(L, 3, 0, base + 1) != 0) {
        mr_error("lua: on_log could not be detached: %s", lua_tostring(L, -1));
        lua_settop(L, base);
        f->started = false;
        fiber_free(f); /* the request still holds the generation */
        return -1;
    }
    lua_settop(L, base);
    if (!out->wait_io) mr_timer_set(loop, &f->timer, out->sleep_ms);
    return 0;
}

void mr_lua_thread_abort(void)
{
    while (tls_fibers) fiber_free(tls_fibers);
}

MR_EXPORT int mr_lua_vm_retired(void *v) { return ((mr_lua_vm_t *)v)->retired; }

const mr_config_t *mr_lua_vm_config(const mr_lua_vm_t *vm) { return vm && vm->started ? vm->cfg : NULL; }
