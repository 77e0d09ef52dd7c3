"""Apple App Store Server Notifications V2 provider.

Apple's signatures cannot be produced outside Apple (providers.md §11), so the tests build their own
3-level CA carrying Apple's two OIDs and sign the JWS with PyJWT (``jwt.encode(…, algorithm="ES256",
headers={"x5c": …})``), plus a hand-rolled ES256 signer as a second, independent signer. The recorded
fixtures were signed the same way by a fixed test CA whose root is ``fixtures/apple_app_store/test-root.pem``.
Apple's own ``app-store-server-library`` (``SignedDataVerifier``, given the test root) is the oracle: it
accepts and refuses the same payloads as the provider.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from pathlib import Path

import jwt
import pytest
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.signed_data_verifier import SignedDataVerifier, VerificationException
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhooks.providers.apple import INTERMEDIATE_OID, LEAF_OID, AppleAppStoreProvider
from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError

FIXTURES = Path(__file__).parent / "fixtures" / "apple_app_store"
EVENT_TYPES = ["SUBSCRIBED.INITIAL_BUY", "DID_RENEW", "REFUND"]
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret", "untrusted_certificate"}
BUNDLE_ID = "com.example.hookline"
APP_APPLE_ID = 1234567890
NOW = dt.datetime(2025, 7, 1, tzinfo=dt.UTC).timestamp()
SIGNED_DATE_MS = int(dt.datetime(2025, 6, 30, 23, 59, tzinfo=dt.UTC).timestamp() * 1000)
PROVIDER = AppleAppStoreProvider()


# --- a test PKI shaped like Apple's: Root CA - G3 (P-384) → WWDR G6 (P-384) → signing leaf (P-256) ---


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Apple")]
    )


def make_cert(subject, issuer, key, signer, *, ca, oid=None, not_before=None, not_after=None):
    not_before = not_before or dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    not_after = not_after or dt.datetime(2045, 1, 1, tzinfo=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca and subject != issuer else None), critical=True)
        .add_extension(x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    if oid is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, b"\x05\x00"), critical=False)
    return builder.sign(signer, hashes.SHA384() if isinstance(signer.curve, ec.SECP384R1) else hashes.SHA256())


class PKI:
    def __init__(
        self, name="Test Apple Root CA - G3", leaf_oid=LEAF_OID, intermediate_oid=INTERMEDIATE_OID, **leaf_validity
    ):
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.intermediate_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.root = make_cert(name, name, self.root_key, self.root_key, ca=True)
        self.intermediate = make_cert(
            "Test Worldwide Developer Relations CA - G6",
            name,
            self.intermediate_key,
            self.root_key,
            ca=True,
            oid=intermediate_oid,
        )
        self.leaf = make_cert(
            "Test Prod ECC Mac App Store and iTunes Store Receipt Signing",
            "Test Worldwide Developer Relations CA - G6",
            self.leaf_key,
            self.intermediate_key,
            ca=False,
            oid=leaf_oid,
            **leaf_validity,
        )

    def x5c(self) -> list[str]:
        return [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in (self.leaf, self.intermediate, self.root)
        ]

    def root_pem(self) -> str:
        return self.root.public_bytes(serialization.Encoding.PEM).decode()


def pyjwt_sign(claims: dict, pki: PKI, **header) -> str:
    """The signedPayload as PyJWT makes it."""
    return jwt.encode(claims, pki.leaf_key, algorithm="ES256", headers={"x5c": pki.x5c(), **header})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def manual_sign(claims: dict, pki: PKI, header: dict | None = None, key=None) -> str:
    """An independent ES256 JWS signer (RFC 7515/7518), not PyJWT and not the provider."""
    header = header if header is not None else {"alg": "ES256", "x5c": pki.x5c()}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature((key or pki.leaf_key).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def body_of(signed_payload: str) -> bytes:
    return json.dumps({"signedPayload": signed_payload}, separators=(",", ":")).encode()


def notification(
    notification_type="DID_RENEW",
    subtype=None,
    *,
    environment="Production",
    bundle_id=BUNDLE_ID,
    app_apple_id=APP_APPLE_ID,
    signed_date=SIGNED_DATE_MS,
    section="data",
) -> dict:
    claims = {
        "notificationType": notification_type,
        "notificationUUID": str(uuid.uuid4()),
        section: {
            "appAppleId": app_apple_id,
            "bundleId": bundle_id,
            "bundleVersion": "42",
            "environment": environment,
            "status": 1,
        },
        "version": "2.0",
        "signedDate": signed_date,
    }
    if subtype:
        claims["subtype"] = subtype
    if signed_date is None:
        del claims["signedDate"]
    return claims


PKI_MAIN = PKI()


def options_for(pki: PKI = PKI_MAIN, **overrides) -> dict:
    raw = {
        "bundle_id": BUNDLE_ID,
        "environment": "Production",
        "app_apple_id": str(APP_APPLE_ID),
        "root_certificates_pem": pki.root_pem(),
    }
    raw.update(overrides)
    return PROVIDER.clean_options(raw)


OPTIONS = options_for()


def req(body: bytes) -> InboundRequest:
    return InboundRequest(body=body, headers={"content-type": "application/json"})


def reject(body: bytes, options=None, now=NOW) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(req(body), ["apple"], OPTIONS if options is None else options, now)
    assert info.value.code in CODES and info.value.detail
    return info.value


def fixture_claims(name: str) -> dict:
    signed = json.loads((FIXTURES / f"{name}.json").read_bytes())["signedPayload"]
    return jwt.decode(signed, options={"verify_signature": False})


# --- valid ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_fixture_claims_signed_by_pyjwt_verify_and_describe(name):
    claims = fixture_claims(name)
    body = body_of(pyjwt_sign(claims, PKI_MAIN))
    PROVIDER.verify(req(body), ["apple"], OPTIONS, NOW)
    info = PROVIDER.describe(req(body), OPTIONS)
    assert (info.event_id, info.event_type) == (claims["notificationUUID"], name)


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_recorded_fixtures_verify_against_their_test_root(name):
    """Fixture bodies as delivered: signed by PyJWT with a fixed test CA, valid at their signedDate."""
    body = (FIXTURES / f"{name}.json").read_bytes()
    options = options_for(root_certificates_pem=(FIXTURES / "test-root.pem").read_text())
    PROVIDER.verify(req(body), ["apple"], options, NOW)
    assert PROVIDER.describe(req(body), options).event_type == name
    # Another root does not trust them.
    assert reject(body).code == "untrusted_certificate"


@pytest.mark.parametrize("subtype", [None, "INITIAL_BUY", "AUTO_RENEW_DISABLED"])
def test_manual_signer_agrees_with_pyjwt(subtype):
    claims = notification("DID_CHANGE_RENEWAL_STATUS", subtype)
    for signed in (manual_sign(claims, PKI_MAIN), pyjwt_sign(claims, PKI_MAIN)):
        PROVIDER.verify(req(body_of(signed)), ["apple"], OPTIONS, NOW)
        expected = "DID_CHANGE_RENEWAL_STATUS" + (f".{subtype}" if subtype else "")
        assert PROVIDER.describe(req(body_of(signed)), OPTIONS).event_type == expected


def test_sandbox_needs_no_app_apple_id():
    options = options_for(environment="Sandbox", app_apple_id="")
    claims = notification("TEST", environment="Sandbox", app_apple_id=None)
    PROVIDER.verify(req(body_of(pyjwt_sign(claims, PKI_MAIN))), ["apple"], options, NOW)


def test_summary_and_external_purchase_token_carry_the_identity():
    claims = notification("RENEWAL_EXTENSION", "SUMMARY", section="summary")
    PROVIDER.verify(req(body_of(pyjwt_sign(claims, PKI_MAIN))), ["apple"], OPTIONS, NOW)
    token_claims = {
        "notificationType": "EXTERNAL_PURCHASE_TOKEN",
        "subtype": "UNREPORTED",
        "notificationUUID": str(uuid.uuid4()),
        "externalPurchaseToken": {
            "externalPurchaseId": "SANDBOX_b2158121",
            "tokenCreationDate": 1,
            "appAppleId": APP_APPLE_ID,
            "bundleId": BUNDLE_ID,
        },
        "version": "2.0",
        "signedDate": SIGNED_DATE_MS,
    }
    body = body_of(pyjwt_sign(token_claims, PKI_MAIN))
    PROVIDER.verify(req(body), ["apple"], options_for(environment="Sandbox"), NOW)
    assert reject(body).code == "no_matching_secret"  # a SANDBOX purchase id is not Production


def test_secret_is_not_used():
    body = body_of(pyjwt_sign(notification(), PKI_MAIN))
    for secrets in ([], ["anything"], ["old", "new"]):
        PROVIDER.verify(req(body), secrets, OPTIONS, NOW)


def test_rotated_roots():
    new = PKI(name="Test Apple Root CA - G4")
    options = options_for(root_certificates_pem=PKI_MAIN.root_pem() + "\n" + new.root_pem())
    for pki in (PKI_MAIN, new):
        PROVIDER.verify(req(body_of(pyjwt_sign(notification(), pki))), ["apple"], options, NOW)
    assert reject(body_of(pyjwt_sign(notification(), new))).code == "untrusted_certificate"


def test_roots_as_base64_der():
    der = base64.b64encode(PKI_MAIN.root.public_bytes(serialization.Encoding.DER)).decode()
    options = options_for(root_certificates_pem=der)
    PROVIDER.verify(req(body_of(pyjwt_sign(notification(), PKI_MAIN))), ["apple"], options, NOW)


def test_chain_is_checked_at_signed_date_like_the_sdk():
    pki = PKI(not_before=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), not_after=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    options = options_for(pki)
    in_validity = int(dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)
    PROVIDER.verify(req(body_of(pyjwt_sign(notification(signed_date=in_validity), pki))), ["apple"], options, NOW)
    error = reject(body_of(pyjwt_sign(notification(), pki)), options)
    assert error.code == "untrusted_certificate" and "signedDate" in error.detail
    # Without signedDate the time of the request counts.
    assert reject(body_of(pyjwt_sign(notification(signed_date=None), pki)), options).code == "untrusted_certificate"
    PROVIDER.verify(
        req(body_of(pyjwt_sign(notification(signed_date=None), pki))),
        ["apple"],
        options,
        dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp(),
    )


# --- Apple's own verifier agrees -------------------------------------------------------------


def apple_library_verdict(signed: str, root: x509.Certificate, environment: str, app_apple_id: int | None):
    """The notification as Apple's library decodes it, or the status it refuses it with."""
    verifier = SignedDataVerifier(
        [root.public_bytes(serialization.Encoding.DER)],
        False,  # no OCSP: the chain is checked at the payload's signedDate, as the provider does
        Environment(environment),
        BUNDLE_ID,
        app_apple_id,
    )
    try:
        return verifier.verify_and_decode_notification(signed)
    except VerificationException as exc:
        return exc.status


