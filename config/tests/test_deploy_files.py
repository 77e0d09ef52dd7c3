"""What a new operator follows to deploy: README's Deploying section, .env.example, the Procfile,
docker-compose.yml and .python-version say what the code does."""

import os
import re
import subprocess
import sys
from pathlib import Path

import environ
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEPLOYING = README[README.index("## Deploying") : README.index("### Health checks")]
PROCFILE = dict(
    line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip() and ": " in line
)


def _run(args, environment, timeout=120):
    return subprocess.run(args, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=timeout)


def _base_environment():
    # Only what a fresh machine has: the settings must not pick anything up from the test run.
    return {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "LANG": "C.UTF-8"}


def _env_example_values() -> dict:
    values = {}
    original = environ.Env.ENVIRON
    environ.Env.ENVIRON = values
    try:
        environ.Env.read_env(ROOT / ".env.example", overwrite=True)
    finally:
        environ.Env.ENVIRON = original
    return values


def _settings_start(environment):
    script = "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'; django.setup()"
    return _run([sys.executable, "-c", script], environment)


def test_a_copy_of_env_example_stops_at_start_up_and_names_the_missing_secret():
    # A placeholder or an empty key would start, then fail every webhook with a 500.
    environment = {**_base_environment(), **_env_example_values()}
    assert "DATABASE_URL" in environment  # server mode, where the secrets have no default
    started = _settings_start(environment)
    assert started.returncode != 0
    assert "Set the SECRET_KEY environment variable" in started.stderr

    environment["SECRET_KEY"] = "x" * 50
    started = _settings_start(environment)
    assert started.returncode != 0
    assert "Set the FIELD_ENCRYPTION_KEYS environment variable" in started.stderr


def _readme_command(variable: str) -> str:
    match = re.search(rf'^\s*python3 -c "([^"]+)"\s+# {variable}$', DEPLOYING, re.MULTILINE)
    assert match, f"README's Deploying section shows no command for {variable}"
    return match.group(1)


def test_the_readme_commands_make_secrets_that_pass_the_deploy_check_with_only_the_expected_warnings():
    secret_key = _run([sys.executable, "-c", _readme_command("SECRET_KEY")], _base_environment()).stdout.strip()
    fernet_key = _run(
        [sys.executable, "-c", _readme_command("FIELD_ENCRYPTION_KEYS")], _base_environment()
    ).stdout.strip()
    assert Fernet(fernet_key).decrypt(Fernet(fernet_key).encrypt(b"whsec_x")) == b"whsec_x"

    environment = {
        **_base_environment(),
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "REDIS_URL": os.environ.get("REDIS_URL", ""),
        "SECRET_KEY": secret_key,
        "FIELD_ENCRYPTION_KEYS": fernet_key,
        "PUBLIC_BASE_URL": "https://hooks.example.com",
        "EMAIL_URL": "smtp+tls://user:password@smtp.example.com:587",
    }
    # Exactly the warnings step 6 of the README calls expected, and the README names each.
    assert _deploy_check_warnings(environment) == {"security.W005", "security.W008", "security.W021"}
    over_http = _deploy_check_warnings({**environment, "PUBLIC_BASE_URL": "http://hooks.example.com"})
    assert over_http == {"security.W004", "security.W008", "security.W012", "security.W016"}
    for warning in over_http | {"security.W005", "security.W021"}:
        assert f"`{warning.split('.')[1]}`" in DEPLOYING or f"`{warning}`" in DEPLOYING, warning


def _deploy_check_warnings(environment) -> set:
    checked = _run([sys.executable, "manage.py", "check", "--deploy"], environment)
    assert checked.returncode == 0, checked.stderr
    return set(re.findall(r"\(([a-z_]+\.[A-Z]\d{3})\)", checked.stdout + checked.stderr))


def test_every_variable_the_procfile_reads_is_documented_with_its_default():
    example = (ROOT / ".env.example").read_text()
    with_defaults = dict(re.findall(r"\$\{([A-Z_]+):-([^}]+)\}", "\n".join(PROCFILE.values())))
    plain = set(re.findall(r"\$([A-Z_]+)", "\n".join(PROCFILE.values())))
    assert plain == {"PORT"}
    assert set(with_defaults) == {"WEB_CONCURRENCY", "WEB_THREADS", "WORKER_CONCURRENCY"}
    for name, default in with_defaults.items():
        assert f"# {name}={default}\n" in example, name
        assert re.search(rf"`{name}`[^.]*default {default}\b", DEPLOYING), name
    assert "# PORT=" in example and "`PORT`" in DEPLOYING


def test_the_render_steps_use_the_procfile_commands():
    # Render does not read the Procfile: the README gives its commands, which must stay the same.
    render = " ".join(DEPLOYING[DEPLOYING.index("- Render:") : DEPLOYING.index("Scale out")].split())
    assert f"pre-deploy command `{PROCFILE['release']}`" in render
    assert "the Procfile's `web` line as start command" in render
    assert "the Procfile's `worker` and `beat` lines as start commands" in render


def _compose_text() -> str:
    # Folded YAML blocks joined as YAML joins them, so a command reads as one line.
    return " ".join((ROOT / "docker-compose.yml").read_text().split())


def test_compose_runs_the_procfile_commands_and_publishes_ports_on_loopback_only():
    compose = _compose_text()
    published = re.findall(r"ports: \[([^\]]*)\]", compose)
    entries = [entry.strip().strip('"') for ports in published for entry in ports.split(",") if entry.strip()]
    assert entries, "no published port found"
    assert [entry for entry in entries if not entry.startswith("127.0.0.1:")] == []

    for process in ("release", "web", "worker", "beat"):
        # Compose reads "$$" as a "$" left for the container's shell.
        assert PROCFILE[process].replace("$", "$$") in compose, process
    assert "restart: unless-stopped" in compose


def test_python_version_file_names_the_python_the_tests_run_on():
    pinned = (ROOT / ".python-version").read_text().strip()
    assert pinned == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"`.python-version` ({pinned}" in DEPLOYING


def test_the_email_urls_the_readme_shows_mean_what_it_says():
    def read(url):
        return environ.Env.email_url_config(url)

    assert read("smtp+tls://u:p@smtp.example.com:587")["EMAIL_USE_TLS"] is True
    assert read("smtp+ssl://u:p@smtp.example.com:465")["EMAIL_USE_SSL"] is True
    # smtps:// is STARTTLS to django-environ, which a port-465 server never answers.
    assert read("smtps://u:p@smtp.example.com:465").get("EMAIL_USE_SSL") is not True
    assert read("filemail:////var/mail/hookline")["EMAIL_FILE_PATH"] == "/var/mail/hookline"
    assert read("filemail:///var/mail/hookline")["EMAIL_FILE_PATH"] == "var/mail/hookline"
    assert read("smtp+tls://u:p%40ss%2Fw%3Ax@smtp.example.com:587")["EMAIL_HOST_PASSWORD"] == "p@ss/w:x"
    for url in ("smtp+tls://", "smtp+ssl://", "filemail:////", "consolemail://"):
        assert url in DEPLOYING
