"""Round-robin turns between one gevent worker's keep-alive connections (gunicorn's post_request hook)."""
from __future__ import annotations

import collections

import gevent
from gevent.event import Event


class Turns:
    """A queue of connections just answered: each serves its next request once the ones ahead of it have served
    theirs and the event loop has handled every other ready connection.

    Without a wait after each response, a client that sends its next request at once (a load generator, a proxy's
    pooled connection) finds it already read and is served again and again while others wait. gevent.idle() alone
    waits for the loop, but libev wakes its idle waiters last-in first-out, so each round one connection went twice in
    a row and every other one waited for one request more than its share (measured at 16 connections: p90 and p99
    about a fifth higher). Here only the head of the queue waits for the loop, then hands the turn to the next.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout  # bounds each wait, should the loop never fall idle or a turn never come
        self.waiting: collections.deque[Event] = collections.deque()

    def take(self) -> None:
        """Return when it is the calling greenlet's turn to serve its connection again."""
        turn = Event()
        self.waiting.append(turn)
        try:
            if self.waiting[0] is not turn:
                turn.wait(self.timeout)
            with gevent.Timeout(self.timeout, False):
                gevent.idle()
        finally:
            # Also on a greenlet killed while it waits (a worker shutting down): the queue must not stall behind it.
            head = self.waiting[0] is turn
            self.waiting.remove(turn)
            if head and self.waiting:
                self.waiting[0].set()