def _swap_claims(signed: str, **changes) -> str:
    header, payload, signature = signed.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["data"].update(changes)
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


_EXPIRED = PKI(not_before=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), not_after=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
_NO_LEAF_OID, _NO_INTERMEDIATE_OID, _OTHER_ROOT = PKI(leaf_oid=None), PKI(intermediate_oid=None), PKI()
_IN_EXPIRED_VALIDITY = int(dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    "signed, pki, environment, accepted",
    [
        (lambda: pyjwt_sign(notification(), PKI_MAIN), PKI_MAIN, "Production", True),
        (lambda: manual_sign(notification("SUBSCRIBED", "RESUBSCRIBE"), PKI_MAIN), PKI_MAIN, "Production", True),
        (lambda: pyjwt_sign(notification("TEST", environment="Sandbox"), PKI_MAIN), PKI_MAIN, "Sandbox", True),
        (lambda: pyjwt_sign(notification(signed_date=_IN_EXPIRED_VALIDITY), _EXPIRED), _EXPIRED, "Production", True),
        (lambda: pyjwt_sign(notification(), _EXPIRED), _EXPIRED, "Production", False),
        (lambda: pyjwt_sign(notification(), _NO_LEAF_OID), _NO_LEAF_OID, "Production", False),
        (lambda: pyjwt_sign(notification(), _NO_INTERMEDIATE_OID), _NO_INTERMEDIATE_OID, "Production", False),
        (lambda: pyjwt_sign(notification(), _OTHER_ROOT), PKI_MAIN, "Production", False),
        (lambda: pyjwt_sign(notification(bundle_id="com.other.app"), PKI_MAIN), PKI_MAIN, "Production", False),
        (lambda: pyjwt_sign(notification(app_apple_id=42), PKI_MAIN), PKI_MAIN, "Production", False),
        (lambda: pyjwt_sign(notification(environment="Sandbox"), PKI_MAIN), PKI_MAIN, "Production", False),
        (lambda: _swap_claims(pyjwt_sign(notification(), PKI_MAIN), status=2), PKI_MAIN, "Production", False),
        (
            lambda: manual_sign(notification(), PKI_MAIN, key=ec.generate_private_key(ec.SECP256R1())),
            PKI_MAIN,
            "Production",
            False,
        ),
        (
            lambda: manual_sign(notification(), PKI_MAIN, header={"alg": "ES256", "x5c": PKI_MAIN.x5c()[:2]}),
            PKI_MAIN,
            "Production",
            False,
        ),
    ],
    ids=[
        "pyjwt",
        "hand-rolled signer",
        "sandbox without appAppleId",
        "chain valid at signedDate",
        "chain expired at signedDate",
        "leaf without Apple's OID",
        "intermediate without Apple's OID",
        "another root",
        "another bundleId",
        "another appAppleId",
        "another environment",
        "claims changed after signing",
        "signed by a key outside the chain",
        "two certificates",
    ],
)
def test_apples_library_and_the_provider_agree(signed, pki, environment, accepted):
    signed = signed()
    app_apple_id = APP_APPLE_ID if environment == "Production" else None
    verdict = apple_library_verdict(signed, pki.root, environment, app_apple_id)
    options = options_for(pki, environment=environment, app_apple_id=str(app_apple_id or ""))
    if accepted:
        assert not isinstance(verdict, int), f"Apple's library refused it: {verdict!r}"
        PROVIDER.verify(req(body_of(signed)), ["apple"], options, NOW)
        assert PROVIDER.describe(req(body_of(signed)), options).event_id == verdict.notificationUUID
    else:
        assert isinstance(verdict, int), "Apple's library accepted it"
        reject(body_of(signed), options)


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_recorded_fixtures_are_accepted_by_apples_library(name):
    signed = json.loads((FIXTURES / f"{name}.json").read_bytes())["signedPayload"]
    root = x509.load_pem_x509_certificate((FIXTURES / "test-root.pem").read_bytes())
    decoded = apple_library_verdict(signed, root, "Production", APP_APPLE_ID)
    assert not isinstance(decoded, int), f"Apple's library refused it: {decoded!r}"
    assert decoded.notificationUUID == fixture_claims(name)["notificationUUID"]


