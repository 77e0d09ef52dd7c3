"""The one module that makes outgoing HTTP requests.

The destination's host is resolved once, every address is checked, and the
connection goes to a checked address (so DNS cannot change between check
and connect). Redirects are never followed.
"""

from __future__ import annotations

import copy
import http.client
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import idna
import urllib3
import urllib3.connection
from django.conf import settings


class DestinationNotAllowed(Exception):
    """The URL points somewhere Hookline must not send to (message is safe to show)."""


class LookupsBusy(DestinationNotAllowed):
    """Its host was not looked up, with nothing known against it: earlier lookups (its host's, its
    organization's, the process's) still wait on their DNS, or no thread was to be had. The same URL
    may pass a few seconds later."""


class PlatformLookupsBusy(LookupsBusy):
    """Refused by a bound of the platform's own that says nothing about this host: its organization's
    lookups in progress (other destinations' names whose DNS does not answer), the process's, or no
    thread to look it up on. Nothing was sent: a delivery refused so is put back, not charged. Its
    host's own few lookups in progress (its DNS not answering) are the plain LookupsBusy: the receiver's."""


@dataclass(frozen=True)
class OutboundResponse:
    status: int | None
    body: str
    duration_ms: int
    error: str = ""
    retry_after: float | None = None  # seconds the receiver asked us to wait
    # False when the answer went on past the DELIVERY_RESPONSE_BODY_MAX_BYTES kept in ``body`` (or past
    # the attempt's time): the attempt then says it keeps only the answer's start.
    body_complete: bool = True
    location: str | None = None  # a redirect's Location header, as sent: never followed, only named
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names; kept only by post_to_hookline
    # True when nothing was sent because a bound of the platform's own refused it (PlatformLookupsBusy):
    # not the receiver's failure, so not an attempt of the delivery (services.delivery puts it back).
    platform_limit: bool = False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit() alone takes "²", which float() refuses
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a year datetime cannot hold
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - (now if now is not None else time.time()))


# Connection pools keyed by the checked address, so keep-alive connections are
# reused without ever connecting anywhere but the address that passed the check.
_pools: dict[tuple, urllib3.HTTPConnectionPool] = {}
_pools_lock = threading.Lock()


def _pool_maxsize() -> int:
    # As many kept-alive connections per address as a dispatcher has sending threads: with fewer,
    # a busy destination's extra connections are closed after each send (a warning each time),
    # and every later send to it pays a new TCP and TLS handshake. A pool only keeps connections
    # it opened, so an address sent to one at a time still holds one.
    return max(1, settings.DELIVERY_THREADS)


# An attempt must end at its deadline whatever the receiver does: urllib3's timeouts apply to
# each socket operation, so a receiver sending one byte at a time (in its headers, or in a
# compressed body that never decodes) could hold a sending thread for hours. Each attempt is
# watched by one thread per process, which shuts an attempt's socket down a little after its
# deadline; the connection classes below tell the watch which socket that is.
CUT_GRACE_SECONDS = 1.0
WATCH_INTERVAL_SECONDS = 0.25
_attempt = threading.local()


class _Watchdog:
    """The watch over one attempt (a context manager, on the sending thread)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.sock = None
        self.fired = False
        # Whether the request began to be written on the current address's connection: until then
        # (connecting, and the TLS handshake) nothing of it has gone out. Reset for each address.
        self.request_started = False

    def __enter__(self):
        _attempt.watchdog = self
        _watched.add(self)
        return self

    def __exit__(self, *exc_info):
        _watched.discard(self)
        _attempt.watchdog = None

    def _cut(self):
        self.fired = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


class _WatchedAttempts:
    """The attempts in progress in this process, and the one thread that cuts them at their deadline
    (one thread for all: starting a timer thread per attempt costs more than the attempt's own work)."""

    def __init__(self):
        self._attempts: set[_Watchdog] = set()
        self._lock = threading.Lock()
        self._pid: int | None = None

    def add(self, watchdog: _Watchdog) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked worker process: start its own thread
                self._attempts = set()
                # Marked started only once it is: a start that failed (no thread to be had) is tried
                # again by the next attempt, or no attempt of this process would be cut at its deadline.
                threading.Thread(target=self._run, name="hookline-attempt-watch", daemon=True).start()
                self._pid = os.getpid()
            self._attempts.add(watchdog)

    def discard(self, watchdog: _Watchdog) -> None:
        with self._lock:
            self._attempts.discard(watchdog)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_SECONDS)
            now = time.monotonic()
            with self._lock:
                late = [watchdog for watchdog in self._attempts if watchdog.deadline <= now]
            for watchdog in late:
                watchdog._cut()


