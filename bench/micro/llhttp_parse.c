/* llhttp_parse: HTTP/1.1 request parse throughput, raw llhttp next to moonring's own layer.
 *
 * Parses each input in a loop on one keep-alive parser, for about SECONDS seconds per mode, and
 * prints requests/s and MB/s:
 *   bare      llhttp, no data callbacks, only on_message_complete (llhttp's own floor)
 *   spans     llhttp, on_url / on_header_field / on_header_value record (pointer, length) spans,
 *             as a proxy must to see the request line and headers
 *   moonring  src/http1 (mr_http1_feed), driven as proxy.c drives it: strict pre-scan, head
 *             copied and normalised (header index, Host/hop-by-hop flags, limits), pause at the
 *             head and at the end, resume, mr_http1_next between messages
 * Inputs: a 310-byte API GET with 7 headers (the bench/run shape), a minimal GET, and a ~1 KB
 * browser GET with 14 headers.
 *
 *   build: see bench/micro/run (needs the llhttp sources and src/http1, src/util)
 *   usage: llhttp_parse [SECONDS]      (default 2)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http1/http1.h"

static const char API_GET[] =
    "GET /api/v1/users/12345/orders?limit=20&offset=40 HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n"
    "Accept: application/json\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Connection: keep-alive\r\n"
    "X-Request-Id: 7f3c9a2e-5b1d-4e8f-9a6c-2d4b8e1f0a37\r\n"
    "\r\n";

static const char TINY_GET[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";

static const char BROWSER_GET[] =
    "GET /static/js/app.3f9a2c.min.js?v=20261125 HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Chromium\";v=\"130\", \"Not?A_Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Accept: */*\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Sec-Fetch-Dest: script\r\n"
    "Referer: https://www.example.com/account/settings/profile\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
    "Cookie: session=8d7f6e5a4b3c2d1e0f9a8b7c6d5e4f3a; theme=dark; _ga=GA1.2.1234567890.1732500000; consent=1\r\n"
    "\r\n";

static const struct { const char *name, *data; size_t len; } INPUTS[] = {
    { "api-get", API_GET, sizeof API_GET - 1 },
    { "tiny-get", TINY_GET, sizeof TINY_GET - 1 },
    { "browser-get", BROWSER_GET, sizeof BROWSER_GET - 1 },
};

struct span { const char *at; size_t len; };
struct state {
    unsigned long messages;
    struct span url, fields[32], values[32];
    unsigned nfields, nvalues;
    size_t checksum; /* keeps the spans observable so nothing is optimized away */
};

static int on_message_begin(llhttp_t *p)
{
    struct state *s = p->data;
    s->nfields = s->nvalues = 0;
    return 0;
}
static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct state *s = p->data;
    s->url = (struct span){at, len};
    return 0;
}
static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct state *s = p->data;
    if (s->nfields < 32) s->fields[s->nfields++] = (struct span){at, len};
    return 0;
}
static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct state *s = p->data;
    if (s->nvalues < 32) s->values[s->nvalues++] = (struct span){at, len};
    return 0;
}
static int on_message_complete(llhttp_t *p)
{
    struct state *s = p->data;
    s->messages++;
    s->checksum += s->url.len + s->nfields + s->nvalues;
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void report(const char *mode, const char *input, size_t len, unsigned long n, double secs, size_t checksum)
{
    printf("%-9s %-12s %5zu B: %12.0f requests/s  %8.1f MB/s  %7.1f ns/request  (checksum %zu)\n", mode, input, len,
           n / secs, n * (double)len / secs / 1e6, secs * 1e9 / n, checksum);
}

static void run(const char *mode, int spans, int input, double seconds)
{
    llhttp_settings_t settings;
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_message_complete = on_message_complete;
    if (spans) {
        settings.on_url = on_url;
        settings.on_header_field = on_header_field;
        settings.on_header_value = on_header_value;
    }
    struct state st = {0};
    llhttp_t parser;
    llhttp_init(&parser, HTTP_REQUEST, &settings);
    parser.data = &st;

    const char *req = INPUTS[input].data;
    const size_t len = INPUTS[input].len;
    const int batch = 10000; /* check the clock every batch requests */
    double t0 = now(), t1;
    do {
        for (int i = 0; i < batch; i++) {
            llhttp_errno_t err = llhttp_execute(&parser, req, len);
            if (err != HPE_OK) {
                fprintf(stderr, "llhttp: %s (%s)\n", llhttp_errno_name(err), llhttp_get_error_reason(&parser));
                exit(1);
            }
        }
        t1 = now();
    } while (t1 - t0 < seconds);
    report(mode, INPUTS[input].name, len, st.messages, t1 - t0, st.checksum);
}

/* moonring's layer, with the callbacks proxy.c would have (minus what they do with the request). */
static unsigned long mr_messages;
static size_t mr_checksum;
static int mr_on_head(mr_http1_msg_t *m)
{
    mr_checksum += m->url_len + m->h->n + (size_t)m->host_idx;
    return 0;
}
static int mr_on_body(mr_http1_msg_t *m, const char *p, size_t n) { (void)m; (void)p; (void)n; return 0; }
static int mr_on_done(mr_http1_msg_t *m)
{
    mr_messages++;
    mr_http1_next(m);
    return 0;
}
static const mr_http1_cbs_t mr_cbs = { mr_on_head, mr_on_body, mr_on_done };

static void run_moonring(int input, double seconds)
{
    const mr_http1_limits_t limits = { 8192, 32768, 100 }; /* the config defaults */
    mr_http1_msg_t m;
    mr_hdrs_t m_head = { 0 }, m_trls = { 0 };
    mr_http1_init(&m, MR_HTTP1_REQUEST, &limits, &mr_cbs, NULL);
    mr_http1_set_store(&m, &m_head, &m_trls);
    mr_messages = 0;
    mr_checksum = 0;
    const char *req = INPUTS[input].data;
    const size_t len = INPUTS[input].len;
    const int batch = 10000;
    double t0 = now(), t1;
    do {
        for (int i = 0; i < batch; i++) {
            size_t off = 0;
            for (;;) {
                bool resumed = false;
                if (mr_http1_paused(&m)) { mr_http1_resume(&m); resumed = true; }
                if (off == len && !resumed) break;
                size_t used = 0;
                if (mr_http1_feed(&m, req + off, len - off, &used) < 0) {
                    fprintf(stderr, "mr_http1: %d %s\n", m.error_status, m.error_reason ? m.error_reason : "?");
                    exit(1);
                }
                off += used;
            }
        }
        t1 = now();
    } while (t1 - t0 < seconds);
    report("moonring", INPUTS[input].name, len, mr_messages, t1 - t0, mr_checksum);
    mr_hdrs_free(&m_head);
    mr_hdrs_free(&m_trls);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    printf("llhttp %d.%d.%d, %.1f s per mode and input, one core\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR,
           LLHTTP_VERSION_PATCH, seconds);
    for (int i = 0; i < (int)(sizeof INPUTS / sizeof INPUTS[0]); i++) {
        run("bare", 0, i, seconds);
        run("spans", 1, i, seconds);
        run_moonring(i, seconds);
    }
    return 0;
}
