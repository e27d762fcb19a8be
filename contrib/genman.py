"""Write man/passt-sep.1 and man/pasta-sep.1 from the option table.

The option list of each page comes from ``passt_sep.config.OPTIONS`` (the
table ``--help`` prints), so the two cannot drift; the prose around it is
here.  Run after changing options: ``python contrib/genman.py``.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from passt_sep import __version__  # noqa: E402
from passt_sep.config import _BY_NAME, BOTH, DIFFERENCES, OPTIONS, Option  # noqa: E402

REFERENCE = os.path.join(os.path.dirname(HERE), "tests", "data", "passt-2025-01-options.txt")

DATE = "2026-11-23"


def esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-")


def option_entry(opt: Option) -> str:
    names = [f"\\fB{esc(n)}\\fR" for n in (opt.short, opt.long, *opt.aliases) if n]
    head = ", ".join(names) + (f" \\fI{esc(opt.arg)}\\fR" if opt.arg else "")
    body = esc(opt.help) + "."
    if opt.default:
        body += f" Default: {esc(opt.default)}."
    return f".TP\n{head}\n{body}\n"


CLAT = r"""
.SH IPV6\-ONLY HOSTS
On a host with IPv6 only, in a network with a NAT64 and DNS64 (RFC 6146,
RFC 6147), \fB\-\-clat\fR gives the guest IPv4 anyway: passt\-sep is the
customer\-side translator of 464XLAT (RFC 6877), without translating
packets, since every guest flow ends in a host socket.
The guest's IPv4 TCP, UDP and ICMP echo to an address \fIA\fR leave as IPv6
to \fIA\fR embedded in the NAT64 prefix (RFC 6052); replies reach the guest
as IPv4, and ICMPv6 errors for its UDP as the ICMPv4 ones RFC 7915 gives
(port, host or protocol unreachable, administratively prohibited, time
exceeded).
.PP
The prefix is \fB\-\-nat64\-prefix\fR, else discovered before the worker
starts: the resolvers of \fI/etc/resolv.conf\fR are asked for the AAAA
records of \fIipv4only.arpa\fR (RFC 7050), which embed 192.0.0.170 and
192.0.0.171 where the prefix ends.
If none answers within 1.5 seconds, 64:ff9b::/96 is used, with a warning.
.PP
On a host without IPv4, the guest gets 192.0.0.2/29 with the gateway
192.0.0.1 (RFC 7335), unless \fB\-a\fR, \fB\-n\fR or \fB\-g\fR say
otherwise, by DHCP or \fB\-\-config\-net\fR.
Its IPv4 resolver is the gateway (or the IPv4 \fB\-\-dns\-forward\fR
address): DNS sent there goes to the host's first IPv6 resolver.
The gateway still stands for the host's loopback, as without \fB\-\-clat\fR,
and connections to the namespace's own loopback (pasta) are spliced as ever.
.PP
With \fB\-\-clat\fR every IPv4 destination is translated, even on a host
that has IPv4 (the option forces it), except loopback, 0.0.0.0/8, multicast
and broadcast addresses and the special addresses above (the gateway unless
\fB\-\-no\-map\-gw\fR,
\fB\-\-map\-guest\-addr\fR, the DNS forwarding address).
Without it nothing is translated, and a host's IPv4 is used as it is.
Destinations the guest reaches over IPv6 are never touched.
.PP
A connection to a forwarded TCP port (\fB\-t\fR) from an IPv6 peer goes to
the guest over IPv6 if it has IPv6; if the guest refuses it there (a service
listening on IPv4 only), it is offered again over IPv4, and a guest without
IPv6 gets it over IPv4 at once.
Over IPv4 the guest sees the peer as the IPv4 address the peer's IPv6
address embeds if it is inside the NAT64 prefix (an IPv4 client behind the
NAT64), else as the gateway.
UDP has no refusal to fall back on, so for a forwarded UDP port
(\fB\-u\fR) the peer decides: a datagram from an IPv6 peer inside the
NAT64 prefix reaches the guest over IPv4, from the IPv4 address the peer's
address embeds; one from any other IPv6 peer over IPv6, or over IPv4 from
the gateway if the guest has no IPv6.
The guest's answers from the target port go back to the peer through the
same port, as IPv6.
With \fB\-4\fR, \fB\-\-clat\fR still forwards the host's IPv6 ports,
to the guest's IPv4.
"""

SECURITY = r"""
.SH SECURITY MODEL
A short\-lived broker does everything that needs a privilege or a path:
it creates or joins the namespaces, opens the tap device or UNIX socket, the
listening sockets, the capture and log files and the pid file, then closes
a jail around itself: new mount, IPC, UTS and PID namespaces, an empty
read\-only tmpfs as root, every capability dropped, no_new_privs, not
dumpable; as real root it switches to \fBnobody\fR (or \fB\-\-runas\fR).
Its netlink helper, a child forked at start so that it loads pyroute2
on the second CPU meanwhile, reads the host's routes and addresses over netlink, then creates and
configures the tap inside the namespace, and exits before the jail closes.
It forks the translation worker and hands it every file descriptor in one
message (SCM_RIGHTS, configuration as msgpack).
The worker closes anything not in that message and arms a seccomp filter
built from the allowlist in \fIseccomp/worker.x86_64\fR: any other system
call kills it.
The worker never opens a path and holds no directory.
The capture, log and pid files are created with mode 0600 and never opened
through a symbolic link.
The pid file stays when the worker exits, as with \fBpasst\fR: systemd
removes a Type=forking unit's PIDFile=, libvirt its own pid file.
In pasta's command mode the process the caller started stays to return the
command's exit status, holding no file descriptor and no capability, under
its own twelve\-call filter.
"""

EXAMPLES = {
    "passt": r"""
