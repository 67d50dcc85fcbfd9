#include "net.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* One rtnetlink request with its attributes, built in place. */
struct nlreq {
	union {
		struct nlmsghdr h;
		uint8_t raw[512];
	} u;
};

static void *nl_begin(struct nlreq *r, uint16_t type, uint16_t flags, size_t body)
{
	memset(r, 0, sizeof *r);
	r->u.h.nlmsg_type = type;
	r->u.h.nlmsg_flags = (uint16_t)(NLM_F_REQUEST | NLM_F_ACK | flags);
	r->u.h.nlmsg_len = (uint32_t)NLMSG_LENGTH(body);
	return NLMSG_DATA(&r->u.h);
}

static void nl_attr(struct nlreq *r, uint16_t type, const void *data, size_t len)
{
	struct rtattr *a = (struct rtattr *)(r->u.raw + NLMSG_ALIGN(r->u.h.nlmsg_len));
	a->rta_type = type;
	a->rta_len = (uint16_t)RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	r->u.h.nlmsg_len = (uint32_t)(NLMSG_ALIGN(r->u.h.nlmsg_len) + RTA_ALIGN(a->rta_len));
}

/* One rtnetlink socket for all requests: opening one costs ≈ 2 ms under TCG. */
static int nl_fd = -1;
static uint32_t nl_seq;

void net_close(void)
{
	if (nl_fd >= 0)
		close(nl_fd);
	nl_fd = -1;
}

