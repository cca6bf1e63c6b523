#include "core/gen.h"

#include <stdlib.h>

#include "log/log.h"
#include "lua/lua.h"
#include "metrics/metrics.h"

int mr_gen_new(mr_config_t *cfg, uint64_t id, mr_server_registry_t *reg, mr_gen_t **out, char *err, size_t errlen)
{
    mr_gen_t *g = calloc(1, sizeof *g);
    if (!g) return -1;
    g->id = id;
    g->cfg = cfg;
    g->refs = 1;
    mr_config_ref(cfg);
    g->ups = calloc((size_t)cfg->nupstreams + 1, sizeof *g->ups);
    g->adhoc = calloc((size_t)cfg->nroutes + 1, sizeof *g->adhoc);
    if (!g->ups || !g->adhoc) goto fail;
    for (int i = 0; i < cfg->nupstreams; i++)
        if (mr_upstream_init(&g->ups[i], &cfg->upstreams[i], reg) < 0) goto fail;
    for (int i = 0; i < cfg->nroutes; i++)
        if (cfg->routes[i].adhoc && mr_upstream_init(&g->adhoc[i], cfg->routes[i].adhoc, reg) < 0) goto fail;
    if (mr_lua_vm_new(&g->lua, cfg, err, errlen) < 0) goto fail;
    mr_lua_vm_start(g->lua);
    g->listed = true;
    mr_metrics_gen_live(id, 1); /* the admin API lists current and draining generations */
    *out = g;
    return 0;
fail:
    g->refs = 1;
    mr_gen_unref(g);
    return -1;
}

void mr_gen_unref(mr_gen_t *g)
{
    if (--g->refs) return;
    if (g->listed) mr_metrics_gen_live(g->id, -1);
    if (g->drain_loop) mr_timer_stop(g->drain_loop, &g->drain_timer);
    if (g->lua) {
        /* Its timers (after their premature run) and detached on_log tasks still run in the VM:
         * it goes with the last of them. */
        int fibers = mr_lua_vm_fibers(g->lua);
        if (fibers > 0)
            mr_notice("generation %llu retired: VM kept for its running timers (%d)", (unsigned long long)g->id,
                      fibers);
        mr_lua_vm_unref(g->lua);
    }
    if (g->ups)
        for (int i = 0; i < g->cfg->nupstreams; i++) mr_upstream_free(&g->ups[i]);
    if (g->adhoc)
        for (int i = 0; i < g->cfg->nroutes; i++) mr_upstream_free(&g->adhoc[i]);
    free(g->ups);
    free(g->adhoc);
    mr_config_unref(g->cfg);
    free(g);
}
