"""Turns between a gevent worker's connections (gunicorn's post_request hook), on a real gevent loop."""
import collections
import time

import gevent
import gevent.socket

from webapp.turns import Turns


def served_between(order: list[str]) -> collections.Counter:
    """How many other connections' requests were served between two of the same connection's, and how often."""
    last, between = {}, collections.Counter()
    for i, name in enumerate(order):
        if name in last:
            between[i - last[name] - 1] += 1
        last[name] = i
    return between


def run(greenlets: list[gevent.Greenlet], seconds: float = 3):
    """Join the greenlets, failing if any is still waiting after `seconds` (far below the turns' timeout)."""
    gevent.joinall(greenlets, timeout=seconds, raise_error=True)
    assert all(g.dead for g in greenlets), "a connection is still waiting for its turn"


def connection(name: str, turns: Turns, order: list[str], requests: int = 40):
    """A client that sends its next request as soon as it is answered: serve, wait for the turn, again."""
    for _ in range(requests):
        order.append(name)
        turns.take()


def test_connections_are_served_round_robin():
    turns, order = Turns(timeout=10), []
    run([gevent.spawn(connection, name, turns, order) for name in "ABCDEFGH"])
    # Every connection waits for the 7 others once, never twice, and none is served twice in a row
    # (gevent.idle() alone gave 0 and 8 here: its waiters wake last-in first-out).
    assert served_between(order) == {7: 39 * 8}
    assert not turns.waiting


def test_a_connection_whose_request_arrives_is_served_before_the_next_round():
    turns, order = Turns(timeout=10), []
    sending, receiving = gevent.socket.socketpair()

    def connection_a():
        for i in range(200):
            order.append("A")
            if i == 100:
                sending.send(b"x")  # the newcomer's request arrives while A is being answered
            turns.take()

    def newcomer():
        receiving.recv(1)  # in the event loop, waiting for its socket, as an idle keep-alive connection does
        order.append("new")

    greenlets = [gevent.spawn(newcomer), gevent.spawn(connection_a)]
    greenlets += [gevent.spawn(connection, name, turns, order, 200) for name in "BCDEFGH"]
    run(greenlets)
    # Served once the connections already woken for this round have been, not after a queue of turns.
    arrived_after = order.index("new") - [i for i, name in enumerate(order) if name == "A"][100]
    assert 0 < arrived_after <= 8


def test_a_greenlet_killed_while_it_waits_does_not_stall_the_others():
    turns, order = Turns(timeout=30), []
    names = "ABCD"
    greenlets = [gevent.spawn(connection, name, turns, order, 1000) for name in names]
    gevent.sleep(0.01)
    greenlets[0].kill()  # a worker shutting down kills its connections' greenlets wherever they wait
    run(greenlets[1:])
    assert order.count("B") == order.count("C") == order.count("D") == 1000
    assert not turns.waiting


def test_a_turn_comes_within_the_timeout_when_the_loop_never_falls_idle():
    turns, stop = Turns(timeout=0.05), time.monotonic() + 1

    def spinner():  # a greenlet that always has a callback pending: the loop is never idle while it runs
        while time.monotonic() < stop:
            gevent.sleep(0)

    busy = gevent.spawn(spinner)
    gevent.sleep(0)
    started = time.monotonic()
    turns.take()
    waited = time.monotonic() - started
    busy.kill()
    assert 0.04 < waited < 0.5
