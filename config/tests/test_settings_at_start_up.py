"""What the settings refuse or adjust at start-up, read in a fresh process as a server process would
(forked from one that has only loaded the libraries: see fresh_process.py)."""

import json
import logging
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from .fresh_process import FreshProcesses

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = Fernet.generate_key().decode()
PRINT_SETTINGS = (
    "import sys, json, logging, django; sys.argv = json.loads(sys.argv[1]); django.setup(); from django.conf import settings; "
    "print(json.dumps({'redis': settings.REDIS_URL, 'cache': settings.CACHES['default']['LOCATION'], "
    "'broker': settings.CELERY_BROKER_URL, 'static': settings.STORAGES['staticfiles']['BACKEND'], 'fallbacks': settings.SECRET_KEY_FALLBACKS, "
    "'email': settings.EMAIL_BACKEND, 'from': settings.DEFAULT_FROM_EMAIL, 'hosts': settings.ALLOWED_HOSTS, "
    "'origins': settings.CSRF_TRUSTED_ORIGINS, 'hsts': settings.SECURE_HSTS_SECONDS, 'log_level': logging.getLogger().level}))"
)


@pytest.fixture(scope="module")
def fresh():
    with FreshProcesses() as processes:
        yield processes


@pytest.fixture(scope="module")
def unset(fresh):
    """The settings read with none of the optional variables set: the same for every test of the
    module, so read once for those that compare with them."""
    return settings_read(fresh)


def start(fresh, argv=("manage.py", "check"), **variables):
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/never-connected",
        "SECRET_KEY": "a-secret-key-for-this-test-only",
        "FIELD_ENCRYPTION_KEYS": GOOD_KEY,
        "PUBLIC_BASE_URL": "https://hooks.example.com",
        "HOOKLINE_VAR_DIR": os.environ.get("HOOKLINE_VAR_DIR", str(ROOT / "var")),
        **variables,
    }
    environment = {name: value for name, value in environment.items() if value is not None}
    return fresh.run(["-c", PRINT_SETTINGS, json.dumps(list(argv))], environment)


def settings_read(fresh, **variables) -> dict:
    result = start(fresh, **variables)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY is empty"),
        ({"SECRET_KEY": "   "}, "SECRET_KEY is empty"),
        ({"FIELD_ENCRYPTION_KEYS": ""}, "FIELD_ENCRYPTION_KEYS is empty"),
        ({"FIELD_ENCRYPTION_KEYS": "change-me"}, "key 1 of 1 is not a Fernet key"),
        ({"FIELD_ENCRYPTION_KEYS": f"{GOOD_KEY},{GOOD_KEY[:-2]}"}, "key 2 of 2 is not a Fernet key"),
        ({"REDIS_SSL_CERT_REQS": "off"}, "REDIS_SSL_CERT_REQS must be"),
        ({"BODY_SEARCH_WINDOW": "0"}, "BODY_SEARCH_WINDOW must be 1 or more"),
        ({"BODY_SEARCH_TIMEOUT_SECONDS": "0"}, "BODY_SEARCH_TIMEOUT_SECONDS above 0"),
        ({"BODY_SEARCH_CONCURRENCY": "0"}, "BODY_SEARCH_CONCURRENCY must be 1 or more"),
        ({"PROCESSING_BATCH_BODY_BYTES": "0"}, "PROCESSING_BATCH_BODY_BYTES must be 1 or more"),
        ({"PROCESSING_BATCH_DELIVERIES": "0"}, "PROCESSING_BATCH_DELIVERIES must be 1 or more"),
        # int() read "٣٠" as 30; the retry schedules of destinations take only the digits 0-9.
        ({"DELIVERY_RETRY_SCHEDULE": "60,٣٠0"}, "DELIVERY_RETRY_SCHEDULE must be whole seconds in the digits 0-9"),
        ({"DELIVERY_RETRY_SCHEDULE": "60,1m"}, 'separated by commas (60,300,900): not "1m"'),
        ({"DATABASE_URL": "sqlite:////tmp/hookline.sqlite3"}, "DATABASE_URL must be a PostgreSQL URL"),
        ({"DATABASE_URL": "mysql://root@127.0.0.1/hookline"}, "DATABASE_URL must be a PostgreSQL URL"),
        # Left to its local default, every request to the platform's host name was a 400 while the
        # health checks passed: server mode has none.
        ({"PUBLIC_BASE_URL": None}, "Set the PUBLIC_BASE_URL environment variable"),
        ({"PUBLIC_BASE_URL": ""}, "PUBLIC_BASE_URL must be an absolute http(s) URL"),
        ({"PUBLIC_BASE_URL": "hooks.example.com"}, "PUBLIC_BASE_URL must be an absolute http(s) URL"),
    ],
)
def test_a_blank_or_mistyped_setting_stops_start_up_and_says_which(fresh, variables, named):
    # Found later, a blank key passed every check and then answered 500 to every webhook.
    result = start(fresh, **variables)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr
    assert GOOD_KEY not in result.stderr


