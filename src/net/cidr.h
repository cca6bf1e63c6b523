/* IP networks ("10.0.0.0/8", "::1/128"): parsing and matching a textual address against a list.
 * Pure functions, any thread. */
#ifndef MR_NET_CIDR_H
#define MR_NET_CIDR_H

#include <stdbool.h>
#include <stdint.h>

typedef struct mr_cidr {
    int family;                 /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int bits;
} mr_cidr_t;

/* Parses "addr" or "addr/bits". Returns 0 or -1. */
int mr_cidr_parse(const char *s, mr_cidr_t *out);
/* Whether the textual address ip (an IPv4-mapped IPv6 one counts as IPv4) is in one of nets. */
bool mr_cidr_match(const mr_cidr_t *nets, int n, const char *ip);
/* The family of textual address ip (AF_INET, AF_INET6) with its bytes in a, or 0. */
int mr_ip_parse(const char *ip, uint8_t a[16]);

#endif
