"""Hookline settings, read from the environment (see .env.example).

With no environment variables at all, Hookline runs on embedded defaults:
SQLite, a filesystem Celery broker and a file cache under var/, console email.
Setting DATABASE_URL switches to server mode, where SECRET_KEY,
FIELD_ENCRYPTION_KEYS and PUBLIC_BASE_URL have no default, so a missing one fails at start-up.
"""

import base64
import contextlib
import hashlib
import sys
from pathlib import Path
from urllib.parse import urlsplit

import environ
from celery.schedules import schedule
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("HOOKLINE_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _given(name: str) -> bool:
    """Whether an optional variable holds a value. A platform's form field left empty (Heroku's
    app.json, Render's sync: false) or an emptied line of a .env copy sets it to "": that means
    "use the default", where it crashed start-up (EMAIL_URL, LOG_LEVEL) or emptied a list that
    turned every page into a 400 (ALLOWED_HOSTS)."""
    return bool(env.str(name, default="").strip())


EMBEDDED = "DATABASE_URL" not in env

if EMBEDDED:
    # Its owner's only: the SQLite database holds secrets encrypted with a key derived from the
    # default SECRET_KEY, which is public, so whoever reads the file reads them (and the sessions).
    # Only a var/ made here: an existing directory, HOOKLINE_VAR_DIR's included, keeps its mode.
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    SECRET_KEY = env.str("SECRET_KEY", default="embedded-mode-only-not-for-production")
else:
    SECRET_KEY = env.str("SECRET_KEY")

# Older keys still accepted for what was signed with them (sessions, sign-in links) while a new
# SECRET_KEY is rolled out: without them, changing the key signs everyone out at once.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])

DEBUG = env.bool("DEBUG", default=False)

if EMBEDDED:
    PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
else:
    # No default in server mode: with a local one, every request to the platform's host name was
    # a 400 (not in ALLOWED_HOSTS) while the health checks passed, and ingest URLs named 127.0.0.1.
    PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL").rstrip("/")
_public_origin = urlsplit(PUBLIC_BASE_URL)
if _public_origin.scheme not in ("http", "https") or not _public_origin.hostname:
    raise ImproperlyConfigured(
        f"PUBLIC_BASE_URL must be an absolute http(s) URL such as https://hooks.example.com, not {PUBLIC_BASE_URL!r}"
    )
# ALLOWED_HOSTS and CSRF_TRUSTED_ORIGINS add names to PUBLIC_BASE_URL's, as .env.example says:
# replacing them made the host that ingest URLs and sign-in links name answer 400 to every page.
ALLOWED_HOSTS = [urlsplit(PUBLIC_BASE_URL).hostname, "localhost", "127.0.0.1", "testserver"]
for _host in env.list("ALLOWED_HOSTS", default=[]):
    if _host.strip() and _host.strip() not in ALLOWED_HOSTS:
        ALLOWED_HOSTS.append(_host.strip())
CSRF_TRUSTED_ORIGINS = [PUBLIC_BASE_URL]
for _origin in env.list("CSRF_TRUSTED_ORIGINS", default=[]):
    if _origin.strip() and _origin.strip().rstrip("/") not in CSRF_TRUSTED_ORIGINS:
        CSRF_TRUSTED_ORIGINS.append(_origin.strip().rstrip("/"))
# Behind Heroku/Render's router the scheme arrives in X-Forwarded-Proto.
if env.bool("TRUST_X_FORWARDED_PROTO", default=not EMBEDDED):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Served over https: session and CSRF cookies only travel encrypted, and browsers are told to
# stay on https. No redirect to https: providers do not follow one with their POST body.
SERVED_OVER_HTTPS = PUBLIC_BASE_URL.startswith("https://")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SERVED_OVER_HTTPS
SECURE_HSTS_SECONDS = (
    env.int("SECURE_HSTS_SECONDS") if _given("SECURE_HSTS_SECONDS") else 31_536_000 if SERVED_OVER_HTTPS else 0
)
# Pages (dashboard, sign-in, admin) load only Hookline's own files: no inline script or style,
# no plugins, no <base>, forms post only here, no framing (X-Frame-Options says the same to older
# browsers). Responses that are not HTML get "default-src 'none'" (config/content_security_policy.py).
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
    # Browsers post what the policy blocked here; config/csp_reports.py logs it (path in config/urls.py).
    "report-uri": ["/csp-reports"],
}

