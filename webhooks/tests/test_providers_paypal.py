"""PayPal provider: published CRC/message vector, and RSA signatures over our own CA → intermediate → leaf chain.

PayPal publishes no signer, and the published vector's sandbox certificate cannot be fetched offline
(providers.md §4), so signatures here are made directly with ``cryptography`` following the SDKs'
algorithm (never with the provider's own code), and the certificate chain is built in the test.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhooks.providers import paypal as paypal_module
from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.paypal import PayPalProvider, crc32_decimal, signed_message

FIXTURES = Path(__file__).parent / "fixtures" / "paypal"
EVENT_TYPES = ["PAYMENT.CAPTURE.COMPLETED", "BILLING.SUBSCRIPTION.ACTIVATED", "PAYMENT.SALE.COMPLETED"]
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret", "untrusted_certificate"}

WEBHOOK_ID = "4JH86294D6297924G"
OLD_WEBHOOK_ID = "8PT597110X687430L"
CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001"
SANDBOX_CERT_URL = "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0002"
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC).timestamp()
TRANSMISSION_TIME = "2025-06-01T11:59:58Z"
TRANSMISSION_ID = "dfb3be50-fd74-11e4-8bf3-77339302725b"

# --- providers.md §4 published vector ---
VECTOR_TRANSMISSION_ID = "dfb3be50-fd74-11e4-8bf3-77339302725b"
VECTOR_TIME = "2015-05-18T15:45:13Z"
VECTOR_WEBHOOK_ID = "4JH86294D6297924G"
VECTOR_CRC = 2771810304
VECTOR_MESSAGE = "dfb3be50-fd74-11e4-8bf3-77339302725b|2015-05-18T15:45:13Z|4JH86294D6297924G|2771810304"
VECTOR_SIG = (
    "thy4/U002quzxFavHPwbfJGcc46E8rc5jzgyeafWm5mICTBdY/8rl7WJpn8JA0GKA+oDTPsSruqusw+XXg5RLAP7ip53Euh9Xu3UbUhQFX7Ug"
    "wzE2FeYoY6lyRMiiiQLzy9BvHfIzNIVhPad4KnC339dr6y2l+mN8ALgI4GCdIh3/SoJO5wE64Bh/ueWtt8EVuvsvXfda2Le5a2TrOI9vLEzsm9"
    "GS79hAR/5oLexNz8UiZr045Mr5ObroH4w4oNfmkTaDk9Rj0G19uvISs5QzgmBpauKr7Nw++JI0pr/v5mFctQkoWJSGfBGzPRXawrvIIVHQ9Wer"
    "48GR2g9ZiApWg=="
)


# --- a test PKI: root → intermediate → leaf, like DigiCert → … → messageverificationcerts.paypal.com ---

VALID_FROM = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
VALID_TO = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject, issuer, key, signer, *, ca, not_before=VALID_FROM, not_after=VALID_TO):
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(not ca, False, not ca, False, False, ca, ca, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    return builder.sign(signer, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


ROOT_KEY, INTER_KEY, LEAF_KEY = _key(), _key(), _key()
ROOT = _cert("Test Global Root G2", "Test Global Root G2", ROOT_KEY, ROOT_KEY, ca=True)
INTER = _cert("Test TLS RSA SHA256 2020 CA1", "Test Global Root G2", INTER_KEY, ROOT_KEY, ca=True)
LEAF = _cert("messageverificationcerts.paypal.com", "Test TLS RSA SHA256 2020 CA1", LEAF_KEY, INTER_KEY, ca=False)
ROGUE_KEY = _key()
ROGUE_LEAF = _cert(
    "messageverificationcerts.paypal.com", "messageverificationcerts.paypal.com", ROGUE_KEY, ROGUE_KEY, ca=False
)
WRONG_CN_LEAF = _cert("webhooks.example.com", "Test TLS RSA SHA256 2020 CA1", LEAF_KEY, INTER_KEY, ca=False)
EXPIRED_LEAF = _cert(
    "messageverificationcerts.paypal.com",
    "Test TLS RSA SHA256 2020 CA1",
    LEAF_KEY,
    INTER_KEY,
    ca=False,
    not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    not_after=dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
)


class FakeFetcher:
    """URL → PEM bytes; records calls; anything else raises like a failed download."""

    def __init__(self, documents: dict[str, bytes] | None = None):
        self.documents = (
            documents if documents is not None else {CERT_URL: _pem(LEAF, INTER), SANDBOX_CERT_URL: _pem(LEAF, INTER)}
        )
        self.calls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if url not in self.documents:
            raise OSError("404")
        return self.documents[url]


def provider(fetcher: FakeFetcher | None = None, roots=(ROOT,)) -> PayPalProvider:
    return PayPalProvider(fetcher=fetcher or FakeFetcher(), trust_anchors=list(roots))


PROVIDER = provider()
OPTIONS = PROVIDER.clean_options({})


def paypal_signature(
    body: bytes,
    webhook_id: str = WEBHOOK_ID,
    *,
    key=LEAF_KEY,
    algorithm=hashes.SHA256,
    transmission_id: str = TRANSMISSION_ID,
    transmission_time: str = TRANSMISSION_TIME,
) -> str:
    """What PayPal sends: base64 RSA PKCS#1 v1.5 over id|time|webhook id|crc32 (computed here, not by the provider)."""
    crc = binascii.crc32(body) & 0xFFFFFFFF
    message = f"{transmission_id}|{transmission_time}|{webhook_id}|{crc}".encode()
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), algorithm())).decode()


