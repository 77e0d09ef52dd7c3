"""Destinations never reach private, loopback, link-local or metadata addresses unless allowed."""

import contextlib
import socket
import threading
import time
import traceback

import pytest

from webhooks.models import Delivery, Destination
from webhooks.services import delivery as delivery_service
from webhooks.services import outbound
from webhooks.services.destinations import DestinationError, destination_check_url
from webhooks.services.outbound import DestinationNotAllowed, post, resolve_destination

from .api_helpers import make_delivery, make_event
from .factories import make_destination, make_source
from .processes import wait_until


@pytest.fixture(autouse=True)
def _strict(settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    outbound.forget_resolved_hosts()  # each test sees its own lookups


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0177.0.0.1/",  # octal spelling
        "http://0x7f.1/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://0.0.0.0/",
        "http://224.0.0.1/",  # multicast
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
        "http://[2002:7f00:1::]/",  # 6to4 around 127.0.0.1
        "http://[64:ff9b::a00:1]/",  # NAT64 around 10.0.0.1
        "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
        "http://[::ffff:0:127.0.0.1]/",  # IPv4-translated
        "http://[64:ff9b:1::a00:1]/",  # local-use NAT64
        "http://[fec0::1]/",  # site-local (deprecated)
        "http://[5f00::1]/",  # SRv6 SIDs: routed inside an operator's network (RFC 9602)
        "http://[3fff::1]/",  # documentation (RFC 9637)
        "ftp://example.com/",
        "http:///nohost",
    ],
)
def test_private_and_odd_destinations_are_refused(url):
    with pytest.raises(DestinationNotAllowed):
        resolve_destination(url)


def test_public_address_literals_are_allowed():
    assert resolve_destination("https://93.184.215.14/hook")[3] == "93.184.215.14"
    assert resolve_destination("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443/")[2] == 8443


def test_refused_at_send_time_too_without_connecting():
    result = post("http://127.0.0.1:9/", body=b"{}", headers={}, timeout=1)
    assert result.status is None and "private or reserved" in result.error


def test_the_refusal_does_not_say_which_address_a_name_resolves_to():
    # Otherwise a tenant could map the platform's internal host names to addresses.
    with pytest.raises(DestinationNotAllowed) as refusal:
        resolve_destination("http://localhost:8080/")
    assert "127.0.0.1" not in str(refusal.value) and "::1" not in str(refusal.value)
    assert "localhost" in str(refusal.value)


def test_redirects_are_not_followed(settings, httpserver):
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    httpserver.expect_request("/moved").respond_with_data(
        "", status=302, headers={"Location": "http://169.254.169.254/"}
    )
    result = post(httpserver.url_for("/moved"), body=b"{}", headers={}, timeout=2)
    assert result.status == 302
    assert len(httpserver.log) == 1


