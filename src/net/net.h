/* Sockets and addresses. mr_net_resolve (getaddrinfo) blocks: call it from the main thread only,
 * at config load; workers resolve names through net/resolver.h. The mr_addr_* parsers are pure
 * functions (any thread, no allocation, no syscall). Everything else here is a plain syscall
 * wrapper returning 0/fd or -errno. */
#ifndef MR_NET_H
#define MR_NET_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct {
    struct sockaddr_storage sa;
    socklen_t len;
} mr_addr_t;

/* The longest host accepted: a DNS name of 253 characters plus the trailing dot of an absolute
 * name. */
#define MR_HOST_MAX 254

/* What mr_addr_parse* return on success. */
enum { MR_ADDR_NUMERIC = 0, MR_ADDR_NAME = 1 };

/* A parsed "host:port". host is the host as written, without the brackets of an IPv6 literal,
 * NUL-terminated. For a numeric host, addr is the address with the port set; for a name it is
 * zeroed (resolve it: net/resolver.h). */
typedef struct {
    char host[MR_HOST_MAX + 1];
    size_t hlen;
    uint16_t port;
    bool is_name;
    mr_addr_t addr;
} mr_hostport_t;

/* Parses "host:port": host is an IPv4 address (a full dotted quad), a bracketed IPv6 address
 * ("[::1]:80"), or a host name. A name is made of dot-separated labels of letters, digits, '-'
 * and '_', each 1-63 characters and not starting with '-', at most MR_HOST_MAX characters in all;
 * one trailing dot (an absolute name) is allowed. A host of digits and dots that is not a valid
 * IPv4 address is refused rather than handed to getaddrinfo, which would read "1.2.3" as
 * 1.2.0.3. The port is 1-65535 in decimal.
 * Returns MR_ADDR_NUMERIC or MR_ADDR_NAME, or -EINVAL with *why (when why is not NULL) set to a
 * static message such as "port must be 1-65535" or "invalid character in host name". */
int mr_addr_parse(const char *s, size_t n, mr_hostport_t *out, const char **why);
/* The same for a host given without its port (a cosocket's connect(host, port)): an IPv6
 * literal may also come without brackets ("::1"). */
int mr_addr_parse_host(const char *host, size_t n, int port, mr_hostport_t *out, const char **why);
/* Sets the port of an IPv4 or IPv6 address. */
void mr_addr_set_port(mr_addr_t *a, uint16_t port);

/* Resolves host:port (numeric or name) to the first IPv4/IPv6 address. Main thread only. */
int mr_net_resolve(const char *host, int port, mr_addr_t *out);
/* Non-blocking SO_REUSEPORT listener bound to addr. Returns fd or -errno. */
int mr_net_listen(const mr_addr_t *addr, int backlog);
/* Non-blocking TCP socket for an outgoing connection (TCP_NODELAY set). Returns fd or -errno. */
int mr_net_socket_for(const mr_addr_t *addr);
int mr_net_set_nodelay(int fd);
/* "a.b.c.d" or "::1" of a peer, into buf. Returns length. */
int mr_net_peer_ip(int fd, char *buf, size_t len);

#endif
