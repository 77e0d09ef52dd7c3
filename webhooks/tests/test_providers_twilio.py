"""Twilio provider, checked against twilio.request_validator.RequestValidator and the published vectors (§7)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from webhooks.providers.base import EventInfo, InboundRequest, InvalidOptions, MalformedPayload, VerificationError
from webhooks.providers.twilio import TwilioProvider, form_encode, form_params

from .factories import make_source

FIXTURES = Path(__file__).parent / "fixtures" / "twilio"
PROVIDER = TwilioProvider()
OPTIONS = PROVIDER.clean_options({})
HEADER = "x-twilio-signature"
NOW = 1_700_000_000

# providers.md §7, published in twilio-python tests/unit/test_request_validator.py.
TOKEN = "12345"
URI = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
BODY = urlencode(PARAMS).encode()
SIG = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
SIG_WITH_443 = "kvajT1Ptam85bY51eRf/AJRuM3w="
SIG_HTTP_80 = "0ZXoZLH/DfblKGATFgpif+LLRf4="
SIG_HTTP_1234 = "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
MULTI_BODY = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234&Digits=1234"
MULTI_SIG = "IK+Dwps556ElfBT0I3Rgjkr1wJU="
JSON_BODY = b'{"property": "value", "boolean": true}'
JSON_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
JSON_SIG = "a9nBmqA0ju/hNViExpshrM61xv4="
INGEST_URL = "https://hookline.test/in/3f9a7c/"


class MultiDict(dict):
    """What RequestValidator expects for repeated parameters (Flask's MultiDict interface)."""

    def getall(self, name):
        return self[name]


def req(body: bytes, hdrs: dict[str, str] | None = None, url: str = URI) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (hdrs or {}).items()}, url=url)


def official(url: str, body: bytes, token: str = TOKEN, algorithm: str | None = None) -> str:
    """The signature Twilio sends for a form body, computed by the twilio package."""
    params = MultiDict()
    for name, value in parse_qsl(body.decode(), keep_blank_values=True):
        params.setdefault(name, []).append(value)
    return RequestValidator(token).compute_signature(url, params, algorithm)


def reject(request: InboundRequest, secrets=(TOKEN,), options=OPTIONS) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), options, NOW)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


def test_published_vector():
    assert RequestValidator(TOKEN).validate(URI, PARAMS, SIG)
    PROVIDER.verify(req(BODY, {HEADER: SIG}), [TOKEN], OPTIONS, NOW)


@pytest.mark.parametrize(
    "url, signature",
    [
        (URI, SIG_WITH_443),  # Twilio signed with :443, the request URL has none
        ("https://mycompany.com:443/myapp.php?foo=1&bar=2", SIG),  # and the other way round
        ("https://mycompany.com:443/myapp.php?foo=1&bar=2", SIG_WITH_443),
        ("http://mycompany.com/myapp.php?foo=1&bar=2", SIG_HTTP_80),
        ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", SIG_HTTP_1234),
    ],
)
def test_published_port_variants(url, signature):
    assert RequestValidator(TOKEN).validate(url, PARAMS, signature)
    PROVIDER.verify(req(BODY, {HEADER: signature}, url=url), [TOKEN], OPTIONS, NOW)


def test_explicit_port_is_not_invented():
    # Signed for :1234; a request URL on another port or none is a different URL.
    for url in ("http://mycompany.com/myapp.php?foo=1&bar=2", "http://mycompany.com:1235/myapp.php?foo=1&bar=2"):
        assert not RequestValidator(TOKEN).validate(url, PARAMS, SIG_HTTP_1234)
        assert reject(req(BODY, {HEADER: SIG_HTTP_1234}, url=url)).code == "no_matching_secret"


