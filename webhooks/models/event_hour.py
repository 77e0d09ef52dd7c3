from django.db import models

from organizations.models import Organization


class EventHour(models.Model):
    """How many events an organization received in one closed UTC hour, for the overview's charts.

    Counted once from the events themselves (services.event_hours), when the hour can no longer
    gain an event; the overview then reads 168 of these rows instead of a week of events (466,000
    rows, 1.1 s, for a tenant of 2 million events a month). Whatever deletes events (retention,
    a source's or the organization's deletion) forgets the hours it deleted from, which are
    counted again from what is left. Rows older than the overview's week are deleted by the
    retention run.
    """

    # No index of its own: the unique constraint's (organization, hour) serves every lookup.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    hour = models.DateTimeField()  # the hour's start, UTC
    accepted = models.IntegerField()  # accepted events, Hookline's test sends left out
    rejected = models.IntegerField()  # rejected requests kept, test sends left out
    tests = models.IntegerField()  # accepted test sends

    class Meta:
        constraints = [models.UniqueConstraint(fields=("organization", "hour"), name="event_hour_unique")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.accepted} accepted"
