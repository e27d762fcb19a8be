"""ARP (RFC 826): answer the guest for every address but its own.

passt-sep is the guest's only neighbour: whatever IPv4 address the guest
asks about (the gateway, another host of its prefix), the answer is our
MAC, and the frame then reaches the translator.  Duplicate-address probes
and gratuitous announcements are left unanswered.
"""

from __future__ import annotations

import struct

from .netparams import Network
from .packet import ETH_P_ARP, ETH_P_IP, Drop, Ethernet, build_ethernet

ARP_REQUEST, ARP_REPLY = 1, 2
HTYPE_ETHERNET = 1
_ARP = struct.Struct("!HHBBH6s4s6s4s")
ZERO4 = bytes(4)


def handle_arp(net: Network, eth: Ethernet) -> bytes | None:
    """The reply frame to a guest's ARP request, or None."""
    if len(eth.payload) < _ARP.size:
        raise Drop("arp_short")
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(eth.payload)
    if (htype, ptype, hlen, plen) != (HTYPE_ETHERNET, ETH_P_IP, 6, 4):
        raise Drop("arp_format")
    if op != ARP_REQUEST:
        return None
    if spa == ZERO4 or tpa == spa or (net.ipv4 is not None and tpa == net.ipv4.addr):
        return None  # a probe, an announcement, or the guest's own address
    reply = _ARP.pack(HTYPE_ETHERNET, ETH_P_IP, 6, 4, ARP_REPLY, net.our_mac, tpa, sha, spa)
    return build_ethernet(sha, net.our_mac, ETH_P_ARP, reply)
