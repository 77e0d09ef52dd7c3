"""`make test`'s processes (pytest-xdist workers) each get their own Redis database, Celery queue and
ports: two processes must not share what one of them empties or binds."""

import socket

import execnet
import pytest

from conftest import pytest_xdist_setupnodes, worker_redis_url
from webhooks.tests import ports
from webhooks.tests.ports import free_port, worker_ports


def _environments(monkeypatch, workers: int, **environ) -> list[dict]:
    for name in ("REDIS_URL", "CELERY_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    specs = [execnet.XSpec("popen") for _ in range(workers)]
    pytest_xdist_setupnodes(config=None, specs=specs)
    return [spec.env for spec in specs]


def test_each_worker_has_its_own_redis_database_and_celery_queue(monkeypatch):
    environments = _environments(monkeypatch, 2, REDIS_URL="redis://localhost:6379/15", CELERY_QUEUE="hookline-test")
    assert [env["REDIS_URL"] for env in environments] == ["redis://localhost:6379/15", "redis://localhost:6379/14"]
    assert [env["CELERY_QUEUE"] for env in environments] == ["hookline-test-0", "hookline-test-1"]


@pytest.mark.parametrize(
    ("url", "index", "expected"),
    [
        ("redis://localhost:6379/15", 1, "redis://localhost:6379/14"),
        ("redis://localhost:6379", 1, "redis://localhost:6379/15"),
        ("redis://:pw@cache:6380/3?ssl_cert_reqs=none", 0, "redis://:pw@cache:6380/3?ssl_cert_reqs=none"),
    ],
)
def test_worker_redis_url(url, index, expected):
    assert worker_redis_url(url, index) == expected


# --- ports for the servers tests start (webhooks/tests/ports.py) ------------------------------------


def _ephemeral_ports() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        first, last = (int(n) for n in ranges.read().split())
    return range(first, last + 1)


def test_a_free_port_is_never_one_the_os_hands_out_itself():
    # The OS hands its ephemeral ports to every process (another process's bind to port 0, the local
    # end of any connection): one picked there and bound later by a server could be taken meanwhile.
    ports = [free_port() for _ in range(20)]
    assert not set(ports) & set(_ephemeral_ports())
    assert len(set(ports)) == 20  # each handed out once in turn


def test_the_processes_of_a_run_get_ports_no_other_one_gets():
    shares = [worker_ports("20000-29999", f"gw{n}", 3) for n in range(3)]
    assert [(share.start, share.stop) for share in shares] == [(20000, 23333), (23333, 26666), (26666, 29999)]
    assert worker_ports("19100-19199", "gw1", 2) == range(19150, 19200)  # a range given with TEST_PORTS
    assert worker_ports("19100-19199", "gw0", 1) == range(19100, 19200)  # without xdist


def test_a_port_something_listens_on_is_skipped(monkeypatch):
    monkeypatch.setenv("TEST_PORTS", "19100-19199")  # the first is taken below, the next is not
    monkeypatch.setattr(ports, "_ports", None)
    first = free_port()
    with socket.create_server(("127.0.0.1", first)):
        monkeypatch.setattr(ports, "_ports", None)
        # The next one up, unless another process on the machine listens on that one too.
        assert free_port() > first
