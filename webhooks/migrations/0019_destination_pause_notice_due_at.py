# The pause email a destination's automatic pause owes its admins, kept with the pause so that the
# sweeper sends it when the after-commit step did not. Nullable, without a default: instant, and code
# still running the previous release neither reads nor writes it (its pauses email as before).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("webhooks", "0018_delivery_org_id_index")]

    operations = [
        migrations.AddField(
            model_name="destination",
            name="pause_notice_due_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
