"""Operator commands print one JSON object with --json and go through the services."""

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from organizations.models import AuditLog, Membership, Organization
from webhooks.models import Delivery, Destination, Source, WebhookEvent

from .dashboard_helpers import dead_delivery, ingest_stripe
from .delivering import deliver_now
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db


def run(*args) -> dict:
    out = io.StringIO()
    call_command(*args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_operator_flow_from_organization_to_listed_event(client, httpserver, monkeypatch):
    from webhooks.services import processing

    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    org = run("create_organization", "--name", "Acme", "--slug", "acme", "--owner-email", "Boss@Acme.example")
    assert org["slug"] == "acme"
    organization = Organization.objects.get(pk=org["id"])
    assert Membership.objects.get(organization=organization).role == "owner"
    assert Membership.objects.get(organization=organization).user.email == "boss@acme.example"

    source = run(
        "create_source",
        "--org",
        "acme",
        "--provider",
        "stripe",
        "--name",
        "live",
        "--secret",
        STRIPE_SECRET,
        "--option",
        "tolerance=600",
    )
    assert set(source) == {"id", "token", "ingest_url", "allowed_networks"}
    assert source["allowed_networks"] == []
    assert source["ingest_url"] == f"http://testserver/in/{source['token']}/"
    assert Source.objects.get(pk=source["id"]).options["tolerance"] == 600

    generated = run("create_source", "--org", "acme", "--provider", "github", "--name", "repo")
    assert len(generated["secret"]) >= 32

    destination = run(
        "create_destination",
        "--org",
        "acme",
        "--name",
        "app",
        "--url",
        httpserver.url_for("/hook"),
        "--source",
        str(source["id"]),
        "--event-types",
        "invoice.*",
    )
    assert destination["secret"].startswith("whsec_")

    body = '{"id":"evt_cmd","object":"event","type":"invoice.paid"}'
    client.generic(
        "POST", f"/in/{source['token']}/", body, content_type="application/json", **stripe_headers(body, STRIPE_SECRET)
    )
    processing.process_received_events()
    listed = run("list_events", "--org", "acme")
    assert listed["events"][0]["provider_event_id"] == "evt_cmd"
    delivery_id = listed["events"][0]["deliveries"][0]["id"]
    assert listed["events"][0]["deliveries"] == [
        {
            "id": delivery_id,
            "webhook_id": listed["events"][0]["id"],
            "destination": "app",
            "destination_id": destination["id"],
            "is_replay": False,
            "status": "pending",
            "attempts": 0,
            "last_status_code": None,
            "last_error": None,
            "next_attempt_at": None,
        }
    ]
    # "What happened to webhook X": any exact id finds it, a rejected request's claimed id too.
    forged = '{"id":"evt_forged","object":"event","type":"invoice.paid"}'
    client.generic(
        "POST", f"/in/{source['token']}/", forged, content_type="application/json", **stripe_headers(forged, "whsec_x")
    )
    rejected = run("list_events", "--org", "acme", "--search", "evt_forged")["events"]
    # The operator's list shows rejected requests by default, unlike the dashboard's and the API's.
    assert [e["status"] for e in run("list_events", "--org", "acme")["events"]] == ["rejected", "processed"]
    assert [(e["status"], e["claimed_event_id"], e["rejection"]) for e in rejected] == [
        ("rejected", "evt_forged", "no_matching_secret")
    ]
    assert [e["provider_event_id"] for e in run("list_events", "--org", "acme", "--search", delivery_id)["events"]] == [
        "evt_cmd"
    ]
    assert run("list_events", "--org", "acme", "--status", "failed")["events"] == []
    actions = set(AuditLog.objects.filter(organization=organization).values_list("action", flat=True))
    assert {"organization.created", "source.created", "destination.created", "subscription.created"} <= actions


def test_list_events_says_why_a_delivery_failed_and_which_id_to_retry(client, organization, httpserver, monkeypatch):
    # "What happened to webhook X" from a shell: the failed attempt's error, when the next try is due,
    # and the delivery id that `retry_delivery --id` takes, without a trip to the dashboard.
    from webhooks.services import delivery as delivery_service
    from webhooks.services import processing

    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("db locked", status=500)
    ingest_stripe(client, source, "evt_why")
    processing.process_received_events()
    delivery = WebhookEvent.objects.get(provider_event_id="evt_why").deliveries.get()
    deliver_now(delivery.pk)
    delivery.refresh_from_db()

    (listed,) = run("list_events", "--org", organization.slug, "--search", "evt_why")["events"]
    (shown,) = listed["deliveries"]
    assert (shown["status"], shown["last_status_code"], shown["last_error"]) == ("pending", 500, "HTTP 500")
    assert shown["next_attempt_at"] == delivery.next_attempt_at.isoformat()

    out = io.StringIO()
    call_command("list_events", "--org", organization.slug, "--search", "evt_why", stdout=out)
    line = out.getvalue().splitlines()[1]
    assert "endpoint: pending (1 attempt), last: HTTP 500, next try" in line
    assert str(delivery.pk) in line

    forged = '{"id":"evt_forged_text","object":"event","type":"invoice.paid"}'
    client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        forged,
        content_type="application/json",
        **stripe_headers(forged, "whsec_x"),
    )
    out = io.StringIO()
    call_command("list_events", "--org", organization.slug, "--search", "evt_forged_text", stdout=out)
    assert "signature" in out.getvalue().splitlines()[1]  # the rejection's detail, not only its code


