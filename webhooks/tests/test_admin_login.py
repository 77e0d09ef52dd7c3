"""The admin's password sign-in through the test client: limits per network and per address, the refusal
the operator sees, windows and resets, the audit of failures, and all of it with Redis down."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core import serializers
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts import services
from conftest import REDIS_DOWN_CACHES, UserFactory
from organizations.models import AuditLog, Membership
from organizations.services import audit_verify_chain

pytestmark = pytest.mark.django_db

LOGIN = reverse("admin:login")
ROOT = "root@hookline.example"
ROOT_PASSWORD = "correct horse battery"
OTHER = "ops@hookline.example"
OTHER_PASSWORD = "another long passphrase"
WRONG = "Tr0ub4dor&3-wrong"


class Clock:
    """Stands in for accounts.services.clock so tests move time instead of sleeping."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch, settings):
    # At the start of a window, so that moving a little forward stays within it. Started from the real
    # time, since the audit log's entries (counted when the cache is down) carry the real time.
    window = settings.SIGN_IN_RATE_WINDOW_SECONDS
    fake = Clock((int(time.time() // window) + 1) * window)
    monkeypatch.setattr(services, "clock", fake)
    return fake


@pytest.fixture
def root(db):
    return get_user_model().objects.create_superuser(ROOT, ROOT_PASSWORD)


@pytest.fixture
def other_admin(db):
    return get_user_model().objects.create_superuser(OTHER, OTHER_PASSWORD)


@pytest.fixture
def limits(settings):
    """Small limits, so that the address's and the network's are told apart."""
    settings.SIGN_IN_CODE_MAX_ATTEMPTS = 3  # per address
    settings.SIGN_IN_CODE_TRIES_PER_IP = 5  # per network
    return {"address": 3, "network": 5}


def log_in(username, password, ip="198.51.100.1", client=None):
    client = client or Client()
    response = client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=ip)
    return client, response


def signed_in(client, user) -> bool:
    return client.session.get(SESSION_KEY) == str(user.pk)


def accepted(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def wrong(response) -> bool:
    return response.status_code == 200 and "Please enter the correct email and password" in text(response)


def refused(response) -> bool:
    return (
        response.status_code == 429
        and int(response["Retry-After"]) > 0
        and (
            "Too many failed sign-in attempts for this address or from your network" in text(response)
            or "Too many failed sign-in attempts from this browser or from your network" in text(response)
        )
        and "Please enter the correct" not in text(response)
    )


def text(response) -> str:
    return response.content.decode()


# --- Limits -----------------------------------------------------------------------------------------


def test_thirty_wrong_passwords_then_the_right_one_with_the_default_limits(root, clock, settings):
    assert (settings.SIGN_IN_CODE_MAX_ATTEMPTS, settings.SIGN_IN_CODE_TRIES_PER_IP) == (5, 30)
    answers = [log_in(ROOT, WRONG)[1] for _ in range(30)]

    client, response = log_in(ROOT, ROOT_PASSWORD)

    assert all(wrong(answer) for answer in answers[:5]) and all(refused(answer) for answer in answers[5:])
    assert refused(response) and not signed_in(client, root)
    assert AuditLog.objects.filter(action="user.sign_in_failed").count() == 5
    assert AuditLog.objects.filter(action="user.sign_in_throttled").count() == 1


def test_a_network_is_refused_after_its_limit_of_wrong_passwords_whatever_the_addresses(
    root, other_admin, limits, clock
):
    for number in range(limits["network"]):
        assert wrong(log_in(f"guess{number}@example.com", WRONG)[1])

    client, response = log_in(ROOT, ROOT_PASSWORD)  # the right password, from the same network

    assert refused(response)
    assert not signed_in(client, root)
    # The same accounts from another network are not held back by this one's failures.
    client, response = log_in(ROOT, ROOT_PASSWORD, ip="203.0.113.50")
    assert accepted(response) and signed_in(client, root)
    assert accepted(log_in(OTHER, OTHER_PASSWORD, ip="203.0.113.51")[1])


def test_an_address_is_refused_after_its_limit_of_wrong_passwords_from_any_networks(root, other_admin, limits, clock):
    for number in range(limits["address"]):
        assert wrong(log_in(ROOT, WRONG, ip=f"192.0.2.{number + 1}")[1])

    client, response = log_in(ROOT, ROOT_PASSWORD, ip="203.0.113.50")

    assert refused(response)
    assert not signed_in(client, root)
    # The address's spelling does not matter, and other addresses, from the same networks, still sign in.
    assert refused(log_in("  ROOT@Hookline.Example", WRONG, ip="203.0.113.52")[1])
    client, response = log_in(OTHER, OTHER_PASSWORD, ip="192.0.2.1")
    assert accepted(response) and signed_in(client, other_admin)


def test_the_refusal_says_when_to_try_again_and_does_not_check_the_password(root, limits, clock, settings):
    for _ in range(limits["address"]):
        log_in(ROOT, WRONG)
    failures = AuditLog.objects.filter(action="user.sign_in_failed").count()
    clock.now += 60  # 14 minutes left of the 15-minute window

    response = log_in(ROOT, WRONG)[1]

    assert refused(response)
    window_end = clock.now - 60 + settings.SIGN_IN_RATE_WINDOW_SECONDS
    assert f"Try again after {time.strftime('%H:%M', time.gmtime(window_end))} UTC (in 14 minutes)" in text(response)
    assert response["Retry-After"] == str(14 * 60)
    assert 'name="username"' in text(response)  # the form is there to try again later
    # Refused before the password was checked: no new failure (a guess while locked learns nothing).
    assert AuditLog.objects.filter(action="user.sign_in_failed").count() == failures


def test_the_refusal_ends_with_its_window(root, limits, clock, settings):
    for _ in range(limits["address"]):
        log_in(ROOT, WRONG)
    assert refused(log_in(ROOT, ROOT_PASSWORD)[1])

    clock.now += settings.SIGN_IN_RATE_WINDOW_SECONDS - 1
    assert refused(log_in(ROOT, ROOT_PASSWORD)[1])  # trying meanwhile does not lengthen it either
    clock.now += 1

    client, response = log_in(ROOT, ROOT_PASSWORD)
    assert accepted(response) and signed_in(client, root)


def test_the_right_password_clears_its_addresss_failures_but_not_its_networks(root, other_admin, limits, clock):
    for _ in range(limits["address"] - 1):
        assert wrong(log_in(ROOT, WRONG)[1])
    assert accepted(log_in(ROOT, ROOT_PASSWORD)[1])

    # The address starts afresh: as many wrong passwords again before it is refused…
    for _ in range(limits["address"] - 1):
        assert wrong(log_in(ROOT, WRONG, ip="192.0.2.9")[1])
    assert accepted(log_in(ROOT, ROOT_PASSWORD, ip="192.0.2.9")[1])
    # …but the first network keeps its two failures: three more reach its five.
    for number in range(3):
        assert wrong(log_in(f"guess{number}@example.com", WRONG)[1])
    assert refused(log_in(OTHER, OTHER_PASSWORD)[1])


def test_sign_ins_from_one_network_do_not_use_up_its_limit(root, other_admin, limits, clock):
    for _ in range(limits["network"] * 2):
        assert accepted(log_in(ROOT, ROOT_PASSWORD)[1])
        assert accepted(log_in(OTHER, OTHER_PASSWORD)[1])


def test_concurrent_guesses_cannot_all_slip_under_the_limit(limits, clock):
    barrier = threading.Barrier(12)

    def attempt(number):
        barrier.wait()
        return services.admin_password_attempt(email=ROOT, ip_address=f"192.0.2.{number}")

    with ThreadPoolExecutor(max_workers=12) as pool:
        verdicts = list(pool.map(attempt, range(12)))

    assert sum(verdict.refused_until is None for verdict in verdicts) == limits["address"]
    assert sum(verdict.newly_locked == ("address",) for verdict in verdicts) == 1


def test_a_form_without_a_password_counts_nothing(root, limits, clock):
    for _ in range(limits["address"] + 1):
        response = log_in(ROOT, "")[1]
        assert response.status_code == 200 and "This field is required" in text(response)
    assert accepted(log_in(ROOT, ROOT_PASSWORD)[1])


# --- Audit ------------------------------------------------------------------------------------------


def test_refused_passwords_are_audited_platform_wide_with_the_network_and_never_the_password(root, organization, clock):
    Membership.objects.create(user=root, organization=organization, role=Membership.Role.OWNER)
    tenant = get_user_model().objects.create_user("tenant@acme.example")  # signs in by email: no password
    deactivated = get_user_model().objects.create_superuser("gone@hookline.example", "gone but not forgotten")
    deactivated.is_active = False
    deactivated.save()

    log_in(ROOT, WRONG, ip="198.51.100.7")
    log_in("NOBODY@example.com", WRONG, ip="198.51.100.8")
    log_in(tenant.email, WRONG, ip="198.51.100.8")
    log_in(deactivated.email, "gone but not forgotten", ip="198.51.100.8")
    log_in(ROOT_PASSWORD, ROOT, ip="198.51.100.9")  # the password typed in the address box

    entries = list(AuditLog.objects.filter(action="user.sign_in_failed").order_by("id"))
    assert [(entry.changes["email"], entry.changes["reason"], entry.ip_address) for entry in entries] == [
        (ROOT, "wrong password", "198.51.100.7"),
        ("nobody@example.com", "no such account", "198.51.100.8"),
        (tenant.email, "account signs in without a password", "198.51.100.8"),
        (deactivated.email, "account deactivated", "198.51.100.8"),
        ("(not an email address: not recorded)", "no such account", "198.51.100.9"),
    ]
    # Platform-wide, though root belongs to an organization, and no one is taken for the actor.
    assert all(entry.organization_id is None and entry.actor_user_id is None for entry in entries)
    assert [entry.target_id for entry in entries] == [str(root.pk), "", str(tenant.pk), str(deactivated.pk), ""]
    assert entries[0].actor_label == "not signed in"
    stored = serializers.serialize("json", AuditLog.objects.all())
    assert WRONG not in stored and ROOT_PASSWORD not in stored and "gone but not forgotten" not in stored
    assert audit_verify_chain().ok
    call_command("verify_audit_log")  # raises CommandError on a broken chain


def test_a_right_password_of_an_account_that_may_not_use_the_admin_is_audited_and_counted(db, limits, clock):
    user = UserFactory(email="tenant@acme.example")
    user.set_password("a tenant's password")
    user.save()

    for _ in range(limits["address"]):
        client, response = log_in(user.email, "a tenant's password")
        assert wrong(response) and not signed_in(client, user)
    assert refused(log_in(user.email, "a tenant's password")[1])

    entry = AuditLog.objects.filter(action="user.sign_in_failed").latest("id")
    assert entry.changes == {"email": user.email, "reason": "not a staff account"}
    assert "a tenant's password" not in serializers.serialize("json", AuditLog.objects.all())


def test_a_lock_is_audited_once_however_often_it_is_knocked_on(root, limits, clock):
    for _ in range(limits["address"]):
        log_in(ROOT, WRONG, ip="198.51.100.7")
    for _ in range(limits["network"]):
        assert refused(log_in(ROOT, ROOT_PASSWORD, ip="198.51.100.7")[1])
    # Refused attempts are not counted against the network: its other addresses' passwords are still checked.
    assert wrong(log_in("someone@example.com", WRONG, ip="198.51.100.7")[1])

    entries = list(AuditLog.objects.filter(action="user.sign_in_throttled"))
    assert len(entries) == 1
    entry = entries[0]
    assert entry.organization_id is None and entry.target_id == str(root.pk)
    assert entry.ip_address == "198.51.100.7"
    assert entry.changes["email"] == ROOT and entry.changes["limit"] == "address"
    assert entry.changes["refused_until"].startswith(time.strftime("%Y-%m-%dT%H:%M", time.gmtime(clock.now + 900)))
    assert audit_verify_chain().ok


def test_an_admin_sign_in_is_audited_with_its_network(root, clock):
    assert accepted(log_in(ROOT, ROOT_PASSWORD, ip="198.51.100.20")[1])
    entry = AuditLog.objects.get(action="user.signed_in")
    assert entry.actor_user == root and entry.organization_id is None and entry.ip_address == "198.51.100.20"


# --- Redis down: the audit log counts the failures ----------------------------------------------------


def test_with_the_cache_down_the_right_password_still_signs_in(root, settings, clock, caplog):
    settings.CACHES = REDIS_DOWN_CACHES
    assert wrong(log_in(ROOT, WRONG)[1])

    client, response = log_in(ROOT, ROOT_PASSWORD)

    assert accepted(response) and signed_in(client, root)
    assert client.get(reverse("admin:index")).status_code == 200
    assert AuditLog.objects.filter(action="user.sign_in_failed", changes__email=ROOT).count() == 1
    assert "admin password limits counted from the audit log: the cache is unavailable" in caplog.text


def test_with_the_cache_down_the_audit_logs_failures_keep_the_limits(root, other_admin, limits, settings, clock):
    settings.CACHES = REDIS_DOWN_CACHES
    for _ in range(limits["address"]):
        assert wrong(log_in(ROOT, WRONG, ip="198.51.100.30")[1])

    response = log_in(ROOT, ROOT_PASSWORD, ip="203.0.113.60")[1]

    assert refused(response)
    # Free again when the oldest of the failures leaves the window, a time rounded up to the minute shown.
    oldest = AuditLog.objects.filter(action="user.sign_in_failed").earliest("created_at").created_at
    free_at = oldest + timedelta(seconds=settings.SIGN_IN_RATE_WINDOW_SECONDS)
    assert f"Try again after {free_at + timedelta(seconds=59, microseconds=999_999):%H:%M} UTC" in text(response)
    # The network that guessed has two tries left of its five; other addresses and networks are free.
    assert accepted(log_in(OTHER, OTHER_PASSWORD, ip="203.0.113.61")[1])
    assert wrong(log_in("someone@example.com", WRONG, ip="198.51.100.30")[1])
    assert wrong(log_in("someone-else@example.com", WRONG, ip="198.51.100.30")[1])
    assert refused(log_in(OTHER, OTHER_PASSWORD, ip="198.51.100.30")[1])

    # The failures age out of the window as in the cache.
    clock.now += settings.SIGN_IN_RATE_WINDOW_SECONDS + 1
    client, response = log_in(ROOT, ROOT_PASSWORD, ip="198.51.100.30")
    assert accepted(response) and signed_in(client, root)


def test_counts_kept_while_the_cache_was_down_do_not_carry_over_when_it_is_back(root, limits, settings, clock):
    # Back up, the cache's counters are the limit again; failures written meanwhile do not lock anyone out twice.
    caches = settings.CACHES
    settings.CACHES = REDIS_DOWN_CACHES
    for _ in range(limits["address"]):
        log_in(ROOT, WRONG)
    assert refused(log_in(ROOT, ROOT_PASSWORD)[1])
    settings.CACHES = caches

    assert accepted(log_in(ROOT, ROOT_PASSWORD)[1])


@pytest.mark.django_db(transaction=True)  # each guess its own connection and transaction, as in production
@pytest.mark.parametrize("limited", ["address", "network"])
def test_with_the_cache_down_concurrent_guesses_get_no_more_password_checks_than_the_limit(
    root, limited, limits, settings, clock, monkeypatch
):
    # Counted from the audit log, a guess must not pass the count before the one ahead of it is
    # recorded: all of them at once would otherwise each see the failures recorded so far and pass.
    settings.CACHES = REDIS_DOWN_CACHES
    guesses = 12
    checks = []
    check_password = ModelBackend.authenticate

    def slow_check(backend, request, username=None, password=None, **kwargs):
        checks.append(username)
        time.sleep(0.05)  # as long as a real password hash takes, more or less: the guesses overlap
        return check_password(backend, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", slow_check)
    barrier = threading.Barrier(guesses)

    def guess(number):
        # Another network per guess at one address, or another address per guess from one network.
        username, ip = (
            (ROOT, f"198.51.100.{number}") if limited == "address" else (f"a{number}@example.com", "203.0.113.9")
        )
        try:
            barrier.wait()
            return log_in(username, WRONG, ip=ip)[1]
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=guesses) as pool:
        responses = list(pool.map(guess, range(guesses)))

    assert len(checks) == limits[limited]
    assert sum(wrong(response) for response in responses) == limits[limited]
    assert sum(refused(response) for response in responses) == guesses - limits[limited]
    assert AuditLog.objects.filter(action="user.sign_in_failed").count() == limits[limited]
    assert audit_verify_chain().ok


def test_the_audit_entries_hold_no_credentials_but_the_address(root, clock):
    log_in(ROOT, WRONG)
    entry = AuditLog.objects.get(action="user.sign_in_failed")
    assert set(entry.changes) == {"email", "reason"}
    assert WRONG not in json.dumps(entry.changes) + entry.user_agent + entry.target_label + entry.actor_label


def test_an_ipv6_client_cannot_step_around_the_network_limit_within_its_own_64(root, limits, clock):
    # A client holds a whole /64: each guess from another address of it still counts against one network.
    answers = [
        log_in(f"guess{number}@example.com", WRONG, ip=f"2001:db8:1:2:{number + 1:x}::{number + 7:x}")[1]
        for number in range(limits["network"] + 1)
    ]

    assert all(wrong(answer) for answer in answers[:-1]) and refused(answers[-1])
    # The next /64 is another network, and so is each IPv4 client mapped into IPv6 (not one /64 for all).
    assert wrong(log_in("guess@example.com", WRONG, ip="2001:db8:1:3::1")[1])
    mapped = [
        log_in(f"mapped{number}@example.com", WRONG, ip=f"::ffff:192.0.2.{number + 1}")[1]
        for number in range(limits["network"] + 1)
    ]
    assert all(wrong(answer) for answer in mapped)


# --- A stranger who knows the admins' addresses cannot lock out the browsers they use --------------------


def test_a_stranger_cannot_lock_an_admin_out_of_a_browser_they_signed_in_from(root, other_admin, clock, settings):
    # Each admin signed in before, from their own browser, which keeps a device cookie.
    browsers = {}
    for address, password in ((ROOT, ROOT_PASSWORD), (OTHER, OTHER_PASSWORD)):
        browser, response = log_in(address, password, ip="203.0.113.7")
        cookie = response.cookies[services.ADMIN_DEVICE_COOKIE]
        assert cookie["httponly"] and cookie["path"] == "/admin/" and cookie["samesite"] == "Lax"
        browser.post(reverse("admin:logout"))
        browsers[address] = browser
    # Default limits (5 per address, 30 per network): one network, never signed in, knocks on each door.
    for address in browsers:
        for _ in range(settings.SIGN_IN_CODE_MAX_ATTEMPTS + 1):
            log_in(address, WRONG, ip="198.51.100.66")

    # The admins' own browsers still get in, from any network; a browser they never used is locked out.
    for number, (address, password) in enumerate(((ROOT, ROOT_PASSWORD), (OTHER, OTHER_PASSWORD))):
        browser, response = log_in(address, password, ip=f"192.0.2.{number + 1}", client=browsers[address])
        assert not refused(response) and response.status_code == 302
    assert refused(log_in(ROOT, ROOT_PASSWORD, ip="192.0.2.9")[1])


def test_a_known_browser_is_limited_on_its_own_and_only_for_its_own_address(root, other_admin, clock, limits, settings):
    browser, response = log_in(ROOT, ROOT_PASSWORD)
    browser.post(reverse("admin:logout"))
    # Its cookie names root: for another address it counts as a browser never seen.
    stolen = browser.cookies[services.ADMIN_DEVICE_COOKIE].value
    assert services.admin_device_for(stolen, OTHER) is None
    assert services.admin_device_for(stolen, ROOT.upper()) is not None
    assert services.admin_device_for(stolen[:-2] + "xx", ROOT) is None  # a forged one

    # Wrong passwords from the known browser: its own limit, then refused until the window ends.
    for _ in range(limits["address"]):
        assert not refused(log_in(ROOT, WRONG, client=browser)[1])
    assert refused(log_in(ROOT, ROOT_PASSWORD, client=browser)[1])
    # Meanwhile root's address and the network were not counted: another browser still gets in.
    assert not refused(log_in(ROOT, ROOT_PASSWORD, ip="198.51.100.1")[1])
    clock.now += settings.SIGN_IN_RATE_WINDOW_SECONDS
    assert log_in(ROOT, ROOT_PASSWORD, client=browser)[1].status_code == 302


def test_with_the_cache_down_a_known_browser_is_not_held_back_by_a_strangers_failures(root, limits, settings, clock):
    browser, _ = log_in(ROOT, ROOT_PASSWORD, ip="203.0.113.7")
    browser.post(reverse("admin:logout"))
    settings.CACHES = REDIS_DOWN_CACHES
    for _ in range(limits["address"]):  # a stranger, elsewhere, uses up the address's failures
        log_in(ROOT, WRONG, ip="198.51.100.30")
    assert refused(log_in(ROOT, ROOT_PASSWORD, ip="198.51.100.31")[1])  # a browser never seen
    assert log_in(ROOT, ROOT_PASSWORD, ip="203.0.113.7", client=browser)[1].status_code == 302


def test_a_device_cookie_stops_counting_as_a_known_browser_once_the_password_changes(root, clock, limits):
    # Whoever once had the password could sign in again and again and keep a cookie each time: after
    # the password is changed, each old cookie would still be a fresh allowance of guesses at the new one.
    cookies = []
    for _ in range(3):
        browser, _ = log_in(ROOT, ROOT_PASSWORD)
        cookies.append(browser.cookies[services.ADMIN_DEVICE_COOKIE].value)
    assert all(services.admin_device_for(cookie, ROOT) is not None for cookie in cookies)

    root.set_password("a brand new passphrase for root")
    root.save()
    assert all(services.admin_device_for(cookie, ROOT) is None for cookie in cookies)
    stale = Client()
    stale.cookies[services.ADMIN_DEVICE_COOKIE] = cookies[0]
    for _ in range(limits["address"]):  # the stale cookie's guesses count against the address again
        log_in(ROOT, WRONG, client=stale)
    assert refused(log_in(ROOT, "a brand new passphrase for root", ip="198.51.100.2")[1])


def test_signing_out_everywhere_forgets_the_browsers_known_until_then(root, clock):
    browser, _ = log_in(ROOT, ROOT_PASSWORD)
    cookie = browser.cookies[services.ADMIN_DEVICE_COOKIE].value
    services.sessions_revoke_all(user=root)
    assert services.admin_device_for(cookie, ROOT) is None


def test_the_device_cookie_is_secure_when_the_admin_is_reached_over_https(root, clock, settings):
    settings.SESSION_COOKIE_SECURE = False  # PUBLIC_BASE_URL says http, but this request came over https
    client = Client()
    response = client.post(
        LOGIN, {"username": ROOT, "password": ROOT_PASSWORD, "next": "/admin/"}, REMOTE_ADDR="198.51.100.1", secure=True
    )
    assert response.status_code == 302 and response.cookies[services.ADMIN_DEVICE_COOKIE]["secure"]


def test_a_known_browser_past_its_own_limit_is_told_so_and_not_blamed_on_its_address(root, clock, limits):
    browser, _ = log_in(ROOT, ROOT_PASSWORD)
    browser.post(reverse("admin:logout"))
    for _ in range(limits["address"]):
        log_in(ROOT, WRONG, client=browser)
    response = log_in(ROOT, ROOT_PASSWORD, client=browser)[1]
    assert response.status_code == 429 and "from this browser" in text(response)


def test_with_the_cache_down_a_stolen_device_cookie_still_gets_only_its_addresss_limit(root, limits, settings, clock):
    # A known browser is not held to the address's count during an outage; its own failures, from any
    # number of networks, must still stop it, or one stolen cookie is unlimited guesses meanwhile.
    stolen, _ = log_in(ROOT, ROOT_PASSWORD, ip="203.0.113.7")
    stolen.post(reverse("admin:logout"))
    own, _ = log_in(ROOT, ROOT_PASSWORD, ip="203.0.113.8")
    own.post(reverse("admin:logout"))
    settings.CACHES = REDIS_DOWN_CACHES
    for number in range(limits["address"]):
        assert wrong(log_in(ROOT, WRONG, ip=f"198.51.{number}.30", client=stolen)[1])
    assert refused(log_in(ROOT, ROOT_PASSWORD, ip="198.51.200.30", client=stolen)[1])
    # The admin's own browser is not held back by the stolen one's failures.
    assert accepted(log_in(ROOT, ROOT_PASSWORD, ip="203.0.113.8", client=own)[1])
