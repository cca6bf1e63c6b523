/* The admin endpoint: a small HTTP/1.1 server for operators on its own threads (blocking
 * sockets: it serves people and Prometheus, not traffic, and must be able to wait for a reload).
 *
 *   GET  /metrics                                   Prometheus text exposition (metrics/expo.h)
 *   GET  /-/                                        the status page (HTML + JS, no external assets)
 *   GET  /-/stats                                   what the status page polls (JSON)
 *   GET  /-/status                                  generation, workers, pid
 *   GET  /-/upstreams                               upstreams and every server's state (JSON)
 *   POST /-/upstreams/NAME/servers/ADDR?state=S     S: up, down or draining (also "state=S" or
 *                                                   {"state":"S"} as the body)
 *   GET  /-/routes, /-/generations, /-/workers, /-/config (secrets masked)
 *   POST /-/reload, /-/upgrade, /-/reopen
 * A known path with another method answers 405 with Allow; an unknown one 404. With a token
 * (admin.token), every request must carry "Authorization: Bearer TOKEN" (or ?token=TOKEN, which
 * the status page passes on to its own requests), else 401.
 *
 * The server (core/server.c) provides the actions and a snapshot of what serves now. */
#ifndef MR_ADMIN_H
#define MR_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config/config.h"

typedef struct {
    /* Validates and applies the config file again: the new generation, or 0 with msg. */
    uint64_t (*reload)(char *msg, size_t len);
    /* Execs a new binary: its pid, or 0 with msg. On success the endpoint asks this process to
     * stop (SIGTERM). */
    pid_t (*upgrade)(char *msg, size_t len);
    /* Reopens the log files: 0, or -1 with msg. */
    int (*reopen)(char *msg, size_t len);
    /* What serves now: a referenced config (the caller unrefs it), its generation, the number of
     * workers. NULL while stopping. */
    mr_config_t *(*snapshot)(uint64_t *generation, int *nworkers);
} mr_admin_hooks_t;

typedef struct mr_admin mr_admin_t;

/* Serves listening socket fd (taken over; closed on failure too) with hooks (static storage).
 * NULL when its thread cannot start. */
mr_admin_t *mr_admin_start(int fd, const mr_admin_hooks_t *hooks);
/* Asks the endpoint to stop: its thread closes the socket within 200 ms and frees a. Does not
 * wait (a connection being served may wait for the reload lock its caller holds). */
void mr_admin_stop(mr_admin_t *a);
/* Process stop: every accept thread ends (they watch *stopping) and connection threads get a
 * few seconds to finish. */
void mr_admin_wait(void);
void mr_admin_set_stopping(void);

#endif