_watched = _WatchedAttempts()


class _FinalResponse(http.client.HTTPResponse):
    """http.client's response, passing over every interim (1xx) answer to the final one.

    http.client passes over "100 Continue" only: any other 1xx (102 Processing, 103 Early Hints)
    was taken for the answer, so the attempt failed on a receiver that went on to answer 200
    (RFC 9110 15.2: a client must parse the 1xx answers it did not expect). 101 is left as the
    answer: it ends HTTP on the connection, and ``_send`` reports it as a failure.
    """

    def _read_status(self):
        while True:
            version, status, reason = super()._read_status()
            if status in (http.client.CONTINUE, http.client.SWITCHING_PROTOCOLS) or not 100 <= status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers, bounded as any are


class _Watched:
    """Mixin for urllib3's connection classes: report the socket to this thread's watchdog."""

    response_class = _FinalResponse

    def _report_socket(self):
        watchdog = getattr(_attempt, "watchdog", None)
        if watchdog is not None and self.sock is not None:
            watchdog.sock = self.sock
            if watchdog.fired:  # the deadline passed while connecting
                watchdog._cut()

    def connect(self):
        super().connect()
        self._report_socket()

    def request(self, *args, **kwargs):
        watchdog = getattr(_attempt, "watchdog", None)
        if watchdog is not None:
            watchdog.request_started = True
        self._report_socket()  # a kept-alive connection: connect() is not called again
        return super().request(*args, **kwargs)


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


# urllib3 logs the URL of a request whose answer has headers it cannot parse (a warning, with a
# traceback and the rest of the answer's headers), and every request's URL when debugging: a
# destination's path and query, which often are its credential (a token in the path, ?key=…), and,
# in the warning, up to megabytes of what the receiver chose to answer. Whoever runs the receiver
# decides when that warning is written, so it is written without them: the receiver's scheme,
# address and port, and the names of the defects.
_HEADERS_NOT_PARSED = "Failed to parse headers (url=%s): %s"
_REQUEST_LINE = '%s://%s:%s "%s %s %s" %s %s'


class _DestinationPathsOutOfLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _HEADERS_NOT_PARSED and isinstance(record.args, tuple) and len(record.args) == 2:
            url, error = record.args
            where = urlsplit(str(url))
            # The error keeps only its message: the defects' names, then the unparsed rest of the answer.
            named = str(error).partition(", unparsed data:")[0]
            defects = ", ".join(dict.fromkeys(re.findall(r"\b(\w+Defect)\(", named)))
            record.msg = "a receiver answered with headers that could not be parsed (%s://%s): %s; the answer was read all the same"
            record.args = (where.scheme, where.netloc, defects or type(error).__name__)
            record.exc_info = record.exc_text = None
        elif record.msg == _REQUEST_LINE and isinstance(record.args, tuple) and len(record.args) == 8:
            record.args = (*record.args[:4], "…", *record.args[5:])
        return True


for _logger_name in ("urllib3.connection", "urllib3.connectionpool"):
    logging.getLogger(_logger_name).addFilter(_DestinationPathsOutOfLogs())


