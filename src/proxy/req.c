#include "proxy/req.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/gen.h"
#include "http/status.h"
#include "llhttp.h"
#include "upstream/upstream.h"

#define BODY_LIMIT ((size_t)1 << 30)

void mr_req_init(mr_req_t *r, mr_proxy_t *px, const mr_resp_ops_t *out, const mr_peer_t *peer,
                 uint32_t head_limit)
{
    memset(r, 0, sizeof *r);
    r->px = px;
    r->out = out;
    r->peer = peer;
    r->hdrs.limit = head_limit;
    r->trailers.limit = head_limit;
    r->host_idx = -1;
    r->content_length = -1;
    r->resp.length = -1;
}

void mr_req_reset(mr_req_t *r)
{
    /* The one reset boundary: every per-request member precedes `hdrs`. */
    memset(r, 0, offsetof(mr_req_t, hdrs));
    r->host_idx = -1;
    r->content_length = -1;
    r->resp.length = -1;
    mr_hdrs_reset(&r->hdrs);
    mr_hdrs_reset(&r->trailers);
    mr_hdrs_reset(&r->local_hdrs);
    mr_hdrs_reset(&r->resp_trailers);
    mr_vec_reset(&r->local_body);
    mr_vec_reset(&r->norm);
    mr_vec_reset(&r->target_ov);
    mr_vec_reset(&r->lua_body);
}

void mr_req_free(mr_req_t *r)
{
    mr_hdrs_free(&r->hdrs);
    mr_hdrs_free(&r->trailers);
    mr_hdrs_free(&r->local_hdrs);
    mr_hdrs_free(&r->resp_trailers);
    mr_vec_free(&r->local_body);
    mr_vec_free(&r->norm);
    mr_vec_free(&r->target_ov);
    mr_vec_free(&r->lua_body);
}

static bool framing_field(const char *name)
{
    return strcasecmp(name, "content-length") == 0 || strcasecmp(name, "transfer-encoding") == 0 ||
           strcasecmp(name, "connection") == 0;
}

/* Stores a local response: status, body, and its fields. Server and Date come first, as fields
 * like any other, so a filter (res:del_header) or the config can drop or replace them. */
static int local_set(mr_req_t *r, int status, const char *body, size_t blen, const char *const *hdrs, int nhdrs)
{
    mr_hdrs_t *h = &r->local_hdrs;
    mr_hdrs_reset(h);
    const mr_config_t *cfg = r->gen ? r->gen->cfg : NULL;
    const char *server = cfg ? cfg->server_header : "moonring";
    if (server && *server && mr_hdrs_add(h, "Server", 6, server, strlen(server)) < 0) return -E2BIG;
    const char *date = mr_http_date(time(NULL));
    if (mr_hdrs_add(h, "Date", 4, date, MR_HTTP_DATE_LEN) < 0) return -E2BIG;
    for (int i = 0; i + 1 < 2 * nhdrs; i += 2) {
        if (framing_field(hdrs[i])) continue;
        size_t nlen = strlen(hdrs[i]);
        /* A header the caller gives replaces our default of the same name. */
        if ((nlen == 6 && strcasecmp(hdrs[i], "server") == 0) || (nlen == 4 && strcasecmp(hdrs[i], "date") == 0))
            mr_hdrs_del(h, hdrs[i], nlen);
        if (mr_hdrs_add(h, hdrs[i], nlen, hdrs[i + 1], strlen(hdrs[i + 1])) < 0) return -E2BIG;
    }
    mr_vec_reset(&r->local_body);
    if (blen && mr_vec_append(&r->local_body, body, blen, BODY_LIMIT) < 0) return -ENOMEM;
    r->resp.status = status;
    return 0;
}

int mr_req_local_emit(mr_req_t *r)
{
    if (r->head_sent) {
        /* Too late for a clean answer: the only honest signal left is breaking the stream. */
        r->close = true;
        r->resp_done = true;
        r->out->abort(r);
        return -EALREADY;
    }
    int status = r->resp.status;
    bool nobody = r->method == HTTP_HEAD || status == 204 || status == 304 || status < 200;
    if (r->local_body.len && mr_hdrs_find(&r->local_hdrs, "content-type", 12, 0) < 0 &&
        mr_hdrs_add(&r->local_hdrs, "Content-Type", 12, "text/plain", 10) < 0)
        return -E2BIG;
    r->resp.hdrs = &r->local_hdrs;
    r->resp.reason = NULL;
    r->resp.length = status != 204 && status >= 200 ? (int64_t)r->local_body.len : -1;
    /* An empty answer carrying grpc-status (req:grpc_error, or a gRPC error of ours) is gRPC's
     * Trailers-Only response. */
    if (status == 200 && !r->local_body.len && mr_hdrs_find(&r->local_hdrs, "grpc-status", 11, 0) >= 0)
        r->resp.trailers_only = true;
    r->local_pending = false;
    int rc = r->out->head(r);
    if (rc < 0) return rc;
    r->head_sent = true;
    size_t blen = nobody ? 0 : r->local_body.len;
    r->resp_bytes = blen;
    if (blen) r->out->data(r, r->local_body.p, blen, MR_NO_BID, NULL);
    r->resp_done = true;
    if (r->resp_trailers.n) r->resp.trailers = &r->resp_trailers; /* set by filters */
    r->out->finish(r);
    /* The body, if any, goes nowhere now; reading on completes the request (a bodiless one too:
     * the session has not read past its head yet). */
    if (r->body_mode == MR_BODY_HOLD && !r->req_done) {
        r->body_mode = MR_BODY_DISCARD;
        r->out->read_body(r);
    }
    return 0;
}

