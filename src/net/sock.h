/* A socket endpoint on the loop: one multishot recv feeding held input buffers, and an ordered
 * send queue of iovecs (zero-copy references into provided buffers, inline framing bytes, or
 * caller-owned memory that must outlive the send). Used by client connections and upstream
 * connections alike.
 *
 * Memory: an idle socket holds no send queue and no input buffer. The queue (about 2 KiB of iovecs
 * and entries) is taken from a per-thread cache when something is queued and goes back once it is
 * empty and no send is in flight, so thousands of idle keep-alive connections cost only this
 * struct each.
 *
 * TLS is transparent here (mr_sock_start_tls): the owner keeps reading and queueing plaintext
 * exactly as on a plain socket. Received ciphertext is fed to the engine (which copies it, so the
 * provided buffer goes back at once) and the plaintext lands in loop "extra" buffers
 * (mr_loop_buf_get), addressed and referenced by bid like received ones. Queued plaintext is
 * encrypted as the queue flushes (entries are released once the engine took their bytes) and the
 * ciphertext is sent straight from the engine's stable output chunks. on_sent reports an empty
 * queue only when plaintext and ciphertext are both drained; mr_sock_sending says the same.
 *
 * Lifetime rule: mr_sock_close cancels every in-flight op; the fd is closed and the owner's
 * on_closed fires only after the last completion arrived, so no buffer named in an SQE is ever
 * released early. Thread affinity: the owning worker's loop. Callbacks never fire synchronously
 * from a submitting call. */
#ifndef MR_SOCK_H
#define MR_SOCK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "loop/loop.h"
#include "tls/tls.h"

#define MR_SQ_ENT 32
#define MR_SQ_IOV 16
#define MR_IN_MAX 8      /* held input buffers before reading pauses */
#define MR_IN_INLINE 2   /* input entries held without an allocation */
#define MR_NO_BID (-1)

typedef struct mr_sock mr_sock_t;

typedef struct {
    /* Data arrived (already appended to the input list) or EOF/error (res <= 0). */
    void (*on_recv)(mr_sock_t *s, int res);
    /* The send queue became empty, or a send failed (res < 0). */
    void (*on_sent)(mr_sock_t *s, int res);
    void (*on_closed)(mr_sock_t *s);
} mr_sock_ops_t;

typedef struct {
    const char *p;
    uint32_t len;
    int32_t bid;
    void *owned;        /* freed once sent (Lua-filtered body chunks) */
    char inl[24];
} mr_sq_ent_t;

/* The send queue: a ring of entries and the iovecs of the send in flight. */
typedef struct mr_sq {
    struct msghdr msg;
    struct iovec iov[MR_SQ_IOV];
    mr_sq_ent_t ent[MR_SQ_ENT];
    uint32_t head, count;
    uint64_t bytes;     /* queued, not sent yet */
    struct mr_sq *next_free;
} mr_sq_t;

typedef struct {
    int32_t bid;
    uint32_t off, len;
} mr_in_t;

/* Every idle connection holds one of these (and nothing else of this module): keep it small and
 * without holes (152 bytes on x86-64). */
struct mr_sock {
    mr_loop_t *loop;
    const mr_sock_ops_t *ops;
    int fd;
    int err;            /* first socket error seen (-EPROTO for TLS: see mr_sock_tls_error) */
    mr_op_t recv_op, send_op;
    mr_defer_t flush;
    mr_sq_t *sq;        /* NULL while nothing is queued or in flight */
    mr_in_t *in;        /* held input; grows to absorb a multishot burst before a pause lands */
    uint32_t nin, in_cap;
    mr_in_t in_inl[MR_IN_INLINE];
    bool recv_paused;   /* owner asked to stop reading (backpressure) */
    bool closing;
    bool eof;
    bool shut_wr, shut_done; /* write side: close_notify queued / shutdown(2) done */
    bool eof_pending;        /* EOF (close_notify) to report after the data before it */
    bool nodelay_later;      /* set TCP_NODELAY before the second send (mr_sock_nodelay_later) */
    bool sent_once;
    bool rearm_recv;         /* arm the recv again from the flush defer (see recv_done) */
    /* TLS (NULL on plain TCP); owned, freed after the last completion. */
    mr_tls_conn_t *tls;
    mr_defer_t tls_pump;     /* decrypt what the engine holds after a resume/consume */
};

