"""Every setting read from the environment is documented, and .env.example can be used as a .env file."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import environ

ROOT = Path(__file__).resolve().parents[2]
# What reads the environment: the settings (through `env`, or `environ.Env()` before `env` exists)
# and gunicorn's configuration, which reads it before any setting is loaded.
READERS = (ROOT / "config" / "settings.py", ROOT / "config" / "gunicorn.conf.py")
# A name read by a call (`env.int("NAME", …)`), or only looked for (`"NAME" not in env`: a setting
# whose presence alone changes something); digits included (`S3_BUCKET`).
READS = (
    r'(?:env|Env\(\))(?:\.[a-z_]+)?\(\s*"([A-Z][A-Z0-9_]*)"',
    r'"([A-Z][A-Z0-9_]*)"\s+(?:not\s+)?in\s+env\b',
)
SETTINGS_NAMES = sorted(
    {name for reader in READERS for pattern in READS for name in re.findall(pattern, reader.read_text())}
)
PROCFILE_NAMES = set(re.findall(r"\$\{?([A-Z_]+)", (ROOT / "Procfile").read_text()))
README = (ROOT / "README.md").read_text()
CONFIGURATION = README[README.index("## Configuration") : README.index("## Deploying")]


def _env_example(*, commented: bool) -> dict:
    """.env.example's NAME=value lines; with ``commented``, also the "# NAME=value" ones."""
    pattern = r"^(?:# ?)?([A-Z][A-Z0-9_]+)=(.*)$" if commented else r"^([A-Z][A-Z0-9_]+)=(.*)$"
    return dict(re.findall(pattern, (ROOT / ".env.example").read_text(), re.MULTILINE))


def test_every_environment_setting_is_in_the_readme_and_env_example():
    example = _env_example(commented=True)
    assert len(SETTINGS_NAMES) > 30
    assert {"HOOKLINE_VAR_DIR", "INGEST_WRITER_PROCESS", "ALLOWED_HOSTS"} <= set(SETTINGS_NAMES)
    assert [name for name in SETTINGS_NAMES if f"`{name}`" not in CONFIGURATION] == []
    assert [name for name in SETTINGS_NAMES if name not in example] == []


def test_every_documented_variable_is_read_by_something():
    # A name left in the docs after its setting went (or misspelt there) is a variable an operator
    # sets for nothing.
    in_the_table = {  # the names in the first cell of each row of the README's table
        name
        for cell in re.findall(r"^\| (`[A-Z].*?) \|", CONFIGURATION, re.MULTILINE)
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)
    }
    documented = set(_env_example(commented=True)) | in_the_table
    assert len(documented) > 30
    assert sorted(documented - set(SETTINGS_NAMES) - PROCFILE_NAMES) == []


def _settings_dump(environment: dict) -> dict:
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({k: repr(getattr(s, k)) for k in dir(s) if k.isupper()}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**environment, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_values_env_example_sets_are_the_defaults():
    # .env.example doubles as the list of defaults: a copy of it must configure exactly what no
    # variable at all does. Its placeholders (the server's URLs and mail) are examples, not defaults.
    placeholders = {"DATABASE_URL", "PUBLIC_BASE_URL", "REDIS_URL", "EMAIL_URL", "DEFAULT_FROM_EMAIL"}
    server = {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/never-connected",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "SECRET_KEY": "x" * 50,
        "FIELD_ENCRYPTION_KEYS": "DvYDLpKLLhLv09Ed4NPzG2XacL4YXQyL5GAbYbiy-6c=",
        "PUBLIC_BASE_URL": "https://hooks.example.com",
    }
    example = {name: value for name, value in _env_example(commented=False).items() if name not in placeholders}
    assert len(example) > 30
    defaults, from_example = _settings_dump(server), _settings_dump({**server, **example})
    differing = sorted(
        name for name in defaults.keys() | from_example.keys() if defaults.get(name) != from_example.get(name)
    )
    assert differing == [], {name: (defaults.get(name), from_example.get(name)) for name in differing}


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

    paragraph = README[README.index("Providers (`--provider`)") :].split("\n\n")[0]
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


def test_every_pinned_package_is_in_the_readmes_dependencies():
    # Each pin says why it is there in the README: one added without a reason is one nobody can
    # later tell whether to drop.
    section = README[README.index("## Dependencies, and why each is there") :].lower()
    pinned = {
        re.split(r"[\[=<>~ ]", line.strip())[0].lower()
        for requirements in (ROOT / "requirements").glob("*.txt")
        for line in requirements.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    }
    assert len(pinned) > 20
    named = set(re.findall(r"[a-z0-9_.-]+", section))
    # Spelt either way in prose: slack_sdk / slack-sdk.
    unexplained = [n for n in pinned if not {n, n.replace("-", "_"), n.replace("_", "-")} & named]
    assert sorted(unexplained) == []
