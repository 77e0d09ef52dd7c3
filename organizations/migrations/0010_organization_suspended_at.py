from django.db import migrations, models
from django.utils import timezone


def start_the_clock_of_suspended_organizations(apps, schema_editor):
    # When they were suspended is not known (the audit log may have purged it, or it was an UPDATE):
    # their hold counts from the upgrade, so that nothing an operator kept suspended dies at the next
    # retention run without notice (README, upgrade notes).
    Organization = apps.get_model("organizations", "Organization")
    Organization.objects.filter(is_active=False, suspended_at__isnull=True).update(suspended_at=timezone.now())


class Migration(migrations.Migration):
    dependencies = [
        ("organizations", "0009_retention_days_help_text"),
    ]

    operations = [
        migrations.AddField(
            model_name="organization",
            name="suspended_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(start_the_clock_of_suspended_organizations, migrations.RunPython.noop, elidable=True),
    ]
