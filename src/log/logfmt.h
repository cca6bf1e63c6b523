/* Access-log formats in nginx's style: a template of literal text and $variables ($status,
 * ${request_time}, $http_user_agent, ...), compiled once when the config loads (main thread) into
 * a list of operations that a worker renders per request (proxy/access_log.c). Immutable after
 * compilation, so every worker reads it without locks; freed with its config.
 *
 * Escaping of variable values (literal text is written as is): MR_LOGFMT_DEFAULT as nginx's
 * default ('"', '\' and bytes outside 0x20..0x7e as \xHH), MR_LOGFMT_JSON (JSON string
 * escapes, for templates that write JSON) or MR_LOGFMT_NONE. */
#ifndef MR_LOGFMT_H
#define MR_LOGFMT_H

#include <stddef.h>
#include <stdint.h>

enum { MR_LOGFMT_DEFAULT = 0, MR_LOGFMT_JSON, MR_LOGFMT_NONE };

/* Variables. MR_LV_HTTP is $http_NAME (name in the op, lowercased, '_' as '-'). */
enum {
    MR_LV_LITERAL = 0,
    MR_LV_REMOTE_ADDR, MR_LV_REMOTE_USER, MR_LV_TIME_LOCAL, MR_LV_TIME_ISO8601, MR_LV_MSEC,
    MR_LV_REQUEST, MR_LV_REQUEST_METHOD, MR_LV_REQUEST_URI, MR_LV_URI, MR_LV_ARGS, MR_LV_SERVER_PROTOCOL,
    MR_LV_STATUS, MR_LV_BODY_BYTES_SENT, MR_LV_REQUEST_LENGTH, MR_LV_REQUEST_TIME,
    MR_LV_UPSTREAM_ADDR, MR_LV_UPSTREAM_STATUS, MR_LV_UPSTREAM_CONNECT_TIME, MR_LV_UPSTREAM_HEADER_TIME,
    MR_LV_UPSTREAM_RESPONSE_TIME, MR_LV_UPSTREAM_NAME, MR_LV_ROUTE, MR_LV_REQUEST_ID, MR_LV_HOST,
    MR_LV_SCHEME, MR_LV_SSL_PROTOCOL, MR_LV_SSL_CIPHER, MR_LV_SSL_SESSION_REUSED, MR_LV_SSL_SERVER_NAME,
    MR_LV_SSL_CLIENT_S_DN, MR_LV_PID, MR_LV_CONNECTION_PEER, MR_LV_HTTP,
};

typedef struct {
    int var;                    /* MR_LV_*; MR_LV_LITERAL: text */
    const char *text;           /* literal text, or the header name of $http_NAME */
    size_t len;
} mr_logfmt_op_t;

typedef struct mr_logfmt {
    int escape;
    int nops;
    mr_logfmt_op_t *ops;
    char *storage;              /* the template, which text points into */
} mr_logfmt_t;

/* Compiles tmpl. NULL with err filled ("unknown variable $foo") on a bad template or no memory. */
mr_logfmt_t *mr_logfmt_compile(const char *tmpl, int escape, char *err, size_t errlen);
void mr_logfmt_free(mr_logfmt_t *f);
/* The variable id of a name without '$', or -1 (MR_LV_HTTP for http_*). */
int mr_logfmt_var(const char *name, size_t n);

#endif
