"""The suite's cache waits for a slow Redis (conftest.py's _patient_cache) instead of taking it for down.

Production's cache gives up on Redis after half a second and then skips it for a few seconds
(config/redis_cache.py). On a machine loaded by the suite's two processes (and by whatever else runs
there), the shared Redis can answer that late, and a test then saw "Redis is down" in the middle of
what it checked (test_a_run_that_crashed_is_resumed_by_the_sweeper: the sweeper's "published" flag
neither read nor written). A Redis slower than production allows is made here by a proxy that holds
each answer to the cache's commands for longer than production waits (a connection's set-up, five
exchanges of redis-py's before the first command, is passed on at once: held too, it took seconds).
"""

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from django.core.cache import cache
from redis.exceptions import RedisError

from config import redis_cache
from webhooks.tests.ports import free_port

ANSWER_DELAY_SECONDS = 0.6  # above production's SOCKET_TIMEOUT (0.5 s): an answer production gives up on
SET_UP_COMMANDS = (b"HELLO", b"AUTH", b"CLIENT", b"SELECT")  # what redis-py sends on connecting


class SlowRedis:
    """Passes each connection on to the real Redis, holding each answer to a command past the connection's
    set-up for ANSWER_DELAY_SECONDS."""

    def __init__(self, redis_url: str):
        parts = urlsplit(redis_url)
        self._redis = (parts.hostname, parts.port or 6379)
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.url = parts._replace(netloc=f"127.0.0.1:{self._listener.getsockname()[1]}").geturl()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            redis = socket.create_connection(self._redis)
            self._sockets += [client, redis]
            set_up = threading.Event()  # the client sent a command other than a connection's set-up
            threading.Thread(target=self._pump_requests, args=(client, redis, set_up), daemon=True).start()
            threading.Thread(target=self._pump_answers, args=(redis, client, set_up), daemon=True).start()

    @staticmethod
    def _pump_requests(client: socket.socket, redis: socket.socket, set_up: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                # redis-py sends its set-up commands one at a time, each waiting for its answer: a
                # request's first word (*<count>, $<length>, <name>) says which it is.
                parts = data.split(b"\r\n", 3)
                if len(parts) < 3 or parts[2].upper() not in SET_UP_COMMANDS:
                    set_up.set()  # before the command goes on: its answer is held
                redis.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _pump_answers(redis: socket.socket, client: socket.socket, set_up: threading.Event) -> None:
        try:
            while data := redis.recv(65536):
                if set_up.is_set():
                    time.sleep(ANSWER_DELAY_SECONDS)
                client.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for one in self._sockets:
            one.close()


@pytest.fixture
def slow_redis(settings):
    server = SlowRedis(settings.CACHES["default"]["LOCATION"])
    yield server
    server.close()


def test_the_suite_s_cache_waits_for_a_redis_slower_than_production_allows(settings, slow_redis):
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": slow_redis.url}}

    cache.set("slow", "answered")
    assert cache.get("slow") == "answered"
    assert redis_cache.breaker_for(slow_redis.url).allow()  # never taken for down


def test_production_s_cache_takes_the_same_redis_for_down(settings, slow_redis):
    # What the suite's tests saw under load: why the suite's cache is not production's here.
    production = {**settings.CACHES["default"], "LOCATION": slow_redis.url}
    production["OPTIONS"] = {**production["OPTIONS"], "SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.5}
    settings.CACHES = {"default": production}

    with pytest.raises(RedisError):
        cache.set("slow", "answered")
    with pytest.raises(RedisError, match="Redis skipped"):  # skipped for a while, without asking it
        cache.get("slow")
