"""The platform admin for webhooks: events, deliveries, attempts, sources, destinations, periodic tasks,
and the deletion of organizations (which reaches all of those)."""

from . import configuration, events, organizations, periodic  # noqa: F401  (importing registers the ModelAdmins)
