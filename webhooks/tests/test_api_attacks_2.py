"""A hostile client of the REST API, holding organization A's keys or none: B's ids anywhere,
odd keys and headers, bodies and query strings built to break a parser. Every answer is a 4xx
(never a 500) and never B's data or an action on B."""

from __future__ import annotations

import base64
from urllib.parse import urlencode

import pytest

from organizations.models import ApiKey
from webhooks.models import BulkRetry, Delivery, Destination, Source

from .api_helpers import make_delivery, make_event, make_key
from .factories import make_destination, make_source


@pytest.fixture
def a_world(organization):
    source = make_source(organization, name="A source")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/a", sources=[source])
    event = make_event(source)
    delivery = make_delivery(event, destination)
    return {"source": source, "destination": destination, "event": event, "delivery": delivery}


@pytest.fixture
def b_world(other_organization):
    source = make_source(other_organization, name="B source")
    destination, _ = make_destination(other_organization, "http://127.0.0.1:9/b", sources=[source])
    event = make_event(source, body=b'{"secret_of_b": true}')
    delivery = make_delivery(event, destination)
    return {"source": source, "destination": destination, "event": event, "delivery": delivery}


@pytest.fixture
def write_key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE)[1]


def _auth(key):
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def _no_b(response, b_world):
    text = response.content.decode(errors="replace")
    assert "secret_of_b" not in text and "B source" not in text and "/b" not in text.replace("/bulk", "")


def _cursor(position):
    raw = urlencode({"o": 0, "r": 0, "p": position}, doseq=True)
    return base64.b64encode(raw.encode()).decode()


def test_b_cursor_position_and_sql_ish_cursor(client, write_key, a_world, b_world):
    for position in (str(b_world["event"].pk), "1' OR '1'='1", "\x00", "9" * 5000):
        response = client.get("/api/v1/events", {"cursor": _cursor(position)}, **_auth(write_key))
        assert response.status_code in (200, 400), (position[:20], response.status_code, response.content[:300])
        _no_b(response, b_world)
    for path in ("/api/v1/sources", "/api/v1/destinations", "/api/v1/bulk_retries", "/api/v1/deliveries"):
        response = client.get(path, {"cursor": _cursor("1' OR 1=1--")}, **_auth(write_key))
        assert response.status_code == 400, (path, response.status_code, response.content[:300])


@pytest.mark.parametrize(
    "params",
    [
        "status=dead&status=succeeded",
        "limit=99999999999999999999",
        "limit=-1",
        "limit=1e3",
        "limit=%00",
        "status=%00",
        "destination=%00",
        "destination=99999999999999999999999999",
        "destination=-1",
        "event=not-a-uuid",
        "event=%00",
        "received_after=%00",
        "received_after=99999-01-01",
        "received_after=0000-00-00",
        "cursor=" + "A" * 20000,
        "event_type=" + "x" * 20000,
        "event_type=%25",
        "event_type=*.*.%5C",
        "provider_event_id=%25_%5C",
        "search=%25%00",
        "search=" + "(" * 5000,
        "body_contains=%00",
        "body_contains=%5C%25",
        "body_contains=" + "x" * 20000,
        "body_contains=a&cursor=" + "A" * 40,
        "received_after=2020-01-01T00:00:00%2B99:00",
        "received_after=2030-01-01&received_before=2020-01-01",
        "status=all&status=",
        "limit=1&limit=500",
        "format=api",
        "format=%00",
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/deliveries", "/api/v1/bulk_retries"])
def test_query_parameter_abuse_is_a_4xx(client, write_key, a_world, path, params):
    response = client.get(f"{path}?{params}", **_auth(write_key))
    # ?format= naming a format the API has not is DRF's 404 (api_exception_handler)
    expected = (404,) if params.startswith("format=") else (200, 400)
    assert response.status_code in expected, (response.status_code, response.content[:300])


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10000 + b"]" * 10000,
        b'{"a":' * 10000 + b"1" + b"}" * 10000,
        b"[" + b"1," * 300000 + b"1]",
        b'{"name": 1e999}',
        b'{"name": "x", "name": "y"}',
        b"\xef\xbb\xbf{}",
        '{"name": "x"}'.encode("utf-16"),
        b'{"name": "\xff\xfe"}',
        b'{"name": "\\ud800"}',
        b'{"name": NaN}',
        b'{"name": Infinity}',
        b'{"name": "a\\u0000b"}',
        b"",
        b"null",
        b"[]",
        b'"x"',
        b"1" * 5000,
        b'{"url": "http://127.0.0.1:9/x", "name": "n", "sources": [1e999]}',
        b'{"url": "http://127.0.0.1:9/x", "name": "n", "sources": [' + b"9" * 400 + b"]}",
        b'{"url": "http://127.0.0.1:9/x", "name": "n", "sources": "1"}',
        b'{"url": "http://127.0.0.1:9/x", "name": "n", "sources": [true]}',
        b'{"url": "http://127.0.0.1:9/x", "name": "n", "event_types": [{"a": 1}]}',
        b'{"url": "http://127.0.0.1:9/x", "name": "n", "headers": {"\\u0000": "x"}}',
        b'{"url": "http://127.0.0.1:9/x", "name": "\\u0000"}',
    ],
)
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/destinations",
        "/api/v1/sources",
        "/api/v1/deliveries/retry",
        "DEST",
        "REPLAY",
        "SRC",
    ],
)
def test_json_bombs_are_a_4xx(client, write_key, a_world, path, body):
    path = {
        "DEST": f"/api/v1/destinations/{a_world['destination'].pk}",
        "SRC": f"/api/v1/sources/{a_world['source'].pk}",
        "REPLAY": f"/api/v1/events/{a_world['event'].pk}/replay",
    }.get(path, path)
    method = client.patch if path.count("/") == 4 and "retry" not in path and "replay" not in path else client.post
    response = method(path, body, content_type="application/json", **_auth(write_key))
    assert response.status_code < 500, (response.status_code, response.content[:300])


