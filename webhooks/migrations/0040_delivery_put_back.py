# Why the platform itself holds a delivery it put back unsent (a destination secret no key decrypts,
# its own bound on DNS lookups), since when and how many times in a row: shown as the delivery's
# waiting_for, counted in the processing health, and read by whichever process claims it next for the
# next delay (services.delivery._put_back_unsent).
#
# The columns are nullable without a default (and without a CHECK, which would scan the table): adding
# them rewrites nothing. In a transaction of their own, apart from the index (0041): the deliveries
# table is the one every claim and result of the running workers writes, and migrate bounds the wait
# for its lock only in a transaction (webhooks/management/commands/migrate.py). Outside one, the
# ALTER waited without bound behind a long transaction, and every statement on the table queued
# behind it: a result recorded past its bound is given up, and its delivery sent again.
# AddFieldUnlessAdded: a database where the earlier form of this migration (columns and index outside
# a transaction) was stopped during the index build has the columns already.

from django.db import migrations, models

from webhooks.migration_helpers import AddFieldUnlessAdded


class Migration(migrations.Migration):
    dependencies = [("webhooks", "0039_event_rejected_index")]

    operations = [
        AddFieldUnlessAdded(
            model_name="delivery",
            name="put_back_cause",
            field=models.CharField(
                blank=True,
                choices=[
                    ("secret_unreadable", "Its destination's secret cannot be decrypted"),
                    ("dns_lookups_busy", "The platform's own DNS lookups in progress are full"),
                ],
                max_length=20,
                null=True,
            ),
        ),
        AddFieldUnlessAdded(
            model_name="delivery", name="put_back_since", field=models.DateTimeField(blank=True, null=True)
        ),
        AddFieldUnlessAdded(
            model_name="delivery", name="put_back_times", field=models.IntegerField(blank=True, null=True)
        ),
    ]
