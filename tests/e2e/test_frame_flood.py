"""100000 random and mutated frames from inside the namespace, then a normal
TCP transfer: the worker parses every frame it reads (a malformed one is
dropped and counted), survives, and still serves the guest.

The flood is ``fuzz/flood.py``: an AF_PACKET socket on the namespace's tap
interface (the host's interface name, ``eth0`` here), whose frames go to
passt-sep's worker as if the guest had sent them: mutations of valid
Ethernet/ARP/IPv4/IPv6/TCP/UDP/ICMP/NDP/DHCP/DHCPv6 frames and pure random
bytes, the same for every run (a fixed seed).  The tap's queue would drop
most of them silently, so the flood goes in batches, each one ending with
an ARP probe the worker must answer before the next batch: every frame is
read by the worker, and one that kills it is found in its batch.
"""

from __future__ import annotations

import os
import sys
import time

from peers import digest_of

from topology import REMOTE_ADDR4, Topology

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOD = os.path.join(os.path.dirname(TESTS), "fuzz", "flood.py")
PEERS = os.path.join(TESTS, "peers.py")
PY = sys.executable
FRAMES = 100_000
SEED = 1
SINK_PORT = 9100          # none of the flood's seed frames aims at it (they use 9000, 9002, 53)
SIZE = 4 << 20
DATA_SEED = 31


def test_worker_survives_a_flood_of_bad_frames(topo: Topology, pasta: str) -> None:
    topo.spawn_remote(PY, PEERS, "sink", str(SINK_PORT))
    topo.wait_listening(SINK_PORT)
    script = (f"{PY} {FLOOD} eth0 {FRAMES} {SEED}\n"
              f"{PY} {PEERS} send {REMOTE_ADDR4} {SINK_PORT} {SIZE} {DATA_SEED}")
    start = time.monotonic()
    result = topo.run_host(pasta, "--config-net", "--", "sh", "-ec", script, timeout=300)
    elapsed = time.monotonic() - start
    report = f"after {elapsed:.1f} s:\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, report
    flood, transfer = result.stdout.splitlines()
    # every frame reached the worker: the flood waits for the worker's answer
    # to a probe after each batch, and stops if one does not come
    assert flood.startswith(f"sent {FRAMES} frames in "), report
    assert transfer == f"{digest_of(SIZE, DATA_SEED)} {SIZE}", report
    # a frame the worker could not take would show as an internal error
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, report
    print(f"{flood}; whole run {elapsed:.1f} s")
