/* The guest's network: lo and the one virtio-net NIC, configured over rtnetlink (no `ip` needed in the image). */
#ifndef HM_NET_H
#define HM_NET_H

#include <stddef.h>

#include "config.h"

/* Brings lo up (the kernel gives it 127.0.0.1/8 and ::1 when it goes up). */
int net_loopback_up(char *err, size_t cap);
/*
 * Finds the NIC whose MAC is n->mac (waiting up to nic_wait_ms for it to appear) and its carrier
 * (up to carrier_wait_ms), sets its MTU, brings it up, sets the address and the default route via
 * the gateway. The interface name goes to ifname.
 */
int net_configure(const struct net_config *n, unsigned nic_wait_ms, unsigned carrier_wait_ms, char *ifname, size_t ifcap, char *err,
		  size_t cap);
/* The first NIC (an interface with a device), waiting up to wait_ms for it: a template's, before its MAC is known. */
int net_find_nic(unsigned wait_ms, char *ifname, size_t ifcap);
/* Gives the NIC the instance's MAC (a copy of a template has the template's); the VMM is told through virtio-net's control queue. */
int net_set_mac(const char *ifname, const char *mac, char *err, size_t cap);
/* Removes an IPv4 address from the NIC (a fork drops its source's); one already gone is fine. */
int net_del_address(const char *ifname, const char *address, unsigned prefix_len, char *err, size_t cap);
/* Closes the rtnetlink socket the calls above share (they reopen it when needed). */
void net_close(void);
/* Checks (waiting up to wait_ms) that the link still has its carrier just before the program starts. */
int net_wait_link(const char *ifname, unsigned wait_ms, char *err, size_t cap);

#endif