def test_list_events_names_the_source_and_tells_a_replay_from_the_first_delivery(client, organization, monkeypatch):
    # Two lines to the same destination read as a duplicate unless the second says it is a replay.
    from webhooks.services import operations

    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: None)
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_replayed"))
    dead_delivery(event, destination)
    operations.event_replay(event=event, destination=destination)

    (listed,) = run("list_events", "--org", organization.slug)["events"]
    assert [d["is_replay"] for d in sorted(listed["deliveries"], key=lambda d: d["id"])] == [False, True]
    out = io.StringIO()
    call_command("list_events", "--org", organization.slug, stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("evt_replayed  (source Stripe live)")
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == ["→ endpoint", "→ endpoint (replay)"]


def test_list_events_says_how_many_times_an_event_was_received(client, organization, monkeypatch):
    # The JSON gives duplicate_count; the lines said nothing of the provider's redeliveries.
    from webhooks.services import operations

    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: None)
    source = make_source(organization, name="Stripe live")
    ingest_stripe(client, source, "evt_once")
    for _ in range(3):
        ingest_stripe(client, source, "evt_thrice")

    assert {
        e["provider_event_id"]: e["duplicate_count"] for e in run("list_events", "--org", organization.slug)["events"]
    } == {"evt_once": 0, "evt_thrice": 2}
    out = io.StringIO()
    call_command("list_events", "--org", organization.slug, stdout=out)
    lines = {line.split("  (source")[0].split()[-1]: line for line in out.getvalue().splitlines()}
    assert lines["evt_thrice"].endswith("(source Stripe live)  ×3 received")
    assert lines["evt_once"].endswith("(source Stripe live)")


def test_commands_explain_bad_input():
    with pytest.raises(CommandError, match=r'^no such organization "missing"$'):
        run("create_source", "--org", "missing", "--provider", "stripe", "--name", "x", "--secret", "y")


def test_provider_that_issues_its_own_secret_requires_one(organization):
    with pytest.raises(CommandError, match="--secret"):
        run("create_source", "--org", organization.slug, "--provider", "stripe", "--name", "x")
    # Another refusal is not blamed on the missing secret.
    with pytest.raises(CommandError) as refused:
        run("create_source", "--org", organization.slug, "--provider", "github", "--name", "x", "--option", "a=1")
    assert "unknown option" in str(refused.value) and "--secret" not in str(refused.value)
    with pytest.raises(CommandError, match="option"):
        run(
            "create_source",
            "--org",
            organization.slug,
            "--provider",
            "stripe",
            "--name",
            "x",
            "--secret",
            "whsec_x",
            "--option",
            "nonsense=1",
        )


def test_seed_demo_is_idempotent(settings):
    first = run("seed_demo")
    second = run("seed_demo")
    assert first["created"] is True and second["created"] is False
    assert first["source_id"] == second["source_id"]
    assert first["destination_id"] == second["destination_id"]