def paypal_headers(
    body: bytes, webhook_id: str = WEBHOOK_ID, *, cert_url: str = CERT_URL, algo: str | None = "SHA256withRSA", **kwargs
) -> dict[str, str]:
    algorithm = hashes.SHA1 if algo and algo.lower() == "sha1withrsa" else hashes.SHA256
    headers = {
        "PAYPAL-TRANSMISSION-ID": kwargs.get("transmission_id", TRANSMISSION_ID),
        "PAYPAL-TRANSMISSION-TIME": kwargs.get("transmission_time", TRANSMISSION_TIME),
        "PAYPAL-TRANSMISSION-SIG": paypal_signature(body, webhook_id, algorithm=algorithm, **kwargs),
        "PAYPAL-CERT-URL": cert_url,
        "Content-Type": "application/json",
        "User-Agent": "PayPal/AUHR-214.0-58140418",
    }
    if algo is not None:
        headers["PAYPAL-AUTH-ALGO"] = algo
    return headers


def req(body: bytes, headers: dict[str, str]) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in headers.items()})


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def reject(request, secrets=(WEBHOOK_ID,), options=None, now=NOW, prov=None) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        (prov or PROVIDER).verify(request, list(secrets), OPTIONS if options is None else options, now)
    assert info.value.code in CODES
    return info.value


# --- published vector ---------------------------------------------------------------------


def test_published_vector_crc_and_message():
    body = fixture("PAYMENT.SALE.COMPLETED")
    assert len(body) == 1288
    assert binascii.crc32(body) & 0xFFFFFFFF == VECTOR_CRC
    assert crc32_decimal(body) == str(VECTOR_CRC)
    assert signed_message(VECTOR_TRANSMISSION_ID, VECTOR_TIME, VECTOR_WEBHOOK_ID, body) == VECTOR_MESSAGE.encode()


