"""Passwordless sign-in: a magic link and a 6-digit code, both single use, kept hashed in the cache.

A sign-in request stores two cache records with their own TTL:

- the link, under the first hex digits of the token's SHA-256, holding the whole digest (compared
  in constant time), the address, where to go next and a hash of the asking browser's nonce;
- the code, under a hash of the address (one live code per address), holding an HMAC of the code.

The records carry their expiry time too, read through ``clock`` so that tests can travel in time,
and because the embedded file cache only drops expired entries lazily. Redeeming one deletes both:
a delete that reports the key gone is what makes a token single use when two requests race.

Both records also hold the account's state when they were sent (``_account_state``: its last sign-in
and its sign-out-everywhere count, as Django's password-reset tokens hash ``last_login``). Any sign-in
or *sign out everywhere* changes it, which voids every link and code sent before: a sign-in by link or
code claims it with a conditional UPDATE, so of two links sent before it only the first signs in.

The answer and the work are the same for every address: the records are stored and one email is
sent whether or not the address has an account. Only the email's content differs (a link and a
code, or a note that there is no account here), and it is read only by the mailbox's owner.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

from .emails import send_templated_email
from .models import Invitation, canonical_email
from .signals import sessions_revoked

logger = logging.getLogger(__name__)

# Seconds since the epoch; tests replace it to move time forward without sleeping.
clock = time.time

LINK_KEY = "signin:link:{}"
CODE_KEY = "signin:code:{}"
CODE_TRIES_KEY = "signin:code-tries:{}"
CODE_WRONG_KEY = "signin:code-wrong:{}"  # tries at one code, by its sign-in request's id
RATE_KEY = "signin:rate:{}:{}:{}"  # scope, subject, window number
PASSWORD_KEY = "signin:password:{}:{}:{}"  # "address" or "network", subject, window number
CODE_LENGTH = 6


class RateLimited(Exception):
    """Too many sign-in emails or code tries from this address or network; try again later."""


class CodeLocked(Exception):
    """Too many wrong codes for the address: its codes are refused for ``seconds_left``, until the
    current rate window ends, however often one tries meanwhile."""

    def __init__(self, seconds_left: float):
        super().__init__(seconds_left)
        self.seconds_left = seconds_left


class SignInReplaced(Exception):
    """A right link or code, sent before the account last signed in or signed out everywhere: void.

    Raised only to whoever holds the link or typed the right code, so it tells nothing to a stranger.
    """


class SignInUnavailable(Exception):
    """The cache is down: no link, code or rate-limit counter can be read or written, so no sign-in.

    Signing in without the counters would lift the limits on emails and code guesses; refusing
    is safe, and the cache (Redis) is usually back within a minute.
    """


def _needs_the_cache(function, *, consequence="sign-in refused"):
    """Turn the cache being unreachable into SignInUnavailable (database or email errors pass through)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ConnectionInterrupted, RedisError) as exc:
            logger.warning("%s: the cache is unavailable: %s", consequence, exc)
            raise SignInUnavailable from exc

    return wrapper


# The admin does not refuse without the cache: it counts failures from the audit log instead (webhooks.admin.login).
_admin_needs_the_cache = functools.partial(
    _needs_the_cache, consequence="admin password limits counted from the audit log"
)


@dataclass(frozen=True)
class PendingLink:
    email: str
    next_url: str
    same_browser: bool


@dataclass(frozen=True)
class SignIn:
    user: object
    next_url: str


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _code_mac(email: str, code: str, key: str | None = None) -> str:
    # Keyed, because a million possible codes make a plain hash trivial to reverse from a cache dump.
    key = settings.SECRET_KEY if key is None else key
    return hmac.new(key.encode(), f"sign-in-code:{email}:{code}".encode(), hashlib.sha256).hexdigest()


def _code_matches(mac: str, email: str, code: str) -> bool:
    """Whether ``code`` is the one ``mac`` was made for, under SECRET_KEY or one of its fallbacks: a
    code emailed just before SECRET_KEY changed still signs in, as the link sent with it does."""
    matches = False
    for key in [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]:
        matches |= hmac.compare_digest(mac, _code_mac(email, code, key))
    return matches


def _link_key(token_digest: str) -> str:
    return LINK_KEY.format(token_digest[:24])


