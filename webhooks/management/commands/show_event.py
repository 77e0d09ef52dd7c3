from datetime import UTC, datetime

from organizations.models import Organization
from webhooks.selectors import sources_for_organization
from webhooks.services.delivery_waits import DELIVERY_WAITS, NEXT_TRY_WHEN_HELD
from webhooks.services.event_story import UNRECORDED_ATTEMPT, event_stories, unrecorded_attempt_numbers
from webhooks.services.text import terminal_text

from ._base import WHOLE_NUMBER, OperatorCommand, find_given


class Command(OperatorCommand):
    help = (
        "What happened to one webhook: its source, status and every delivery attempt. Takes Hookline's "
        "event id, a delivery id (the webhook-id a destination received) or the provider's event id."
    )

    def add_command_arguments(self, parser):
        parser.add_argument("id", help="an event id, a delivery id, or a provider event id such as evt_123")
        parser.add_argument("--org", help="organization slug (without it, every organization is searched)")
        parser.add_argument("--source", type=WHOLE_NUMBER, metavar="ID", help="only this source's events (needs --org)")
        parser.add_argument("--body", action="store_true", help="print the body as well")

    def run(self, **options):
        organization = source = None
        if options.get("org"):
            organization = find_given(Organization.objects.all(), options["org"], field="slug")
        if options.get("source") is not None:
            if organization is None:
                raise ValueError("--source needs --org")
            source = find_given(
                sources_for_organization(organization=organization, with_being_deleted=True), options["source"]
            )
        found = event_stories(text=options["id"], organization=organization, source=source, with_body=options["body"])
        result = {"events": found.stories, "truncated": found.truncated}
        parts = [_story_text(story) for story in found.stories]
        if len(found.stories) > 1 or found.truncated:
            more = " (newest first; more matched, narrow with --org or --source)" if found.truncated else ""
            parts.insert(0, f"{len(found.stories)} events have this id{more}.")
        return result, "\n\n".join(parts)


