"""Background tasks with an owner: an object that starts tasks keeps them in its `Tasks`, and its
`close()` cancels and awaits them. So no stop leaves one pending ("Task was destroyed but it is
pending") or failed unread ("Task exception was never retrieved"), and nothing runs on after
its owner is closed.

A task may have a deadline: what its waiters are owed is given to them then (`late`), whatever
the task's cleanup still awaits (asyncpg, cancelled, may wait for the server to confirm the
cancellation). That is how a request's wait on the index stays bounded.
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger("mkv")


class Tasks:
    """The running background tasks of one owner. The loop keeps only weak references to its
    tasks, so they are held here until done; one that fails is logged when it does."""

    def __init__(self) -> None:
        self._running: dict[asyncio.Task, asyncio.TimerHandle | None] = {}
        self.closed = False

    def start(self, coroutine: Coroutine[Any, Any, object], *, deadline: float | None = None,
              late: Callable[[], object] | None = None) -> asyncio.Task:
        """Run `coroutine` as this owner's task. At `deadline` (loop time), if it still runs,
        `late()` is called and the task cancelled. Refused once closed: the owner would not
        cancel it, so it must not start."""
        if self.closed:
            coroutine.close()
            raise RuntimeError("started a task after its owner closed")
        loop = asyncio.get_running_loop()
        task = loop.create_task(coroutine)
        self._running[task] = None if deadline is None else loop.call_at(
            deadline, self._expire, task, late)
        task.add_done_callback(self._done)
        return task

    def _expire(self, task: asyncio.Task, late: Callable[[], object] | None) -> None:
        task.cancel()
        if late is not None:
            late()

    def _done(self, task: asyncio.Task) -> None:
        timer = self._running.pop(task, None)
        if timer is not None:
            timer.cancel()
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task %s failed", task.get_coro().__qualname__,
                      exc_info=error)

    def cancel(self) -> None:
        """Cancel every task, and start no more. An owner whose tasks' cleanup may wait on a
        server cancels first, then cuts its connections, then `close`s."""
        self.closed = True
        for task in self._running:
            task.cancel()

    async def close(self) -> None:
        """Cancel every task and wait until each has ended (its cleanup included)."""
        self.cancel()
        if self._running:
            await asyncio.wait(list(self._running))


class Periodic:
    """`work()` run as a background task again and again, `pause` seconds after each run ends
    (the first `first` seconds after `start`); never while `pause` is 0 or less, nor outside
    a running loop. `stop` cancels the next run and the one under way, `closed` awaits it."""

    def __init__(self, work: Callable[[], Coroutine[Any, Any, object]], pause: float,
                 first: float) -> None:
        self.work = work
        self.pause = pause
        self._timer: asyncio.TimerHandle | None = None
        self._tasks = Tasks()
        self._schedule(first)

    def _schedule(self, delay: float) -> None:
        if self.pause <= 0 or self._tasks.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(delay, lambda: self._tasks.start(self._run()))

    async def _run(self) -> None:
        try:
            await self.work()
        finally:
            self._schedule(self.pause)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._tasks.cancel()

    async def closed(self) -> None:
        await self._tasks.close()


def settle(waiters: Iterable[asyncio.Future], value: object = None,
           error: Exception | None = None) -> None:
    """Give each waiter not settled yet `value`, or `error` (marked as seen: a waiter that gave
    up first does not look). One whose awaiter was cancelled is passed over."""
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(value)
        else:
            waiter.set_exception(error)
            waiter.exception()
