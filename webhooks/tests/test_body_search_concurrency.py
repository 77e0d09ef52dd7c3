"""At most BODY_SEARCH_CONCURRENCY body searches per organization at a time
(services.body_search_slots), refused at once past it: a 429 in the API, a notice on the dashboard."""

import threading
import time

import pytest
from django.core.cache import cache
from django.urls import reverse

from conftest import REDIS_DOWN_CACHES
from organizations.models import ApiKey
from webhooks.services import body_search_slots
from webhooks.services.body_search_slots import BodySearchBusy, body_search_slot

from .api_helpers import api_get, make_event, make_key
from .factories import make_source
from .test_event_body_search import events_table_locked

pytestmark = pytest.mark.django_db

CUSTOMER = "cus_ABC123"


@pytest.fixture
def one_at_a_time(settings):
    settings.BODY_SEARCH_CONCURRENCY = 1


def page_text(response) -> str:
    return " ".join(response.content.decode().split())


def search_api(client, key):
    return api_get(client, key, "/api/v1/events", body_contains=CUSTOMER)


def search_dashboard(client, slug="acme"):
    return client.get(reverse("dashboard:events", args=[slug]), {"body": CUSTOMER})


def slot_is_free(organization) -> bool:
    try:
        with body_search_slot(organization_id=organization.pk):
            return True
    except BodySearchBusy:
        return False


def test_a_search_past_the_bound_is_refused_at_once_in_the_api_and_on_the_dashboard(
    client, member, organization, one_at_a_time
):
    event = make_event(make_source(organization), body=CUSTOMER.encode())
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    client.force_login(member)
    with body_search_slot(organization_id=organization.pk):  # another worker's search, still running
        api_response = search_api(client, key)
        response = search_dashboard(client)
    assert api_response.status_code == 429
    assert api_response["Retry-After"] == "5"  # BODY_SEARCH_TIMEOUT_SECONDS: the running one has ended by then
    assert api_response.json() == {
        "error": "search_busy",
        "detail": "this organization already runs as many body searches as it may at once (1): try again when"
        " one has ended. Expected available in 5 seconds.",
    }
    # Not an error page: the results say why there are none.
    assert response.status_code == 200
    assert response.context["events"] == []
    assert "already runs as many body searches as it may at once" in page_text(response)
    # Once it has ended, both search again.
    assert [row["id"] for row in search_api(client, key).json()["results"]] == [str(event.pk)]
    assert [e.pk for e in search_dashboard(client).context["events"]] == [event.pk]


def test_another_organizations_searches_are_not_counted(
    client, outsider, organization, other_organization, one_at_a_time
):
    event = make_event(make_source(other_organization), body=CUSTOMER.encode())
    _, key = make_key(other_organization, access=ApiKey.Access.READ_ONLY)
    client.force_login(outsider)
    _, acme_key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    with body_search_slot(organization_id=organization.pk):  # Acme's only slot, not Globex's
        assert search_api(client, acme_key).status_code == 429
        assert [row["id"] for row in search_api(client, key).json()["results"]] == [str(event.pk)]
        assert [e.pk for e in search_dashboard(client, "globex").context["events"]] == [event.pk]


def test_the_bound_counts_running_searches(organization, settings):
    settings.BODY_SEARCH_CONCURRENCY = 2
    with body_search_slot(organization_id=organization.pk):
        assert slot_is_free(organization)  # the second of two
        with body_search_slot(organization_id=organization.pk):
            assert not slot_is_free(organization)
        assert slot_is_free(organization)


def test_the_slot_is_released_after_a_search_and_after_a_failure(client, owner, organization, one_at_a_time):
    event = make_event(make_source(organization), body=CUSTOMER.encode())
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    client.force_login(owner)
    assert search_dashboard(client).status_code == 200
    assert search_api(client, key).status_code == 200
    with body_search_slot(organization_id=organization.pk):  # the only slot, free again after both
        assert search_api(client, key).status_code == 429  # the searches do take it
    with pytest.raises(RuntimeError), body_search_slot(organization_id=organization.pk):
        raise RuntimeError("the search failed")
    assert [row["id"] for row in search_api(client, key).json()["results"]] == [str(event.pk)]


@pytest.mark.django_db(transaction=True)
def test_the_slot_is_released_after_a_search_stopped_by_its_timeout(client, owner, organization, settings):
    settings.BODY_SEARCH_CONCURRENCY = 1
    settings.BODY_SEARCH_TIMEOUT_SECONDS = 0.2
    event = make_event(make_source(organization), body=CUSTOMER.encode())
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    client.force_login(owner)
    assert search_dashboard(client).status_code == 200  # also caches the event type suggestions
    with events_table_locked():
        assert search_api(client, key).status_code == 503
        assert "took longer than 0.2 s" in page_text(search_dashboard(client))
    with body_search_slot(organization_id=organization.pk):  # free: neither stopped search kept it
        assert search_api(client, key).status_code == 429
    assert [row["id"] for row in search_api(client, key).json()["results"]] == [str(event.pk)]


