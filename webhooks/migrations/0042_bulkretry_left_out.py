# How many of a bulk retry's deliveries it left out because their source or destination is being
# deleted. A constant default adds the column without rewriting the table, and its CHECK (>= 0, as
# total's and retried's) reads only the jobs' table, which is small; db_default so that code from
# before the release (a rolling deploy) still inserts its jobs.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("webhooks", "0041_delivery_put_back_index")]

    operations = [
        migrations.AddField(
            model_name="bulkretry",
            name="left_out",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
    ]