/* Sends the request; the replies (up to cap bytes) go to reply. Returns the length read, or -1. */
static ssize_t nl_send(struct nlreq *r, uint8_t *reply, size_t cap)
{
	if (nl_fd < 0 && (nl_fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)) < 0)
		return -1;
	r->u.h.nlmsg_seq = ++nl_seq;
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	if (sendto(nl_fd, r, r->u.h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
		return -1;
	for (int tries = 0; tries < 16; tries++) {
		ssize_t n = recv(nl_fd, reply, cap, 0);
		if (n < 0 && errno == EINTR)
			continue;
		/* A late answer to an earlier request carries that request's sequence number: skip it. */
		if (n >= (ssize_t)sizeof(struct nlmsghdr) && ((struct nlmsghdr *)reply)->nlmsg_seq != nl_seq)
			continue;
		return n;
	}
	errno = EPROTO;
	return -1;
}

/* Sends the request and reads the kernel's ack: 0, or -1 with errno from the kernel's answer. */
static int nl_call(struct nlreq *r)
{
	uint8_t reply[1024];
	ssize_t n = nl_send(r, reply, sizeof reply);
	for (struct nlmsghdr *h = (struct nlmsghdr *)reply; n > 0 && NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
		if (h->nlmsg_type != NLMSG_ERROR)
			continue;
		int e = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
		if (e == 0)
			return 0;
		errno = -e;
		return -1;
	}
	if (n >= 0)
		errno = EPROTO;
	return -1;
}

/* The kernel's carrier flag (IFLA_CARRIER) of a link, up or down: 1, 0, or -1 on error. */
static int link_carrier(int ifindex)
{
	struct nlreq r;
	struct ifinfomsg *ifi = nl_begin(&r, RTM_GETLINK, 0, sizeof *ifi);
	r.u.h.nlmsg_flags = NLM_F_REQUEST;
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = ifindex;
	static uint8_t reply[16384];
	ssize_t n = nl_send(&r, reply, sizeof reply);
	int carrier = -1;
	for (struct nlmsghdr *h = (struct nlmsghdr *)reply; n > 0 && NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
		if (h->nlmsg_type != RTM_NEWLINK)
			continue;
		size_t len = h->nlmsg_len - NLMSG_LENGTH(sizeof(struct ifinfomsg));
		for (struct rtattr *a = IFLA_RTA(NLMSG_DATA(h)); RTA_OK(a, len); a = RTA_NEXT(a, len))
			if (a->rta_type == IFLA_CARRIER && RTA_PAYLOAD(a) >= 1)
				carrier = *(uint8_t *)RTA_DATA(a) ? 1 : 0;
	}
	return carrier;
}

static int link_set(int ifindex, unsigned mtu)
{
	struct nlreq r;
	struct ifinfomsg *ifi = nl_begin(&r, RTM_NEWLINK, 0, sizeof *ifi);
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = ifindex;
	ifi->ifi_change = IFF_UP;
	ifi->ifi_flags = IFF_UP;
	if (mtu) {
		uint32_t m = mtu;
		nl_attr(&r, IFLA_MTU, &m, sizeof m);
	}
	return nl_call(&r);
}

static int ifindex_of(const char *ifname)
{
	char path[128], value[32];
	uint64_t v;
	snprintf(path, sizeof path, "/sys/class/net/%s/ifindex", ifname);
	if (read_small_file(path, value, sizeof value) < 0 || parse_u64(value, strlen(value), &v) < 0 || v == 0 || v > INT32_MAX)
		return -1;
	return (int)v;
}

int net_loopback_up(char *err, size_t cap)
{
	int lo = ifindex_of("lo");
	if (lo < 0)
		FAIL("no loopback interface");
	if (link_set(lo, 0) < 0)
		FAIL("bring lo up: %s", strerror(errno));
	return 0;
}

/* The first interface `match` accepts, polling while the drivers register them. */
static int find_iface(int (*match)(const char *name, const void *arg), const void *arg, unsigned wait_ms, char *ifname, size_t ifcap)
{
	uint64_t deadline = monotonic_ms() + wait_ms;
	for (;;) {
		DIR *d = opendir("/sys/class/net");
		struct dirent *e;
		int found = 0;
		while (d && !found && (e = readdir(d)) != NULL) {
			if (e->d_name[0] == '.' || !match(e->d_name, arg))
				continue;
			snprintf(ifname, ifcap, "%s", e->d_name);
			found = 1;
		}
		if (d)
			closedir(d);
		if (found)
			return 0;
		if (monotonic_ms() >= deadline)
			return -1;
		sleep_ms(5);
	}
}

/* Its address is arg (a lowercase MAC). */
static int has_mac(const char *name, const void *arg)
{
	char path[300], value[64];
	snprintf(path, sizeof path, "/sys/class/net/%s/address", name);
	return read_small_file(path, value, sizeof value) == 17 && strcmp(value, (const char *)arg) == 0;
}

/* A device behind it: a NIC, not lo or a virtual link. */
static int has_device(const char *name, const void *arg)
{
	char path[300];
	struct stat st;
	snprintf(path, sizeof path, "/sys/class/net/%s/device", name);
	return lstat(path, &st) == 0;
}

static int find_by_mac(const char *mac, unsigned wait_ms, char *ifname, size_t ifcap)
{
	return find_iface(has_mac, mac, wait_ms, ifname, ifcap);
}

int net_find_nic(unsigned wait_ms, char *ifname, size_t ifcap)
{
	return find_iface(has_device, NULL, wait_ms, ifname, ifcap);
}

int net_set_mac(const char *ifname, const char *mac, char *err, size_t cap)
{
	unsigned b[6];
	uint8_t addr[6];
	if (sscanf(mac, "%2x:%2x:%2x:%2x:%2x:%2x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		FAIL("bad MAC %s", mac);
	for (int i = 0; i < 6; i++)
		addr[i] = (uint8_t)b[i];
	int ifindex = ifindex_of(ifname);
	if (ifindex < 0)
		FAIL("%s: no ifindex", ifname);
	struct nlreq r;
	struct ifinfomsg *ifi = nl_begin(&r, RTM_NEWLINK, 0, sizeof *ifi);
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = ifindex;
	nl_attr(&r, IFLA_ADDRESS, addr, sizeof addr);
	if (nl_call(&r) < 0)
		FAIL("set the MAC of %s to %s: %s", ifname, mac, strerror(errno));
	return 0;
}

int net_del_address(const char *ifname, const char *address, unsigned prefix_len, char *err, size_t cap)
{
	struct in_addr addr;
	if (inet_pton(AF_INET, address, &addr) != 1)
		FAIL("bad address %s", address);
	int ifindex = ifindex_of(ifname);
	if (ifindex < 0)
		FAIL("%s: no ifindex", ifname);
	struct nlreq r;
	struct ifaddrmsg *ifa = nl_begin(&r, RTM_DELADDR, 0, sizeof *ifa);
	ifa->ifa_family = AF_INET;
	ifa->ifa_prefixlen = (uint8_t)prefix_len;
	ifa->ifa_index = (uint32_t)ifindex;
	nl_attr(&r, IFA_LOCAL, &addr, sizeof addr);
	if (nl_call(&r) < 0 && errno != EADDRNOTAVAIL)
		FAIL("remove address %s/%u from %s: %s", address, prefix_len, ifname, strerror(errno));
	return 0;
}

int net_configure(const struct net_config *n, unsigned nic_wait_ms, unsigned carrier_wait_ms, char *ifname, size_t ifcap, char *err, size_t cap)
{
	struct in_addr addr, gw;
	if (inet_pton(AF_INET, n->address, &addr) != 1 || inet_pton(AF_INET, n->gateway, &gw) != 1)
		FAIL("bad address or gateway");
	if (find_by_mac(n->mac, nic_wait_ms, ifname, ifcap) < 0)
		FAIL("no network interface with MAC %s (is the NIC attached, and virtio_net loaded?)", n->mac);
	int ifindex = ifindex_of(ifname);
	if (ifindex < 0)
		FAIL("%s: no ifindex", ifname);
	/*
	 * Carrier first, then up: opening a link with carrier activates its queueing discipline at once,
	 * so the first packet goes out. (virtio-net reports carrier from a work item right after the probe;
	 * the operstate lags behind by up to a second of the kernel's linkwatch rate limit, so it is not
	 * what we wait for.)
	 */
	uint64_t deadline = monotonic_ms() + carrier_wait_ms;
	int carrier;
	while ((carrier = link_carrier(ifindex)) != 1) {
		if (monotonic_ms() >= deadline)
			FAIL("%s (MAC %s) has no carrier after %u ms%s", ifname, n->mac, carrier_wait_ms, carrier < 0 ? " (cannot read the link state)" : "");
		sleep_ms(2);
	}
	if (link_set(ifindex, n->mtu) < 0)
		FAIL("bring %s up%s: %s", ifname, n->mtu ? " with the MTU" : "", strerror(errno));

	uint32_t mask = n->prefix_len >= 32 ? 0xffffffffu : ~(0xffffffffu >> n->prefix_len);
	struct nlreq r;
	struct ifaddrmsg *ifa = nl_begin(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, sizeof *ifa);
	ifa->ifa_family = AF_INET;
	ifa->ifa_prefixlen = (uint8_t)n->prefix_len;
	ifa->ifa_scope = RT_SCOPE_UNIVERSE;
	ifa->ifa_index = (uint32_t)ifindex;
	nl_attr(&r, IFA_LOCAL, &addr, sizeof addr);
	nl_attr(&r, IFA_ADDRESS, &addr, sizeof addr);
	if (n->prefix_len < 31) {
		struct in_addr brd = {.s_addr = addr.s_addr | htonl(~mask)};
		nl_attr(&r, IFA_BROADCAST, &brd, sizeof brd);
	}
	if (nl_call(&r) < 0)
		FAIL("set address %s/%u on %s: %s", n->address, n->prefix_len, ifname, strerror(errno));

	struct rtmsg *rt = nl_begin(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, sizeof *rt);
	rt->rtm_family = AF_INET;
	rt->rtm_table = RT_TABLE_MAIN;
	rt->rtm_protocol = RTPROT_BOOT;
	rt->rtm_scope = RT_SCOPE_UNIVERSE;
	rt->rtm_type = RTN_UNICAST;
	/* A gateway outside the subnet (a /32 address, as some clouds hand out) is still on the link. */
	if ((gw.s_addr & htonl(mask)) != (addr.s_addr & htonl(mask)))
		rt->rtm_flags = RTNH_F_ONLINK;
	uint32_t oif = (uint32_t)ifindex;
	nl_attr(&r, RTA_GATEWAY, &gw, sizeof gw);
	nl_attr(&r, RTA_OIF, &oif, sizeof oif);
	if (nl_call(&r) < 0)
		FAIL("add default route via %s on %s: %s", n->gateway, ifname, strerror(errno));
	return 0;
}

int net_wait_link(const char *ifname, unsigned wait_ms, char *err, size_t cap)
{
	char path[128], state[32] = "";
	snprintf(path, sizeof path, "/sys/class/net/%s/carrier", ifname);
	uint64_t deadline = monotonic_ms() + wait_ms;
	for (;;) {
		if (read_small_file(path, state, sizeof state) >= 0 && strcmp(state, "1") == 0)
			return 0;
		if (monotonic_ms() >= deadline)
			FAIL("%s lost its carrier (carrier %s after %u ms)", ifname, state[0] ? state : "unreadable", wait_ms);
		sleep_ms(2);
	}
}