def _story_text(story: dict) -> str:
    source = story["source"]
    lines = [
        f"Event {story['id']}  {story['organization']['slug']} / {_one_line(source['name'])} ({source['provider']}, "
        f"source {source['id']})",
        f"  {story['status']}  type {_one_line(story['event_type']) or '-'}  "
        f"provider id {_one_line(story['provider_event_id']) or '-'}  "
        f"body {story['body_size']} bytes",
        f"  {_time(story['received_at'])}  received",
    ]
    if rejection := story["rejection"]:
        claimed = f" (claims {_one_line(rejection['claimed_event_id'])})" if rejection["claimed_event_id"] else ""
        lines.append(f"  rejected: {rejection['code']}{claimed}: {_one_line(rejection['detail'])}")
    if story["processed_at"]:
        # What processing made: a replay asked for later is a delivery of the event too, listed below
        # as one, but "processed: 2 deliveries" had the processing make it.
        made = [delivery for delivery in story["deliveries"] if not delivery["is_replay"]]
        lines.append(f"  {_time(story['processed_at'])}  processed: {_count(len(made), 'delivery')}")
    elif failure := story["processing_failure"]:
        tries = _count(failure["tries"], "try").replace("trys", "tries")
        lines.append(
            f"  could not be processed: {_one_line(failure['error'])}, {tries}, next try at {_time(failure['next_try_at'])}"
        )
    elif story["status"] == "received":
        lines.append("  not processed yet: no delivery made")
    if story["duplicate_count"]:
        last = f", last at {_time(story['last_duplicate_at'])}" if story["last_duplicate_at"] else ""
        lines.append(f"  received again {_count(story['duplicate_count'], 'time')} (duplicates, not delivered){last}")
    for delivery in story["deliveries"]:
        destination = delivery["destination"]
        state = delivery["status"]
        if until := NEXT_TRY_WHEN_HELD.get(delivery["waiting_for"]):
            # Its time alone would be untrue: a paused destination's delivery due minutes ago is not sent.
            due = f" (due {_time(delivery['next_attempt_at'])})" if delivery["next_attempt_at"] else ""
            state += f", next attempt {until}{due}"
        elif delivery["next_attempt_at"]:
            state += f", next attempt {_time(delivery['next_attempt_at'])}"
        if delivery["status"] != "pending" and destination["being_deleted"]:
            state += ", destination being deleted"
        elif delivery["status"] != "pending" and (destination["paused"] or not destination["active"]):
            state += ", destination " + ("paused" if destination["paused"] else "inactive")
        replay = " (replay)" if delivery["is_replay"] else ""
        lines.append(
            f"  → {_one_line(destination['name'])} ({destination['host']}){replay}: {state}, "
            + _count(delivery["attempt_count"], "attempt")
            # The id the receiver got, for the tenant to look for in its own logs.
            + f", webhook-id {delivery['webhook_id']}"
        )
        if delivery["waiting_for"]:
            lines.append(f"      waiting: {DELIVERY_WAITS[delivery['waiting_for']]}")
        attempt_lines = {}
        for attempt in delivery["attempts"]:
            answer = attempt["response_status"] or "no answer"
            detail = _one_line(attempt["error"] or attempt["response_excerpt"].replace("\n", " "))
            # Said as the event page's "the answer was longer": the excerpt alone reads as the whole answer.
            cut = "  (response: its start only, the answer was longer)" if attempt["response_truncated"] else ""
            attempt_lines[attempt["attempt_number"]] = (
                f"      {_time(attempt['started_at'])}  #{attempt['attempt_number']} {answer} "
                f"in {attempt['duration_ms']} ms" + (f"  {detail}" if detail else "") + cut
            )
        # Said, rather than "2 attempts" over one attempt line.
        for number in unrecorded_attempt_numbers(
            attempt_count=delivery["attempt_count"], status=delivery["status"], recorded=set(attempt_lines)
        ):
            attempt_lines[number] = f"      #{number} {UNRECORDED_ATTEMPT}"
        lines += [attempt_lines[number] for number in sorted(attempt_lines)]
        if delivery["status"] == "dead" and delivery["last_error"]:
            # Why it stopped: the attempts alone do not say whether retries ran out, a client error was
            # not retried or the retry age was reached (the dashboard's "Why it failed").
            lines.append(f"      why it failed: {_one_line(delivery['last_error'])}")
        elif not delivery["attempts"] and delivery["last_error"]:
            lines.append(f"      {_one_line(delivery['last_error'])}")
        elif delivery["status"] == "pending" and delivery["last_error"]:
            # What the attempt lines do not say: why the next attempt is when it is ("HTTP 429: next try in
            # 1 h, as the receiver's Retry-After asks"), or that the platform put it back unsent. Named
            # as in the JSON (last_error).
            lines.append(f"      last error: {_one_line(delivery['last_error'])}")
    for refusal in story["left_out_by_payload_filters"]:
        lines.append(
            f"  not sent to {_one_line(refusal['destination']['name'])}: its payload filters (as they are now) leave it "
            f"out: {_one_line(refusal['reason'])}"
        )
    for refusal in story["left_out_by_event_types"]:
        lines.append(f"  not sent to {_one_line(refusal['destination']['name'])}: {_one_line(refusal['reason'])}")
    if "body" in story:
        lines += ["  body:", *(f"    {line}" for line in story["body"].splitlines())]
    return "\n".join(lines)


def _one_line(value: str | None) -> str | None:
    """A sender's or receiver's text kept on its line: a line break in an event type must not print
    a line that reads as one of this command's own ("  → endpoint: succeeded")."""
    return terminal_text(value, keep_lines=False) if value else value


def _time(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _count(number: int, noun: str) -> str:
    plural = "deliveries" if noun == "delivery" else noun + "s"
    return f"{number} {noun if number == 1 else plural}"