INSTALLED_APPS = [
    # Django's admin with Hookline's site (branding and the operations overview on the index).
    "webhooks.admin_site.HooklineAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    # The OpenAPI document of the REST API (GET /api/v1/schema; webhooks/api/schema.py).
    "drf_spectacular",
    "django_celery_beat",
    "django_htmx",
    "accounts",
    "organizations",
    "webhooks",
]

MIDDLEWARE = [
    "webhooks.views.health.probes_from_any_host",
    "django.middleware.security.SecurityMiddleware",
    "config.content_security_policy.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "organizations.middleware.AuditRequestMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # A body the client did not send whole (reset, or over REQUEST_READ_TIMEOUT_SECONDS): 400/408, not 500.
    "config.unreadable_body.UnreadableBodyMiddleware",
    # Last, so that it sees the views' exceptions first: a secret not decryptable yet is a 503.
    "webhooks.views.one_look.SecretNotReadableMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
# Only platform admins have a password, and theirs opens every tenant's data in /admin/:
# createsuperuser and the admin's password forms refuse a short, common, numeric one or one
# like the address (without these, "short" was accepted).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:sign_in"
LOGIN_REDIRECT_URL = "home"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
if EMBEDDED:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "hookline.sqlite3",
            # Web, worker and beat share one file: WAL and IMMEDIATE transactions
            # make writers wait for each other instead of failing with "locked".
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
    # SQLite ignores an index's INCLUDE columns (PostgreSQL's covering indexes) and the index still
    # serves; said on every `make run`'s migrate, the warning read as something to fix.
    SILENCED_SYSTEM_CHECKS = ["models.W040"]
else:
    DATABASES = {"default": env.db("DATABASE_URL")}
    if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        # Server mode leans on PostgreSQL (advisory locks, SKIP LOCKED, concurrent index builds);
        # SQLite is the embedded mode's, with the options it needs, and comes from leaving the URL unset.
        raise ImproperlyConfigured(
            "DATABASE_URL must be a PostgreSQL URL (postgres://…); leave it unset for the embedded SQLite mode"
        )
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    # Off by default: a SELECT 1 before every request costs ingest a round trip; a broken
    # connection fails one request (503, the provider retries) and is then replaced.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
    DATABASES["default"].setdefault("OPTIONS", {})
    # A dead database must fail a request in seconds, not hang it.
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=3))
# The release phase's migrate (webhooks/management/commands/migrate.py): how long a schema change
# waits for its table's lock before it lets go and tries again, so that it never queues the running
# processes' statements behind a long transaction for longer. Below the workers' own 5 s bound on
# recording a sent delivery's result (services.delivery.RECORD_LOCK_TIMEOUT), past which that
# delivery is sent again. 0: wait without bound (Django's own behaviour).
MIGRATION_LOCK_TIMEOUT_SECONDS = env.float("MIGRATION_LOCK_TIMEOUT_SECONDS", default=2.0)
MIGRATION_LOCK_TRIES = max(1, env.int("MIGRATION_LOCK_TRIES", default=60))
MIGRATION_LOCK_RETRY_SECONDS = env.float("MIGRATION_LOCK_RETRY_SECONDS", default=5.0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache and Celery broker -------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")


def _with_certificate_check(url: str) -> str:
    """A rediss:// URL with REDIS_SSL_CERT_REQS as its ssl_cert_reqs, unless the URL says itself.

    Both the cache and Celery read it from the URL; Heroku's Redis has a self-signed certificate
    and a URL the app cannot edit, so "none" must be settable beside it.
    """
    if not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return url
    return url + ("&" if "?" in url else "?") + f"ssl_cert_reqs={REDIS_SSL_CERT_REQS}"


REDIS_SSL_CERT_REQS = env.str("REDIS_SSL_CERT_REQS", default="required")
if REDIS_SSL_CERT_REQS not in ("required", "optional", "none"):
    raise ImproperlyConfigured("REDIS_SSL_CERT_REQS must be required, optional or none")
REDIS_URL = _with_certificate_check(REDIS_URL)
# After a cache call fails to reach Redis (refused, or no answer within the socket timeouts), each
# process takes its "cache down" paths at once for this long, then tries Redis again: a Redis that
# hangs costs one request per process and interval a timeout, not every request. 0: never skip.
REDIS_SKIP_AFTER_FAILURE_SECONDS = env.float("REDIS_SKIP_AFTER_FAILURE_SECONDS", default=5.0)
if REDIS_URL:
    CACHES = {
        "default": {
            # django-redis's, skipping Redis for REDIS_SKIP_AFTER_FAILURE_SECONDS after it failed to answer.
            "BACKEND": "config.redis_cache.SkippingRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "hookline",
            "OPTIONS": {
                # Redis being down must slow ingest by milliseconds, not seconds.
                "SOCKET_CONNECT_TIMEOUT": 0.25,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# "localhost" only so that kombu does not warn that the (unused) host name is missing.
# An empty CELERY_BROKER_URL (.env.example's line uncommented) is unset: Celery read "" as its own
# default, amqp://localhost, where no broker listens.
CELERY_BROKER_URL = _with_certificate_check(
    env.str("CELERY_BROKER_URL") if _given("CELERY_BROKER_URL") else REDIS_URL or "filesystem://localhost/"
)
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery" / "queue"
    _processed_dir = VAR_DIR / "celery" / "processed"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    _processed_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_processed_dir),
        "store_processed": False,
        # Kombu's default is ./control in the working directory.
        "control_folder": str(VAR_DIR / "celery" / "control"),
    }
    # kombu's filesystem transport, writing each message whole: see config/filesystem_broker.py.
    CELERY_BROKER_TRANSPORT = "config.filesystem_broker:Transport"
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Above the longest task's hard time limit, so a slow task is not
        # redelivered to a second worker while the first still runs it.
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
        "socket_connect_timeout": 1,
        "socket_timeout": 2,
    }
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="hookline")
CELERY_TASK_IGNORE_RESULT = True
# No result backend is configured and no task's result is kept, so there is nothing to expire.
# Celery's default (1 day) had beat install its own daily `celery.backend_cleanup` task (django-celery-beat's
# DatabaseScheduler adds it whenever result_expires is set, whatever the backend): a task that does
# nothing here, yet listed among Hookline's periodic tasks, "last sent never" until 04:00. Not creating
# it is better than hiding it from the health check, which lists every periodic task on purpose (an
# operator's own among them). install_periodic_tasks removes the one an earlier beat created.
CELERY_RESULT_EXPIRES = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 120
CELERY_TASK_TIME_LIMIT = 180
# On SIGTERM a worker finishes what it holds for this long before giving the rest back.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env.float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", default=30.0)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "config.beat:DatabaseScheduler"
# Beat writes each periodic task's last_run_at after every task it sends, not only every 3 minutes
# (celery's default): the processing health check reads it, and would otherwise call a freshly
# started beat stopped for its first 3 minutes. One small UPDATE per sweep.
CELERY_BEAT_SYNC_EVERY = 1
# django-celery-beat copies this schedule into its tables at start-up, so the
# periodic tasks are installed by code and visible and editable in the admin.
SWEEP_INTERVAL_SECONDS = env.float("SWEEP_INTERVAL_SECONDS", default=5.0)
CELERY_BEAT_SCHEDULE = {
    "hookline-sweep": {
        "task": "webhooks.tasks.sweep",
        "schedule": schedule(SWEEP_INTERVAL_SECONDS),
        "options": {"expires": max(SWEEP_INTERVAL_SECONDS * 2, 10)},
    },
    "hookline-dead-letter-digests": {
        "task": "webhooks.tasks.send_dead_letter_digests",
        "schedule": schedule(300),
        "options": {"expires": 300},
    },
    "hookline-retention": {
        "task": "webhooks.tasks.purge_expired_events",
        "schedule": schedule(3600),
        "options": {"expires": 3600},
    },
    # A rotation's previous secret is erased within five minutes of its window's end.
    "hookline-forget-expired-secrets": {
        "task": "webhooks.tasks.forget_expired_previous_secrets",
        "schedule": schedule(300),
        "options": {"expires": 300},
    },
}