def test_body_over_the_limit(client, write_key, a_world, settings):
    body = b'{"name": "' + b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10) + b'"}'
    response = client.post("/api/v1/destinations", body, content_type="application/json", **_auth(write_key))
    assert response.status_code == 413, (response.status_code, response.content[:300])


@pytest.mark.parametrize(
    "header",
    [
        "bearer {key}",
        "BEARER {key}",
        "Bearer  {key}",
        "Bearer {key} ",
        "Bearer\t{key}",
        "Basic {key}",
        "{key}",
        "Bearer hl_zzzzzzzz_{rest}",
        "Bearer " + "hl_" + "a" * 100000,
        "Bearer hl_\x00abc",
        "Bearer hl_ünï_cødé",
        "Bearer {key}\x00",
        "Bearer {key}x",
        "Bearer {keyupper}",
        "Bearer",
        "Bearer ",
        "Token {key}",
    ],
)
def test_key_formats(client, organization, header):
    key = make_key(organization, access=ApiKey.Access.READ_WRITE)[1]
    value = header.replace("{key}", key).replace("{rest}", key.split("_", 2)[-1]).replace("{keyupper}", key.upper())
    response = client.get("/api/v1/events", HTTP_AUTHORIZATION=value)
    assert response.status_code in (200, 401), (header[:30], response.status_code, response.content[:300])


def _b_paths(b):
    return [
        ("get", f"/api/v1/events/{b['event'].pk}", None),
        ("post", f"/api/v1/events/{b['event'].pk}/replay", {"destination": b["destination"].pk}),
        ("get", f"/api/v1/deliveries/{b['delivery'].pk}", None),
        ("post", f"/api/v1/deliveries/{b['delivery'].pk}/retry", None),
        ("get", f"/api/v1/sources/{b['source'].pk}", None),
        ("patch", f"/api/v1/sources/{b['source'].pk}", {"name": "pwned"}),
        ("delete", f"/api/v1/sources/{b['source'].pk}", None),
        ("post", f"/api/v1/sources/{b['source'].pk}/rotate_secret", None),
        ("get", f"/api/v1/destinations/{b['destination'].pk}", None),
        ("patch", f"/api/v1/destinations/{b['destination'].pk}", {"name": "pwned"}),
        ("delete", f"/api/v1/destinations/{b['destination'].pk}", None),
        ("post", f"/api/v1/destinations/{b['destination'].pk}/rotate_secret", None),
        ("post", f"/api/v1/destinations/{b['destination'].pk}/pause", None),
        ("post", f"/api/v1/destinations/{b['destination'].pk}/resume", None),
        ("post", f"/api/v1/destinations/{b['destination'].pk}/send_waiting_now", None),
    ]


