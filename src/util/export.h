/* The FFI surface: what a C function needs to be called from Lua through LuaJIT FFI.
 *
 * The core is compiled with -fvisibility=hidden, so a function is visible to ffi.C (in the
 * moonring binary, linked with -rdynamic) and to ffi.load (libmoonring_ffi.so, the unit specs'
 * library) only when it is marked MR_EXPORT. Mark the definition or the declaration in the header;
 * nothing else needs exporting. Test-only entry points live in src/<module>/<name>_test_api.c,
 * which only libmoonring_ffi.so links.
 *
 * Return codes (lua-resty-core's base.lua model): every exported function that lua/moonring/
 * calls returns one of the MR_FFI_* codes below, or, where it says so, a count >= 0 instead of
 * MR_FFI_OK. Lua reads them only by name from lua/moonring/base.lua, which mirrors this list:
 * keep both in step. Failures that carry more than a code (a system or TLS error) are described by
 * a string the module's own exported function returns (for example mr_cosock_error), so Lua never
 * decodes errno values. Engine functions exported only for unit specs (tls.h, loop.h) keep their
 * module's C conventions.
 *
 * The first values are nginx's NGX_OK, NGX_ERROR, NGX_AGAIN, NGX_BUSY and NGX_DECLINED (as
 * lua-resty-core's FFI_* are); -4 (NGX_DONE) is unused. */
#ifndef MR_EXPORT_H
#define MR_EXPORT_H

/* `used`: emitted even when nothing in C calls it. */
#define MR_EXPORT __attribute__((visibility("default"), used))

#define MR_FFI_OK            0   /* done */
#define MR_FFI_ERROR        -1   /* failed; the module's error-string function says why */
#define MR_FFI_AGAIN        -2   /* in progress: yield until woken, then collect the result */
#define MR_FFI_BUSY         -3   /* the object is running another operation */
#define MR_FFI_DECLINED     -5   /* not found: no such key, header, upstream, host name */
#define MR_FFI_BAD_ARG      -6   /* an argument is out of its domain (empty key, bad host name) */
#define MR_FFI_BAD_CONTEXT  -7   /* not allowed now: not connected, already sent, not on a worker */
#define MR_FFI_NOMEM        -8   /* out of memory, or the object's memory budget is too small */
#define MR_FFI_TIMEOUT      -9   /* the operation's timeout expired */
#define MR_FFI_CLOSED      -10   /* the connection is closed (by the peer, or locally) */
#define MR_FFI_REFUSED     -11   /* connection refused */
#define MR_FFI_RESET       -12   /* connection reset by the peer */
#define MR_FFI_EXISTS      -13   /* the key exists already (add) */
#define MR_FFI_BAD_TYPE    -14   /* the stored value has the wrong type for the operation */
#define MR_FFI_TOO_SMALL   -15   /* the caller's buffer is too small: *len holds the size needed */
#define MR_FFI_LIMIT       -16   /* over a limit: a size (the caller's max) or a count cap */
#define MR_FFI_RETIRED     -17   /* the object belongs to a configuration a reload retired */

#endif