def _pool_for(scheme: str, host: str, port: int, address: str) -> urllib3.HTTPConnectionPool:
    key = (scheme, host, port, address)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            if scheme == "https":
                pool = urllib3.HTTPSConnectionPool(
                    address, port, server_hostname=host, assert_hostname=host, maxsize=_pool_maxsize(), block=False
                )
            else:
                pool = urllib3.HTTPConnectionPool(address, port, maxsize=_pool_maxsize(), block=False)
            pool.ConnectionCls = _WatchedHTTPSConnection if scheme == "https" else _WatchedHTTPConnection
            if len(_pools) > 1000:
                _close_pools_locked()
            _pools[key] = pool
        return pool


def _close_pools_locked() -> None:
    for pool in _pools.values():
        pool.close()
    _pools.clear()


# IPv6 ranges that some Python versions count as global but that carry an IPv4 address a host
# may route to itself (IPv4-compatible, IPv4-translated, local-use NAT64), are site-local, or that
# IANA lists as not globally reachable since Python 3.11's table was made (SRv6 SIDs, routed
# inside an operator's own network; the new documentation prefix).
_NEVER_PUBLIC_V6 = tuple(
    ipaddress.IPv6Network(network)
    for network in ("::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "fec0::/10", "5f00::/16", "3fff::/20")
)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _NEVER_PUBLIC_V6):
            return False
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            return _is_public(embedded)
        if address in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64 carries an IPv4 address
            return _is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast


# The system resolver cannot be interrupted (a slow DNS server can take 5 s per try, times its
# retries and search domains), so each lookup runs on a thread of its own and the sender waits
# at most the attempt's timeout (RESOLVE_TIMEOUT_SECONDS at most), DNS included. A thread per
# lookup rather than a shared pool: a tenant's unanswering DNS server must not hold the threads
# that other tenants' lookups would wait for. A lookup given up on ends with the resolver's own
# timeout; until then it counts against its host's few (and the process's) lookups in progress,
# past which lookups fail at once rather than pile up threads. And against its organization's: a
# tenant's destinations on many names of a zone whose DNS never answers (a wildcard costs nothing)
# would otherwise fill the process's lookups, and every other tenant's would fail at once.
RESOLVE_TIMEOUT_SECONDS = 10.0
MAX_LOOKUPS_PER_HOST = 4
MAX_LOOKUPS_PER_ORGANIZATION = 32
# A URL being saved is checked while a web request waits, on one of the few threads that serve every
# tenant's pages, API calls and ingest: an organization's saves may wait on so many lookups only, or
# its saves with names of an unanswering zone would hold every thread for the lookup's timeout.
MAX_URL_CHECK_LOOKUPS_PER_ORGANIZATION = 2
MAX_LOOKUPS = 256
# Answers are reused this long (the address is checked again on every use): most deliveries then
# need no lookup, and a change of address is followed within half a minute.
RESOLVED_TTL_SECONDS = 30.0
_resolved: dict[tuple[str, int], tuple[float, list]] = {}
_lookups_by_host: dict[str, int] = {}
_lookups_by_organization: dict[int, int] = {}
_lookups_lock = threading.Lock()


def forget_resolved_hosts() -> None:
    """Drop the remembered answers (tests; a process that must look everything up again)."""
    _resolved.clear()


def _lookup_counted_ended(host: str, organization_id: int | None) -> None:
    """Under _lookups_lock."""
    _lookups_by_host[host] -= 1
    if not _lookups_by_host[host]:
        del _lookups_by_host[host]
    if organization_id is not None:
        _lookups_by_organization[organization_id] -= 1
        if not _lookups_by_organization[organization_id]:
            del _lookups_by_organization[organization_id]


class _Lookup:
    """One lookup of a (host, port) in progress, which every sender needing that answer waits on."""

    def __init__(self):
        self.done = threading.Event()
        self.infos: list | None = None
        self.error: BaseException | None = None


