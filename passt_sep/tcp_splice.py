"""Loopback fast path decisions (pasta): two sockets joined, no frames.

A connection between the host's loopback (or own address) and the
namespace's loopback is carried by two kernel sockets, one on each side,
with data moved by ``splice()`` through a pipe per direction so it never
enters Python.  This module keeps, per direction, what the I/O layer needs
to decide: how much waits in the pipe, whether the source reached end of
file, and whether that end was passed on (``shutdown(SHUT_WR)``).  No I/O
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PIPE_CAPACITY = 65536


@dataclass
class SpliceWay:
    """One way of a spliced connection, through its pipe."""

    pending: int = 0          # bytes in the pipe, not yet written out
    eof: bool = False         # the source returned end of file
    shut: bool = False        # the end of file was passed on

    def want_read(self) -> bool:
        return not self.eof and self.pending < PIPE_CAPACITY

    def want_write(self) -> bool:
        return self.pending > 0

    def read(self, count: int) -> None:
        """``count`` bytes spliced in; 0 means end of file."""
        if count == 0:
            self.eof = True
        self.pending += count

    def wrote(self, count: int) -> bool:
        """``count`` bytes spliced out; True when the end of file must now
        be passed on."""
        self.pending -= count
        if self.eof and self.pending == 0 and not self.shut:
            self.shut = True
            return True
        return False

    @property
    def done(self) -> bool:
        return self.shut


@dataclass
class SplicePair:
    """Both directions of one spliced connection: 0 is a -> b, 1 is b -> a."""

    connected: bool = False   # the namespace-side connect() finished
    ways: tuple[SpliceWay, SpliceWay] = field(
        default_factory=lambda: (SpliceWay(), SpliceWay()))

    @property
    def finished(self) -> bool:
        return all(way.done for way in self.ways)