def test_rediss_urls_get_the_configured_certificate_check_unless_they_name_one(fresh):
    heroku = "rediss://:pw@ec2-1-2-3-4.compute.amazonaws.com:6380"
    read = settings_read(fresh, REDIS_URL=heroku, REDIS_SSL_CERT_REQS="none")
    assert read["redis"] == read["cache"] == read["broker"] == f"{heroku}?ssl_cert_reqs=none"
    # The default checks the certificate; a URL's own choice and plain redis:// are left alone.
    assert (
        settings_read(fresh, REDIS_URL=f"{heroku}/0?health=1")["redis"] == f"{heroku}/0?health=1&ssl_cert_reqs=required"
    )
    own = f"{heroku}?ssl_cert_reqs=optional"
    assert settings_read(fresh, REDIS_URL=own, REDIS_SSL_CERT_REQS="none")["cache"] == own
    assert settings_read(fresh, REDIS_URL="redis://localhost:6379/3")["broker"] == "redis://localhost:6379/3"
    read = settings_read(
        fresh, REDIS_URL="redis://localhost:6379/3", CELERY_BROKER_URL=heroku, REDIS_SSL_CERT_REQS="none"
    )
    assert read["broker"] == f"{heroku}?ssl_cert_reqs=none"
    # .env.example's "# CELERY_BROKER_URL=" uncommented: Celery took "" for amqp://localhost.
    assert settings_read(fresh, REDIS_URL="redis://localhost:6379/3", CELERY_BROKER_URL="")["broker"] == (
        "redis://localhost:6379/3"
    )


OPTIONAL_VARIABLES = (
    "EMAIL_URL",
    "DEFAULT_FROM_EMAIL",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_HSTS_SECONDS",
    "LOG_LEVEL",
)


@pytest.mark.parametrize("blank", ["", "  "])
def test_optional_variables_set_blank_take_their_defaults(fresh, unset, blank):
    # app.json's and render.yaml's optional fields left empty, or `EMAIL_URL=` in a copy of
    # .env.example, set the variable to "": start-up stopped on "Invalid email schema" or an
    # unknown log level, and an empty ALLOWED_HOSTS answered 400 to every page but the probes.
    assert settings_read(fresh, **dict.fromkeys(OPTIONAL_VARIABLES, blank)) == unset
    assert unset["email"] == "django.core.mail.backends.console.EmailBackend"
    assert unset["hosts"] == ["hooks.example.com", "localhost", "127.0.0.1", "testserver"]
    assert unset["origins"] == ["https://hooks.example.com"]
    assert (unset["hsts"], unset["log_level"]) == (31_536_000, logging.INFO)


def test_allowed_hosts_and_trusted_origins_add_to_the_public_base_urls(fresh):
    # .env.example: "set it only to add names". Replacing the list refused PUBLIC_BASE_URL's own host,
    # which ingest URLs and sign-in links name, with a 400.
    read = settings_read(
        fresh, ALLOWED_HOSTS="hooks.acme.example,localhost", CSRF_TRUSTED_ORIGINS="https://hooks.acme.example/"
    )
    assert read["hosts"] == ["hooks.example.com", "localhost", "127.0.0.1", "testserver", "hooks.acme.example"]
    assert read["origins"] == ["https://hooks.example.com", "https://hooks.acme.example"]


def test_a_lower_case_log_level_is_read(fresh):
    assert settings_read(fresh, LOG_LEVEL="warning")["log_level"] == logging.WARNING


def test_collectstatic_runs_with_the_storage_that_writes_hashed_names(fresh, unset):
    # The manifest storage is what writes staticfiles.json; choosing it only once that file
    # existed meant it was never written, and files never got hashed names or long caching.
    assert settings_read(fresh, argv=["manage.py", "collectstatic", "--noinput"])["static"] == (
        "config.storage.CollectedStaticFilesStorage"
    )
    if not (ROOT / "staticfiles" / "staticfiles.json").exists():
        assert unset["static"] == "django.contrib.staticfiles.storage.StaticFilesStorage"


def test_earlier_secret_keys_are_read_from_the_environment(fresh, unset):
    assert unset["fallbacks"] == []
    assert settings_read(fresh, SECRET_KEY_FALLBACKS="old-key-one,old-key-two")["fallbacks"] == [
        "old-key-one",
        "old-key-two",
    ]


ENCRYPT_OR_DECRYPT = (
    "import sys, django; django.setup(); from webhooks.fields import fernet; "
    "print(fernet().encrypt(b'whsec_stored').decode() if sys.argv[1] == 'encrypt' else fernet().decrypt(sys.argv[1]))"
)