def test_published_vector_signature_needs_paypals_certificate():
    """The published signature is a well-formed 2048-bit RSA signature; against any other key it is rejected."""
    body = fixture("PAYMENT.SALE.COMPLETED")
    assert len(base64.b64decode(VECTOR_SIG)) == 256
    headers = {
        "PAYPAL-TRANSMISSION-ID": VECTOR_TRANSMISSION_ID,
        "PAYPAL-TRANSMISSION-TIME": VECTOR_TIME,
        "PAYPAL-TRANSMISSION-SIG": VECTOR_SIG,
        "PAYPAL-CERT-URL": SANDBOX_CERT_URL,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
    }
    options = PROVIDER.clean_options({"allow_sandbox": True})
    now = dt.datetime(2025, 6, 1, tzinfo=dt.UTC).timestamp()
    assert (
        reject(req(body, headers), secrets=(VECTOR_WEBHOOK_ID,), options=options, now=now).code == "no_matching_secret"
    )


# --- valid requests ---------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_fixtures_verify_and_describe(event_type):
    body = fixture(event_type)
    request = req(body, paypal_headers(body))
    PROVIDER.verify(request, [WEBHOOK_ID], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert info.event_type == event_type
    assert info.event_id == json.loads(body)["id"] and info.event_id.startswith("WH-")


def crc_forged(body: bytes, target: int) -> bytes:
    """``body`` plus four bytes chosen so that its CRC-32 is ``target`` (CRC-32 is affine over GF(2))."""
    base = binascii.crc32(body + bytes(4))
    # Column i: how flipping bit i of the suffix changes the CRC. Solve columns · x = target ^ base.
    columns = [binascii.crc32(body + (1 << i).to_bytes(4, "little")) ^ base for i in range(32)]
    rows = [(columns[i], 1 << i) for i in range(32)]
    pivots: dict[int, tuple[int, int]] = {}
    for value, combo in rows:
        for bit in sorted(pivots, reverse=True):
            if value >> bit & 1:
                value, combo = value ^ pivots[bit][0], combo ^ pivots[bit][1]
        if value:
            pivots[value.bit_length() - 1] = (value, combo)
    want, suffix = target ^ base, 0
    for bit in sorted(pivots, reverse=True):
        if want >> bit & 1:
            want, suffix = want ^ pivots[bit][0], suffix ^ pivots[bit][1]
    assert want == 0
    forged = body + suffix.to_bytes(4, "little")
    assert binascii.crc32(forged) == target
    return forged


def test_replay_nonce_is_the_signed_transmission_id():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    headers = paypal_headers(body)
    request = req(body, headers)
    PROVIDER.verify(request, [WEBHOOK_ID], OPTIONS, NOW)
    assert PROVIDER.replay_nonce(request, OPTIONS) == TRANSMISSION_ID
    # Why a nonce is needed: a body with the same CRC-32 carries the same signature and verifies too.
    forged_body = crc_forged(body.replace(b"COMPLETED", b"REFUNDED!"), binascii.crc32(body))
    forged = req(forged_body, headers)
    PROVIDER.verify(forged, [WEBHOOK_ID], OPTIONS, NOW)
    assert PROVIDER.replay_nonce(forged, OPTIONS) == TRANSMISSION_ID
    other = req(body, paypal_headers(body, transmission_id="0e3f6a40-0000-11f0-8000-000000000001"))
    PROVIDER.verify(other, [WEBHOOK_ID], OPTIONS, NOW)
    assert PROVIDER.replay_nonce(other, OPTIONS) == "0e3f6a40-0000-11f0-8000-000000000001"


@pytest.mark.parametrize("headers", [{}, {"PAYPAL-TRANSMISSION-ID": ""}, {"PAYPAL-TRANSMISSION-ID": "  "}])
def test_replay_nonce_without_a_transmission_id_is_none(headers):
    assert PROVIDER.replay_nonce(req(b"not json", headers), OPTIONS) is None


def test_sha1_with_rsa_when_the_header_says_so():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    PROVIDER.verify(req(body, paypal_headers(body, algo="SHA1withRSA")), [WEBHOOK_ID], OPTIONS, NOW)
    # …but a SHA-256 signature announced as SHA-1 fails, and vice versa.
    headers = paypal_headers(body)
    headers["PAYPAL-AUTH-ALGO"] = "SHA1withRSA"
    assert reject(req(body, headers)).code == "no_matching_secret"


def test_missing_auth_algo_defaults_to_sha256():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    PROVIDER.verify(req(body, paypal_headers(body, algo=None)), [WEBHOOK_ID], OPTIONS, NOW)


def test_header_names_are_case_insensitive_and_algo_case():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    headers = {k.title(): v for k, v in paypal_headers(body, algo="sha256withrsa").items()}
    PROVIDER.verify(req(body, headers), [WEBHOOK_ID], OPTIONS, NOW)


def test_leaf_only_pem_when_intermediate_is_a_trust_anchor():
    fetcher = FakeFetcher({CERT_URL: _pem(LEAF)})
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    provider(fetcher, roots=(ROOT, INTER)).verify(req(body, paypal_headers(body)), [WEBHOOK_ID], OPTIONS, NOW)
    assert reject(req(body, paypal_headers(body)), prov=provider(FakeFetcher({CERT_URL: _pem(LEAF)}))).code == (
        "untrusted_certificate"
    )


# --- rejections -------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_tampered_body(event_type):
    body = fixture(event_type)
    headers = paypal_headers(body)
    tampered = (
        body.replace(b"COMPLETED", b"COMPLETEE", 1) if b"COMPLETED" in body else body.replace(b"ACTIVE", b"ACTIVF", 1)
    )
    assert tampered != body
    assert reject(req(tampered, headers)).code == "no_matching_secret"


@pytest.mark.parametrize("field", ["PAYPAL-TRANSMISSION-ID", "PAYPAL-TRANSMISSION-TIME"])
def test_tampered_signed_headers(field):
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    headers = paypal_headers(body)
    headers[field] += "0"
    assert reject(req(body, headers)).code == "no_matching_secret"


@pytest.mark.parametrize(
    "drop", ["PAYPAL-TRANSMISSION-ID", "PAYPAL-TRANSMISSION-TIME", "PAYPAL-TRANSMISSION-SIG", "PAYPAL-CERT-URL"]
)
def test_missing_headers(drop):
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    headers = {k: v for k, v in paypal_headers(body).items() if k != drop}
    error = reject(req(body, headers))
    assert error.code == "missing_signature" and drop in error.detail


@pytest.mark.parametrize(
    "name, value",
    [
        ("PAYPAL-TRANSMISSION-SIG", "not base64!!"),
        ("PAYPAL-TRANSMISSION-SIG", "é"),
        ("PAYPAL-AUTH-ALGO", "SHA512withECDSA"),
        ("PAYPAL-AUTH-ALGO", "sha256"),
    ],
)
def test_malformed_headers(name, value):
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    headers = {**paypal_headers(body), name: value}
    assert reject(req(body, headers)).code == "bad_format"


def test_truncated_signature_is_rejected():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    headers = paypal_headers(body)
    headers["PAYPAL-TRANSMISSION-SIG"] = base64.b64encode(
        base64.b64decode(headers["PAYPAL-TRANSMISSION-SIG"])[:-1]
    ).decode()
    assert reject(req(body, headers)).code == "no_matching_secret"


def test_wrong_webhook_id():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    error = reject(req(body, paypal_headers(body, OLD_WEBHOOK_ID)))
    assert error.code == "no_matching_secret" and "webhook id" in error.detail
    assert WEBHOOK_ID not in error.detail


def test_rotated_webhook_ids():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    PROVIDER.verify(req(body, paypal_headers(body, OLD_WEBHOOK_ID)), [WEBHOOK_ID, OLD_WEBHOOK_ID], OPTIONS, NOW)
    PROVIDER.verify(req(body, paypal_headers(body, WEBHOOK_ID)), [WEBHOOK_ID, OLD_WEBHOOK_ID], OPTIONS, NOW)
    third = "1AB23456CD7890123"
    assert (
        reject(req(body, paypal_headers(body, third)), secrets=(WEBHOOK_ID, OLD_WEBHOOK_ID)).code
        == "no_matching_secret"
    )


def test_no_webhook_id_means_rejection():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    assert reject(req(body, paypal_headers(body)), secrets=()).code == "no_matching_secret"
    assert reject(req(body, paypal_headers(body)), secrets=("", "  ")).code == "no_matching_secret"


def test_simulator_events_only_when_enabled():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    request = req(body, paypal_headers(body, "WEBHOOK_ID"))
    assert reject(request).code == "no_matching_secret"
    PROVIDER.verify(request, [WEBHOOK_ID], PROVIDER.clean_options({"accept_simulator": "true"}), NOW)


def test_simulator_id_as_the_secret_does_not_accept_simulator_events():
    # Anyone can make PayPal's simulator post a PayPal-signed event for the literal id WEBHOOK_ID to any URL:
    # typed in as the source's webhook id, it would accept them for good, past accept_simulator's guard.
    with pytest.raises(InvalidOptions, match="accept_simulator"):
        PROVIDER.clean_secret("WEBHOOK_ID")
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    request = req(body, paypal_headers(body, "WEBHOOK_ID"))
    # A secret stored before clean_secret refused it still verifies nothing on its own.
    assert reject(request, secrets=("WEBHOOK_ID",)).code == "no_matching_secret"
    assert reject(request, secrets=(WEBHOOK_ID, "WEBHOOK_ID")).code == "no_matching_secret"
    PROVIDER.verify(request, ["WEBHOOK_ID"], PROVIDER.clean_options({"accept_simulator": "true"}), NOW)


def test_signature_by_a_key_outside_the_chain():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    headers = paypal_headers(body, key=ROGUE_KEY)
    assert reject(req(body, headers)).code == "no_matching_secret"


# --- certificate checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://api.paypal.com/v1/notifications/certs/CERT-1",
        "https://evil.example.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com.evil.example.com/cert",
        "https://paypal.com/cert",
        "https://api.paypal.com:8443/v1/notifications/certs/CERT-1",
        "https://user:pw@api.paypal.com/v1/notifications/certs/CERT-1",
        "file:///etc/passwd",
        "https://[::1/cert",
        "//api.paypal.com/cert",
    ],
)
def test_certificate_url_outside_the_allowlist_is_never_fetched(url):
    fetcher = FakeFetcher()
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    error = reject(req(body, paypal_headers(body, cert_url=url)), prov=provider(fetcher))
    assert error.code == "untrusted_certificate"
    assert fetcher.calls == []


