"""GitHub provider, checked against the vectors published by GitHub's docs and octokit."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from webhooks.providers.base import InboundRequest, VerificationError
from webhooks.providers.github import GitHubProvider

FIXTURES = Path(__file__).parent / "fixtures" / "github"
PROVIDER = GitHubProvider()
OPTIONS = PROVIDER.clean_options({})
NOW = 1_700_000_000

# providers.md §2: published by GitHub's docs and by octokit; SHA-1 computed.
DOCS_SECRET, DOCS_BODY = "It's a Secret to Everybody", b"Hello, World!"
DOCS_SHA256 = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
DOCS_SHA1 = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59"
OCTOKIT_SECRET, OCTOKIT_BODY = "mysecret", b'{"foo":"bar"}'
OCTOKIT_SHA256 = "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3"


def req(body: bytes, headers: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(body=body, headers={k.lower(): v for k, v in (headers or {}).items()})


def sig256(value: str) -> dict[str, str]:
    return {"X-Hub-Signature-256": value}


def reject(request: InboundRequest, secrets=(DOCS_SECRET,)) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        PROVIDER.verify(request, list(secrets), OPTIONS, NOW)
    for secret in secrets:
        assert secret not in info.value.detail
    return info.value


@pytest.mark.parametrize(
    "secret, body, header",
    [(DOCS_SECRET, DOCS_BODY, DOCS_SHA256), (OCTOKIT_SECRET, OCTOKIT_BODY, OCTOKIT_SHA256)],
)
def test_published_vectors_verify(secret, body, header):
    PROVIDER.verify(req(body, sig256(header)), [secret], OPTIONS, NOW)
    PROVIDER.verify(req(body, sig256(header.upper().replace("SHA256=", "sha256="))), [secret], OPTIONS, NOW)


def test_sign_reproduces_the_published_vectors():
    headers = PROVIDER.sign(DOCS_BODY, DOCS_SECRET, OPTIONS, NOW, event_type="push", event_id="d-1")
    assert headers["X-Hub-Signature-256"] == DOCS_SHA256
    assert headers["X-Hub-Signature"] == DOCS_SHA1
    assert PROVIDER.sign(OCTOKIT_BODY, OCTOKIT_SECRET, OPTIONS, NOW)["X-Hub-Signature-256"] == OCTOKIT_SHA256


def test_tampered_body():
    assert reject(req(b"Hello, World?", sig256(DOCS_SHA256))).code == "no_matching_secret"


def test_missing_signature():
    error = reject(req(DOCS_BODY, {"X-GitHub-Event": "push"}))
    assert error.code == "missing_signature"
    assert "X-Hub-Signature-256" in error.detail


@pytest.mark.parametrize(
    "value",
    [
        DOCS_SHA256.removeprefix("sha256="),  # no scheme
        "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",  # wrong scheme in the SHA-256 header
        "sha256=xyz",
        "sha256=" + "a" * 63,
        "sha256=" + "é" * 64,
        "sha256",
    ],
)
def test_malformed_header(value):
    assert reject(req(DOCS_BODY, sig256(value))).code == "bad_format"


def test_wrong_secret():
    assert reject(req(OCTOKIT_BODY, sig256(OCTOKIT_SHA256)), secrets=("notmysecret",)).code == "no_matching_secret"


def test_legacy_sha1_only_when_sha256_header_is_absent():
    PROVIDER.verify(req(DOCS_BODY, {"X-Hub-Signature": DOCS_SHA1}), [DOCS_SECRET], OPTIONS, NOW)
    # A wrong SHA-256 signature is not rescued by a correct SHA-1 one.
    both = {"X-Hub-Signature-256": "sha256=" + "0" * 64, "X-Hub-Signature": DOCS_SHA1}
    assert reject(req(DOCS_BODY, both)).code == "no_matching_secret"
    assert reject(req(DOCS_BODY, {"X-Hub-Signature": "sha1=nothex"})).code == "bad_format"


def test_rotated_secrets():
    # Request signed with the old secret (octokit vector); new secret first.
    PROVIDER.verify(req(OCTOKIT_BODY, sig256(OCTOKIT_SHA256)), ["brand-new", OCTOKIT_SECRET], OPTIONS, NOW)
    # Signed with a third secret (the docs vector's) → rejected.
    error = reject(req(DOCS_BODY, sig256(DOCS_SHA256)), secrets=("brand-new", OCTOKIT_SECRET))
    assert error.code == "no_matching_secret"


@pytest.mark.parametrize(
    "name, event_type",
    [("push", "push"), ("pull_request.opened", "pull_request.opened"), ("ping", "ping")],
)
def test_describe_fixtures(name, event_type):
    body = (FIXTURES / f"{name}.json").read_bytes()
    headers = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    info = PROVIDER.describe(req(body, headers), OPTIONS)
    assert info.event_id == headers["X-GitHub-Delivery"]
    assert info.event_type == event_type


def test_describe_form_encoded_payload():
    payload = json.dumps({"action": "created", "issue": {"number": 1}})
    body = ("payload=" + quote(payload)).encode()
    info = PROVIDER.describe(req(body, {"X-GitHub-Event": "issues", "X-GitHub-Delivery": "g-1"}), OPTIONS)
    assert (info.event_id, info.event_type) == ("g-1", "issues.created")


def test_describe_without_headers_or_json():
    assert PROVIDER.describe(req(b"\xff not json"), OPTIONS).event_type == ""
    assert PROVIDER.describe(req(b"\xff", {"X-GitHub-Event": "push"}), OPTIONS).event_type == "push"
    assert PROVIDER.describe(req(b'{"action": "opened"}'), OPTIONS).event_id is None
    # An action alone is not an event kind: a filter such as "opened" or "pull_request.*" must not match it.
    assert PROVIDER.describe(req(b'{"action": "opened"}'), OPTIONS).event_type == "unknown.opened"
    assert PROVIDER.describe(req(b'{"action": 3}', {"X-GitHub-Event": "x"}), OPTIONS).event_type == "x"


def test_sign_round_trips_with_event_headers():
    body = (FIXTURES / "pull_request.opened.json").read_bytes()
    headers = PROVIDER.sign(body, "tenant-secret", OPTIONS, NOW, event_id="abc", event_type="pull_request.opened")
    assert headers["X-GitHub-Event"] == "pull_request"
    assert headers["X-GitHub-Delivery"] == "abc"
    request = req(body, headers)
    PROVIDER.verify(request, ["tenant-secret"], OPTIONS, NOW)
    info = PROVIDER.describe(request, OPTIONS)
    assert (info.event_id, info.event_type) == ("abc", "pull_request.opened")
    # Without id/type, only signatures: a fixture's recorded X-GitHub-* headers must survive.
    assert set(PROVIDER.sign(body, "tenant-secret", OPTIONS, NOW)) == {"X-Hub-Signature-256", "X-Hub-Signature"}


def test_details_never_contain_expected_signature():
    error = reject(req(DOCS_BODY, sig256("sha256=" + "1" * 64)))
    assert DOCS_SHA256.split("=")[1] not in error.detail


def test_metadata():
    assert PROVIDER.secret_generated_by_us is True
    assert OPTIONS == {}
