"""Fuzz target ``ports``: port forwarding specifications (``-t``, ``-u``,
``-T``, ``-U`` values: ranges, mappings, exclusions, bind addresses and
interfaces, ``all``, ``auto``, ``none``).

Input: the values of one option, one per line (decoded as the command line
is: UTF-8 with surrogate escapes; at most 200 characters), then two control
bytes (from the end): the mode (passt or pasta) and the option.
Documented exception: ``ConfigError``.
Invariant: every rule is a range of real ports mapped to real ports.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python fuzz/fuzz_ports.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import common  # noqa: E402
from passt_sep.ports import MAX_PORT, ConfigError, parse_forward  # noqa: E402

NAME = "ports"
ALLOWED = (ConfigError,)
DICTIONARY = [b"all", b"auto", b"none", b"~", b"-", b":", b",", b"/", b"%", b"0", b"65535",
              b"65536", b"99999999999999999999", b"::1", b"127.0.0.1", b"fe80::1%eth0",
              b"eth0", b"\xc2\xb2", b"\xd9\xa3", b"\xef\xbc\x91", b"1_0", b" 1", b"+1", b"-1"]
MAX_TEXT = 200


def check(data: bytes) -> None:
    fdp = common.provider(data)
    mode = ("passt", "pasta")[fdp.ConsumeIntInRange(0, 1)]
    option = ("-t", "-u", "-T", "-U")[fdp.ConsumeIntInRange(0, 3)]
    text = common.rest(fdp).decode("utf-8", "surrogateescape")[:MAX_TEXT]
    specs = text.split("\n")
    forwarding = common.guarded(ALLOWED, parse_forward, specs, mode, option)
    if forwarding is None:
        return
    assert forwarding.mode in ("none", "spec", "all", "auto")
    for rule in forwarding.rules:
        assert 1 <= rule.first <= rule.last <= MAX_PORT, rule
        assert 1 <= rule.target and rule.target_of(rule.last) <= MAX_PORT, rule


def seeds() -> list[tuple[str, bytes]]:
    # control: mode (0 passt, 1 pasta), then the option (0 -t, 1 -u, 2 -T, 3 -U)
    return [("range-map", b"10000-10002:20000-20002" + common.control(1, 0)),
            ("list", b"22,25,80:8080" + common.control(0, 1)),
            ("address-bound", b"198.51.100.2/10010:20000\n::1/53" + common.control(1, 2)),
            ("interface-bound", b"%eth0/10020:20000\n127.0.0.1%lo/22" + common.control(1, 3)),
            ("exclusions", b"~22,~1000-2000" + common.control(1, 0)),
            ("all", b"all,~22" + common.control(0, 0)),
            ("auto-none", b"auto\nnone" + common.control(1, 1))]


if __name__ == "__main__":
    common.fuzz_main(NAME, check, DICTIONARY)