def test_sandbox_certificates_need_allow_sandbox():
    fetcher = FakeFetcher()
    prov = provider(fetcher)
    body = fixture("PAYMENT.SALE.COMPLETED")
    request = req(body, paypal_headers(body, cert_url=SANDBOX_CERT_URL))
    error = reject(request, prov=prov)
    assert error.code == "untrusted_certificate" and "allow_sandbox" in error.detail
    assert fetcher.calls == []
    prov.verify(request, [WEBHOOK_ID], prov.clean_options({"allow_sandbox": True}), NOW)
    assert fetcher.calls == [SANDBOX_CERT_URL]


def test_self_signed_certificate_is_untrusted():
    fetcher = FakeFetcher({CERT_URL: _pem(ROGUE_LEAF)})
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    error = reject(req(body, paypal_headers(body, key=ROGUE_KEY)), prov=provider(fetcher))
    assert error.code == "untrusted_certificate" and "trusted root" in error.detail


def test_certificate_must_have_a_paypal_common_name():
    fetcher = FakeFetcher({CERT_URL: _pem(WRONG_CN_LEAF, INTER)})
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    error = reject(req(body, paypal_headers(body)), prov=provider(fetcher))
    assert error.code == "untrusted_certificate" and "webhooks.example.com" in error.detail