def test_published_multi_valued_vector():
    params = MultiDict(Sid=["CA123"], SidAccount=["AC123"], Digits=["5678", "1234", "1234"])
    assert RequestValidator(TOKEN).validate(URI, params, MULTI_SIG)
    PROVIDER.verify(req(MULTI_BODY, {HEADER: MULTI_SIG}), [TOKEN], OPTIONS, NOW)
    # Order of repeated values and duplicates do not matter (sorted(set(values)), as in the SDK)…
    PROVIDER.verify(
        req(b"Digits=1234&SidAccount=AC123&Digits=5678&Sid=CA123", {HEADER: MULTI_SIG}), [TOKEN], OPTIONS, NOW
    )
    # …but the values do.
    assert reject(req(MULTI_BODY.replace(b"5678", b"5679"), {HEADER: MULTI_SIG})).code == "no_matching_secret"


def test_published_json_vector():
    url = f"{URI}&bodySHA256={JSON_HASH}"
    assert RequestValidator(TOKEN).compute_hash(JSON_BODY.decode()) == JSON_HASH
    assert RequestValidator(TOKEN).validate(url, JSON_BODY.decode(), JSON_SIG)
    PROVIDER.verify(req(JSON_BODY, {HEADER: JSON_SIG}, url=url), [TOKEN], OPTIONS, NOW)
    # The body is bound by the hash in the signed URL.
    tampered = JSON_BODY.replace(b"true", b"false")
    assert not RequestValidator(TOKEN).validate(url, tampered.decode(), JSON_SIG)
    error = reject(req(tampered, {HEADER: JSON_SIG}, url=url))
    assert error.code == "no_matching_secret" and "bodySHA256" in error.detail
    # And the hash cannot be swapped: the URL is what is signed.
    forged = f"{URI}&bodySHA256={hashlib.sha256(tampered).hexdigest()}"
    assert reject(req(tampered, {HEADER: JSON_SIG}, url=forged)).code == "no_matching_secret"


@pytest.mark.parametrize(
    "name, event_type",
    [
        ("message.delivered", "message.delivered"),
        ("message.received", "message.received"),
        ("call.completed", "call.completed"),
    ],
)
def test_fixtures_as_form_posts_signed_by_the_sdk(name, event_type):
    body = form_encode((FIXTURES / f"{name}.json").read_bytes())
    params = dict(parse_qsl(body.decode()))
    signature = official(INGEST_URL, body)
    assert RequestValidator(TOKEN).validate(INGEST_URL, params, signature)
    request = req(body, {HEADER: signature}, url=INGEST_URL)
    PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert info.event_type == event_type
    sid = params.get("MessageSid") or params["CallSid"]
    assert info.event_id.startswith(f"{sid}:")


def test_replay_with_another_unsigned_idempotency_token_keeps_the_signed_id():
    body = form_encode((FIXTURES / "message.delivered.json").read_bytes())
    sidecar = json.loads((FIXTURES / "message.delivered.headers.json").read_text())
    original = req(body, {**sidecar, HEADER: official(INGEST_URL, body)}, url=INGEST_URL)
    replay = req(
        body, {**sidecar, HEADER: official(INGEST_URL, body), "I-Twilio-Idempotency-Token": "anything"}, url=INGEST_URL
    )
    for request in (original, replay):
        PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    event_id = PROVIDER.describe(original, OPTIONS).event_id
    assert event_id.startswith("SM") and event_id != sidecar["I-Twilio-Idempotency-Token"]
    assert PROVIDER.describe(replay, OPTIONS).event_id == event_id


CALL_SID = "CA" + "1" * 32
MESSAGE_SID = "SM" + "2" * 32


def test_derived_ids():
    base = {"CallSid": CALL_SID, "CallStatus": "in-progress", "AccountSid": "AC1"}
    first = PROVIDER.describe(req(urlencode({**base, "Digits": "1"}).encode()), OPTIONS)
    second = PROVIDER.describe(req(urlencode({**base, "Digits": "2"}).encode()), OPTIONS)
    reordered = PROVIDER.describe(req(urlencode({"Digits": "1", **base}).encode()), OPTIONS)
    assert first.event_type == second.event_type == "call.in-progress"
    assert first.event_id != second.event_id  # two gathers in one call are two events
    assert first.event_id == reordered.event_id  # a retry re-encoded differently is the same event
    assert first.event_id.startswith(f"{CALL_SID}:")
    plain = PROVIDER.describe(req(f"MessageSid={MESSAGE_SID}&Body=hi".encode()), OPTIONS)
    assert plain.event_type == "message" and plain.event_id.startswith(f"{MESSAGE_SID}:")
    other = PROVIDER.describe(req(b"AccountSid=AC1&Foo=bar"), OPTIONS)
    assert other.event_type == "webhook" and other.event_id.startswith("sha256:")
    odd = PROVIDER.describe(req(b"MessageSid=SM1&MessageStatus=%3Cb%3E"), OPTIONS)
    assert odd.event_type == "message" and odd.event_id.startswith("sha256:")  # not a Sid's shape


