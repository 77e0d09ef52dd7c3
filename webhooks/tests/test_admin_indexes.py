"""The platform admin's cross-organization views of failures read an index of failures, not every delivery."""

import re

import pytest
from django.db import connection
from django.db.models import OuterRef

from webhooks.admin.filters import failed_deliveries_of
from webhooks.models import Delivery, WebhookEvent

pytestmark = pytest.mark.django_db


def _plan(query) -> str:
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        # A near-empty table would be read whole: left only bitmap scans, which need an index
        # condition, the planner shows which index can serve the query.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_counting_dead_deliveries_and_filtering_events_with_failures_use_the_failed_index():
    # The overview's dead count, the deliveries list's "dead" filter and the events' "has failed
    # deliveries" filter: the index's condition must follow from each query's, or it is not used.
    dead = Delivery.objects.filter(status=Delivery.Status.DEAD).order_by().values("pk")
    # Or the index of dead deliveries by completion time (processing health's), as small.
    assert re.search(r"delivery_failed|delivery_dead_completed", _plan(dead))
    with_failures = WebhookEvent.objects.filter(failed_deliveries_of(OuterRef("pk"))).order_by().values("pk")
    assert "delivery_failed" in _plan(with_failures)


def test_the_api_delivery_list_reads_the_organizations_deliveries_by_index(organization):
    from webhooks.selectors import deliveries_for_organization

    newest_first = deliveries_for_organization(organization=organization).order_by("-id").values("pk")[:50]
    plan = _plan(newest_first)
    # Left only bitmap scans, the planner may take any index that leads with the organization
    # (delivery_org_id, delivery_org_status_id or the foreign key's own; their sizes, which earlier
    # tests' rows change, decide); each reads that organization's deliveries alone, never the table.
    assert f"Index Cond: (organization_id = {organization.pk})" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_the_admin_s_rejected_filter_counts_and_lists_rejected_requests_by_their_own_index(admin_client):
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    # Measured at 2,100,000 events in two organizations: the changelist's capped count of the
    # rejected ones was a parallel sequential scan of the table (0.5 s).
    with CaptureQueriesContext(db) as captured:
        response = admin_client.get("/admin/webhooks/webhookevent/", {"status__exact": "rejected"})
    assert response.status_code == 200
    counts = [query["sql"] for query in captured.captured_queries if "COUNT(" in query["sql"]]
    assert counts
    for sql in counts:
        with db.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        if "webhooks_webhookevent" in plan:
            assert "event_rejected_id" in plan, plan
