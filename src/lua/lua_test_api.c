/* See lua_test_api.h. */
#include "lua/lua_test_api.h"

#include <stdlib.h>
#include <string.h>

#include "http1/http1.h"
#include "proxy/req.h"
#include "proxy/route.h"
#include "util/export.h"

typedef struct {
    mr_req_t r;                 /* first: the API casts the pointer back to mr_req_t */
    mr_peer_t peer;
    mr_http1_msg_t p;
    char *head;
    size_t n;
} test_client_t;

static const mr_http1_limits_t limits = { 8192, 32768, 100 };
static int t_head(mr_http1_msg_t *m) { (void)m; return 0; }
static const mr_http1_cbs_t cbs = { t_head, NULL, NULL };

/* No session behind it: nothing is ever sent. */
static void no_op(mr_req_t *r) { (void)r; }
static int no_head(mr_req_t *r) { (void)r; return 0; }
static int no_data(mr_req_t *r, const char *p, size_t n, int32_t bid, char *owned)
{
    (void)r; (void)p; (void)n; (void)bid;
    free(owned);
    return 0;
}
static void no_tunnel(mr_req_t *r, mr_sock_t *up) { (void)r; (void)up; }
static const mr_resp_ops_t no_ops = { no_op, no_op, no_head, no_data, no_op, no_op, no_tunnel };

static int parse(test_client_t *t)
{
    mr_req_t *r = &t->r;
    mr_http1_init(&t->p, MR_HTTP1_REQUEST, &limits, &cbs, t);
    mr_http1_set_store(&t->p, &r->hdrs, &r->trailers);
    size_t used = 0;
    int rc = mr_http1_feed(&t->p, t->head, t->n, &used);
    if (rc < 0 || !t->p.head_done) return MR_FFI_BAD_ARG;
    mr_http1_msg_t *m = &t->p;
    r->method = m->method;
    r->method_name = mr_http1_method_str(m);
    r->version = (uint8_t)(m->major * 10 + m->minor);
    r->line_known = r->head_done = true;
    r->target_off = m->url_off;
    r->target_len = m->url_len;
    r->host_idx = m->host_idx;
    r->content_length = m->content_length;
    r->has_body = m->has_body;
    const char *why;
    return mr_route_view(r, &why) ? MR_FFI_BAD_ARG : MR_FFI_OK;
}

MR_EXPORT void *mr_lua_test_client_new(const char *head, size_t n)
{
    test_client_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->head = malloc(n ? n : 1);
    if (!t->head) { free(t); return NULL; }
    memcpy(t->head, head, n);
    t->n = n;
    strcpy(t->peer.ip, "127.0.0.1");
    mr_req_init(&t->r, NULL, &no_ops, &t->peer, 65536);
    if (parse(t) != MR_FFI_OK) {
        mr_lua_test_client_free(t);
        return NULL;
    }
    return t;
}

MR_EXPORT int mr_lua_test_client_reset(void *p)
{
    test_client_t *t = p;
    mr_req_reset(&t->r);
    return parse(t);
}

MR_EXPORT void mr_lua_test_client_unrespond(void *p)
{
    test_client_t *t = p;
    t->r.local_pending = false;
}

MR_EXPORT void mr_lua_test_client_respond_as_upstream(void *p)
{
    test_client_t *t = p;
    mr_hdrs_reset(&t->r.local_hdrs);
    t->r.local_pending = true;
    t->r.resp.status = 200;
}

MR_EXPORT void mr_lua_test_client_free(void *p)
{
    test_client_t *t = p;
    if (!t) return;
    mr_req_free(&t->r);
    free(t->head);
    free(t);
}
