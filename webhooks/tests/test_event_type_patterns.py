"""The events list's event-type filter matches in PostgreSQL exactly what a destination filter
matches with fnmatch, so a tenant can paste a filter there to see which events it sends."""

import random
from fnmatch import fnmatchcase

import pytest
from django.db import connection

from webhooks.selectors import shell_pattern_as_postgres_regex

PATTERNS = [
    "invoice.*",
    "*.paid",
    "*",
    "invoice?paid",
    "invoice.pai[cd]",
    "invoice.pai[!d]",
    "[]x]y",
    "[!]]y",
    "[a-c-e]*",
    "[z-a]*",
    "[!z-a]*",
    "[a--]*",
    "[--a]*",
    "[-a]*",
    "[a-]*",
    "[!]",
    "[",
    "a[b",
    "orders/create",
    "a\\b",
    "[\\]*",
    "a^b$c",
    "(x|y).+{2}",
    "[^a]*",
    "[.]paid",
    "ünïcode.*",
]
TEXTS = [
    "invoice.paid",
    "invoice.paix",
    "invoicexpaid",
    "charge.paid",
    "xy",
    "]y",
    "!y",
    "a",
    "b",
    "-",
    "e",
    "d",
    "[!]",
    "[",
    "a[b",
    "orders/create",
    "a\\b",
    "\\x",
    "a^b$c",
    "(x|y).+{2}",
    "^",
    ".paid",
    "ünïcode.x",
    "",
]


def _postgres_matches(pairs):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT text ~ pattern FROM unnest(%s::text[], %s::text[]) AS p(text, pattern)",
            [[text for text, _ in pairs], [shell_pattern_as_postgres_regex(pattern) for _, pattern in pairs]],
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db
def test_the_translation_agrees_with_fnmatch_on_chosen_cases():
    pairs = [(text, pattern) for pattern in PATTERNS for text in TEXTS]
    disagreements = [
        (text, pattern, shell_pattern_as_postgres_regex(pattern))
        for (text, pattern), matched in zip(pairs, _postgres_matches(pairs), strict=True)
        if matched != fnmatchcase(text, pattern)
    ]
    assert disagreements == []


@pytest.mark.django_db
def test_the_translation_agrees_with_fnmatch_on_random_patterns():
    generator = random.Random(20261205)  # fixed: a failure is reproducible
    alphabet = "ab-]![*?.\\^$"
    pairs = []
    for _ in range(4000):
        pattern = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 7)))
        text = "".join(generator.choice("ab-]![.\\^$") for _ in range(generator.randint(0, 5)))
        pairs.append((text, pattern))
    disagreements = [
        (text, pattern, shell_pattern_as_postgres_regex(pattern))
        for (text, pattern), matched in zip(pairs, _postgres_matches(pairs), strict=True)
        if matched != fnmatchcase(text, pattern)
    ]
    assert disagreements[:10] == []
    assert sum(matched for matched in _postgres_matches(pairs)) > 100  # the cases are not all misses


@pytest.mark.parametrize(
    "event_type,pattern,matched",
    [
        ("issues.opened", "issues", True),  # GitHub names its types event.action
        ("issues", "issues", True),
        ("issue_comment.created", "issues", False),
        ("issuesx.opened", "issues", False),
        ("customer.subscription.created", "customer.subscription", True),
        ("customer.subscription", "customer.subscription.created", False),
        ("orders/create", "orders", True),  # Shopify names its topics resource/action
        ("orders/paid", "orders/", False),
        ("ordersx/create", "orders", False),
        ("orders_edit/create", "orders", False),
        ("invoice.paid", "invoice.*", True),
        ("invoice.paid", "invoice.p?", False),  # wildcards keep fnmatch's reading, nothing more
        ("invoice.paid.late", "invoice.pai[d]", False),
    ],
)
def test_a_name_without_wildcards_also_takes_the_types_under_it(event_type, pattern, matched):
    from webhooks.models.subscription import event_type_matches

    assert event_type_matches(event_type, pattern) is matched


@pytest.mark.django_db
def test_the_events_list_takes_what_a_destination_filter_takes_row_by_row(organization):
    # With too many types to list, the events list matches row by row (selectors.event_type_condition):
    # the same events as event_type_matches, dots and slashes alike.
    from webhooks.models import WebhookEvent
    from webhooks.models.subscription import event_type_matches
    from webhooks.selectors import event_type_condition
    from webhooks.tests.factories import make_source

    source = make_source(organization)
    types = ["orders/create", "orders", "ordersx/create", "issues.opened", "issues", "issue_comment.created", "a/b.c"]
    for event_type in types:
        WebhookEvent.objects.create(
            organization=organization, source=source, event_type=event_type, body=b"{}", headers={}
        )
    for pattern in ["orders", "issues", "a", "a/b", "orders/*", "*"]:
        found = set(
            WebhookEvent.objects.filter(organization=organization)
            .filter(event_type_condition([pattern]))
            .values_list("event_type", flat=True)
        )
        assert found == {event_type for event_type in types if event_type_matches(event_type, pattern)}, pattern
