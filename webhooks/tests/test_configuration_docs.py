"""Every setting read from the environment is documented, and .env.example can be used as a .env file."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import environ

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_NAMES = sorted(
    set(re.findall(r'env(?:\.[a-z_]+)?\("([A-Z_]+)"', (ROOT / "config" / "settings.py").read_text()))
)


def test_every_environment_setting_is_in_the_readme_and_env_example():
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    assert len(SETTINGS_NAMES) > 30
    assert [name for name in SETTINGS_NAMES if name not in readme] == []
    assert [name for name in SETTINGS_NAMES if name not in example] == []


def test_env_example_values_read_back_without_comments_or_padding(tmp_path, monkeypatch):
    # django-environ keeps anything after "=" (an inline "# …" included), so comments stand on their own lines.
    values = {}
    monkeypatch.setattr(environ.Env, "ENVIRON", values)
    environ.Env.read_env(ROOT / ".env.example", overwrite=True)
    assert values, "nothing was read"
    for name, value in values.items():
        assert "#" not in value and value == value.strip(), f"{name}={value!r}"


def test_the_readme_names_every_provider_of_the_registry():
    from webhooks.providers.registry import PROVIDERS

    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Providers (`--provider`)") :].split("\n\n")[0]
    assert [kind for kind in PROVIDERS if f"`{kind}`" not in paragraph] == []


def _settings_in_a_fresh_interpreter(public_base_url: str) -> dict:
    script = (
        "import json; from django.conf import settings as s; "
        "print(json.dumps([s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS]))"
    )
    environment = {key: value for key, value in os.environ.items() if key != "SECURE_HSTS_SECONDS"}
    environment.update(PUBLIC_BASE_URL=public_base_url, DJANGO_SETTINGS_MODULE="config.settings")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    secure_session, secure_csrf, hsts = json.loads(result.stdout.strip().splitlines()[-1])
    return {"session": secure_session, "csrf": secure_csrf, "hsts": hsts}


def test_served_over_https_cookies_are_secure_and_browsers_are_told_to_stay():
    assert _settings_in_a_fresh_interpreter("https://hooks.example.com") == {
        "session": True,
        "csrf": True,
        "hsts": 31_536_000,
    }
    assert _settings_in_a_fresh_interpreter("http://127.0.0.1:8000") == {"session": False, "csrf": False, "hsts": 0}