def test_b_ids_in_paths_are_404(client, write_key, a_world, b_world):
    for method, path, body in _b_paths(b_world):
        kwargs = {"content_type": "application/json"} if body is not None else {}
        response = getattr(client, method)(path, body, **kwargs, **_auth(write_key))
        assert response.status_code == 404, (method, path, response.status_code, response.content[:300])
        _no_b(response, b_world)
    b = b_world
    assert Source.objects.get(pk=b["source"].pk).name == "B source"
    assert Destination.objects.get(pk=b["destination"].pk).paused_at is None
    assert Delivery.objects.filter(destination=b["destination"]).count() == 1


def test_b_ids_in_bodies_and_filters_are_400(client, write_key, a_world, b_world):
    a, b = a_world, b_world
    cases = [
        ("post", "/api/v1/destinations", {"name": "n", "url": "http://127.0.0.1:9/n", "sources": [b["source"].pk]}),
        ("patch", f"/api/v1/destinations/{a['destination'].pk}", {"sources": [a["source"].pk, b["source"].pk]}),
        ("post", f"/api/v1/events/{a['event'].pk}/replay", {"destination": b["destination"].pk}),
        ("post", "/api/v1/deliveries/retry", {"destination": b["destination"].pk}),
        ("post", "/api/v1/deliveries/retry", {"source": b["source"].pk}),
    ]
    for method, path, body in cases:
        response = getattr(client, method)(path, body, content_type="application/json", **_auth(write_key))
        assert response.status_code == 400, (method, path, response.status_code, response.content[:300])
        assert "no such" in response.content.decode(), response.content
    for path, params in [
        ("/api/v1/events", {"source": b["source"].pk}),
        ("/api/v1/events", {"destination": b["destination"].pk}),
        ("/api/v1/deliveries", {"destination": b["destination"].pk}),
        ("/api/v1/deliveries", {"event": b["event"].pk}),
    ]:
        response = client.get(path, params, **_auth(write_key))
        assert response.status_code == 400, (path, params, response.status_code, response.content[:300])
    assert not BulkRetry.objects.exists()
    assert Delivery.objects.filter(destination=b["destination"]).count() == 1
    assert not Destination.objects.filter(name="n").exists()


def test_read_only_key_on_every_unsafe_method(client, organization, a_world):
    key = make_key(organization, access=ApiKey.Access.READ_ONLY)[1]
    a = a_world
    unsafe = [
        *_b_paths(a),
        ("post", "/api/v1/sources", {"name": "x", "provider": "stripe", "secret": "whsec_x"}),
        ("post", "/api/v1/destinations", {"name": "x", "url": "http://127.0.0.1:9/x"}),
        ("post", "/api/v1/deliveries/retry", {}),
        ("put", f"/api/v1/sources/{a['source'].pk}", {"name": "x"}),
        ("put", f"/api/v1/destinations/{a['destination'].pk}", {"name": "x"}),
    ]
    for method, path, body in unsafe:
        if method == "get":
            continue
        kwargs = {"content_type": "application/json"} if body is not None else {}
        response = getattr(client, method)(path, body, **kwargs, **_auth(key))
        assert response.status_code == 403, (method, path, response.status_code, response.content[:300])
    assert Delivery.objects.count() == 1 and not BulkRetry.objects.exists()


@pytest.mark.parametrize(
    "field", ["organization", "organization_id", "id", "created_at", "paused_at", "token", "secret", "status"]
)
def test_mass_assignment_is_refused(client, write_key, organization, other_organization, a_world, field):
    a = a_world
    value = other_organization.pk if field.startswith("organization") else "2020-01-01T00:00:00Z"
    if field in ("id",):
        value = 999999
    if field in ("token", "secret", "status"):
        value = "attacker"
    for path in (f"/api/v1/sources/{a['source'].pk}", f"/api/v1/destinations/{a['destination'].pk}"):
        response = client.patch(path, {"name": "n2", field: value}, content_type="application/json", **_auth(write_key))
        assert response.status_code == 400, (path, field, response.status_code, response.content[:300])
    for path, body in (
        ("/api/v1/sources", {"name": "n3", "provider": "stripe", "secret": "whsec_x"}),
        ("/api/v1/destinations", {"name": "n3", "url": "http://127.0.0.1:9/n"}),
    ):
        if field == "secret" and "sources" in path:
            continue
        response = client.post(path, {**body, field: value}, content_type="application/json", **_auth(write_key))
        assert response.status_code == 400, (path, field, response.status_code, response.content[:300])
    response = client.post(
        f"/api/v1/deliveries/{a['delivery'].pk}/retry",
        {field: value},
        content_type="application/json",
        **_auth(write_key),
    )
    assert response.status_code == 400, (field, response.status_code, response.content[:300])
    assert not Source.objects.filter(name__in=("n2", "n3")).exists()
    assert not Destination.objects.filter(name__in=("n2", "n3")).exists()


