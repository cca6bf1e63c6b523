#include "net/sock.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net/net.h"

/* Send queues are recycled per thread: a connection takes one only while it sends. */
#define SQ_CACHE_MAX 256
static _Thread_local mr_sq_t *sq_cache;
static _Thread_local int sq_cached;

static mr_sq_t *sq_get(mr_sock_t *s)
{
    if (s->sq) return s->sq;
    mr_sq_t *q = sq_cache;
    if (q) {
        sq_cache = q->next_free;
        sq_cached--;
    } else if (!(q = malloc(sizeof *q))) {
        return NULL;
    }
    q->head = q->count = 0;
    q->bytes = 0;
    q->next_free = NULL;
    s->sq = q;
    return q;
}

/* The queue goes back once nothing is queued and the kernel holds none of its iovecs. */
static void sq_put(mr_sock_t *s)
{
    mr_sq_t *q = s->sq;
    if (!q || q->count || s->send_op.active) return;
    s->sq = NULL;
    if (sq_cached >= SQ_CACHE_MAX) { free(q); return; }
    q->next_free = sq_cache;
    sq_cache = q;
    sq_cached++;
}

void mr_sock_thread_free(void)
{
    while (sq_cache) {
        mr_sq_t *q = sq_cache;
        sq_cache = q->next_free;
        free(q);
    }
    sq_cached = 0;
}

static void release_head(mr_sock_t *s)
{
    mr_sq_t *q = s->sq;
    mr_sq_ent_t *e = &q->ent[q->head];
    if (e->bid >= 0) mr_loop_buf_unref(s->loop, (uint16_t)e->bid);
    free(e->owned);
    e->owned = NULL;
    q->head = (q->head + 1) % MR_SQ_ENT;
    q->count--;
}

static void in_free(mr_sock_t *s)
{
    for (uint32_t i = 0; i < s->nin; i++)
        if (s->in[i].bid >= 0) mr_loop_buf_unref(s->loop, (uint16_t)s->in[i].bid);
    s->nin = 0;
    if (s->in != s->in_inl) free(s->in);
    s->in = s->in_inl;
    s->in_cap = MR_IN_INLINE;
}

static void maybe_closed(mr_sock_t *s)
{
    if (!s->closing || mr_sock_busy(s) || s->fd < 0) return;
    if (mr_defer_queued(&s->flush) || mr_defer_queued(&s->tls_pump)) return;
    mr_loop_close(s->loop, s->fd);
    s->fd = -1;
    in_free(s);
    while (s->sq && s->sq->count) release_head(s);
    sq_put(s);
    /* Only now: in-flight sends pointed into the engine's output chunks. */
    mr_tls_conn_free(s->tls);
    s->tls = NULL;
    s->ops->on_closed(s);
}

static bool in_grow(mr_sock_t *s)
{
    if (s->nin < s->in_cap) return true;
    /* A multishot recv can post a burst before a pause lands; the loop's buffer ring bounds
     * the total, so growing this list is bounded too. */
    uint32_t cap = s->in_cap * 2;
    mr_in_t *in;
    if (s->in == s->in_inl) {
        in = malloc(cap * sizeof *in);
        if (in) memcpy(in, s->in_inl, sizeof s->in_inl);
    } else {
        in = realloc(s->in, cap * sizeof *in);
    }
    if (!in) return false;
    s->in = in;
    s->in_cap = cap;
    return true;
}

/* Every sendmsg goes through here (see mr_sock_nodelay_later). */
static void sendmsg_now(mr_sock_t *s, const struct msghdr *msg)
{
    if (s->nodelay_later) {
        if (s->sent_once) {
            mr_net_set_nodelay(s->fd);
            s->nodelay_later = false;
        }
        s->sent_once = true;
    }
    mr_loop_sendmsg(s->loop, &s->send_op, s->fd, msg);
}

/* ---- TLS ---- */

static void submit_send(mr_sock_t *s);


