/* Per-worker access log. Lines are formatted into a buffer; the buffer is written with an
 * io_uring write on the worker's own loop (never a blocking write on the request path), double
 * buffered so formatting continues while a write is in flight. Thread affinity: one worker. */
#ifndef MR_ACCESS_LOG_H
#define MR_ACCESS_LOG_H

#include <stdbool.h>

#include "loop/loop.h"
#include "proxy/req.h"

typedef struct mr_access_log mr_access_log_t;

/* fd is shared by all workers (opened O_APPEND by the main thread); not closed here. */
mr_access_log_t *mr_access_log_new(mr_loop_t *loop, int fd, bool json);
/* Formats r's line (none when a Lua filter already wrote it): the named format, or nginx's
 * "combined" ($remote_addr - $remote_user [$time_local] "$request"
 * $status $body_bytes_sent "$http_referer" "$http_user_agent"), or one JSON object. */
void mr_access_log_request(mr_access_log_t *al, const mr_req_t *r);
/* Nothing buffered, queued or in flight. */
bool mr_access_log_idle(const mr_access_log_t *al);
/* fn(arg) runs whenever a write completes and leaves the log idle (a draining worker waits). */
void mr_access_log_on_idle(mr_access_log_t *al, void (*fn)(void *), void *arg);
/* A reload's access_log / access_log_format: off stops logging (what is buffered is still
 * written), json switches the built-in format of the next lines, fmt (a named format from
 * log_formats, owned by the worker's current config) replaces both. */
void mr_access_log_configure(mr_access_log_t *al, bool on, bool json, const struct mr_logfmt *fmt);
/* Appends one finished line (a newline is added when missing): the stock JSON log filter's.
 * Returns 0 (written, or dropped when both buffers are full), -1 when the log is off. */
int mr_access_log_line(mr_access_log_t *al, const char *line, size_t n);
/* Writes what is buffered synchronously; used at shutdown only. */
void mr_access_log_free(mr_access_log_t *al);

#endif
