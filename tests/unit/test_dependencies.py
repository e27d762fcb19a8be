"""The dependencies' internals that passt-sep relies on, and their pins.

Two of them are used in ways their authors do not promise: the netlink
helper imports pyroute2's rtnetlink message classes without running the
package's ``__init__`` (``broker/netlink.py``) and drives the socket itself
(``broker/netconf.py``), and ``sandbox.py`` answers pyseccomp's
library lookups itself while it imports.  When an upgrade moves these, the
tests here say which promise broke and where it is used, instead of a
start-up that fails somewhere inside the broker.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DISTRIBUTIONS = ("pyseccomp", "pyroute2", "python-prctl", "msgpack")


def _requirements() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    lines = parser["options"]["install_requires"].strip().splitlines()
    return {re.split(r"[ <>=!]", line.strip(), maxsplit=1)[0]: line.strip() for line in lines}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _satisfies(version: str, requirement: str) -> bool:
    """The ``>=`` and ``<`` clauses our pins use, on release numbers."""
    have = _version(version)
    for clause in requirement.split(None, 1)[1].split(","):
        operator, bound = clause.strip().split()
        want = _version(bound)
        width = max(len(have), len(want))
        have_n, want_n = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        if (operator == ">=" and have_n < want_n) or (operator == "<" and have_n >= want_n):
            return False
    return True


def test_every_dependency_is_pinned_to_a_range() -> None:
    requirements = _requirements()
    assert set(requirements) == set(DISTRIBUTIONS)
    for name, requirement in requirements.items():
        assert ">=" in requirement and "<" in requirement, f"{name} needs a tested range"


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_installed_version_is_within_the_tested_range(name: str) -> None:
    requirement = _requirements()[name]
    version = importlib.metadata.version(name)
    assert _satisfies(version, requirement), \
        f"{name} {version} is outside the tested range in setup.cfg: {requirement}"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_pyroute2_messages_import_alone_and_round_trip() -> None:
    """The message classes netconf uses load without the package ``__init__``,
    without IPRoute's machinery (asyncio) or pyroute2.config, and decode
    what they encode (a route; a link, on pyroute2's message base)."""
    result = _run(
        "import sys\n"
        "from passt_sep.broker.netlink import _without_package_init\n"
        "_without_package_init('pyroute2')\n"
        "from passt_sep.broker import netconf\n"
        "from passt_sep.broker.hostinfo import Route\n"
        "assert 'pyroute2.ndb.main' not in sys.modules, 'the package __init__ ran'\n"
        "assert 'asyncio' not in sys.modules, 'IPRoute machinery came along'\n"
        "assert 'multiprocessing' not in sys.modules, 'pyroute2.config came along'\n"
        "link = netconf._link_request('x', 3, up=True, attrs=[('IFLA_MTU', 1400),\n"
        "                             ('IFLA_ADDRESS', '02:00:00:00:00:01')]).message\n"
        "link.encode()\n"
        "back = netconf._decoded(netconf.LinkMessage, bytes(link.data), 0)\n"
        "assert (back['index'], back['flags'], back['change'], back.get('mtu'),\n"
        "        back.get('address')) == (3, 1, 1, 1400, '02:00:00:00:00:01'), back\n"
        "request = netconf._route_request(7, 'eth0', 10, Route('2001:db8::', 64, 'fe80::1', 5))\n"
        "request.message.encode()\n"
        "back = netconf._decoded(netconf.rtmsg, bytes(request.message.data), 0)\n"
        "print(back.get('dst'), back['dst_len'], back.get('gateway'), back.get('oif'),\n"
        "      back.get('priority'), back['table'])\n")
    assert result.returncode == 0 and result.stdout.split() == [
        "2001:db8::", "64", "fe80::1", "7", "5", "254"], (
        "pyroute2's rtnetlink message classes moved (passt_sep/broker/netconf.py "
        "relies on them):\n" + result.stderr + result.stdout)


def test_pyseccomp_finds_its_libraries_through_our_lookup_alone() -> None:
    """Every name pyseccomp looks up at import is answered by sandbox.py's
    table, so the real lookup (an ``ldconfig -p`` run each) never happens."""
    result = _run(
        "import ctypes.util\n"
        "asked = []\n"
        "ctypes.util.find_library = lambda name: asked.append(name)\n"
        "from passt_sep.system import sandbox\n"
        "seccomp = sandbox.libseccomp()\n"
        "filt = seccomp.SyscallFilter(seccomp.KILL_PROCESS)\n"
        "filt.add_rule(seccomp.ALLOW, 'read', seccomp.Arg(0, seccomp.MASKED_EQ, 1, 0))\n"
        "print('fell through:', asked)\n")
    assert result.returncode == 0, "pyseccomp's API moved (sandbox.py uses SyscallFilter, " \
        "Arg, MASKED_EQ, ALLOW, KILL_PROCESS):\n" + result.stderr
    assert result.stdout.strip() == "fell through: []", (
        "pyseccomp looked up a library that passt_sep/system/sandbox.py's soname table does "
        "not know: " + result.stdout)


def test_prctl_offers_what_the_jail_uses() -> None:
    import prctl
    for name in ("capbset", "securebits", "cap_inheritable", "cap_effective",
                 "cap_permitted", "set_no_new_privs", "set_dumpable", "CAP_NET_BIND_SERVICE"):
        assert hasattr(prctl, name), f"python-prctl lacks {name} (passt_sep/broker/jail.py)"


def test_msgpack_round_trips_bytes_and_text_apart() -> None:
    """fdpass packs with use_bin_type and unpacks with raw=False: bytes stay
    bytes (addresses) and text stays text (roles)."""
    import msgpack
    message = {"role": "tap", "addr": b"\xc0\x00\x02\x01", "ports": [1, 65535]}
    packed = msgpack.packb(message, use_bin_type=True)
    assert msgpack.unpackb(packed, raw=False) == message
    with pytest.raises(msgpack.UnpackException):
        msgpack.unpackb(b"\xc1", raw=False)