# --- Email --------------------------------------------------------------------
EMAIL_CONFIG = env.email_url("EMAIL_URL") if _given("EMAIL_URL") else env.email_url_config("consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL") if _given("DEFAULT_FROM_EMAIL") else "Hookline <hookline@localhost>"

# --- Passwordless sign-in and invitations ------------------------------------
SIGN_IN_LINK_TTL_SECONDS = env.int("SIGN_IN_LINK_TTL_SECONDS", default=15 * 60)
SIGN_IN_CODE_TTL_SECONDS = env.int("SIGN_IN_CODE_TTL_SECONDS", default=5 * 60)
SIGN_IN_CODE_MAX_ATTEMPTS = env.int("SIGN_IN_CODE_MAX_ATTEMPTS", default=5)  # wrong codes before a code is void
# Fixed windows: at most this many sign-in emails per address and per client IP, code tries per IP.
SIGN_IN_RATE_WINDOW_SECONDS = env.int("SIGN_IN_RATE_WINDOW_SECONDS", default=15 * 60)
SIGN_IN_REQUESTS_PER_EMAIL = env.int("SIGN_IN_REQUESTS_PER_EMAIL", default=5)
SIGN_IN_REQUESTS_PER_IP = env.int("SIGN_IN_REQUESTS_PER_IP", default=20)
SIGN_IN_CODE_TRIES_PER_IP = env.int("SIGN_IN_CODE_TRIES_PER_IP", default=30)
INVITATION_TTL_DAYS = env.int("INVITATION_TTL_DAYS", default=7)
# Invitations are emails to any address: an organization sends at most this many an hour.
INVITATIONS_PER_HOUR = env.int("INVITATIONS_PER_HOUR", default=50)