def _within_limit(scope: str, subject: str, limit: int) -> bool:
    """Count one hit in the current fixed window; False once the window holds more than ``limit``."""
    window = settings.SIGN_IN_RATE_WINDOW_SECONDS
    key = RATE_KEY.format(scope, subject, int(clock() // window))
    return _count(key, ttl=window) <= limit


def _code_tries_key(email_digest: str) -> str:
    # In the current fixed window, as the other limits: a key of its own that every try refreshed
    # kept an address locked for as long as someone kept trying, the right code included.
    window = settings.SIGN_IN_RATE_WINDOW_SECONDS
    return CODE_TRIES_KEY.format(f"{email_digest}:{int(clock() // window)}")


# One IPv6 client is handed a whole /64 (SLAAC, privacy addresses): counted by address, a limit
# "per IP" would be stepped around by changing the last 64 bits.
IPV6_CLIENT_PREFIX = 64


def client_network(ip_address: str | None) -> str:
    """What the per-IP limits count: an IPv4 address, or the /64 an IPv6 address is in."""
    if not ip_address:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip_address)
    except ValueError:
        return "unknown"
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:  # an IPv4 client: not one /64 shared by all of them
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))


def _count(key: str, *, ttl: int) -> int:
    if cache.add(key, 1, timeout=ttl):
        return 1
    try:
        hits = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=ttl)
        return 1
    # The file cache's incr rewrites the entry with the default timeout; put the intended one back.
    cache.touch(key, ttl)
    return hits


def sign_in_link_url(token: str) -> str:
    return settings.PUBLIC_BASE_URL + reverse("accounts:sign_in_link", args=[token])


@_needs_the_cache
def sign_in_request(*, email: str, next_url: str, browser_nonce: str, ip_address: str | None) -> str:
    """Email a sign-in link and code (or, for an address that cannot sign in, a note saying so).

    Returns the canonical address. Raises RateLimited past the per-address or per-IP limit, and
    SignInUnavailable when the cache is down.
    Counts, cache writes and the one email are the same for known and unknown addresses.
    """
    email = canonical_email(email)
    email_digest = _sha256(email)
    # The network first: a request it refuses must not count against the address. Counted the other
    # way round, one client past its own limit went on using up any address's emails, and so kept
    # its owner from getting one, without a single email sent to them.
    if not _within_limit("ip", client_network(ip_address), settings.SIGN_IN_REQUESTS_PER_IP):
        raise RateLimited
    if not _within_limit("email", email_digest, settings.SIGN_IN_REQUESTS_PER_EMAIL):
        raise RateLimited

    account = _account(email)
    state = _account_state(account)
    token = secrets.token_urlsafe(32)
    token_digest = _sha256(token)
    code = f"{secrets.randbelow(10**CODE_LENGTH):0{CODE_LENGTH}d}"
    request_id = secrets.token_hex(8)
    now = clock()
    link_ttl, code_ttl = settings.SIGN_IN_LINK_TTL_SECONDS, settings.SIGN_IN_CODE_TTL_SECONDS
    cache.set(
        _link_key(token_digest),
        {
            "digest": token_digest,
            "email": email,
            "next": next_url,
            "browser": _sha256(browser_nonce),
            "request": request_id,
            "account": state,
            "expires_at": now + link_ttl,
        },
        timeout=link_ttl,
    )
    # Wrong codes are counted per address over the rate window, not per code: asking for new
    # codes must not buy an attacker more guesses. While they are locked the email holds the
    # link only, rather than a code that would be refused.
    codes_locked = (cache.get(_code_tries_key(email_digest)) or 0) >= settings.SIGN_IN_CODE_MAX_ATTEMPTS
    if codes_locked:
        cache.delete(CODE_KEY.format(email_digest))
    else:
        cache.set(
            CODE_KEY.format(email_digest),
            {
                "mac": _code_mac(email, code),
                "next": next_url,
                "request": request_id,
                "link_key": _link_key(token_digest),
                "account": state,
                "expires_at": now + code_ttl,
            },
            timeout=code_ttl,
        )

    audience = _audience(email, account)
    if audience == "sign_in":
        send_templated_email(
            to=email,
            subject="Your Hookline sign-in link" if codes_locked else f"Your Hookline sign-in code: {code}",
            template="sign_in",
            context={
                "link": sign_in_link_url(token),
                "code": None if codes_locked else code,
                "link_minutes": link_ttl // 60,
                "code_minutes": code_ttl // 60,
            },
        )
    else:
        send_templated_email(
            to=email,
            subject="Signing in to Hookline",
            template="sign_in_unavailable",
            context={"reason": audience, "admin_url": settings.PUBLIC_BASE_URL + reverse("admin:login")},
        )
    return email


