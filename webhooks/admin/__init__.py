"""The platform admin for webhooks: events, deliveries, attempts, sources, destinations, periodic tasks."""

from . import configuration, events, periodic  # noqa: F401  (importing registers the ModelAdmins)