def test_seed_demo_gives_make_run_the_secret_its_demo_destination_signs_with_once(settings):
    # `make run`'s demo receiver verifies each delivery with it (run_local keeps it in var/).
    seeded = run("seed_demo")
    assert seeded["destination_secret"].startswith("whsec_")
    assert seeded["destination_secret"] == Destination.objects.get(pk=seeded["destination_id"]).secret
    # Never again once set: every later run printed it.
    again = io.StringIO()
    call_command("seed_demo", "--json", stdout=again)
    assert "destination_secret" not in json.loads(again.getvalue())
    assert seeded["destination_secret"] not in again.getvalue()
    in_words = io.StringIO()
    call_command("seed_demo", stdout=in_words)
    assert seeded["destination_secret"] not in in_words.getvalue()


def test_seed_demo_that_fails_half_way_leaves_nothing_and_the_next_run_creates_everything(settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = False  # the demo receiver on 127.0.0.1 is refused
    with pytest.raises(CommandError):
        run("seed_demo")
    assert not Source.objects.filter(organization__slug="demo").exists()
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    seeded = run("seed_demo")
    assert seeded["created"] is True and seeded["destination_id"] is not None


def test_seed_demo_does_not_bring_back_what_the_tenant_deleted(settings):
    first = run("seed_demo")
    Destination.objects.filter(pk=first["destination_id"]).delete()
    again = run("seed_demo")
    assert again["destination_id"] is None and again["destination_url"] is None
    assert again["source_id"] == first["source_id"]
    assert not Destination.objects.filter(organization__slug="demo").exists()
    Source.objects.filter(pk=first["source_id"]).delete()
    assert run("seed_demo")["source_id"] is None and run("seed_demo")["ingest_url"] is None


def test_create_organization_refuses_what_the_dashboard_could_not_use():
    for args, reason in [
        (["--name", "Bad", "--slug", "Bad Slug!", "--owner-email", "owner@bad.example"], "slug"),
        (["--name", "Bad", "--slug", "bad", "--owner-email", "not-an-email"], "email"),
        (["--name", " ", "--slug", "bad", "--owner-email", "owner@bad.example"], "name"),
    ]:
        out = io.StringIO()
        with pytest.raises(CommandError, match=reason):
            call_command("create_organization", *args, "--json", stdout=out)
        assert reason in json.loads(out.getvalue())["error"]  # --json still prints one JSON object
    assert not Organization.objects.exists()
    run("create_organization", "--name", "Good", "--slug", "good", "--owner-email", "owner@good.example")
    with pytest.raises(CommandError, match="already exists"):
        run("create_organization", "--name", "Again", "--slug", "good", "--owner-email", "owner@good.example")


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"--timeout": "-1"}, "between 1 and 60"),
        ({"--timeout": "0"}, "between 1 and 60"),
        ({"--timeout": "1000"}, "between 1 and 60"),
        ({"--url": "http://user:pass@127.0.0.1:9/hook"}, "user name or password"),
        ({"--name": ""}, "needs a name"),
    ],
)
def test_create_destination_refuses_settings_it_could_not_honour(organization, overrides, reason):
    options = {"--name": "endpoint", "--url": "http://127.0.0.1:9/hook", **overrides}
    with pytest.raises(CommandError, match=reason):
        run("create_destination", "--org", organization.slug, *[part for pair in options.items() for part in pair])


