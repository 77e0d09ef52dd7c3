"""The health endpoints answer what the README says they do, and the README names every one of them."""

import re
from pathlib import Path

import pytest
from django.urls import get_resolver

from conftest import REDIS_DOWN_CACHES
from webhooks.views import health

ROOT = Path(__file__).resolve().parents[2]


def health_paths() -> list[str]:
    views = {health.livez, health.healthz, health.readyz}
    return sorted("/" + str(p.pattern) for p in get_resolver().url_patterns if getattr(p, "callback", None) in views)


def test_the_readme_says_what_each_health_endpoint_checks():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Health checks") :].split("\n#")[0]
    assert health_paths() == ["/healthz", "/livez", "/readyz"] == sorted(health.PROBES_BY_PATH)
    assert [path for path in health_paths() if f"`{path}`" not in section] == []
    assert re.search(r"monitor\s+Redis\s+separately", section)


def test_livez_and_healthz_answer_ok(client):
    for path in ("/livez", "/healthz"):
        response = client.get(path)
        assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_the_database_and_reports_the_cache(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "cache": "ok", "secrets": "ok"}}


@pytest.mark.django_db
def test_readyz_stays_ready_with_the_cache_down(client, settings):
    settings.CACHES = REDIS_DOWN_CACHES
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["cache"].startswith("error: ")


@pytest.mark.django_db
@pytest.mark.parametrize("path", sorted(health.PROBES_BY_PATH))
def test_probes_answer_a_host_that_is_not_allowed(client, path, caplog):
    # A platform's health check may name the instance's own address; everything else still
    # refuses that host.
    response = client.get(path, HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert client.get("/accounts/sign-in/", HTTP_HOST="10.1.2.3:8000").status_code == 400
    assert client.post("/in/abc/", b"{}", content_type="application/json", HTTP_HOST="10.1.2.3").status_code == 400
