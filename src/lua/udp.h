#ifndef MR_LUA_UDP_H
#define MR_LUA_UDP_H
/* UDP cosockets (src/lua/udp.c): per worker thread state. The Lua-facing functions are MR_EXPORT
 * FFI entry points declared in lua/moonring/udp.lua, not here.
 *
 * Thread affinity: the worker thread that called mr_udp_thread_init; nothing here fires a
 * callback synchronously. Without init (config check, unit tests) a socket cannot be made. */
#include "loop/loop.h"
#include "net/resolver.h"

/* Binds the calling thread's UDP sockets to its loop and resolver (host names in setpeername);
 * both must outlive mr_udp_thread_free. */
void mr_udp_thread_init(mr_loop_t *loop, mr_resolver_t *res);
/* After the loop was freed, before the resolver is: closes and frees every UDP socket of the
 * thread (cancelling its lookup). */
void mr_udp_thread_free(void);

#endif
