"""TokenBucket: the achieved rate, bursts, FIFO order and a provider's Retry-After."""

from __future__ import annotations

import asyncio
import time

from connectors.sink_notify.limiter import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ready_at_once(bucket: TokenBucket, count: int) -> int:
    """How many of ``count`` acquires succeed without the clock moving."""
    granted = 0
    for _ in range(count):
        try:
            await asyncio.wait_for(bucket.acquire(), timeout=0.02)
        except asyncio.TimeoutError:
            break
        granted += 1
    return granted


def test_tokens_accrue_with_the_clock_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)

    async def run() -> None:
        assert await ready_at_once(bucket, 10) == 3  # starts full
        clock.now += 1.0
        assert await ready_at_once(bucket, 10) == 2  # 2 tokens a second
        clock.now += 0.25
        assert await ready_at_once(bucket, 10) == 0  # half a token is not one
        clock.now += 0.25
        assert await ready_at_once(bucket, 10) == 1
        clock.now += 3600
        assert await ready_at_once(bucket, 10) == 3  # an idle hour buys no more than the burst

    asyncio.run(run())


def test_penalize_holds_every_token_until_the_deadline_then_restarts_with_one() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=4.0, burst=5, clock=clock)

    async def run() -> None:
        bucket.penalize(30)
        clock.now += 29.5
        assert await ready_at_once(bucket, 10) == 0
        clock.now += 0.5
        assert await ready_at_once(bucket, 10) == 1  # no burst after a 429: one, then the rate
        clock.now += 0.25
        assert await ready_at_once(bucket, 10) == 1
        bucket.penalize(5)
        bucket.penalize(1)  # a shorter hold never shortens a longer one
        clock.now += 4.75
        assert await ready_at_once(bucket, 10) == 0
        clock.now += 0.25
        assert await ready_at_once(bucket, 10) == 1

    asyncio.run(run())


def test_two_hundred_acquires_at_100_per_second_take_two_seconds_less_the_burst() -> None:
    bucket = TokenBucket(rate_per_s=100.0)  # burst 1

    async def run() -> float:
        start = time.monotonic()
        await asyncio.gather(*(bucket.acquire() for _ in range(200)))
        return time.monotonic() - start

    elapsed = asyncio.run(run())
    expected = 199 / 100.0  # the first token is there at once
    assert expected * 0.99 <= elapsed <= expected * 1.01 + 0.03  # late wake-ups are not lost


def test_burst_goes_at_once_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=20.0, burst=10)

    async def run() -> list[float]:
        start = time.monotonic()
        times = []
        for _ in range(14):
            await bucket.acquire()
            times.append(time.monotonic() - start)
        return times

    times = asyncio.run(run())
    assert times[9] < 0.02
    assert 0.04 <= times[10] <= 0.09 and 0.19 <= times[13] <= 0.25


def test_waiters_are_served_in_arrival_order() -> None:
    bucket = TokenBucket(rate_per_s=500.0)
    order: list[int] = []

    async def sender(number: int) -> None:
        await bucket.acquire()
        order.append(number)

    async def run() -> None:
        await asyncio.gather(*(sender(i) for i in range(50)))

    asyncio.run(run())
    assert order == list(range(50))


def test_a_cancelled_waiter_takes_no_token_and_blocks_no_one() -> None:
    bucket = TokenBucket(rate_per_s=10.0)

    async def run() -> float:
        await bucket.acquire()
        waiter = asyncio.create_task(bucket.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        start = time.monotonic()
        await bucket.acquire()
        return time.monotonic() - start

    assert asyncio.run(run()) < 0.1  # the next token (due 0.1 s after the first) went to us


def test_penalize_while_senders_wait_delays_them_all() -> None:
    bucket = TokenBucket(rate_per_s=100.0)
    done: list[float] = []

    async def sender() -> None:
        await bucket.acquire()
        done.append(time.monotonic())

    async def run() -> float:
        await bucket.acquire()
        tasks = [asyncio.create_task(sender()) for _ in range(10)]
        await asyncio.sleep(0.005)
        penalized_at = time.monotonic()
        bucket.penalize(0.3)  # a 429 with Retry-After: 0.3 reached one sender
        await asyncio.gather(*tasks)
        return penalized_at

    penalized_at = asyncio.run(run())
    assert all(t - penalized_at >= 0.3 for t in done)
    assert done[-1] - penalized_at >= 0.3 + 9 / 100.0 - 0.005  # resumed at the rate, not in a burst


def test_unlimited_returns_at_once_but_honours_penalize() -> None:
    bucket = TokenBucket(rate_per_s=0)

    async def run() -> tuple[float, float]:
        start = time.monotonic()
        await asyncio.gather(*(bucket.acquire() for _ in range(1000)))
        free = time.monotonic() - start
        bucket.penalize(0.2)
        start = time.monotonic()
        await asyncio.gather(*(bucket.acquire() for _ in range(10)))
        return free, time.monotonic() - start

    free, held = asyncio.run(run())
    assert free < 0.1
    assert 0.2 <= held < 0.3
