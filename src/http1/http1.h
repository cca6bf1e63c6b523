/* HTTP/1.1 message parsing on llhttp, with the strictness and limits llhttp 8.1 lacks.
 *
 * One mr_http1_msg_t parses a stream of messages of one type (requests from a client, or
 * responses from an upstream). Header bytes are copied into the message's own buffer as they
 * arrive, so callers may release receive buffers as soon as mr_http1_feed returns. Body bytes are
 * NOT copied: on_body gets pointers into the caller's input, valid only during the callback
 * (take a buffer reference there to keep them).
 *
 * Callbacks fire synchronously from inside mr_http1_feed. A request parser pauses after the head
 * (so the caller can route and connect before body bytes flow) and after each complete message
 * (so pipelined requests are answered in order); mr_http1_feed then returns MR_HTTP1_PAUSED with
 * *consumed < len, and the caller resumes by calling mr_http1_resume and feeding the rest.
 *
 * llhttp 8.1 is lenient where RFC 9112 requires rejection (bare CR/LF, obs-fold, chunk lines,
 * versions, sizes), so mr_http1_feed pre-scans every byte outside a body before llhttp sees it and
 * normalisation enforces the framing rules; anything ambiguous is an error with error_status set
 * (the caller answers it and closes). Chunk extensions are parsed and dropped; trailers are kept
 * apart from the head (trls), minus framing and routing fields.
 * Owner: one connection; not thread-safe. */
#ifndef MR_HTTP1_H
#define MR_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/headers.h"
#include "llhttp.h"

enum { MR_HTTP1_REQUEST = 0, MR_HTTP1_RESPONSE = 1 };
enum { MR_HTTP1_OK = 0, MR_HTTP1_PAUSED = 1, MR_HTTP1_UPGRADE = 2 };

typedef struct {
    uint32_t max_request_line;
    uint32_t max_header_size;
    uint32_t max_headers;
} mr_http1_limits_t;

typedef struct mr_http1_msg mr_http1_msg_t;

typedef struct {
    /* Head parsed and normalised. Request: return 0 (the parser then pauses). Response: return 0,
     * or 1 when the message has no body whatever its headers say (response to HEAD), or
     * HPE_PAUSED to decide later (then mr_http1_skip_body before resuming, if need be). */
    int (*on_head)(mr_http1_msg_t *m);
    int (*on_body)(mr_http1_msg_t *m, const char *p, size_t n);
    /* Message complete. Requests pause after it; responses keep going. */
    int (*on_done)(mr_http1_msg_t *m);
} mr_http1_cbs_t;

struct mr_http1_msg {
    llhttp_t parser;
    const mr_http1_cbs_t *cbs;
    const mr_http1_limits_t *limits;
    void *owner;
    int type;

    /* The head, copied into the owner's store h (fields; the target and reason phrase are kept in
     * h->buf too, at url_off / reason_off). */
    mr_hdrs_t *h;
    uint32_t url_off, url_len;
    uint32_t reason_off, reason_len;
    uint32_t head_bytes;       /* bytes of the head seen so far (limits) */
    int status;                /* response status */
    uint8_t method, major, minor;
    int64_t content_length;    /* -1 when absent */
    bool chunked, keep_alive, upgrade, expect_continue, has_body, in_value, head_done;
    int host_idx;              /* index of Host or -1 */

    int error_status;          /* HTTP status to answer a parse error with (requests) */
    const char *error_reason;

    /* Trailer fields of the current chunked message, in the owner's store t, never merged into
     * the head; framing and routing fields are dropped. Valid until mr_http1_next. */
    mr_hdrs_t *t;

    /* Pre-scan state (http1.c): which region of the stream the next byte belongs to. */
    uint8_t sc_region, sc_state, sc_next, sc_vlen;
    bool sc_cr, sc_seen;
    uint32_t sc_line;          /* bytes of the current start line or chunk line */
    uint32_t sc_section;       /* bytes of the current header or trailer section */
    uint32_t sc_lead;          /* bytes of empty lines before the start line */
    uint32_t sc_ext;           /* chunk-extension bytes in this message */
    uint64_t sc_size;          /* chunk size being read, then body bytes left in the region */
};

void mr_http1_init(mr_http1_msg_t *m, int type, const mr_http1_limits_t *limits,
                   const mr_http1_cbs_t *cbs, void *owner);
/* Where the next message's head and trailers go. Both must be set before bytes of a message are
 * fed, and stay valid while it is parsed; the parser owns no memory of its own, so an idle
 * connection's parser holds no buffer. */
void mr_http1_set_store(mr_http1_msg_t *m, mr_hdrs_t *h, mr_hdrs_t *t);
/* Forget the previous message's head (resets the stores, keeping capacity). Call before the next
 * message. */
void mr_http1_next(mr_http1_msg_t *m);
/* Returns MR_HTTP1_OK (all consumed), MR_HTTP1_PAUSED, MR_HTTP1_UPGRADE (rest is tunnel data),
 * or -1 on error (error_status/error_reason set). */
int mr_http1_feed(mr_http1_msg_t *m, const char *p, size_t n, size_t *consumed);
void mr_http1_resume(mr_http1_msg_t *m);
/* Signals EOF to a response parser (read-until-close bodies). Returns 0 or -1 (truncated). */
int mr_http1_finish(mr_http1_msg_t *m);
bool mr_http1_paused(const mr_http1_msg_t *m);
/* While paused at a response head (on_head returned HPE_PAUSED): the message has no body after
 * all (the request was HEAD). Decided on resume; use this rather than touching parser flags. */
void mr_http1_skip_body(mr_http1_msg_t *m);
/* True between messages: no byte of a next message has been seen (and none is owed). */
bool mr_http1_idle(const mr_http1_msg_t *m);
/* True once the current request's start line was parsed whole (method, target and version are
 * known: llhttp_get_method and friends, url_off/url_len), even if the head then failed. */
bool mr_http1_line_done(const mr_http1_msg_t *m);

static inline const char *mr_http1_str(const mr_http1_msg_t *m, uint32_t off) { return mr_hdrs_str(m->h, off); }
static inline int mr_http1_find(const mr_http1_msg_t *m, const char *name, size_t len, int from)
{
    return mr_hdrs_find(m->h, name, len, from);
}
/* Appends a header to the head store (name/value copied). Returns index or -errno. */
int mr_http1_add_header(mr_http1_msg_t *m, const char *name, size_t nlen, const char *val, size_t vlen);
const char *mr_http1_method_str(const mr_http1_msg_t *m);

#endif
