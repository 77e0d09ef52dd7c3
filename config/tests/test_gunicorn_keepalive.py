"""The keep-alive gunicorn gets from config/gunicorn.conf.py (WEB_KEEPALIVE_SECONDS), as gunicorn itself
loads the file for the Procfile's command line, in a fresh interpreter with a clean environment."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEROKU_ROUTER_IDLE_SECONDS = 90  # Router 2.0 closes a kept-alive connection to a dyno after this
LOADED_KEEPALIVE = (
    "import sys; from gunicorn.app.wsgiapp import WSGIApplication; "
    "sys.argv = ['gunicorn', 'config.wsgi', '--config', 'config/gunicorn.conf.py', '--worker-class', 'gthread']; "
    "print(WSGIApplication('%(prog)s [OPTIONS] [APP_MODULE]').cfg.keepalive)"
)


def _load(**variables: str) -> subprocess.CompletedProcess:
    environment = {"PATH": os.environ["PATH"], "HOME": str(Path.home()), **variables}
    return subprocess.run(
        [sys.executable, "-c", LOADED_KEEPALIVE], capture_output=True, text=True, cwd=ROOT, env=environment, timeout=60
    )


def test_unset_gunicorn_keeps_connections_longer_than_the_platform_routers():
    loaded = _load()
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout.strip().splitlines()[-1]) > HEROKU_ROUTER_IDLE_SECONDS


@pytest.mark.parametrize(("value", "keepalive"), [("60", 60), ("0", 0)])  # 0: gunicorn's "no keep-alive"
def test_the_setting_is_what_gunicorn_gets(value, keepalive):
    loaded = _load(WEB_KEEPALIVE_SECONDS=value)
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout.strip().splitlines()[-1]) == keepalive


@pytest.mark.parametrize("value", ["-1", "95.5", "95s"])
def test_a_bad_value_stops_gunicorn_at_start_up_and_names_the_setting(value):
    loaded = _load(WEB_KEEPALIVE_SECONDS=value)
    assert loaded.returncode != 0
    assert f"WEB_KEEPALIVE_SECONDS must be a whole number of seconds, 0 or more (got '{value}')" in loaded.stderr