# --- rejections ---------------------------------------------------------------------------


def test_tampered_claims():
    signed = pyjwt_sign(notification(), PKI_MAIN)
    header, payload, signature = signed.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["data"]["status"] = 2
    forged = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    assert reject(body_of(forged)).code == "no_matching_secret"


def test_tampered_signature_byte():
    signed = pyjwt_sign(notification(), PKI_MAIN)
    header, payload, signature = signed.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 1
    assert reject(body_of(f"{header}.{payload}.{b64url(bytes(raw))}")).code == "no_matching_secret"


def test_signed_by_another_key_with_apples_chain():
    rogue = ec.generate_private_key(ec.SECP256R1())
    assert reject(body_of(manual_sign(notification(), PKI_MAIN, key=rogue))).code == "no_matching_secret"


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b"{}", b'{"signedPayload": ""}', b'{"signedPayload": 5}', b'{"signed_payload": "a.b.c"}'],
)
def test_missing_signed_payload(body):
    assert reject(body).code == "missing_signature"


def test_repeated_keys_are_refused():
    # A second signedPayload (or claim) would be read by some parsers instead of the verified one.
    signed = pyjwt_sign(notification(), PKI_MAIN)
    envelope = f'{{"signedPayload": "{signed}", "signedPayload": "forged"}}'.encode()
    refused = reject(envelope)
    assert (refused.code, refused.detail) == ("bad_format", "the body has the key 'signedPayload' twice")
    header, payload, signature = signed.split(".")
    claims_text = base64.urlsafe_b64decode(payload + "==").decode()
    repeated = claims_text[:-1] + ', "notificationType": "REFUND"}'
    refused = reject(body_of(f"{header}.{b64url(repeated.encode())}.{signature}"))
    assert (refused.code, refused.detail) == ("bad_format", "signedPayload has the key 'notificationType' twice")


