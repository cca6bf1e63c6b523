/* See lua_test_api.h. */
#include "lua/lua_test_api.h"

#include <stdlib.h>
#include <string.h>

#include "http1/http1.h"
#include "proxy/proxy.h"
#include "util/export.h"

typedef struct {
    mr_client_t c;              /* first: the API casts the pointer back to mr_client_t */
    char *head;
    size_t n;
} test_client_t;

static const mr_http1_limits_t limits = { 8192, 32768, 100 };
static int t_head(mr_http1_msg_t *m) { (void)m; return 0; }
static const mr_http1_cbs_t cbs = { t_head, NULL, NULL };

static int parse(test_client_t *t)
{
    mr_client_t *c = &t->c;
    mr_http1_init(&c->req, MR_HTTP1_REQUEST, &limits, &cbs, c);
    mr_http1_init(&c->local, MR_HTTP1_RESPONSE, &limits, &cbs, c);
    size_t used = 0;
    int rc = mr_http1_feed(&c->req, t->head, t->n, &used);
    return rc < 0 || !c->req.head_done ? MR_FFI_BAD_ARG : MR_FFI_OK;
}

static void release(test_client_t *t)
{
    mr_client_t *c = &t->c;
    mr_http1_free(&c->req);
    mr_http1_free(&c->local);
    mr_vec_free(&c->target_ov);
    mr_vec_free(&c->local_body);
}

MR_EXPORT void *mr_lua_test_client_new(const char *head, size_t n)
{
    test_client_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->head = malloc(n ? n : 1);
    if (!t->head) { free(t); return NULL; }
    memcpy(t->head, head, n);
    t->n = n;
    strcpy(t->c.ip, "127.0.0.1");
    if (parse(t) != MR_FFI_OK) {
        mr_lua_test_client_free(t);
        return NULL;
    }
    return t;
}

MR_EXPORT int mr_lua_test_client_reset(void *p)
{
    test_client_t *t = p;
    release(t);
    mr_client_t *c = &t->c;
    c->has_target_ov = c->local_pending = false;
    c->status = 0;
    memset(&c->req, 0, sizeof c->req);
    memset(&c->local, 0, sizeof c->local);
    memset(&c->target_ov, 0, sizeof c->target_ov);
    memset(&c->local_body, 0, sizeof c->local_body);
    return parse(t);
}

MR_EXPORT void mr_lua_test_client_unrespond(void *p)
{
    test_client_t *t = p;
    t->c.local_pending = false;
}

MR_EXPORT void mr_lua_test_client_respond_as_upstream(void *p)
{
    test_client_t *t = p;
    mr_http1_next(&t->c.local);
    t->c.local_pending = true;
    t->c.status = 200;
}

MR_EXPORT void mr_lua_test_client_free(void *p)
{
    test_client_t *t = p;
    if (!t) return;
    release(t);
    free(t->head);
    free(t);
}
