"""Fuzz target ``config``: the whole passt/pasta command line
(``config.parse_args``), and the resulting ``Config`` through the handoff
the broker sends it in.

Input: the arguments, one per line (decoded as ``sys.argv`` is: UTF-8 with
surrogate escapes; at most 64 arguments), then one control byte (from the
end): the program name.  Documented exceptions: ``ConfigError`` (a bad
option or value) and ``ShowText`` (``-h``, ``--version``).
Invariant: what the worker reads of a command line ``parse_args``
accepts (``handoff.WorkerConfig``) reaches it intact: ``fdpass.send`` of
``handoff.encode`` (as the broker does it), then ``fdpass``'s unpacking
and ``handoff.decode`` (as the worker does) give back the same record.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_config.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep import handoff  # noqa: E402
from passt_sep.config import OPTIONS, ConfigError, ShowText, parse_args  # noqa: E402
from passt_sep.system import fdpass

NAME = "config"
ALLOWED = (ConfigError, ShowText)
PROGS = ("passt-sep", "pasta-sep", "pasta", "passt", "/usr/bin/pasta.avx2")
DICTIONARY = sorted({name.encode() for opt in OPTIONS for name in (opt.short, opt.long) if name}
                    | {b"\n", b"--", b"=", b"none", b"auto", b"all", b"1500", b"65520", b"0",
                       b"4294967296", b"99999999999999999999", b"1g", b"::1", b"10.0.0.1",
                       b"9a:55:9a:55:9a:55", b"24", b"255.255.255.0", b"1k", b"1m",
                       b"\xc2\xb2", b"\xd9\xa3", b"\xef\xbc\x91", b"\xff", b"\xed\xa0\x80",
                       b" ", b"-", b"passt", b"pasta"})
MAX_ARGS = 64


class _Wire:
    """Stands for the broker's socket: collects what ``fdpass.send`` writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendmsg(self, buffers, ancillary=()) -> int:
        for buffer in buffers:
            self.data += buffer
        return sum(len(buffer) for buffer in buffers)

    def sendall(self, data: bytes) -> None:
        self.data += data


def check(data: bytes) -> None:
    fdp = common.provider(data)
    prog = PROGS[fdp.ConsumeIntInRange(0, 255) % len(PROGS)]
    argv = common.rest(fdp).decode("utf-8", "surrogateescape").split("\n")[:MAX_ARGS]
    if argv == [""]:
        argv = []
    config = common.guarded(ALLOWED, parse_args, argv, prog)
    if config is None:
        return
    sent = handoff.WorkerConfig.from_config(config)
    wire = _Wire()
    fdpass.send(wire, handoff.encode(sent, common.NET, []), [])
    message = fdpass._unpack(bytes(wire.data[4:]))
    received = handoff.decode(message, [])
    assert received.config == sent, (received.config, sent)
    assert received.network == common.NET


def seeds() -> list[tuple[str, bytes]]:
    lines = {
        "pasta-config-net": (["--config-net", "-t", "10000-10002:20000-20002", "--", "sh", "-c",
                              "echo hi"], 1),
        "podman": (["--config-net", "--dns-forward", "169.254.1.1", "-t", "none", "-u", "none",
                    "-T", "none", "-U", "none", "--no-map-gw", "--quiet", "--netns",
                    "/run/user/1000/netns/netns-1234"], 2),
        "libvirt": (["--one-off", "--socket", "/run/libvirt/qemu/passt/vm.socket", "--pid",
                     "/run/libvirt/qemu/passt/vm.pid", "-a", "192.0.2.2", "-n", "24", "-M",
                     "52:54:00:12:34:56"], 3),
        "systemd": (["--pid-file", "/run/user/1000/passt-sep/vm1.pid", "--socket",
                     "/run/user/1000/passt-sep/vm1.socket", "-m", "1500", "--log-size", "1m"], 0),
        "outbound": (["-o", "198.51.100.3", "--outbound-if6", "eth0", "-D", "none", "-S",
                      "example.test lab.example.test", "--max-flows", "4", "-4"], 1),
        "bundle-pid": (["-dqf", "-t22", "-u", "53", "4242"], 1),
    }
    return [(label, "\n".join(argv).encode() + common.control(prog))
            for label, (argv, prog) in lines.items()]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