def test_malformed_jws():
    good = pyjwt_sign(notification(), PKI_MAIN)
    header, payload, signature = good.split(".")
    cases = [
        "a.b",
        good + ".x",
        f"!!.{payload}.{signature}",
        f"{b64url(b'[1]')}.{payload}.{signature}",
        f"{header}.{payload}.{signature[:-4]}",
        f"{header}.{payload}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'Q'}",  # non-canonical or wrong
        manual_sign(notification(), PKI_MAIN, header={"alg": "ES256", "x5c": PKI_MAIN.x5c()[:2]}),
        manual_sign(notification(), PKI_MAIN, header={"alg": "ES256", "x5c": PKI_MAIN.x5c() + PKI_MAIN.x5c()[:1]}),
        manual_sign(notification(), PKI_MAIN, header={"alg": "ES256", "x5c": ["not base64!", *PKI_MAIN.x5c()[1:]]}),
        manual_sign(notification(), PKI_MAIN, header={"alg": "ES256", "x5c": [b64url(b"x" * 30), *PKI_MAIN.x5c()[1:]]}),
        manual_sign(notification(), PKI_MAIN, header={"alg": "ES256"}),
        manual_sign(notification(), PKI_MAIN, header={"alg": "none", "x5c": PKI_MAIN.x5c()}),
        manual_sign(notification(), PKI_MAIN, header={"alg": "HS256", "x5c": PKI_MAIN.x5c()}),
        manual_sign(notification(), PKI_MAIN, header={"x5c": PKI_MAIN.x5c()}),
    ]
    for signed in cases:
        error = reject(body_of(signed))
        assert error.code in {"bad_format", "no_matching_secret"}, (signed[:40], error)