# --- Secrets at rest ----------------------------------------------------------
# Comma-separated Fernet keys, newest first. Embedded mode derives one from
# SECRET_KEY so that `make run` works with no configuration at all, and one from each of
# SECRET_KEY_FALLBACKS: a SECRET_KEY changed as the README says must not leave the secrets
# stored under the old one undecryptable (every webhook of a source with a secret would fail);
# `manage.py rotate_encryption_keys` moves them to the new key before the old one is dropped.
if EMBEDDED and "FIELD_ENCRYPTION_KEYS" not in env:
    FIELD_ENCRYPTION_KEYS = [
        base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()).decode()
        for key in [SECRET_KEY, *SECRET_KEY_FALLBACKS]
    ]
else:
    FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS")
# A blank or mistyped secret must stop start-up (and the release phase) here: found later, it
# would pass every check and then answer 500 to every webhook that needs a source's secret.
if not SECRET_KEY.strip():
    raise ImproperlyConfigured("SECRET_KEY is empty; see the README's deploy steps for how to make one")
if not FIELD_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty; see the README's deploy steps for how to make a key")
for _position, _key in enumerate(FIELD_ENCRYPTION_KEYS, start=1):
    try:
        Fernet(_key)
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            f"FIELD_ENCRYPTION_KEYS: key {_position} of {len(FIELD_ENCRYPTION_KEYS)} is not a Fernet key "
            "(32 bytes in URL-safe base64, 44 characters)"
        ) from None

# --- Webhooks -----------------------------------------------------------------
INGEST_MAX_BODY_BYTES = env.int("INGEST_MAX_BODY_BYTES", default=1024 * 1024)
# How long a web process may use its copy of a source (token, secrets, active flag).
INGEST_SOURCE_CACHE_SECONDS = env.float("INGEST_SOURCE_CACHE_SECONDS", default=5.0)
# Concurrent ingest requests of one web process share one INSERT and commit (PostgreSQL only);
# a request waits at most INGEST_COMMIT_TIMEOUT_SECONDS for its commit, then answers 503.
INGEST_GROUP_COMMIT = env.bool("INGEST_GROUP_COMMIT", default=True)
INGEST_COMMIT_TIMEOUT_SECONDS = env.float("INGEST_COMMIT_TIMEOUT_SECONDS", default=10.0)
# Set by config/gunicorn.conf.py for its workers: the Unix socket of the host's ingest writer
# process, which commits the rows of every web worker together (empty: each process writes its own).
INGEST_WRITER_SOCKET = env.str("INGEST_WRITER_SOCKET", default="")
DATA_UPLOAD_MAX_MEMORY_SIZE = max(INGEST_MAX_BODY_BYTES, 2_621_440)
# Rejected requests kept per source per minute; past that they are answered the same but not kept.
INGEST_REJECTED_RECORDS_PER_MINUTE = env.int("INGEST_REJECTED_RECORDS_PER_MINUTE", default=60)
# And kept per source per hour: without it a source refusing everything would keep 86,400 a day.
# Those not kept are counted on the source (services.rejected_records).
INGEST_REJECTED_RECORDS_PER_HOUR = env.int("INGEST_REJECTED_RECORDS_PER_HOUR", default=600)
REJECTED_BODY_MAX_BYTES = env.int("REJECTED_BODY_MAX_BYTES", default=16 * 1024)
# A rejected request's headers as kept (names and values, UTF-8): gunicorn lets a request carry
# 100 headers of 8 KiB, which kept whole would be 50 times the body's bound.
REJECTED_HEADERS_MAX_BYTES = env.int("REJECTED_HEADERS_MAX_BYTES", default=16 * 1024)
# The events list's "Body contains": events whose body one request reads at most, newest first from
# where the last one stopped, and how long the database may take over them before it stops.
BODY_SEARCH_WINDOW = env.int("BODY_SEARCH_WINDOW", default=10_000)
BODY_SEARCH_TIMEOUT_SECONDS = env.float("BODY_SEARCH_TIMEOUT_SECONDS", default=5.0)
# Body searches one organization may run at once; another is refused until one ends, so that a
# member or a read-only key cannot hold many web workers and database connections.
BODY_SEARCH_CONCURRENCY = env.int("BODY_SEARCH_CONCURRENCY", default=2)
# Found only at the first search otherwise (a window of 0 answered every search with a 500; a
# timeout of 0 is PostgreSQL's "no limit"; a concurrency of 0 refused every search).
if BODY_SEARCH_WINDOW < 1 or not BODY_SEARCH_TIMEOUT_SECONDS > 0:
    raise ImproperlyConfigured("BODY_SEARCH_WINDOW must be 1 or more and BODY_SEARCH_TIMEOUT_SECONDS above 0")
