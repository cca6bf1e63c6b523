#include "proxy/stats.h"

#include "core/gen.h"
#include "metrics/metrics.h"
#include "proxy/proxy.h"

void mr_stats_begin(mr_req_t *r)
{
    if (r->stats_begun) return;
    r->stats_begun = true;
    r->t_start_us = mr_loop_now_us(r->px->loop);
    mr_metrics_t *m = r->px->metrics;
    if (m) mr_m_add(&m->w[MR_MW_INFLIGHT], 1);
}

/* The server cell of r's upstream and its server pick. */
static mr_mcell_t *srv_cell(mr_req_t *r)
{
    mr_upstream_t *u = r->upstream;
    if (!r->px->metrics || !u || r->pick < 0 || r->pick >= u->nservers) return NULL;
    return mr_metrics_cell(r->px->metrics, MR_MK_SRV, u->mid, u->servers[r->pick]->mid, MR_MS_NVALUES);
}

void mr_stats_try(mr_req_t *r, mr_server_t *s)
{
    uint64_t now = mr_loop_now_us(r->px->loop);
    if (!r->t_up_start_us) r->t_up_start_us = now;
    r->t_try_us = now;
    r->t_up_conn_us = r->t_up_head_us = r->t_up_end_us = 0;
    r->up_addr = s->addr;
    r->up_status = 0;
    mr_mcell_t *c = srv_cell(r);
    if (c) mr_m_add(&c->v[MR_MS_TRIES], 1);
}

void mr_stats_try_failed(mr_req_t *r)
{
    mr_mcell_t *c = srv_cell(r);
    if (c) mr_m_add(&c->v[MR_MS_FAILURES], 1);
}

void mr_stats_end(mr_req_t *r, bool dropped)
{
    mr_metrics_t *m = r->px->metrics;
    if (!r->stats_begun) return; /* never began: nothing was counted */
    r->stats_begun = false;
    if (!m) return;
    mr_m_add(&m->w[MR_MW_INFLIGHT], (uint64_t)-1);
    uint32_t route = r->route ? r->route->mid : 0, up = r->upstream ? r->upstream->mid : 0;
    mr_mcell_t *c = mr_metrics_cell(m, MR_MK_REQ, route, up, MR_MR_NVALUES);
    if (!c) return;
    int status = dropped && !r->resp_done ? 499 : r->resp.status;
    int cls = status / 100;
    if (cls < 1 || cls > 5) cls = 5;
    int proto = r->version >= 20 ? MR_MP_HTTP2 : r->version == 10 ? MR_MP_HTTP10 : MR_MP_HTTP11;
    mr_m_add(&c->v[MR_MR_CODES + proto * 5 + cls - 1], 1);
    if (r->body_seen > 0) mr_m_add(&c->v[MR_MR_BYTES_IN], (uint64_t)r->body_seen);
    if (r->resp_bytes) mr_m_add(&c->v[MR_MR_BYTES_OUT], r->resp_bytes);
    if (r->tries > 1) mr_m_add(&c->v[MR_MR_RETRIES], (uint64_t)(r->tries - 1));
    uint64_t now = mr_loop_now_us(r->px->loop);
    mr_metrics_observe_us(&c->v[MR_MR_LAT], now - r->t_start_us);
    if (r->t_up_start_us)
        mr_metrics_observe_us(&c->v[MR_MR_UPLAT], (r->t_up_end_us ? r->t_up_end_us : now) - r->t_up_start_us);
}