/* Encrypts queued plaintext (as much as the engine takes) and sends pending ciphertext straight
 * from the engine's chunks. Returns 1 if a send was submitted, 0 if there is nothing to send now,
 * or -EPROTO. Only while no send is in flight. */
static int tls_submit(mr_sock_t *s)
{
    /* Small queued pieces (a response head, chunk framing, a short body) are gathered into one
     * write, so they leave as one TLS record instead of one record each: every record costs a
     * header, a tag and a decryption on the peer. */
    char gather[16384];
    mr_sq_t *q = s->sq;
    while (q && q->count) {
        mr_sq_ent_t *e = &q->ent[q->head];
        if (e->len == 0) { release_head(s); continue; }
        const char *src = e->p;
        size_t len = e->len;
        if (len < sizeof gather && q->count > 1) {
            len = 0;
            for (uint32_t i = 0; i < q->count && len < sizeof gather; i++) {
                const mr_sq_ent_t *g = &q->ent[(q->head + i) % MR_SQ_ENT];
                size_t n = g->len < sizeof gather - len ? g->len : sizeof gather - len;
                memcpy(gather + len, g->p, n);
                len += n;
            }
            src = gather;
        }
        size_t taken = 0;
        int rc = mr_tls_write(s->tls, src, len, &taken);
        if (rc == MR_TLS_ERR) return -EPROTO;
        if (rc != MR_TLS_OK) break; /* handshake not done, or 256 KiB of ciphertext unsent */
        /* The engine copied (encrypted) the bytes: the buffer references can go now. */
        q->bytes -= taken;
        while (taken) {
            e = &q->ent[q->head];
            size_t n = taken < e->len ? taken : e->len;
            e->p += n;
            e->len -= (uint32_t)n;
            taken -= n;
            if (e->len == 0) release_head(s);
        }
    }
    size_t pending = mr_tls_pending_out(s->tls);
    if (!pending) {
        if (s->shut_wr && !s->shut_done && !mr_sock_queued(s)) {
            s->shut_done = true;
            shutdown(s->fd, SHUT_WR);
        }
        sq_put(s);
        return 0;
    }
    /* The ciphertext iovecs live in the queue's storage while the send is in flight. */
    if (!(q = sq_get(s))) return -ENOMEM;
    int n = mr_tls_out_iov(s->tls, 0, q->iov, MR_SQ_IOV);
    if (n <= 0) { sq_put(s); return 0; }
    memset(&q->msg, 0, sizeof q->msg);
    q->msg.msg_iov = q->iov;
    q->msg.msg_iovlen = (size_t)n;
    sendmsg_now(s, &q->msg);
    return 1;
}

/* Decrypts what the engine holds into extra buffers appended to the input list: while reading
 * is not paused and fewer than MR_IN_MAX buffers are held, or everything (all, at EOF). Returns
 * the plaintext bytes added, or -EPROTO / -ENOMEM; sets eof on close_notify. */
static long tls_pump(mr_sock_t *s, bool all)
{
    uint32_t size = mr_loop_buf_size(s->loop);
    long total = 0;
    while (all || (!s->recv_paused && s->nin < MR_IN_MAX)) {
        mr_in_t *last = s->nin ? &s->in[s->nin - 1] : NULL;
        bool fresh = false;
        /* Every input buffer of a TLS socket is an extra buffer of ours: fill the last one up
         * (appending never moves bytes a send may reference). */
        if (!last || last->off + last->len == size) {
            if (!in_grow(s)) return -ENOMEM;
            int bid = mr_loop_buf_get(s->loop);
            if (bid < 0) return bid;
            last = &s->in[s->nin++];
            *last = (mr_in_t){ .bid = bid, .off = 0, .len = 0 };
            fresh = true;
        }
        char *dst = mr_loop_buf_ptr(s->loop, (uint16_t)last->bid) + last->off + last->len;
        size_t got = 0;
        int rc = mr_tls_read(s->tls, dst, size - last->off - last->len, &got);
        if (rc == MR_TLS_OK && got) {
            last->len += (uint32_t)got;
            total += (long)got;
            continue;
        }
        if (fresh) {
            mr_loop_buf_unref(s->loop, (uint16_t)last->bid);
            s->nin--;
        }
        if (rc == MR_TLS_OK || rc == MR_TLS_WANT) break;
        if (rc == MR_TLS_CLOSED) { s->eof = true; break; }
        return -EPROTO;
    }
    return total;
}

