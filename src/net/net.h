/* Sockets and addresses. Resolution (getaddrinfo) blocks: call it from the main thread only,
 * at config load. Everything else here is a plain syscall wrapper returning 0/fd or -errno. */
#ifndef MR_NET_H
#define MR_NET_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct {
    struct sockaddr_storage sa;
    socklen_t len;
} mr_addr_t;

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