def test_method_override_headers_are_ignored(client, write_key, a_world):
    path = f"/api/v1/destinations/{a_world['destination'].pk}"
    for header in ("HTTP_X_HTTP_METHOD_OVERRIDE", "HTTP_X_HTTP_METHOD", "HTTP_X_METHOD_OVERRIDE"):
        response = client.get(path, **{header: "DELETE"}, **_auth(write_key))
        assert response.status_code == 200
        response = client.post(path, {}, content_type="application/json", **{header: "DELETE"}, **_auth(write_key))
        assert response.status_code == 405
    response = client.post(path + "?_method=DELETE", {}, content_type="application/json", **_auth(write_key))
    assert response.status_code in (400, 405)
    assert Destination.objects.filter(pk=a_world["destination"].pk).exists()


ROUTES = [
    "/api/v1/events",
    "/api/v1/events/{event}",
    "/api/v1/events/{event}/replay",
    "/api/v1/deliveries",
    "/api/v1/deliveries/retry",
    "/api/v1/deliveries/{delivery}",
    "/api/v1/deliveries/{delivery}/retry",
    "/api/v1/bulk_retries",
    "/api/v1/sources",
    "/api/v1/sources/{source}",
    "/api/v1/sources/{source}/rotate_secret",
    "/api/v1/destinations",
    "/api/v1/destinations/{destination}",
    "/api/v1/destinations/{destination}/rotate_secret",
    "/api/v1/destinations/{destination}/pause",
    "/api/v1/destinations/{destination}/resume",
    "/api/v1/destinations/{destination}/send_waiting_now",
    "/api/v1/schema",
    "/api/v1/nothing",
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("method", ["head", "options", "trace", "put"])
@pytest.mark.parametrize("keyed", [True, False])
def test_head_options_on_every_route(client, write_key, a_world, route, method, keyed):
    path = route.format(**{k: v.pk for k, v in a_world.items()})
    response = getattr(client, method)(path, **(_auth(write_key) if keyed else {}))
    assert response.status_code < 500, (response.status_code, response.content[:300])
    if not keyed and "schema" not in route and "nothing" not in route:
        assert response.status_code == 401, (response.status_code, response.content[:300])


@pytest.mark.parametrize(
    ("accept", "query"),
    [
        ("text/html", ""),
        ("application/xml", ""),
        ("*/*", "?format=xml"),
        ("*/*", "?format=%00"),
        ("application/json; indent=999", ""),
        ("application/json; indent=-1", ""),
        ("application/json; indent=abc", ""),
        ("application/yaml", "?format=json"),
        ("\x00", ""),
        ("ü", ""),
        ("*/*", "?format=" + "y" * 10000),
        ("application/vnd.oai.openapi+json; version=99", ""),
        ("*/*", "?format=openapi&format=yaml"),
        ("*/*", "?lang=xx&version=99"),
    ],
)
def test_schema_odd_accept(client, accept, query):
    response = client.get("/api/v1/schema" + query, HTTP_ACCEPT=accept)
    assert response.status_code in (200, 404, 406), (response.status_code, response.content[:300])


@pytest.mark.parametrize(
    "charset",
    [
        "zlib",
        "base64",
        "hex",
        "uu",
        "rot13",
        "bz2",
        "utf-16",
        "utf-32",
        "idna",
        "punycode",
        "unicode_escape",
        "raw_unicode_escape",
        "utf-7",
        "quopri",
    ],
)
@pytest.mark.parametrize("body", [b'{"name": "x"}', b"\x00\xff garbage", b"eJyrVspLzE1VslJQqlACAB1zBE8="])
def test_charset_of_the_body(client, write_key, a_world, charset, body):
    path = f"/api/v1/destinations/{a_world['destination'].pk}"
    response = client.patch(path, body, content_type=f"application/json; charset={charset}", **_auth(write_key))
    assert response.status_code < 500, (response.status_code, response.content[:300])
    # The Idempotency-Key's digest decodes the body in the same charset (LookupError for zlib's kind).
    for _ in range(2):
        response = client.generic(
            "POST",
            "/api/v1/destinations",
            body,
            content_type=f"application/json; charset={charset}",
            HTTP_IDEMPOTENCY_KEY="charset",
            **_auth(write_key),
        )
        assert response.status_code < 500, (response.status_code, response.content[:300])


def test_an_idempotency_key_resent_with_the_same_bytes_in_another_charset_is_another_request(
    client, write_key, organization
):
    # Compact, keys sorted: the bytes are already the canonical form of the UTF-8 reading.
    body = b'{"name":"\xc3\xa9","url":"http://127.0.0.1:9/idem"}'
    first = client.post(
        "/api/v1/destinations", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k", **_auth(write_key)
    )
    assert first.status_code == 201 and first.json()["name"] == "é"
    # Read as Latin-1 the same bytes name the destination "Ã©": not the request whose answer is stored.
    # generic(): post() would transcode the bytes to the charset named.
    again = client.generic(
        "POST",
        "/api/v1/destinations",
        body,
        content_type="application/json; charset=latin-1",
        HTTP_IDEMPOTENCY_KEY="k",
        **_auth(write_key),
    )
    assert again.status_code == 422, again.content
    assert "Idempotent-Replayed" not in again
    assert list(Destination.objects.filter(organization=organization).values_list("name", flat=True)) == ["é"]
    # The same text sent as Latin-1 bytes is the same request: its answer again, not a second destination.
    same_text = client.generic(
        "POST",
        "/api/v1/destinations",
        '{"url": "http://127.0.0.1:9/idem", "name": "é"}'.encode("latin-1"),
        content_type="application/json; charset=latin-1",
        HTTP_IDEMPOTENCY_KEY="k",
        **_auth(write_key),
    )
    assert same_text.status_code == 201 and same_text["Idempotent-Replayed"] == "true"
    assert same_text.json()["id"] == first.json()["id"]


def test_repeated_and_odd_ids_in_a_destination_body(client, write_key, a_world):
    source_id = a_world["source"].pk
    destination_path = f"/api/v1/destinations/{a_world['destination'].pk}"
    for body in (
        {"sources": [source_id, source_id]},
        {"sources": [str(source_id)]},
        {"sources": [float(source_id)]},
        {"sources": [source_id], "event_types": ["invoice.paid", "invoice.paid", "INVOICE.PAID"]},
        {"custom_headers": {"X-Tenant": "a", "x-tenant": "b"}},
        {"custom_headers": {"X-Tenant\r\nX-Injected": "a"}},
        {"custom_headers": {"X-Tenant": "a\r\nX-Injected: b"}},
        {"url": "http://127.0.0.1:9/a\r\nX-Injected: b"},
    ):
        for method, path in (("patch", destination_path), ("post", "/api/v1/destinations")):
            payload = body if method == "patch" else {"name": "d", "url": "http://127.0.0.1:9/d", **body}
            response = getattr(client, method)(path, payload, content_type="application/json", **_auth(write_key))
            assert response.status_code in (200, 201, 400), (body, method, response.status_code, response.content[:300])
            assert b"X-Injected" not in b"".join(
                str(h).encode() for d in Destination.objects.all() for h in (d.custom_headers or {}).items()
            )


@pytest.mark.parametrize("path", ["/api/v1/sources", "/api/v1/destinations", "/api/v1/bulk_retries", "/api/v1/events"])
@pytest.mark.parametrize("position", ["9" * 40, "-" + "9" * 40, "-1", "0", "1e3", "1.5"])
@pytest.mark.parametrize("reverse", [0, 1])
def test_forged_cursor_positions_out_of_any_columns_range(client, write_key, a_world, path, position, reverse):
    cursor = base64.b64encode(urlencode({"o": 5, "r": reverse, "p": position}).encode()).decode()
    response = client.get(path, {"cursor": cursor}, **_auth(write_key))
    assert response.status_code in (200, 400), (response.status_code, response.content[:300])


def test_a_key_with_another_keys_prefix_is_401(client, organization, other_organization, b_world):
    key_a = make_key(organization)[1]
    key_b = make_key(other_organization)[1]
    _, prefix_b, _ = key_b.split("_", 2)
    _, _, secret_a = key_a.split("_", 2)
    response = client.get("/api/v1/events", HTTP_AUTHORIZATION=f"Bearer hl_{prefix_b}_{secret_a}")
    assert response.status_code == 401
    _no_b(response, b_world)
