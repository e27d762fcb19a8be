"""Port forwarding specifications (``-t``, ``-u``, ``-T``, ``-U``), parsed.

Forms, as in passt(1): ``none``, ``all`` (passt), ``auto`` (pasta), ``22``,
``22:23`` (host port 22 to guest port 23), ``22,25``, ``22-80``,
``22-80:32-90``, ``ADDR/SPEC`` (bind address), ``ADDR%IF/SPEC`` and
``%IF/SPEC`` (bind interface), and ``~PORTS`` exclusions (a spec made of
exclusions only means every port but those).  No I/O here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

MAX_PORT = 65535
IFNAMSIZ = 16


class ConfigError(ValueError):
    """A command-line value is invalid; the message names it."""


class Mode(StrEnum):
    """passt (a VM on a UNIX socket) or pasta (a network namespace on a
    tap).  Here, below ``config``, because port specs depend on it too."""

    PASST = "passt"
    PASTA = "pasta"


@dataclass(frozen=True)
class ForwardRule:
    """One range of a forwarding spec: ports ``first``-``last`` to ``target`` onwards."""

    first: int            # first listening port
    last: int             # last listening port, inclusive
    target: int           # port on the other side for ``first``
    address: str | None = None
    interface: str | None = None

    def target_of(self, port: int) -> int:
        return self.target + (port - self.first)


@dataclass(frozen=True)
class Forwarding:
    """One forwarding option (``-t``, ``-u``, ``-T``, ``-U``), parsed."""

    mode: str = "none"                       # "none" | "spec" | "all" | "auto"
    rules: tuple[ForwardRule, ...] = field(default_factory=tuple)
    skip_unavailable: bool = False
    """``all`` and exclusion-only specs: ports that are taken or need a
    privilege are skipped, as passt does; only none at all is an error."""

    def lookup(self, port: int) -> int | None:
        """The target of a listening port, or None when it is not forwarded."""
        for rule in self.rules:
            if rule.first <= port <= rule.last:
                return rule.target_of(port)
        return None

    def ports(self) -> Iterator[tuple[int, int, ForwardRule]]:
        """Every (listening port, target port, rule)."""
        for rule in self.rules:
            for port in range(rule.first, rule.last + 1):
                yield port, rule.target_of(port), rule


def parse_forward(specs: Sequence[str], mode: str, option: str) -> Forwarding:
    """All values given for one option (it may be repeated): port lists
    add up; ``none``, ``auto`` and ``all`` stand alone."""
    rules: list[ForwardRule] = []
    kind = None
    skip = False
    for spec in specs:
        skip = skip or _exclusions_only(spec)
        spec_kind, spec_rules = _parse_one(spec, mode, option)
        if kind is not None and spec_kind != "spec":
            raise ConfigError(f"Port forwarding mode '{spec_kind}' conflicts with previous "
                              f"mode (option {option})")
        if kind not in (None, "spec"):
            raise ConfigError(f"Specific ports ({spec}) cannot be specified together with "
                              f"all/none/auto (option {option})")
        kind = spec_kind
        rules += spec_rules
    return Forwarding(kind or "spec", tuple(rules), skip and bool(rules))


def _exclusions_only(spec: str) -> bool:
    """``~22``, ``all`` or ``all,~22``: every port but some."""
    ports = spec.rsplit("/", 1)[-1]
    items = [item for item in ports.split(",") if item != "all"]
    return ports.startswith("all") or all(item.startswith("~") for item in items)


def _parse_one(spec: str, mode: str, option: str) -> tuple[str, list[ForwardRule]]:
    if spec == "none":
        return "none", []
    if spec == "auto":
        if mode != Mode.PASTA:
            raise ConfigError(f"'auto' port forwarding is only allowed for pasta (option {option})")
        return "auto", []
    address, interface, ports = _split_bind(spec, option)
    if address and option in ("-T", "-U"):
        raise ConfigError(f"Invalid port specifier: {spec}: no address can be given, these "
                          f"ports are bound on the namespace's loopback (option {option})")
    kind = "spec"
    if ports == "all" or ports.startswith("all,"):
        if mode != Mode.PASST:
            raise ConfigError(f"'all' port forwarding is only allowed for passt (option {option})")
        kind, ports = "all", ports[4:] or "~0"
    return kind, _rules(ports, address, interface, spec, option, everything=kind == "all")


def is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and '١٥', which
    int() then rejects or reads."""
    return text.isascii() and text.isdigit()


def _split_bind(spec: str, option: str) -> tuple[str | None, str | None, str]:
    if "/" not in spec:
        return None, None, spec
    bind, ports = spec.rsplit("/", 1)
    address, _, interface = bind.partition("%")
    if "%" in bind and (not 0 < len(interface) < IFNAMSIZ or "/" in interface
                        or any(c.isspace() for c in interface)):
        raise ConfigError(f"Invalid interface in port specifier: {spec} (option {option})")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]        # [::1]/22, as pasta takes it
    if address:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ConfigError(
                f"Invalid address in port specifier: {spec} (option {option})") from None
    return address or None, interface or None, ports


def _rules(ports: str, address: str | None, interface: str | None, spec: str, option: str,
           everything: bool) -> list[ForwardRule]:
    included: list[tuple[int, int, int]] = []
    excluded: set[int] = set()
    for item in ports.split(","):
        if item.startswith("~"):
            first, last = _range(item[1:], spec, option, allow_zero=item == "~0")
            excluded.update(range(first, last + 1))
            continue
        source, colon, dest = item.partition(":")
        first, last = _range(source, spec, option)
        target = first
        if colon and not dest:
            raise ConfigError(f"Invalid port specifier: {spec}: no target port after ':' "
                              f"(option {option})")
        if dest:
            target, target_last = _range(dest, spec, option)
            if target_last - target != last - first:
                raise ConfigError(f"Mismatched port range sizes: {spec} (option {option})")
        included.append((first, last, target))
    if not included:
        if not excluded:
            raise ConfigError(f"Invalid port specifier: {spec} (option {option})")
        included.append((1, MAX_PORT, 1))
    elif everything:
        raise ConfigError(f"Invalid port specifier: {spec} (option {option})")
    rules = []
    for first, last, target in included:
        rules += _split_around(first, last, target, excluded, address, interface)
    return rules


def _range(text: str, spec: str, option: str, allow_zero: bool = False) -> tuple[int, int]:
    first_text, sep, last_text = text.partition("-")
    try:
        first = int(first_text, 10)
        last = int(last_text, 10) if sep else first
    except ValueError:
        raise ConfigError(f"Invalid port specifier: {spec} (option {option})") from None
    low = 0 if allow_zero else 1
    if not (low <= first <= last <= MAX_PORT) or not is_decimal(first_text) or (
            sep and not is_decimal(last_text)):
        raise ConfigError(f"Invalid port specifier: {spec} (option {option})")
    return first, last


def _split_around(first: int, last: int, target: int, excluded: set[int],
                  address: str | None, interface: str | None) -> list[ForwardRule]:
    """The range [first, last] minus exclusions, as contiguous rules."""
    rules = []
    start = None
    for port in range(first, last + 2):
        inside = port <= last and port not in excluded
        if inside and start is None:
            start = port
        elif not inside and start is not None:
            rules.append(ForwardRule(start, port - 1, target + (start - first), address, interface))
            start = None
    return rules
