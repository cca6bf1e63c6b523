/* One normalised view of the request path and host, so that routing, filters and the upstream all
 * see the same resource (see docs/routing.md for the policy and every confusion class it closes).
 *
 * Protocol-independent (HTTP/1.1 and HTTP/2 call it alike). Pure functions: no allocation, no
 * global state, no I/O; any thread. Every input is a byte span (not NUL-terminated); every output
 * goes to a caller buffer whose size the caller states. Reason strings returned through `why` are
 * static literals for the error log (the caller answers 400).
 *
 * Path normalisation (RFC 3986 6.2.2 and 5.2.4, plus refusals where an upstream could read the
 * path differently than routing did):
 *  - %XX of an unreserved character (ALPHA DIGIT - . _ ~) is decoded; every other %XX stays encoded
 *    with its hex uppercased (%2f -> %2F). Decoding happens once: %252e stays %252e.
 *  - dot-segments are removed after that decoding (so %2e%2e is ".."); a ".." that would climb
 *    above the root is refused, not clamped. A trailing "." or ".." leaves a trailing slash
 *    ("/a/." -> "/a/", "/a/b/.." -> "/a/").
 *  - repeated slashes are merged (policy.merge_slashes, default on).
 *  - refused: empty input, input not starting with '/' (including asterisk-form "*": the caller
 *    routes OPTIONS * itself), invalid %-encodings (%zz, %4, a trailing %), encoded control bytes
 *    (%00-%1F, %7F), raw control bytes, space and DEL, raw bytes >= 0x80, raw '\', '#' and '?'
 *    (the caller passes the path without its query), overlong UTF-8 in %-encoded bytes (%C0%AF is
 *    '/' to a lax decoder), %2F and %5C unless policy.escaped_slashes says otherwise, a
 *    dot-segment carrying ';' parameters ("..;" is ".." to Tomcat), and ';' parameters outside the
 *    last segment (policy.path_params).
 *
 * Output bound: the output is never longer than the input (every output byte stands for at least
 * one input byte; decoding and dot-segment removal only shrink). So an output buffer of `len`
 * bytes always suffices, and normalising in place (out == in) is allowed. */
#ifndef MR_HTTP_PATH_H
#define MR_HTTP_PATH_H

#include <stdbool.h>
#include <stddef.h>

/* What to do with an encoded slash (%2F) or backslash (%5C) in the path. */
typedef enum {
    MR_PATH_SLASHES_REJECT = 0, /* refuse the request (default): the upstream may decode it after routing */
    MR_PATH_SLASHES_KEEP,       /* keep it encoded as %2F / %5C, part of its segment (Envoy KEEP_UNCHANGED) */
    MR_PATH_SLASHES_DECODE,     /* decode both to '/', a separator, then normalise (Envoy UNESCAPE_AND_FORWARD
                                 * with normalize_path: %5C becomes '/' too, as Windows upstreams read it) */
} mr_path_slashes_t;

/* What to do with ';' path parameters ("/a;jsessionid=1"). A segment whose name is a dot-segment
 * ("..;x", ".;", "%2e%2e;") is refused under every setting. */
typedef enum {
    MR_PATH_PARAMS_LAST = 0, /* allowed in the last segment only (default); "/a;x/b" is refused, since
                              * servlet containers drop parameters and would route "/a/b" */
    MR_PATH_PARAMS_KEEP,     /* ';' is an ordinary character anywhere (RFC 3986, nginx, Envoy) */
    MR_PATH_PARAMS_REJECT,   /* any ';' in the path is refused */
} mr_path_params_t;

typedef struct {
    bool merge_slashes;               /* "//" -> "/" (default true, like nginx merge_slashes) */
    mr_path_slashes_t escaped_slashes;
    mr_path_params_t path_params;
} mr_path_policy_t;

#define MR_PATH_POLICY_DEFAULT { true, MR_PATH_SLASHES_REJECT, MR_PATH_PARAMS_LAST }

/* mr_path_normalize results. */
#define MR_PATH_CHANGED 0    /* out[0 .. *outlen) holds the normalised path */
#define MR_PATH_SAME 1       /* the input is already normal: out is untouched, *outlen = len */
#define MR_PATH_REFUSED (-1) /* *why says why; out may hold garbage */

/* Normalises the path of an origin-form target (the bytes before '?'). `pol` NULL means the
 * defaults. `out` needs `cap` >= `len` (otherwise MR_PATH_REFUSED, "output buffer too small");
 * it may equal `in` (in place) but must not otherwise overlap it. On MR_PATH_SAME nothing was
 * copied: one scan of the input, so the common case costs no copy. `outlen` and `why` may be NULL.
 * Idempotent: normalising an output again returns MR_PATH_SAME. */
int mr_path_normalize(const mr_path_policy_t *pol, const char *in, size_t len, char *out, size_t cap,
                      size_t *outlen, const char **why);

/* Normalises a Host header / :authority value into the name routing matches on: the port is split
 * off into *port (-1 when absent or empty, "h:" as RFC 3986 6.2.3 allows), ASCII letters are
 * lowercased and one trailing dot is removed ("Example.COM.:8080" -> "example.com", 8080). An IPv6
 * literal keeps its brackets ("[::1]:80" -> "[::1]"). Refused (-1, *why set): an empty name
 * (the caller treats an empty or absent Host as "no host" without calling this), empty labels
 * ("a..b", ".a", "a.."), a label over 63 or a name over 253 bytes, any byte other than letters,
 * digits, '-', '_' and '.' (so no %-encoding, userinfo or sub-delims), a bad IPv6 literal (hex
 * digits, ':' and '.' only, at least one ':', no zone id), a port that is not 1-5 digits or is
 * above 65535. Returns 0 with out[0 .. *outlen) written; *outlen <= len, cap >= len needed, and
 * out may equal in. `port`, `outlen` and `why` may be NULL. */
int mr_host_normalize(const char *in, size_t len, char *out, size_t cap, size_t *outlen, int *port,
                      const char **why);

/* Route prefix matching with segment boundaries, on a normalised path. A prefix names a subtree,
 * and a trailing slash on it does not change that: "/api" and "/api/" both match "/api", "/api/",
 * "/api/x" and "/api;v=1" (parameters of the segment), but not "/apix". "/" matches every path.
 * A prefix that does not start with '/' matches nothing. */
bool mr_path_prefix_match(const char *prefix, size_t plen, const char *path, size_t len);

/* Exact route matching: the path equals `exact`, or it equals `exact` once the parameters of its
 * last segment are removed ("/login;jsessionid=1" matches exact "/login"), so the parameters a
 * servlet upstream ignores cannot steer a request past an exact route. */
bool mr_path_exact_match(const char *exact, size_t elen, const char *path, size_t len);

/* strip_prefix: what remains of `path` after the route prefix, for forwarding. Returns -1 when
 * the prefix does not match (mr_path_prefix_match false); otherwise the remainder is
 * path[*off .. len), preceded by a '/' the caller writes when the return value is 1 (0: the
 * remainder already starts with '/'). So the remainder always starts with '/':
 *   "/api" on "/api" -> "/" (off = len, 1)     "/api" on "/api/x" -> "/x" (off 4, 0)
 *   "/api/" on "/api/x" -> "/x"                "/api" on "/api;v=1" -> "/;v=1" (off 4, 1)
 *   "/" on "/x" -> "/x" (off 0, 0)
 * The caller re-attaches the query after it: "/api?q=1" -> "/?q=1". */
int mr_path_strip_prefix(const char *prefix, size_t plen, const char *path, size_t len, size_t *off);

#endif
