"""A guest for passt mode: a network namespace whose tap device is bridged
to passt-sep's UNIX socket by tapbridge.py (what QEMU's -netdev stream does
for a VM), its kernel the guest's stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from topology import Topology

BRIDGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tapbridge.py")
PY = sys.executable
LEASE_SCRIPT = """#!/bin/sh
case "$1" in bound|renew)
  ip addr flush dev $interface
  ip addr add $ip/$mask dev $interface
  [ -n "$router" ] && ip route add default via $router
;; esac
exit 0
"""


class Guest:
    """A namespace attached to passt-sep's socket through a tap bridge."""

    def __init__(self, topo: Topology, socket_path: str, workdir: str) -> None:
        self.ns = f"{topo.host}-g"
        self.lease_script = os.path.join(workdir, "udhcpc.sh")
        with open(self.lease_script, "w", encoding="ascii") as handle:
            handle.write(LEASE_SCRIPT)
        os.chmod(self.lease_script, 0o755)
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(self.cmd("ip", "link", "set", "lo", "up"), check=True)
        self.bridge = subprocess.Popen(self.cmd(PY, BRIDGE, socket_path, "eth0"))
        self._wait_link()

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, script: str, timeout: float = 120) -> list[str]:
        result = subprocess.run(self.cmd("sh", "-ec", script), capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.splitlines()

    def _wait_link(self) -> None:
        for _ in range(200):
            state = subprocess.run(self.cmd("ip", "-br", "link", "show", "eth0"),
                                   capture_output=True, text=True).stdout
            if "UP" in state:
                return
            time.sleep(0.05)
        raise TimeoutError("tap bridge did not come up")

    def dhcp(self) -> None:
        self.run(f"busybox udhcpc -i eth0 -f -q -n -t 5 -T 1 -s {self.lease_script} "
                 ">/dev/null 2>&1 || true; "
                 "ip -4 addr show dev eth0 | grep -q inet || exit 1")

    def close(self) -> None:
        self.bridge.kill()
        self.bridge.wait()
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