/* After new ciphertext, a resume or a consume: decrypt, answer the handshake, tell the owner. */
static void tls_after_input(mr_sock_t *s, bool all)
{
    long got = tls_pump(s, all);
    if (!s->send_op.active) {
        int rc = tls_submit(s);
        if (rc < 0 && got >= 0) got = rc;
    }
    if (got < 0) {
        if (!s->err) s->err = (int)got;
        s->ops->on_recv(s, (int)got);
        return;
    }
    if (got > 0) {
        /* The EOF goes in a callback of its own, later: the owner may close (and free) the
         * socket in this one, which the queued defer keeps from happening under our feet. */
        if (s->eof) {
            s->eof_pending = true;
            mr_loop_defer(s->loop, &s->tls_pump);
        }
        s->ops->on_recv(s, got > INT32_MAX ? INT32_MAX : (int)got);
    } else if (s->eof) {
        s->ops->on_recv(s, 0);
    }
}

static void tls_pump_deferred(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    mr_sock_t *s = (mr_sock_t *)((char *)d - offsetof(mr_sock_t, tls_pump));
    if (s->closing) { maybe_closed(s); return; }
    if (s->eof_pending) {
        s->eof_pending = false;
        s->ops->on_recv(s, 0);
        return;
    }
    if (s->recv_paused || s->eof || s->err) return;
    tls_after_input(s, false);
}

static void tls_pump_later(mr_sock_t *s)
{
    if (s->tls && !s->closing && !s->recv_paused && !s->eof && !s->err && s->nin < MR_IN_MAX &&
        mr_tls_read_pending(s->tls))
        mr_loop_defer(s->loop, &s->tls_pump);
}

int mr_sock_start_tls(mr_sock_t *s, mr_tls_conn_t *t, bool client)
{
    s->tls = t;
    if (client && mr_tls_handshake(t) == MR_TLS_ERR) return -EPROTO;
    if (!s->send_op.active && !s->closing) mr_loop_defer(s->loop, &s->flush);
    return 0;
}

void mr_sock_shutdown_write(mr_sock_t *s)
{
    if (s->closing || s->shut_wr) return;
    s->shut_wr = true;
    if (!s->tls) {
        s->shut_done = true;
        shutdown(s->fd, SHUT_WR);
        return;
    }
    mr_tls_shutdown(s->tls);
    if (!s->send_op.active) mr_loop_defer(s->loop, &s->flush);
}

