/* C functions that lua-resty-* libraries reach through FFI in nginx's own symbol table (they
 * declare them with ffi.cdef and call ffi.C.<name>): resty.string's to_hex uses ngx_hex_dump,
 * and some libraries parse numbers with ngx_atoi. Exported under nginx's names and signatures
 * so those libraries run unmodified on moonring (lua = { ngx = true }). Pure functions. */
#include <stddef.h>
#include <stdint.h>

#include <zlib.h>

#include "util/export.h"

/* Writes 2*len lowercase hex digits of src to dst (not NUL-terminated); returns dst + 2*len. */
MR_EXPORT unsigned char *ngx_hex_dump(unsigned char *dst, const unsigned char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    while (len--) {
        *dst++ = (unsigned char)hex[*src >> 4];
        *dst++ = (unsigned char)hex[*src++ & 0xf];
    }
    return dst;
}

/* The non-negative decimal number in line[0..n), or -1 (NGX_ERROR) when it is empty, has a
 * character other than a digit, or overflows. */
MR_EXPORT intptr_t ngx_atoi(const unsigned char *line, size_t n)
{
    if (n == 0) return -1;
    intptr_t value = 0, cutoff = INTPTR_MAX / 10, cutlim = INTPTR_MAX % 10;
    for (; n--; line++) {
        if (*line < '0' || *line > '9') return -1;
        if (value >= cutoff && (value > cutoff || *line - '0' > cutlim)) return -1;
        value = value * 10 + (*line - '0');
    }
    return value;
}

/* ngx.crc32_long / crc32_short: zlib's CRC-32 (the same polynomial as nginx's ngx_crc32). */
MR_EXPORT uint32_t mr_crc32(const unsigned char *p, size_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    while (n > 0) {
        uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return (uint32_t)c;
}
