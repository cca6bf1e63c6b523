/* Status codes and the Date header: protocol-independent HTTP facts every session writes.
 * Thread-safe (the date cache is per thread). */
#ifndef MR_HTTP_STATUS_H
#define MR_HTTP_STATUS_H

#include <stddef.h>
#include <time.h>

/* The reason phrase of every status in the IANA registry (RFC 9110 and the extensions still
 * registered), "Unknown" for anything else. */
const char *mr_http_reason(int status);
/* The IMF-fixdate for the Date header (RFC 9110 5.6.7), e.g. "Sun, 06 Nov 1994 08:49:37 GMT":
 * 29 characters, NUL-terminated, formatted once per second per thread. */
const char *mr_http_date(time_t now);
#define MR_HTTP_DATE_LEN 29

#endif
