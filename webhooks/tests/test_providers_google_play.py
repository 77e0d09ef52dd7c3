"""Google Play RTDN via Pub/Sub push: OIDC tokens signed with PyJWT (RS256) by our own key, whose
certificate (or JWK) the fake fetcher serves in Google's formats; google-auth's verifier cross-checks
that the same tokens are what Google's own library accepts."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

import google.auth.exceptions
import google.oauth2.id_token
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhooks.providers import google_play as google_module
from webhooks.providers.base import InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.google_play import CERTS_URL, GooglePlayProvider, notification_type

FIXTURES = Path(__file__).parent / "fixtures" / "google_play"
EVENT_TYPES = [
    "subscriptionNotification.4",
    "subscriptionNotification.2",
    "oneTimeProductNotification.1",
    "voidedPurchaseNotification",
    "testNotification",
]
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret", "untrusted_certificate"}
AUDIENCE = "https://hookline.example.com/in/3f9c2b7a/"
EMAIL = "rtdn-push@hookline-demo.iam.gserviceaccount.com"
NOW = 1_751_328_000
KID = "a3b1c2d4e5f60718293a4b5c6d7e8f9012345678"
OLD_KID = "0f9e8d7c6b5a49382716a5b4c3d2e1f0aabbccdd"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate_pem(key: rsa.RSAPrivateKey) -> str:
    """A self-signed certificate like the ones at googleapis.com/oauth2/v1/certs."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "federated-signon.system.gserviceaccount.com")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2045, 1, 1, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


KEY, OLD_KEY, ROGUE_KEY = _rsa_key(), _rsa_key(), _rsa_key()
CERTS = {KID: _certificate_pem(KEY), OLD_KID: _certificate_pem(OLD_KEY)}


class FakeFetcher:
    """Serves a certificate document for CERTS_URL; records calls; ``fail`` simulates an outage."""

    def __init__(self, document: dict | bytes | None = None):
        self.document = CERTS if document is None else document
        self.calls: list[str] = []
        self.fail = False

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if self.fail:
            raise OSError("network down")
        return self.document if isinstance(self.document, bytes) else json.dumps(self.document).encode()


class FakeGoogleAuthRequest:
    """google.auth.transport.Request stand-in serving the same certificates to google-auth."""

    def __init__(self, document: dict):
        self.document = document

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        document = self.document

        class Response:
            status = 200
            headers = {}
            data = json.dumps(document).encode()

        return Response()


def provider(fetcher: FakeFetcher | None = None) -> GooglePlayProvider:
    return GooglePlayProvider(fetcher=fetcher or FakeFetcher())


PROVIDER = provider()
OPTIONS = PROVIDER.clean_options({"audience": AUDIENCE, "service_account_email": EMAIL})


def claims_for(now: float = NOW, **overrides) -> dict:
    claims = {
        "aud": AUDIENCE,
        "azp": "112233445566778899000",
        "email": EMAIL,
        "email_verified": True,
        "exp": int(now) + 3600,
        "iat": int(now),
        "iss": "https://accounts.google.com",
        "sub": "112233445566778899000",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def token(claims: dict | None = None, *, key=KEY, kid: str | None = KID, algorithm="RS256", headers=None) -> str:
    """An OIDC token as Pub/Sub sends it, signed by PyJWT."""
    extra = {"kid": kid} if kid is not None else {}
    extra.update(headers or {})
    return jwt.encode(claims if claims is not None else claims_for(), key, algorithm=algorithm, headers=extra)


def req(body: bytes, authorization: str | None) -> InboundRequest:
    headers = {
        "content-type": "application/json",
        "user-agent": "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)",
    }
    if authorization is not None:
        headers["authorization"] = authorization
    return InboundRequest(body=body, headers=headers)


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


BODY = fixture("subscriptionNotification.4")


def reject(request, options=None, now=NOW, prov=None) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        (prov or PROVIDER).verify(request, ["unused"], OPTIONS if options is None else options, now)
    assert info.value.code in CODES and info.value.detail
    credential = (request.header("authorization") or "").partition(" ")[2].strip()
    assert len(credential) < 8 or credential not in info.value.detail  # the bearer token never leaks
    assert "eyJ" not in info.value.detail
    return info.value


# --- valid ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_fixtures_verify_and_describe(name):
    body = fixture(name)
    request = req(body, f"Bearer {token()}")
    PROVIDER.verify(request, ["unused"], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert info.event_type == name
    assert info.event_id == json.loads(body)["message"]["messageId"]


def test_google_auth_accepts_what_we_accept():
    """Cross-check with google-auth's own verifier (real time: it cannot be given a clock)."""
    now = time.time()
    good = token(claims_for(now))
    claims = google.oauth2.id_token.verify_oauth2_token(good, FakeGoogleAuthRequest(CERTS), audience=AUDIENCE)
    assert claims["email"] == EMAIL
    PROVIDER.verify(req(BODY, f"Bearer {good}"), [], OPTIONS, now)
    # Tokens google-auth refuses are refused here too.
    bad_tokens = [
        token(claims_for(now, aud="https://other.example.com/")),
        token(claims_for(now, iss="https://evil.example.com")),
        token(claims_for(now, exp=int(now) - 3600, iat=int(now) - 7200)),
        token(claims_for(now), key=ROGUE_KEY),
    ]
    for bad in bad_tokens:
        with pytest.raises((ValueError, google.auth.exceptions.GoogleAuthError)):
            google.oauth2.id_token.verify_oauth2_token(bad, FakeGoogleAuthRequest(CERTS), audience=AUDIENCE)
        reject(req(BODY, f"Bearer {bad}"), now=now)


def test_jwks_document_and_http_issuer():
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    fetcher = FakeFetcher({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}, {"kty": "EC", "kid": "x"}]})
    request = req(BODY, f"Bearer {token(claims_for(iss='accounts.google.com'))}")
    provider(fetcher).verify(request, [], OPTIONS, NOW)
    # google-auth reads the same JWKS.
    now = time.time()
    google.oauth2.id_token.verify_oauth2_token(
        token(claims_for(now)), FakeGoogleAuthRequest(fetcher.document), audience=AUDIENCE
    )


