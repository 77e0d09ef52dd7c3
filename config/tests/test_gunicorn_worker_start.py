"""What a gunicorn worker imports as it starts (config/gunicorn.conf.py's post_worker_init)."""

import os
import subprocess
import sys

from django.conf import settings as django_settings

WORKER_START = """
import logging, runpy, sys, types
import django
hooks = runpy.run_path("config/gunicorn.conf.py")
django.setup()
hooks["post_worker_init"](types.SimpleNamespace(log=logging.getLogger("gunicorn.error")))
print(sorted(name for name in sys.argv[1:] if name not in sys.modules))
"""


def test_a_worker_imports_the_ingest_code_as_it_starts_not_at_its_first_request():
    # Imported at a first request, a worker still serving while a release changed the files (a HUP
    # reload) sent the new writer frames to the old writer process, which refused them (503s).
    wanted = ["webhooks.services.ingest", "webhooks.services.ingest_writer_process", "webhooks.views.ingest"]
    started = subprocess.run(
        [sys.executable, "-c", WORKER_START, *wanted],
        cwd=django_settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert started.stdout.strip() == "[]", started.stderr
