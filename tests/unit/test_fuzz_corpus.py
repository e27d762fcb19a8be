"""The fuzz targets' bounded round for CI, without atheris.

For every target in ``fuzz/``: its seed corpus (``tests/corpus/<name>/``
and the seeds its builders make now), then ``MUTATIONS`` deterministic
mutations of each seed (bit flips, interesting values, truncations,
insertions of random bytes or dictionary tokens, deletions, duplications)
and a random input every ``RANDOM_EVERY``, all through the same ``check``
the atheris target runs.  ``check`` lets out only what is a bug: an
exception the parser does not document, or a broken invariant.

Known bugs are listed in ``KNOWN_BUGS`` by crash signature; their inputs
are kept as ``tests/corpus/<name>/crash-*`` and replayed here one by one:
each such test is an expected failure (xfail) while the bug is there and
passes once it is fixed.  A target whose mutations only hit known bugs is
an expected failure too; any other crash fails.
"""

from __future__ import annotations

import os
import random
import sys
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fuzz import common  # noqa: E402
from fuzz.targets import TARGETS, load  # noqa: E402

MUTATIONS = 2000          # per seed
RANDOM_EVERY = 50         # one input in 50 is random bytes instead of a mutation
MAX_RANDOM = 512

# signature prefix (see common.signature) -> why it is a bug
KNOWN_BUGS: dict[str, list[tuple[str, str]]] = {}    # none open


def known_bug(name: str, signature: str) -> str | None:
    for prefix, reason in KNOWN_BUGS.get(name, ()):
        if signature.startswith(prefix):
            return reason
    return None


def seed_inputs(name: str) -> list[tuple[str, bytes]]:
    """The checked-in seeds and, if they changed since, the builders' own."""
    seeds = dict(common.load_corpus(name))
    contents = set(seeds.values())
    for label, data in load(name).seeds():
        if data not in contents:
            seeds[f"built-{label}"] = data
    return sorted(seeds.items())


def inputs(name: str, seed: bytes, rng: random.Random, dictionary: list[bytes]):
    yield seed
    for index in range(1, MUTATIONS + 1):
        if index % RANDOM_EVERY == 0:
            yield rng.randbytes(rng.randrange(MAX_RANDOM))
        else:
            yield common.mutate(rng, seed, dictionary)


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_and_mutations(name: str) -> None:
    module = load(name)
    seeds = seed_inputs(name)
    assert seeds, f"no seed corpus for {name}: run python fuzz/make_corpus.py"
    rng = random.Random(f"passt-sep-fuzz-{name}")
    unknown: dict[str, tuple[str, bytes, str]] = {}
    known: dict[str, bytes] = {}
    for label, seed in seeds:
        for data in inputs(name, seed, rng, list(module.DICTIONARY)):
            try:
                module.check(data)
            except Exception as exc:
                signature = common.signature(exc)
                reason = known_bug(name, signature)
                if reason is not None:
                    known.setdefault(reason, data)
                elif signature not in unknown:
                    unknown[signature] = (label, data, traceback.format_exc())
    assert not unknown, "\n\n".join(
        f"{signature} (mutation of {label}), input {data.hex()}:\n{trace}"
        for signature, (label, data, trace) in unknown.items())
    if known:
        pytest.xfail("; ".join(sorted(known)))


CRASHES = [(name, label, data) for name in TARGETS
           for label, data in common.load_corpus(name, crashes=True)]


@pytest.mark.parametrize("name, label, data", CRASHES,
                         ids=[f"{name}-{label}" for name, label, _ in CRASHES])
def test_known_crash_input(name: str, label: str, data: bytes) -> None:
    """A kept crash input: an expected failure while its bug is known, a
    regression test once it is fixed."""
    try:
        load(name).check(data)
    except Exception as exc:
        reason = known_bug(name, common.signature(exc))
        if reason is None:
            raise
        pytest.xfail(reason)


def test_provider_reads_control_bytes_from_the_end() -> None:
    """The fallback provider decodes as atheris' FuzzedDataProvider does
    (libFuzzer's semantics), so crash inputs replay the same without it."""
    fdp = common.Provider(bytes(range(1, 40)))
    assert fdp.ConsumeIntInRange(0, 255) == 39
    assert fdp.ConsumeIntInRange(0, 3) == 38 % 4
    assert fdp.ConsumeIntInRange(0, 1000) == (37 << 8 | 36) % 1001
    assert fdp.ConsumeBytes(3) == b"\x01\x02\x03"
    assert fdp.ConsumeBool() is False and fdp.ConsumeBool() is True      # 4, 5: the front
    assert fdp.remaining_bytes() == 30
    assert common.rest(fdp) == bytes(range(6, 36)) and fdp.remaining_bytes() == 0
    assert fdp.ConsumeBool() is False
    assert fdp.ConsumeIntInRange(5, 10) == 5 and fdp.ConsumeBytes(4) == b""
    assert common.Provider(b"\x02\x01").ConsumeIntInRange(0, 65535) == 0x0102
    assert common.Provider(bytes([5])).PickValueInList("abcdefg") == "f"


def test_provider_matches_atheris() -> None:
    atheris = pytest.importorskip("atheris")
    rng = random.Random(7)
    for _ in range(300):
        data = rng.randbytes(rng.randrange(40))
        ours, theirs = common.Provider(data), atheris.FuzzedDataProvider(data)
        for _ in range(6):
            low = rng.randrange(300)
            high = low + rng.choice((0, 1, 3, 255, 256, 1000, 65535, 1 << 40))
            assert ours.ConsumeIntInRange(low, high) == theirs.ConsumeIntInRange(low, high)
            assert ours.ConsumeBool() == theirs.ConsumeBool()
            count = rng.randrange(6)
            assert ours.ConsumeBytes(count) == theirs.ConsumeBytes(count)
            assert ours.remaining_bytes() == theirs.remaining_bytes()