# The lookups in progress, one per (host, port): a burst of deliveries to one host with nothing
# remembered (a worker's first minute, or every RESOLVED_TTL_SECONDS) waits on one lookup, rather
# than each starting its own and the ones past MAX_LOOKUPS_PER_HOST failing as "not answering" (an
# attempt lost for nothing, and a dead delivery where one attempt is all a destination allows).
_lookups_in_progress: dict[tuple[str, int], _Lookup] = {}


def _address_infos(
    host: str, port: int, timeout: float, organization_id: int | None = None, organization_limit: int | None = None
) -> list:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # a literal address: nothing to look up, nothing to wait for
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    key = (host, port)
    remembered = _resolved.get(key)
    if remembered is not None and remembered[0] > time.monotonic():
        return remembered[1]
    with _lookups_lock:
        lookup = _lookups_in_progress.get(key)
        if lookup is None:
            lookup = _start_lookup(key, organization_id, organization_limit)
    if not lookup.done.wait(timeout):
        raise DestinationNotAllowed(f"the host {host} could not be resolved within {timeout:g} s")
    if lookup.error is not None:
        raise _own_copy(lookup.error)
    if lookup.infos is None:  # its thread stopped by something other than an Exception
        raise PlatformLookupsBusy(f"the host {host} could not be looked up now")
    return lookup.infos


def _own_copy(error: BaseException) -> BaseException:
    """The lookup's error for one waiting sender: a raise adds the raiser's frames to the exception's
    __traceback__ (and a context to its __context__), so one object raised by every waiter on their
    own threads would carry each one's frames into the others' tracebacks, growing with each."""
    try:
        fresh = copy.copy(error)
    except Exception:  # an exception type that cannot be made again from its args: as it is
        return error
    fresh.__traceback__ = fresh.__context__ = fresh.__cause__ = None
    return fresh


def _start_lookup(key: tuple[str, int], organization_id: int | None, organization_limit: int | None) -> _Lookup:
    """A lookup of ``key`` on a thread of its own, counted against its host's, its organization's and
    the process's lookups in progress until it ends (LookupsBusy past them). Under _lookups_lock."""
    host, port = key
    if _lookups_by_host.get(host, 0) >= MAX_LOOKUPS_PER_HOST:  # its own DNS: the receiver's
        raise LookupsBusy(f"the DNS of {host} is not answering (earlier lookups are still waiting)")
    if sum(_lookups_by_host.values()) >= MAX_LOOKUPS:  # every tenant's together: the platform's
        raise PlatformLookupsBusy(
            f"the host {host} could not be looked up now: this process has as many DNS lookups waiting as it allows"
        )
    if organization_id is not None:
        limit = MAX_LOOKUPS_PER_ORGANIZATION if organization_limit is None else organization_limit
        if _lookups_by_organization.get(organization_id, 0) >= limit:
            raise PlatformLookupsBusy(
                f"the host {host} could not be looked up now: earlier lookups for this organization's "
                "destinations are still waiting for their DNS to answer"
            )
    lookup = _Lookup()
    ended: list[bool] = []

    def end_once() -> None:
        """Give the places back and let the waiters go, once: by look_up(), or by a start that
        failed (see below). Under _lookups_lock."""
        if ended:
            return
        ended.append(True)
        _lookups_in_progress.pop(key, None)
        _lookup_counted_ended(host, organization_id)
        lookup.done.set()

    def look_up() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # handed to the waiting senders
            lookup.error = exc
        else:
            lookup.infos = infos
            if len(_resolved) > 10_000:
                _resolved.clear()
            _resolved[key] = (time.monotonic() + RESOLVED_TTL_SECONDS, infos)
        finally:
            with _lookups_lock:
                end_once()

    if organization_id is not None:
        _lookups_by_organization[organization_id] = _lookups_by_organization.get(organization_id, 0) + 1
    _lookups_by_host[host] = _lookups_by_host.get(host, 0) + 1
    _lookups_in_progress[key] = lookup
    # Until the thread runs, its look_up() cannot give the places taken above back: anything that
    # stops it from starting must, or they stay taken for the process's life (past the bound, every
    # lookup of that organization refused).
    try:
        threading.Thread(target=look_up, name="hookline-resolve", daemon=True).start()
    except RuntimeError:  # no thread to be had: as a lookup that failed
        lookup.error = PlatformLookupsBusy(f"the host {host} could not be looked up now")
        end_once()
        raise lookup.error from None
    except BaseException:  # no memory for it, an exception raised by a signal's handler meanwhile…
        end_once()  # once only: the thread may have started before start() was interrupted
        raise
    return lookup


