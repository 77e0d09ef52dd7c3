"""Time every page, API list, admin changelist and command that answers "what happened to webhook X?"
on the database bench/big_tenant.py seeded: in-process (Django's test client), median of --runs after one
warm-up, with the query count, the summed SQL time and the slowest query of each.

    DATABASE_URL=postgres://…/hookline_scale .venv/bin/python bench/big_tenant_pages.py [--only TEXT] [--explain]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def world():
    from django.contrib.auth import get_user_model
    from django.db import connection

    from organizations.api_keys import api_key_create
    from organizations.models import Membership, Organization

    org = Organization.objects.get(slug="big")
    owner = Membership.objects.filter(organization=org).select_related("user").first().user
    _, key = api_key_create(organization=org, name=f"bench {time.time()}", actor=owner)
    root, _ = get_user_model().objects.get_or_create(
        email="root@scale.example", defaults={"is_staff": True, "is_superuser": True}
    )
    with connection.cursor() as c:

        def one(sql, *params):
            c.execute(sql, params)
            return c.fetchone()

        # A two-week-old event with a dead delivery, and a deep (26 days back) one.
        dead_event, dead_delivery = one(
            "SELECT d.event_id, d.id FROM webhooks_delivery d WHERE d.organization_id = %s AND d.status = 'dead' "
            "AND d.created_at < now() - interval '14 days' ORDER BY d.id DESC LIMIT 1",
            org.pk,
        )
        provider_id = one("SELECT provider_event_id FROM webhooks_webhookevent WHERE id = %s", dead_event)[0]
        deep = one(
            "SELECT id FROM webhooks_webhookevent WHERE organization_id = %s AND received_at < now() - interval '26 days' "
            "ORDER BY id DESC LIMIT 1",
            org.pk,
        )[0]
        deep_delivery = one(
            "SELECT id FROM webhooks_delivery WHERE organization_id = %s AND created_at < now() - interval '26 days' "
            "ORDER BY id DESC LIMIT 1",
            org.pk,
        )[0]
        sources = [
            r[0]
            for r in (
                c.execute("SELECT id FROM webhooks_source WHERE organization_id = %s ORDER BY id", [org.pk])
                or c.fetchall()
            )
        ]
        dests = [
            r[0]
            for r in (
                c.execute("SELECT id FROM webhooks_destination WHERE organization_id = %s ORDER BY id", [org.pk])
                or c.fetchall()
            )
        ]
    return locals()


def cursor(position) -> str:
    return base64.b64encode(f"p={position}".encode()).decode()


def targets(w):
    o = "/o/big"
    s, d = w["sources"], w["dests"]
    ev, dl, pid, deep, deepd = w["dead_event"], w["dead_delivery"], w["provider_id"], w["deep"], w["deep_delivery"]
    pages = [
        ("overview", f"{o}/"),
        ("events", f"{o}/events/"),
        ("events status=failed", f"{o}/events/?status=failed"),
        ("events status=retrying", f"{o}/events/?status=retrying"),
        ("events status=rejected", f"{o}/events/?status=rejected"),
        ("events status=all", f"{o}/events/?status=all"),
        ("events source", f"{o}/events/?source={s[1]}"),
        ("events type", f"{o}/events/?event_type=charge.failed"),
        ("events type wildcard", f"{o}/events/?event_type=invoice.*"),
        ("events destination", f"{o}/events/?destination={d[2]}"),
        ("events destination+failed", f"{o}/events/?destination={d[2]}&status=failed"),
        ("events destination+source", f"{o}/events/?destination={d[2]}&source={s[3]}"),
        ("events range 24h", f"{o}/events/?range=24h"),
        ("events type+source+7d", f"{o}/events/?event_type=charge.failed&source={s[0]}&range=7d"),
        ("events search provider id", f"{o}/events/?q={pid}"),
        ("events search event id", f"{o}/events/?q={ev}"),
        ("events search delivery id", f"{o}/events/?q={dl}"),
        ("events search missing", f"{o}/events/?q=evt_nothing_here"),
        ("events deep page", f"{o}/events/?before={deep}"),
        ("events deep page failed", f"{o}/events/?before={deep}&status=failed"),
        ("events deep page destination", f"{o}/events/?before={deep}&destination={d[5]}"),
        ("events body search", f"{o}/events/?body=in_1234567"),
        ("event detail (dead delivery)", f"{o}/events/{ev}/"),
        ("sources list", f"{o}/sources/"),
        ("source detail", f"{o}/sources/{s[0]}/"),
        ("source rejected", f"{o}/sources/{s[0]}/rejected/"),
        ("destinations list", f"{o}/destinations/"),
        ("destination detail", f"{o}/destinations/{d[0]}/"),
        ("destination bulk retries", f"{o}/destinations/{d[0]}/bulk-retries/"),
        ("audit", f"{o}/audit/"),
    ]
    api = [
        ("api events", "/api/v1/events"),
        ("api events status=failed", "/api/v1/events?status=failed"),
        ("api events status=retrying", "/api/v1/events?status=retrying"),
        ("api events status=rejected", "/api/v1/events?status=rejected"),
        ("api events source", f"/api/v1/events?source={s[1]}"),
        ("api events destination", f"/api/v1/events?destination={d[2]}"),
        ("api events destination+failed", f"/api/v1/events?destination={d[2]}&status=failed"),
        ("api events type", "/api/v1/events?event_type=charge.failed"),
        ("api events provider_event_id", f"/api/v1/events?provider_event_id={pid}"),
        ("api events search", f"/api/v1/events?search={dl}"),
        (
            "api events received range",
            "/api/v1/events?received_after=2020-01-01T00:00:00Z&received_before=2020-01-02T00:00:00Z",
        ),
        ("api events deep cursor", f"/api/v1/events?cursor={cursor(deep)}"),
        ("api events deep cursor failed", f"/api/v1/events?status=failed&cursor={cursor(deep)}"),
        ("api event detail", f"/api/v1/events/{ev}"),
        ("api deliveries", "/api/v1/deliveries"),
        ("api deliveries status=dead", "/api/v1/deliveries?status=dead"),
        ("api deliveries status=retrying", "/api/v1/deliveries?status=retrying"),
        ("api deliveries status=pending", "/api/v1/deliveries?status=pending"),
        ("api deliveries destination", f"/api/v1/deliveries?destination={d[3]}"),
        ("api deliveries destination+dead", f"/api/v1/deliveries?destination={d[3]}&status=dead"),
        ("api deliveries event", f"/api/v1/deliveries?event={ev}"),
        (
            "api deliveries received 1 day",
            "/api/v1/deliveries?received_after=2020-01-01T00:00:00Z&received_before=2020-01-02T00:00:00Z",
        ),
        ("api deliveries deep cursor", f"/api/v1/deliveries?cursor={cursor(deepd)}"),
        ("api deliveries deep cursor dead", f"/api/v1/deliveries?status=dead&cursor={cursor(deepd)}"),
        ("api delivery detail", f"/api/v1/deliveries/{dl}"),
        ("api bulk_retries", "/api/v1/bulk_retries"),
    ]
    adm = [
        ("admin events", "/admin/webhooks/webhookevent/"),
        ("admin events status", "/admin/webhooks/webhookevent/?status__exact=rejected"),
        ("admin events org", f"/admin/webhooks/webhookevent/?organization={w['org'].pk}"),
        ("admin events source", f"/admin/webhooks/webhookevent/?source={s[1]}"),
        ("admin events failed=yes", "/admin/webhooks/webhookevent/?failed=yes"),
        ("admin events failed=no", "/admin/webhooks/webhookevent/?failed=no"),
        ("admin events processing", "/admin/webhooks/webhookevent/?processing=waiting"),
        ("admin events search provider id", f"/admin/webhooks/webhookevent/?q={pid}"),
        ("admin events search slug", "/admin/webhooks/webhookevent/?q=big"),
        ("admin events page 400", "/admin/webhooks/webhookevent/?p=400"),
        ("admin event change", f"/admin/webhooks/webhookevent/{ev}/change/"),
        ("admin deliveries", "/admin/webhooks/delivery/"),
        ("admin deliveries dead", "/admin/webhooks/delivery/?status__exact=dead"),
        ("admin deliveries org", f"/admin/webhooks/delivery/?organization={w['org'].pk}"),
        ("admin deliveries destination", f"/admin/webhooks/delivery/?destination={d[1]}"),
        ("admin deliveries code 5xx", "/admin/webhooks/delivery/?code=5xx"),
        ("admin deliveries code none", "/admin/webhooks/delivery/?code=none"),
        ("admin deliveries replay", "/admin/webhooks/delivery/?is_replay__exact=1"),
        ("admin deliveries search", f"/admin/webhooks/delivery/?q={dl}"),
        ("admin delivery change", f"/admin/webhooks/delivery/{dl}/change/"),
        ("admin attempts", "/admin/webhooks/deliveryattempt/"),
        ("admin attempts org", f"/admin/webhooks/deliveryattempt/?organization={w['org'].pk}"),
        ("admin attempts code 5xx", "/admin/webhooks/deliveryattempt/?code=5xx"),
        ("admin attempts code none", "/admin/webhooks/deliveryattempt/?code=none"),
        ("admin attempts search", f"/admin/webhooks/deliveryattempt/?q={dl}"),
        ("admin audit", "/admin/organizations/auditlog/"),
        ("admin audit search", "/admin/organizations/auditlog/?q=big"),
        ("admin index", "/admin/"),
        ("metrics", "/metrics"),
    ]
    return pages, api, adm


def measure(name, fn, runs, explain):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    fn()
    times, sqls, counts, slow = [], [], [], ("", 0.0)
    for _ in range(runs):
        with CaptureQueriesContext(connection) as ctx:
            started = time.perf_counter()
            status = fn()
            times.append((time.perf_counter() - started) * 1000)
        qs = [(q["sql"], float(q["time"]) * 1000) for q in ctx.captured_queries]
        sqls.append(sum(t for _, t in qs))
        counts.append(len(qs))
        top = max(qs, key=lambda q: q[1], default=("", 0.0))
        if top[1] > slow[1]:
            slow = top
    print(
        f"| {name} | {status} | {counts[-1]} | {statistics.median(times):.0f} | {statistics.median(sqls):.0f} | {slow[1]:.0f} |",
        flush=True,
    )
    if explain and slow[1] > 100:
        with connection.cursor() as c:
            c.execute("EXPLAIN (ANALYZE, BUFFERS) " + slow[0])
            print("    " + slow[0][:1500].replace("\n", " "))
            print("\n".join("    " + r[0] for r in c.fetchall()))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["DEBUG"] = "false"
    os.environ["METRICS_TOKEN"] = "scale-metrics-token"
    import django

    django.setup()
    from django.core.cache import cache
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    w = world()
    pages, api, adm = targets(w)
    owner, admin, apic = Client(), Client(), Client()
    owner.force_login(w["owner"])
    admin.force_login(w["root"])
    print("| page | status | queries | median ms | SQL ms | slowest query ms |\n|---|---|---:|---:|---:|---:|")

    def get(client, url, **headers):
        return lambda: client.get(url, **headers).status_code

    for name, url in pages:
        if args.only in name:
            measure(name, get(owner, url), args.runs, args.explain)
    if args.only in "overview, cold cache":
        measure(
            "overview, cold cache",
            lambda: (cache.clear(), owner.get("/o/big/").status_code)[1],
            args.runs,
            args.explain,
        )
    for name, url in api:
        if args.only in name:
            measure(name, get(apic, url, HTTP_AUTHORIZATION=f"Bearer {w['key']}"), args.runs, args.explain)
    for name, url in adm:
        if args.only in name:
            headers = {"HTTP_AUTHORIZATION": "Bearer scale-metrics-token"} if name == "metrics" else {}
            measure(name, get(admin if name != "metrics" else Client(), url, **headers), args.runs, args.explain)

    def command(*a):
        return lambda: (call_command(*a, stdout=io.StringIO(), stderr=io.StringIO()), 0)[1]

    for name, a in [
        ("show_event provider id --org", ("show_event", w["provider_id"], "--org", "big")),
        ("show_event provider id, all orgs", ("show_event", w["provider_id"])),
        ("show_event event id", ("show_event", str(w["dead_event"]))),
        ("show_event delivery id", ("show_event", str(w["dead_delivery"]))),
        ("list_events", ("list_events", "--org", "big")),
        ("list_events failed", ("list_events", "--org", "big", "--status", "failed")),
        ("list_events retrying", ("list_events", "--org", "big", "--status", "retrying")),
        ("list_events search", ("list_events", "--org", "big", "--search", w["provider_id"])),
        ("platform_health", ("platform_health",)),
    ]:
        if args.only in name:
            measure(name, command(*a), args.runs, args.explain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