.SH EXAMPLES
.SS QEMU
.nf
passt\-sep \-\-socket /tmp/passt\-sep.socket
qemu\-system\-x86_64 ... \-device virtio\-net\-pci,netdev=n0 \e
  \-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/passt\-sep.socket
.fi
.SS libvirt
Install passt\-sep as \fIpasst\fR in libvirt's search path and use
.nf
<interface type='user'><backend type='passt'/></interface>
.fi
libvirt 11.x then runs \fBpasst \-\-one\-off \-\-socket\fR \fIPATH\fR
\fB\-\-pid\fR \fIFILE\fR with the options its domain XML asks for
(\fB\-\-vhost\-user\fR, \fB\-\-mtu\fR, \fB\-\-interface\fR, \fB\-\-log\-file\fR,
\fB\-\-address\fR, \fB\-\-netmask\fR, \fB\-\-tcp\-ports\fR, \fB\-\-udp\-ports\fR);
libvirt 9.x runs \fBpasst \-\-one\-off \-\-socket\fR \fIPATH\fR
\fB\-\-mac\-addr\fR \fIMAC\fR with the same options but no \fB\-\-pid\fR and
no \fB\-\-vhost\-user\fR.
Both let it go to the background.
The \fB\-\-log\-file\fR gets the start\-up block, warnings and, if start\-up
fails, the reason, which libvirt reports.
.SS systemd
.nf
systemctl \-\-user start passt\-sep@vm1
.fi
starts \fBpasst\-sep \-\-pid\-file %t/passt\-sep/vm1.pid \-\-socket
%t/passt\-sep/vm1.socket\fR from \fIcontrib/systemd/passt\-sep@.service\fR
(Type=forking: the foreground process exits once the worker serves and the
pid file names it).
""",
    "pasta": r"""
.SH EXAMPLES
.SS A shell with the host's connectivity, rootless
.nf
pasta\-sep \-\-config\-net
.fi
.SS Join a namespace in the background
.nf
pasta\-sep \-\-config\-net \-\-netns /run/netns/mine \-\-pid\-file /run/user/1000/ps.pid
.fi
.SS Podman
Point Podman at passt\-sep by making it find a binary called \fIpasta\fR:
a symbolic link \fIpasta\fR \-> \fIpasta\-sep\fR in a directory listed as
\fBhelper_binaries_dir\fR in \fIcontainers.conf\fR.
Podman 5.x runs it as, for example:
.nf
pasta \-\-config\-net \-\-dns\-forward 169.254.1.1 \-t none \-u none \-T none \-U none \e
  \-\-no\-map\-gw \-\-quiet \-\-netns /run/user/1000/netns/netns\-XXXX \e
  \-\-map\-guest\-addr 169.254.1.2
