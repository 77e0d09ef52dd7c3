from django.db import migrations

# Frozen here: the service's constant may change, this migration's effect may not.
OLD_SHORT_VALUE_HINT = "…"
SHORT_VALUE_HINT = "hidden"


def name_short_value_hints(apps, schema_editor):
    """Hints stored before short values got a readable one: a lone "…" becomes "hidden"."""
    Destination = apps.get_model("webhooks", "Destination")
    for destination in Destination.objects.exclude(custom_header_hints=[]).only("pk", "custom_header_hints"):
        hints = [
            {**item, "hint": SHORT_VALUE_HINT} if item.get("hint") == OLD_SHORT_VALUE_HINT else item
            for item in destination.custom_header_hints
        ]
        if hints != destination.custom_header_hints:
            Destination.objects.filter(pk=destination.pk).update(custom_header_hints=hints)


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0026_event_processing_set_aside"),
    ]

    operations = [
        migrations.RunPython(name_short_value_hints, migrations.RunPython.noop),
    ]