def _account(email: str):
    return get_user_model().objects.filter(email=email).first()


def _account_state(user) -> dict:
    """What a link or code is bound to: the account's last sign-in and its sign-out-everywhere count.

    An address without an account has the state of an account that never signed in, so that a link
    sent before an invited address's account was created (by another link, say) still works until
    that account first signs in.
    """
    if user is None:
        return {"last_login": None, "session_generation": 0}
    return {"last_login": user.last_login, "session_generation": user.session_generation}


def _audience(email: str, user) -> str:
    """ "sign_in", "staff" (platform admins use their password) or "no_account"; always the same two
    queries, with the one that found ``user``."""
    invited = Invitation.objects.pending().filter(email=email).exists()
    if user is not None:
        if not user.is_active:
            return "no_account"
        return "staff" if user.is_staff else "sign_in"
    return "sign_in" if invited else "no_account"


def _user_for_sign_in(email: str):
    """The user who may sign in with a proven address: an active non-staff user, or a new one if invited."""
    user_model = get_user_model()
    user = user_model.objects.filter(email=email).first()
    if user is not None:
        return user if user.is_active and not user.is_staff else None
    if not Invitation.objects.pending().filter(email=email).exists():
        return None
    try:
        with transaction.atomic():
            return user_model.objects.create_user(email)
    except IntegrityError:  # created by a concurrent sign-in
        return user_model.objects.get(email=email)


def _sign_in_claim(*, email: str, state: dict, next_url: str) -> SignIn | None:
    """Sign in with a link or code sent when the account was in ``state``, if it still is.

    The conditional UPDATE of ``last_login`` is the claim: a sign-in by another link or code, or a
    sign-out everywhere, since the email was sent leaves it matching nothing (SignInReplaced), and
    of two such requests racing only one matches. ``login()`` then stamps ``last_login`` again.
    """
    user = _user_for_sign_in(email)
    if user is None:
        return None
    last_login = {"last_login": state["last_login"]} if state["last_login"] else {"last_login__isnull": True}
    now = timezone.now()
    claimed = (
        get_user_model()
        .objects.filter(pk=user.pk, session_generation=state["session_generation"], **last_login)
        .update(last_login=now)
    )
    if not claimed:
        raise SignInReplaced
    user.last_login = now
    return SignIn(user=user, next_url=next_url)


def _live_link(token: str) -> tuple[str, dict] | None:
    token_digest = _sha256(token)
    key = _link_key(token_digest)
    record = cache.get(key)
    if not record or not hmac.compare_digest(record["digest"], token_digest):
        return None
    # A record written before links were bound to the account's state: not known to be still valid.
    if clock() >= record["expires_at"] or "account" not in record:
        return None
    return key, record


def _still_valid_for(email: str, state: dict) -> bool:
    """False if the account has signed in or signed out everywhere since ``state`` was read."""
    return _account_state(_account(email)) == state


@_needs_the_cache
def sign_in_link_inspect(*, token: str, browser_nonce: str | None) -> PendingLink | None:
    """What a still-valid link is for, without using it up; None if it is unknown, used or expired.

    Raises SignInReplaced if the account signed in or signed out everywhere since it was sent.
    """
    found = _live_link(token)
    if found is None:
        return None
    _, record = found
    if not _still_valid_for(record["email"], record["account"]):
        raise SignInReplaced
    same_browser = bool(browser_nonce) and hmac.compare_digest(record["browser"], _sha256(browser_nonce))
    return PendingLink(email=record["email"], next_url=record["next"], same_browser=same_browser)


@_needs_the_cache
def sign_in_link_redeem(*, token: str) -> SignIn | None:
    """Use up a link: the user to sign in, or None (unknown, used, expired, or an address that cannot sign in).

    Raises SignInReplaced if the account signed in or signed out everywhere since it was sent.
    """
    found = _live_link(token)
    if found is None:
        return None
    key, record = found
    if not cache.delete(key):
        return None  # a concurrent request used it first
    email_digest = _sha256(record["email"])
    code_record = cache.get(CODE_KEY.format(email_digest))
    if code_record and code_record["request"] == record["request"]:
        cache.delete(CODE_KEY.format(email_digest))
    return _sign_in_claim(email=record["email"], state=record["account"], next_url=record["next"])