# Ports of protocols other than HTTP that browsers refuse to connect to (the Fetch standard's
# "bad ports"): a webhook POST there (SMTP, IRC, SIP…) could make Hookline speak to a public
# service in a protocol it does not mean to. Private addresses, where allowed, are the operator's.
OTHER_PROTOCOL_PORTS = frozenset(
    {1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102}
    | {103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427}
    | {465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989}
    | {990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665}
    | {6666, 6667, 6668, 6669, 6679, 6697, 10080}
)


def ascii_host(host: str) -> str:
    """A host name's ASCII form as browsers make it (IDNA 2008 with UTS 46 mapping: "faß.de" is
    xn--fa-hia.de, another domain than the 2003 rules' "fass.de"). UnicodeError if it has none."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        # Characters IDNA 2008 leaves out (emoji, "_") that browsers still accept, as the 2003
        # rules do: a destination that worked keeps working.
        return host.encode("idna").decode("ascii")


@dataclass(frozen=True)
class _Destination:
    scheme: str
    host: str  # ASCII form: the name sent in the Host header and for TLS
    port: int
    addresses: tuple[str, ...]  # every address the host resolves to, all checked, in the resolver's order


def resolve_destination(
    url: str,
    *,
    timeout: float = RESOLVE_TIMEOUT_SECONDS,
    organization_id: int | None = None,
    organization_limit: int | None = None,
) -> tuple[str, str, int, str]:
    """(scheme, host, port, first address to connect to), or DestinationNotAllowed. ``organization_id``:
    whose lookup it is, refused at once past ``organization_limit`` of its lookups in progress
    (MAX_LOOKUPS_PER_ORGANIZATION by default)."""
    destination = _resolve(url, timeout=timeout, organization_id=organization_id, organization_limit=organization_limit)
    return destination.scheme, destination.host, destination.port, destination.addresses[0]


def _resolve(
    url: str, *, timeout: float, organization_id: int | None = None, organization_limit: int | None = None
) -> _Destination:
    """The destination with every address its host resolves to, or DestinationNotAllowed.

    Unless private destinations are allowed, one private or reserved address among the host's
    addresses refuses the whole destination, not only that address (DNS rebinding): whoever
    controls the name's DNS would otherwise have a send reach the private address by making the
    public ones refuse connections, since connecting goes on to the next address.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationNotAllowed("the URL must be http:// or https:// with a host name")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # :0 would have been taken for no port, and the request sent to port 80 or 443
        raise DestinationNotAllowed("the URL has an invalid port")
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    if not host.isascii():
        # The name checked and looked up is then the one sent in the Host header and for TLS,
        # which must be ASCII.
        try:
            host = ascii_host(host)
        except UnicodeError:
            raise DestinationNotAllowed(f"the host {host} cannot be resolved") from None
    try:
        infos = _address_infos(host, port, timeout, organization_id, organization_limit)
    except (socket.gaierror, UnicodeError):
        raise DestinationNotAllowed(f"the host {host} cannot be resolved") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise DestinationNotAllowed(f"the host {host} cannot be resolved")
    if not settings.ALLOW_PRIVATE_DESTINATIONS:
        blocked = [a for a in addresses if not _is_public(a)]
        if blocked:
            # Not which address: that would let a tenant map the platform's internal names.
            raise DestinationNotAllowed(
                # Tenants read this too: it says what the platform does, and whose setting it is.
                f"the host {host} resolves to a private or reserved address, which this platform does "
                "not send to (its operator can allow such addresses with ALLOW_PRIVATE_DESTINATIONS)"
            )
    if port in OTHER_PROTOCOL_PORTS and any(_is_public(address) for address in addresses):
        raise DestinationNotAllowed(
            f"port {port} belongs to another protocol than HTTP (browsers refuse it too); use the receiver's HTTP(S) port"
        )
    # The resolver may name an address twice (once per protocol it found it for, say).
    return _Destination(parts.scheme, host, port, tuple(dict.fromkeys(str(address) for address in addresses)))