@pytest.mark.parametrize(
    "reshape",
    [
        # A repeated value: the SDK signs sorted(set(values)), so the signature still matches.
        lambda body: body + b"&To=%2B15558675310",
        # The boundary between a name and its value moved (name+value are joined without separators):
        # the same signed string, but no MessageStatus parameter any more.
        lambda body: body.replace(b"MessageStatus=delivered", b"MessageStatusdeliv=ered"),
    ],
    ids=["repeated-value", "moved-boundary"],
)
def test_replayed_signature_on_a_reshaped_body_is_the_same_event(reshape):
    body = form_encode((FIXTURES / "message.delivered.json").read_bytes())
    signature = official(INGEST_URL, body)
    original = req(body, {HEADER: signature}, url=INGEST_URL)
    reshaped = reshape(body)
    assert reshaped != body
    replay = req(reshaped, {HEADER: signature}, url=INGEST_URL)
    # The twilio package accepts the reshaped body under the captured signature…
    assert RequestValidator(TOKEN).validate(INGEST_URL, _multi(reshaped), signature)
    for request in (original, replay):
        PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    # …so it must be recognised as the same event, not stored and delivered again.
    assert PROVIDER.describe(replay, OPTIONS).event_id == PROVIDER.describe(original, OPTIONS).event_id


def test_replayed_signature_with_parameters_moved_into_the_query_is_the_same_event():
    # Twilio signs URL + parameters with no separator: when the URL it calls has a query string, the first
    # parameter can be moved to the end of that query (the URL the request arrives at is the sender's to
    # choose) and the signed string is unchanged.
    body = form_encode((FIXTURES / "message.delivered.json").read_bytes())
    url = f"{INGEST_URL}?src=sms"
    signature = official(url, body)
    (first_name, first_value), *rest = sorted(parse_qsl(body.decode()))
    moved_url = f"{url}{first_name}{first_value}"
    moved_body = urlencode(rest).encode()
    assert RequestValidator(TOKEN).validate(moved_url, _multi(moved_body), signature)
    original = req(body, {HEADER: signature}, url=url)
    replay = req(moved_body, {HEADER: signature}, url=moved_url)
    for request in (original, replay):
        PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    event_id = PROVIDER.describe(original, OPTIONS).event_id
    assert event_id.startswith("SM")
    assert PROVIDER.describe(replay, OPTIONS).event_id == event_id
    # Without a query string the id stays what it was: a digest of the signed parameters alone.
    plain = req(body, {HEADER: official(INGEST_URL, body)}, url=INGEST_URL)
    digest = hashlib.sha256(b"".join(f"{k}{v}".encode() for k, v in sorted(parse_qsl(body.decode())))).hexdigest()
    assert PROVIDER.describe(plain, OPTIONS).event_id.endswith(f":{digest}")


def test_json_object_with_signed_body_hash_is_identified_by_its_bytes():
    body = json.dumps({"MessageSid": MESSAGE_SID, "MessageStatus": "delivered"}).encode()
    url = f"{INGEST_URL}?bodySHA256={RequestValidator(TOKEN).compute_hash(body.decode())}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    assert RequestValidator(TOKEN).validate(url, body.decode(), signature)
    request = req(body, {HEADER: signature}, url=url)
    PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert info == EventInfo(f"{MESSAGE_SID}:{hashlib.sha256(body).hexdigest()}", "message.delivered")


