"""Passwordless sign-in through the views: magic link, one-time code, limits, no enumeration, sign-out."""

import re
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.models import Session
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import Invitation
from conftest import REDIS_DOWN_CACHES
from organizations.models import AuditLog, Membership

pytestmark = pytest.mark.django_db

SIGN_IN = reverse("accounts:sign_in")
CODE = reverse("accounts:sign_in_code")
TEAM = "/o/acme/team/"


def ask(client, email, next_url=TEAM, **extra):
    return client.post(SIGN_IN, {"email": email, "next": next_url}, **extra)


def link_path(message) -> str:
    return urlsplit(re.search(r"https?://\S+/accounts/sign-in/link/\S+/", message.body).group(0)).path


def code_in(message) -> str:
    return re.search(r"^(\d{6})$", message.body, re.MULTILINE).group(1)


def signed_in_user_id(client):
    return client.session.get(SESSION_KEY)


class Clock:
    """Stands in for accounts.services.clock so tests move time instead of sleeping."""

    def __init__(self, start: float = 1_900_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(services, "clock", fake)
    return fake


def test_link_opened_in_the_same_browser_signs_in_and_follows_next(client, owner):
    response = ask(client, owner.email)
    assert response.status_code == 302 and response["Location"] == CODE
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [owner.email]
    assert "text/html" in mail.outbox[0].alternatives[0][1]

    response = client.get(link_path(mail.outbox[0]))

    assert response.status_code == 302 and response["Location"] == TEAM
    assert str(owner.pk) == signed_in_user_id(client)
    assert client.get(TEAM).status_code == 200


def test_link_opened_in_another_browser_asks_for_a_click_first(client, owner):
    ask(client, owner.email)
    scanner = Client()
    path = link_path(mail.outbox[0])

    page = scanner.get(path)

    assert page.status_code == 200
    assert signed_in_user_id(scanner) is None
    html = page.content.decode()
    assert owner.email in html and f'value="{owner.email}"' not in html  # shown, not editable
    response = scanner.post(path)
    assert response.status_code == 302 and response["Location"] == TEAM
    assert signed_in_user_id(scanner) == str(owner.pk)


def test_code_signs_in_the_browser_that_asked(client, owner):
    ask(client, owner.email)
    code = code_in(mail.outbox[0])
    assert code in mail.outbox[0].subject
    before = client.session.session_key

    response = client.post(CODE, {"code": f"{code[:3]} {code[3:]}"})

    assert response.status_code == 302 and response["Location"] == TEAM
    assert signed_in_user_id(client) == str(owner.pk)
    assert client.session.session_key != before  # the session key is rotated at sign-in


def test_a_link_works_once_and_voids_the_code_sent_with_it(client, owner):
    ask(client, owner.email)
    message = mail.outbox[0]
    other = Client()
    assert other.post(link_path(message)).status_code == 302

    assert Client().post(link_path(message)).status_code == 400
    assert Client().get(link_path(message)).status_code == 400
    assert client.post(CODE, {"code": code_in(message)}).status_code == 400
    assert signed_in_user_id(client) is None


def test_a_code_works_once_and_voids_the_link_sent_with_it(client, owner):
    ask(client, owner.email)
    message = mail.outbox[0]
    response = client.post(CODE, {"code": code_in(message)})
    assert response.status_code == 302 and response["Location"] == TEAM
    assert signed_in_user_id(client) == str(owner.pk)
    other = Client()
    assert other.post(link_path(message)).status_code == 400
    assert signed_in_user_id(other) is None
    client.logout()
    client.post(SIGN_IN, {"email": owner.email})  # puts the address back in the session
    assert client.post(CODE, {"code": code_in(message)}).status_code == 400
    assert signed_in_user_id(client) is None


def test_the_link_of_a_code_already_used_in_this_browser_says_it_is_signed_in(client, owner):
    """The code typed first, the email's link clicked later in the same browser: the page said only
    that the link no longer works, with "Send a new link", to someone signed in already."""
    ask(client, owner.email)
    message = mail.outbox[0]
    assert client.post(CODE, {"code": code_in(message)}).status_code == 302
    response = client.get(link_path(message))
    assert response.status_code == 400
    text = " ".join(response.content.decode().split())
    assert f"This browser is signed in already, as <strong>{owner.email}</strong>" in text
    assert 'href="/">Continue to Hookline</a>' in text and "Send a new link" not in text
    # Elsewhere, nobody signed in: a new link, as before.
    elsewhere = Client().get(link_path(message)).content.decode()
    assert "Send a new link" in elsewhere and "signed in already" not in elsewhere


def test_a_newer_email_replaces_the_older_code(client, owner):
    ask(client, owner.email)
    ask(client, owner.email)
    old, new = mail.outbox
    if code_in(old) != code_in(new):
        assert client.post(CODE, {"code": code_in(old)}).status_code == 400
        assert signed_in_user_id(client) is None
    response = client.post(CODE, {"code": code_in(new)})
    assert response.status_code == 302 and response["Location"] == TEAM
    assert signed_in_user_id(client) == str(owner.pk)


def test_a_link_expires_after_15_minutes_and_a_code_after_5(client, owner, clock):
    ask(client, owner.email)
    message = mail.outbox[0]
    clock.now += 5 * 60 + 1
    assert client.post(CODE, {"code": code_in(message)}).status_code == 400
    clock.now += 10 * 60
    assert Client().post(link_path(message)).status_code == 400
    assert signed_in_user_id(client) is None


def test_a_link_is_still_good_just_before_it_expires(client, owner, clock):
    ask(client, owner.email)
    clock.now += 15 * 60 - 1
    browser = Client()
    response = browser.post(link_path(mail.outbox[0]))
    assert response.status_code == 302 and response["Location"] == TEAM
    assert signed_in_user_id(browser) == str(owner.pk)


def test_records_are_stored_hashed_with_their_ttl(client, owner):
    ask(client, owner.email)
    message = mail.outbox[0]
    token = link_path(message).rstrip("/").rsplit("/", 1)[1]
    code = code_in(message)
    keys = cache.keys("signin:*")
    link_keys = [key for key in keys if key.startswith("signin:link:")]
    code_keys = [key for key in keys if key.startswith("signin:code:")]
    assert len(link_keys) == 1 and len(code_keys) == 1
    assert 15 * 60 - 60 < cache.ttl(link_keys[0]) <= 15 * 60
    assert 5 * 60 - 60 < cache.ttl(code_keys[0]) <= 5 * 60
    stored = repr([cache.get(key) for key in keys])
    assert token not in stored and code not in stored


def test_five_wrong_codes_void_the_code(client, owner):
    ask(client, owner.email)
    good = code_in(mail.outbox[0])
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(5):
        assert client.post(CODE, {"code": wrong}).status_code == 400
    response = client.post(CODE, {"code": good})
    assert response.status_code == 429
    assert "Too many wrong codes" in response.content.decode()
    assert signed_in_user_id(client) is None
    # A screen reader reads the error with the field: its aria-describedby names where it is.
    html = response.content.decode()
    described = re.search(r'<input[^>]*name="code"[^>]*aria-describedby="([^"]+)"', html).group(1).split()
    assert any(
        f'id="{target}"' in html and "Too many wrong codes" in html.split(f'id="{target}"')[1][:400]
        for target in described
    )


def test_the_wrong_code_lock_ends_with_its_window_however_often_one_tries(client, owner, clock, settings):
    # A key refreshed by every try kept the address locked for as long as anyone kept trying.
    window = settings.SIGN_IN_RATE_WINDOW_SECONDS
    clock.now = (int(clock.now // window) + 1) * window  # the start of a window
    ask(client, owner.email)
    for _ in range(5):
        assert client.post(CODE, {"code": "000001"}).status_code == 400
    clock.now += window - 60
    response = client.post(CODE, {"code": "000001"})  # locked, and a try late in the window
    assert response.status_code == 429
    # It says when the lock ends, which trying again does not put off.
    assert "refused for the next 1 minute." in response.content.decode()
    clock.now += 61  # the next window
    settings.SIGN_IN_REQUESTS_PER_EMAIL = 100
    ask(client, owner.email)
    assert client.post(CODE, {"code": code_in(mail.outbox[-1])}).status_code == 302
    assert signed_in_user_id(client) == str(owner.pk)


def test_five_wrong_tries_void_a_code_across_the_end_of_the_rate_window(client, owner, clock, settings):
    # The address's count starts afresh with each window: a code sent a minute before its end took
    # five wrong tries, then five more a minute later, and still signed in.
    window = settings.SIGN_IN_RATE_WINDOW_SECONDS
    clock.now = (int(clock.now // window) + 1) * window - 60
    ask(client, owner.email)
    good = code_in(mail.outbox[0])
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(5):
        assert client.post(CODE, {"code": wrong}).status_code == 400
    clock.now += 61  # the next window, the code still within its 5 minutes

    response = client.post(CODE, {"code": good})

    assert response.status_code == 400 and "not right, or it has expired" in response.content.decode()
    assert signed_in_user_id(client) is None
    assert Client().post(link_path(mail.outbox[0])).status_code == 302  # the link still works


def test_a_new_code_does_not_reset_the_wrong_code_count(client, owner):
    ask(client, owner.email)
    for _ in range(5):
        assert client.post(CODE, {"code": "not-a-code"[:6]}).status_code == 400
    ask(client, owner.email)
    locked_email = mail.outbox[-1]
    # While codes are locked the email holds the link only, not a code that would be refused.
    assert "code" not in locked_email.subject and "this email has no code" in locked_email.body
    assert not re.search(r"\b\d{6}\b", locked_email.body)
    response = client.post(CODE, {"code": "123456"})
    assert response.status_code == 429
    assert signed_in_user_id(client) is None
    assert Client().get(link_path(locked_email)).status_code in (200, 302)  # the link still works


def test_sign_in_emails_are_limited_per_address(client, owner, settings):
    settings.SIGN_IN_REQUESTS_PER_EMAIL = 3
    for _ in range(3):
        assert ask(client, owner.email).status_code == 302
    response = ask(Client(REMOTE_ADDR="10.9.9.9"), owner.email)
    assert response.status_code == 429
    assert len(mail.outbox) == 3


def test_sign_in_emails_are_limited_per_ip(client, settings, db):
    settings.SIGN_IN_REQUESTS_PER_IP = 3
    for n in range(3):
        assert ask(client, f"person{n}@example.com").status_code == 302
    assert ask(client, "person9@example.com").status_code == 429
    assert [message.to for message in mail.outbox] == [[f"person{n}@example.com"] for n in range(3)]
    assert ask(Client(REMOTE_ADDR="10.1.2.3"), "person9@example.com").status_code == 302
    assert len(mail.outbox) == 4 and mail.outbox[-1].to == ["person9@example.com"]


def test_a_refused_sign_in_request_stores_no_session(settings, db):
    # The browser's marker was saved before the limits were checked: every request refused at the
    # limit still added a session row, kept two weeks, and a client sending them without cookies
    # grew the table without bound.
    settings.SIGN_IN_REQUESTS_PER_IP = 1
    assert ask(Client(), "first@example.com").status_code == 302
    stored = Session.objects.count()
    for n in range(5):
        assert ask(Client(), f"again{n}@example.com").status_code == 429
    assert ask(Client(), "not an address").status_code == 400
    assert Session.objects.count() == stored


def test_a_client_past_its_own_limit_does_not_use_up_another_address_s_emails(owner, settings):
    # Counted per address before per IP, a client refused for its own address kept counting against
    # the address it named: five such requests and its owner got no email in the window, none sent.
    settings.SIGN_IN_REQUESTS_PER_IP = 2
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    for n in range(2):
        assert ask(attacker, f"throwaway{n}@example.com").status_code == 302
    for _ in range(settings.SIGN_IN_REQUESTS_PER_EMAIL + 1):
        assert ask(attacker, owner.email).status_code == 429
    assert owner.email not in [address for message in mail.outbox for address in message.to]

    assert ask(Client(REMOTE_ADDR="198.51.100.1"), owner.email).status_code == 302
    assert mail.outbox[-1].to == [owner.email]


def test_sign_in_emails_are_limited_per_ipv6_64_not_per_address_within_it(settings, db):
    # An IPv6 client holds a whole /64: another address of it is the same client.
    settings.SIGN_IN_REQUESTS_PER_IP = 3
    for n in range(3):
        assert ask(Client(REMOTE_ADDR=f"2001:db8:5:6::{n + 1}"), f"person{n}@example.com").status_code == 302
    assert ask(Client(REMOTE_ADDR="2001:db8:5:6:ffff::9"), "person9@example.com").status_code == 429
    assert len(mail.outbox) == 3
    assert ask(Client(REMOTE_ADDR="2001:db8:5:7::1"), "person9@example.com").status_code == 302
    assert len(mail.outbox) == 4 and mail.outbox[-1].to == ["person9@example.com"]


def test_code_tries_are_limited_per_ip(owner, settings):
    settings.SIGN_IN_CODE_TRIES_PER_IP = 3
    browsers = [Client() for _ in range(4)]
    for n, browser in enumerate(browsers):
        ask(browser, f"someone{n}@example.com")
    statuses = [browser.post(CODE, {"code": "123456"}).status_code for browser in browsers]
    assert statuses == [400, 400, 400, 429]


def test_answer_is_the_same_for_known_and_unknown_addresses(client, owner, django_user_model):
    known_browser, unknown_browser = Client(), Client()
    known = ask(known_browser, owner.email)
    unknown = ask(unknown_browser, "nobody@acme.example")

    assert (known.status_code, known["Location"]) == (unknown.status_code, unknown["Location"])
    known_page = known_browser.get(CODE).content.decode().replace(owner.email, "ADDRESS")
    unknown_page = unknown_browser.get(CODE).content.decode().replace("nobody@acme.example", "ADDRESS")
    strip_csrf = re.compile(r'name="csrfmiddlewaretoken" value="[^"]+"')
    assert strip_csrf.sub("", known_page) == strip_csrf.sub("", unknown_page)
    # One email each; the unknown address learns there is no account and gets nothing to sign in with.
    assert [m.to for m in mail.outbox] == [[owner.email], ["nobody@acme.example"]]
    assert "/accounts/sign-in/link/" not in mail.outbox[1].body
    assert "no Hookline account" in mail.outbox[1].body
    # Guessing a code behaves the same, and no account is created.
    assert unknown_browser.post(CODE, {"code": "123456"}).status_code == 400
    assert not django_user_model.objects.filter(email="nobody@acme.example").exists()


def test_an_invited_address_without_an_account_signs_in_and_joins(client, organization, owner):
    from organizations.team import invitation_create

    invitation_create(organization=organization, actor=owner, email="New.Person@Acme.example", role="admin")
    mail.outbox.clear()

    ask(client, "new.person@acme.example")
    response = client.post(CODE, {"code": code_in(mail.outbox[0])})

    assert response.status_code == 302
    assert not Membership.objects.filter(user__email="new.person@acme.example").exists()  # joined by choice
    invitation = Invitation.objects.get()
    assert "Join Acme" in client.get(reverse("home")).content.decode()
    client.post(reverse("invitation_join", args=[invitation.pk]))
    membership = Membership.objects.get(user__email="new.person@acme.example", organization=organization)
    assert membership.role == Membership.Role.ADMIN
    assert Invitation.objects.get().accepted_by == membership.user


def test_next_must_stay_on_this_site(client, owner):
    for unsafe in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        mail.outbox.clear()
        browser = Client()
        ask(browser, owner.email, next_url=unsafe)
        response = browser.get(link_path(mail.outbox[0]))
        assert response.status_code == 302
        assert response["Location"] == reverse("home"), unsafe


def test_platform_admins_cannot_sign_in_without_their_password(client, django_user_model):
    django_user_model.objects.create_superuser("root@hookline.example", "correct horse battery")
    response = ask(client, "root@hookline.example")
    assert response.status_code == 302
    assert "/accounts/sign-in/link/" not in mail.outbox[0].body
    assert "/admin/login/" in mail.outbox[0].body


def test_sign_in_form_needs_a_csrf_token(owner):
    strict = Client(enforce_csrf_checks=True)
    assert ask(strict, owner.email).status_code == 403
    assert mail.outbox == []


def test_signing_in_and_out_is_audited_with_the_ip(owner, organization):
    browser = Client(REMOTE_ADDR="192.0.2.7")
    ask(browser, owner.email)
    browser.get(link_path(mail.outbox[0]))
    browser.post(reverse("accounts:sign_out"))

    entries = AuditLog.objects.filter(actor_user=owner, organization=organization)
    assert {entry.action for entry in entries} == {"user.signed_in", "user.signed_out"}
    assert {entry.ip_address for entry in entries} == {"192.0.2.7"}
    assert signed_in_user_id(browser) is None


def test_sign_out_everywhere_ends_every_session(owner, organization):
    laptop, phone = Client(), Client()
    laptop.force_login(owner)
    phone.force_login(owner)
    assert phone.get(TEAM).status_code == 200

    response = laptop.post(reverse("accounts:sign_out_everywhere"))

    assert response.status_code == 302
    assert laptop.get(TEAM).status_code == 302
    assert phone.get(TEAM)["Location"].startswith(SIGN_IN)
    assert AuditLog.objects.filter(action="user.signed_out_everywhere", actor_user=owner).exists()
    # Signing in again afterwards works as usual.
    ask(phone, owner.email)
    assert phone.get(link_path(mail.outbox[0]))["Location"] == TEAM
    assert phone.get(TEAM).status_code == 200


def test_sign_out_page_offers_both_ways_out(client, owner):
    assert client.get(reverse("accounts:sign_out")).status_code == 302  # anonymous: to sign-in
    client.force_login(owner)
    html = client.get(reverse("accounts:sign_out")).content.decode()
    assert reverse("accounts:sign_out_everywhere") in html
    assert "voids the sign-in links and codes already emailed" in html


def test_the_flow_works_on_the_embedded_file_cache(client, owner, settings, tmp_path):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path)}
    }
    ask(client, owner.email)
    code = code_in(mail.outbox[0])
    wrong = "000000" if code != "000000" else "111111"
    assert client.post(CODE, {"code": wrong}).status_code == 400
    assert client.post(CODE, {"code": code}).status_code == 302
    assert signed_in_user_id(client) == str(owner.pk)
    assert Client().get(link_path(mail.outbox[0])).status_code == 400  # the code used up the link too


def test_a_forwarded_address_that_is_not_an_ip_is_ignored(owner, settings):
    settings.TRUST_X_FORWARDED_FOR = True
    browser = Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9:4711")
    assert ask(browser, owner.email).status_code == 302
    browser.post(CODE, {"code": code_in(mail.outbox[-1])})
    assert signed_in_user_id(browser) == str(owner.pk)


# --- Redis down: no sign-in without its rate limits, and a clear answer rather than a 500 ----------


def unavailable(response) -> bool:
    return (
        response.status_code == 503
        and response["Retry-After"] == "60"
        and "Sign-in is temporarily unavailable" in response.content.decode()
        and "try again in a minute" in response.content.decode()
    )


def test_asking_for_a_sign_in_email_while_the_cache_is_down_says_sign_in_is_unavailable(client, owner, settings):
    settings.CACHES = REDIS_DOWN_CACHES
    response = ask(client, owner.email)
    assert unavailable(response)
    assert owner.email in response.content.decode()  # the form keeps the address for the next try
    assert mail.outbox == []  # no email without its rate limits


def test_a_code_or_link_used_while_the_cache_is_down_says_sign_in_is_unavailable(client, owner, settings):
    ask(client, owner.email)
    message = mail.outbox[0]
    settings.CACHES = REDIS_DOWN_CACHES

    assert unavailable(client.post(CODE, {"code": code_in(message)}))
    assert unavailable(client.get(link_path(message)))
    assert unavailable(Client().post(link_path(message)))
    assert signed_in_user_id(client) is None


@pytest.mark.parametrize("way_out", ["accounts:sign_out", "accounts:sign_out_everywhere"])
def test_signing_out_clears_what_the_browser_kept_of_the_dashboard_but_not_its_cookies(client, owner, way_out):
    client.force_login(owner)
    response = client.post(reverse(way_out))
    assert response.status_code == 302
    directives = {part.strip() for part in response["Clear-Site-Data"].split(",")}
    assert directives == {'"cache"', '"storage"'}


def test_tenant_pages_are_never_stored_by_the_browser_or_a_cache(client, owner, organization):
    client.force_login(owner)
    for path in ("/o/acme/", "/o/acme/events/", "/o/acme/sources/", "/o/acme/audit/", TEAM):
        cache_control = {part.strip() for part in client.get(path)["Cache-Control"].split(",")}
        assert {"no-store", "private"} <= cache_control, path


def test_a_session_signed_in_by_link_does_not_open_the_admin_once_its_account_is_made_staff(client, owner):
    # The passwordless sign-in refuses staff; a session it opened before the account became staff
    # went on, and opened the admin with no password ever typed.
    ask(client, owner.email)
    client.get(link_path(mail.outbox[0]))
    assert signed_in_user_id(client) == str(owner.pk)
    owner.full_name = "Owner"
    owner.save()
    assert client.get(TEAM).status_code == 200  # other changes to the account leave its sessions alone

    owner.is_staff = owner.is_superuser = True
    owner.save()

    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert signed_in_user_id(client) is None


# --- A sign-in or sign-out everywhere voids every link and code sent before it ----------------------


def replaced_link_page(response) -> bool:
    html = response.content.decode()
    return (
        response.status_code == 400
        and "replaced by a later sign-in or sign-out" in html
        and f'href="{SIGN_IN}"' in html  # offers a new one
    )


def test_a_link_sent_before_another_link_was_used_no_longer_signs_in(client, owner):
    ask(client, owner.email)
    ask(client, owner.email)
    link_a, link_b = (link_path(message) for message in mail.outbox)
    assert Client().post(link_b).status_code == 302  # B signs in, in another browser

    # A no longer works anywhere: the browser that asked for it signs in at once without the change.
    response = client.get(link_a)
    assert replaced_link_page(response)
    assert owner.email not in response.content.decode()
    assert signed_in_user_id(client) is None
    elsewhere = Client()
    assert replaced_link_page(elsewhere.get(link_a))  # no "Sign in as" button to press
    assert replaced_link_page(elsewhere.post(link_a))
    assert signed_in_user_id(elsewhere) is None

    # A link sent after that sign-in works.
    ask(client, owner.email)
    response = client.get(link_path(mail.outbox[-1]))
    assert response.status_code == 302 and response["Location"] == TEAM
    assert signed_in_user_id(client) == str(owner.pk)


def test_a_code_sent_before_a_link_was_used_no_longer_signs_in(client, owner):
    ask(client, owner.email)  # its link, used below, does not void the code of the next email
    ask(client, owner.email)
    first, second = mail.outbox
    assert Client().post(link_path(first)).status_code == 302

    response = client.post(CODE, {"code": code_in(second)})

    assert response.status_code == 400
    assert "This code was replaced by a later sign-in or sign-out" in response.content.decode()
    assert signed_in_user_id(client) is None
    assert client.post(CODE, {"code": code_in(second)}).status_code == 400  # and stays refused
    assert signed_in_user_id(client) is None


def test_a_link_sent_before_a_code_was_used_no_longer_signs_in(client, owner):
    ask(client, owner.email)
    ask(client, owner.email)
    first, second = mail.outbox
    assert client.post(CODE, {"code": code_in(second)}).status_code == 302

    browser = Client()
    assert replaced_link_page(browser.post(link_path(first)))
    assert signed_in_user_id(browser) is None


def test_sign_out_everywhere_voids_the_links_sent_before_it(owner):
    laptop, phone = Client(), Client()
    laptop.force_login(owner)
    ask(phone, owner.email)
    earlier = mail.outbox[-1]

    laptop.post(reverse("accounts:sign_out_everywhere"))

    assert replaced_link_page(phone.get(link_path(earlier)))
    assert signed_in_user_id(phone) is None
    assert phone.post(CODE, {"code": code_in(earlier)}).status_code == 400
    assert signed_in_user_id(phone) is None
    ask(phone, owner.email)  # one sent after it works
    assert phone.get(link_path(mail.outbox[-1]))["Location"] == TEAM
    assert signed_in_user_id(phone) == str(owner.pk)


def test_a_wrong_code_says_nothing_of_the_account_s_later_sign_ins(client, owner):
    # Only whoever holds the right code learns that it was replaced: a guesser gets the usual answer.
    ask(client, owner.email)
    ask(client, owner.email)
    first, second = mail.outbox
    assert Client().post(link_path(first)).status_code == 302
    wrong = "000000" if code_in(second) != "000000" else "111111"

    response = client.post(CODE, {"code": wrong})

    assert response.status_code == 400
    assert "not right, or it has expired" in response.content.decode()
    assert "replaced" not in response.content.decode()


def test_two_links_to_an_invited_address_without_an_account_sign_in_once(client, organization, owner):
    # Both were sent before the account existed; the first one used creates it and signs in, and
    # from then on the other was sent before a sign-in like any other.
    from organizations.team import invitation_create

    invitation_create(organization=organization, actor=owner, email="new@acme.example", role="member")
    mail.outbox.clear()
    ask(client, "new@acme.example")
    ask(client, "new@acme.example")
    first, second = mail.outbox

    browser = Client()
    assert browser.post(link_path(second)).status_code == 302
    assert signed_in_user_id(browser) is not None
    assert replaced_link_page(Client().post(link_path(first)))


def test_a_link_to_an_invited_address_works_while_its_new_account_has_not_signed_in(client, organization, owner):
    from organizations.team import invitation_create

    invitation_create(organization=organization, actor=owner, email="new@acme.example", role="member")
    ask(client, "new@acme.example")
    link = link_path(mail.outbox[-1])
    # The account appears (made by a platform admin, say) but nobody has signed in to it yet.
    created = type(owner).objects.create_user("new@acme.example")

    response = client.get(link)

    assert response.status_code == 302 and signed_in_user_id(client) == str(created.pk)
