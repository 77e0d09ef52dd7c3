"""Shared fixtures: tenants with owner/member/outsider users, sources and destinations."""

import os
import socket
import threading
from unittest import mock
from urllib.parse import urlsplit

import factory
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection

from organizations.models import Membership
from organizations.services import organization_create


def worker_redis_url(url: str, index: int) -> str:
    """REDIS_URL for the ``index``-th xdist worker: the database ``index`` below the given one."""
    parts = urlsplit(url)
    database = int(parts.path.strip("/") or 0)
    return parts._replace(path=f"/{(database - index) % 16}").geturl()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config, specs):
    # `make test` runs the suite in several processes (pytest-xdist). Each test empties the Redis
    # database and the worker tests consume the Celery queue, so each process gets its own of
    # both; the environment is set before the process reads Django's settings. The test
    # database is pytest-django's business: it adds the worker's id to its name.
    base_url = os.environ.get("REDIS_URL", "redis://localhost:6379/15")
    base_queue = os.environ.get("CELERY_QUEUE", "hookline-test")
    # Ports are split among the processes by webhooks/tests/ports.py (from PYTEST_XDIST_WORKER).
    for index, spec in enumerate(specs):
        spec.env["REDIS_URL"] = worker_redis_url(base_url, index)
        spec.env["CELERY_QUEUE"] = f"{base_queue}-{index}"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    email = factory.Sequence(lambda n: f"user{n}@example.com")


# The cache as it is when Redis is down: a port nothing listens on, with production's short
# socket timeouts (config/settings.py). Tests set settings.CACHES to it.
REDIS_DOWN_CACHES = {
    "default": {
        "BACKEND": "config.redis_cache.SkippingRedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "KEY_PREFIX": "hookline",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.5},
    }
}