def test_expired_certificate():
    fetcher = FakeFetcher({CERT_URL: _pem(EXPIRED_LEAF, INTER)})
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    error = reject(req(body, paypal_headers(body)), prov=provider(fetcher))
    assert error.code == "untrusted_certificate" and "expired" in error.detail
    # The good chain is also refused once it has expired.
    later = dt.datetime(2027, 6, 1, tzinfo=dt.UTC).timestamp()
    assert reject(req(body, paypal_headers(body)), now=later, prov=provider()).code == "untrusted_certificate"


def test_unrelated_roots_do_not_trust_the_chain():
    other_root_key = _key()
    other_root = _cert("Other Root", "Other Root", other_root_key, other_root_key, ca=True)
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    assert reject(req(body, paypal_headers(body)), prov=provider(roots=(other_root,))).code == "untrusted_certificate"
    assert reject(req(body, paypal_headers(body)), prov=provider(roots=())).code == "untrusted_certificate"


@pytest.mark.parametrize(
    "document", [b"", b"<html>Not Found</html>", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]
)
def test_unusable_certificate_documents(document):
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    error = reject(req(body, paypal_headers(body)), prov=provider(FakeFetcher({CERT_URL: document})))
    assert error.code == "untrusted_certificate"


def test_fetch_failure_and_odd_fetchers():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    assert reject(req(body, paypal_headers(body)), prov=provider(FakeFetcher({}))).code == "untrusted_certificate"

    def returns_text(url):
        return "not bytes"

    prov = PayPalProvider(fetcher=returns_text, trust_anchors=[ROOT])
    assert reject(req(body, paypal_headers(body)), prov=prov).code == "untrusted_certificate"