# A host with several addresses is tried address by address while connecting fails (refused,
# unreachable, no answer, a TLS handshake left unanswered), as browsers and curl do: an IPv6
# address on a network without IPv6 must not fail every attempt when the IPv4 one works. Only
# the connecting is tried again, never a request of which any byte went out, so a receiver never
# gets one attempt twice. Each address but the last gets an even share of the time the attempt
# has left (at least CONNECT_SHARE_FLOOR seconds: a host with many addresses must not leave each
# too little for a connection over a long route), so an address that never answers cannot take
# the time the next one needs; the last address gets all that is left (MAX_CONNECT_SECONDS at
# most, as before).
MAX_CONNECT_SECONDS = 10.0
CONNECT_SHARE_FLOOR_SECONDS = 0.25
# An address that could not be connected to is tried after the host's other addresses for a
# while: otherwise every attempt to a host whose first address never answers would spend part
# of its time (and a sending thread's) waiting on it before reaching the address that works.
UNREACHABLE_TTL_SECONDS = 30.0
_unreachable: dict[tuple[str, int], float] = {}


def forget_unreachable_addresses() -> None:
    """Drop the remembered connection failures (tests; a network that has changed)."""
    _unreachable.clear()


def _in_connecting_order(addresses: tuple[str, ...], port: int) -> list[str]:
    now = time.monotonic()
    recently_failed = {address for address in addresses if _unreachable.get((address, port), 0.0) > now}
    return [a for a in addresses if a not in recently_failed] + [a for a in addresses if a in recently_failed]


def _remember_unreachable(address: str, port: int) -> None:
    if len(_unreachable) > 10_000:
        _unreachable.clear()
    _unreachable[(address, port)] = time.monotonic() + UNREACHABLE_TTL_SECONDS


def _connect_timeout(time_left: float, addresses_left: int) -> float:
    if addresses_left > 1:
        share = max(time_left / addresses_left, CONNECT_SHARE_FLOOR_SECONDS)
    else:
        share = time_left
    return max(min(share, time_left, MAX_CONNECT_SECONDS), 0.001)


class _ConnectFailed(Exception):
    """Connecting to one address failed (refused, unreachable, no answer, no TLS handshake): nothing went out."""

    def __init__(self, error: urllib3.exceptions.TimeoutError, connect_timeout: float):
        super().__init__(str(error))
        self.error = error
        self.timed_out = not isinstance(error, urllib3.exceptions.NewConnectionError)
        if self.timed_out:
            self.reason = f"no answer within {round(connect_timeout, 1):g} s"
        else:  # the system's words ("Connection refused"), not urllib3's wrapping of them
            cause = error.__cause__
            self.reason = (getattr(cause, "strerror", None) or str(cause or error)).lower()