def test_audience_list_email_case_and_string_email_verified():
    request = req(BODY, f"Bearer {token(claims_for(aud=['x', AUDIENCE], email=EMAIL.upper(), email_verified='true'))}")
    PROVIDER.verify(request, [], OPTIONS, NOW)


def test_bearer_scheme_is_case_insensitive():
    PROVIDER.verify(req(BODY, f"bearer {token()}"), [], OPTIONS, NOW)


def test_rotated_google_keys_and_refetch_on_unknown_kid(monkeypatch):
    fetcher = FakeFetcher({OLD_KID: CERTS[OLD_KID]})
    prov = provider(fetcher)
    prov.verify(req(BODY, f"Bearer {token(key=OLD_KEY, kid=OLD_KID)}"), [], OPTIONS, NOW)
    assert len(fetcher.calls) == 1
    fetcher.document = CERTS  # Google publishes the new key
    # Within a minute of the last fetch an unknown kid is refused without asking Google again…
    assert reject(req(BODY, f"Bearer {token()}"), prov=prov).code == "no_matching_secret"
    assert len(fetcher.calls) == 1
    # …after that, it triggers one refetch and the new key is used.
    clock = google_module._clock()
    monkeypatch.setattr(google_module, "_clock", lambda: clock + google_module.MIN_FETCH_INTERVAL + 1)
    prov.verify(req(BODY, f"Bearer {token()}"), [], OPTIONS, NOW)
    assert len(fetcher.calls) == 2
    # Both keys are known now: no more fetches.
    prov.verify(req(BODY, f"Bearer {token(key=OLD_KEY, kid=OLD_KID)}"), [], OPTIONS, NOW)
    prov.verify(req(BODY, f"Bearer {token()}"), [], OPTIONS, NOW)
    assert len(fetcher.calls) == 2


def test_unknown_kids_do_not_hammer_google():
    fetcher = FakeFetcher()
    prov = provider(fetcher)
    for n in range(5):
        error = reject(req(BODY, f"Bearer {token(key=ROGUE_KEY, kid=f'rogue{n}')}"), prov=prov)
        assert error.code == "no_matching_secret"
    assert len(fetcher.calls) == 1


def test_secrets_are_not_used():
    request = req(BODY, f"Bearer {token()}")
    for secrets in ([], ["placeholder"], ["old", "new"]):
        PROVIDER.verify(request, secrets, OPTIONS, NOW)


def test_certificates_are_cached_and_stale_keys_survive_an_outage(monkeypatch):
    fetcher = FakeFetcher()
    prov = provider(fetcher)
    prov.verify(req(BODY, f"Bearer {token()}"), [], OPTIONS, NOW)
    prov.verify(req(BODY, f"Bearer {token()}"), [], OPTIONS, NOW)
    assert len(fetcher.calls) == 1
    clock = google_module._clock()
    monkeypatch.setattr(google_module, "_clock", lambda: clock + google_module.CACHE_TTL + 10)
    fetcher.fail = True
    prov.verify(req(BODY, f"Bearer {token()}"), [], OPTIONS, NOW)  # stale keys during the outage
    assert len(fetcher.calls) == 2
    monkeypatch.setattr(
        google_module, "_clock", lambda: clock + google_module.CACHE_TTL + google_module.STALE_GRACE + 100
    )
    assert reject(req(BODY, f"Bearer {token()}"), prov=prov).code == "untrusted_certificate"


