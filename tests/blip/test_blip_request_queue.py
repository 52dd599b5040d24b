"""A LiteCore-sized window of open requests waits for handlers instead of being refused
(LiteCore's pusher keeps up to 2 MiB of ``rev`` messages awaiting a reply: ~2,000 at 1 KB);
only beyond the queue's bounds does a request get 503, and frames ready together still go out
in order when written as one batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.blip.test_blip_session import TIMEOUT, blip_pair

from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.blip.limits import BLIPLimits


async def test_two_thousand_open_requests_are_all_answered() -> None:
    release = asyncio.Event()
    running: list[int] = []
    peak = 0

    def setup(session: BLIPSession) -> None:
        async def slow(request: IncomingRequest) -> None:
            nonlocal peak
            running.append(request.number)
            peak = max(peak, len(running))
            await release.wait()  # like a rev waiting for its batch's commit
            running.remove(request.number)
            request.respond({"n": str(request.number)}, request.body)

        session.register("rev", slow)

    async with blip_pair(setup) as pair:
        body = b"x" * 1000
        futures = [pair.client.send_nowait("rev", {"i": str(i)}, body) for i in range(2000)]
        server = await pair.server_session()
        while len(running) < server._limits.max_open_requests:
            await asyncio.sleep(0.01)
        release.set()
        replies = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)  # type: ignore[arg-type]
    assert [r.is_error for r in replies].count(True) == 0
    assert [r.body for r in replies] == [body] * 2000
    assert peak <= BLIPLimits().max_open_requests  # handlers ran at most that many at once


async def test_beyond_the_queue_bounds_requests_get_503() -> None:
    release = asyncio.Event()
    limits = BLIPLimits(max_open_requests=5, max_queued_requests=10)

    def setup(session: BLIPSession) -> None:
        session._limits = limits  # a small queue, to reach its bound

        async def slow(request: IncomingRequest) -> None:
            await release.wait()
            request.respond()

        session.register("rev", slow)

    async with blip_pair(setup) as pair:
        futures = [pair.client.send_nowait("rev", {}, b"{}") for _ in range(40)]
        await pair.server_session()
        await asyncio.sleep(0.3)
        release.set()
        replies = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)  # type: ignore[arg-type]
    codes = [r.error_code if r.is_error else 200 for r in replies]
    assert codes.count(200) >= 15  # 5 running + 10 queued
    assert set(codes) <= {200, 503} and 503 in codes


async def test_a_handler_returning_a_future_runs_until_it_resolves(caplog) -> None:
    """A handler may answer later from a callback and return a future (the puller: a revision
    waiting for its commit): the request counts as running until the future resolves, and a
    future that fails unanswered is logged and answered 500, as an exception raised."""
    limits = BLIPLimits(max_open_requests=3)
    waiting: list[tuple[IncomingRequest, asyncio.Future[None]]] = []

    def setup(session: BLIPSession) -> None:
        session._limits = limits

        def later(request: IncomingRequest) -> asyncio.Future[None]:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting.append((request, done))
            return done

        session.register("rev", later)
        session.register("now", lambda request: request.respond({"at": "once"}))

        def broken(request: IncomingRequest) -> None:
            raise RuntimeError("boom")

        session.register("broken", broken)

    async with blip_pair(setup) as pair:
        futures = [pair.client.send_nowait("rev", {"i": str(i)}, b"{}") for i in range(5)]
        await pair.server_session()
        while len(waiting) < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert len(waiting) == 3  # the other two wait for room
        request, done = waiting[0]
        request.respond({"n": "0"})
        done.set_result(None)
        while len(waiting) < 4:
            await asyncio.sleep(0.01)
        waiting[1][1].set_exception(RuntimeError("unanswered failure"))
        while len(waiting) < 5:
            await asyncio.sleep(0.01)
        for request, done in waiting[2:]:
            request.respond()
            done.set_result(None)
        replies = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)  # type: ignore[arg-type]
        now = await asyncio.wait_for(pair.client.request("now", {}), TIMEOUT)
        assert now is not None and now.properties.get("at") == "once"
        broken = await asyncio.wait_for(pair.client.request("broken", {}), TIMEOUT)
        assert broken is not None and broken.error_code == 500
    assert [r.error_code if r.is_error else 200 for r in replies] == [200, 500, 200, 200, 200]
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 2, failures  # "broken" and the failed future


def _slow_revs(release: asyncio.Event) -> Callable[[BLIPSession], None]:
    """Server setup: reading pauses past 10,000 queued bytes, and ``rev`` handlers (2 at a
    time) answer once ``release`` is set."""
    limits = BLIPLimits(max_open_requests=2, pause_reading_above=10_000)

    def setup(session: BLIPSession) -> None:
        session._limits = limits

        async def slow(request: IncomingRequest) -> None:
            await release.wait()
            request.respond()

        session.register("rev", slow)

    return setup


async def _paused(session: BLIPSession) -> None:
    while not session._read_paused:
        await asyncio.sleep(0.01)


async def test_reading_pauses_while_the_queue_is_full_and_resumes_as_it_drains() -> None:
    """Above ``pause_reading_above`` queued bytes the session stops reading (TCP holds the
    peer back, not our memory), and reads on once handlers have taken half of it."""
    release = asyncio.Event()
    async with blip_pair(_slow_revs(release)) as pair:
        futures = [pair.client.send_nowait("rev", {}, b"x" * 1000) for _ in range(200)]
        server = await pair.server_session()
        await asyncio.wait_for(_paused(server), TIMEOUT)
        await asyncio.sleep(0.2)  # paused: nothing more is read
        assert server._read_paused
        assert 10_000 < server._queued_bytes < 12_000  # one message past the mark, no more
        release.set()
        replies = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)  # type: ignore[arg-type]
    assert not [r for r in replies if r.is_error]


async def test_a_paused_session_reads_on_while_its_own_request_awaits_a_reply() -> None:
    """The reply to a request of ours may be behind the queued requests' frames: a session
    with a request awaiting its reply never pauses, or it would wait for itself."""
    release = asyncio.Event()
    async with blip_pair(_slow_revs(release)) as pair:
        pair.client.register("ping", lambda request: request.respond({}, b"pong"))
        futures = [pair.client.send_nowait("rev", {}, b"x" * 1000) for _ in range(200)]
        server = await pair.server_session()
        await asyncio.wait_for(_paused(server), TIMEOUT)
        reply = await asyncio.wait_for(server.request("ping"), TIMEOUT)
        assert reply is not None
        assert reply.body == b"pong"  # read although the queue was over the mark
        assert server._queued_bytes > 100_000  # every rev before it was read too
        release.set()
        replies = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)  # type: ignore[arg-type]
    assert not [r for r in replies if r.is_error]


async def test_a_paused_session_closes_at_once() -> None:
    """Closing (the listener stopping) does not wait behind a paused reader."""
    release = asyncio.Event()
    async with blip_pair(_slow_revs(release)) as pair:
        futures = [pair.client.send_nowait("rev", {}, b"x" * 1000) for _ in range(200)]
        server = await pair.server_session()
        await asyncio.wait_for(_paused(server), TIMEOUT)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(server.close(), TIMEOUT)
        assert asyncio.get_running_loop().time() - started < 2.0
        await asyncio.wait_for(pair.server_done.wait(), TIMEOUT)
        release.set()
        await asyncio.gather(*futures, return_exceptions=True)  # type: ignore[arg-type]