def post(
    url: str, *, body: bytes, headers: dict[str, str], timeout: float, organization_id: int | None = None
) -> OutboundResponse:
    """POST ``body`` to ``url`` for the organization ``organization_id``; never raises for network
    trouble, it is reported in ``error``."""
    started = time.monotonic()
    deadline = started + timeout

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        destination = _resolve(url, timeout=min(timeout, RESOLVE_TIMEOUT_SECONDS), organization_id=organization_id)
    except PlatformLookupsBusy as exc:
        return OutboundResponse(status=None, body="", duration_ms=elapsed(), error=str(exc), platform_limit=True)
    except DestinationNotAllowed as exc:
        return OutboundResponse(status=None, body="", duration_ms=elapsed(), error=str(exc))
    # What the lookup took comes out of the attempt's time: its deadline holds from its start.
    remaining = max(deadline - time.monotonic(), 0.001)

    scheme, host, port = destination.scheme, destination.host, destination.port
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if scheme == "https" else 80
    # An IPv6 address is written in brackets in the Host header (RFC 9110 7.2), as in the URL: bare,
    # "2001:db8::1:8443" is no host a receiver can read, and strict servers answer 400.
    host_in_header = f"[{host}]" if ":" in host else host
    headers = {**headers, "Host": host_in_header if port == default_port else f"{host_in_header}:{port}"}
    addresses = _in_connecting_order(destination.addresses, port)
    failures: list[tuple[str, _ConnectFailed]] = []
    with _Watchdog(remaining + CUT_GRACE_SECONDS) as watchdog:
        for index, address in enumerate(addresses):
            time_left = deadline - time.monotonic()
            if time_left <= 0 and failures:
                break
            time_left = max(time_left, 0.001)
            pool = _pool_for(scheme, host, port, address)
            connect_timeout = _connect_timeout(time_left, len(addresses) - index)
            try:
                return _send(pool, path, body, headers, timeout, connect_timeout, time_left, started, watchdog)
            except _ConnectFailed as failure:
                _remember_unreachable(address, port)
                failures.append((address, failure))
    if len(destination.addresses) == 1:  # worded as it always was
        failure = failures[0][1]
        error = f"timed out after {timeout:g} s" if failure.timed_out else _connection_failed(failure.error)
    else:
        error = _no_address_connected(destination, failures, timeout)
    return OutboundResponse(status=None, body="", duration_ms=elapsed(), error=error)


def _no_address_connected(destination: _Destination, failures: list[tuple[str, _ConnectFailed]], timeout) -> str:
    """The error of an attempt that connected to none of the host's addresses: each one tried, and why.

    Only addresses that passed the check are ever tried, so a refused (private) address is never named here.
    """
    port = destination.port
    tried = "; ".join(f"{_address_and_port(address, port)}: {failure.reason}" for address, failure in failures)
    error = f"connection failed to each address of {destination.host}: {tried}"
    not_tried = len(destination.addresses) - len(failures)
    if not_tried:
        error += f"; {not_tried} more not tried: the attempt's {timeout:g} s ran out"
    return error[:500]


