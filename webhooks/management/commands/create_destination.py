from django.conf import settings
from django.urls import reverse

from organizations.models import Organization
from webhooks.selectors import sources_for_organization
from webhooks.services.destination_headers import CustomHeaderError, parse_header_file
from webhooks.services.destinations import (
    DELIVERY_POLICY_FIELDS,
    RECEIVES_NOTHING_WITHOUT_SOURCE,
    DestinationError,
    destination_create,
    parse_retry_schedule,
    retry_policy_words,
)
from webhooks.services.payload_filters import (
    PayloadFilterError,
    parse_labelled_payload_filter_lines,
    payload_filter_line,
)

from ._base import (
    WHOLE_NUMBER,
    NumberArgument,
    OperatorCommand,
    add_secret_arguments,
    find_given,
    read_secret_input,
    shown_path,
)

POLICY_FIELDS = ("timeout_seconds", "retry_client_errors", *DELIVERY_POLICY_FIELDS)
PAYLOAD_FILTER_FLAG = "--payload-filter"


class Command(OperatorCommand):
    help = "Create a destination URL that receives the events of the given sources."

    def add_command_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--url", required=True)
        parser.add_argument("--source", action="append", type=WHOLE_NUMBER, default=[], metavar="ID")
        parser.add_argument("--event-types", default="", help="comma-separated patterns such as invoice.*")
        parser.add_argument(
            "--timeout",
            "--timeout-seconds",
            dest="timeout",
            type=NumberArgument(fraction=True),
            help="seconds an attempt waits (default 15)",
        )
        # The delivery policy, as the dashboard's form and the REST API take it (same names and bounds).
        parser.add_argument(
            "--retry-schedule",
            metavar="WAITS",
            help="the waits before each retry, comma-separated: seconds or with s, m, h, d (10,60,600 or 10s,1m,10m); "
            "default the platform's DELIVERY_RETRY_SCHEDULE",
        )
        parser.add_argument(
            "--max-attempts", type=WHOLE_NUMBER, metavar="N", help="attempts on the schedule, 1: no retries"
        )
        parser.add_argument(
            "--max-retry-age-seconds",
            type=WHOLE_NUMBER,
            metavar="SECONDS",
            help="no retry later than this after delivery",
        )
        parser.add_argument(
            "--max-concurrency", type=WHOLE_NUMBER, metavar="N", help="attempts sent at once (default 10)"
        )
        parser.add_argument(
            "--rate-limit-per-second", type=WHOLE_NUMBER, metavar="N", help="attempts started per second"
        )
        parser.add_argument("--retry-client-errors", action="store_true", help="retry 4xx answers too")
        parser.add_argument(
            "--payload-filter",
            action="append",
            default=[],
            metavar="EXPR",
            help="a condition on the JSON body, as on the dashboard: 'data.object.livemode == true', "
            "'ref in [\"refs/heads/main\"]', 'data.id exists' (repeat for more; all must hold)",
        )
        add_secret_arguments(
            parser,
            "header",
            action="append",
            default=[],
            metavar='"NAME: VALUE"',
            help="a custom header sent with every attempt (repeat for more); its value is never shown again",
            file_help="custom headers from this file, one 'Name: value' per line (blank lines and lines starting "
            "with # are skipped); with --header too, the headers of both",
        )

    def run(self, **options):
        headers = self._headers(options)
        payload_filters = self._payload_filters(options["payload_filter"])
        organization = find_given(Organization.objects.all(), options["org"], field="slug")
        sources = list(sources_for_organization(organization=organization).filter(pk__in=options["source"]))
        missing = set(options["source"]) - {source.pk for source in sources}
        if missing:
            ids = ", ".join(str(pk) for pk in sorted(missing))
            raise ValueError(f"organization {organization.slug} has no source {ids}")
        headers_flag = "--header" if not options["header_file"] else "--header-file"
        if options["header"] and options["header_file"]:
            headers_flag = "--header/--header-file"
        try:
            retry_schedule = None
            if (given_schedule := options.get("retry_schedule")) is not None:
                # Empty could mean the platform's schedule or no retries: the flag's absence says the one.
                retry_schedule = parse_retry_schedule(given_schedule)
                if retry_schedule is None:
                    raise DestinationError(
                        "give at least one wait (10,60,600), or leave the flag out for the platform's schedule",
                        field="retry_schedule",
                    )
            destination, secret = destination_create(
                organization=organization,
                name=options["name"],
                url=options["url"],
                sources=sources,
                event_types=options["event_types"].split(","),
                timeout_seconds=options.get("timeout"),
                retry_client_errors=options.get("retry_client_errors", False),
                max_concurrency=options.get("max_concurrency"),
                rate_limit_per_second=options.get("rate_limit_per_second"),
                retry_schedule=retry_schedule,
                max_attempts=options.get("max_attempts"),
                max_retry_age_seconds=options.get("max_retry_age_seconds"),
                custom_headers=headers,
                payload_filters=payload_filters,
            )
        except DestinationError as exc:
            # Named by the flag that set it: "--max-concurrency: concurrent attempts must be …".
            flag = {"timeout_seconds": "--timeout", "custom_headers": headers_flag}.get(exc.field) or (
                exc.field and "--" + exc.field.replace("_", "-")
            )
            raise ValueError(f"{flag}: {exc}" if flag else str(exc)) from None
        result = {
            "id": destination.pk,
            "secret": secret,
            "sources": [source.pk for source in sources],
            "policy": {field: getattr(destination, field) for field in POLICY_FIELDS},
            "custom_headers": destination.custom_header_hints,  # names and hints, never a value
            "payload_filters": destination.payload_filters,
        }
        text = (
            f"Created destination {destination.pk} → {destination.url}\nSigning secret (shown once): {secret}"
            f"\nRetry policy: {retry_policy_words(destination)}"
        )
        if destination.custom_header_hints:
            shown = ", ".join(f"{item['name']} ({item['hint']})" for item in destination.custom_header_hints)
            text += f"\nCustom headers: {shown}"
        for condition in destination.payload_filters:
            text += f"\nPayload filter: {payload_filter_line(condition)}"
        if not sources:
            # No command links a source to an existing destination: only the dashboard does.
            edit_page = settings.PUBLIC_BASE_URL + reverse(
                "dashboard:destination_edit", kwargs={"org_slug": organization.slug, "destination_id": destination.pk}
            )
            result["warning"] = (
                f"{RECEIVES_NOTHING_WITHOUT_SOURCE} No command links a source to an existing "
                f"destination: link one on the dashboard's destination edit page ({edit_page})."
            )
            text += "\n" + result["warning"]
        return result, text

    def _payload_filters(self, given: list[str]) -> list[dict]:
        """Each --payload-filter read and checked as a line of the dashboard's box, by the service the
        dashboard uses: every bad one named at once, by its number (``--payload-filter 2``)."""
        try:
            return parse_labelled_payload_filter_lines(
                (f"{PAYLOAD_FILTER_FLAG} {number}", expression) for number, expression in enumerate(given, start=1)
            )
        except PayloadFilterError as exc:
            # A fault of one flag is named by its number already; one of them all (too many), by the flag.
            raise ValueError(
                "; ".join(
                    problem if problem.startswith(PAYLOAD_FILTER_FLAG) else f"{PAYLOAD_FILTER_FLAG}: {problem}"
                    for problem in exc.problems
                )
            ) from None

    def _headers(self, options) -> dict[str, str]:
        headers: dict[str, str] = {}
        if options["header"]:
            self.warn_secret_on_command_line("--header")
        for given in options["header"]:
            # One header per flag; a line break inside a value is the service's to refuse, not a second header.
            name, colon, value = given.partition(":")
            if not colon:
                raise ValueError("--header: a header has no colon: write it as --header 'Name: value'")
            if name.strip().lower() in {known.lower() for known in headers}:
                raise ValueError(f"--header: the header “{name.strip()}” is given twice: names are case-insensitive")
            headers[name.strip()] = value
        if options["header_file"] is None:
            return headers
        path = options["header_file"]
        try:
            from_file = parse_header_file(read_secret_input(path, flag="--header-file", several_lines=True))
        except CustomHeaderError as exc:
            raise ValueError(f"--header-file: {shown_path(path)}, {exc}") from None
        if not from_file:
            raise ValueError(f"--header-file: {shown_path(path)} holds no header")
        for name, value in from_file.items():
            if name.lower() in {known.lower() for known in headers}:
                raise ValueError(
                    f"the header “{name}” is given by --header and by --header-file: names are case-insensitive"
                )
            headers[name] = value
        return headers
