"""What a new operator follows to deploy: README's Deploying section, .env.example, the Procfile,
docker-compose.yml and .python-version say what the code does."""

import functools
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import environ
import pytest
from cryptography.fernet import Fernet

from .fresh_process import FreshProcesses

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEPLOYING = README[README.index("## Deploying") : README.index("### Health checks")]
PROCFILE = dict(
    line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip() and ": " in line
)


def _run(args, environment, timeout=120):
    return subprocess.run(args, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=timeout)


_fresh = None


@pytest.fixture(scope="module", autouse=True)
def _fresh_processes():
    # Django started in a fresh process for each start-up and check: forked from one that has loaded
    # the libraries, as fresh_process.py says, where a new interpreter each took a second of CPU.
    global _fresh
    with FreshProcesses() as _fresh:
        yield
    _fresh = None


def _django(arguments, environment):
    """As _run([sys.executable, *arguments], environment), in a fresh process forked for it."""
    return _fresh.run(arguments, environment)


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
    return _django(["-c", script], environment)


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


def test_the_deploy_check_warns_of_private_destinations_on_a_server_and_the_readme_says_why():
    # Step 3 says to leave it off; an operator who tried a local receiver first and kept the
    # setting gave every tenant the server's own network, and `check --deploy` said nothing.
    environment = {
        **_base_environment(),
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "PUBLIC_BASE_URL": "https://hooks.example.com",
        "EMAIL_URL": "smtp+tls://user:password@smtp.example.com:587",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
    }
    assert _deploy_check_warnings(environment) == {"security.W005", "security.W008", "security.W021"}
    with_private = {**environment, "ALLOW_PRIVATE_DESTINATIONS": "true"}
    assert "hookline.W002" in _deploy_check_warnings(with_private)
    # Only the deploy check: `check` and the release phase's `migrate` stay quiet for a test stack.
    checked = _django(["manage.py", "check"], with_private)
    assert checked.returncode == 0 and "hookline.W002" not in checked.stdout + checked.stderr
    assert "`hookline.W002`" in DEPLOYING


def test_the_deploy_check_warns_of_a_server_without_redis_and_the_readme_says_why():
    # Render's services by hand, step 1 without REDIS_URL: every process used a broker directory of
    # its own machine, webhooks were stored and never delivered, and `check --deploy` said nothing.
    environment = {
        **_base_environment(),
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "PUBLIC_BASE_URL": "https://hooks.example.com",
        "EMAIL_URL": "smtp+tls://user:password@smtp.example.com:587",
        "HOOKLINE_VAR_DIR": os.environ.get("HOOKLINE_VAR_DIR", str(ROOT / "var")),
    }
    assert "hookline.W003" in _deploy_check_warnings(environment)
    assert "hookline.W003" not in _deploy_check_warnings({**environment, "REDIS_URL": "redis://localhost:6379/9"})
    assert "`hookline.W003`" in DEPLOYING


def _deploy_check_warnings(environment) -> set:
    checked = _django(["manage.py", "check", "--deploy"], environment)
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


# --- render.yaml and app.json ------------------------------------------------------------------


def _render() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "render.yaml").read_text())


def _app_json() -> dict:
    import json

    return json.loads((ROOT / "app.json").read_text())