def _address_and_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _send(pool, path, body, headers, timeout, connect_timeout, time_left, started, watchdog) -> OutboundResponse:
    """One request on one address's pool; _ConnectFailed when that address cannot be connected to."""

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    timed_out = OutboundResponse(status=None, body="", duration_ms=0, error=f"timed out after {timeout:g} s")
    watchdog.request_started = False
    try:
        response = pool.urlopen(
            "POST",
            path,
            body=body,
            headers=headers,
            redirect=False,
            retries=False,
            preload_content=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=time_left),
        )
        try:
            if response.status == http.client.SWITCHING_PROTOCOLS:
                # The connection no longer speaks HTTP: dropped before a read could hand it back to the pool.
                response.close()
                excerpt = b""
            else:
                excerpt, complete = _read_excerpt(
                    response, settings.DELIVERY_RESPONSE_BODY_MAX_BYTES, started + timeout
                )
                if not complete:
                    # A long or slow answer is not read to its end: drop the connection instead of reusing it.
                    response.close()
        finally:
            response.release_conn()
        if watchdog.fired:  # cut mid-answer: what was read may look complete but is not
            return replace(timed_out, duration_ms=elapsed())
        if response.status == http.client.SWITCHING_PROTOCOLS:  # an upgrade the request never asked for
            return OutboundResponse(
                status=None,
                body="",
                duration_ms=elapsed(),
                error="the receiver answered 101 Switching Protocols, which a webhook request never asks for",
            )
        return OutboundResponse(
            status=response.status,
            body=excerpt.decode("utf-8", errors="replace"),
            duration_ms=elapsed(),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            body_complete=complete,
            location=response.headers.get("Location") if 300 <= response.status < 400 else None,
        )
    except urllib3.exceptions.ConnectTimeoutError as exc:
        # Raised only while opening the connection (NewConnectionError too, a subclass: checked before
        # the timeouts it derives from): no byte of the request has gone out, another address may be tried.
        raise _ConnectFailed(exc, connect_timeout) from None
    except urllib3.exceptions.TimeoutError as exc:
        if not watchdog.request_started and not watchdog.fired:
            # Connected, but the TLS handshake got no answer within the address's share of the time
            # (urllib3 calls that a read timeout): nothing of the request went out either.
            raise _ConnectFailed(exc, connect_timeout) from None
        return replace(timed_out, duration_ms=elapsed())
    except urllib3.exceptions.HTTPError as exc:
        if watchdog.fired:  # the watchdog cut the connection at the deadline
            return replace(timed_out, duration_ms=elapsed())
        if any(isinstance(arg, TimeoutError) for arg in exc.args):  # urllib3's word for a send that timed out
            return replace(
                timed_out, duration_ms=elapsed(), error="timed out sending the request: the receiver stopped reading it"
            )
        reason = getattr(exc, "reason", None) or exc
        return OutboundResponse(status=None, body="", duration_ms=elapsed(), error=f"connection failed: {reason}"[:500])


def _connection_failed(exc: urllib3.exceptions.NewConnectionError) -> str:
    """The reason without urllib3's prefix, which names our connection class, not the receiver."""
    reason = str(exc)
    connection = getattr(exc, "conn", None)
    if connection is not None:
        reason = reason.removeprefix(f"{connection}: ")
        reason = f"{connection.host}:{connection.port}: {reason}"
    return f"connection failed: {reason}"[:500]


def _read_excerpt(response, limit: int, deadline: float) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether the body ended within them.

    Read a piece at a time against ``deadline`` (monotonic): urllib3's read timeout starts
    again with every byte received, so a receiver trickling its answer could otherwise hold
    an attempt, and a sending thread, for hours.
    """
    excerpt = b""
    while len(excerpt) < limit:
        if time.monotonic() >= deadline:
            return excerpt, False
        piece = response.read1(min(limit - len(excerpt), 16384), decode_content=True)
        if not piece:
            return excerpt, True
        excerpt += piece
    return excerpt[:limit], time.monotonic() < deadline and not response.read1(65536, decode_content=True)


def post_to_hookline(url: str, *, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> OutboundResponse:
    """POST to Hookline's own ingest URL (the test sender). No address check: the target is us."""
    started = time.monotonic()
    try:
        # A pool of its own, closed after the one request: a kept-alive connection would hold one
        # of our own server's threads (and its database connection) until the server times it out.
        with urllib3.PoolManager() as pool:
            response = pool.request(
                "POST", url, body=body, headers=headers, timeout=timeout, redirect=False, retries=False
            )
    except urllib3.exceptions.HTTPError as exc:
        return OutboundResponse(
            status=None, body="", duration_ms=int((time.monotonic() - started) * 1000), error=str(exc)[:500]
        )
    return OutboundResponse(
        status=response.status,
        body=response.data[: settings.DELIVERY_RESPONSE_BODY_MAX_BYTES].decode("utf-8", errors="replace"),
        duration_ms=int((time.monotonic() - started) * 1000),
        headers={name.lower(): value for name, value in response.headers.items()},
    )