def test_certificates_are_cached_by_url():
    fetcher = FakeFetcher()
    prov = provider(fetcher)
    for name in EVENT_TYPES:
        body = fixture(name)
        prov.verify(req(body, paypal_headers(body)), [WEBHOOK_ID], OPTIONS, NOW)
    assert fetcher.calls == [CERT_URL]


def test_new_fetches_are_rate_limited():
    fetcher = FakeFetcher()
    prov = provider(fetcher)
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    for n in range(paypal_module.FETCHES_PER_MINUTE):
        reject(req(body, paypal_headers(body, cert_url=f"{CERT_URL}-{n}")), prov=prov)
    assert len(fetcher.calls) == paypal_module.FETCHES_PER_MINUTE
    error = reject(req(body, paypal_headers(body)), prov=prov)
    assert error.code == "untrusted_certificate" and "too many" in error.detail
    assert len(fetcher.calls) == paypal_module.FETCHES_PER_MINUTE


def test_made_up_certificate_urls_spend_only_the_allowance_of_the_source_they_were_sent_to():
    """Whoever knows one source's ingest URL can send made-up cert URLs to it; another tenant's source,
    on the same process, still fetches the certificate its genuine event names."""
    fetcher = FakeFetcher()
    prov = provider(fetcher)
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    for n in range(paypal_module.FETCHES_PER_MINUTE):
        reject(
            req(body, paypal_headers(body, OLD_WEBHOOK_ID, cert_url=f"{CERT_URL}-{n}")),
            secrets=[OLD_WEBHOOK_ID],
            prov=prov,
        )
    refused = reject(
        req(body, paypal_headers(body, OLD_WEBHOOK_ID, cert_url=f"{CERT_URL}-x")), secrets=[OLD_WEBHOOK_ID], prov=prov
    )
    assert refused.code == "untrusted_certificate" and "too many" in refused.detail

    prov.verify(req(body, paypal_headers(body)), [WEBHOOK_ID], OPTIONS, NOW)  # another source: fetched, verified

    assert fetcher.calls[-1] == CERT_URL
    assert len(fetcher.calls) == paypal_module.FETCHES_PER_MINUTE + 1


