"""The hybrid logical clock's guarantees (specs/crdt.md §1), as properties.

The pure functions: a tick is after the last reading; a receive is after both the last
reading and the remote one (that is what makes a write made after seeing another win its
register, whatever the two machines' wall clocks say). The persisted clock: across
restarts of a replica and a wall clock that jumps back, no stamp is ever given twice or out
of order. Wall times are drawn from a narrow range so that the equal-wall branches, where
only the counter orders readings, are exercised as often as the others.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtim import ClockDriftError, CrdtimError
from crdtim.crdt import hlc
from crdtim.crdt.hlc import Hlc
from crdtim.replica import Replica

walls = st.integers(min_value=0, max_value=6)
readings = st.builds(Hlc, walls, st.integers(min_value=0, max_value=4))
#: No refusal for drift in the ordering properties: the drift rule has its own test.
NO_DRIFT_LIMIT = 10**9


@given(readings, walls)
def test_tick_is_after_the_last_reading(last: Hlc, now: int) -> None:
    # tick(l, now) > l, and it follows the wall clock when that is ahead.
    after = hlc.tick(last, now)
    assert after > last
    assert after.wall >= now


@given(readings, readings, walls)
def test_receive_is_after_both_readings(last: Hlc, remote: Hlc, now: int) -> None:
    # receive(l, r, now) > l and > r: a mutant that drops any "+ 1" of receive's counter
    # fails here (it returns a reading equal to l or r when their walls tie).
    after = hlc.receive(last, remote, now, NO_DRIFT_LIMIT)
    assert after > last
    assert after > remote
    assert after.wall >= now


@given(readings, readings, walls, st.integers(min_value=0, max_value=3))
def test_receive_refuses_readings_too_far_ahead(
    last: Hlc, remote: Hlc, now: int, max_drift: int
) -> None:
    if remote.wall > now + max_drift:
        with pytest.raises(ClockDriftError):
            hlc.receive(last, remote, now, max_drift)
    else:
        assert hlc.receive(last, remote, now, max_drift) > remote


def test_clock_drift_error_is_one_class_and_a_crdtim_error() -> None:
    # The pure clock raises it; callers catch it as crdtim.ClockDriftError or CrdtimError.
    assert hlc.ClockDriftError is ClockDriftError
    with pytest.raises(CrdtimError):
        hlc.receive(hlc.ZERO, Hlc(10**6, 0), 0, 0)


# A run: for each step, whether the replica is closed and opened again first, and the wall
# clock at the write (free to go back: a restart after an NTP step, a VM restored).
steps = st.lists(st.tuples(st.booleans(), walls), min_size=1, max_size=12)


@given(steps)
def test_persisted_clock_never_gives_a_stamp_twice_across_restarts(
    run: list[tuple[bool, int]],
) -> None:
    now = [0]
    given_stamps: list[tuple[int, int]] = []
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "r"
        replica = Replica.open(path, durability="nosync", now_ms=lambda: now[0])
        try:
            for restart, wall in run:
                if restart:
                    replica.close()
                    replica = Replica.open(path, durability="nosync", now_ms=lambda: now[0])
                now[0] = wall
                replica.set_title("c", f"at {wall}")
                stamp = replica.state().fields("c")["title"].stamp
                if given_stamps:
                    assert (stamp.wall, stamp.counter) > given_stamps[-1]
                given_stamps.append((stamp.wall, stamp.counter))
        finally:
            replica.close()


# -- the clock's lease (specs/storage.md §3a) ----------------------------------------------


class _Txn:
    """A write transaction of the shared directory: meta.clock as two processes see it."""


@given(turns=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3), st.integers(0, 50)),
                      max_size=60))
def test_two_processes_taking_turns_stamp_ever_later_and_stay_near_the_wall_clock(turns):
    # Two LeasedClocks over one stored lease, as two processes over one directory: whoever
    # writes, each stamp is above every stamp before it, and the clock never runs further
    # ahead of the writer's wall clock than one lease (no process pushes the other ahead).
    from crdtim.replica._clock import LEASE_MS, LeasedClock

    clocks, stored, now = [LeasedClock(), LeasedClock()], hlc.ZERO, 1_000
    stamps: list[Hlc] = []
    for who, ticks, elapsed in turns:
        now += elapsed
        clock, txn = clocks[who], _Txn()
        reading = clock.start(txn, stored)
        for _ in range(ticks):
            reading = hlc.tick(reading, now)
            stamps.append(reading)
        lease = clock.lease_to_store(txn, stored, reading, now)
        if lease is not None:
            assert lease >= reading
            stored = lease
        clock.committed()
        assert reading.wall <= now + LEASE_MS
    assert stamps == sorted(set(stamps))
