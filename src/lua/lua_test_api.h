/* A request without a server, for the FFI unit specs and bench/micro/lua_api: a calloc'd
 * mr_req_t whose request head was parsed by the real HTTP/1 codec, so the Lua request API
 * (src/lua/api.c, moonring.runtime's req/res objects) runs over the same C code as in the proxy.
 * Not for use inside the server. Thread affinity: the caller's thread; nothing is shared. */
#ifndef MR_LUA_TEST_API_H
#define MR_LUA_TEST_API_H

#include <stddef.h>

/* Parses `head` (a full request head, CRLF CRLF included). Returns the client, or NULL if the
 * head does not parse. Free with mr_lua_test_client_free. */
void *mr_lua_test_client_new(const char *head, size_t n);
/* Back to the freshly parsed head: drops header edits, target override and local response.
 * MR_FFI_OK, or MR_FFI_BAD_ARG if the head no longer parses. */
int mr_lua_test_client_reset(void *c);
/* Forgets a local response (req:respond) so that the next respond is accepted again. */
void mr_lua_test_client_unrespond(void *c);
/* Makes res:* act on a (header-less) response, as when an upstream answered: the response
 * phase's view without an upstream connection. */
void mr_lua_test_client_respond_as_upstream(void *c);
void mr_lua_test_client_free(void *c);

#endif