class BlackholeServer:
    """A TCP server that accepts connections and never answers: Redis as a managed service is during
    a failover, or behind a network that drops packets. Each command sent to it waits for the
    client's socket timeout, unlike a closed port, which fails at once.

    ``connections`` counts the connections accepted: how many times a client tried it.
    """

    def __init__(self, port: int = 0):
        self._listener = socket.create_server(("127.0.0.1", port), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="redis-blackhole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._held.append(connection)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._held)

    def caches(self) -> dict:
        """settings.CACHES pointed at this server, with production's socket timeouts."""
        return {"default": {**REDIS_DOWN_CACHES["default"], "LOCATION": f"redis://127.0.0.1:{self.port}/0"}}

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            for connection in self._held:
                connection.close()


@pytest.fixture
def redis_blackhole():
    # On a port of this process's share of TEST_PORTS (webhooks/tests/ports.py).
    from webhooks.tests.ports import free_port

    server = BlackholeServer(free_port())
    yield server
    server.close()


# The suite's cache waits this long for Redis (production: 0.25 s to connect, 0.5 s for an answer).
PATIENT_CACHE_SECONDS = 5


@pytest.fixture(scope="session", autouse=True)
def _patient_cache():
    # Production gives up on a Redis that has not answered within half a second, and then skips it for
    # REDIS_SKIP_AFTER_FAILURE_SECONDS (config/redis_cache.py): on a loaded machine a test's shared
    # Redis can take that long, and the test then saw "Redis is down" (a flag not set, a count not
    # kept) in the middle of what it checks. The tests about a Redis that is down or never answers set
    # their own CACHES, with production's timeouts (REDIS_DOWN_CACHES, redis_blackhole.caches()).
    from django.conf import settings as django_settings
    from django.test.utils import override_settings

    default = django_settings.CACHES["default"]
    if "OPTIONS" not in default:  # the embedded file cache: no Redis
        yield
        return
    options = {"SOCKET_CONNECT_TIMEOUT": PATIENT_CACHE_SECONDS, "SOCKET_TIMEOUT": PATIENT_CACHE_SECONDS}
    with override_settings(
        CACHES={**django_settings.CACHES, "default": {**default, "OPTIONS": {**default["OPTIONS"], **options}}}
    ):
        yield


@pytest.fixture(autouse=True)
def _clean_cache(monkeypatch):
    # Each test starts with an empty Redis database (rate-limit counters, processing flag), and
    # with none of the API limits' counts kept in memory while Redis was down.
    from config.redis_cache import reset_breakers
    from webhooks.api.limits import local_counts_clear
    from webhooks.services import rejected_records, secret_health

    reset_breakers()
    cache.clear()
    local_counts_clear()
    # A secret another test could not decrypt would keep /readyz "degraded" in this one.
    secret_health.forget_this_process()
    # Counts of rejected requests not kept while Redis is down: a process writes them from a timer
    # thread, whose connection would not see a test's transaction and could outlive the test. Tests
    # write them themselves (or set the interval: test_rejected_records.py).
    rejected_records.forget_local_counts()
    monkeypatch.setattr(rejected_records, "LOCAL_WRITE_INTERVAL_SECONDS", 3600)
    yield
    rejected_records.forget_local_counts()


@pytest.fixture(autouse=True)
def _no_linger(settings):
    # In-process tasks end as soon as they are idle; linger has its own tests, and the
    # worker processes of the end-to-end tests run with the production defaults.
    settings.PROCESSING_LINGER_SECONDS = 0
    settings.DISPATCHER_LINGER_SECONDS = 0
    # Each test asks Redis about the processing flag (the trusted sighting has its own tests).
    settings.PROCESSING_FLAG_TRUST_SECONDS = 0


# Content types and permissions are what the post_migrate signal after the flush puts back,
# row for row (no test adds or changes any): kept, the signal finds them all and writes nothing.
_KEPT_BY_THE_FLUSH = frozenset({"django_content_type", "auth_permission"})


def _delete_rows_sql_flush(style, tables, *, reset_sequences=False, allow_cascade=False):
    """PostgreSQL's flush as DELETEs in one transaction, for the teardown of transactional tests.

    Django's TRUNCATE gives each of the ~30 tables (and its indexes) new files, which PostgreSQL
    syncs to disk at commit: ~0.7 s per transactional test. DELETE of the few rows a test leaves
    takes milliseconds and leaves the same empty tables; the foreign keys Django creates are
    DEFERRABLE, so the order does not matter. The audit log's append-only trigger lets its own
    purge delete (organizations/migrations/0003_audit_hash_chain.py): this flush says it is one.
    """
    statements = ["SET CONSTRAINTS ALL DEFERRED", "SET LOCAL hookline.audit_purge = 'on'"]
    return statements + [
        f"DELETE FROM {connection.ops.quote_name(table)}" for table in tables if table not in _KEPT_BY_THE_FLUSH
    ]


@pytest.fixture(scope="session", autouse=True)
def _fast_transactional_teardown():
    # Only the flush that ends a transactional test: a test's own `manage.py flush`
    # (organizations/tests/test_audit.py) still runs Django's TRUNCATE.
    from django.test import TransactionTestCase

    original_teardown = TransactionTestCase._fixture_teardown

    def fixture_teardown(self):
        if connection.vendor != "postgresql" or self.available_apps is not None:
            return original_teardown(self)
        with mock.patch.object(connection.ops, "sql_flush", _delete_rows_sql_flush):
            return original_teardown(self)

    with mock.patch.object(TransactionTestCase, "_fixture_teardown", fixture_teardown):
        yield


@pytest.fixture(scope="session", autouse=True)
def _test_client_hears_its_own_thread_only():
    # Django's test client collects the templates rendered, and the exception raised, during a
    # request through signals that every thread sends: those of the live server thread too, which
    # may still be answering an earlier browser test's page while a later test's client request
    # runs. Its response.context then held the live server's form (test_dashboard_sender.py), and
    # its exception would be raised by the client. Only the thread that runs the tests counts.
    from django.test import client as test_client

    test_thread = threading.get_ident()
    store_templates = test_client.store_rendered_templates
    store_exception = test_client.ClientMixin.store_exc_info

    def store_rendered_templates(store, signal, sender, template, context, **kwargs):
        if threading.get_ident() == test_thread:
            store_templates(store, signal, sender, template, context, **kwargs)

    def store_exc_info(self, **kwargs):
        if threading.get_ident() == test_thread:
            store_exception(self, **kwargs)

    with (
        mock.patch.object(test_client, "store_rendered_templates", store_rendered_templates),
        mock.patch.object(test_client.ClientMixin, "store_exc_info", store_exc_info),
    ):
        yield


# What WhiteNoiseMiddleware.__init__ reads: its list of static files depends on these and on the files.
_STATIC_FILES_SETTINGS = (
    "DEBUG",
    "FORCE_SCRIPT_NAME",
    "INSTALLED_APPS",
    "STATIC_ROOT",
    "STATIC_URL",
    "STATICFILES_DIRS",
    "STATICFILES_FINDERS",
    "STORAGES",
)


def _static_files_key(settings) -> str:
    names = sorted({*_STATIC_FILES_SETTINGS, *(name for name in dir(settings) if name.startswith("WHITENOISE_"))})
    return repr([(name, getattr(settings, name, None)) for name in names])


@pytest.fixture(scope="session", autouse=True)
def _static_files_listed_once():
    # Each test client loads the middleware when it is made, and WhiteNoise's then lists and stats every
    # static file and works out each one's headers (~20 ms; most tests make a client). A server process
    # does it once, at its start. Here the first client with given settings does it, and the next ones
    # with the same settings take its list: the same files with the same headers. A test that points
    # STATIC_ROOT or the finders elsewhere (or turns DEBUG on) gets its own list; no test changes a
    # static file in place (config/tests/test_test_static_files.py).
    from django.conf import settings as django_settings
    from whitenoise.middleware import WhiteNoiseMiddleware

    original_init = WhiteNoiseMiddleware.__init__
    listed: dict[str, dict] = {}

    def init(self, get_response=None, settings=django_settings):
        key = _static_files_key(settings)
        if key in listed:
            self.__dict__.update(listed[key])
            self.files, self.directories = dict(self.files), list(self.directories)
            self.get_response = get_response
            return
        original_init(self, get_response, settings)
        listed[key] = {name: value for name, value in self.__dict__.items() if name != "get_response"}

    with mock.patch.object(WhiteNoiseMiddleware, "__init__", init):
        yield


@pytest.fixture(autouse=True)
def _quick_password_hashing(settings):
    # Production's PBKDF2 with 1,000,000 iterations takes ~0.3 s a password here, and the admin
    # sign-in tests check dozens of them. The same hasher with fewer iterations checks the same way.
    settings.PASSWORD_HASHERS = ["webhooks.tests.hashers.FewIterationsPBKDF2PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _stop_ingest_writer(django_db_setup, django_db_blocker):
    # Torn down before the test database is dropped: the writer thread's connection must be closed first.
    yield
    from webhooks.services.ingest_writer import writer

    with django_db_blocker.unblock():
        writer.stop()


@pytest.fixture
def organization(db):
    return organization_create(name="Acme", slug="acme", owner_email="owner@acme.example")


@pytest.fixture
def other_organization(db):
    return organization_create(name="Globex", slug="globex", owner_email="owner@globex.example")


@pytest.fixture
def owner(organization):
    return organization.memberships.get(role=Membership.Role.OWNER).user


@pytest.fixture
def member(organization):
    user = UserFactory(email="member@acme.example")
    Membership.objects.create(user=user, organization=organization, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def outsider(other_organization):
    return other_organization.memberships.get(role=Membership.Role.OWNER).user


# --- Browser tests: Playwright driving Debian's Chromium (no downloaded browsers) ---

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    yield opened
    context.close()


@pytest.fixture
def organization_ids_from():
    """Makes the next organizations' ids start at a given value; puts the sequence back afterwards."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence('organizations_organization', 'id')")
        [sequence] = cursor.fetchone()
        cursor.execute(f"SELECT last_value, is_called FROM {sequence}")
        saved = cursor.fetchone()

    def start_at(first_id: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT setval(%s, %s, false)", [sequence, first_id])

    yield start_at
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(%s, %s, %s)", [sequence, *saved])
