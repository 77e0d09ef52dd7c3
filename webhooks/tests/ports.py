"""Ports for the servers that tests start on a number of their choosing (gunicorn, redis-server, PostgreSQL).

A port the OS picked (bind to port 0, read it, close) and handed to a server started later is free
only until someone else takes it: the OS hands the same ephemeral ports to every other process of
the run (the other pytest-xdist process's servers, and the local end of each outgoing connection).
The server then fails to bind, or a test waiting for "something to listen" there talks to another
process's server. These ports come from a range below the ephemeral ones (the OS never picks them),
split among the processes of `make test`, so that no other process of the run picks them either.

``TEST_PORTS`` ("first-last") moves the range, e.g. to the ports a machine shared with other runs
leaves to this one. A port something already listens on is skipped.
"""

from __future__ import annotations

import itertools
import os
import socket

DEFAULT_TEST_PORTS = "20000-29999"  # below Linux's ephemeral ports (32768-60999)


def worker_ports(spec: str | None = None, worker: str | None = None, workers: int | str | None = None) -> range:
    """This process's share of ``TEST_PORTS``: pytest-xdist's worker gwN of ``workers`` gets the N-th."""
    spec = spec or os.environ.get("TEST_PORTS") or DEFAULT_TEST_PORTS
    worker = worker if worker is not None else os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(workers if workers is not None else os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    first, _, last = spec.partition("-")
    first, last = int(first), int(last or first)
    size = (last - first + 1) // workers
    if size < 1:
        raise ValueError(f"TEST_PORTS={spec} has fewer ports than the {workers} processes of the run")
    index = int(worker.removeprefix("gw")) % workers
    return range(first + index * size, first + (index + 1) * size)


_ports = None


def free_port() -> int:
    """A port of this process's share that nothing listens on; each one handed out once in turn, so
    that a server a test stopped for a while (to start it again on its port) keeps it."""
    global _ports
    share = worker_ports()
    if _ports is None:
        _ports = itertools.cycle(share)
    for port in itertools.islice(_ports, len(share)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # taken: by a server of this run still up, or by another program
                continue
        return port
    raise RuntimeError(f"no free port left in {share} (TEST_PORTS)")