def test_create_destination_sets_the_delivery_policy(organization, settings):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 300, 900]
    created = run(
        "create_destination",
        "--org",
        organization.slug,
        "--name",
        "careful",
        "--url",
        "http://127.0.0.1:9/hook",
        "--timeout-seconds",
        "5",
        "--max-attempts",
        "3",
        "--max-retry-age-seconds",
        "3600",
        "--max-concurrency",
        "2",
        "--rate-limit-per-second",
        "20",
        "--retry-client-errors",
    )
    policy = {
        "timeout_seconds": 5.0,
        "retry_client_errors": True,
        "max_concurrency": 2,
        "rate_limit_per_second": 20,
        "retry_schedule": None,  # the platform's
        "max_attempts": 3,
        "max_retry_age_seconds": 3600,
    }
    assert created["policy"] == policy
    destination = Destination.objects.get(pk=created["id"])
    assert {field: getattr(destination, field) for field in policy} == policy
    audited = AuditLog.objects.get(action="destination.created", target_id=str(destination.pk))
    assert audited.changes["max_attempts"] == 3

    # Without the flags: the model's defaults, and the text says the retries in words.
    out = io.StringIO()
    call_command("create_destination", "--org", "acme", "--name", "plain", "--url", "http://127.0.0.1:9/p", stdout=out)
    plain = Destination.objects.get(name="plain")
    assert (plain.max_attempts, plain.max_concurrency, plain.rate_limit_per_second) == (None, 10, None)
    assert (plain.max_retry_age_seconds, plain.retry_client_errors, plain.timeout_seconds) == (None, False, 15.0)
    assert "Retry policy: up to 4 attempts (the platform's whole schedule)" in out.getvalue()


DESTINATION_D = ("create_destination", "--org", "acme", "--name", "d", "--url", "http://127.0.0.1:9/d")


