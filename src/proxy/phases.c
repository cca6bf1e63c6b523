#include "proxy/phases.h"

#include "core/gen.h"
#include "log/log.h"

int mr_phase_run(mr_req_t *r, int phase, const char *chunk, size_t n, bool eof, mr_lua_out_t *out)
{
    r->lua_state = true;
    return mr_lua_run(r->gen->lua, r, r->route, phase, chunk, n, eof, out);
}

int mr_phase_resume(mr_req_t *r, mr_lua_out_t *out)
{
    return mr_lua_resume(r->gen->lua, r, r->route, r->lua_phase, out);
}

void mr_phase_park(mr_req_t *r, int phase, const mr_lua_out_t *out)
{
    r->lua_phase = (uint8_t)phase;
    mr_loop_t *loop = mr_loop_current();
    if (out->wait_io) mr_timer_stop(loop, &r->lua_timer); /* the I/O wakes it */
    else mr_timer_set(loop, &r->lua_timer, out->sleep_ms);
}

void mr_phase_abandon(mr_req_t *r)
{
    if (!r->lua_phase) return;
    mr_timer_stop(mr_loop_current(), &r->lua_timer);
    r->lua_phase = 0;
}

void mr_phase_release(mr_req_t *r)
{
    mr_phase_abandon(r);
    if (r->lua_state) {
        mr_lua_finish(r->gen->lua, r);
        r->lua_state = false;
    }
}

int mr_phase_route(mr_req_t *r)
{
    r->lua_state = true;
    return mr_lua_route(r->gen->lua, r);
}

void mr_phase_log(mr_req_t *r)
{
    mr_lua_out_t out = { 0 };
    /* A yield in on_log continues detached from the request, which ends now. */
    if (mr_phase_run(r, MR_PH_LOG, NULL, 0, false, &out) == MR_LUA_YIELD && mr_lua_detach(r->gen->lua, r, &out) < 0)
        mr_warn("route %s: on_log yielded and could not continue detached; the rest of it was dropped",
                r->route->name);
}