# --- rejections ---------------------------------------------------------------------------


def test_missing_authorization():
    error = reject(req(BODY, None))
    assert error.code == "missing_signature" and "Authorization" in error.detail
    assert reject(req(BODY, "  ")).code == "missing_signature"


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer abc",
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer !!.??.**",
        "Bearer e30.e30.",
        "Bearer W10.e30.AAAA",
        "Token " + "x" * 10,
    ],
)
def test_malformed_authorization(value):
    assert reject(req(BODY, value)).code == "bad_format"


def test_wrong_algorithms_and_missing_kid():
    assert reject(req(BODY, f"Bearer {token(algorithm='HS256', key='k' * 32)}")).code == "bad_format"
    assert reject(req(BODY, f"Bearer {token(algorithm='RS512')}")).code == "bad_format"
    assert reject(req(BODY, f"Bearer {token(kid=None)}")).code == "bad_format"
    ec_key = __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ec"])
    es = jwt.encode(
        claims_for(), ec_key.generate_private_key(ec_key.SECP256R1()), algorithm="ES256", headers={"kid": KID}
    )
    assert reject(req(BODY, f"Bearer {es}")).code == "bad_format"
    unsigned = jwt.encode(claims_for(), None, algorithm="none", headers={"kid": KID})
    assert reject(req(BODY, f"Bearer {unsigned}")).code == "bad_format"


def test_signed_by_another_key():
    assert reject(req(BODY, f"Bearer {token(key=ROGUE_KEY)}")).code == "no_matching_secret"


def test_tampered_token_byte():
    good = token()
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["email"] = "attacker@evil.example.com"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert reject(req(BODY, f"Bearer {header}.{forged_payload}.{signature}")).code == "no_matching_secret"
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 0x80
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert reject(req(BODY, f"Bearer {header}.{payload}.{flipped}")).code == "no_matching_secret"


@pytest.mark.parametrize(
    "overrides, word",
    [
        ({"aud": "https://hookline.example.com/in/other/"}, "audience"),
        ({"aud": None}, "audience"),
        ({"iss": "https://evil.example.com"}, "issuer"),
        ({"iss": None}, "issuer"),
        ({"email": "someone@hookline-demo.iam.gserviceaccount.com"}, "email"),
        ({"email": None}, "email"),
        ({"email_verified": False}, "verified"),
        ({"email_verified": None}, "verified"),
        ({"email_verified": "yes"}, "verified"),
    ],
)
def test_wrong_claims(overrides, word):
    error = reject(req(BODY, f"Bearer {token(claims_for(**overrides))}"))
    assert error.code == "no_matching_secret" and word in error.detail


def test_expired_and_future_tokens():
    leeway = OPTIONS["leeway"]
    expired = token(claims_for(exp=NOW - leeway - 1, iat=NOW - 3600))
    error = reject(req(BODY, f"Bearer {expired}"))
    assert error.code == "timestamp_out_of_tolerance" and "expired" in error.detail
    PROVIDER.verify(req(BODY, f"Bearer {token(claims_for(exp=NOW - leeway + 1, iat=NOW - 3600))}"), [], OPTIONS, NOW)
    future = token(claims_for(iat=NOW + leeway + 5))
    error = reject(req(BODY, f"Bearer {future}"))
    assert error.code == "timestamp_out_of_tolerance" and "future" in error.detail
    strict = PROVIDER.clean_options({"audience": AUDIENCE, "service_account_email": EMAIL, "leeway": 0})
    assert reject(req(BODY, f"Bearer {token(claims_for(exp=NOW - 1, iat=NOW - 3600))}"), options=strict).code == (
        "timestamp_out_of_tolerance"
    )
    for missing in ({"exp": None}, {"iat": None}, {"exp": "soon"}, {"iat": True}):
        assert reject(req(BODY, f"Bearer {token(claims_for(**missing))}")).code == "bad_format"


def test_fetch_failures():
    fetcher = FakeFetcher()
    fetcher.fail = True
    prov = provider(fetcher)
    error = reject(req(BODY, f"Bearer {token()}"), prov=prov)
    assert error.code == "untrusted_certificate"
    # A failed fetch is not retried on every request.
    reject(req(BODY, f"Bearer {token()}"), prov=prov)
    assert len(fetcher.calls) == 1
    for document in (b"not json", b"[]", json.dumps({KID: "not a pem"}).encode(), json.dumps({"keys": []}).encode()):
        assert (
            reject(req(BODY, f"Bearer {token()}"), prov=provider(FakeFetcher(document))).code == "untrusted_certificate"
        )