def embedded(fresh, tmp_path, *arguments, **variables):
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "HOOKLINE_VAR_DIR": str(tmp_path),
        **variables,
    }
    return fresh.run(["-c", ENCRYPT_OR_DECRYPT, *arguments], environment)


def test_embedded_secrets_stay_readable_when_the_secret_key_changes_through_the_fallbacks(fresh, tmp_path):
    # Embedded mode derives its encryption key from SECRET_KEY: changing the key as the README says
    # (the old one moved to SECRET_KEY_FALLBACKS) must not leave the stored source secrets unreadable.
    stored = embedded(fresh, tmp_path, "encrypt", SECRET_KEY="the-first-embedded-key")
    assert stored.returncode == 0, stored.stderr

    read = embedded(
        fresh,
        tmp_path,
        stored.stdout.strip(),
        SECRET_KEY="the-second-embedded-key",
        SECRET_KEY_FALLBACKS="the-first-embedded-key",
    )

    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "b'whsec_stored'"
    # Without the old key listed the secret is unreadable, as before: the fallback is what keeps it.
    assert embedded(fresh, tmp_path, stored.stdout.strip(), SECRET_KEY="the-second-embedded-key").returncode != 0


def test_a_static_file_missing_from_an_old_manifest_still_renders(settings, tmp_path, client):
    # A developer ran collectstatic once, then added a file: its page must not answer 500.
    (tmp_path / "staticfiles.json").write_text(json.dumps({"paths": {}, "version": "1.1", "hash": ""}))
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "config.storage.CollectedStaticFilesStorage"},
    }
    from django.templatetags.static import static

    assert static("css/hookline.css") == "/static/css/hookline.css"
    assert client.get("/accounts/sign-in/").status_code == 200


def test_a_misspelled_static_file_name_still_fails_loudly_with_the_collected_storage(settings, tmp_path):
    # The fallback above is for a file that exists in an app but not in an old manifest; a name that
    # exists nowhere must still be an error, or a typo ships as a page without its stylesheet.
    (tmp_path / "staticfiles.json").write_text(json.dumps({"paths": {}, "version": "1.1", "hash": ""}))
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "config.storage.CollectedStaticFilesStorage"},
    }
    from django.templatetags.static import static

    with pytest.raises(ValueError, match=r"css/hokline\.css"):
        static("css/hokline.css")


def test_every_static_file_a_template_names_exists():
    # The tests render with the plain storage, which never checks a name: a typo would pass them all.
    import re

    from django.conf import settings
    from django.contrib.staticfiles import finders

    named = set()
    folders = [Path(folder) for engine in settings.TEMPLATES for folder in engine["DIRS"]]
    folders += [path for path in ROOT.glob("*/templates") if ".venv" not in path.parts]
    for folder in folders:
        for template in folder.rglob("*.html"):
            named.update(re.findall(r"{%\s*static\s+['\"]([^'\"]+)['\"]", template.read_text()))
    assert named, "no {% static %} name found: the pattern no longer matches the templates"
    assert [name for name in sorted(named) if finders.find(name) is None] == []


def embedded_start(fresh, var_dir, argv):
    """`manage.py <argv>` as `make run` runs it: no DATABASE_URL, so on the embedded defaults under ``var_dir``."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "HOOKLINE_VAR_DIR": str(var_dir),
    }
    return fresh.run(["manage.py", *argv], environment)


def test_the_embedded_mode_reports_no_sqlite_warning_at_each_make_run(fresh, tmp_path):
    # `make run`'s migrate (which checks with the database, as --database does) printed W040 (SQLite
    # ignores the covering indexes' INCLUDE columns) every time, under "System check identified some
    # issues": a newcomer's first output looked broken.
    checked = embedded_start(fresh, tmp_path / "var", ["check", "--database", "default", "--fail-level", "WARNING"])
    assert checked.returncode == 0, checked.stderr
    assert "W040" not in checked.stdout + checked.stderr
    assert "System check identified no issues" in checked.stdout


def test_the_embedded_var_directory_is_its_owners_only(fresh, tmp_path):
    # Its SQLite database holds the secrets, encrypted with a key derived from the public default
    # SECRET_KEY: a var/ readable by every local user gave them all away (and var/demo_receiver_secret,
    # kept 0600, was no better protected than the copy in the database).
    checked = embedded_start(fresh, tmp_path / "var", ["check"])
    assert checked.returncode == 0, checked.stderr
    assert (tmp_path / "var").stat().st_mode & 0o777 == 0o700

    # One given by HOOKLINE_VAR_DIR that exists keeps its mode: it may be shared on purpose.
    given = tmp_path / "given"
    given.mkdir(mode=0o755)
    given.chmod(0o755)
    assert embedded_start(fresh, given, ["check"]).returncode == 0
    assert given.stat().st_mode & 0o777 == 0o755
