/* See path.h. The normaliser is one pass over the input that writes lazily: as long as what it
 * would write equals the input byte at the same position, it writes nothing, so a path that needs
 * no change is scanned once and never copied. The first differing byte copies the (identical)
 * prefix once and the pass continues writing. Because the output never runs ahead of the input,
 * in-place use is safe. */
#include "http/path.h"

#include <arpa/inet.h>
#include <string.h>

/* Classes of a raw input byte. */
enum {
    C_BAD_CTL = 0, /* control bytes, space, DEL */
    C_OK,          /* copied as is */
    C_SLASH,
    C_PCT,
    C_SEMI,
    C_BAD_HIGH,    /* >= 0x80 */
    C_BAD_BSLASH,
    C_BAD_HASH,
    C_BAD_QUERY,
};

static const char *const bad_reason[] = {
    [C_BAD_CTL] = "control byte or space in path",
    [C_BAD_HIGH] = "non-ASCII byte in path",
    [C_BAD_BSLASH] = "backslash in path",
    [C_BAD_HASH] = "'#' in path",
    [C_BAD_QUERY] = "'?' in path (pass the path without its query)",
};

static inline int cls_of(unsigned c)
{
    if (c >= 0x80) return C_BAD_HIGH;
    if (c <= 0x20 || c == 0x7f) return C_BAD_CTL;
    switch (c) {
    case '/': return C_SLASH;
    case '%': return C_PCT;
    case ';': return C_SEMI;
    case '\\': return C_BAD_BSLASH;
    case '#': return C_BAD_HASH;
    case '?': return C_BAD_QUERY;
    default: return C_OK; /* the printable rest, including " < > [ ] ^ ` { | } (see docs/routing.md) */
    }
}

