/* idle_client: opens N HTTP/1.1 keep-alive connections to a proxy, sends one GET on each, reads
 * the whole response, then keeps every connection open and idle until told to stop. Used by
 * bench/idle_conns (and spec/integration/idle_spec.lua) to measure memory per idle connection.
 *
 *   idle_client -p PORT -n N [-d 127.0.0.1] [-s SOURCES] [-b BASE] [-c WINDOW] [-u PATH] [-t SECONDS]
 *
 *   -d  destination address (default 127.0.0.1)
 *   -s  source addresses 127.0.0.(2+BASE) .. 127.0.0.(1+BASE+S), round robin (default 8, BASE 0):
 *       one source address has one ephemeral port range (32768-60999 here), too small for 100k
 *       connections; BASE keeps several clients on distinct addresses
 *   -c  connections being opened or waiting for their response at once (default 128, below the
 *       proxies' listen backlogs, so no SYN is dropped and retried a second later)
 *   -u  request path (default /)
 *   -t  give up opening after this many seconds (default 300)
 *
 * Output (stdout, one line each, flushed):
 *   READY open=<idle connections> failed=<n> ms=<time to open them all> [first_error=...]
 *   STATUS open=<n> closed=<closed by the peer since READY>     (on SIGUSR1, which checks them)
 * Exits on SIGTERM/SIGINT (closing everything); progress and errors go to stderr.
 * Raises RLIMIT_NOFILE itself (root may raise the hard limit up to fs.nr_open). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { C_FREE = 0, C_CONNECTING, C_READING, C_IDLE, C_DEAD };

/* Per connection: a state byte; the bytes of a response in progress live in a small heap buffer
 * that only the WINDOW connections in progress hold. */
typedef struct {
    uint8_t state;
    char *buf;
    uint32_t len, cap;
} conn_t;

static volatile sig_atomic_t want_status, want_exit;
static void on_usr1(int sig) { (void)sig; want_status = 1; }
static void on_term(int sig) { (void)sig; want_exit = 1; }

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static conn_t *conns;     /* indexed by fd */
static int epfd;
static char req[512];
static size_t req_len;
static char first_error[200];
static long n_failed, n_idle, n_inflight, n_closed_after;
static int ready;         /* READY was printed */

/* Does the header line at l (ending at the next CRLF) contain word, case-insensitively? */
static int line_has(const char *l, const char *word)
{
    const char *eol = strstr(l, "\r\n"), *w = strcasestr(l, word);
    return w && eol && w < eol;
}

static void fail(int fd, const char *why)
{
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", why);
    conn_t *c = &conns[fd];
    if (c->state == C_IDLE) {
        n_idle--;
        if (ready) n_closed_after++; else n_failed++;
    }
    else if (c->state == C_CONNECTING || c->state == C_READING) n_inflight--, n_failed++;
    free(c->buf);
    c->buf = NULL;
    c->state = C_FREE;
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
}

/* Complete response in c->buf? 1 yes, 0 not yet, -1 malformed / not 200 / not keep-alive. */
static int response_done(conn_t *c, const char **why)
{
    c->buf[c->len] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return c->len > 16384 ? (*why = "response head too big", -1) : 0;
    if (strncmp(c->buf, "HTTP/1.1 200", 12) != 0) { *why = "status is not 200"; return -1; }
    size_t head = (size_t)(end - c->buf) + 4;
    long clen = -1;
    int chunked = 0;
    for (char *l = strstr(c->buf, "\r\n") + 2; l < end; l = strstr(l, "\r\n") + 2) {
        if (strncasecmp(l, "content-length:", 15) == 0) clen = strtol(l + 15, NULL, 10);
        else if (strncasecmp(l, "transfer-encoding:", 18) == 0 && line_has(l, "chunked"))
            chunked = 1;
        else if (strncasecmp(l, "connection:", 11) == 0 && line_has(l, "close")) {
            *why = "response says Connection: close";
            return -1;
        }
    }
    if (chunked) return c->len >= head + 5 && memcmp(c->buf + c->len - 5, "0\r\n\r\n", 5) == 0;
    if (clen < 0) { *why = "response without Content-Length or chunked framing"; return -1; }
    return c->len >= head + (size_t)clen;
}

