/* Client connections of one worker, whatever protocol session runs on them: the registry (for a
 * graceful stop, a quit, and a retired generation's drain deadline), the per-IP connection limit,
 * and the count a draining worker waits on. A session embeds mr_conn_t (its transport and peer)
 * as its first member and implements mr_conn_ops_t; this module never calls a session except
 * through those, so sessions use it and not the other way round.
 * Thread affinity: the worker; no locks. */
#ifndef MR_SESSION_CONN_H
#define MR_SESSION_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include "net/iplimit.h"
#include "net/sock.h"
#include "proxy/proxy.h"
#include "proxy/req.h"

typedef struct mr_conn mr_conn_t;
typedef struct mr_conns mr_conns_t;

typedef struct {
    /* Graceful stop: finish what is in progress, then close (idle ones after a short grace). */
    void (*shutdown)(mr_conn_t *c);
    /* Close now. */
    void (*close)(mr_conn_t *c);
    /* The drain deadline of generation g: a request still on g is closed, a tunnel on g gives up
     * its Lua state and goes on. Returns 1 closed, 2 tunnel kept, 0 not on g. */
    int (*close_gen)(mr_conn_t *c, mr_gen_t *g);
} mr_conn_ops_t;

struct mr_conn {
    mr_sock_t s;                /* first: the transport (plain or TLS) */
    const mr_conn_ops_t *ops;
    mr_conns_t *set;
    mr_conn_t *next, *prev;
    mr_peer_t peer;
    mr_http2_conf_t h2conf;     /* the listener's, copied at accept (a reload may free it) */
    /* A session that took over the connection from the one that accepted it (HTTP/2 after the
     * HTTP/1.1 session saw its preface): its state, and how the memory of the connection is
     * given back once the socket's last completion arrived. */
    void *session;
    void (*freed)(mr_conn_t *c);
    bool ip_counted;
    bool listed;
};

struct mr_conns {
    mr_proxy_t *px;
    mr_conn_t *head;
    uint32_t count;             /* open */
    uint32_t closing;           /* closed but waiting for their last completion */
    mr_iplimit_t iplimit;
    uint64_t ip_refused_ms;     /* last "over max_connections_per_ip" log line */
    void (*gone)(void *arg);    /* a connection was freed (accept resumption, drain completion) */
    void *gone_arg;
};

/* Admits an accepted socket: the per-IP limit (limits.max_connections_per_ip of the current
 * generation) is checked, c->peer.ip filled. Returns 0, or -EBUSY (over the limit: logged at most
 * once a second; the caller closes fd). */
int mr_conns_admit(mr_conns_t *cs, int fd, mr_peer_t *peer, bool *counted);
/* Registers an initialised connection (after mr_sock_init on c->s). */
void mr_conns_add(mr_conns_t *cs, mr_conn_t *c);
/* The connection starts closing: unregistered, its IP count released, counted as closing. */
void mr_conns_remove(mr_conn_t *c);
/* Its last completion arrived and its memory is gone (call after freeing it). */
void mr_conns_freed(mr_conns_t *cs);

void mr_conns_shutdown(mr_conns_t *cs);
void mr_conns_close_all(mr_conns_t *cs);
/* Returns the number of connections closed; *tunnels counts tunnels kept. */
int mr_conns_close_gen(mr_conns_t *cs, mr_gen_t *g, int *tunnels);
void mr_conns_free(mr_conns_t *cs);

#endif