static void recv_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    mr_sock_t *s = (mr_sock_t *)((char *)op - offsetof(mr_sock_t, recv_op));
    if (s->closing) {
        if (flags & MR_F_BUF) mr_loop_buf_unref(loop, mr_op_bid(flags));
        maybe_closed(s);
        return;
    }
    if (res > 0 && s->tls) {
        uint16_t bid = mr_op_bid(flags);
        if (s->eof || s->err) { /* bytes after close_notify (or a failure) mean nothing */
            mr_loop_buf_unref(loop, bid);
            if (!(flags & MR_F_MORE) && !s->recv_paused) mr_loop_recv(loop, op, s->fd);
            return;
        }
        int rc = mr_tls_feed(s->tls, mr_loop_buf_ptr(loop, bid), (size_t)res);
        mr_loop_buf_unref(loop, bid); /* feed copied the bytes */
        if (!(flags & MR_F_MORE) && !s->recv_paused) mr_loop_recv(loop, op, s->fd);
        if (rc != MR_TLS_OK) {
            if (!s->err) s->err = -EPROTO;
            s->ops->on_recv(s, -EPROTO);
            return;
        }
        tls_after_input(s, false);
        return;
    }
    if (res > 0) {
        uint16_t bid = mr_op_bid(flags);
        if (!in_grow(s)) {
            mr_loop_buf_unref(loop, bid);
            s->err = -ENOMEM;
            s->ops->on_recv(s, -ENOMEM);
            return;
        }
        s->in[s->nin++] = (mr_in_t){ .bid = bid, .off = 0, .len = (uint32_t)res };
        /* A final completion with data (a first read, or a multishot the kernel ended): read on
         * from the end of the turn, unless the owner paused or closed meanwhile, as one that has
         * just read a request it knows to be the last does (no recv to cancel before its close). */
        if (!(flags & MR_F_MORE) && !s->recv_paused) {
            s->rearm_recv = true;
            mr_loop_defer(loop, &s->flush);
        }
        s->ops->on_recv(s, res);
        return;
    }
    if (res == -ECANCELED) {
        /* Our own pause; if the owner resumed before the cancel landed, arm again. */
        if (!s->recv_paused && !s->eof) mr_loop_recv(loop, op, s->fd);
        return;
    }
    if (res == 0 && s->tls && s->eof) return; /* close_notify came first and was reported */
    if (res == 0 && s->tls) {
        /* Hand over everything already received before the EOF, as a plain socket would. */
        s->eof = true;
        tls_after_input(s, true);
        return;
    }
    if (res == 0) s->eof = true;
    else if (!s->err) s->err = res;
    s->ops->on_recv(s, res);
}

static void submit_send(mr_sock_t *s);

static void send_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    (void)flags;
    mr_sock_t *s = (mr_sock_t *)((char *)op - offsetof(mr_sock_t, send_op));
    if (s->closing) { maybe_closed(s); return; }
    if (res < 0) {
        if (!s->err) s->err = res;
        s->ops->on_sent(s, res);
        return;
    }
    if (s->tls) {
        mr_tls_out_consume(s->tls, (size_t)res);
        int rc = tls_submit(s);
        if (rc < 0) {
            if (!s->err) s->err = rc;
            s->ops->on_sent(s, rc);
        } else if (rc == 0 && !mr_sock_queued(s)) {
            s->ops->on_sent(s, 0);
        }
        return;
    }
    mr_sq_t *q = s->sq;
    size_t n = (size_t)res;
    while (q->count && n) {
        mr_sq_ent_t *e = &q->ent[q->head];
        if (n < e->len) { e->p += n; e->len -= (uint32_t)n; q->bytes -= n; break; }
        n -= e->len;
        q->bytes -= e->len;
        release_head(s);
    }
    if (q->count) { submit_send(s); return; }
    sq_put(s);
    s->ops->on_sent(s, 0);
}

static void flush_deferred(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    mr_sock_t *s = (mr_sock_t *)((char *)d - offsetof(mr_sock_t, flush));
    if (s->closing) { maybe_closed(s); return; }
    if (s->rearm_recv) {
        s->rearm_recv = false;
        if (!s->recv_op.active && !s->recv_paused && !s->eof && !s->err) mr_loop_recv(loop, &s->recv_op, s->fd);
    }
    if (s->send_op.active) return;
    if (s->tls) {
        int rc = tls_submit(s);
        if (rc < 0) {
            if (!s->err) s->err = rc;
            s->ops->on_sent(s, rc);
        }
        return;
    }
    if (mr_sock_queued(s)) submit_send(s);
}

void mr_sock_init(mr_sock_t *s, mr_loop_t *loop, int fd, const mr_sock_ops_t *ops)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->fd = fd;
    s->ops = ops;
    s->recv_op.fn = recv_done;
    s->send_op.fn = send_done;
    s->flush.fn = flush_deferred;
    s->tls_pump.fn = tls_pump_deferred;
    s->in = s->in_inl;
    s->in_cap = MR_IN_INLINE;
}

int mr_sock_start_recv(mr_sock_t *s)
{
    if (s->recv_op.active || s->closing) return 0;
    return mr_loop_recv_once(s->loop, &s->recv_op, s->fd);
}

void mr_sock_pause(mr_sock_t *s)
{
    if (s->recv_paused) return;
    s->recv_paused = true;
    if (s->recv_op.active) mr_loop_cancel(s->loop, &s->recv_op);
}