def test_every_source_together_has_a_ceiling_on_fetches(monkeypatch):
    monkeypatch.setattr(paypal_module, "FETCHES_PER_MINUTE_ALL_SOURCES", 3)
    fetcher = FakeFetcher()
    prov = provider(fetcher)
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    for n, webhook_id in enumerate(["1AAAAAAAAAAAAAAAA", "2BBBBBBBBBBBBBBBB", "3CCCCCCCCCCCCCCCC"]):
        reject(req(body, paypal_headers(body, webhook_id, cert_url=f"{CERT_URL}-{n}")), secrets=[webhook_id], prov=prov)
    error = reject(req(body, paypal_headers(body)), prov=prov)
    assert error.code == "untrusted_certificate" and "too many certificate fetches in the last minute" in error.detail
    assert len(fetcher.calls) == 3


def test_trust_anchors_may_be_a_callable():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    prov = PayPalProvider(fetcher=FakeFetcher(), trust_anchors=lambda: [ROOT])
    prov.verify(req(body, paypal_headers(body)), [WEBHOOK_ID], OPTIONS, NOW)


def test_default_trust_store_and_fetcher_refuse_without_network():
    # The system store is read from disk; our test root is not in it.
    anchors = paypal_module.system_trust_anchors()
    assert all(isinstance(c, x509.Certificate) for c in anchors)
    assert ROOT not in anchors
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    prov = PayPalProvider(fetcher=FakeFetcher())
    assert reject(req(body, paypal_headers(body)), prov=prov).code == "untrusted_certificate"
    # The default fetcher refuses anything but https on PayPal's hosts before opening a connection.
    for url in ("http://api.paypal.com/x", "https://example.com/x", "https://api.paypal.com:444/x"):
        with pytest.raises(paypal_module.CertificateFetchError):
            paypal_module.default_fetcher(url)


# --- timestamp ---------------------------------------------------------------------------


def test_no_tolerance_by_default():
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    headers = paypal_headers(body, transmission_time="2025-05-01T00:00:00Z")
    PROVIDER.verify(req(body, headers), [WEBHOOK_ID], OPTIONS, NOW)


def test_stale_and_future_transmissions_with_tolerance():
    options = PROVIDER.clean_options({"tolerance": 300})
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    PROVIDER.verify(req(body, paypal_headers(body)), [WEBHOOK_ID], options, NOW)
    stale = reject(req(body, paypal_headers(body, transmission_time="2025-06-01T11:54:59Z")), options=options)
    assert stale.code == "timestamp_out_of_tolerance" and "301 s old" in stale.detail
    future = reject(req(body, paypal_headers(body, transmission_time="2025-06-01T12:05:01Z")), options=options)
    assert future.code == "timestamp_out_of_tolerance" and "in the future" in future.detail
    bad = reject(req(body, paypal_headers(body, transmission_time="yesterday")), options=options)
    assert bad.code == "bad_format"


# --- describe, sign, options --------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"not json", b"\xff", b"[]", b'{"id": "WH-1"}', b'{"event_type": "X"}', b'{"id": 5, "event_type": "X"}']
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body, {}), OPTIONS)


def test_sign_is_not_possible():
    with pytest.raises(NotImplementedError, match="PayPal"):
        PROVIDER.sign(b"{}", WEBHOOK_ID, OPTIONS, NOW)


def test_options_and_secret():
    assert OPTIONS == {"allow_sandbox": False, "accept_simulator": False, "tolerance": 0}
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"tolerance": -1})
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({"webhook_secret": "x"})
    assert PROVIDER.clean_secret(f"  {WEBHOOK_ID} ") == WEBHOOK_ID
    for bad in ("", "   ", "EAA 1234", "client secret with spaces", "x" * 65):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_secret(bad)
    assert PROVIDER.secret_header_names(OPTIONS) == set()
    assert PROVIDER.secret_generated_by_us is False


# --- properties -----------------------------------------------------------------------------

