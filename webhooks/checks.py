"""Deploy checks (`manage.py check --deploy`) for what delivery depends on."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def private_destinations_are_refused_on_a_server(app_configs, **kwargs):
    """ALLOW_PRIVATE_DESTINATIONS is for a laptop or a test run: on a server it lets any tenant have
    Hookline POST to the platform's own network (a cloud metadata address, an internal service)."""
    if settings.EMBEDDED or not settings.ALLOW_PRIVATE_DESTINATIONS:
        return []
    return [
        Warning(
            "ALLOW_PRIVATE_DESTINATIONS is on: any tenant can have Hookline send requests to private "
            "and loopback addresses, such as this network's internal services.",
            hint="Leave it unset (off) on a server open to tenants; it is meant for local development and tests.",
            id="hookline.W002",
        )
    ]


@register(Tags.caches, deploy=True)
def a_server_shares_its_broker(app_configs, **kwargs):
    """Without REDIS_URL the broker and the cache are files under var/. On a platform the web,
    worker and beat processes run on machines of their own, each with its own var/: webhooks were
    accepted and stored, then never processed, and only the processing health said so."""
    if settings.EMBEDDED or not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        return []
    return [
        Warning(
            "REDIS_URL is not set: the Celery broker and the cache are files under "
            f"{settings.VAR_DIR}, which only processes on this machine share; a worker elsewhere "
            "never sees the webhooks this process accepts.",
            hint="Set REDIS_URL (the platform's Redis or Key Value add-on) for every process.",
            id="hookline.W003",
        )
    ]
