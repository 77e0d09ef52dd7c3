# A destination being deleted in the background (services.destination_deletion): who asked, when, and the progress.
# Nullable columns: added without rewriting the table.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('webhooks', '0036_process_mark'),
    ]

    operations = [
        migrations.AddField(
            model_name='destination',
            name='deletion_progress',
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='destination',
            name='deletion_requested_at',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='destination',
            name='deletion_requested_by',
            field=models.CharField(blank=True, editable=False, max_length=200, null=True),
        ),
    ]