HEADER_NAMES = [
    "paypal-transmission-id",
    "paypal-transmission-time",
    "paypal-transmission-sig",
    "paypal-cert-url",
    "paypal-auth-algo",
]
SIGNED_BODY = fixture("PAYMENT.CAPTURE.COMPLETED")
SIGNED_HEADERS = {k.lower(): v for k, v in paypal_headers(SIGNED_BODY).items()}
header_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from([CERT_URL, SANDBOX_CERT_URL, "SHA256withRSA", "SHA1withRSA", TRANSMISSION_TIME, "=", ""]),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(st.binary(max_size=200), st.just(SIGNED_BODY)),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=5),
    keep_signed=st.booleans(),
    options=st.fixed_dictionaries(
        {
            "allow_sandbox": st.booleans(),
            "accept_simulator": st.booleans(),
            "tolerance": st.sampled_from([0, 300, -5, "x", None]),
        }
    ),
)
def test_random_requests_only_raise_verification_error(body, headers, keep_signed, options):
    merged = {**(SIGNED_HEADERS if keep_signed else {}), **headers}
    request = InboundRequest(body=body, headers=merged)
    try:
        PROVIDER.verify(request, [WEBHOOK_ID], options, NOW)
    except VerificationError as exc:
        assert exc.code in CODES and exc.detail
    else:
        # Only the genuinely signed body and signed header values can pass.
        assert body == SIGNED_BODY
        for name in HEADER_NAMES[:3]:
            assert merged.get(name) == SIGNED_HEADERS[name]
    try:
        info = PROVIDER.describe(request, options)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str) and isinstance(info.event_id, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_byte_change_to_a_signed_body_is_rejected(data):
    body = data.draw(st.one_of(st.binary(min_size=1, max_size=300), st.sampled_from([fixture(n) for n in EVENT_TYPES])))
    headers = SIGNED_HEADERS if body == SIGNED_BODY else {k.lower(): v for k, v in paypal_headers(body).items()}
    PROVIDER.verify(InboundRequest(body=body, headers=headers), [WEBHOOK_ID], OPTIONS, NOW)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    byte = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(InboundRequest(body=changed, headers=headers), [WEBHOOK_ID], OPTIONS, NOW)
    assert info.value.code == "no_matching_secret"


# --- Which webhook id signed: a rotation's [current, previous] ------------------------------


def test_a_refused_request_during_a_rotation_fetches_its_certificate_once():
    # Each fetch is a network round trip on the web thread and spends the per-minute budget of new
    # fetches that PayPal's own requests need when it changes certificates.
    fetcher = FakeFetcher()
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    unknown = req(body, paypal_headers(body, cert_url=f"{CERT_URL}-unknown"))
    with pytest.raises(VerificationError) as info:
        provider(fetcher).verify_matching_secret(unknown, [WEBHOOK_ID, OLD_WEBHOOK_ID], OPTIONS, NOW)
    assert info.value.code == "untrusted_certificate"
    assert fetcher.calls == [f"{CERT_URL}-unknown"]


def test_a_simulator_request_is_credited_to_neither_webhook_id():
    # The simulator signs for PayPal's fixed id, not the source's: crediting the current webhook id
    # would tell the tenant PayPal had moved to it.
    body = fixture("PAYMENT.CAPTURE.COMPLETED")
    options = PROVIDER.clean_options({"accept_simulator": "true"})
    rotation = [WEBHOOK_ID, OLD_WEBHOOK_ID]
    simulated = req(body, paypal_headers(body, "WEBHOOK_ID"))
    assert PROVIDER.verify_matching_secret(simulated, rotation, options, NOW) is None
    assert PROVIDER.verify_matching_secret(req(body, paypal_headers(body, WEBHOOK_ID)), rotation, options, NOW) == 0
    assert PROVIDER.verify_matching_secret(req(body, paypal_headers(body, OLD_WEBHOOK_ID)), rotation, options, NOW) == 1