void mr_sock_init(mr_sock_t *s, mr_loop_t *loop, int fd, const mr_sock_ops_t *ops);
/* TCP_NODELAY, set only before the socket's second send: Nagle holds a small segment back only
 * while earlier data is unacknowledged, which the first send never meets. A connection that
 * answers one request and closes (Connection: close) then spends no setsockopt on it. */
static inline void mr_sock_nodelay_later(mr_sock_t *s) { s->nodelay_later = true; }
int mr_sock_start_recv(mr_sock_t *s);
/* Stop/resume reading (backpressure). Held input stays. */
void mr_sock_pause(mr_sock_t *s);
void mr_sock_resume(mr_sock_t *s);
/* Queue bytes. With bid >= 0 a buffer reference is taken and released after the send. With
 * bid == MR_NO_BID the memory must stay valid until on_sent reports the queue empty. Short data
 * (<= 24 bytes) is copied inline. Returns 0 or -ENOSPC when the queue is full. */
int mr_sock_send(mr_sock_t *s, const char *p, size_t len, int32_t bid);
/* Queue malloc'd memory; the queue frees it after the send (or on close). */
int mr_sock_send_owned(mr_sock_t *s, char *p, size_t len);
static inline uint32_t mr_sock_queued(const mr_sock_t *s) { return s->sq ? s->sq->count : 0; }
/* Bytes queued and not sent yet. */
static inline uint64_t mr_sock_queued_bytes(const mr_sock_t *s) { return s->sq ? s->sq->bytes : 0; }
static inline uint32_t mr_sock_sq_space(const mr_sock_t *s) { return MR_SQ_ENT - mr_sock_queued(s); }
/* Drop the first n bytes of held input (releasing buffers). */
void mr_sock_consume(mr_sock_t *s, size_t n);
void mr_sock_close(mr_sock_t *s);
/* Makes the socket TLS (takes ownership of t, a fresh connection). A client side connection
 * starts its handshake now (the ClientHello leaves at the end of the loop turn); plaintext queued
 * meanwhile waits for the handshake. Handshake progress is invisible to the owner, except that a
 * failure arrives as on_recv(-EPROTO) (or on_sent(-EPROTO)) with the reason in
 * mr_sock_tls_error. Returns 0 or -EPROTO. */
int mr_sock_start_tls(mr_sock_t *s, mr_tls_conn_t *t, bool client);
static inline const char *mr_sock_tls_error(const mr_sock_t *s) { return s->tls ? mr_tls_error(s->tls) : ""; }
/* Ends the write side after everything queued was sent: plain TCP shuts it down now; TLS queues
 * close_notify and shuts down once the ciphertext is out. */
void mr_sock_shutdown_write(mr_sock_t *s);
/* True while queued bytes (plaintext or, on TLS, ciphertext) are not sent yet. */
static inline bool mr_sock_sending(const mr_sock_t *s) { return mr_sock_queued(s) || (s->tls && mr_tls_pending_out(s->tls)); }
/* True while any op is in flight. */
static inline bool mr_sock_busy(const mr_sock_t *s) { return s->recv_op.active || s->send_op.active; }
/* Moves held input of `from` to the send queue of `to` (zero-copy, by buffer reference) while `to`
 * has room below limit, and pauses or resumes reading on `from` accordingly: one direction of a
 * raw tunnel. */
void mr_sock_pump(mr_sock_t *from, mr_sock_t *to, uint64_t limit);
/* True when the send queue is over limit bytes or has too few entries left for one more body piece
 * with its framing (backpressure). */
#define MR_SQ_RESERVE 4 /* entries a body piece may need: size line, data, CRLF, last-chunk */
static inline bool mr_sock_full(const mr_sock_t *s, uint64_t limit)
{
    return mr_sock_sq_space(s) < MR_SQ_RESERVE || mr_sock_queued_bytes(s) > limit;
}
/* Frees the per-thread cache of send queues (at thread exit). */
void mr_sock_thread_free(void);

#endif