def _multi(body: bytes) -> MultiDict:
    params = MultiDict()
    for name, value in parse_qsl(body.decode(), keep_blank_values=True):
        params.setdefault(name, []).append(value)
    return params


def test_cloud_events_json_body():
    body = json.dumps(
        [
            {
                "specversion": "1.0",
                "type": "com.twilio.messaging.message.delivered",
                "source": "/2010-04-01/Accounts/AC1/Messages/SM1.json",
                "id": "EZ7f0e8ae6ade43cb3c0ce4525424e404f",
                "dataschema": "https://events-schemas.twilio.com/Messaging.MessageStatus/2",
                "datacontenttype": "application/json",
                "time": "2024-08-20T15:30:42.000Z",
                "data": {"messageSid": "SM1", "messageStatus": "DELIVERED"},
            }
        ]
    ).encode()
    url = f"{INGEST_URL}?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    assert RequestValidator(TOKEN).validate(url, body.decode(), signature)
    # The unsigned idempotency header does not override the signed CloudEvent id.
    request = req(body, {HEADER: signature, "I-Twilio-Idempotency-Token": "anything"}, url=url)
    PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == (
        "EZ7f0e8ae6ade43cb3c0ce4525424e404f",
        "com.twilio.messaging.message.delivered",
    )


def test_public_url_option_for_proxies():
    proxied = PROVIDER.clean_options({"public_url": URI})
    PROVIDER.verify(req(BODY, {HEADER: SIG}, url="http://10.0.0.5:8000/in/x/"), [TOKEN], proxied, NOW)
    error = reject(req(BODY, {HEADER: SIG}, url="http://10.0.0.5:8000/in/x/"))
    assert error.code == "no_matching_secret" and "public_url" in error.detail
    assert "'http://10.0.0.5:8000/in/x/'" in error.detail  # the URL that was tried, to compare with Twilio's
    assert PROVIDER.sign(BODY, TOKEN, proxied, NOW, url="https://ignored.test/") == {"X-Twilio-Signature": SIG}


def test_public_url_with_a_json_body_takes_bodysha256_from_the_request():
    # Twilio calls <configured URL>&bodySHA256=…; the proxy forwards it to Hookline's address.
    proxied = PROVIDER.clean_options({"public_url": URI})
    forwarded = f"http://10.0.0.5:8000/in/x/?bodySHA256={JSON_HASH}"
    PROVIDER.verify(req(JSON_BODY, {HEADER: JSON_SIG}, url=forwarded), [TOKEN], proxied, NOW)
    tampered = JSON_BODY.replace(b"value", b"valve")
    assert reject(req(tampered, {HEADER: JSON_SIG}, url=forwarded), options=proxied).code == "no_matching_secret"
    bare = PROVIDER.clean_options({"public_url": INGEST_URL})
    url = f"{INGEST_URL}?bodySHA256={JSON_HASH}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    PROVIDER.verify(req(JSON_BODY, {HEADER: signature}, url=forwarded), [TOKEN], bare, NOW)


def test_public_url_with_http_auth_credentials():
    # Twilio drops user:password@ from the URL before signing (its security notes); the URL pasted from
    # Twilio's console keeps them, and a refusal must not show them to whoever posted the request.
    signed = "https://proxy.example.com/twilio/sms?foo=1"
    signature = official(signed, BODY)
    proxied = PROVIDER.clean_options({"public_url": "https://hook-user:s3cr3t-pw@proxy.example.com/twilio/sms?foo=1"})
    PROVIDER.verify(req(BODY, {HEADER: signature}, url="http://10.0.0.5:8000/in/x/"), [TOKEN], proxied, NOW)
    error = reject(req(BODY, {HEADER: SIG}, url="http://10.0.0.5:8000/in/x/"), options=proxied)
    assert "s3cr3t-pw" not in error.detail and "hook-user" not in error.detail
    assert signed in error.detail
    assert PROVIDER.sign(BODY, TOKEN, proxied, NOW) == {"X-Twilio-Signature": signature}