@_needs_the_cache
def sign_in_code_redeem(*, email: str, code: str, ip_address: str | None) -> SignIn | None:
    """Check a code typed for ``email``: the user to sign in, or None if it is wrong, used or expired.

    Raises RateLimited past the per-IP limit and CodeLocked after too many wrong codes for the address;
    SignInReplaced for the right code sent before the account last signed in or signed out everywhere.
    """
    email = canonical_email(email)
    email_digest = _sha256(email)
    if not _within_limit("code-ip", client_network(ip_address), settings.SIGN_IN_CODE_TRIES_PER_IP):
        raise RateLimited
    code_key = CODE_KEY.format(email_digest)
    tries = _count(_code_tries_key(email_digest), ttl=settings.SIGN_IN_RATE_WINDOW_SECONDS)
    if tries > settings.SIGN_IN_CODE_MAX_ATTEMPTS:
        cache.delete(code_key)
        window, now = settings.SIGN_IN_RATE_WINDOW_SECONDS, clock()
        raise CodeLocked(seconds_left=(int(now // window) + 1) * window - now)
    record = cache.get(code_key)
    typed = "".join(ch for ch in code if ch.isdigit())
    if not record or clock() >= record["expires_at"] or "account" not in record or len(typed) != CODE_LENGTH:
        return None
    # Counted per code as well, before the comparison: the address's count starts afresh with each
    # window, so a code sent late in one window took five wrong tries there and five more in the next.
    if _count(CODE_WRONG_KEY.format(record["request"]), ttl=settings.SIGN_IN_CODE_TTL_SECONDS) > (
        settings.SIGN_IN_CODE_MAX_ATTEMPTS
    ):
        cache.delete(code_key)
        return None
    if not _code_matches(record["mac"], email, typed):
        return None
    if not cache.delete(code_key):
        return None  # a concurrent request used it first
    cache.delete(record["link_key"])
    signed_in = _sign_in_claim(email=email, state=record["account"], next_url=record["next"])
    cache.delete(_code_tries_key(email_digest))
    return signed_in


@dataclass(frozen=True)
class PasswordAttempt:
    """The verdict on one admin password attempt, given before the password is checked."""

    # Seconds since the epoch until which passwords are refused for this address or network; None: check it.
    refused_until: float | None
    # The limits ("address", "network") that this very attempt went past: the first refusal of their window.
    newly_locked: tuple[str, ...] = ()


def _password_keys(email: str, ip_address: str | None, device: str | None = None) -> dict[str, str]:
    window_number = int(clock() // settings.SIGN_IN_RATE_WINDOW_SECONDS)
    if device is not None:
        # A browser this address signed in from before: counted on its own (see admin_device_for).
        return {"address": PASSWORD_KEY.format("device", _sha256(device), window_number)}
    return {
        "address": PASSWORD_KEY.format("address", _sha256(canonical_email(email)), window_number),
        "network": PASSWORD_KEY.format("network", client_network(ip_address), window_number),
    }


# A browser that signed in to the admin gets a signed cookie naming its address (OWASP's "device
# cookie"). Its attempts for that address are counted against that browser alone, not against the
# address or the network: whoever knows an admin's address can then lock out new browsers only,
# never one the admin has used, and a stolen cookie still gets SIGN_IN_CODE_MAX_ATTEMPTS a window.
# The cookie is also bound to the account's password and session generation: someone who once knew
# the password could otherwise have collected cookies by signing in again and again, each of them a
# fresh allowance of guesses at the next password. Changing the password or signing out everywhere
# (sessions_revoke_all) makes every browser a stranger again.
ADMIN_DEVICE_COOKIE = "hookline_admin_device"
ADMIN_DEVICE_SALT = "hookline.accounts.admin-device"
ADMIN_DEVICE_MAX_AGE = 365 * 24 * 3600
# Where the admin's sign-in form leaves the known browser's device id on the request, for the audit
# of a refused password (organizations.receivers), which the cache-down count reads back.
ADMIN_DEVICE_ATTRIBUTE = "hookline_admin_device"


def _admin_device_account(user, secret: str | None = None) -> str:
    return salted_hmac(
        ADMIN_DEVICE_SALT, f"{user.password}:{user.session_generation}", secret=secret, algorithm="sha256"
    ).hexdigest()


def admin_device_cookie_value(user) -> str:
    """A new device cookie for a browser that just signed in to the admin as ``user``."""
    return signing.dumps(
        {
            "address": _sha256(canonical_email(user.email)),
            "account": _admin_device_account(user),
            "device": secrets.token_urlsafe(16),
        },
        salt=ADMIN_DEVICE_SALT,
    )


def admin_device_for(cookie: str | None, email: str) -> str | None:
    """The device id of a valid cookie for ``email``, else None (another address, forged, expired, or
    minted before the account's password changed or it signed out everywhere)."""
    if not cookie:
        return None
    try:
        value = signing.loads(cookie, salt=ADMIN_DEVICE_SALT, max_age=ADMIN_DEVICE_MAX_AGE)
    except signing.BadSignature:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("device"), str):
        return None
    email = canonical_email(email)
    if not hmac.compare_digest(str(value.get("address", "")), _sha256(email)):
        return None
    # Only reached with a cookie this address was given: no lookup for a stranger's guesses.
    user = get_user_model().objects.filter(email=email).first()
    if user is None:
        return None
    account = str(value.get("account", ""))
    for secret in [None, *settings.SECRET_KEY_FALLBACKS]:  # like the cookie's signature, and the sessions'
        if hmac.compare_digest(account, _admin_device_account(user, secret)):
            return value["device"]
    return None


def admin_password_limits() -> dict[str, int]:
    """Password attempts allowed per address and per network in one window: the limits on guessing a code."""
    return {"address": settings.SIGN_IN_CODE_MAX_ATTEMPTS, "network": settings.SIGN_IN_CODE_TRIES_PER_IP}


@_admin_needs_the_cache
def admin_password_attempt(*, email: str, ip_address: str | None, device: str | None = None) -> PasswordAttempt:
    """Count a password attempt at the admin for the network and the address; refused past either limit.

    Counted before the password is checked, by atomic increments, so that concurrent guesses cannot all
    slip under a limit; only attempts whose password gets checked stay counted (a refusal counts only
    against the limit that refused it), and an accepted password gives its count back
    (admin_password_accepted). A refusal lasts until the current window ends, whatever is tried
    meanwhile. Raises SignInUnavailable when the cache is down.
    """
    window = settings.SIGN_IN_RATE_WINDOW_SECONDS
    limits = admin_password_limits()
    keys = _password_keys(email, ip_address, device)
    refused_until = (int(clock() // window) + 1) * window
    if device is not None:  # a known browser: its own count only (see ADMIN_DEVICE_COOKIE)
        by_device = _count(keys["address"], ttl=window)
        if by_device > limits["address"]:
            newly_locked = ("device",) if by_device == limits["address"] + 1 else ()
            return PasswordAttempt(refused_until=refused_until, newly_locked=newly_locked)
        return PasswordAttempt(refused_until=None)
    # The network first: a network past its limit must not go on locking addresses out.
    by_network = _count(keys["network"], ttl=window)
    if by_network > limits["network"]:
        newly_locked = ("network",) if by_network == limits["network"] + 1 else ()
        return PasswordAttempt(refused_until=refused_until, newly_locked=newly_locked)
    by_address = _count(keys["address"], ttl=window)
    if by_address > limits["address"]:
        _uncount(keys["network"])
        newly_locked = ("address",) if by_address == limits["address"] + 1 else ()
        return PasswordAttempt(refused_until=refused_until, newly_locked=newly_locked)
    return PasswordAttempt(refused_until=None)


def _uncount(key: str) -> None:
    try:
        cache.decr(key)
    except ValueError:  # the window ended meanwhile
        return
    cache.touch(key, settings.SIGN_IN_RATE_WINDOW_SECONDS)  # as in _count, for the file cache


@_admin_needs_the_cache
def admin_password_accepted(*, email: str, ip_address: str | None, device: str | None = None) -> None:
    """A right password: the address (or the known browser) starts afresh, and the attempt no longer
    counts against the network.

    The network keeps its other failures: colleagues behind one address signing in must not clear
    someone else's guesses.
    """
    keys = _password_keys(email, ip_address, device)
    cache.delete(keys["address"])
    if "network" in keys:
        _uncount(keys["network"])


def sessions_revoke_all(*, user, request=None) -> None:
    """End every session of ``user``, everywhere: each one's stored auth hash stops matching."""
    user_model = get_user_model()
    user_model.objects.filter(pk=user.pk).update(session_generation=F("session_generation") + 1)
    user.refresh_from_db(fields=["session_generation"])
    sessions_revoked.send(sender=user_model, user=user, request=request)
