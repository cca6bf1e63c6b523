#include "session/conn.h"

#include <errno.h>
#include <string.h>

#include "core/gen.h"
#include "log/log.h"
#include "net/net.h"

int mr_conns_admit(mr_conns_t *cs, int fd, mr_peer_t *peer, bool *counted)
{
    mr_net_peer_ip(fd, peer->ip, sizeof peer->ip);
    *counted = false;
    uint32_t per_ip = cs->px->gen->cfg->limits.max_connections_per_ip;
    if (!per_ip) return 0;
    if (mr_iplimit_acquire(&cs->iplimit, peer->ip, per_ip) < 0) {
        /* Refused at accept, before any memory, handshake or timer is spent on it; one log line
         * per second at most, since this is what a flood looks like. */
        uint64_t now = mr_loop_now(cs->px->loop);
        if (now - cs->ip_refused_ms >= 1000) {
            cs->ip_refused_ms = now;
            mr_warn("connection from %s refused: it has %u open already (limits.max_connections_per_ip)", peer->ip,
                    per_ip);
        }
        return -EBUSY;
    }
    *counted = true;
    return 0;
}

void mr_conns_add(mr_conns_t *cs, mr_conn_t *c)
{
    c->set = cs;
    c->prev = NULL;
    c->next = cs->head;
    if (cs->head) cs->head->prev = c;
    cs->head = c;
    c->listed = true;
    cs->count++;
}

void mr_conns_remove(mr_conn_t *c)
{
    mr_conns_t *cs = c->set;
    if (!c->listed) return;
    c->listed = false;
    if (c->ip_counted) {
        mr_iplimit_release(&cs->iplimit, c->peer.ip);
        c->ip_counted = false;
    }
    if (c->prev) c->prev->next = c->next;
    else cs->head = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    cs->count--;
    cs->closing++; /* until its last completion frees it; the loop must not stop before */
}

void mr_conns_freed(mr_conns_t *cs)
{
    cs->closing--;
    if (cs->gone) cs->gone(cs->gone_arg);
}

void mr_conns_shutdown(mr_conns_t *cs)
{
    for (mr_conn_t *c = cs->head, *next; c; c = next) {
        next = c->next;
        c->ops->shutdown(c);
    }
}

void mr_conns_close_all(mr_conns_t *cs)
{
    while (cs->head) cs->head->ops->close(cs->head);
}

int mr_conns_close_gen(mr_conns_t *cs, mr_gen_t *g, int *tunnels)
{
    int closed = 0;
    *tunnels = 0;
    for (mr_conn_t *c = cs->head, *next; c; c = next) {
        next = c->next;
        int rc = c->ops->close_gen(c, g);
        if (rc == 1) closed++;
        else if (rc == 2) (*tunnels)++;
    }
    return closed;
}

void mr_conns_free(mr_conns_t *cs) { mr_iplimit_free(&cs->iplimit); }
