# A destination's own retry schedule (the waits between its retries, in seconds; NULL for
# DELIVERY_RETRY_SCHEDULE). A nullable column without a default: added without rewriting the table,
# and processes still running the code before it (during a deploy) insert NULL, the platform's schedule.

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0029_drop_event_unfinished"),
    ]

    operations = [
        migrations.AddField(
            model_name="destination",
            name="retry_schedule",
            field=models.JSONField(
                blank=True,
                help_text="Seconds to wait before each retry, in order. Empty for DELIVERY_RETRY_SCHEDULE.",
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="destination",
            name="max_attempts",
            field=models.PositiveSmallIntegerField(
                blank=True,
                help_text="Attempts on the schedule, the first included (1: no retries). Empty for every step of "
                "the retry schedule (the destination's own, or DELIVERY_RETRY_SCHEDULE).",
                null=True,
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
    ]