void mr_sock_resume(mr_sock_t *s)
{
    if (!s->recv_paused) return;
    s->recv_paused = false;
    if (!s->eof && !s->err && !s->closing && !s->recv_op.active) mr_loop_recv(s->loop, &s->recv_op, s->fd);
    tls_pump_later(s);
}

static void submit_send(mr_sock_t *s)
{
    if (s->tls) { tls_submit(s); return; }
    mr_sq_t *q = s->sq;
    uint32_t n = 0;
    for (uint32_t i = 0; i < q->count && n < MR_SQ_IOV; i++) {
        mr_sq_ent_t *e = &q->ent[(q->head + i) % MR_SQ_ENT];
        q->iov[n].iov_base = (void *)e->p;
        q->iov[n].iov_len = e->len;
        n++;
    }
    memset(&q->msg, 0, sizeof q->msg);
    q->msg.msg_iov = q->iov;
    q->msg.msg_iovlen = n;
    sendmsg_now(s, &q->msg);
}

int mr_sock_send(mr_sock_t *s, const char *p, size_t len, int32_t bid)
{
    if (len == 0) return 0;
    mr_sq_t *q = sq_get(s);
    if (!q) return -ENOMEM;
    if (q->count == MR_SQ_ENT) return -ENOSPC;
    mr_sq_ent_t *e = &q->ent[(q->head + q->count) % MR_SQ_ENT];
    e->bid = bid;
    e->owned = NULL;
    e->len = (uint32_t)len;
    if (bid < 0 && len <= sizeof e->inl) {
        memcpy(e->inl, p, len);
        e->p = e->inl;
    } else {
        e->p = p;
        if (bid >= 0) mr_loop_buf_ref(s->loop, (uint16_t)bid);
    }
    q->count++;
    q->bytes += len;
    /* Submit at the end of this loop turn, so a head and its body leave in one sendmsg. */
    if (!s->send_op.active && !s->closing) mr_loop_defer(s->loop, &s->flush);
    return 0;
}

int mr_sock_send_owned(mr_sock_t *s, char *p, size_t len)
{
    if (len == 0) { free(p); return 0; }
    int rc = mr_sock_send(s, p, len, MR_NO_BID);
    if (rc < 0) { free(p); return rc; }
    mr_sq_t *q = s->sq;
    mr_sq_ent_t *e = &q->ent[(q->head + q->count - 1) % MR_SQ_ENT];
    if (e->p == e->inl) free(p); /* short data was copied inline */
    else e->owned = p;
    return 0;
}

void mr_sock_consume(mr_sock_t *s, size_t n)
{
    while (n && s->nin) {
        mr_in_t *in = &s->in[0];
        if (n < in->len) { in->off += (uint32_t)n; in->len -= (uint32_t)n; return; }
        n -= in->len;
        if (in->bid >= 0) mr_loop_buf_unref(s->loop, (uint16_t)in->bid);
        memmove(&s->in[0], &s->in[1], (s->nin - 1) * sizeof s->in[0]);
        s->nin--;
    }
    tls_pump_later(s);
}

void mr_sock_close(mr_sock_t *s)
{
    if (s->closing) return;
    s->closing = true;
    if (s->recv_op.active) mr_loop_cancel(s->loop, &s->recv_op);
    if (s->send_op.active) mr_loop_cancel(s->loop, &s->send_op);
    maybe_closed(s);
}

void mr_sock_pump(mr_sock_t *from, mr_sock_t *to, uint64_t limit)
{
    while (from->nin && !mr_sock_full(to, limit)) {
        mr_in_t *in = &from->in[0];
        mr_sock_send(to, mr_loop_buf_ptr(from->loop, (uint16_t)in->bid) + in->off, in->len, in->bid);
        mr_sock_consume(from, in->len);
    }
    if (from->nin >= MR_IN_MAX - 2 || mr_sock_full(to, limit)) mr_sock_pause(from);
    else mr_sock_resume(from);
}