def test_a_slot_whose_worker_died_expires_shortly_after_the_search_timeout(
    client, organization, one_at_a_time, settings, monkeypatch
):
    _, api_key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    # Entered and never left, as by a worker killed mid-search (kept referenced: a collected
    # generator would run its finally).
    killed = body_search_slot(organization_id=organization.pk)
    killed.__enter__()
    key = f"body-search:{organization.pk}:0"
    assert 5 < cache.ttl(key) <= 5 + body_search_slots.SLOT_MARGIN_SECONDS
    assert search_api(client, api_key).status_code == 429

    cache.delete(key)
    settings.BODY_SEARCH_TIMEOUT_SECONDS = 0.3
    monkeypatch.setattr(body_search_slots, "SLOT_MARGIN_SECONDS", 0.2)
    killed_too = body_search_slot(organization_id=organization.pk)
    killed_too.__enter__()  # its slot expires in 0.5 s
    assert search_api(client, api_key).status_code == 429
    deadline = time.monotonic() + 10
    while (status := search_api(client, api_key).status_code) == 429:
        assert time.monotonic() < deadline, "the slot never expired"
        time.sleep(0.05)
    assert status == 200


def test_searches_run_while_redis_is_down(client, owner, organization, one_at_a_time, settings, caplog):
    event = make_event(make_source(organization), body=CUSTOMER.encode())
    client.force_login(owner)
    settings.CACHES = REDIS_DOWN_CACHES
    body_search_slots._failure_warned_at = None
    assert [e.pk for e in search_dashboard(client).context["events"]] == [event.pk]
    assert [e.pk for e in search_dashboard(client).context["events"]] == [event.pk]
    assert "BODY_SEARCH_CONCURRENCY is kept per process, not across processes" in caplog.text


class SearchesInThreads:
    """``count`` threads that try to start a body search of the organization at the same moment; those
    let in hold their search until the block ends. ``entered`` and ``refused`` count them."""

    def __init__(self, organization_id: int, count: int):
        self.organization_id = organization_id
        self.entered = self.refused = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._start = threading.Barrier(count)
        self._decided = threading.Semaphore(0)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._search, daemon=True) for _ in range(count)]

    def _search(self) -> None:
        try:
            self._start.wait(timeout=30)
            with body_search_slot(organization_id=self.organization_id):
                with self._lock:
                    self.entered += 1
                self._decided.release()
                self._stop.wait(timeout=60)
        except BodySearchBusy:
            with self._lock:
                self.refused += 1
            self._decided.release()
        except BaseException as exc:
            self.errors.append(exc)
            self._decided.release()

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        for _ in self._threads:  # each one is in, or refused
            assert self._decided.acquire(timeout=30), "a search thread never got an answer"
        assert not self.errors
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._threads)


@pytest.fixture(params=["refused", "blackhole"])
def redis_down(request, settings):
    """Redis refusing connections, or accepting them and never answering."""
    if request.param == "refused":
        settings.CACHES = REDIS_DOWN_CACHES
    else:
        settings.CACHES = request.getfixturevalue("redis_blackhole").caches()
    body_search_slots._failure_warned_at = None


def test_while_redis_is_down_each_process_still_runs_at_most_the_bound(
    organization, other_organization, settings, redis_down
):
    settings.BODY_SEARCH_CONCURRENCY = 2
    with SearchesInThreads(organization.pk, 5) as searches:
        assert (searches.entered, searches.refused) == (2, 3)
        assert not slot_is_free(organization)
        assert slot_is_free(other_organization)  # counted per organization
    assert searches.errors == []
    # Every slot is given back, and an organization with no search running takes no memory.
    assert organization.pk not in body_search_slots._running
    assert other_organization.pk not in body_search_slots._running
    with SearchesInThreads(organization.pk, 3) as searches:
        assert (searches.entered, searches.refused) == (2, 1)
    assert organization.pk not in body_search_slots._running


def test_while_redis_is_down_a_search_past_the_bound_is_refused_in_the_api_and_on_the_dashboard(
    client, member, organization, one_at_a_time, settings
):
    event = make_event(make_source(organization), body=CUSTOMER.encode())
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    client.force_login(member)
    settings.CACHES = REDIS_DOWN_CACHES
    with SearchesInThreads(organization.pk, 1) as searches:  # another request's search, in this process
        assert searches.entered == 1
        api_response = search_api(client, key)
        response = search_dashboard(client)
    assert api_response.status_code == 429
    assert api_response.json()["error"] == "search_busy"
    assert response.status_code == 200
    assert response.context["events"] == []
    assert "already runs as many body searches as it may at once" in page_text(response)
    # Once it has ended, both search again; a failed search gives its slot back too.
    assert [row["id"] for row in search_api(client, key).json()["results"]] == [str(event.pk)]
    with pytest.raises(RuntimeError), body_search_slot(organization_id=organization.pk):
        raise RuntimeError("the search failed")
    assert [e.pk for e in search_dashboard(client).context["events"]] == [event.pk]
    assert organization.pk not in body_search_slots._running


def test_with_redis_up_the_slots_in_redis_bound_the_searches_not_the_process(organization, one_at_a_time):
    with SearchesInThreads(organization.pk, 3) as searches:
        assert (searches.entered, searches.refused) == (1, 2)
        key = f"body-search:{organization.pk}:0"
        assert cache.get(key) is not None
        assert not slot_is_free(organization)
        # The slot gone from Redis (as when it expires after a killed worker): Redis alone decides,
        # though this process still counts the search it runs.
        cache.delete(key)
        assert slot_is_free(organization)
    assert cache.get(key) is None
    assert organization.pk not in body_search_slots._running
