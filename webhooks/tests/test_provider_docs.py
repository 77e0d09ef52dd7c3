from webhooks.providers.registry import PROVIDERS
from webhooks.services.provider_docs import DOCS_PATH, render_provider_docs


def test_docs_match_the_registry():
    assert DOCS_PATH.read_text() == render_provider_docs(), "run: python manage.py generate_provider_docs"


def test_every_provider_documents_what_a_tenant_needs():
    for kind, provider in PROVIDERS.items():
        assert provider.label and provider.secret_help and provider.docs_verifies, kind
        assert provider.docs_event_id and provider.docs_event_type, kind


def test_the_replays_line_names_a_signed_time_exactly_where_the_scheme_reads_one():
    from webhooks.providers.base import Provider

    for kind, provider in PROVIDERS.items():
        reads_one = any(
            getattr(type(provider), name) is not getattr(Provider, name) for name in ("signed_time", "nonce_signed_at")
        )
        assert bool(provider.docs_signed_time) == reads_one, kind
        assert not (provider.docs_signed_time and provider.docs_replay), kind
