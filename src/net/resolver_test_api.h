/* A harness for the resolver (net/resolver.h) and the address parser (net/net.h), for the FFI
 * unit specs (spec/unit/resolver_spec.lua). Not for use inside the server.
 *
 * mr_resolver_test_new creates a loop on the calling thread and a resolver on it; the loop runs
 * only inside mr_resolver_test_run. Lookups go to slots (0..63) that record every callback.
 * Thread affinity: the calling thread, except the fake getaddrinfo, which helper threads run.
 *
 * The resolver always runs getaddrinfo through a counting wrapper. Names ending in ".fake" are
 * answered by a fake instead of the system:
 *   nx*.fake      no such name (EAI_NONAME)
 *   again*.fake   temporary failure (EAI_AGAIN)
 *   dual*.fake    ::1, 127.0.0.2 and 127.0.0.2 again, in that order
 *   many*.fake    20 addresses, 127.0.1.1 to 127.0.1.20
 *   hold*.fake    blocks while mr_resolver_test_hold(1) is on, then 127.0.0.3
 *   other .fake   127.0.0.1 */
#ifndef MR_RESOLVER_TEST_API_H
#define MR_RESOLVER_TEST_API_H

#include <stddef.h>
#include <stdint.h>

typedef struct mr_resolver_test mr_resolver_test_t;

/* backend: 0 auto, 1 io_uring, 2 epoll. Zero options take the resolver's defaults. NULL on
 * failure (no such backend here). */
mr_resolver_test_t *mr_resolver_test_new(int backend, uint32_t ttl_ms, uint32_t negative_ttl_ms, uint32_t cache_size,
                                         uint32_t max_pending, uint32_t threads);
/* "io_uring" or "epoll". */
const char *mr_resolver_test_backend(mr_resolver_test_t *t);
/* Starts a lookup in a free slot. Returns the slot, or what mr_resolver_lookup returned (< 0).
 * chain: once answered, the slot looks the same host up again into a new slot (from inside
 * the callback), whose number mr_resolver_test_result reports as "chained=N". */
int mr_resolver_test_lookup(mr_resolver_test_t *t, const char *host, int port, int chain);
void mr_resolver_test_cancel(mr_resolver_test_t *t, int slot);
/* What mr_resolver_cached returns; the addresses as text into out. */
int mr_resolver_test_cached(mr_resolver_test_t *t, const char *host, int port, char *out, size_t len);
/* Runs the loop until no slot is waiting (all == 1) or for ms. Returns the slots still waiting. */
int mr_resolver_test_run(mr_resolver_test_t *t, int ms, int all);
/* How many times the slot's callback ran (0, or 1; more is a bug), and "rc=<rc> n=<n> <addr>..."
 * into out. */
int mr_resolver_test_result(mr_resolver_test_t *t, int slot, char *out, size_t len);
/* Callbacks that ran from inside a submitting call (must stay 0). */
int mr_resolver_test_sync_calls(mr_resolver_test_t *t);
/* A field of mr_resolver_stats_t by name ("lookups", "hits", ...); -1 for an unknown name. */
long long mr_resolver_test_stat(mr_resolver_test_t *t, const char *name);
/* Closes the resolver on the running loop (mr_resolver_close) and runs the loop until it is
 * freed, at most ms; then frees the loop. Returns 0 if the resolver was freed, -1 if not, -2 if a
 * request it dropped was called back meanwhile. */
int mr_resolver_test_close(mr_resolver_test_t *t, int ms);
/* Frees the loop first, then the resolver (the worker's order at exit, mr_resolver_free). */
void mr_resolver_test_free_after_loop(mr_resolver_test_t *t);
unsigned mr_resolver_test_live(void);

/* The fake's state, shared by every harness: hold on/off (off releases blocked lookups), calls
 * of a name (exact, as the resolver passed it), lookups blocked right now, and a reset. */
void mr_resolver_test_hold(int on);
int mr_resolver_test_calls(const char *name);
int mr_resolver_test_blocked(void);
void mr_resolver_test_reset(void);

/* mr_addr_parse (port < 0) or mr_addr_parse_host(host, port). Returns the kind (0 numeric,
 * 1 name) or -EINVAL; out gets "host=<host> port=<port> addr=<numeric address>" or the reason. */
int mr_resolver_test_parse(const char *s, size_t n, int port, char *out, size_t len);

#endif
