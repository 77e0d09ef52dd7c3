from django.db import models


class ProcessMark(models.Model):
    """When a process last did something the health check judges it by, kept in the database.

    A mark in Redis cannot be read while Redis is down, and with Redis as the broker that is just
    when it matters: ``beat_sent`` (beat's last task that reached the broker) is written here, by
    beat, after each publish that succeeded (webhooks/services/platform_health.py).
    """

    name = models.CharField(max_length=50, primary_key=True)
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} at {self.at:%Y-%m-%d %H:%M:%S}"