if BODY_SEARCH_CONCURRENCY < 1:
    raise ImproperlyConfigured("BODY_SEARCH_CONCURRENCY must be 1 or more")
# Whole seconds in the digits 0-9, as the retry schedules of destinations: int() also reads other
# scripts' digits ("٣٠" as 30), and a mistyped wait ("1m") stopped start-up on a bare ValueError.
_RETRY_WAITS = [
    value.strip()
    for value in env.list("DELIVERY_RETRY_SCHEDULE", default=["60", "300", "900", "3600", "21600", "43200", "86400"])
]
if unread := [value for value in _RETRY_WAITS if not (value.isascii() and value.isdigit() and len(value) <= 9)]:
    raise ImproperlyConfigured(
        "DELIVERY_RETRY_SCHEDULE must be whole seconds in the digits 0-9, separated by commas "
        f'(60,300,900): not "{unread[0]}"'
    )
DELIVERY_RETRY_SCHEDULE = [int(value) for value in _RETRY_WAITS]
DELIVERY_TIMEOUT_SECONDS = env.float("DELIVERY_TIMEOUT_SECONDS", default=15.0)
DELIVERY_RESPONSE_BODY_MAX_BYTES = env.int("DELIVERY_RESPONSE_BODY_MAX_BYTES", default=4096)
ALLOW_PRIVATE_DESTINATIONS = env.bool("ALLOW_PRIVATE_DESTINATIONS", default=False)
# Work left in a state longer than this is picked up again by the sweeper.
STUCK_EVENT_SECONDS = env.int("STUCK_EVENT_SECONDS", default=10)
# A delivery in flight this long after its attempt's timeout is taken for lost (its worker died)
# and sent again; STUCK_DELIVERY_SECONDS after its claim at the latest.
STUCK_DELIVERY_MARGIN_SECONDS = env.int("STUCK_DELIVERY_MARGIN_SECONDS", default=30)
STUCK_DELIVERY_SECONDS = env.int("STUCK_DELIVERY_SECONDS", default=150)
# ... unless the dispatcher that claimed it is alive (its mark in the cache): a dispatcher that cannot
# reach the database (down, frozen, partitioned, failing over) keeps what it sent and records it
# when it can. Past this, counted from the claim, it is taken for wedged and the delivery is sent
# again all the same (never sooner than STUCK_DELIVERY_SECONDS).
LIVE_CLAIM_MAX_SECONDS = env.int("LIVE_CLAIM_MAX_SECONDS", default=600)
SECRET_ROTATION_OVERLAP_SECONDS = env.int("SECRET_ROTATION_OVERLAP_SECONDS", default=24 * 3600)

