"""docs/providers.md, written from the provider registry so the two never disagree."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from webhooks.models import PurgedEventKey
from webhooks.providers.registry import PROVIDERS

DOCS_PATH = Path(settings.BASE_DIR) / "docs" / "providers.md"
KEPT_DAYS = PurgedEventKey.KEPT_DAYS


def render_provider_docs() -> str:
    lines = [
        "# Providers",
        "",
        "Generated from `webhooks/providers/registry.py` by `python manage.py generate_provider_docs`;",
        "a test fails when this file and the registry disagree.",
        "",
        "For every provider: create a source (dashboard, admin or `create_source`), paste the",
        "ingest URL it shows (`<PUBLIC_BASE_URL>/in/<token>/`) into the provider's webhook",
        "settings, and give Hookline the signing secret. A request that fails verification",
        "is answered 401 with the reason and kept as *rejected*; a redelivery of the same",
        "event id is answered 200 as a counted duplicate. Where the event id comes from a",
        "header the signature does not cover, a signed delivery could be posted again under a new",
        f"id. For {_counting_by_signed_content()}, a request whose signed content (its body, with",
        "the signed time where there is one) equals that of an event stored for the source is a",
        "counted duplicate of that event, whatever its id; its own id is not kept. Elsewhere such a",
        "request is taken as a new event: keep ingest URLs and captured deliveries private.",
        "",
        "Redeliveries are recognised by the stored event and, once the retention purge has deleted",
        f"it, by a digest of its event id kept {KEPT_DAYS} more days. So a request whose signature covers a",
        "time (the **Replays** line of each provider) is refused with 401 `signed_before_retention`",
        f"once that time is older than the organization's `retention_days` plus those {KEPT_DAYS} days,",
        "whatever the provider's own default (Apple, SendGrid, Discord, Mailgun and PayPal check no",
        f"age by default); a `tolerance` option, when set, is checked too and refuses sooner. The {KEPT_DAYS}",
        "days outlast the providers' retries (Apple: about 6.5 days; SendGrid: 72 hours), so a",
        "genuine retry passes, counted once, even with a one-day retention. Where the signature",
        "covers no time, a captured delivery sent again after that is stored and delivered as a",
        "new event (README, What happens to a webhook).",
        "",
        "| kind | provider | event id | event type |",
        "|---|---|---|---|",
    ]
    for kind, provider in PROVIDERS.items():
        lines.append(f"| `{kind}` | {provider.label} | {provider.docs_event_id} | {provider.docs_event_type} |")
    for kind, provider in PROVIDERS.items():
        lines += ["", f"## {provider.label} (`{kind}`)", ""]
        if provider.setup_steps:
            steps = enumerate(provider.setup_steps, 1)
            lines.append("- **Setup:** " + " ".join(f"({number}) {step}" for number, step in steps))
        lines.append(f"- **Secret:** {provider.secret_help}")
        if provider.secret_generated_by_us:
            lines.append("  You choose it; leave it empty and Hookline generates one and shows it once.")
        lines.append(f"- **Verified:** {provider.docs_verifies}")
        lines.append(f"- **Event id:** {provider.docs_event_id}")
        lines.append(f"- **Event type:** {provider.docs_event_type}")
        lines.append(f"- **Replays:** {_replays(provider)}")
        if provider.options:
            lines += ["", "| option | required | default | meaning |", "|---|---|---|---|"]
            for option in provider.options:
                default = "" if option.default in (None, "") else f"`{option.default}`"
                choices = f" One of: {', '.join(option.choices)}." if option.choices else ""
                lines.append(
                    f"| `{option.name}` | {'yes' if option.required else 'no'} | {default} | "
                    f"{option.label}. {option.help_text}{choices} |"
                )
    return "\n".join(lines) + "\n"


def _counting_by_signed_content() -> str:
    """The providers that count a request as a duplicate by its signed content, some under an option
    (Provider.counts_replays_by_signed_content): "GitHub, …, Shopify with its … option"."""
    names = [provider.label for provider in PROVIDERS.values() if provider.dedupes_on_signed_content]
    names += [
        f"{provider.label} {provider.docs_signed_content_when}"
        for provider in PROVIDERS.values()
        if provider.docs_signed_content_when and not provider.dedupes_on_signed_content
    ]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def _replays(provider) -> str:
    """What keeps a captured request from being stored again once its event is purged."""
    if provider.docs_signed_time:
        has_tolerance = any(option.name == "tolerance" for option in provider.options)
        stricter = " (or the `tolerance` option, where set and stricter)" if has_tolerance else ""
        return (
            f"signed time: {provider.docs_signed_time}; refused once older than the organization's retention "
            f"plus {KEPT_DAYS} days{stricter}."
        )
    if provider.docs_replay:
        return f"no signed time checked against the retention; {provider.docs_replay}."
    if provider.dedupes_on_signed_content:
        return (
            "the signature covers no time: a captured delivery sent again, under any id, is a duplicate while "
            f"its event is stored; once the event is purged, under its own id for {KEPT_DAYS} more days, then "
            "a new event."
        )
    return (
        f"the signature covers no time: a captured delivery sent again is a duplicate until {KEPT_DAYS} days after "
        "its event was purged (retention), then a new event."
    )
