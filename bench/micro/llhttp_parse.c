/* llhttp_parse: raw llhttp parse throughput — the baseline for moonring's HTTP/1.1 parser.
 *
 * Parses a typical ~300-byte GET request in a loop on one keep-alive parser, for about
 * SECONDS seconds per mode, and prints requests/s and MB/s:
 *   bare    no data callbacks, only on_message_complete (llhttp's own floor)
 *   spans   on_url / on_header_field / on_header_value record (pointer, length) spans,
 *           as a proxy must to see the request line and headers
 *
 *   build: gcc -O2 -I/usr/share/include/llhttp bench/micro/llhttp_parse.c \
 *            /usr/share/llhttp/{llhttp,api,http}.c -o llhttp_parse
 *   usage: llhttp_parse [SECONDS]      (default 2)
 */
#define _GNU_SOURCE
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char REQUEST[] =
    "GET /api/v1/users/12345/orders?limit=20&offset=40 HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n"
    "Accept: application/json\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Connection: keep-alive\r\n"
    "X-Request-Id: 7f3c9a2e-5b1d-4e8f-9a6c-2d4b8e1f0a37\r\n"
    "\r\n";

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

static void run(const char *mode, int spans, double seconds)
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

    const size_t len = sizeof REQUEST - 1;
    const int batch = 10000; /* check the clock every batch requests */
    double t0 = now(), t1;
    do {
        for (int i = 0; i < batch; i++) {
            llhttp_errno_t err = llhttp_execute(&parser, REQUEST, len);
            if (err != HPE_OK) {
                fprintf(stderr, "llhttp: %s (%s)\n", llhttp_errno_name(err), llhttp_get_error_reason(&parser));
                exit(1);
            }
        }
        t1 = now();
    } while (t1 - t0 < seconds);

    double secs = t1 - t0;
    printf("%-6s %zu-byte request: %12.0f requests/s  %8.1f MB/s  %6.1f ns/request  (%lu parsed, checksum %zu)\n",
           mode, len, st.messages / secs, st.messages * (double)len / secs / 1e6, secs * 1e9 / st.messages,
           st.messages, st.checksum);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    printf("llhttp %d.%d.%d, %.1f s per mode\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR,
           LLHTTP_VERSION_PATCH, seconds);
    run("bare", 0, seconds);
    run("spans", 1, seconds);
    return 0;
}