# --- Processing health (webhooks/services/platform_health.py) -----------------
# A webhook waiting to be processed, or a due delivery waiting to be sent, this long makes the
# verdict "degraded"; the longer one "stalled" (for deliveries only while no worker runs tasks).
HEALTH_BACKLOG_DEGRADED_SECONDS = env.float("HEALTH_BACKLOG_DEGRADED_SECONDS", default=60.0)
HEALTH_BACKLOG_STALLED_SECONDS = env.float("HEALTH_BACKLOG_STALLED_SECONDS", default=300.0)
# Beat looks stopped when no periodic task was sent for this long (it records each one as it sends
# it, CELERY_BEAT_SYNC_EVERY); the margin covers a restart of beat and a slow sweep interval.
HEALTH_BEAT_STALE_SECONDS = env.float("HEALTH_BEAT_STALE_SECONDS", default=max(300.0, 180 + 4 * SWEEP_INTERVAL_SECONDS))
# Workers look stopped when none ran a task for this long (beat sends the sweep every SWEEP_INTERVAL_SECONDS).
HEALTH_WORKER_STALE_SECONDS = env.float("HEALTH_WORKER_STALE_SECONDS", default=max(120.0, 6 * SWEEP_INTERVAL_SECONDS))
# The health checks say "degraded" for this long after a stored secret could not be decrypted
# (webhooks.services.secret_health): /readyz for its own process, the processing health for any.
HEALTH_SECRET_UNREADABLE_SECONDS = env.float("HEALTH_SECRET_UNREADABLE_SECONDS", default=900.0)
# GET /metrics answers only a request with "Authorization: Bearer <this>"; unset, it is a 404.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- DRF ----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "webhooks.api.schema.ApiAutoSchema",
}
# The OpenAPI document of /api/v1/ (webhooks/api/schema.py).
SPECTACULAR_SETTINGS = {
    "TITLE": "Hookline REST API",
    "VERSION": "1",
    "DESCRIPTION": (
        "An organization's events, deliveries, bulk retries, sources and destinations, with an API key. "
        'Errors are JSON {"error", "detail"} (and "fields" for a 400 on a query parameter or a body '
        'field); lists are cursor pages {"next", "previous", "results"}. A trailing slash on a path is '
        'optional; any other path under /api/ is a 404 {"error": "not_found", "detail": "no such endpoint"}. '
        "The rules in full are in the section REST API of Hookline's README.md (README.md#rest-api in its source)."
    ),
    "SERVERS": [{"url": PUBLIC_BASE_URL}],
    "SERVE_INCLUDE_SCHEMA": False,
    # Secrets are written, never read: requests and answers are separate components.
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,
    # Named for what they are in a generated client ("OpEnum" says nothing).
    "ENUM_NAME_OVERRIDES": {
        "PayloadFilterOperatorEnum": "webhooks.services.payload_filters.OPERATORS",
        "DeliveryStatusEnum": "webhooks.models.Delivery.Status",
        "EventStatusEnum": "webhooks.models.WebhookEvent.Status",
        "SourceDeletionStateEnum": "webhooks.api.schema.SOURCE_DELETION_STATES",
        "DestinationDeletionStateEnum": "webhooks.api.schema.DESTINATION_DELETION_STATES",
        "BulkRetryDeliveryStatusEnum": "webhooks.api.serializers.BULK_RETRY_DELIVERY_STATUSES",
    },
    "PREPROCESSING_HOOKS": ["webhooks.api.schema.document_only_api"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "webhooks.api.schema.drop_component_docstrings",
        "webhooks.api.schema.nullable_references_as_one_of",
    ],
}
# Requests per API key: "<number>/<s|min|h>", counted in the cache, in each process's memory while the
# cache is down (webhooks.api.limits).
API_RATE_LIMIT = env.str("API_RATE_LIMIT", default="600/min")
# Wrong or malformed API keys per client address before its wrong keys get 429 for the rest of the
# window (right keys still pass), counted as above.
API_AUTH_FAILURE_LIMIT = env.str("API_AUTH_FAILURE_LIMIT", default="30/min")

