"""An edited payload in the test sender: sent as typed, with the selected sample's headers, for every provider."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from webhooks.providers.base import InboundRequest
from webhooks.providers.registry import PROVIDERS
from webhooks.services import sample_sender

from .test_providers import SECRET, SIGNABLE, fixtures_of, options_for

URL = "https://hookline.test/in/x/"
# Schemes whose signature or signed time is inside the body: the sender adds it as the provider does.
SIGNED_INSIDE_THE_BODY = {"mailgun", "linear"}


@pytest.fixture(autouse=True)
def fixed_ingest_url(monkeypatch):
    monkeypatch.setattr(sample_sender, "ingest_url", lambda source: URL)


def _described(kind: str, body: bytes, headers: dict[str, str]):
    request = InboundRequest(body=body, headers={k.lower(): v for k, v in headers.items()}, url=URL)
    PROVIDERS[kind].verify(request, [SECRET], options_for(kind), time.time())
    return PROVIDERS[kind].describe(request, options_for(kind))


@pytest.mark.parametrize("kind", SIGNABLE)
def test_an_edited_sample_is_sent_as_typed_with_the_samples_event_type(kind):
    source = SimpleNamespace(pk=1, provider=kind, secret=SECRET, options=options_for(kind))
    for path in fixtures_of(kind):
        typed = json.dumps(json.loads(path.read_bytes()), separators=(",", ":")).encode()  # not the file's bytes
        sample_body, sample_headers = sample_sender.build_test_request(source=source, fixture=path.stem)

        body, headers = sample_sender.build_test_request(source=source, fixture=path.stem, body=typed, fresh_id=True)

        if kind not in SIGNED_INSIDE_THE_BODY:
            assert body == typed, path.name
        info = _described(kind, body, headers)
        assert info.event_type == _described(kind, sample_body, sample_headers).event_type, path.name
        assert sample_sender.edited_body_problem(kind, typed) is None


def test_the_id_header_is_fresh_and_not_doubled_under_another_spelling():
    source = SimpleNamespace(pk=1, provider="github", secret=SECRET, options=options_for("github"))
    ids = set()
    for _ in range(2):
        body, headers = sample_sender.build_test_request(
            source=source, fixture="push", body=b'{"ref": "refs/heads/x"}', fresh_id=True
        )
        assert body == b'{"ref": "refs/heads/x"}'
        assert [name.lower() for name in headers].count("x-github-delivery") == 1
        assert headers["X-GitHub-Event"] == "push"
        ids.add(_described("github", body, headers).event_id)
    assert len(ids) == 2


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_invalid_json_is_refused_unless_the_provider_takes_other_bodies(kind):
    formats = PROVIDERS[kind].edited_body_formats
    problem = sample_sender.edited_body_problem(kind, b"{not json")
    assert (problem is None) == ("any" in formats)
    form_problem = sample_sender.edited_body_problem(kind, b"a=1&b=2")
    assert (form_problem is None) == ("any" in formats or "form" in formats)


@pytest.mark.parametrize(
    "kind,form",
    [
        ("github", b"payload=%7B%22action%22%3A%22opened%22%7D"),
        ("slack", b"command=%2Fdeploy&text=now&trigger_id=13345224609.738474920.8088930838d88f008e0"),
        ("twilio", b"MessageSid=SM1f0e8ae6ade43cb3c0ce4525424e404f&MessageStatus=delivered&AccountSid=AC1"),
    ],
)
def test_providers_that_take_form_bodies_read_one_sent_by_the_sender(kind, form):
    source = SimpleNamespace(pk=1, provider=kind, secret=SECRET, options=options_for(kind))
    assert sample_sender.edited_body_problem(kind, form) is None

    body, headers = sample_sender.build_test_request(source=source, body=form, fresh_id=True)

    assert body == form and headers["Content-Type"] == sample_sender.FORM_CONTENT_TYPE
    assert _described(kind, body, headers).event_type


# What a person typing a payload gets wrong, and what the sender says (not the parser's "Expecting
# ',' delimiter: line 3 column 3 (char 22)"): where, counted from 1 as editors do, and what to write.
TYPING_MISTAKES = [
    ("not json", 1, 1, "there is a word without quotes"),
    ('{"id": "evt_1", "live": True}', 1, 25, "there is a word without quotes: text goes in double quotes; only true"),
    ('{\n  "id": "evt_1"\n  "type": "invoice.paid"\n}', 3, 3, "a comma (,) is missing between two items"),
    ("{'id': 'evt_1'}", 1, 2, "a name is in single quotes: JSON needs double quotes"),
    ('{"id": "evt_1",}', 1, 16, "there is a comma after the last item, which JSON does not allow"),
    ('{"ids": [1, 2,]}', 1, 15, "a value is missing before this ]"),
    ('{"id" "evt_1"}', 1, 7, "a colon (:) is missing between a name and its value"),
    ('{"id": "evt_1', 1, 8, "the text in double quotes that starts here is never closed"),
    ('{"ids": [1, 2}', 1, 14, "a bracket does not match"),
    ('{"id": "evt_1"}}', 1, 16, "something follows the end of the JSON"),
    ('{"id": ', 1, 8, "the payload ends too early"),
    ('{"path": "C:\\data"}', 1, 13, "a backslash JSON does not know"),
]


@pytest.mark.parametrize("typed,line,character,words", TYPING_MISTAKES)
def test_a_typing_mistake_is_named_in_plain_words_with_its_line_and_character(typed, line, character, words):
    problem = sample_sender.edited_body_problem("stripe", typed.encode())

    assert problem.startswith(f"The payload is not valid JSON: on line {line}, at character {character}, {words}")
    assert "Expecting" not in problem and "char " not in problem and "column" not in problem


def test_a_form_provider_names_the_json_mistake_too():
    problem = sample_sender.edited_body_problem("github", b'{"action": "opened",}')

    assert problem == (
        "The payload is neither valid JSON nor a form-encoded body (name=value&name=value). As JSON: on line 1, "
        "at character 21, there is a comma after the last item, which JSON does not allow."
    )