def test_pyjwt_hs256_token_is_rejected():
    signed = jwt.encode(notification(), "s" * 32, algorithm="HS256", headers={"x5c": PKI_MAIN.x5c()})
    assert reject(body_of(signed)).code == "bad_format"


def test_wrong_root_and_self_made_chains():
    other = PKI()
    assert reject(body_of(pyjwt_sign(notification(), other))).code == "untrusted_certificate"
    # x5c[2] is not trusted just because it is in the header.
    mixed = other.x5c()[:2] + PKI_MAIN.x5c()[2:]
    assert reject(
        body_of(jwt.encode(notification(), other.leaf_key, algorithm="ES256", headers={"x5c": mixed}))
    ).code == ("untrusted_certificate")


def test_intermediate_configured_as_root_is_refused():
    options = options_for(root_certificates_pem=PKI_MAIN.intermediate.public_bytes(serialization.Encoding.PEM).decode())
    error = reject(body_of(pyjwt_sign(notification(), PKI_MAIN)), options)
    assert error.code == "untrusted_certificate"


@pytest.mark.parametrize("role", ["leaf", "intermediate"])
def test_apple_oids_are_required(role):
    pki = PKI(**({"leaf_oid": None} if role == "leaf" else {"intermediate_oid": None}))
    error = reject(body_of(pyjwt_sign(notification(), pki)), options_for(pki))
    assert error.code == "untrusted_certificate" and role in error.detail


def test_oids_swapped_are_refused():
    pki = PKI(leaf_oid=INTERMEDIATE_OID, intermediate_oid=LEAF_OID)
    assert reject(body_of(pyjwt_sign(notification(), pki)), options_for(pki)).code == "untrusted_certificate"


def test_app_identity_checks():
    assert "bundleId" in reject(body_of(pyjwt_sign(notification(bundle_id="com.other.app"), PKI_MAIN))).detail
    assert "appAppleId" in reject(body_of(pyjwt_sign(notification(app_apple_id=42), PKI_MAIN))).detail
    error = reject(body_of(pyjwt_sign(notification(environment="Sandbox"), PKI_MAIN)))
    assert error.code == "no_matching_secret" and "environment" in error.detail
    sandbox = options_for(environment="Sandbox")
    assert "environment" in reject(body_of(pyjwt_sign(notification(), PKI_MAIN)), sandbox).detail
    no_identity = notification()
    del no_identity["data"]
    assert reject(body_of(pyjwt_sign(no_identity, PKI_MAIN))).code == "no_matching_secret"
    # Options saved without app_apple_id (older data) in Production never accept.
    stale = {k: v for k, v in OPTIONS.items() if k != "app_apple_id"}
    assert reject(body_of(pyjwt_sign(notification(), PKI_MAIN)), stale).code == "no_matching_secret"


