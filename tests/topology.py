"""The test topology of docs/design.md §9, built with ``ip netns`` and a veth pair.

::

    netns "host" (passt-sep runs here)        netns "remote"
      eth0 198.51.100.2/24, 2001:db8:1::2/64 <-> eth0 198.51.100.1, 2001:db8:1::1
      default routes via .1 / ::1              lo 203.0.113.1/32, 2001:db8:2::1/128
      /etc/netns/<host>/resolv.conf -> 203.0.113.1, 2001:db8:2::1

Traffic never leaves these namespaces.  Names are unique per instance so
tests can run side by side; ``close()`` kills what runs inside and removes
everything.  Used by the tests, the demo and the benchmarks.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

HOST_ADDR4, HOST_ADDR6 = "198.51.100.2", "2001:db8:1::2"
GW_ADDR4, GW_ADDR6 = "198.51.100.1", "2001:db8:1::1"
REMOTE_ADDR4, REMOTE_ADDR6 = "203.0.113.1", "2001:db8:2::1"
PREFIX4, PREFIX6 = 24, 64
HOST_IFNAME = "eth0"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

_counter = itertools.count()


def _run(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


class Topology:
    def __init__(self, tag: str = "t", ipv6: bool = True) -> None:
        suffix = f"{os.getpid() % 100000}-{next(_counter)}"
        self.host = f"ps-{tag}-h{suffix}"
        self.remote = f"ps-{tag}-r{suffix}"
        self.ipv6 = ipv6
        self.etc_dir = f"/etc/netns/{self.host}"
        self.procs: list[subprocess.Popen] = []

    # -- building ---------------------------------------------------------------
    def __enter__(self) -> Topology:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        _run(["ip", "netns", "add", self.host])
        _run(["ip", "netns", "add", self.remote])
        _run(["ip", "link", "add", "name", HOST_IFNAME, "netns", self.host, "type", "veth",
              "peer", "name", HOST_IFNAME, "netns", self.remote])
        self._host_side()
        self._remote_side()
        os.makedirs(self.etc_dir, exist_ok=True)
        with open(os.path.join(self.etc_dir, "resolv.conf"), "w", encoding="ascii") as handle:
            handle.write(f"nameserver {REMOTE_ADDR4}\nnameserver {REMOTE_ADDR6}\n"
                         "search example.test\n")

    def _host_side(self) -> None:
        h = self.in_host
        h("ip", "link", "set", "lo", "up")
        h("ip", "addr", "add", f"{HOST_ADDR4}/{PREFIX4}", "dev", HOST_IFNAME)
        h("ip", "link", "set", HOST_IFNAME, "up")
        h("ip", "route", "add", "default", "via", GW_ADDR4)
        h("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
        if self.ipv6:
            h("ip", "-6", "addr", "add", f"{HOST_ADDR6}/{PREFIX6}", "dev", HOST_IFNAME, "nodad")
            h("ip", "-6", "route", "add", "default", "via", GW_ADDR6)

    def _remote_side(self) -> None:
        r = self.in_remote
        r("ip", "link", "set", "lo", "up")
        r("ip", "addr", "add", f"{GW_ADDR4}/{PREFIX4}", "dev", HOST_IFNAME)
        r("ip", "addr", "add", f"{REMOTE_ADDR4}/32", "dev", "lo")
        r("ip", "link", "set", HOST_IFNAME, "up")
        r("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
        if self.ipv6:
            r("ip", "-6", "addr", "add", f"{GW_ADDR6}/{PREFIX6}", "dev", HOST_IFNAME, "nodad")
            r("ip", "-6", "addr", "add", f"{REMOTE_ADDR6}/128", "dev", "lo")

    # -- running things -----------------------------------------------------------
    def host_cmd(self, *args: str, rootless: bool = False) -> list[str]:
        return ["ip", "netns", "exec", self.host, *(NOBODY if rootless else []), *args]

    def remote_cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.remote, *args]

    def in_host(self, *args: str) -> subprocess.CompletedProcess:
        return _run(self.host_cmd(*args))

    def in_remote(self, *args: str) -> subprocess.CompletedProcess:
        return _run(self.remote_cmd(*args))

    def run_host(self, *args: str, rootless: bool = False, timeout: float = 60,
                 **kwargs) -> subprocess.CompletedProcess:
        """Run in the host namespace; output captured as text; no check."""
        return subprocess.run(self.host_cmd(*args, rootless=rootless), capture_output=True,
                              text=True, timeout=timeout, **kwargs)

    def run_remote(self, *args: str, timeout: float = 60,
                   **kwargs) -> subprocess.CompletedProcess:
        """Run in the remote namespace; output captured as text; no check."""
        return subprocess.run(self.remote_cmd(*args), capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def spawn_host(self, *args: str, rootless: bool = False, **kwargs) -> subprocess.Popen:
        """Start in the host namespace, in a process group of its own that
        ``close()`` kills whole (a pasta command and its children too)."""
        proc = subprocess.Popen(self.host_cmd(*args, rootless=rootless),
                                start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def spawn_remote(self, *args: str, **kwargs) -> subprocess.Popen:
        return self.spawn_in(self.remote, *args, **kwargs)

    def spawn_in(self, ns: str, *args: str, **kwargs) -> subprocess.Popen:
        """Start in any named namespace (one a test made too), killed by ``close()``."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], start_new_session=True,
                                **kwargs)
        self.procs.append(proc)
        return proc

    def wait_listening(self, port: int, proto: str = "tcp", remote: bool = True,
                       timeout: float = 10.0, ns: str | None = None) -> None:
        """Wait until something listens on ``port`` in one namespace (``ns``
        names any other than remote and host)."""
        ns = ns or (self.remote if remote else self.host)
        flag = "-tln" if proto == "tcp" else "-uln"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = _run(["ip", "netns", "exec", ns, "ss", "-H", flag, f"sport = :{port}"],
                       check=False).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on {proto} port {port} in {ns}")

    # -- teardown -------------------------------------------------------------------
    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for ns in (self.host, self.remote):
            self._kill_inside(ns)
            _run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.etc_dir, ignore_errors=True)

    @staticmethod
    def _kill_inside(ns: str) -> None:
        pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
