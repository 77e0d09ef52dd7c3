"""Apple App Store Server Notifications V2: a JWS (ES256, x5c chain) in the body's ``signedPayload``.

Checks as in apple/app-store-server-library-python's ``SignedDataVerifier`` with online
checks off (providers.md §11):

1. the JWS header's ``alg`` is ES256 and ``x5c`` holds exactly 3 base64 DER certificates;
2. leaf → intermediate (``x5c[1]``) chains to one of the source's pinned roots (Apple Root CA - G3),
   evaluated at the payload's ``signedDate`` (at "now" when it has none);
3. the leaf carries OID 1.2.840.113635.100.6.11.1 and the intermediate 1.2.840.113635.100.6.2.1;
4. the JWS signature (raw r‖s, 64 bytes) verifies with the leaf's P-256 key;
5. ``bundleId`` and ``environment`` (and ``appAppleId`` in Production) of ``data`` (or ``summary``,
   or ``externalPurchaseToken``) match the source's options.

Apple has no shared secret and Apple's root is public: the roots are an option
(``root_certificates_pem``), and the stored secret is not used for verification.
No network is needed (OCSP, the SDK's optional online check, is not done).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from .base import (
    EventInfo,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
)

LEAF_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.11.1")
INTERMEDIATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.2.1")
ENVIRONMENTS = ("Production", "Sandbox")
MAX_ROOTS = 16

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _b64url(text: str) -> bytes:
    """Strict unpadded base64url: a text whose unused low bits are set (another spelling of the same bytes) is refused."""
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        raise ValueError("not canonical base64url")
    return data


class _RepeatedKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins: the envelope, header or claims we verify
    # must be the ones every receiver of the stored body reads, so a repeated key is refused.
    value = {}
    for key, item in pairs:
        if key in value:
            raise _RepeatedKey(key)
        value[key] = item
    return value


def _json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data, object_pairs_hook=_refuse_duplicate_keys)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


@functools.lru_cache(maxsize=32)
def load_root_certificates(text: str) -> tuple[x509.Certificate, ...]:
    """Roots from PEM text, or from base64 DER (what ``base64 AppleRootCA-G3.cer`` prints); ValueError if none."""
    roots: list[x509.Certificate] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blocks = _PEM_BLOCK.findall(text)
        if blocks:
            for block in blocks:
                roots.append(x509.load_pem_x509_certificate(block.encode("ascii", "strict")))
        else:
            for token in re.split(r"[\s,]+", text.strip()):
                if token:
                    roots.append(x509.load_der_x509_certificate(base64.b64decode(token, validate=True)))
    if not roots:
        raise ValueError("no certificate")
    if len(roots) > MAX_ROOTS:
        raise ValueError("too many certificates")
    return tuple(roots)


def _roots(options: Mapping[str, Any]) -> tuple[x509.Certificate, ...]:
    text = options.get("root_certificates_pem")
    if not isinstance(text, str) or not text.strip():
        return ()
    try:
        return load_root_certificates(text)
    except Exception:  # anything unreadable means no usable root
        return ()


def _require_ca(policy: Any, certificate: x509.Certificate, extension: Any) -> None:
    if extension is None or not extension.ca:
        raise ValueError("basicConstraints.cA is not set")


def _key_cert_sign_if_present(policy: Any, certificate: x509.Certificate, extension: Any) -> None:
    if extension is not None and not extension.key_cert_sign:
        raise ValueError("keyUsage does not allow certificate signing")


CA_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _require_ca)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _key_cert_sign_if_present)
)
EE_POLICY = ExtensionPolicy.permit_all()


def decode_signed_payload(body: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signing input, signature) of the body's signedPayload, without verifying anything.

    Raises VerificationError (missing_signature / bad_format).
    """
    try:
        envelope = _json_object(body)
    except _RepeatedKey as exc:
        raise VerificationError("bad_format", f"the body has the key {str(exc)[:50]!r} twice") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise VerificationError("missing_signature", 'the body is not JSON with a "signedPayload"') from None
    signed = envelope.get("signedPayload")
    if not isinstance(signed, str) or not signed:
        raise VerificationError("missing_signature", 'the body has no "signedPayload" string')
    parts = signed.split(".")
    if len(parts) != 3:
        raise VerificationError("bad_format", "signedPayload is not a compact JWS (three dot-separated parts)")
    try:
        header = _json_object(_b64url(parts[0]))
        claims = _json_object(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except _RepeatedKey as exc:
        raise VerificationError("bad_format", f"signedPayload has the key {str(exc)[:50]!r} twice") from None
    except (ValueError, UnicodeDecodeError, RecursionError, binascii.Error):
        raise VerificationError("bad_format", "signedPayload's parts are not base64url JSON") from None
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return header, claims, signing_input, signature


def _app_identity(claims: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """(bundleId, appAppleId, environment) as the SDK reads them."""
    for section in ("data", "summary"):
        value = claims.get(section)
        if isinstance(value, dict):
            return value.get("bundleId"), value.get("appAppleId"), value.get("environment")
    token = claims.get("externalPurchaseToken")
    if isinstance(token, dict):
        purchase_id = token.get("externalPurchaseId")
        environment = "Sandbox" if isinstance(purchase_id, str) and purchase_id.startswith("SANDBOX") else "Production"
        return token.get("bundleId"), token.get("appAppleId"), environment
    return None, None, None


def _short(value: Any) -> str:
    return repr(value)[:80]


class AppleAppStoreProvider(Provider):
    """App Store Server Notifications V2 (signed JWS payloads)."""

    kind = "apple_app_store"
    label = "Apple App Store Server Notifications"
    cannot_sign_reason = (
        "Apple signs App Store notifications with its own certificates; Hookline cannot sign test requests. "
        "Use App Store Connect's 'Request a Test Notification' (Sandbox) instead."
    )
    secret_help = (
        "Apple has no shared secret: notifications are signed by Apple's certificates and checked against the "
        "root certificate option. Enter any placeholder here (e.g. 'apple'); it is not used. The bundle id and "
        "Apple ID are in App Store Connect → your app → App Information."
    )
    secret_generated_by_us = False
    uses_secret = False
    options = (
        ProviderOption(
            name="bundle_id",
            label="Bundle ID",
            help_text="The app's bundle identifier, e.g. com.example.app; notifications for other apps are rejected.",
            required=True,
        ),
        ProviderOption(
            name="environment",
            label="Environment",
            help_text="Production or Sandbox: notifications from the other environment are rejected (use one source each).",
            required=True,
            kind="choice",
            choices=ENVIRONMENTS,
        ),
        ProviderOption(
            name="app_apple_id",
            label="Apple ID of the app",
            help_text="The numeric Apple ID (App Store Connect → App Information); required in Production.",
            kind="int",
        ),
        ProviderOption(
            name="root_certificates_pem",
            label="Trusted root certificate(s)",
            help_text=(
                "Apple Root CA - G3 from apple.com/certificateauthority, as PEM (or base64 of the .cer file). "
                "Several roots may be given."
            ),
            required=True,
        ),
    )
    docs_signed_time = "signedDate inside the JWS"
    docs_verifies = (
        'Body {"signedPayload": JWS}: header alg must be ES256 and x5c exactly 3 certificates; leaf → x5c[1] must '
        "chain to one of the `root_certificates_pem` roots (Apple Root CA - G3), valid at the payload's signedDate; "
        "the leaf must carry OID 1.2.840.113635.100.6.11.1 and the intermediate 1.2.840.113635.100.6.2.1; the "
        "ES256 signature must verify with the leaf key; data.bundleId (or summary / externalPurchaseToken) must equal "
        "`bundle_id`, data.environment `environment`, and data.appAppleId `app_apple_id` in Production. No OCSP. "
        "The nested signedTransactionInfo/signedRenewalInfo JWS are forwarded as they are (verify them the same way "
        "if you rely on them). The source's secret is not used, and the test sender cannot sign (Apple's private key)."
    )
    event_id_from = "notificationUUID in the signed payload"
    docs_event_id = "notificationUUID of the decoded payload (the same on every retry)"
    docs_event_type = 'notificationType, plus "." and subtype when there is one, e.g. SUBSCRIBED.INITIAL_BUY, DID_RENEW'

    def clean_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        cleaned = super().clean_options(raw)
        cleaned["bundle_id"] = cleaned["bundle_id"].strip()
        if not cleaned["bundle_id"]:
            raise InvalidOptions("option 'bundle_id' is required")
        if cleaned["environment"] == "Production" and cleaned["app_apple_id"] is None:
            raise InvalidOptions("option 'app_apple_id' is required in Production")
        try:
            load_root_certificates(cleaned["root_certificates_pem"])
        except Exception:
            raise InvalidOptions(
                f"option 'root_certificates_pem' must hold 1 to {MAX_ROOTS} certificates as PEM (or base64 DER)"
            ) from None
        return cleaned

    def clean_secret(self, secret: str) -> str:
        """Any non-blank placeholder: Apple notifications are verified without a shared secret."""
        return super().clean_secret(secret)

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Verify the JWS and its certificate chain, then the app identity; ``secrets`` are not used."""
        header, claims, signing_input, signature = decode_signed_payload(request.body)
        if header.get("alg") != "ES256":
            raise VerificationError("bad_format", f"the JWS alg is {_short(header.get('alg'))}, not ES256")
        x5c = header.get("x5c")
        if not isinstance(x5c, list) or len(x5c) != 3 or not all(isinstance(c, str) for c in x5c):
            raise VerificationError("bad_format", "the JWS x5c header must hold exactly 3 certificates")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
        except Exception:  # ValueError, binascii.Error, cryptography's InvalidVersion…
            raise VerificationError("bad_format", "an x5c entry is not a base64 DER certificate") from None
        if len(signature) != 64:
            raise VerificationError("bad_format", "the ES256 signature is not 64 bytes (r‖s)")

        roots = _roots(options)
        if not roots:
            raise VerificationError("untrusted_certificate", "the source has no usable root certificate configured")
        signed_date = claims.get("signedDate")
        when = now
        try:
            if isinstance(signed_date, (int, float)) and not isinstance(signed_date, bool):
                # JSON allows any integer, and this is read before the signature is checked: 10**400 ms
                # overflows the division.
                when = signed_date / 1000
            validation_time = dt.datetime.fromtimestamp(when, tz=dt.UTC)
        except (OverflowError, ValueError, OSError):
            raise VerificationError("bad_format", "signedDate is not a usable time") from None
        leaf, intermediate = chain[0], chain[1]
        try:
            verifier = (
                PolicyBuilder()
                .store(Store(list(roots)))
                .time(validation_time)
                .extension_policies(ca_policy=CA_POLICY, ee_policy=EE_POLICY)
                .build_client_verifier()
            )
            built = verifier.verify(leaf, [intermediate]).chain
        except Exception as exc:  # cryptography's VerificationError, or odd certificates
            reason = (
                "a certificate is not valid at signedDate"
                if "validation time" in str(exc)
                else "it does not chain to a configured root"
            )
            raise VerificationError("untrusted_certificate", f"the x5c chain is not trusted: {reason}") from None
        if len(built) != 3 or built[1] != intermediate:
            raise VerificationError(
                "untrusted_certificate", "the x5c chain must be leaf → intermediate → configured root"
            )
        for certificate, oid, role in ((leaf, LEAF_OID, "leaf"), (intermediate, INTERMEDIATE_OID, "intermediate")):
            try:
                certificate.extensions.get_extension_for_oid(oid)
            except (x509.ExtensionNotFound, ValueError):
                raise VerificationError(
                    "untrusted_certificate", f"the {role} certificate lacks Apple's OID {oid.dotted_string}"
                ) from None
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise VerificationError("untrusted_certificate", "the leaf certificate does not hold a P-256 key")
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        try:
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise VerificationError(
                "no_matching_secret", "the JWS signature does not verify with the leaf certificate's key"
            ) from None

        bundle_id, app_apple_id, environment = _app_identity(claims)
        expected_environment = options.get("environment")
        if bundle_id != options.get("bundle_id"):
            raise VerificationError(
                "no_matching_secret",
                f"the notification is for bundleId {_short(bundle_id)}, not the source's bundle_id",
            )
        if expected_environment == "Production" and (
            options.get("app_apple_id") is None or app_apple_id != options.get("app_apple_id")
        ):
            raise VerificationError(
                "no_matching_secret",
                f"the notification is for appAppleId {_short(app_apple_id)}, not the source's app_apple_id",
            )
        if environment != expected_environment:
            raise VerificationError(
                "no_matching_secret",
                f"the notification is from environment {_short(environment)}, the source expects {_short(expected_environment)}",
            )

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        try:
            claims = decode_signed_payload(request.body)[1]
        except VerificationError:
            return None
        signed_date = claims.get("signedDate")
        if isinstance(signed_date, bool) or not isinstance(signed_date, (int, float)) or signed_date != signed_date:
            return None
        try:
            return signed_date / 1000
        except OverflowError:  # an integer past a float's range
            return None

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        try:
            _, claims, _, _ = decode_signed_payload(request.body)
        except VerificationError as exc:
            raise MalformedPayload(exc.detail) from None
        uuid, notification_type, subtype = (
            claims.get("notificationUUID"),
            claims.get("notificationType"),
            claims.get("subtype"),
        )
        if not isinstance(uuid, str) or not uuid:
            raise MalformedPayload("the notification has no string 'notificationUUID'")
        if not isinstance(notification_type, str) or not notification_type:
            raise MalformedPayload("the notification has no string 'notificationType'")
        if isinstance(subtype, str) and subtype:
            return EventInfo(event_id=uuid, event_type=f"{notification_type}.{subtype}")
        return EventInfo(event_id=uuid, event_type=notification_type)
