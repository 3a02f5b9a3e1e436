"""The body reads' deadlines (``limits.ReadDeadlines``): one timer for every read waiting on a
loop, so each read must still get its own deadline, and only its own.

The request-level behaviour (408, nothing forwarded) is tested through the real server in
test_proxy_limits.py; these tests hold the timer's bookkeeping, which that test cannot reach:
several reads with different deadlines, a shorter one arriving while the timer waits for a longer
one, a cancellation that is not the deadline's.
"""

import asyncio

import pytest

from apps.proxy.limits import ReadDeadlines, ReadTimedOut

# Guards only: a test that has not finished within this fails instead of hanging.
GUARD = 10.0


def test_a_read_past_its_deadline_times_out(run):
    async def main():
        deadlines = ReadDeadlines(asyncio.get_running_loop())
        never = asyncio.get_running_loop().create_future()
        with pytest.raises(ReadTimedOut):
            await asyncio.wait_for(deadlines.wait(never, 0.05), GUARD)

    run(main())


def test_a_shorter_deadline_arriving_later_is_kept(run):
    """The timer is armed for the first read's long deadline; a second read with a short one
    must arm it earlier, not wait for the first's."""

    async def main():
        loop = asyncio.get_running_loop()
        deadlines = ReadDeadlines(loop)
        long_read = asyncio.ensure_future(deadlines.wait(loop.create_future(), 3600))
        await asyncio.sleep(0)
        with pytest.raises(ReadTimedOut):
            await asyncio.wait_for(deadlines.wait(loop.create_future(), 0.05), GUARD)
        assert not long_read.done()  # the first read keeps waiting: its deadline is far
        long_read.cancel()

    run(main())


def test_a_deadline_passing_costs_no_other_read(run):
    """The timer fires for a short deadline while a longer read waits: the longer read is not
    cancelled, gets its message when it comes, and the timer is armed again for it."""

    async def main():
        loop = asyncio.get_running_loop()
        deadlines = ReadDeadlines(loop)
        message = loop.create_future()
        longer = asyncio.ensure_future(deadlines.wait(message, 3600))
        with pytest.raises(ReadTimedOut):
            await asyncio.wait_for(deadlines.wait(loop.create_future(), 0.05), GUARD)
        assert not longer.done()
        message.set_result("body")
        assert await asyncio.wait_for(longer, GUARD) == "body"
        # And a later read on the same deadlines times out in turn.
        with pytest.raises(ReadTimedOut):
            await asyncio.wait_for(deadlines.wait(loop.create_future(), 0.05), GUARD)

    run(main())


def test_a_read_that_arrives_in_time_is_returned(run):
    async def main():
        loop = asyncio.get_running_loop()
        deadlines = ReadDeadlines(loop)
        message = loop.create_future()
        loop.call_later(0.01, message.set_result, "body")
        assert await asyncio.wait_for(deadlines.wait(message, 3600), GUARD) == "body"

    run(main())


def test_each_waiting_read_times_out_at_its_own_deadline(run):
    """After firing for the first deadline, the timer is armed again for the next one."""

    async def main():
        loop = asyncio.get_running_loop()
        deadlines = ReadDeadlines(loop)
        later = asyncio.ensure_future(deadlines.wait(loop.create_future(), 0.3))
        with pytest.raises(ReadTimedOut):
            await asyncio.wait_for(deadlines.wait(loop.create_future(), 0.05), GUARD)
        assert not later.done()
        with pytest.raises(ReadTimedOut):
            await asyncio.wait_for(later, GUARD)

    run(main())


def test_a_cancellation_that_is_not_the_deadlines_stays_a_cancellation(run):
    async def main():
        loop = asyncio.get_running_loop()
        deadlines = ReadDeadlines(loop)
        read = asyncio.ensure_future(deadlines.wait(loop.create_future(), 3600))
        await asyncio.sleep(0)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read

    run(main())
