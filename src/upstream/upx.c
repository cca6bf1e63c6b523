#include "upstream/upx.h"

#include "upstream/h2client.h"
#include "upstream/upconn.h"

int mr_upx_open(mr_upx_ctx_t *ctx, mr_server_t *s, const mr_upstream_conf_t *uc, const char *sni, mr_upx_t **out)
{
    if (uc->protocol != MR_UP_HTTP1) return mr_h2client_open(ctx, s, uc, sni, out);
    return mr_upconn_open(ctx, s, uc, sni, out);
}

void mr_upx_close_idle(mr_upx_ctx_t *ctx, mr_server_t *s)
{
    mr_upconn_close_idle(s);
    mr_h2client_close_idle(ctx, s);
}