@pytest.mark.django_db
def test_public_url_credentials_through_the_ingest_view(client, organization):
    source = make_source(
        organization,
        provider="twilio",
        secret=TOKEN,
        public_url="https://hook-user:s3cr3t-pw@proxy.example.com/twilio/sms",
    )
    signature = official("https://proxy.example.com/twilio/sms", BODY)
    path = f"/in/{source.ingest_token}/"
    form = "application/x-www-form-urlencoded"
    accepted = client.generic("POST", path, BODY, content_type=form, HTTP_X_TWILIO_SIGNATURE=signature)
    assert accepted.status_code == 200, accepted.content
    refused = client.generic("POST", path, BODY, content_type=form, HTTP_X_TWILIO_SIGNATURE=SIG)
    assert refused.status_code == 401
    assert b"s3cr3t-pw" not in refused.content and b"hook-user" not in refused.content


def test_query_string_is_signed():
    assert reject(req(BODY, {HEADER: SIG}, url=URI.replace("foo=1", "foo=2"))).code == "no_matching_secret"


def test_sharedkey_hmac_sha256():
    settings_header = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_abc,algorithm=HMAC_SHA256"}
    signature = official(URI, BODY, token="shared-key-secret", algorithm="HMAC_SHA256")
    assert RequestValidator("shared-key-secret").validate(URI, PARAMS, signature, algorithm="HMAC_SHA256")
    PROVIDER.verify(req(BODY, {HEADER: signature, **settings_header}), ["shared-key-secret"], OPTIONS, NOW)
    # Without the settings header the value is the wrong size for HMAC-SHA1.
    assert reject(req(BODY, {HEADER: signature}), secrets=("shared-key-secret",)).code == "bad_format"
    unknown = {"X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_MD5"}
    assert reject(req(BODY, {HEADER: SIG, **unknown})).code == "bad_format"


def test_tampered_parameter():
    assert reject(req(BODY.replace(b"1234", b"1235", 1), {HEADER: SIG})).code == "no_matching_secret"
    assert reject(req(BODY + b"&Extra=1", {HEADER: SIG})).code == "no_matching_secret"


def test_missing_signature():
    error = reject(req(BODY, {}))
    assert error.code == "missing_signature" and "X-Twilio-Signature" in error.detail


@pytest.mark.parametrize("value", ["not base64!", SIG[:-2], "AAAA", "é", SIG + SIG])
def test_malformed_signature(value):
    assert reject(req(BODY, {HEADER: value})).code == "bad_format"


@pytest.mark.parametrize("url", ["http://[::1/in/x/", "https://mycompany.com:99999/x", "https://mycompany.com:abc/x"])
def test_unparsable_url(url):
    assert reject(req(BODY, {HEADER: SIG}, url=url)).code == "bad_format"


def test_wrong_token():
    assert reject(req(BODY, {HEADER: SIG}), secrets=("54321",)).code == "no_matching_secret"


def test_rotated_tokens():
    PROVIDER.verify(req(BODY, {HEADER: SIG}), ["secondary-token", TOKEN], OPTIONS, NOW)
    third = official(URI, BODY, token="third")
    assert reject(req(BODY, {HEADER: third}), secrets=("secondary-token", TOKEN)).code == "no_matching_secret"


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'{"a": [1]}', b"[]", b"&&&"])
def test_describe_malformed(body):
    with pytest.raises(MalformedPayload):
        PROVIDER.describe(req(body), OPTIONS)


def test_json_object_fixture_is_read_like_its_parameters():
    """What the test sender posts today: the fixture's JSON object as the body (see form_encode)."""
    body = (FIXTURES / "call.completed.json").read_bytes()
    headers = PROVIDER.sign(body, TOKEN, OPTIONS, NOW, url=INGEST_URL)
    request = req(body, headers, url=INGEST_URL)
    PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    assert PROVIDER.describe(request, OPTIONS).event_type == "call.completed"


