# A destination's payload filters. The column has a constant database default, so PostgreSQL adds it
# by changing the catalog only (no table rewrite, a brief lock); processes still running the
# previous release insert destinations without naming it and get the empty list.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("webhooks", "0031_source_allowed_networks")]

    operations = [
        migrations.AddField(
            model_name="destination",
            name="payload_filters",
            field=models.JSONField(blank=True, db_default=[], default=list),
        ),
    ]
