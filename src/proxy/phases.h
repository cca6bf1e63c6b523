/* A request's Lua chain, as the proxy core drives it: run a phase, park it when it yields, resume
 * it, let go of its state. Only glue between mr_req_t and the VM (lua/lua.h): what happens after
 * a phase (forward, answer, emit) is the core's (proxy.c), which calls these and reads their
 * results. A parked phase is resumed by arming r->lua_timer (a sleep's deadline, or at 0 ms by a
 * cosocket or the request body); the core owns that timer's callback. Thread affinity: the worker. */
#ifndef MR_PROXY_PHASES_H
#define MR_PROXY_PHASES_H

#include <stdbool.h>
#include <stddef.h>

#include "lua/lua.h"
#include "proxy/req.h"

/* Runs `phase` of the request's route chain (chunk/eof for MR_PH_BODY). Returns MR_LUA_*. */
int mr_phase_run(mr_req_t *r, int phase, const char *chunk, size_t n, bool eof, mr_lua_out_t *out);
/* Resumes the parked phase (r->lua_phase). Returns MR_LUA_*. */
int mr_phase_resume(mr_req_t *r, mr_lua_out_t *out);
/* Parks the phase that yielded: out says until when (a sleep) or on what (I/O). */
void mr_phase_park(mr_req_t *r, int phase, const mr_lua_out_t *out);
/* Forgets a parked phase whose request is being abandoned (upstream failed, client gone). */
void mr_phase_abandon(mr_req_t *r);
/* Drops every bit of Lua state the request has (parked phase, per-request table). */
void mr_phase_release(mr_req_t *r);
/* Matches the request against the routes in Lua (predicates, router): 1-based route index,
 * 0 for none, or MR_LUA_ERROR. */
int mr_phase_route(mr_req_t *r);
/* Runs on_log; a yield in it continues detached (the request ends now). */
void mr_phase_log(mr_req_t *r);

#endif