@pytest.mark.parametrize(
    "flag, value, reason",
    [
        ("--max-concurrency", "0", "from 1 to 50"),
        ("--max-concurrency", "51", "from 1 to 50"),
        ("--rate-limit-per-second", "0", "from 1 to 1000"),
        ("--rate-limit-per-second", "1001", "from 1 to 1000"),
        ("--max-attempts", "0", "from 1 .no retries. to 4"),
        ("--max-attempts", "5", "from 1 .no retries. to 4"),
        ("--max-retry-age-seconds", "59", "60 to 2592000 seconds"),
        ("--max-retry-age-seconds", str(30 * 86400 + 1), "60 to 2592000 seconds"),
        ("--timeout-seconds", "61", "between 1 and 60"),
    ],
)
def test_create_destination_refuses_a_policy_out_of_bounds_naming_the_flag(organization, settings, flag, value, reason):
    settings.DELIVERY_RETRY_SCHEDULE = [60, 300, 900]
    named = "--timeout" if flag == "--timeout-seconds" else flag
    out = io.StringIO()
    with pytest.raises(CommandError, match=f"^{named}: .*{reason}") as refused:
        call_command(*DESTINATION_D, flag, value, "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"error": str(refused.value)}
    assert not Destination.objects.exists()
    with pytest.raises(CommandError, match=rf"^Error: argument {named}\S*: must be a (whole )?number, not 'many'$"):
        run(*DESTINATION_D, flag, "many")


def test_bad_values_are_explained_plainly():
    with pytest.raises(CommandError) as raised:
        run("retry_delivery", "--id", "not-a-uuid")
    assert "[" not in str(raised.value)  # a message, not a Python list
    with pytest.raises(CommandError, match=r'^no such delivery "0190a8b2-0000-7000-8000-000000000000"$'):
        run("retry_delivery", "--id", "0190a8b2-0000-7000-8000-000000000000")


FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize("given", ["123", "not-a-uuid", "0190a8b2-0000-7000-8000", "DELIVERY_FULLWIDTH"])
def test_a_delivery_id_that_is_not_a_uuid_is_no_such_delivery(organization, client, given):
    # Django's "“123” is not a valid UUID" read as a fault of the command; a well-formed unknown id says
    # "no such delivery", with the same exit status. An id in fullwidth digits is not the delivery's
    # own, which uuid.UUID (through int()) took it for, and retried it.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    delivery = dead_delivery(WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_id")), destination)
    if given == "DELIVERY_FULLWIDTH":
        given = str(delivery.pk).translate(FULLWIDTH)
        assert given != str(delivery.pk)
    out = io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("retry_delivery", "--id", given, "--json", stdout=out)
    assert str(refused.value) == f'no such delivery "{given}"'
    assert refused.value.returncode == 1
    assert json.loads(out.getvalue()) == {"error": f'no such delivery "{given}"'}
    assert Delivery.objects.get(pk=delivery.pk).status == Delivery.Status.DEAD


def test_a_delivery_id_pasted_with_spaces_is_still_found(organization, client):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    delivery = dead_delivery(WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_pasted")), destination)
    assert run("retry_delivery", "--id", f" {delivery.pk} ")["id"] == str(delivery.pk)


@pytest.mark.parametrize("limit", ["-5", "0", "1001", "5000", "many"])
def test_list_events_limit_is_bounded(organization, limit):
    # Every event is listed with all its deliveries: --limit 1000000 would load an organization at once.
    with pytest.raises(
        CommandError, match=rf"^Error: argument --limit: must be a whole number from 1 to 1000, not '{limit}'$"
    ):
        run("list_events", "--org", organization.slug, "--limit", limit)


def test_list_events_limit_takes_its_bounds(client, organization, monkeypatch):
    from webhooks.services import processing

    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    source = make_source(organization)
    for number in range(2):
        ingest_stripe(client, source, f"evt_{number}")
    assert [
        e["provider_event_id"] for e in run("list_events", "--org", organization.slug, "--limit", "1")["events"]
    ] == ["evt_1"]
    assert len(run("list_events", "--org", organization.slug, "--limit", "1000")["events"]) == 2


SOURCE_D = ("--provider", "stripe", "--name", "x", "--secret", "whsec_x")
ORG_TYPO = 'no such organization "acme-typo"'


@pytest.mark.parametrize(
    "args, message",
    [
        (("create_source", "--org", "acme-typo", *SOURCE_D), ORG_TYPO),
        (("create_destination", "--org", "acme-typo", "--name", "d", "--url", "http://127.0.0.1:9/"), ORG_TYPO),
        (("list_events", "--org", "acme-typo"), ORG_TYPO),
        (("show_event", "evt_1", "--org", "acme-typo"), ORG_TYPO),
        (("show_event", "evt_1", "--org", "acme", "--source", "987654"), 'no such source "987654"'),
        (("create_api_key", "--org", "acme-typo", "--name", "deploy"), ORG_TYPO),
        (("send_test_webhook", "--source", "987654"), 'no such source "987654"'),
        (
            ("retry_delivery", "--id", "0190a8b2-0000-7000-8000-0000000000ff"),
            'no such delivery "0190a8b2-0000-7000-8000-0000000000ff"',
        ),
    ],
)
def test_a_lookup_that_finds_nothing_names_the_value_given(organization, args, message):
    # With several lookup arguments (--org and --source), "no such source" alone left the operator guessing.
    out = io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command(*args, "--json", stdout=out)
    assert str(refused.value) == message
    assert json.loads(out.getvalue()) == {"error": message}


def test_a_value_an_error_quotes_is_in_double_quotes_as_in_every_command(organization):
    # rotate_encryption_keys, --option and create_organization quoted it 'so', where the lookups say "so".
    source = make_source(organization)
    for args, message in (
        (("rotate_encryption_keys", "--verify", "--org", "acme-typo"), 'no organization has the slug "acme-typo"'),
        (
            ("create_source", "--org", organization.slug, "--provider", "github", "--name", "g", "--option", "algo"),
            '--option takes name=value, got "algo"',
        ),
        (
            ("create_organization", "--name", "Again", "--slug", organization.slug, "--owner-email", "o@a.example"),
            f'an organization with slug "{organization.slug}" already exists',
        ),
        (("send_test_webhook", "--source", str(source.pk), "--fixture", "nope"), 'no fixture "nope" for stripe; '),
    ):
        out = io.StringIO()
        with pytest.raises(CommandError) as refused:
            call_command(*args, "--json", stdout=out)
        assert str(refused.value).startswith(message), args
        assert json.loads(out.getvalue()) == {"error": str(refused.value)}
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert out.getvalue().startswith('Demo organization "demo" created.'), out.getvalue()


def test_a_destination_cannot_be_hooklines_own_ingest_url(organization, settings):
    settings.PUBLIC_BASE_URL = "https://hooks.example.com"
    with pytest.raises(CommandError, match="loop"):
        run(
            "create_destination",
            "--org",
            organization.slug,
            "--name",
            "loop",
            "--url",
            "https://hooks.example.com:443/in/abc/",
        )


def test_send_test_webhook_exits_non_zero_unless_the_answer_is_2xx(organization, httpserver):
    source = make_source(organization)
    httpserver.expect_request("/accepted").respond_with_data('{"id": "x"}', status=200)
    httpserver.expect_request("/refused").respond_with_data('{"error": "missing_signature"}', status=401)

    accepted = io.StringIO()
    call_command(
        "send_test_webhook", "--source", source.pk, "--url", httpserver.url_for("/accepted"), "--json", stdout=accepted
    )
    assert json.loads(accepted.getvalue())["status"] == 200

    for url in (httpserver.url_for("/refused"), "http://127.0.0.1:9/unreachable"):
        out = io.StringIO()
        with pytest.raises(CommandError) as failure:
            call_command("send_test_webhook", "--source", source.pk, "--url", url, "--json", stdout=out)
        assert failure.value.returncode == 1
        answer = json.loads(out.getvalue())  # the answer is still printed, whole
        assert answer["status"] == 401 or answer["error"]


def test_retry_delivery_says_when_its_destination_is_paused(organization, client):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_paused"))
    delivery = dead_delivery(event, destination)
    assert run("retry_delivery", "--id", str(delivery.pk))["waiting_for"] is None

    delivery.status = delivery.Status.DEAD
    delivery.save(update_fields=["status"])
    destination.paused_at = timezone.now()
    destination.save(update_fields=["paused_at"])
    out = io.StringIO()
    call_command("retry_delivery", "--id", str(delivery.pk), stdout=out)
    assert (
        "Its destination is paused: it is sent once the destination is resumed (if held too long, it is"
        in out.getvalue()
    )


def test_retry_delivery_says_when_its_organization_is_suspended(organization, client):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    delivery = dead_delivery(WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_held")), destination)
    Organization.objects.filter(pk=organization.pk).update(is_active=False)
    out = io.StringIO()
    call_command("retry_delivery", "--id", str(delivery.pk), stdout=out)
    assert (
        "Its organization is suspended: it is sent once the organization is active again (if held too long, "
        "it is marked dead: the organization page in the admin says from when)."
    ) in out.getvalue()
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DEAD)
    assert run("retry_delivery", "--id", str(delivery.pk))["waiting_for"] == "organization_suspended"

    Organization.objects.filter(pk=organization.pk).update(deletion_requested_at=timezone.now())
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DEAD)
    with pytest.raises(CommandError, match="its organization is being deleted: nothing more is sent"):
        run("retry_delivery", "--id", str(delivery.pk))
    assert Delivery.objects.get(pk=delivery.pk).status == Delivery.Status.DEAD


def test_create_destination_says_a_destination_without_source_receives_nothing(organization, settings):
    out = io.StringIO()
    call_command("create_destination", "--org", "acme", "--name", "Lonely", "--url", "http://127.0.0.1:9/x", stdout=out)
    assert "It receives nothing until a source is linked to it" in out.getvalue()
    assert "destination edit page (" in out.getvalue()
    result = run("create_destination", "--org", "acme", "--name", "Lonely 2", "--url", "http://127.0.0.1:9/y")
    assert result["sources"] == []
    # No command links a source later: the warning says where it can be done.
    edit_page = f"{settings.PUBLIC_BASE_URL}/o/acme/destinations/{result['id']}/edit/"
    assert result["warning"] == (
        "It receives nothing until a source is linked to it. No command links a source to an existing "
        f"destination: link one on the dashboard's destination edit page ({edit_page})."
    )
    source = make_source(organization)
    linked = run(
        "create_destination",
        "--org",
        "acme",
        "--name",
        "Linked",
        "--url",
        "http://127.0.0.1:9/z",
        "--source",
        source.pk,
    )
    assert linked["sources"] == [source.pk] and "warning" not in linked


def test_create_destination_refuses_a_filter_without_a_source(organization):
    # A filter with nowhere to live (filters belong to a source's subscription) is refused, not dropped.
    with pytest.raises(CommandError, match="choose at least one source"):
        call_command(
            "create_destination",
            "--org",
            "acme",
            "--name",
            "F",
            "--url",
            "http://127.0.0.1:9/x",
            "--event-types",
            "invoice.*",
        )


@pytest.mark.parametrize(
    ("patterns", "reason"),
    [
        ("a b", "no spaces"),
        ("[invalid", "never closed"),
        ("a[!]", "never closed"),
        ("x[a]y[b", "never closed"),
        ("x" * 256, "at most 255"),
    ],
)
def test_event_type_patterns_that_cannot_be_meant_are_refused(organization, patterns, reason):
    source = make_source(organization)
    with pytest.raises(CommandError, match=reason):
        call_command(
            "create_destination",
            *("--org", "acme", "--name", "F", "--url", "http://127.0.0.1:9/x"),
            *("--source", str(source.pk), "--event-types", f"invoice.*,{patterns}"),
        )
    assert not Destination.objects.filter(name="F").exists()
    # Shell-style patterns that are meant stay as given.
    run(
        "create_destination",
        *("--org", "acme", "--name", "G", "--url", "http://127.0.0.1:9/x", "--source", str(source.pk)),
        *("--event-types", "invoice.*, orders/create,[ab]c.?,[]x]y,[!a]z"),
    )
    assert Destination.objects.get(name="G").subscriptions.get().event_types == [
        "invoice.*",
        "orders/create",
        "[ab]c.?",
        "[]x]y",
        "[!a]z",
    ]


def test_refused_input_is_one_json_object_and_never_a_database_traceback(organization):
    # Too long for its column (PostgreSQL refused it with a DataError), or malformed.
    cases = [
        ("create_organization", "--name", "X", "--slug", "s" * 80, "--owner-email", "a@b.example"),
        ("create_organization", "--name", "N" * 300, "--slug", "long-name", "--owner-email", "a@b.example"),
        ("create_destination", "--org", organization.slug, "--name", "d", "--url", "https://a.example/" + "x" * 3000),
        ("create_source", "--org", organization.slug, "--provider", "github", "--name", "g", "--option", "algo"),
        ("create_source", "--org", organization.slug, "--provider", "github", "--name", " "),
    ]
    for args in cases:
        out = io.StringIO()
        with pytest.raises(CommandError) as refused:
            call_command(*args, "--json", stdout=out)
        assert json.loads(out.getvalue()) == {"error": str(refused.value)}, args
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("purge_audit_log", "--older-than-days", "0", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"error": "--older-than-days must be at least 1"}


def test_audit_entries_of_operator_commands_name_the_command():
    # Every command's entries read "system", like the sweeper's and the retention task's: the log
    # could not tell an operator's change from the platform's own work.
    from organizations.services import audit_record

    run("create_organization", "--name", "Acme", "--slug", "acme", "--owner-email", "boss@acme.example")
    created = AuditLog.objects.get(action="organization.created")
    assert (created.actor_type, created.actor_label) == (AuditLog.ActorType.SYSTEM, "manage.py create_organization")
    run("create_api_key", "--org", "acme", "--name", "deploy")
    assert AuditLog.objects.get(action="api_key.created").actor_label == "manage.py create_api_key"
    call_command("purge_audit_log", "--older-than-days", "30", stdout=io.StringIO())
    assert AuditLog.objects.get(action="audit.purged").actor_label == "manage.py purge_audit_log"
    # Outside a command (a task, the sweeper), the platform itself.
    assert audit_record(action="retention.purged").actor_label == "system"


def test_create_destination_names_the_sources_it_cannot_find_without_a_python_list(organization):
    with pytest.raises(CommandError) as refused:
        run(
            "create_destination",
            "--org",
            "acme",
            "--name",
            "d",
            "--url",
            "http://127.0.0.1:9/",
            "--source",
            "98",
            "--source",
            "99",
        )
    assert (
        str(refused.value) == "organization acme has no source 98, 99"
    )  # was "no source [98, 99] in organization acme"


def test_create_organization_says_where_the_owner_signs_in(settings):
    # Creating the organization mails nobody, so the operator is given the page to send the owner to.
    settings.PUBLIC_BASE_URL = "https://hooks.example.com"
    result = run("create_organization", "--name", "Acme", "--slug", "acme", "--owner-email", "boss@acme.example")
    assert result["sign_in_url"] == "https://hooks.example.com/accounts/sign-in/"
    out = io.StringIO()
    call_command(
        "create_organization", "--name", "Beta", "--slug", "beta", "--owner-email", "b@beta.example", stdout=out
    )
    assert "Nothing was emailed: the owner signs in at https://hooks.example.com/accounts/sign-in/" in out.getvalue()
