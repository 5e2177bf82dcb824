"""Round-robin turns between one gevent worker's keep-alive connections (gunicorn's post_request hook)."""
from __future__ import annotations

import collections

import gevent
from gevent.hub import Waiter, get_hub


class Turns:
    """Connections just answered wait here; once the event loop has handled every other ready connection, they serve
    their next requests in the order they came.

    Without a wait after each response, a client that sends its next request at once (a load generator, a proxy's
    pooled connection) finds it already read and is served again and again while others wait. gevent.idle() waits
    for the loop too, but libev wakes its idle waiters last-in first-out: each round one connection went twice in a
    row and every other one waited for one request more than its share.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout  # bounds each wait, should the loop never fall idle
        self.waiting: collections.deque[Waiter] = collections.deque()
        self.idle = None  # the loop's idle watcher; made in the worker, whose hub is not the master's

    def take(self) -> None:
        """Return when it is the calling greenlet's turn to serve its connection again."""
        if self.idle is None:
            self.idle = get_hub().loop.idle()
        if not self.idle.active:
            self.idle.start(self._wake_all)
        waiter = Waiter()
        self.waiting.append(waiter)
        try:
            with gevent.Timeout(self.timeout, False):
                waiter.get()
        finally:  # timed out, or killed as it waited (a worker shutting down): out of the queue
            if waiter in self.waiting:
                self.waiting.remove(waiter)

    def _wake_all(self):
        """The idle watcher's callback, in the hub: each waiter runs until it waits again, first come first served."""
        self.idle.stop()
        woken, self.waiting = self.waiting, collections.deque()
        for waiter in woken:
            waiter.switch(None)
