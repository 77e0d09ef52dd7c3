# Which dispatcher run holds a delivery's claim (webhooks/services/claim_owners.py), so that the
# sweeper keeps the claims of a run that is still alive. Nullable, without a default: instant, and
# rows claimed by the previous release (NULL) are judged by their age as before.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("webhooks", "0019_destination_pause_notice_due_at")]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="claimed_by",
            field=models.CharField(blank=True, max_length=100, null=True),
        ),
    ]
