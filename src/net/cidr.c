#include "net/cidr.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

int mr_cidr_parse(const char *s, mr_cidr_t *out)
{
    char addr[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n >= sizeof addr) return -1;
    memcpy(addr, s, n);
    addr[n] = 0;
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, addr, out->addr) == 1) out->family = AF_INET;
    else if (inet_pton(AF_INET6, addr, out->addr) == 1) out->family = AF_INET6;
    else return -1;
    int max = out->family == AF_INET ? 32 : 128;
    out->bits = slash ? atoi(slash + 1) : max;
    return out->bits < 0 || out->bits > max ? -1 : 0;
}

static bool in_net(const mr_cidr_t *c, int family, const uint8_t *a)
{
    if (c->family != family) return false;
    int full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->addr, a, (size_t)full) != 0) return false;
    if (!rest) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (c->addr[full] & mask) == (a[full] & mask);
}

int mr_ip_parse(const char *ip, uint8_t a[16])
{
    if (inet_pton(AF_INET, ip, a) == 1) return AF_INET;
    if (inet_pton(AF_INET6, ip, a) != 1) return 0;
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(a, mapped, 12) == 0) {
        memmove(a, a + 12, 4);
        return AF_INET;
    }
    return AF_INET6;
}

bool mr_cidr_match(const mr_cidr_t *nets, int n, const char *ip)
{
    uint8_t a[16];
    int fam = mr_ip_parse(ip, a);
    for (int i = 0; fam && i < n; i++)
        if (in_net(&nets[i], fam, a)) return true;
    return false;
}

