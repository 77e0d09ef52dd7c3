"""Bitbucket provider (Cloud and Data Center), checked with stdlib HMAC-SHA256 as Atlassian documents it."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.providers.base import InboundRequest, VerificationError
from webhooks.providers.bitbucket import BitbucketProvider

FIXTURES = Path(__file__).parent / "fixtures" / "bitbucket"
PROVIDER = BitbucketProvider()
OPTIONS = PROVIDER.clean_options({})
SECRET = "bb-secret-7f2a9c"
NOW = 1_700_000_000
CODES = {"missing_signature", "bad_format", "timestamp_out_of_tolerance", "no_matching_secret"}
# GitHub's published docs vector works here too: same HMAC-SHA256 hex, sha256= prefix (providers.md §2, §9).
DOCS_SECRET, DOCS_BODY = "It's a Secret to Everybody", b"Hello, World!"
DOCS_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def stdlib_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def fixture(name: str) -> tuple[bytes, dict[str, str]]:
    return (FIXTURES / f"{name}.json").read_bytes(), json.loads((FIXTURES / f"{name}.headers.json").read_text())


def req(body: bytes, *header_dicts: dict[str, str]) -> InboundRequest:
    headers: dict[str, str] = {}
    for extra in header_dicts:
        headers.update({k.lower(): v for k, v in extra.items()})
    return InboundRequest(body=body, headers=headers)


def sig(value: str) -> dict[str, str]:
    return {"X-Hub-Signature": value}


def reject(request: InboundRequest, secrets=(SECRET,)) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), OPTIONS, NOW)
    for secret in secrets:
        assert not secret or secret not in info.value.detail
    return info.value


def test_docs_vector():
    PROVIDER.verify(req(DOCS_BODY, sig(DOCS_SIGNATURE)), [DOCS_SECRET], OPTIONS, NOW)
    PROVIDER.verify(
        req(DOCS_BODY, sig(DOCS_SIGNATURE.upper().replace("SHA256", "sha256"))), [DOCS_SECRET], OPTIONS, NOW
    )
    assert PROVIDER.sign(DOCS_BODY, DOCS_SECRET, OPTIONS, NOW) == {"X-Hub-Signature": DOCS_SIGNATURE}


@pytest.mark.parametrize(
    "name, id_header",
    [("repo:push", "X-Request-UUID"), ("pullrequest:created", "X-Request-UUID"), ("repo:refs_changed", "X-Request-Id")],
)
def test_fixtures(name, id_header):
    body, headers = fixture(name)
    request = req(body, headers, sig(stdlib_signature(SECRET, body)))
    PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == (headers[id_header], name)


def test_describe_prefers_cloud_uuid_and_falls_back_to_the_body_digest():
    both = {"X-Request-UUID": "cloud", "X-Request-Id": "dc", "X-Event-Key": "repo:push"}
    assert PROVIDER.describe(req(b"{}", both), OPTIONS).event_id == "cloud"
    hook_only = {"X-Hook-UUID": "hook", "X-Attempt-Number": "2", "X-Event-Key": "repo:push"}
    info = PROVIDER.describe(req(b"{}", hook_only), OPTIONS)
    assert info.event_id == "sha256:" + hashlib.sha256(b"{}").hexdigest()
    assert PROVIDER.describe(req(b"\xff"), OPTIONS).event_type == ""


@pytest.mark.django_db
def test_data_centers_signed_event_key_wins_over_a_changed_header(client, organization):
    # X-Event-Key is not signed and Bitbucket has no timestamp: a captured Data Center request sent again
    # with another X-Event-Key must not become an event of that type (destinations filter on it). The
    # body's eventKey is signed; Cloud bodies have none, so there the header is all there is.
    from webhooks.models import WebhookEvent

    from .factories import make_source

    source = make_source(organization, provider="bitbucket", secret=SECRET)
    body, headers = fixture("repo:refs_changed")
    relabelled = {**headers, "X-Event-Key": "pr:merged", "X-Request-Id": "replayed-with-a-new-id"}
    cloud_body, cloud_headers = fixture("repo:push")
    for body_, headers_ in ((body, relabelled), (cloud_body, cloud_headers)):
        extra = {
            f"HTTP_{k.upper().replace('-', '_')}": v
            for k, v in {**headers_, **sig(stdlib_signature(SECRET, body_))}.items()
        }
        extra.pop("HTTP_CONTENT_TYPE")
        answer = client.generic("POST", f"/in/{source.ingest_token}/", body_, content_type="application/json", **extra)
        assert answer.status_code == 200, answer.content
    assert sorted(WebhookEvent.objects.values_list("event_type", flat=True)) == ["repo:push", "repo:refs_changed"]


def test_tampered_body():
    body, headers = fixture("repo:push")
    signature = stdlib_signature(SECRET, body)
    assert reject(req(body.replace(b"Emma", b"Emmb", 1), headers, sig(signature))).code == "no_matching_secret"


def test_missing_signature():
    body, headers = fixture("repo:push")
    error = reject(req(body, headers))
    assert error.code == "missing_signature" and "X-Hub-Signature" in error.detail
    # GitHub's header name is not Bitbucket's.
    assert reject(req(body, {"X-Hub-Signature-256": stdlib_signature(SECRET, body)})).code == "missing_signature"


@pytest.mark.parametrize(
    "value",
    [
        DOCS_SIGNATURE.removeprefix("sha256="),
        "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
        "sha256=",
        "sha256=" + "z" * 64,
        DOCS_SIGNATURE[:-1],
        DOCS_SIGNATURE + "0",
        "sha256=" + "é" * 64,
    ],
)
def test_malformed_header(value):
    assert reject(req(DOCS_BODY, sig(value)), secrets=(DOCS_SECRET,)).code == "bad_format"


def test_wrong_secret():
    assert reject(req(DOCS_BODY, sig(DOCS_SIGNATURE))).code == "no_matching_secret"


def test_rotated_secrets():
    body, headers = fixture("repo:refs_changed")
    PROVIDER.verify(req(body, headers, sig(stdlib_signature("old", body))), ["new", "old"], OPTIONS, NOW)
    error = reject(req(body, headers, sig(stdlib_signature("third", body))), secrets=("new", "old"))
    assert error.code == "no_matching_secret"


def test_sign_adds_type_and_id_only_when_given():
    body, _ = fixture("repo:push")
    signed = PROVIDER.sign(body, SECRET, OPTIONS, NOW, event_id="req-1", event_type="repo:push")
    assert signed == {
        "X-Hub-Signature": stdlib_signature(SECRET, body),
        "X-Event-Key": "repo:push",
        "X-Request-UUID": "req-1",
    }
    info = PROVIDER.describe(req(body, signed), OPTIONS)
    assert (info.event_id, info.event_type) == ("req-1", "repo:push")


def test_metadata():
    assert OPTIONS == {}
    assert PROVIDER.secret_generated_by_us is True
    assert PROVIDER.secret_header_names(OPTIONS) == set()


HEADER_NAMES = st.sampled_from(["x-hub-signature", "x-event-key", "x-request-uuid", "x-request-id"])


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    headers=st.dictionaries(HEADER_NAMES, st.text(st.characters(exclude_categories=()), max_size=80), max_size=4),
)
def test_random_input_raises_only_documented_errors(body, headers):
    request = InboundRequest(body=body, headers=headers)
    try:
        PROVIDER.verify(request, [SECRET], OPTIONS, NOW)
    except VerificationError as exc:
        assert exc.code in CODES
    info = PROVIDER.describe(request, OPTIONS)
    assert isinstance(info.event_type, str) and info.event_id


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=300), data=st.data())
def test_one_byte_change_is_always_rejected(body, data):
    headers = sig(stdlib_signature(SECRET, body))
    PROVIDER.verify(req(body, headers), [SECRET], OPTIONS, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:index] + bytes([(body[index] + data.draw(st.integers(1, 255))) % 256]) + body[index + 1 :]
    with pytest.raises(VerificationError):
        PROVIDER.verify(req(tampered, headers), [SECRET], OPTIONS, NOW)