def test_sign_is_accepted_by_the_sdk():
    body = form_encode((FIXTURES / "message.received.json").read_bytes())
    headers = PROVIDER.sign(body, TOKEN, OPTIONS, NOW, url=INGEST_URL, event_id="idem-1")
    assert headers["I-Twilio-Idempotency-Token"] == "idem-1"
    assert RequestValidator(TOKEN).validate(INGEST_URL, dict(parse_qsl(body.decode())), headers["X-Twilio-Signature"])
    request = req(body, headers, url=INGEST_URL)
    PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    assert PROVIDER.describe(request, OPTIONS).event_id.startswith(dict(parse_qsl(body.decode()))["MessageSid"])
    assert PROVIDER.sign(BODY, TOKEN, OPTIONS, NOW, url=URI) == {"X-Twilio-Signature": SIG}
    json_url = f"{URI}&bodySHA256={JSON_HASH}"
    assert PROVIDER.sign(JSON_BODY, TOKEN, OPTIONS, NOW, url=json_url) == {"X-Twilio-Signature": JSON_SIG}


def test_form_params_keeps_blank_and_repeated_values():
    assert form_params(b"a=&b=1&b=2&c") == {"a": [""], "b": ["1", "2"], "c": [""]}
    assert form_encode(b'{"To": "+1 555", "N": 3}') == b"To=%2B1+555&N=3"


def test_options():
    assert OPTIONS == {"public_url": ""}
    assert PROVIDER.clean_options({"public_url": f" {URI} "}) == {"public_url": URI}
    for bad in ("mycompany.com/x", "ftp://mycompany.com/", "https://h:99999/", "http://[::1"):
        with pytest.raises(InvalidOptions):
            PROVIDER.clean_options({"public_url": bad})
    assert PROVIDER.kind == "twilio" and PROVIDER.secret_header_names(OPTIONS) == set()
    assert "public_url" in PROVIDER.docs_verifies


HEADER_NAMES = [HEADER, "x-twilio-webhooks-signature-settings", "i-twilio-idempotency-token"]


@settings(max_examples=200, deadline=None, database=None)
@given(
    body=st.one_of(st.binary(max_size=300), st.just(BODY), st.just(JSON_BODY)),
    hdrs=st.dictionaries(st.sampled_from(HEADER_NAMES), st.one_of(st.text(max_size=60), st.just(SIG))),
    url=st.one_of(st.text(max_size=60), st.just(URI), st.just(f"{URI}&bodySHA256={JSON_HASH}")),
)
def test_property_garbage_only_raises_the_documented_errors(body, hdrs, url):
    request = req(body, hdrs, url=url)
    try:
        PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code in {"missing_signature", "bad_format", "no_matching_secret"}
    try:
        info = PROVIDER.describe(request, OPTIONS)
    except MalformedPayload:
        return
    assert isinstance(info.event_type, str) and info.event_type and isinstance(info.event_id, str)


def _params(body: bytes) -> dict[str, list[str]]:
    """What the signature covers: each name with its sorted, de-duplicated values."""
    return {name: sorted(set(values)) for name, values in form_params(body).items()}


@settings(max_examples=200, deadline=None, database=None)
@given(
    params=st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=20)), min_size=1, max_size=6),
    data=st.data(),
)
def test_property_one_byte_change_to_a_form_body(params, data):
    """Twilio signs the parsed parameters, not the bytes: a change is rejected unless it re-encodes the same ones."""
    body = urlencode(params).encode()
    request = req(body, {HEADER: official(INGEST_URL, body)}, url=INGEST_URL)
    PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    try:
        PROVIDER.verify(req(changed, dict(request.headers), url=INGEST_URL), [TOKEN], OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code == "no_matching_secret"
    else:  # e.g. %2F → %2f: the same parameters, so the same request
        assert _params(changed) == _params(body)


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.text(min_size=1, max_size=200).map(str.encode), data=st.data())
def test_property_one_byte_change_to_a_json_body_is_rejected(body, data):
    url = f"{INGEST_URL}?bodySHA256={RequestValidator(TOKEN).compute_hash(body.decode())}"
    request = req(body, {HEADER: RequestValidator(TOKEN).compute_signature(url, {})}, url=url)
    PROVIDER.verify(request, [TOKEN], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(req(changed, dict(request.headers), url=url), [TOKEN], OPTIONS, NOW)
    assert info.value.code == "no_matching_secret"