static void on_readable(int fd)
{
    conn_t *c = &conns[fd];
    for (;;) {
        if (c->cap - c->len < 2048) {
            uint32_t cap = c->cap ? c->cap * 2 : 4096;
            char *b = realloc(c->buf, cap + 1);
            if (!b) { fail(fd, "out of memory"); return; }
            c->buf = b;
            c->cap = cap;
        }
        ssize_t n = recv(fd, c->buf + c->len, c->cap - c->len, 0);
        if (n > 0) { c->len += (uint32_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        fail(fd, n == 0 ? "closed by the proxy before the response was complete" : strerror(errno));
        return;
    }
    const char *why = NULL;
    int rc = response_done(c, &why);
    if (rc < 0) { fail(fd, why); return; }
    if (rc == 0) return;
    /* Done. Out of the epoll set, so that this side's kernel memory is the sockets' alone (the
     * machine-wide slab figure of bench/idle_conns); check_idle looks at it on SIGUSR1. */
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
    c->state = C_IDLE;
    n_inflight--;
    n_idle++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* An idle connection the proxy closed (or wrote to) is counted and closed. */
static void check_idle(long nfds)
{
    for (long fd = 0; fd < nfds; fd++) {
        if (conns[fd].state != C_IDLE) continue;
        char b;
        ssize_t n = recv((int)fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
        fail((int)fd, n == 0 ? "idle connection closed by the proxy"
                      : n > 0 ? "unexpected bytes on an idle connection" : strerror(errno));
    }
}

static void on_event(int fd, uint32_t events)
{
    conn_t *c = &conns[fd];
    switch (c->state) {
    case C_CONNECTING: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { fail(fd, strerror(err)); return; }
        if (!(events & EPOLLOUT)) return;
        ssize_t n = send(fd, req, req_len, MSG_NOSIGNAL);
        if (n != (ssize_t)req_len) { fail(fd, n < 0 ? strerror(errno) : "short send"); return; }
        c->state = C_READING;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = fd };
        epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
        return;
    }
    case C_READING:
        on_readable(fd);
        return;
    default:
        return;
    }
}

static int open_one(const struct sockaddr_in *dst, long i, int nsrc, int base)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    /* Let connect() pick the port per destination: bind() alone would reserve it per address. */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = { .sin_family = AF_INET };
    src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)base + (uint32_t)(i % nsrc));
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) { int e = -errno; close(fd); return e; }
    if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0 && errno != EINPROGRESS) {
        int e = -errno;
        close(fd);
        return e;
    }
    conns[fd] = (conn_t){ .state = C_CONNECTING };
    struct epoll_event ev = { .events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.fd = fd };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) { int e = -errno; close(fd); conns[fd].state = C_FREE; return e; }
    n_inflight++;
    return 0;
}

int main(int argc, char **argv)
{
    const char *dst_ip = "127.0.0.1", *path = "/";
    int port = 0, nsrc = 8, base = 0, window = 128, timeout_s = 300;
    long n = 0;
    int opt;
    while ((opt = getopt(argc, argv, "p:n:d:s:b:c:u:t:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'n': n = atol(optarg); break;
        case 'd': dst_ip = optarg; break;
        case 's': nsrc = atoi(optarg); break;
        case 'b': base = atoi(optarg); break;
        case 'c': window = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 't': timeout_s = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s -p PORT -n N [-d ADDR] [-s SOURCES] [-b BASE] [-c WINDOW] [-u PATH] [-t SECONDS]\n", argv[0]);
            return 2;
        }
    }
    if (port <= 0 || n <= 0 || nsrc < 1 || base < 0 || base + nsrc > 250 || window < 1) {
        fprintf(stderr, "idle_client: need -p PORT -n N (BASE + SOURCES <= 250, WINDOW >= 1)\n");
        return 2;
    }
    struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, dst_ip, &dst.sin_addr) != 1) { fprintf(stderr, "idle_client: bad address %s\n", dst_ip); return 2; }
    req_len = (size_t)snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: idle_client\r\n\r\n",
                               path, dst_ip, port);

    struct rlimit rl;
    rlim_t want = (rlim_t)n + 64;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < want) {
        if (rl.rlim_max < want) rl.rlim_max = want;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            fprintf(stderr, "idle_client: cannot raise RLIMIT_NOFILE to %lu: %s\n", (unsigned long)want, strerror(errno));
            return 1;
        }
    }
    conns = calloc((size_t)want + 16, sizeof *conns);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || epfd < 0) { perror("idle_client: setup"); return 1; }

    struct sigaction sa = { .sa_handler = on_usr1 };
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    uint64_t t0 = now_ms(), deadline = t0 + (uint64_t)timeout_s * 1000u, last_progress = t0;
    long started = 0;
    struct epoll_event evs[512];
    while (!want_exit) {
        while (!ready && started < n && n_inflight < window) {
            int rc = open_one(&dst, started, nsrc, base);
            started++;
            if (rc < 0) {
                n_failed++;
                if (!first_error[0]) snprintf(first_error, sizeof first_error, "connect: %s", strerror(-rc));
            }
        }
        if (!ready && ((started == n && n_inflight == 0) || now_ms() > deadline)) {
            /* Whatever is still in progress at the deadline counts as failed. */
            for (long fd = 0; fd < (long)want + 16; fd++)
                if (conns[fd].state == C_CONNECTING || conns[fd].state == C_READING) fail((int)fd, "timed out");
            n_failed += n - started;
            check_idle((long)want + 16);
            ready = 1;
            printf("READY open=%ld failed=%ld ms=%llu%s%s\n", n_idle, n_failed, (unsigned long long)(now_ms() - t0),
                   first_error[0] ? " first_error=" : "", first_error);
            fflush(stdout);
        }
        if (want_status) {
            want_status = 0;
            check_idle((long)want + 16);
            printf("STATUS open=%ld closed=%ld\n", n_idle, n_closed_after);
            fflush(stdout);
        }
        int k = epoll_wait(epfd, evs, 512, ready ? 1000 : 100);
        for (int i = 0; i < k; i++) on_event(evs[i].data.fd, evs[i].events);
        if (!ready && now_ms() - last_progress >= 2000) {
            last_progress = now_ms();
            fprintf(stderr, "idle_client: %ld idle, %ld in progress, %ld failed\n", n_idle, n_inflight, n_failed);
        }
    }
    return 0;
}
