#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Why a host is not a valid name, or NULL. */
static const char *name_error(const char *h, size_t n)
{
    if (n > 0 && h[n - 1] == '.') n--; /* an absolute name */
    if (n == 0) return "empty host";
    if (n > MR_HOST_MAX - 1) return "host name too long";
    size_t label = 0;
    bool numeric = true;
    for (size_t i = 0; i < n; i++) {
        char ch = h[i];
        if (ch == '.') {
            if (label == 0) return "empty label in host name";
            label = 0;
            continue;
        }
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && ch != '-' && ch != '_') return "invalid character in host name";
        if (ch == '-' && label == 0) return "host name label starts with '-'";
        if (!(ch >= '0' && ch <= '9')) numeric = false;
        if (++label > 63) return "host name label longer than 63 characters";
    }
    if (label == 0) return "empty label in host name";
    if (numeric) return "bad IPv4 address";
    return NULL;
}

void mr_addr_set_port(mr_addr_t *a, uint16_t port)
{
    if (a->sa.ss_family == AF_INET) ((struct sockaddr_in *)&a->sa)->sin_port = htons(port);
    else if (a->sa.ss_family == AF_INET6) ((struct sockaddr_in6 *)&a->sa)->sin6_port = htons(port);
}

/* host without brackets; bracketed: it was written "[...]", so only IPv6 is acceptable. */
static int parse_host(const char *h, size_t n, int port, bool bracketed, mr_hostport_t *out, const char **why)
{
    const char *msg = NULL;
    memset(out, 0, sizeof *out);
    if (port < 1 || port > 65535) { msg = "port must be 1-65535"; goto fail; }
    if (n == 0) { msg = "empty host"; goto fail; }
    if (n > MR_HOST_MAX) { msg = "host name too long"; goto fail; }
    memcpy(out->host, h, n);
    out->host[n] = 0;
    out->hlen = n;
    out->port = (uint16_t)port;
    if (memchr(h, 0, n)) { msg = "invalid character in host name"; goto fail; }
    struct sockaddr_in *v4 = (struct sockaddr_in *)&out->addr.sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->addr.sa;
    if (!bracketed && inet_pton(AF_INET, out->host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        out->addr.len = sizeof *v4;
    } else if (memchr(h, ':', n)) {
        if (inet_pton(AF_INET6, out->host, &v6->sin6_addr) != 1) { msg = "bad IPv6 address"; goto fail; }
        v6->sin6_family = AF_INET6;
        out->addr.len = sizeof *v6;
    } else if (bracketed) {
        msg = "brackets hold an IPv6 address only";
        goto fail;
    } else {
        if ((msg = name_error(h, n))) goto fail;
        out->is_name = true;
        return MR_ADDR_NAME;
    }
    mr_addr_set_port(&out->addr, out->port);
    return MR_ADDR_NUMERIC;
fail:
    if (why) *why = msg;
    memset(&out->addr, 0, sizeof out->addr);
    return -EINVAL;
}

int mr_addr_parse_host(const char *host, size_t n, int port, mr_hostport_t *out, const char **why)
{
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') return parse_host(host + 1, n - 2, port, true, out, why);
    return parse_host(host, n, port, false, out, why);
}

int mr_addr_parse(const char *s, size_t n, mr_hostport_t *out, const char **why)
{
    const char *msg = NULL;
    const char *colon = NULL;
    bool bracketed = n > 0 && s[0] == '[';
    memset(out, 0, sizeof *out);
    if (bracketed) {
        const char *close = memchr(s, ']', n);
        if (!close) { msg = "missing ']' after an IPv6 address"; goto fail; }
        if (close + 1 == s + n || close[1] != ':') { msg = "expected \"[address]:port\""; goto fail; }
        colon = close + 1;
    } else {
        for (size_t i = n; i > 0; i--)
            if (s[i - 1] == ':') { colon = s + i - 1; break; }
        if (!colon) { msg = "missing port (expected \"host:port\")"; goto fail; }
        if (memchr(s, ':', (size_t)(colon - s))) { msg = "an IPv6 address needs brackets: \"[::1]:80\""; goto fail; }
    }
    long port = 0;
    for (const char *p = colon + 1; p < s + n && port <= 65535; p++)
        port = *p >= '0' && *p <= '9' ? port * 10 + (*p - '0') : 65536;
    if (port < 1 || port > 65535) { msg = "port must be 1-65535"; goto fail; }
    if (bracketed) return parse_host(s + 1, (size_t)(colon - s) - 2, (int)port, true, out, why);
    return parse_host(s, (size_t)(colon - s), (int)port, false, out, why);
fail:
    if (why) *why = msg;
    return -EINVAL;
}

int mr_net_resolve(const char *host, int port, mr_addr_t *out)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) return rc == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
    memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int mr_net_listen(const mr_addr_t *addr, int backlog)
{
    int one = 1, rc;
    int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, (const struct sockaddr *)&addr->sa, addr->len) < 0 ||
        listen(fd, backlog) < 0) {
        rc = -errno;
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return rc;
}

int mr_net_set_nodelay(int fd)
{
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ? -errno : 0;
}

int mr_net_socket_for(const mr_addr_t *addr)
{
    int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    mr_net_set_nodelay(fd);
    return fd;
}

int mr_net_peer_ip(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    buf[0] = 0;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0) return 0;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, buf, (socklen_t)len);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, buf, (socklen_t)len);
    return (int)strlen(buf);
}