@contextlib.contextmanager
def dns_not_answering_for(host: str, monkeypatch):
    """getaddrinfo hangs for ``host`` and the names under it (as with a DNS server that never answers)
    until the block ends."""
    released = threading.Event()
    real_getaddrinfo = outbound.socket.getaddrinfo

    def hanging(name, *args, **kwargs):
        if name == host or name.endswith(f".{host}"):
            released.wait(30)
            # Then the answer a real resolver gives for a name under .example (RFC 2606), at once:
            # asking one here waited for the machine's DNS (its timeout, 5 s, without a network).
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(name, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", hanging)
    try:
        yield
    finally:
        released.set()
        # The lookups let go of end with the resolver's answer: until then they still count
        # against their host, organization and process, and the next test would find them there.
        assert wait_until(lambda: not outbound._lookups_by_host, timeout=30)


def test_a_lookup_that_hangs_ends_the_attempt_at_its_deadline(monkeypatch):
    # The system resolver cannot be interrupted; the attempt stops waiting for it instead.
    with dns_not_answering_for("slow-dns.example", monkeypatch):
        result = post("https://slow-dns.example/hook", body=b"{}", headers={}, timeout=0.2)
    assert result.status is None
    assert result.error == "the host slow-dns.example could not be resolved within 0.2 s"


def test_one_tenant_s_unanswering_dns_does_not_hold_up_other_lookups(monkeypatch):
    # Each lookup has a thread of its own: stuck lookups of one host leave none waiting behind them.
    with dns_not_answering_for("stuck-dns.example", monkeypatch):
        threads = threading.active_count()
        for _ in range(3):  # the same host and port: every sender waits on its one lookup
            with pytest.raises(DestinationNotAllowed, match="could not be resolved within"):
                resolve_destination("https://stuck-dns.example/hook", timeout=0.05)
        assert threading.active_count() == threads + 1
        for port in range(8001, 8001 + outbound.MAX_LOOKUPS_PER_HOST - 1):  # other ports: lookups of their own
            with pytest.raises(DestinationNotAllowed, match="could not be resolved within"):
                resolve_destination(f"https://stuck-dns.example:{port}/hook", timeout=0.05)
        # Past a few stuck lookups of that host, the next fails at once instead of adding a thread.
        threads = threading.active_count()
        with pytest.raises(DestinationNotAllowed, match="not answering"):
            resolve_destination("https://stuck-dns.example:9443/hook", timeout=5)
        assert threading.active_count() == threads
        with pytest.raises(DestinationNotAllowed, match="private or reserved"):  # resolved, then refused
            resolve_destination("http://localhost/hook", timeout=5)


def test_a_burst_of_sends_to_one_host_waits_on_one_lookup(monkeypatch, settings):
    # A dispatcher's first claim sends up to DELIVERY_THREADS deliveries at once; to one host with no
    # answer remembered, each started a lookup and those past MAX_LOOKUPS_PER_HOST failed as "not
    # answering": an attempt lost for nothing (seen as a real worker's delivery left to retry a minute later).
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    real_getaddrinfo = outbound.socket.getaddrinfo
    asked = []

    def slow(host, *args, **kwargs):
        asked.append(host)
        time.sleep(0.3)
        return real_getaddrinfo("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", slow)
    senders = 3 * outbound.MAX_LOOKUPS_PER_HOST
    answers, failures = [], []
    start = threading.Barrier(senders)

    def resolve() -> None:
        start.wait()
        try:
            answers.append(resolve_destination("http://burst.example:8080/hook", timeout=5)[3])
        except DestinationNotAllowed as exc:
            failures.append(str(exc))

    threads = [threading.Thread(target=resolve) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert answers == ["127.0.0.1"] * senders
    assert asked == ["burst.example"]


def test_a_lookup_s_failure_reaches_each_waiting_sender_as_an_error_of_its_own(monkeypatch):
    # Raising one exception object on many threads at once: each raise adds its frames to the one
    # object's __traceback__, so a sender's logged traceback ran through the other senders' frames,
    # and grew with every sender (holding their frames and locals).
    def no_such_host(host, *args, **kwargs):
        time.sleep(0.3)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(outbound.socket, "getaddrinfo", no_such_host)
    senders = 2 * outbound.MAX_LOOKUPS_PER_HOST
    causes = []
    start = threading.Barrier(senders)

    def resolve() -> None:
        start.wait()
        try:
            resolve_destination("http://gone.example/hook", timeout=5)
        except DestinationNotAllowed as exc:
            causes.append(exc.__context__)

    threads = [threading.Thread(target=resolve) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(causes) == senders and len({id(cause) for cause in causes}) == senders
    for cause in causes:
        assert isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_NONAME
        frames = [frame.name for frame in traceback.extract_tb(cause.__traceback__)]
        assert frames.count("_address_infos") == 1, frames


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # its SystemExit
def test_a_lookup_whose_thread_stops_without_an_answer_fails_the_send_cleanly(monkeypatch):
    # Only an Exception is kept as the lookup's error: a thread stopped otherwise (SystemExit) left
    # neither an error nor an answer, and the sender went on with None for the addresses (a TypeError).
    def stopped(host, *args, **kwargs):
        raise SystemExit

    monkeypatch.setattr(outbound.socket, "getaddrinfo", stopped)
    with pytest.raises(DestinationNotAllowed, match="could not be looked up now"):
        resolve_destination("http://stopped.example/hook", timeout=5)
    assert not outbound._lookups_in_progress and not outbound._lookups_by_host
    for thread in threading.enumerate():  # ended within this test, so its SystemExit is reported (and ignored) here
        if thread.name == "hookline-resolve":
            thread.join(5)


def test_one_organization_s_unanswering_dns_leaves_lookups_for_the_others(monkeypatch):
    # A lookup given up on goes on until the resolver's own timeout, and each host has its own few: a
    # tenant with destinations on many names of a zone whose DNS never answers (a wildcard) filled the
    # process's lookups, and every other tenant's lookup then failed at once.
    monkeypatch.setattr(outbound, "MAX_LOOKUPS", 8)
    monkeypatch.setattr(outbound, "MAX_LOOKUPS_PER_ORGANIZATION", 4)
    with dns_not_answering_for("stuck-zone.example", monkeypatch):
        for number in range(outbound.MAX_LOOKUPS):
            with pytest.raises(DestinationNotAllowed):
                resolve_destination(f"https://h{number}.stuck-zone.example/hook", timeout=0.05, organization_id=1)
        threads = threading.active_count()
        with pytest.raises(DestinationNotAllowed, match="still waiting"):  # its own: refused at once
            resolve_destination("https://another.stuck-zone.example/hook", timeout=5, organization_id=1)
        assert threading.active_count() == threads
        with pytest.raises(DestinationNotAllowed, match="private or reserved"):  # another's: resolved, then refused
            resolve_destination("http://localhost/hook", timeout=5, organization_id=2)


def test_a_delivery_s_lookup_counts_as_its_organization_s(monkeypatch, settings, organization):
    monkeypatch.setattr(outbound, "MAX_LOOKUPS_PER_ORGANIZATION", 2)
    settings.ALLOW_PRIVATE_DESTINATIONS = True  # saved on a checked address, then moved to the stuck zone
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    Destination.objects.filter(pk=destination.pk).update(url="https://sent.stuck-zone.example/hook")
    destination.refresh_from_db()
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.PENDING)
    with dns_not_answering_for("stuck-zone.example", monkeypatch):
        for number in range(outbound.MAX_LOOKUPS_PER_ORGANIZATION):
            with pytest.raises(DestinationNotAllowed, match="could not be resolved within"):
                resolve_destination(
                    f"https://h{number}.stuck-zone.example/hook", timeout=0.05, organization_id=organization.pk
                )
        response = delivery_service.send(delivery).response
    assert response.status is None
    assert "earlier lookups for this organization's destinations are still waiting" in response.error


def test_an_organization_s_url_checks_wait_on_few_lookups(monkeypatch):
    # A URL being saved is checked while the request waits, on a thread every tenant's requests
    # (ingest too) share: saves with names of a zone whose DNS never answers each held one for 10 s.
    monkeypatch.setattr(outbound, "MAX_URL_CHECK_LOOKUPS_PER_ORGANIZATION", 2)
    with dns_not_answering_for("stuck-zone.example", monkeypatch):
        for number in range(2):  # two of its lookups are still waiting (here, given up on)
            with pytest.raises(DestinationNotAllowed):
                resolve_destination(f"https://h{number}.stuck-zone.example/", timeout=0.05, organization_id=1)
        started = time.monotonic()
        # Nothing is wrong with the URL: the dashboard's form and the API (a 429) say to save it again.
        with pytest.raises(DestinationError, match=r"still waiting.*nothing is wrong with the URL, try again in 10 s"):
            destination_check_url("https://next.stuck-zone.example/hook", organization_id=1)
        assert time.monotonic() - started < 1  # refused at once, not after the lookup's timeout
        with pytest.raises(DestinationError, match="private or reserved"):  # another's is looked up
            destination_check_url("http://localhost/hook", organization_id=2)


def test_a_name_that_rebinds_to_a_private_address_after_the_check_is_not_connected_to_there(monkeypatch):
    # DNS rebinding: the name answers a public address for the check, then 127.0.0.1. The connection
    # goes to the address that was checked, never to what a second lookup of the name would answer.
    receiver = socket.socket()
    receiver.bind(("127.0.0.1", 0))
    receiver.listen(8)
    receiver.settimeout(0.1)
    port = receiver.getsockname()[1]
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["93.184.215.14"])

    def rebinding(host, *args, **kwargs):
        if host == "rebind.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers, "127.0.0.1"), port))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", rebinding)
    tried = []
    real_pool_for = outbound._pool_for
    monkeypatch.setattr(outbound, "_pool_for", lambda *key: tried.append(key[3]) or real_pool_for(*key))
    try:
        result = post(f"http://rebind.example:{port}/hook", body=b"{}", headers={}, timeout=1)
        with pytest.raises(TimeoutError):
            receiver.accept()  # nothing ever connected to the private address
    finally:
        receiver.close()
    assert tried == ["93.184.215.14"] and result.status is None