int mr_req_reply(mr_req_t *r, int status, const char *body, size_t blen, const char *const *hdrs, int nhdrs)
{
    if (r->head_sent) return mr_req_local_emit(r);
    r->local_pending = false;
    int rc = local_set(r, status, body, blen, hdrs, nhdrs);
    if (rc < 0) return rc;
    return mr_req_local_emit(r);
}

int mr_req_reply_later(mr_req_t *r, int status, const char *body, size_t blen, const char *const *hdrs,
                         int nhdrs)
{
    int rc = local_set(r, status, body, blen, hdrs, nhdrs);
    if (rc < 0) return rc;
    r->local_pending = true;
    r->local_resp_done = r->local_body_done = false;
    return 0;
}

void mr_req_error(mr_req_t *r, int status, bool close)
{
    if (close) r->close = true;
    if (mr_req_is_grpc(r)) {
        if (mr_req_grpc_status(r, mr_req_grpc_code(status), mr_http_reason(status)) < 0) r->out->abort(r);
        return;
    }
    char body[96];
    int n = snprintf(body, sizeof body, "%d %s\n", status, mr_http_reason(status));
    if (mr_req_reply(r, status, body, (size_t)n, NULL, 0) == -E2BIG) r->out->abort(r);
}

/* ------------------------------------------------------------------------------------------ */
/* gRPC                                                                                         */

bool mr_req_is_grpc(const mr_req_t *r)
{
    if (r->upstream && r->upstream->conf->protocol == MR_UP_GRPC) return true;
    int i = mr_hdrs_find(&r->hdrs, "content-type", 12, 0);
    if (i < 0) return false;
    const char *v = mr_hdr_value(&r->hdrs, &r->hdrs.v[i]);
    uint32_t n = r->hdrs.v[i].val_len;
    /* application/grpc, application/grpc+proto, ...; not grpc-web, which frames differently. */
    return n >= 16 && strncasecmp(v, "application/grpc", 16) == 0 && (n == 16 || v[16] == '+' || v[16] == ';');
}

int mr_req_grpc_code(int st)
{
    switch (st) {
    case 400: return 13;            /* INTERNAL (as gRPC maps HTTP statuses) */
    case 401: return 16;            /* UNAUTHENTICATED */
    case 403: return 7;             /* PERMISSION_DENIED */
    case 404: case 405: case 501: return 12; /* UNIMPLEMENTED */
    case 408: case 504: return 4;   /* DEADLINE_EXCEEDED */
    case 413: case 431: return 8;   /* RESOURCE_EXHAUSTED */
    case 429: case 502: case 503: return 14; /* UNAVAILABLE */
    case 500: return 13;            /* INTERNAL */
    default: return 2;              /* UNKNOWN */
    }
}

/* grpc-message is percent-encoded: bytes outside printable ASCII, and '%' (gRPC's HTTP/2 spec). */
static size_t grpc_encode(char *out, size_t cap, const char *msg)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p && o + 3 < cap; p++) {
        if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = 0;
    return o;
}

int mr_req_grpc_status(mr_req_t *r, int code, const char *msg)
{
    char num[12], enc[256];
    snprintf(num, sizeof num, "%d", code);
    grpc_encode(enc, sizeof enc, msg ? msg : "");
    if (r->head_sent) {
        /* The head went out: only HTTP/2 can still carry a status, in the trailers. */
        if (r->resp_done || r->version != 20) return -EALREADY;
        mr_hdrs_t *t = &r->resp_trailers;
        mr_hdrs_reset(t);
        if (mr_hdrs_add(t, "grpc-status", 11, num, strlen(num)) < 0 ||
            (*enc && mr_hdrs_add(t, "grpc-message", 12, enc, strlen(enc)) < 0))
            return -EALREADY;
        r->resp.trailers = t;
        r->resp_done = true;
        r->out->finish(r);
        return 0;
    }
    const char *h[] = { "content-type", "application/grpc", "grpc-status", num, "grpc-message", enc };
    return mr_req_reply(r, 200, NULL, 0, h, *enc ? 3 : 2) == -E2BIG ? -EALREADY : 0;
}