def test_no_usable_roots():
    body = body_of(pyjwt_sign(notification(), PKI_MAIN))
    for roots in ("", "garbage", None):
        error = reject(body, {**OPTIONS, "root_certificates_pem": roots})
        assert error.code == "untrusted_certificate"


def test_absurd_signed_date():
    for signed_date in (10**30, -(10**30)):
        assert reject(body_of(pyjwt_sign(notification(signed_date=signed_date), PKI_MAIN))).code in {
            "bad_format",
            "untrusted_certificate",
        }


@pytest.mark.parametrize("signed_date", [10**400, -(10**400)])
def test_signed_date_past_a_float_is_refused_not_an_error(signed_date):
    # A valid JSON number whose milliseconds-to-seconds division does not fit a float: read before the
    # signature is checked, it must be a refusal (401), never an OverflowError (500).
    body = body_of(pyjwt_sign(notification(signed_date=signed_date), PKI_MAIN))
    assert reject(body).code == "bad_format"
    assert PROVIDER.signed_time(req(body), OPTIONS) is None


# --- describe, sign, options ---------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"notificationUUID": "u"},
        {"notificationType": "DID_RENEW"},
        {"notificationUUID": 5, "notificationType": "X"},
    ],
)
def test_describe_malformed(claims):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body_of(pyjwt_sign(claims, PKI_MAIN))), OPTIONS)
    for body in (b"nope", b'{"signedPayload": "a.b"}'):
        with pytest.raises(MalformedPayload):
            PROVIDER.describe(req(body), OPTIONS)


def test_sign_is_not_possible():
    with pytest.raises(NotImplementedError, match="Apple"):
        PROVIDER.sign(b"{}", "apple", OPTIONS, NOW)


def test_options():
    assert OPTIONS["app_apple_id"] == APP_APPLE_ID and OPTIONS["environment"] == "Production"
    for missing in ("bundle_id", "environment", "root_certificates_pem"):
        with pytest.raises(InvalidOptions):
            options_for(**{missing: ""})
    with pytest.raises(InvalidOptions):
        options_for(app_apple_id="")  # required in Production
    with pytest.raises(InvalidOptions):
        options_for(environment="Xcode")  # signature-less environments are not offered
    with pytest.raises(InvalidOptions):
        options_for(root_certificates_pem="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
    with pytest.raises(InvalidOptions):
        options_for(bundle_id="   ")
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_options({**{k: str(v) for k, v in OPTIONS.items()}, "shared_secret": "x"})
    assert PROVIDER.clean_secret(" apple ") == "apple"
    with pytest.raises(InvalidOptions):
        PROVIDER.clean_secret("  ")


# --- properties -----------------------------------------------------------------------------

SIGNED_BODY = body_of(pyjwt_sign(notification("SUBSCRIBED", "RESUBSCRIBE"), PKI_MAIN))


def _mutated_jws():
    header, payload, signature = SIGNED_BODY.decode()[len('{"signedPayload":"') : -2].split(".")
    parts = st.sampled_from([header, payload, signature, "", "e30", b64url(b'{"alg":"ES256","x5c":[]}')])
    return st.tuples(parts, parts, parts).map(lambda p: body_of(".".join(p)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: json.dumps({"signedPayload": t}).encode()),
        _mutated_jws(),
        st.just(SIGNED_BODY),
    ),
    options=st.one_of(
        st.just(OPTIONS),
        st.just({}),
        st.fixed_dictionaries({"environment": st.text(max_size=5), "root_certificates_pem": st.text(max_size=20)}),
    ),
)
def test_random_bodies_only_raise_verification_error(body, options):
    try:
        PROVIDER.verify(req(body), ["apple"], options, NOW)
    except VerificationError as exc:
        assert exc.code in CODES and exc.detail
    else:
        assert body == SIGNED_BODY and options is OPTIONS
    try:
        info = PROVIDER.describe(req(body), options)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str) and isinstance(info.event_id, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(min_value=0, max_value=len(SIGNED_BODY) - 1), byte=st.integers(min_value=0, max_value=255))
def test_one_byte_change_to_a_signed_body_is_rejected(index, byte):
    if byte == SIGNED_BODY[index]:
        byte = (byte + 1) % 256
    changed = SIGNED_BODY[:index] + bytes([byte]) + SIGNED_BODY[index + 1 :]
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(changed), ["apple"], OPTIONS, NOW)
