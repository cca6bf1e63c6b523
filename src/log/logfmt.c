#include "log/logfmt.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *name; int id; } vars[] = {
    { "remote_addr", MR_LV_REMOTE_ADDR }, { "remote_user", MR_LV_REMOTE_USER },
    { "time_local", MR_LV_TIME_LOCAL }, { "time_iso8601", MR_LV_TIME_ISO8601 }, { "msec", MR_LV_MSEC },
    { "request", MR_LV_REQUEST }, { "request_method", MR_LV_REQUEST_METHOD }, { "request_uri", MR_LV_REQUEST_URI },
    { "uri", MR_LV_URI }, { "args", MR_LV_ARGS }, { "query_string", MR_LV_ARGS },
    { "server_protocol", MR_LV_SERVER_PROTOCOL }, { "status", MR_LV_STATUS },
    { "body_bytes_sent", MR_LV_BODY_BYTES_SENT }, { "bytes_sent", MR_LV_BODY_BYTES_SENT },
    { "request_length", MR_LV_REQUEST_LENGTH }, { "request_time", MR_LV_REQUEST_TIME },
    { "upstream_addr", MR_LV_UPSTREAM_ADDR }, { "upstream_status", MR_LV_UPSTREAM_STATUS },
    { "upstream_connect_time", MR_LV_UPSTREAM_CONNECT_TIME }, { "upstream_header_time", MR_LV_UPSTREAM_HEADER_TIME },
    { "upstream_response_time", MR_LV_UPSTREAM_RESPONSE_TIME }, { "upstream", MR_LV_UPSTREAM_NAME },
    { "route", MR_LV_ROUTE }, { "request_id", MR_LV_REQUEST_ID }, { "host", MR_LV_HOST }, { "scheme", MR_LV_SCHEME },
    { "ssl_protocol", MR_LV_SSL_PROTOCOL }, { "ssl_cipher", MR_LV_SSL_CIPHER },
    { "ssl_session_reused", MR_LV_SSL_SESSION_REUSED }, { "ssl_server_name", MR_LV_SSL_SERVER_NAME },
    { "ssl_client_s_dn", MR_LV_SSL_CLIENT_S_DN }, { "pid", MR_LV_PID }, { "connection_addr", MR_LV_CONNECTION_PEER },
};

int mr_logfmt_var(const char *name, size_t n)
{
    if (n > 5 && memcmp(name, "http_", 5) == 0) return MR_LV_HTTP;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (strlen(vars[i].name) == n && memcmp(vars[i].name, name, n) == 0) return vars[i].id;
    return -1;
}

static int is_name(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; }

mr_logfmt_t *mr_logfmt_compile(const char *tmpl, int escape, char *err, size_t errlen)
{
    size_t len = strlen(tmpl);
    mr_logfmt_t *f = calloc(1, sizeof *f);
    if (!f || !(f->storage = strdup(tmpl)) || !(f->ops = calloc(len + 1, sizeof *f->ops))) {
        snprintf(err, errlen, "out of memory");
        mr_logfmt_free(f);
        return NULL;
    }
    f->escape = escape;
    char *s = f->storage;
    size_t i = 0, lit = 0;
    while (i <= len) {
        if (i < len && !(s[i] == '$' && i + 1 < len && (is_name(s[i + 1]) || s[i + 1] == '{'))) { i++; continue; }
        if (i > lit) f->ops[f->nops++] = (mr_logfmt_op_t){ MR_LV_LITERAL, s + lit, i - lit };
        if (i == len) break;
        size_t a = i + 1, b;
        bool braced = s[a] == '{';
        if (braced) a++;
        for (b = a; b < len && is_name(s[b]); b++) {}
        if (braced && (b >= len || s[b] != '}')) {
            snprintf(err, errlen, "unclosed ${ at offset %zu", i);
            mr_logfmt_free(f);
            return NULL;
        }
        int v = mr_logfmt_var(s + a, b - a);
        if (v < 0) {
            snprintf(err, errlen, "unknown variable $%.*s", (int)(b - a), s + a);
            mr_logfmt_free(f);
            return NULL;
        }
        mr_logfmt_op_t *op = &f->ops[f->nops++];
        op->var = v;
        if (v == MR_LV_HTTP) {
            /* $http_user_agent is the User-Agent field: lowercased, '_' for '-'. */
            for (size_t k = a + 5; k < b; k++) s[k] = s[k] == '_' ? '-' : (char)(s[k] >= 'A' && s[k] <= 'Z' ? s[k] + 32 : s[k]);
            op->text = s + a + 5;
            op->len = b - a - 5;
        }
        i = lit = braced ? b + 1 : b;
    }
    return f;
}

void mr_logfmt_free(mr_logfmt_t *f)
{
    if (!f) return;
    free(f->ops);
    free(f->storage);
    free(f);
}