.fi
(earlier 5.x releases: \fB\-\-dns\-forward 169.254.0.1\fR and no
\fB\-\-map\-guest\-addr\fR), and Podman 4.x as:
.nf
pasta \-\-config\-net \-t none \-u none \-T none \-U none \-\-no\-map\-gw \e
  \-\-netns /run/user/1000/netns/netns\-XXXX
.fi
without \fB\-\-quiet\fR, so the start\-up block goes to standard error, which
Podman 4.x shows only if pasta fails.
Published ports (\fB\-p 127.0.0.1:8080:80\fR) come as
\fB\-t 127.0.0.1/8080\-8080:80\-80\fR in place of \fB\-t none\fR.
On an IPv6\-only host with a NAT64, give containers IPv4 too (see
\fBIPV6\-ONLY HOSTS\fR):
.nf
podman run \-\-network pasta:\-\-clat ...
podman run \-\-network pasta:\-\-nat64\-prefix,2001:db8:64::/96 ...
.fi
""",
}

LIFETIME = r"""
.SH LIFETIME
In the background (the default) the process the caller started exits once
the worker serves, with the worker's pid in the \fB\-\-pid\fR file.
With \fB\-f\fR it stays, stands for the worker and ends with it: SIGTERM,
SIGINT and SIGHUP sent to it reach the worker, and if it is killed outright
(SIGKILL) the worker gets SIGTERM from the kernel.
"""

PASTA_LIFETIME = r"""
In pasta's command mode the same holds for the process that waits for the
command.  The worker also exits when what it serves is gone: the
command (after at most 10 s for open TCP connections to drain), the
\fB\-\-netns\fR file (removed, as Podman does), or the target process in PID
mode (\fIPID\fR or \fB\-\-netns\fR /proc/\fIPID\fR/ns/net).
"""

FILES = r"""
.SH FILES
.TP
\fIseccomp/worker.x86_64\fR, \fIseccomp/waiter.x86_64\fR
System call allowlists (installed in \fIshare/passt\-sep/seccomp\fR).
.TP
\fI/etc/resolv.conf\fR
Read once by the broker: resolvers and search list handed to the guest;
with \fB\-\-clat\fR, the resolvers asked for the NAT64 prefix.
.TP
\fI/dev/net/tun\fR
The tap device (pasta mode).
"""

SIGNALS = r""".SH SIGNALS
.TP
\fBSIGUSR1\fR
The worker logs its counters (at level info, to the log or standard
error): \fBflows\fR, the flows it holds now (at most \fB\-\-max\-flows\fR,
every kind together), and events and drops by name, for instance
\fBtcp_flows_full\fR, \fBsplice_flows_full\fR, \fBudp_splice_flows_full\fR,
\fBdrop_udp_flows_full\fR and \fBicmp_flows_full\fR (new flows refused
because the flow table was full), \fBudp_rcvbuf_drops\fR
(datagrams the kernel dropped at a full receive buffer of one of the
worker's UDP sockets), \fBudp_send_full\fR and \fBudp_send_error\fR
(datagrams from the guest that a host socket refused), \fBtap_full\fR and
\fBtap_write_error\fR (frames, each datagram of a batched UDP write counted,
that could not be written to the guest).
"""

PASTA_SIGNALS = r"""Frames the namespace sends faster than the worker reads them wait in the
tap's queue (12288 frames); what overflows it is the kernel's count, the
tap's transmit drops in the namespace (\fBip \-s link\fR).
"""

EXIT = r""".SH EXIT STATUS
0 when the worker serves (background) or exited cleanly (foreground); in
pasta's command mode, the command's exit status; 1 for a bad option, a port
already in use, a missing namespace or any other setup error, with one line
saying what is wrong.
.SH SEE ALSO
\fBpasst\fR(1), \fBpasta\fR(1), \fBqemu\fR(1), \fBpodman\fR(1)
"""


def reference_options() -> list[tuple[str, list[str]]]:
    """(section, names) of every option of the current passt's man page."""
    with open(REFERENCE, encoding="utf-8") as handle:
        return [(words[0], words[1:]) for words in map(str.split, handle) if words]


def status(names: list[str]) -> tuple[str, str]:
    """How passt-sep takes a reference option: (status, details)."""
    opt = _BY_NAME.get(names[-1]) or _BY_NAME.get(names[0])
    if opt is None:
        return "refused", "unknown option"
    if opt.refused:
        return "refused", opt.refused
    if opt.long in DIFFERENCES:
        return "differs", DIFFERENCES[opt.long]
    return "supported", ""


def counts() -> dict[str, int]:
    found = {"supported": 0, "differs": 0, "refused": 0}
    for _, names in reference_options():
        found[status(names)[0]] += 1
    return found


def compatibility() -> str:
    """One entry per option of the current passt: supported, supported with
    differences (named), or refused (with the reason it gives)."""
    total = counts()
    out = [".SH COMPATIBILITY",
           "Every option of passt and pasta 2025\\-01, as passt\\-sep takes it: "
           f"{total['supported']} supported as they are, {total['differs']} supported with "
           f"the differences named, {total['refused']} refused with a message naming them. "
           "Long options may be abbreviated to any unambiguous prefix; when an option is "
           "given more than once, the last one takes effect."]
    for section, names in reference_options():
        state, details = status(names)
        where = "" if section == "both" else f" ({section})"
        text = {"supported": "supported", "differs": "supported; differs: ",
                "refused": "refused: "}[state] + esc(details)
        out.append(".TP\n" + ", ".join(f"\\fB{esc(n)}\\fR" for n in names) + where
                   + "\n" + text[0].upper() + text[1:] + ".")
    return "\n".join(out) + "\n"


def page(mode: str) -> str:
    name = f"{mode}-sep"
    other = "pasta-sep" if mode == "passt" else "passt-sep"
    what = ("user-mode networking for virtual machines" if mode == "passt"
            else "user-mode networking for network namespaces")
    synopsis = (f".B {esc(name)}\n[\\fIOPTION\\fR]...\n" if mode == "passt" else
                f".B {esc(name)}\n[\\fIOPTION\\fR]... [\\fICOMMAND\\fR [\\fIARG\\fR]...]\n.br\n"
                f".B {esc(name)}\n[\\fIOPTION\\fR]... \\fIPID\\fR\n.br\n"
                f".B {esc(name)}\n[\\fIOPTION\\fR]... \\fB\\-\\-netns\\fR "
                "[\\fIPATH\\fR|\\fINAME\\fR]\n")
    description = (
        f"\\fB{esc(name)}\\fR is a privilege\\-separated Python reimplementation of "
        f"\\fB{mode}\\fR. It translates the guest's Layer\\-2 frames into ordinary TCP, UDP "
        "and ICMP echo sockets on the host and back, without any privilege: the guest "
        "gets the host's own addresses, routes and resolvers (no NAT where it can be "
        "avoided), by DHCP, NDP and DHCPv6, or directly with \\fB\\-\\-config\\-net\\fR. "
        + ("Frames travel over a UNIX stream socket, each preceded by its length as a "
           "4\\-byte big\\-endian number (QEMU's \\fB\\-netdev stream\\fR)."
           if mode == "passt" else
           "Frames travel over a tap device inside a network namespace that "
           f"\\fB{esc(name)}\\fR creates (running \\fICOMMAND\\fR, by default the user's "
           "shell) or joins. Any program name containing \\fIpasta\\fR selects this mode, "
           "so a link called \\fIpasta\\fR works for Podman."))
    options = "".join(option_entry(o) for o in OPTIONS
                      if o.modes in (BOTH, mode) and not o.refused)
    title = esc(name.upper())
    return (f'.TH {title} 1 "{DATE}" "passt\\-sep {__version__}" "User Commands"\n'
            f".SH NAME\n{esc(name)} \\- {what}\n"
            f".SH SYNOPSIS\n{synopsis}"
            f".SH DESCRIPTION\n{description}\n"
            f".SH OPTIONS\n{options}"
            + CLAT + compatibility() + SECURITY + LIFETIME
            + (PASTA_LIFETIME if mode == "pasta" else "")
            + EXAMPLES[mode] + FILES + SIGNALS + (PASTA_SIGNALS if mode == "pasta" else "")
            + EXIT.replace("SEE ALSO\n", f"SEE ALSO\n\\fB{esc(other)}\\fR(1), "))


def main() -> None:
    man = os.path.join(os.path.dirname(HERE), "man")
    for mode in ("passt", "pasta"):
        with open(os.path.join(man, f"{mode}-sep.1"), "w", encoding="utf-8") as handle:
            handle.write(page(mode))


if __name__ == "__main__":
    main()