static inline bool is_alnum(unsigned c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

/* RFC 3986 unreserved: ALPHA DIGIT - . _ ~ */
static inline bool unreserved(unsigned c)
{
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static inline int hexval(unsigned c)
{
    if (c >= '0' && c <= '9') return (int)(c - '0');
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    return -1;
}

static const char HEX[] = "0123456789ABCDEF";

typedef struct {
    const char *in;
    char *out;
    size_t o;       /* output length so far */
    bool dirty;     /* out holds the output; otherwise the output is in[0 .. o) */
} wr_t;

static inline void put(wr_t *w, char c)
{
    if (!w->dirty) {
        if (w->in[w->o] == c) {
            w->o++;
            return;
        }
        w->dirty = true;
        if (w->out != w->in) memcpy(w->out, w->in, w->o);
    }
    w->out[w->o++] = c;
}

static inline const char *obuf(const wr_t *w) { return w->dirty ? w->out : w->in; }

/* A lax UTF-8 decoder turns an overlong form into the ASCII byte it encodes (%C0%AF is '/',
 * %C0%AE is '.', %E0%80%AF is '/'), so a lead byte that can only start an overlong (or, F8-FF,
 * no valid) sequence followed by a continuation byte is refused. Plain Latin-1 bytes pass. */
static bool overlong(unsigned lead, unsigned c)
{
    if (c < 0x80 || c > 0xbf) return false;
    if (lead == 0xc0 || lead == 0xc1 || lead >= 0xf8) return true;
    if (lead == 0xe0) return c < 0xa0;
    if (lead == 0xf0) return c < 0x90;
    return false;
}

/* Ends the segment out[*seg .. o): removes it if it is "." or "..", and writes the '/' that
 * follows when `more` (unless merged away). Returns NULL or a reason. */
static const char *end_segment(wr_t *w, const mr_path_policy_t *pol, size_t *seg, bool param, bool more)
{
    const char *b = obuf(w);
    size_t s = *seg, n = w->o - s, name = n;
    if (param) {
        const char *semi = memchr(b + s, ';', n);
        name = (size_t)(semi - (b + s));
    }
    bool dot1 = name == 1 && b[s] == '.';
    bool dot2 = name == 2 && b[s] == '.' && b[s + 1] == '.';
    if (param && (dot1 || dot2)) return "dot-segment with ';' parameters";
    if (param && more && pol->path_params == MR_PATH_PARAMS_LAST) return "';' parameters before the last segment";
    if (dot1) {
        w->o = s; /* the '/' before it stays: "/a/." -> "/a/" */
    } else if (dot2) {
        if (s == 1) return "dot-segment above the root";
        size_t j = s - 1; /* b[j] is the '/' before ".."; drop the segment before it */
        while (j > 0 && b[j - 1] != '/') j--;
        w->o = *seg = j;
    } else if (more) {
        if (n > 0 || !pol->merge_slashes) put(w, '/');
        *seg = w->o;
    }
    return NULL;
}

int mr_path_normalize(const mr_path_policy_t *pol, const char *in, size_t len, char *out, size_t cap,
                      size_t *outlen, const char **why)
{
    static const mr_path_policy_t defaults = MR_PATH_POLICY_DEFAULT;
    const char *err = NULL;
    if (!pol) pol = &defaults;
    if (len == 0) { err = "empty path"; goto refuse; }
    if (in[0] != '/') { err = "path does not start with '/'"; goto refuse; }
    if (cap < len) { err = "output buffer too small"; goto refuse; }

    wr_t w = { in, out, 1, false };
    size_t i = 1, seg = 1;
    bool param = false;
    unsigned prev = 0; /* the previous unit's byte if it was %-encoded, else 0 */
    while (i < len) {
        unsigned c = (unsigned char)in[i];
        bool sep = false;
        switch (cls_of(c)) {
        case C_OK:
            put(&w, (char)c);
            i++;
            prev = 0;
            continue;
        case C_SEMI:
            if (pol->path_params == MR_PATH_PARAMS_REJECT) { err = "';' parameters in path"; goto refuse; }
            param = true;
            put(&w, ';');
            i++;
            prev = 0;
            continue;
        case C_SLASH:
            sep = true;
            i++;
            prev = 0;
            break;
        case C_PCT: {
            int h1 = len - i >= 3 ? hexval((unsigned char)in[i + 1]) : -1;
            int h2 = len - i >= 3 ? hexval((unsigned char)in[i + 2]) : -1;
            if (h1 < 0 || h2 < 0) { err = "invalid %-encoding"; goto refuse; }
            unsigned d = (unsigned)(h1 << 4 | h2);
            i += 3;
            if (overlong(prev, d)) { err = "overlong UTF-8 in %-encoding"; goto refuse; }
            prev = d;
            if (unreserved(d)) {
                put(&w, (char)d);
            } else if (d < 0x20 || d == 0x7f) {
                err = "encoded control byte in path";
                goto refuse;
            } else if (d == '/' || d == '\\') {
                if (pol->escaped_slashes == MR_PATH_SLASHES_DECODE) {
                    sep = true;
                    break;
                }
                if (pol->escaped_slashes != MR_PATH_SLASHES_KEEP) {
                    err = d == '/' ? "encoded '/' (%2F) in path" : "encoded '\\' (%5C) in path";
                    goto refuse;
                }
                put(&w, '%'), put(&w, HEX[h1]), put(&w, HEX[h2]);
            } else {
                put(&w, '%'), put(&w, HEX[h1]), put(&w, HEX[h2]);
            }
            continue;
        }
        default:
            err = bad_reason[cls_of(c)];
            goto refuse;
        }
        if (sep) {
            if ((err = end_segment(&w, pol, &seg, param, true))) goto refuse;
            param = false;
        }
    }
    if ((err = end_segment(&w, pol, &seg, param, false))) goto refuse;

    if (!w.dirty && w.o == len) {
        if (outlen) *outlen = len;
        return MR_PATH_SAME;
    }
    if (!w.dirty && out != in) memcpy(out, in, w.o);
    if (outlen) *outlen = w.o;
    return MR_PATH_CHANGED;

refuse:
    if (why) *why = err;
    return MR_PATH_REFUSED;
}

static bool host_byte(unsigned c)
{
    return is_alnum(c) || c == '-' || c == '_';
}

int mr_host_normalize(const char *in, size_t len, char *out, size_t cap, size_t *outlen, int *port,
                      const char **why)
{
    const char *err = NULL;
    size_t name = 0, rest = 0; /* in[0 .. name) is the name, in[rest ..] ":port" or nothing */
    int p = -1;
    if (len == 0) { err = "empty host"; goto refuse; }
    if (cap < len) { err = "output buffer too small"; goto refuse; }
    if (in[0] == '[') {
        const char *rb = memchr(in, ']', len);
        if (!rb) { err = "unterminated IPv6 literal in host"; goto refuse; }
        name = rest = (size_t)(rb - in) + 1;
        char lit[INET6_ADDRSTRLEN];
        size_t n = name - 2;
        unsigned char addr[16];
        if (n == 0 || n >= sizeof lit) { err = "invalid IPv6 literal in host"; goto refuse; }
        for (size_t k = 0; k < n; k++) {
            unsigned c = (unsigned char)in[1 + k];
            if (hexval(c) < 0 && c != ':' && c != '.') { err = "invalid IPv6 literal in host"; goto refuse; }
            lit[k] = (char)c;
        }
        lit[n] = 0;
        if (inet_pton(AF_INET6, lit, addr) != 1) { err = "invalid IPv6 literal in host"; goto refuse; }
    } else {
        const char *colon = memchr(in, ':', len);
        name = rest = colon ? (size_t)(colon - in) : len;
    }
    if (rest < len) {
        if (in[rest] != ':') { err = "invalid bytes after IPv6 literal in host"; goto refuse; }
        size_t digits = len - rest - 1;
        if (digits > 5) { err = "invalid port in host"; goto refuse; }
        if (digits) p = 0;
        for (size_t k = rest + 1; k < len; k++) {
            unsigned c = (unsigned char)in[k];
            if (c < '0' || c > '9') { err = "invalid port in host"; goto refuse; }
            p = p * 10 + (int)(c - '0');
        }
        if (p > 65535) { err = "invalid port in host"; goto refuse; }
    }
    if (in[0] == '[') {
        for (size_t k = 0; k < name; k++) out[k] = (char)(in[k] | (hexval((unsigned char)in[k]) >= 10 ? 0x20 : 0));
    } else {
        if (name > 0 && in[name - 1] == '.') name--; /* "example.com." is the same name */
        if (name == 0) { err = "empty host"; goto refuse; }
        if (name > 253) { err = "host name too long"; goto refuse; }
        size_t label = 0;
        for (size_t k = 0; k < name; k++) {
            unsigned c = (unsigned char)in[k];
            if (c == '.') {
                if (label == 0) { err = "empty label in host"; goto refuse; }
                label = 0;
            } else if (host_byte(c)) {
                if (++label > 63) { err = "host label too long"; goto refuse; }
            } else {
                err = "invalid byte in host";
                goto refuse;
            }
            out[k] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
        }
        if (label == 0) { err = "empty label in host"; goto refuse; }
    }
    if (outlen) *outlen = name;
    if (port) *port = p;
    return 0;

refuse:
    if (why) *why = err;
    return -1;
}

/* Length of the prefix that decides matching: without its trailing slash, except "/" itself. */
static size_t prefix_len(const char *prefix, size_t plen)
{
    return plen > 1 && prefix[plen - 1] == '/' ? plen - 1 : plen;
}

bool mr_path_prefix_match(const char *prefix, size_t plen, const char *path, size_t len)
{
    if (plen == 0 || prefix[0] != '/' || len == 0 || path[0] != '/') return false;
    plen = prefix_len(prefix, plen);
    if (plen == 1) return true;
    if (len < plen || memcmp(prefix, path, plen) != 0) return false;
    return len == plen || path[plen] == '/' || path[plen] == ';';
}

bool mr_path_exact_match(const char *exact, size_t elen, const char *path, size_t len)
{
    if (elen == len) return memcmp(exact, path, len) == 0;
    if (elen > len) return false;
    /* the first ';' of the last segment ends what an exact route compares */
    size_t k = len;
    while (k > 0 && path[k - 1] != '/') k--;
    const char *semi = memchr(path + k, ';', len - k);
    return semi && (size_t)(semi - path) == elen && memcmp(exact, path, elen) == 0;
}

int mr_path_strip_prefix(const char *prefix, size_t plen, const char *path, size_t len, size_t *off)
{
    if (!mr_path_prefix_match(prefix, plen, path, len)) return -1;
    plen = prefix_len(prefix, plen);
    if (plen == 1) {
        *off = 0;
        return 0;
    }
    *off = plen;
    return len == plen || path[plen] == ';' ? 1 : 0;
}
