# Safe on a big live table: the delivery's new column is nullable without a default (no rewrite, a
# brief lock), and written only from now on by the success's UPDATE; deliveries that succeeded
# before have none, and the overview looks up their event, as it did for all. EventHour starts empty:
# the overview counts each closed hour once, from the events, the first time it shows it.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("organizations", "0010_organization_suspended_at"),
        ("webhooks", "0042_bulkretry_left_out"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="latency",
            field=models.DurationField(blank=True, editable=False, null=True),
        ),
        migrations.CreateModel(
            name="EventHour",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hour", models.DateTimeField()),
                ("accepted", models.IntegerField()),
                ("rejected", models.IntegerField()),
                ("tests", models.IntegerField()),
                (
                    "organization",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="organizations.organization",
                    ),
                ),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("organization", "hour"), name="event_hour_unique")],
            },
        ),
    ]
