"""Every option of the current passt/pasta man page (2025-01), listed in
tests/data/passt-2025-01-options.txt (made by contrib/passt_man_options.py
from that page): passt-sep's parser takes it, or refuses it with a message
naming it, and the man pages' COMPATIBILITY section says which."""

from __future__ import annotations

import os
import re

import pytest

from passt_sep.config import _BY_NAME, DIFFERENCES, ConfigError, ShowText, parse_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, "tests", "data", "passt-2025-01-options.txt")
PROG = {"passt": "passt-sep", "pasta": "pasta-sep"}

VALUES = {
    "--log-file": "/tmp/x.log", "--log-size": "1048576", "--runas": "nobody",
    "--pcap": "/tmp/x.pcap", "--pid": "/tmp/x.pid", "--mtu": "1500", "--address": "192.0.2.5",
    "--netmask": "24", "--mac-addr": "02:00:00:00:00:01", "--gateway": "192.0.2.1",
    "--interface": "eth0", "--outbound": "192.0.2.9", "--outbound-if4": "eth0",
    "--outbound-if6": "eth0", "--dns": "192.0.2.53", "--dns-forward": "192.0.2.54",
    "--dns-host": "192.0.2.55", "--search": "example.test", "--map-host-loopback": "192.0.2.3",
    "--map-guest-addr": "192.0.2.4", "--socket-path": "/tmp/s", "--socket": "/tmp/s",
    "--fd": "5", "--tcp-ports": "22", "--udp-ports": "53", "--ns-ifname": "eth1",
    "--tcp-ns": "8080", "--udp-ns": "8053", "--userns": "/proc/1/ns/user", "--netns": "n1",
    "--ns-mac-addr": "02:00:00:00:00:02",
}
NEEDS_TARGET = {"--userns", "--netns-only"}


def reference() -> list[tuple[str, list[str]]]:
    with open(DATA, encoding="utf-8") as handle:
        return [(words[0], words[1:]) for words in map(str.split, handle) if words]


OPTIONS = reference()


def test_the_list_is_the_whole_page() -> None:
    names = [name for _, names in OPTIONS for name in names]
    assert len(OPTIONS) == 62 and len(names) == len(set(names))
    assert {"--dns-host", "--dhcp-dns", "--vhost-user", "--host-lo-to-ns-lo",
            "--socket-path", "--print-capabilities", "--no-splice"} <= set(names)


def attempt(name: str, mode: str) -> str:
    """'accepted', or the one-line error parsing ``name`` gave."""
    long = next((n for n in [name] if n.startswith("--")), None)
    opt = _BY_NAME.get(name)
    value = VALUES.get(opt.long if opt else (long or ""), VALUES.get(name, "x"))
    argv = [name] + ([value] if opt is None or opt.arg else [])
    if name in NEEDS_TARGET or (opt and opt.long in NEEDS_TARGET):
        argv += ["--netns", "n1"]
    try:
        parse_args(argv, PROG[mode])
    except ShowText:
        return "accepted"
    except ConfigError as exc:
        return str(exc)
    return "accepted"


@pytest.mark.parametrize("section, names", OPTIONS, ids=[n[-1] for _, n in OPTIONS])
def test_every_option_is_taken_or_refused_by_name(section: str, names: list[str]) -> None:
    modes = ["passt", "pasta"] if section == "both" else [section]
    for name in names:
        for mode in modes:
            outcome = attempt(name, mode)
            assert outcome == "accepted" or re.search(rf"(^|\s){re.escape(name)}\b", outcome), \
                (name, mode, outcome)


def refused_in_its_own_mode(section: str, names: list[str]) -> bool:
    """Refused in every mode the page documents it for (an option the page
    lists for both may be for one mode only, as --dhcp-dns)."""
    modes = ["passt", "pasta"] if section == "both" else [section]
    return all(attempt(name, mode) != "accepted" for name in names for mode in modes)


def compatibility_section(mode: str) -> str:
    with open(os.path.join(REPO, "man", f"{mode}-sep.1"), encoding="utf-8") as handle:
        page = handle.read().replace("\\-", "-")
    return page.split(".SH COMPATIBILITY", 1)[1].split("\n.SH ", 1)[0]


@pytest.mark.parametrize("mode", ["passt", "pasta"])
def test_man_page_table_matches_the_parser(mode: str) -> None:
    entries = compatibility_section(mode).split(".TP\n")[1:]
    assert len(entries) == len(OPTIONS)
    counts = {"Supported.": 0, "Supported; differs": 0, "Refused": 0}
    for (section, names), entry in zip(OPTIONS, entries, strict=True):
        head, text = entry.split("\n", 1)
        assert re.findall(r"\\fB(-[^\\]+)\\fR", head) == names
        opt = _BY_NAME[names[-1]]
        if refused_in_its_own_mode(section, names):
            assert text.startswith("Refused: "), names
            counts["Refused"] += 1
        elif opt.long in DIFFERENCES:
            assert text.startswith("Supported; differs: "), names
            counts["Supported; differs"] += 1
        else:
            assert text.startswith("Supported."), names
            counts["Supported."] += 1
    summary = (f"{counts['Supported.']} supported as they are, {counts['Supported; differs']} "
               f"supported with the differences named, {counts['Refused']} refused")
    assert summary in " ".join(compatibility_section(mode).split())
