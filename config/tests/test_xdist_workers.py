"""`make test`'s processes (pytest-xdist workers) each get their own Redis database, Celery queue and,
when a run pins it, blackhole port: two processes must not share what one of them empties or binds."""

import execnet
import pytest

from conftest import pytest_xdist_setupnodes, worker_redis_url


def _environments(monkeypatch, workers: int, **environ) -> list[dict]:
    for name in ("REDIS_URL", "CELERY_QUEUE", "REDIS_BLACKHOLE_PORT"):
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
    assert all("REDIS_BLACKHOLE_PORT" not in env for env in environments)  # the OS picks a free one


def test_a_pinned_blackhole_port_is_one_port_per_worker(monkeypatch):
    # Two workers listening on the same pinned port: the second one's redis_blackhole would fail to bind.
    environments = _environments(monkeypatch, 3, REDIS_BLACKHOLE_PORT="19550")
    assert [env["REDIS_BLACKHOLE_PORT"] for env in environments] == ["19550", "19551", "19552"]


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
