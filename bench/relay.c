/* relay: the "kernel floor" for bench/run.
 *
 * A no-parse TCP relay on io_uring: every accepted client connection gets its own
 * upstream connection to the origin, and bytes are copied both ways as they come.
 * One thread, no HTTP parsing, no pooling, no header rewriting. Whatever a real proxy
 * costs above this is the price of understanding HTTP.
 *
 *   build: gcc -O2 -o relay bench/relay.c -luring
 *   usage: relay LISTEN_PORT ORIGIN_PORT      (both on 127.0.0.1)
 *
 * A connection pair is torn down as soon as either side reaches EOF or fails: both
 * sockets are shut down so that the operations still in flight complete, and the pair
 * is freed when the last of them has.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define RING_ENTRIES 4096

enum op { OP_ACCEPT, OP_CONNECT, OP_RECV, OP_SEND };

struct pair;
struct dir { /* one direction of a pair: from -> to */
    struct pair *p;
    int from, to;
    unsigned len, off;
    char buf[BUF_SIZE];
};
struct pair {
    int cfd, ufd;
    int inflight; /* operations submitted and not yet completed */
    int closing;
    struct dir c2u, u2c;
};

static struct io_uring ring;
static struct sockaddr_in origin;

/* user_data = pointer | op: struct dir is 8-aligned, so the low 2 bits are free. */
static struct io_uring_sqe *sqe_get(void)
{
    struct io_uring_sqe *sqe;
    while (!(sqe = io_uring_get_sqe(&ring)))
        io_uring_submit(&ring);
    return sqe;
}

static void post(struct dir *d, enum op op)
{
    struct io_uring_sqe *sqe = sqe_get();
    if (op == OP_RECV)
        io_uring_prep_recv(sqe, d->from, d->buf, BUF_SIZE, 0);
    else if (op == OP_SEND)
        io_uring_prep_send(sqe, d->to, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
    else /* OP_CONNECT */
        io_uring_prep_connect(sqe, d->p->ufd, (struct sockaddr *)&origin, sizeof origin);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)d | op);
    d->p->inflight++;
}

static void post_accept(int lfd)
{
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_accept(sqe, lfd, NULL, NULL, 0);
    io_uring_sqe_set_data64(sqe, OP_ACCEPT);
}

static void pair_close(struct pair *p)
{
    if (!p->closing) { /* wake up whatever is still pending on either socket */
        p->closing = 1;
        shutdown(p->cfd, SHUT_RDWR);
        shutdown(p->ufd, SHUT_RDWR);
    }
    if (p->inflight == 0) {
        close(p->cfd);
        close(p->ufd);
        free(p);
    }
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void on_accept(int lfd, int cfd)
{
    post_accept(lfd);
    if (cfd < 0)
        return;
    struct pair *p = calloc(1, sizeof *p);
    int ufd = socket(AF_INET, SOCK_STREAM, 0);
    if (!p || ufd < 0) {
        close(cfd);
        if (ufd >= 0) close(ufd);
        free(p);
        return;
    }
    nodelay(cfd);
    nodelay(ufd);
    p->cfd = cfd;
    p->ufd = ufd;
    p->c2u = (struct dir){.p = p, .from = cfd, .to = ufd};
    p->u2c = (struct dir){.p = p, .from = ufd, .to = cfd};
    post(&p->c2u, OP_CONNECT);
}

static void on_complete(struct dir *d, enum op op, int res)
{
    struct pair *p = d->p;
    p->inflight--;
    if (p->closing) {
        pair_close(p);
        return;
    }
    switch (op) {
    case OP_CONNECT:
        if (res < 0) break;
        post(&p->c2u, OP_RECV);
        post(&p->u2c, OP_RECV);
        return;
    case OP_RECV:
        if (res <= 0) break; /* EOF or error on either side ends the pair */
        d->len = (unsigned)res;
        d->off = 0;
        post(d, OP_SEND);
        return;
    case OP_SEND:
        if (res <= 0) break;
        d->off += (unsigned)res;
        post(d, d->off < d->len ? OP_SEND : OP_RECV);
        return;
    default:
        break;
    }
    pair_close(p);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT ORIGIN_PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    origin = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &origin.sin_addr);

    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &la.sin_addr);
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 4096) < 0) {
        perror("relay: listen");
        return 1;
    }
    /* Task work (completing socket ops) runs only when we wait for completions: no IPIs,
     * fewer context switches. Needs Linux 6.1; fall back to a plain ring before that. */
    struct io_uring_params prm = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
    int rc = io_uring_queue_init_params(RING_ENTRIES, &ring, &prm);
    if (rc == -EINVAL)
        rc = io_uring_queue_init(RING_ENTRIES, &ring, 0);
    if (rc < 0) {
        fprintf(stderr, "relay: io_uring_queue_init: %s\n", strerror(-rc));
        return 1;
    }
    post_accept(lfd);

    for (;;) {
        io_uring_submit_and_wait(&ring, 1);
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            n++;
            if (ud == OP_ACCEPT)
                on_accept(lfd, cqe->res);
            else
                on_complete((struct dir *)(uintptr_t)(ud & ~(uint64_t)3), (enum op)(ud & 3), cqe->res);
        }
        io_uring_cq_advance(&ring, n);
    }
}