@functools.cache
def _required_in_server_mode() -> frozenset:
    """The variables the settings refuse to start without in server mode, found by starting them.

    Start with DATABASE_URL alone (it is what selects server mode); each refusal names one missing
    variable, which is then given a value of the right form, until the settings start. Found once
    for the three tests that read it: the settings do not change while the tests run.
    """
    valid = {"FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "PUBLIC_BASE_URL": "https://hooks.example.com"}
    environment = {**_base_environment(), "DATABASE_URL": "postgres://postgres@127.0.0.1:1/never-connected"}
    required = {"DATABASE_URL"}
    for _ in range(20):
        started = _settings_start(environment)
        if started.returncode == 0:
            return frozenset(required)
        missing = re.search(r"Set the ([A-Z_]+) environment variable", started.stderr)
        assert missing, started.stderr
        required.add(missing.group(1))
        environment[missing.group(1)] = valid.get(missing.group(1), "x" * 50)
    raise AssertionError(f"the settings still refuse to start with {sorted(required)}")


def test_the_variables_found_required_are_the_ones_the_readme_says():
    # Guards the derivation above: a refusal message it cannot read would end it early.
    required = _required_in_server_mode()
    assert {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "PUBLIC_BASE_URL"} <= required
    for name in required:
        assert f"`{name}`" in DEPLOYING, name


def _render_services() -> dict:
    return {service["name"]: service for service in _render()["services"]}


def _render_environment(service: dict) -> dict:
    """A service's variables by name, with those of its environment groups."""
    groups = {group["name"]: group["envVars"] for group in _render().get("envVarGroups", [])}
    variables = {}
    for entry in service.get("envVars", []):
        if "fromGroup" in entry:
            variables.update({variable["key"]: variable for variable in groups[entry["fromGroup"]]})
        else:
            variables[entry["key"]] = entry
    return variables


def test_render_blueprint_runs_the_procfile_commands():
    services = _render_services()
    processes = {service["startCommand"]: name for name, service in services.items() if "startCommand" in service}
    assert set(processes) == {PROCFILE["web"], PROCFILE["worker"], PROCFILE["beat"]}
    web = services[processes[PROCFILE["web"]]]
    assert web["type"] == "web"
    assert web["preDeployCommand"] == PROCFILE["release"]
    assert web["buildCommand"] == "pip install -r requirements.txt && python manage.py collectstatic --noinput"
    assert web["healthCheckPath"] == "/livez"
    for command in ("worker", "beat"):
        service = services[processes[PROCFILE[command]]]
        assert service["type"] == "worker"
        assert service["buildCommand"] == "pip install -r requirements.txt"
        assert "preDeployCommand" not in service  # migrations run once, before the web service starts
    assert services[processes[PROCFILE["beat"]]]["numInstances"] == 1
    for service in services.values():
        if service["type"] != "keyvalue":
            assert service["runtime"] == "python"
    # The Key Value instance holds the Celery queue: an evicted message would be a lost task.
    (key_value,) = [service for service in services.values() if service["type"] == "keyvalue"]
    assert key_value["maxmemoryPolicy"] == "noeviction"
    assert key_value["ipAllowList"] == []


def test_render_blueprint_gives_every_process_what_the_settings_require():
    render = _render()
    services = _render_services()
    databases = {database["name"] for database in render["databases"]}
    groups = {group["name"] for group in render.get("envVarGroups", [])}
    required = _required_in_server_mode() | {"REDIS_URL"}
    settings_text = (ROOT / "config" / "settings.py").read_text()
    processes = [service for service in services.values() if service["type"] in ("web", "worker")]
    assert len(processes) == 3
    for service in processes:
        assert {entry["fromGroup"] for entry in service["envVars"] if "fromGroup" in entry} <= groups
        variables = _render_environment(service)
        assert required <= set(variables), (service["name"], sorted(required - set(variables)))
        for name, variable in variables.items():
            assert f'"{name}"' in settings_text, f"{name} is not read by the settings"
            sources = {"value", "generateValue", "sync", "fromDatabase", "fromService"} & set(variable)
            assert len(sources) == 1, (service["name"], name)
            if "fromDatabase" in variable:
                assert variable["fromDatabase"] == {
                    "name": variable["fromDatabase"]["name"],
                    "property": "connectionString",
                }
                assert variable["fromDatabase"]["name"] in databases
            if "fromService" in variable:
                source = services[variable["fromService"]["name"]]
                assert variable["fromService"]["type"] == source["type"]
                if "envVarKey" in variable["fromService"]:
                    # A copy of a variable that the named service itself has, asked for once.
                    assert variable["fromService"]["envVarKey"] == name
                    assert _render_environment(source)[name] == {"key": name, "sync": False}
                else:
                    assert variable["fromService"]["property"] == "connectionString"
        assert "fromDatabase" in variables["DATABASE_URL"]
        assert services[variables["REDIS_URL"]["fromService"]["name"]]["type"] == "keyvalue"
        # Generated values are random strings, not Fernet keys; the origin is the operator's.
        for asked in ("FIELD_ENCRYPTION_KEYS", "PUBLIC_BASE_URL"):
            assert "value" not in variables[asked] and "generateValue" not in variables[asked]
        assert variables["SECRET_KEY"].get("generateValue") is True
        # One SECRET_KEY for the three (the test-event mark and signed links cross processes):
        # generated once in the shared group, not once per service.
        assert "SECRET_KEY" not in {entry.get("key") for entry in service["envVars"]}


def test_heroku_app_json_declares_the_procfile_processes_and_what_the_settings_require():
    app = _app_json()
    assert 3 <= len(app["name"]) <= 30 and len(app["description"]) <= 140
    assert set(app["formation"]) == set(PROCFILE) - {"release"}
    assert app["formation"]["beat"]["quantity"] == 1
    # The release phase is the Procfile's: no second migrate in a postdeploy script.
    assert "scripts" not in app
    plans = {addon["plan"].split(":")[0] for addon in app["addons"]}
    assert plans == {"heroku-postgresql", "heroku-redis"}
    provided_by_addons = {"DATABASE_URL", "REDIS_URL"}
    environment = app["env"]
    settings_text = (ROOT / "config" / "settings.py").read_text()
    assert _required_in_server_mode() <= set(environment) | provided_by_addons
    assert not set(environment) & provided_by_addons
    procfile_variables = set(re.findall(r"\$\{?([A-Z_]+)", "\n".join(PROCFILE.values())))
    for name, variable in environment.items():
        assert f'"{name}"' in settings_text or name in procfile_variables, f"{name} is read by nothing"
        assert variable["description"].strip(), name
        assert set(variable) <= {"description", "value", "required", "generator"}, name
    assert environment["SECRET_KEY"]["generator"] == "secret"
    for asked in ("FIELD_ENCRYPTION_KEYS", "PUBLIC_BASE_URL"):
        assert environment[asked]["required"] is True and not {"value", "generator"} & set(environment[asked])
    # Heroku's Key-Value Store has a self-signed certificate (README "Redis over TLS").
    assert environment["REDIS_SSL_CERT_REQS"]["value"] == "none"


def test_render_health_check_path_answers_whatever_the_host(client):
    path = _render_services()["hookline-web"]["healthCheckPath"]
    assert client.get(path, HTTP_HOST="10.1.2.3:10000").status_code == 200


def test_the_readme_names_both_deploy_files():
    for name in ("render.yaml", "app.json"):
        assert f"`{name}`" in DEPLOYING, name
