/* Pure entry points over the HTTP/1 codec, for unit specs (LuaJIT FFI on libmoonring_ffi.so) and
 * the fuzz targets: parse a byte string as a stream of messages, exactly as the proxy feeds the
 * parser (pausing and resuming), and describe the result as text, one fact per line:
 *
 *   msg                       a message starts (its head was accepted)
 *   method GET | status 200   request method, or response status
 *   url /x | reason OK
 *   version 1.1
 *   header Host: x [host]     each head field after normalisation; flags: hop host xff via
 *   cl 5 / chunked 0 / keepalive 1 / upgrade 0 / expect 0
 *   body 5 "hello"            at completion: body bytes, and the first 512 of them (C-escaped)
 *   trailer X-T: 1            kept trailer fields
 *   done
 * then at most one of:
 *   error 400 <reason>        the parse failed (the status the proxy answers with)
 *   partial                   input ended inside a message
 *   rest N                    N bytes follow that are not HTTP (upgrade, or after a close)
 * Always NUL-terminated; "truncated" ends the text if out was too small. */
#ifndef MR_HTTP1_TEST_API_H
#define MR_HTTP1_TEST_API_H

#include <stddef.h>
#include <stdint.h>

#include "util/export.h"

enum {
    MR_H1T_HEAD = 1,  /* responses answer HEAD requests: no body whatever the headers say */
    MR_H1T_EOF = 2,   /* the peer closes after the input (ends read-until-close bodies) */
    MR_H1T_PAUSE_HEAD = 4, /* responses: on_head pauses (as a yielding Lua phase does) and HEAD is
                            * applied on resume with mr_http1_skip_body */
};

/* Returns 0, or the error status. type is MR_HTTP1_REQUEST (0) or MR_HTTP1_RESPONSE (1).
 * step > 0 feeds the input in pieces of that many bytes (the result must not depend on it); a
 * zero limit takes the default (8k request line, 32k header section, 100 headers). */
MR_EXPORT int mr_http1_parse_ex(int type, int flags, size_t step, uint32_t max_request_line, uint32_t max_header_size,
                                uint32_t max_headers, const char *data, size_t len, char *out, size_t outlen);

#endif
