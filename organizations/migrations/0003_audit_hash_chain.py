"""Hash-chain the audit log and make the database refuse UPDATE and DELETE on it.

References to users and organizations lose their database constraint (and Django's
SET_NULL) so that deleting either never has to UPDATE an audit row.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

REFUSE_CHANGES_SQL = """
CREATE OR REPLACE FUNCTION organizations_auditlog_append_only() RETURNS trigger AS $$
BEGIN
    -- Only organizations.services.audit_purge sets this, for its own transaction, and audits itself.
    IF TG_OP = 'DELETE' AND current_setting('hookline.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'organizations_auditlog is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER organizations_auditlog_append_only
    BEFORE UPDATE OR DELETE ON organizations_auditlog
    FOR EACH ROW EXECUTE FUNCTION organizations_auditlog_append_only();
"""

DROP_TRIGGER_SQL = """
DROP TRIGGER IF EXISTS organizations_auditlog_append_only ON organizations_auditlog;
DROP FUNCTION IF EXISTS organizations_auditlog_append_only();
"""


def chain_existing_entries(apps, schema_editor):
    from organizations.services import GENESIS_HASH, audit_entry_hash

    audit_log = apps.get_model("organizations", "AuditLog")
    organization_model = apps.get_model("organizations", "Organization")
    names = dict(organization_model.objects.values_list("pk", "name"))
    previous = GENESIS_HASH
    for entry in audit_log.objects.order_by("id").iterator(chunk_size=2000):
        entry.organization_label = names.get(entry.organization_id, "")[:200]
        entry.previous_hash = previous
        entry.entry_hash = audit_entry_hash(entry)
        entry.save(update_fields=["organization_label", "previous_hash", "entry_hash"])
        previous = entry.entry_hash


def install_trigger(apps, schema_editor):
    # The embedded SQLite mode has no such trigger: it is a single-machine demo setup.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REFUSE_CHANGES_SQL, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_TRIGGER_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("organizations", "0002_monthlyusage"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(name="auditlog", options={"ordering": ("-id",)}),
        migrations.AlterField(
            model_name="auditlog",
            name="actor_user",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="auditlog",
            name="organization",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="organizations.organization",
            ),
        ),
        migrations.AddField(
            model_name="auditlog",
            name="organization_label",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name="auditlog",
            name="user_agent",
            field=models.CharField(blank=True, max_length=300),
        ),
        migrations.AddField(
            model_name="auditlog",
            name="previous_hash",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditlog",
            name="entry_hash",
            field=models.CharField(max_length=64, null=True),
        ),
        migrations.RunPython(chain_existing_entries, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditlog",
            name="entry_hash",
            field=models.CharField(max_length=64, unique=True),
        ),
        migrations.AlterField(
            model_name="auditlog",
            name="previous_hash",
            field=models.CharField(max_length=64, unique=True),
        ),
        migrations.AddIndex(
            model_name="auditlog",
            index=models.Index(fields=["action", "-id"], name="auditlog_action_id"),
        ),
        migrations.RunPython(install_trigger, drop_trigger),
    ]