def test_default_fetcher_refuses_other_urls_without_network():
    for url in (
        "http://www.googleapis.com/oauth2/v1/certs",
        "https://evil.example.com/certs",
        "https://www.googleapis.com:8443/x",
    ):
        with pytest.raises(google_module.CertificateFetchError):
            google_module.default_fetcher(url)
    assert CERTS_URL == "https://www.googleapis.com/oauth2/v1/certs"


# --- describe, sign, options --------------------------------------------------------------


def test_notification_types():
    assert notification_type({"subscriptionNotification": {"notificationType": 13}}) == "subscriptionNotification.13"
    assert notification_type({"oneTimeProductNotification": {"notificationType": 2}}) == "oneTimeProductNotification.2"
    assert notification_type({"voidedPurchaseNotification": {"orderId": "GPA.1"}}) == "voidedPurchaseNotification"
    assert notification_type({"testNotification": {"version": "1.0"}}) == "testNotification"
    assert notification_type({"subscriptionNotification": {}}) == "subscriptionNotification"
    assert notification_type({"futureThingNotification": {"notificationType": 1}}) == "futureThingNotification.1"
    assert notification_type({"packageName": "x"}) == "unknown"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"message": "x"}',
        b'{"message": {"data": "e30="}}',
        b'{"message": {"messageId": "1"}}',
        b'{"message": {"messageId": "1", "data": "!!!"}}',
        b'{"message": {"messageId": "1", "data": "W10="}}',
        b'{"message": {"messageId": 1, "data": "e30="}}',
    ],
)
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body, None), OPTIONS)


def test_describe_message_id_spellings():
    body = json.dumps(
        {"message": {"message_id": "42", "data": base64.b64encode(b'{"testNotification": {}}').decode()}}
    ).encode()
    assert PROVIDER.describe(req(body, None), OPTIONS).event_id == "42"


def test_sign_is_not_possible():
    with pytest.raises(NotImplementedError, match="Google"):
        PROVIDER.sign(BODY, "unused", OPTIONS, NOW)


def test_options_and_secret_header():
    assert OPTIONS == {"audience": AUDIENCE, "service_account_email": EMAIL, "leeway": 60}
    for raw in (
        {"service_account_email": EMAIL},
        {"audience": AUDIENCE},
        {"audience": "  ", "service_account_email": EMAIL},
        {"audience": AUDIENCE, "service_account_email": "not-an-email"},
        {"audience": AUDIENCE, "service_account_email": EMAIL, "leeway": -1},
        {"audience": AUDIENCE, "service_account_email": EMAIL, "leeway": 3601},
        {"audience": AUDIENCE, "service_account_email": EMAIL, "secret": "x"},
    ):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_options(raw)
    assert PROVIDER.secret_header_names(OPTIONS) == {"authorization"}
    assert PROVIDER.clean_secret(" placeholder ") == "placeholder"


# --- properties -----------------------------------------------------------------------------

GOOD_TOKEN = token()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(st.binary(max_size=200), st.sampled_from([fixture(n) for n in EVENT_TYPES])),
    authorization=st.one_of(
        st.none(),
        st.text(max_size=120),
        st.text(max_size=60).map(lambda t: f"Bearer {t}"),
        st.tuples(*[st.sampled_from([*GOOD_TOKEN.split("."), "", "e30", "W10"])] * 3).map(
            lambda p: "Bearer " + ".".join(p)
        ),
        st.just(f"Bearer {GOOD_TOKEN}"),
    ),
    options=st.one_of(
        st.just(OPTIONS),
        st.just({}),
        st.fixed_dictionaries({"audience": st.text(max_size=5), "leeway": st.sampled_from([None, "x", -3, 10**9])}),
    ),
)
def test_random_requests_only_raise_verification_error(body, authorization, options):
    request = req(body, authorization)
    try:
        PROVIDER.verify(request, [], options, NOW)
    except VerificationError as exc:
        assert exc.code in CODES and exc.detail
    else:
        assert authorization == f"Bearer {GOOD_TOKEN}" and options is OPTIONS
    try:
        info = PROVIDER.describe(request, options)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str) and isinstance(info.event_id, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_byte_change_to_a_signed_token_is_rejected(data):
    """The token is what Google signs (Pub/Sub does not sign the body, see docs_verifies)."""
    index = data.draw(st.integers(min_value=0, max_value=len(GOOD_TOKEN) - 1))
    byte = data.draw(st.integers(min_value=0, max_value=127).filter(lambda b: b != ord(GOOD_TOKEN[index])))
    changed = GOOD_TOKEN[:index] + chr(byte) + GOOD_TOKEN[index + 1 :]
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(BODY, f"Bearer {changed}"), [], OPTIONS, NOW)


def test_body_is_not_covered_by_the_token():
    """Documented limitation: Pub/Sub authenticates the push, not the message bytes."""
    PROVIDER.verify(req(fixture("testNotification"), f"Bearer {GOOD_TOKEN}"), [], OPTIONS, NOW)
