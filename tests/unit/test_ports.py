"""Port forwarding specifications (-t, -u, -T, -U) in every form of passt(1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_sep.ports import ConfigError, Forwarding, ForwardRule, parse_forward

R = ForwardRule


def parse(*specs: str, mode: str = "passt", option: str = "-t") -> Forwarding:
    return parse_forward(list(specs), mode, option)


@pytest.mark.parametrize("spec, rules", [
    ("22", [R(22, 22, 22)]),
    ("22:23", [R(22, 22, 23)]),
    ("22,25", [R(22, 22, 22), R(25, 25, 25)]),
    ("22-80", [R(22, 80, 22)]),
    ("22-80:32-90", [R(22, 80, 32)]),
    ("1", [R(1, 1, 1)]),
    ("65535:1", [R(65535, 65535, 1)]),
    ("1-65535", [R(1, 65535, 1)]),
    ("80-80:8080-8080", [R(80, 80, 8080)]),
    ("0022", [R(22, 22, 22)]),
    ("8080:80,443,1000-1002:2000-2002",
     [R(8080, 8080, 80), R(443, 443, 443), R(1000, 1002, 2000)]),
])
def test_port_forms(spec: str, rules: list[ForwardRule]) -> None:
    assert parse(spec) == Forwarding("spec", tuple(rules))
    assert parse(spec, mode="pasta") == Forwarding("spec", tuple(rules))


def test_lookup_maps_ranges_by_offset() -> None:
    fwd = parse("22-80:32-90", "443:8443")
    assert [fwd.lookup(p) for p in (21, 22, 23, 79, 80, 81, 443, 8443)] == [
        None, 32, 33, 89, 90, None, 8443, None]
    assert list(fwd.ports())[:2] == [(22, 32, R(22, 80, 32)), (23, 33, R(22, 80, 32))]
    assert len(list(fwd.ports())) == 60
    assert R(22, 80, 32).target_of(50) == 60


@pytest.mark.parametrize("spec, address, interface", [
    ("127.0.0.1/22", "127.0.0.1", None),
    ("::1/22", "::1", None),
    ("0:0:0:0:0:0:0:1/22", "::1", None),                    # normalised
    ("2001:DB8::1/22", "2001:db8::1", None),
    ("192.0.2.1%eth0/22", "192.0.2.1", "eth0"),
    ("fe80::1%enp0s31f6/22", "fe80::1", "enp0s31f6"),
    ("%lo/22", None, "lo"),
    ("%abcdefghijklmno/22", None, "abcdefghijklmno"),       # IFNAMSIZ - 1 characters
])
def test_bind_address_and_interface(spec: str, address: str | None,
                                    interface: str | None) -> None:
    assert parse(spec).rules == (R(22, 22, 22, address, interface),)


def test_bind_applies_to_every_range_of_the_spec() -> None:
    assert parse("10.0.0.1%br0/22,80-81:8080-8081,~81").rules == (
        R(22, 22, 22, "10.0.0.1", "br0"), R(80, 80, 8080, "10.0.0.1", "br0"))


@pytest.mark.parametrize("spec, rules", [
    ("~22", [R(1, 21, 1), R(23, 65535, 23)]),
    ("~1,~65535", [R(2, 65534, 2)]),
    ("~1-1023", [R(1024, 65535, 1024)]),
    ("22-30,~25", [R(22, 24, 22), R(26, 30, 26)]),
    ("~25,22-30", [R(22, 24, 22), R(26, 30, 26)]),           # order does not matter
    ("20-30:120-130,~25", [R(20, 24, 120), R(26, 30, 126)]),
    ("22-30,~22,~30", [R(23, 29, 23)]),
    ("22-30,~20-40", []),
    ("22-30,~23,~25-26,~29", [R(22, 22, 22), R(24, 24, 24), R(27, 28, 27), R(30, 30, 30)]),
])
def test_exclusions(spec: str, rules: list[ForwardRule]) -> None:
    fwd = parse(spec)
    only_exclusions = spec.startswith("~") and "," not in spec.replace(",~", "")
    assert fwd == Forwarding("spec", tuple(rules), only_exclusions)


def test_exclusion_only_spec_keeps_the_bind() -> None:
    assert parse("::1/~22").rules == (R(1, 21, 1, "::1"), R(23, 65535, 23, "::1"))


def test_all_is_every_port_passt_only() -> None:
    assert parse("all") == Forwarding("all", (R(1, 65535, 1),), True)
    assert parse("all,~22,~80-90") == Forwarding(
        "all", (R(1, 21, 1), R(23, 79, 23), R(91, 65535, 91)), True)
    assert parse("127.0.0.1/all") == Forwarding("all", (R(1, 65535, 1, "127.0.0.1"),), True)
    with pytest.raises(ConfigError) as info:
        parse("all", mode="pasta", option="-u")
    assert str(info.value) == "'all' port forwarding is only allowed for passt (option -u)"


def test_auto_is_pasta_only() -> None:
    assert parse("auto", mode="pasta", option="-T") == Forwarding("auto", ())
    with pytest.raises(ConfigError) as info:
        parse("auto")
    assert str(info.value) == "'auto' port forwarding is only allowed for pasta (option -t)"


def test_none_and_repeated_options() -> None:
    assert parse("none") == Forwarding("none", ()) == Forwarding()
    assert parse("none", mode="pasta") == Forwarding("none", ())
    assert parse("22", "80:8080") == Forwarding("spec", (R(22, 22, 22), R(80, 80, 8080)))



@pytest.mark.parametrize("specs, mode, message", [
    (("none", "22"), "passt", "Specific ports (22) cannot be specified together with "
     "all/none/auto (option -u)"),
    (("auto", "8080"), "pasta", "Specific ports (8080) cannot be specified together with "
     "all/none/auto (option -u)"),
    (("all", "22:23"), "passt", "Specific ports (22:23) cannot be specified together with "
     "all/none/auto (option -u)"),
    (("22", "none"), "passt", "Port forwarding mode 'none' conflicts with previous mode "
     "(option -u)"),
    (("8080", "auto"), "pasta", "Port forwarding mode 'auto' conflicts with previous mode "
     "(option -u)"),
    (("80", "all"), "passt", "Port forwarding mode 'all' conflicts with previous mode "
     "(option -u)"),
    (("none", "none"), "passt", "Port forwarding mode 'none' conflicts with previous mode "
     "(option -u)"),
])
def test_modes_stand_alone(specs: tuple[str, ...], mode: str, message: str) -> None:
    """As pasta: a port list never mixes with none, auto or all, whichever comes first."""
    with pytest.raises(ConfigError) as info:
        parse(*specs, mode=mode, option="-u")
    assert str(info.value) == message


@pytest.mark.parametrize("spec", ["18146:", "22,80:", "1-2:"])
def test_empty_target_is_an_error(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(spec)
    assert str(info.value) == f"Invalid port specifier: {spec}: no target port after ':' " \
        "(option -t)"


@pytest.mark.parametrize("option", ["-T", "-U"])
@pytest.mark.parametrize("spec", ["127.0.0.1/8080", "[::1]/8080", "192.0.2.1%lo/1-2"])
def test_namespace_specs_take_no_address(option: str, spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(spec, mode="pasta", option=option)
    assert str(info.value) == (f"Invalid port specifier: {spec}: no address can be given, "
                               "these ports are bound on the namespace's loopback "
                               f"(option {option})")


def test_bracketed_ipv6_bind_address() -> None:
    assert parse("[::1]/8080") == parse("::1/8080") == Forwarding(
        "spec", (R(8080, 8080, 8080, "::1"),))
    assert parse("[2001:db8::1]%eth0/22:2222") == Forwarding(
        "spec", (R(22, 22, 2222, "2001:db8::1", "eth0"),))


@pytest.mark.parametrize("spec", [
    "", "0", "65536", "99999999999999999999", "22-", "-22", "22-21", "abc", ":22", "22:0",
    "22:65536", "+22", " 22", "22 ", "0x16", "1_000", "22,,25", "22,", ",22", "22:23:24",
    "22--30", "22-30-40", "~", "~0-5", "~65536", "~abc", "22,~", "/", "all,22", "all,~0,1",
    "ALL", "Auto", "none,22", "22-30:40", "22:40-41", "²",
])
def test_invalid_port_specifier(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(spec)
    assert str(info.value) in (f"Invalid port specifier: {spec} (option -t)",
                               f"Mismatched port range sizes: {spec} (option -t)")


@pytest.mark.parametrize("spec", ["22-80:32-89", "22:23-24", "1-2:3-5"])
def test_mismatched_ranges(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"^Mismatched port range sizes: .* \(option -U\)$"):
        parse(spec, mode="pasta", option="-U")


@pytest.mark.parametrize("spec", ["192.0.2.300/22", "[::1/22", "[192.0.2.1]x/22",
                                  "localhost/22", "::1::2/22", "10.0.0.1/24/22", "fe80::1%/22",
                                  "22/"])
def test_invalid_address(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(spec)
    assert str(info.value) in (f"Invalid address in port specifier: {spec} (option -t)",
                               f"Invalid interface in port specifier: {spec} (option -t)")


@pytest.mark.parametrize("spec", ["%/22", "%abcdefghijklmnop/22", "::1%/22"])
def test_invalid_interface(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(spec)
    assert str(info.value) == f"Invalid interface in port specifier: {spec} (option -t)"


@pytest.mark.parametrize("spec", ["%eth 0/22", "%a/b/22", "%eth0\n/22"])
def test_impossible_interface_names_rejected(spec: str) -> None:
    with pytest.raises(ConfigError, match="Invalid interface"):
        parse(spec)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# -- properties -----------------------------------------------------------------------

@st.composite
def specs(draw: st.DrawFn) -> tuple[str, dict[int, int]]:
    """A random valid spec over ports 1-300 and the mapping it means."""
    items, included, excluded = [], [], set()
    for _ in range(draw(st.integers(1, 5))):
        first = draw(st.integers(1, 300))
        last = draw(st.integers(first, min(first + 20, 300)))
        text = str(first) if first == last and draw(st.booleans()) else f"{first}-{last}"
        if draw(st.booleans()):
            excluded.update(range(first, last + 1))
            items.append("~" + text)
            continue
        target = first
        if draw(st.booleans()):
            target = draw(st.integers(1, 65535 - (last - first)))
            dest = str(target) if first == last else f"{target}-{target + last - first}"
            text += ":" + dest
        included.append((first, last, target))
        items.append(text)
    expected: dict[int, int] = {}
    if not included:
        included = [(1, 65535, 1)]
    for first, last, target in included:
        for port in range(first, last + 1):
            if port not in excluded:
                expected.setdefault(port, target + port - first)
    return ",".join(items), expected


@given(specs())
def test_parse_means_what_the_spec_says(case: tuple[str, dict[int, int]]) -> None:
    spec, expected = case
    fwd = parse(spec)
    assert fwd.mode == "spec"
    for rule in fwd.rules:
        assert 1 <= rule.first <= rule.last <= 65535
        assert 1 <= rule.target and rule.target_of(rule.last) <= 65535
    for port in (*range(0, 310), 65535):
        assert fwd.lookup(port) == expected.get(port), port


@given(specs(), st.sampled_from([None, "192.0.2.1", "::1"]),
       st.sampled_from([None, "eth0"]))
def test_bind_address_and_interface_on_every_rule(case: tuple[str, dict[int, int]],
                                                   address: str | None,
                                                   interface: str | None) -> None:
    bind = (address or "") + (f"%{interface}" if interface else "")
    fwd = parse(f"{bind}/{case[0]}" if bind else case[0])
    assert all((r.address, r.interface) == (address, interface) for r in fwd.rules)


def _only_config_errors(spec: str, mode: str) -> None:
    try:
        fwd = parse(spec, mode=mode)
    except ConfigError as exc:
        assert type(exc) is ConfigError
        assert str(exc).endswith("(option -t)")
        return
    assert fwd.mode in ("spec", "all", "auto", "none")
    for rule in fwd.rules:
        assert 1 <= rule.first <= rule.last <= 65535 and 1 <= rule.target_of(rule.last) <= 65535


@given(st.text(max_size=30), st.sampled_from(["passt", "pasta"]))
def test_arbitrary_text_only_config_error(spec: str, mode: str) -> None:
    _only_config_errors(spec, mode)


@given(st.text("0123456789,:-~/%.al", max_size=24), st.sampled_from(["passt", "pasta"]))
def test_arbitrary_spec_like_text_only_config_error(spec: str, mode: str) -> None:
    _only_config_errors(spec, mode)