def test_answers_are_reused_for_a_while_and_still_checked(monkeypatch, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    real_getaddrinfo = outbound.socket.getaddrinfo
    asked = []

    def counting(host, *args, **kwargs):
        asked.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", counting)
    assert resolve_destination("http://localhost:8080/a")[3] in ("127.0.0.1", "::1")
    assert resolve_destination("http://localhost:8080/b")[3] in ("127.0.0.1", "::1")
    assert asked == ["localhost"]
    settings.ALLOW_PRIVATE_DESTINATIONS = False  # a remembered answer is checked on every use
    with pytest.raises(DestinationNotAllowed, match="private or reserved"):
        resolve_destination("http://localhost:8080/c")


def test_the_lookup_s_time_comes_out_of_the_attempt_s_timeout(monkeypatch, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    real_getaddrinfo = outbound.socket.getaddrinfo
    watched = []

    def slow_lookup(host, *args, **kwargs):
        if host == "localhost":
            threading.Event().wait(0.3)
        return real_getaddrinfo(host, *args, **kwargs)

    class RecordingWatchdog(outbound._Watchdog):
        def __init__(self, seconds):
            watched.append(seconds)
            super().__init__(seconds)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", slow_lookup)
    monkeypatch.setattr(outbound, "_Watchdog", RecordingWatchdog)
    result = post("http://localhost:9/hook", body=b"{}", headers={}, timeout=1.0)
    assert result.status is None  # nothing listens on port 9
    assert watched and watched[0] <= 0.7 + outbound.CUT_GRACE_SECONDS


@pytest.mark.parametrize("port,refused", [(25, True), (6667, True), (9, True), (443, False), (8443, False)])
def test_ports_of_other_protocols_are_refused_on_public_addresses(monkeypatch, settings, port, refused):
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    public = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]
    monkeypatch.setattr(outbound.socket, "getaddrinfo", lambda *args, **kwargs: public)
    outbound.forget_resolved_hosts()
    url = f"https://mail.example.com:{port}/hook"
    if refused:
        with pytest.raises(DestinationNotAllowed, match=f"port {port} belongs to another protocol"):
            resolve_destination(url)
    else:
        assert resolve_destination(url)[2:] == (port, "93.184.215.14")


def test_an_allowed_private_address_may_use_any_port(settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = True  # the operator's own network
    assert resolve_destination("http://127.0.0.1:9/hook")[2:] == (9, "127.0.0.1")


def _lookups_in_progress(organization_id: int) -> tuple[int, int]:
    """The organization's lookups counted in progress, and every host's (this process's counters)."""
    with outbound._lookups_lock:
        return outbound._lookups_by_organization.get(organization_id, 0), sum(outbound._lookups_by_host.values())


@pytest.mark.parametrize(
    "failure",
    [
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        UnicodeError("label too long"),
        OSError("resolver broke"),
        RuntimeError("anything else"),
    ],
)
def test_a_lookup_that_fails_gives_its_place_back(monkeypatch, failure):
    # A place not given back is never given back: past MAX_LOOKUPS_PER_ORGANIZATION of them, every
    # lookup of that organization in this process would be refused until it restarts.
    def failing(*args, **kwargs):
        raise failure

    monkeypatch.setattr(outbound.socket, "getaddrinfo", failing)
    before = _lookups_in_progress(7001)
    for number in range(outbound.MAX_LOOKUPS_PER_ORGANIZATION + 1):
        # Refused, or raised to the delivery's send(), which records the attempt as not made.
        with pytest.raises((DestinationNotAllowed, type(failure))) as raised:
            resolve_destination(f"https://h{number}.failing.example/", timeout=5, organization_id=7001)
        assert "still waiting" not in str(raised.value)
    assert _lookups_in_progress(7001) == before


def test_a_lookup_given_up_on_gives_its_place_back_when_it_ends(monkeypatch):
    released = threading.Event()
    real_getaddrinfo = outbound.socket.getaddrinfo

    def slow(name, *args, **kwargs):
        assert released.wait(30)
        return real_getaddrinfo("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", slow)
    outbound.forget_resolved_hosts()
    with pytest.raises(DestinationNotAllowed, match="within"):
        resolve_destination("http://given-up.example/", timeout=0.05, organization_id=7002)
    assert _lookups_in_progress(7002)[0] == 1  # still waiting on its DNS: counted
    released.set()
    assert wait_until(lambda: _lookups_in_progress(7002)[0] == 0, timeout=10)


@pytest.mark.parametrize("failure", [RuntimeError("can't start new thread"), MemoryError()])
def test_a_lookup_whose_thread_cannot_start_gives_its_place_back(monkeypatch, failure):
    def no_thread(self):
        raise failure

    monkeypatch.setattr(outbound.threading.Thread, "start", no_thread)
    outbound.forget_resolved_hosts()
    before = _lookups_in_progress(7003)
    with pytest.raises((DestinationNotAllowed, MemoryError)):
        resolve_destination("http://no-thread.example/", timeout=1, organization_id=7003)
    assert _lookups_in_progress(7003) == before
