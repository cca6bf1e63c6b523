#include "proxy/sock.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void maybe_closed(mr_sock_t *s)
{
    if (!s->closing || mr_sock_busy(s) || s->fd < 0 || s->flush.queued) return;
    close(s->fd);
    s->fd = -1;
    for (uint32_t i = 0; i < s->nin; i++)
        if (s->in[i].bid >= 0) mr_loop_buf_unref(s->loop, (uint16_t)s->in[i].bid);
    s->nin = 0;
    free(s->in);
    s->in = NULL;
    s->in_cap = 0;
    while (s->sq_count) {
        mr_sq_ent_t *e = &s->ent[s->sq_head];
        if (e->bid >= 0) mr_loop_buf_unref(s->loop, (uint16_t)e->bid);
        free(e->owned);
        s->sq_head = (s->sq_head + 1) % MR_SQ_ENT;
        s->sq_count--;
    }
    s->sq_bytes = 0;
    s->ops->on_closed(s);
}

static void recv_done(mr_loop_t *loop, mr_op_t *op, int res, uint32_t flags)
{
    mr_sock_t *s = (mr_sock_t *)((char *)op - offsetof(mr_sock_t, recv_op));
    if (s->closing) {
        if (flags & MR_F_BUF) mr_loop_buf_unref(loop, mr_op_bid(flags));
        maybe_closed(s);
        return;
    }
    if (res > 0) {
        uint16_t bid = mr_op_bid(flags);
        if (s->nin == s->in_cap) {
            /* A multishot recv can post a burst before a pause lands; the loop's buffer ring bounds
             * the total, so growing this list is bounded too. */
            uint32_t cap = s->in_cap ? s->in_cap * 2 : 8;
            mr_in_t *in = realloc(s->in, cap * sizeof *in);
            if (!in) {
                mr_loop_buf_unref(loop, bid);
                s->err = -ENOMEM;
                s->ops->on_recv(s, -ENOMEM);
                return;
            }
            s->in = in;
            s->in_cap = cap;
        }
        s->in[s->nin++] = (mr_in_t){ .bid = bid, .off = 0, .len = (uint32_t)res };
        if (!(flags & MR_F_MORE) && !s->recv_paused) mr_loop_recv(loop, op, s->fd);
        s->ops->on_recv(s, res);
        return;
    }
    if (res == -ECANCELED) {
        /* Our own pause; if the owner resumed before the cancel landed, arm again. */
        if (!s->recv_paused && !s->eof) mr_loop_recv(loop, op, s->fd);
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
    size_t n = (size_t)res;
    while (s->sq_count && n) {
        mr_sq_ent_t *e = &s->ent[s->sq_head];
        if (n < e->len) { e->p += n; e->len -= (uint32_t)n; s->sq_bytes -= n; break; }
        n -= e->len;
        s->sq_bytes -= e->len;
        if (e->bid >= 0) mr_loop_buf_unref(loop, (uint16_t)e->bid);
        free(e->owned);
        e->owned = NULL;
        s->sq_head = (s->sq_head + 1) % MR_SQ_ENT;
        s->sq_count--;
    }
    if (s->sq_count) submit_send(s);
    else s->ops->on_sent(s, 0);
}

static void flush_deferred(mr_loop_t *loop, mr_defer_t *d)
{
    (void)loop;
    mr_sock_t *s = (mr_sock_t *)((char *)d - offsetof(mr_sock_t, flush));
    if (s->closing) maybe_closed(s);
    else if (!s->send_op.active && s->sq_count) submit_send(s);
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
}

int mr_sock_start_recv(mr_sock_t *s)
{
    if (s->recv_op.active || s->closing) return 0;
    return mr_loop_recv(s->loop, &s->recv_op, s->fd);
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
}

static void submit_send(mr_sock_t *s)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->sq_count && n < MR_SQ_IOV; i++) {
        mr_sq_ent_t *e = &s->ent[(s->sq_head + i) % MR_SQ_ENT];
        s->iov[n].iov_base = (void *)e->p;
        s->iov[n].iov_len = e->len;
        n++;
    }
    memset(&s->msg, 0, sizeof s->msg);
    s->msg.msg_iov = s->iov;
    s->msg.msg_iovlen = n;
    mr_loop_sendmsg(s->loop, &s->send_op, s->fd, &s->msg);
}

int mr_sock_send(mr_sock_t *s, const char *p, size_t len, int32_t bid)
{
    if (len == 0) return 0;
    if (s->sq_count == MR_SQ_ENT) return -ENOSPC;
    mr_sq_ent_t *e = &s->ent[(s->sq_head + s->sq_count) % MR_SQ_ENT];
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
    s->sq_count++;
    s->sq_bytes += len;
    /* Submit at the end of this loop turn, so a head and its body leave in one sendmsg. */
    if (!s->send_op.active && !s->closing) mr_loop_defer(s->loop, &s->flush);
    return 0;
}

int mr_sock_send_owned(mr_sock_t *s, char *p, size_t len)
{
    if (len == 0) { free(p); return 0; }
    int rc = mr_sock_send(s, p, len, MR_NO_BID);
    if (rc < 0) { free(p); return rc; }
    mr_sq_ent_t *e = &s->ent[(s->sq_head + s->sq_count - 1) % MR_SQ_ENT];
    if (e->p == e->inl) free(p); /* short data was copied inline */
    else e->owned = p;
    return 0;
}

int mr_sock_send_copy(mr_sock_t *s, const char *p, size_t len)
{
    return mr_sock_send(s, p, len, MR_NO_BID);
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
}

void mr_sock_close(mr_sock_t *s)
{
    if (s->closing) return;
    s->closing = true;
    if (s->recv_op.active) mr_loop_cancel(s->loop, &s->recv_op);
    if (s->send_op.active) mr_loop_cancel(s->loop, &s->send_op);
    maybe_closed(s);
}
