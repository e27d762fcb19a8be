"""`make demo`: passt-sep gives a new namespace the host's network.

Builds the private test topology (docs/design.md §9; nothing leaves this
machine), then, rootless inside the "host" namespace, runs
``pasta-sep --config-net -- COMMAND`` where COMMAND shows the namespace's
addresses and routes, pings the "remote" namespace and fetches a page from
its web server over TCP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from topology import REMOTE_ADDR4, REMOTE_ADDR6, Topology  # noqa: E402

VENV = os.environ.get("PASST_SEP_VENV") or sys.prefix
PASTA = os.path.join(VENV, "bin", "pasta-sep")

COMMAND = f"""
set -x
id -u
ip -br addr show
ip route show
ip -6 route show
ping -c 3 -W 2 {REMOTE_ADDR4}
ping -6 -c 3 -W 2 {REMOTE_ADDR6}
curl -sS -m 5 http://{REMOTE_ADDR4}:8080/
"""


def main() -> int:
    with Topology("demo") as topo, tempfile.TemporaryDirectory() as www:
        os.chmod(www, 0o755)
        with open(os.path.join(www, "index.html"), "w", encoding="ascii") as page:
            page.write("Hello from the remote namespace, fetched through passt-sep!\n")
        topo.spawn_remote("busybox", "httpd", "-f", "-p", "8080", "-h", www)
        topo.wait_listening(8080)
        print(f"== host namespace {topo.host}: as uid 65534, "
              "pasta-sep --config-net -- sh -c '...'", flush=True)
        result = subprocess.run(topo.host_cmd(PASTA, "--config-net", "--", "sh",
                                              "-c", COMMAND, rootless=True), check=False)
        print(f"== pasta-sep exited with status {result.returncode}")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
