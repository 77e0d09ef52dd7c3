# Whether a receiver's answer went on past the DELIVERY_RESPONSE_BODY_MAX_BYTES kept of it. A column
# with a constant database default: PostgreSQL adds it without rewriting the table, and the previous
# release's INSERTs, which do not name it, still work beside the new one. Attempts recorded before
# read false, whatever their answer's length.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0044_delivery_succeeded_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="deliveryattempt",
            name="response_truncated",
            field=models.BooleanField(db_default=False, default=False),
        ),
    ]