# --- Static files, i18n -------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# After `collectstatic` (production builds) files get hashed names for caching;
# before it (tests, embedded mode) they are served unhashed from the apps.
# collectstatic itself must run with the manifest storage: it is what writes staticfiles.json.
_COLLECTED = sys.argv[1:2] == ["collectstatic"] or (STATIC_ROOT / "staticfiles.json").exists()
# WhiteNoise warns at every start about a missing STATIC_ROOT; before collectstatic it is just empty.
with contextlib.suppress(OSError):  # a read-only slug after collectstatic has it already
    STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "config.storage.CollectedStaticFilesStorage"
        if _COLLECTED
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Files not collected (tests, embedded mode, or added since a local collectstatic: see
# config/storage.py) are served from their apps.
WHITENOISE_USE_FINDERS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Date-times to the second and with their zone wherever Django formats them (the admin above all).
FORMAT_MODULE_PATH = ["config.formats"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Tokens in URLs (ingest, sign-in and invitation links) are secrets: masked in every record
    # (config/log_masking.py).
    "filters": {
        "mask_url_tokens": {"()": "config.log_masking.MaskUrlTokens"},
        "forbidden_without_traceback": {"()": "config.log_filters.ForbiddenWithoutTraceback"},
        "refused_host_without_traceback": {"()": "config.log_filters.RefusedHostWithoutTraceback"},
        "ingest_refusals_at_info": {"()": "config.log_filters.IngestRefusalsAtInfo"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": [
                "mask_url_tokens",
                "forbidden_without_traceback",
                "refused_host_without_traceback",
                "ingest_refusals_at_info",
            ],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL").upper() if _given("LOG_LEVEL") else "INFO"},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Django's defaults give these handlers of their own (console when DEBUG, mail_admins),
        # which would write a record before it reaches the masking one above.
        "django": {"handlers": [], "propagate": True},
        "django.server": {"handlers": ["console"], "propagate": False},
    },
}

# Only behind a router that sets X-Forwarded-For itself (Heroku, Render).
TRUST_X_FORWARDED_FOR = env.bool("TRUST_X_FORWARDED_FOR", default=not EMBEDDED)
# How many right-most X-Forwarded-For entries proxies the operator trusts appended: 1 is the router
# alone; a CDN or load balancer in front of it adds one more each (Cloudflare → Heroku: 2). The
# client is the entry that many from the right (accounts.http.client_ip).
TRUSTED_PROXY_HOPS = env.int("TRUSTED_PROXY_HOPS", default=1)
if TRUSTED_PROXY_HOPS < 1:
    raise ImproperlyConfigured("TRUSTED_PROXY_HOPS must be 1 or more (1: the platform's router alone)")

# --- Delivery engine ------------------------------------------------------------
DELIVERY_THREADS = env.int("DELIVERY_THREADS", default=32)  # sending threads per dispatcher
DELIVERY_MAX_TIMEOUT_SECONDS = env.float("DELIVERY_MAX_TIMEOUT_SECONDS", default=60.0)
# Fan-out reads every destination of an event's source, with its filters, in the batch every tenant
# shares: one tenant's thousands of destinations would slow processing for all.
MAX_DESTINATIONS_PER_ORGANIZATION = env.int("MAX_DESTINATIONS_PER_ORGANIZATION", default=100)
DISPATCHER_MAX_SECONDS = env.float("DISPATCHER_MAX_SECONDS", default=50.0)  # then a fresh task continues
# Dispatchers that may run at once while there is a backlog (one per worker process is right).
DELIVERY_DISPATCHERS = env.int("DELIVERY_DISPATCHERS", default=2)
# Sends one organization may have in flight at once, over all its destinations: half the sending
# threads by default, so that one tenant's slow or silent receivers never hold them all.
ORGANIZATION_MAX_CONCURRENCY = max(
    1, env.int("ORGANIZATION_MAX_CONCURRENCY", default=max(1, DELIVERY_THREADS * DELIVERY_DISPATCHERS // 2))
)
DISPATCHER_POLL_SECONDS = env.float("DISPATCHER_POLL_SECONDS", default=0.05)
# An idle dispatcher (slot 0) and processing task keep looking, every LINGER_POLL_SECONDS, for
# this long before they end: a steady stream of webhooks is then served by running tasks
# instead of a broker message and a task start per webhook (at 200/s on two cores that halved
# the latency). Below ~1/LINGER webhooks/s tasks start per webhook, as without it.
DISPATCHER_LINGER_SECONDS = env.float("DISPATCHER_LINGER_SECONDS", default=0.5)
PROCESSING_LINGER_SECONDS = env.float("PROCESSING_LINGER_SECONDS", default=0.5)
LINGER_POLL_SECONDS = env.float("LINGER_POLL_SECONDS", default=0.01)
PROCESSING_MAX_SECONDS = env.float("PROCESSING_MAX_SECONDS", default=50.0)  # then a fresh task continues
# Bytes of bodies that payload filters may read in one processing batch (the batch every tenant's
# events share); the events past it wait for the next batch. At least one event a batch, whatever its size.
PROCESSING_BATCH_BODY_BYTES = env.int("PROCESSING_BATCH_BODY_BYTES", default=16 * 1024 * 1024)
if PROCESSING_BATCH_BODY_BYTES < 1:
    raise ImproperlyConfigured("PROCESSING_BATCH_BODY_BYTES must be 1 or more")
# Deliveries that one processing batch may create (the batch every tenant's events share); the
# events past it wait for the next batch. At least one event a batch, whatever its fan-out.
PROCESSING_BATCH_DELIVERIES = env.int("PROCESSING_BATCH_DELIVERIES", default=2000)
if PROCESSING_BATCH_DELIVERIES < 1:
    raise ImproperlyConfigured("PROCESSING_BATCH_DELIVERIES must be 1 or more")
# An ingest process that saw the processing flag set trusts it this long without asking Redis
# again; a processing task waits as long between clearing its flag and its last look
# (services.scheduling). Not an environment setting: both sides must agree on it.
PROCESSING_FLAG_TRUST_SECONDS = 0.1
RETRY_AFTER_MAX_SECONDS = env.int("RETRY_AFTER_MAX_SECONDS", default=3600)
CIRCUIT_BREAKER_FAILURES = env.int("CIRCUIT_BREAKER_FAILURES", default=20)
CIRCUIT_BREAKER_PERIOD_SECONDS = env.int("CIRCUIT_BREAKER_PERIOD_SECONDS", default=600)
ALERT_INTERVAL_SECONDS = env.int("ALERT_INTERVAL_SECONDS", default=3600)  # at most one alert per destination
RETENTION_BATCH_SIZE = env.int("RETENTION_BATCH_SIZE", default=500)
# How long deliveries are held for a paused destination before the retention run marks them dead
# (services.lifecycle.give_up_long_held_deliveries). A platform setting, not the organization's
# retention: that one says how long history is kept after a delivery ended, and may be a single day,
# which would kill a queue held over a weekend's maintenance. 30 days by default: the longest retry
# age a destination may set (Destination.MAX_RETRY_AGE_SECONDS), so a delivery held behind a pause is
# not given up sooner than a failing one could still be retrying; and far past any planned pause.
PAUSED_DESTINATION_HOLD_DAYS = env.int("PAUSED_DESTINATION_HOLD_DAYS", default=30)
if PAUSED_DESTINATION_HOLD_DAYS < 1:
    raise ImproperlyConfigured("PAUSED_DESTINATION_HOLD_DAYS must be 1 or more")
# The same bound for a suspended organization (Organization.suspended_at): the retention run marks
# dead its deliveries held longer. A setting of its own: a suspension is an operator's decision
# about a tenant (unpaid bills, abuse), which an operator may want to hold for a grace period longer
# (or shorter) than a receiver's pause, without changing how long an abandoned endpoint holds.
SUSPENDED_ORGANIZATION_HOLD_DAYS = env.int("SUSPENDED_ORGANIZATION_HOLD_DAYS", default=30)
if SUSPENDED_ORGANIZATION_HOLD_DAYS < 1:
    raise ImproperlyConfigured("SUSPENDED_ORGANIZATION_HOLD_DAYS must be 1 or more")
# How long a retention batch waits, between keeping its events' keys and deleting them, for statements
# that started before the keys were committed (services.lifecycle); past it the batch is left to the next run.
RETENTION_PURGE_WAIT_SECONDS = env.float("RETENTION_PURGE_WAIT_SECONDS", default=30.0)
# A retention run stops after its batch that ends past this and publishes the next run at once: a
# backlog is purged by runs back to back, each well inside Celery's soft time limit (120 s) even with
# a batch's wait above, instead of by one run an hour that the time limit kills halfway.
RETENTION_RUN_SECONDS = env.float("RETENTION_RUN_SECONDS", default=60.0)
# The platform audit log's entries older than this many days are deleted by the hourly retention run
# (within RETENTION_RUN_SECONDS, each batch recording where the kept chain starts); 0 keeps them forever.
AUDIT_LOG_RETENTION_DAYS = env.int("AUDIT_LOG_RETENTION_DAYS", default=365)
if AUDIT_LOG_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("AUDIT_LOG_RETENTION_DAYS must be 0 (keep forever) or more")
