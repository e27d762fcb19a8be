"""The loopback splice path's per-direction decisions."""

from __future__ import annotations

from passt_sep.tcp_splice import PIPE_CAPACITY, SplicePair, SpliceWay


def test_read_write_and_end_of_file_passed_on_once() -> None:
    way = SpliceWay()
    assert way.want_read() and not way.want_write()
    way.read(1000)
    assert way.want_write() and way.pending == 1000
    assert not way.wrote(400)
    way.read(0)  # end of file, 600 bytes still in the pipe
    assert not way.want_read()
    assert not way.wrote(500)
    assert way.wrote(100)  # drained: now shut the other side's write
    assert not way.wrote(0)  # only once
    assert way.done


def test_full_pipe_stops_reading() -> None:
    way = SpliceWay()
    way.read(PIPE_CAPACITY)
    assert not way.want_read()
    way.wrote(1)
    assert way.want_read()


def test_pair_finishes_when_both_ways_are_shut() -> None:
    pair = SplicePair()
    a_to_b, b_to_a = pair.ways
    a_to_b.read(0)
    assert a_to_b.wrote(0)
    assert not pair.finished
    b_to_a.read(0)
    assert b_to_a.wrote(0)
    assert pair.finished
