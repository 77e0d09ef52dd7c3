# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# Test settings: real PostgreSQL and Redis on localhost unless overridden.
TEST_DATABASE_URL ?= $(or $(DATABASE_URL),postgres://postgres@localhost:5432/hookline)
TEST_REDIS_URL ?= $(or $(REDIS_URL),redis://localhost:6379/15)
# The suite runs in this many processes (pytest-xdist; an idle one takes tests queued for a busy one); 0 runs it in this one.
PYTEST_WORKERS ?= 2
# `make test` unsets PYTHONDONTWRITEBYTECODE (some machines set it): with it, each of the processes
# compiles every module and rewrites every test file's asserts again (~15 s of CPU each).
# The slowest tests are listed at the end of every run, CI's too, so that the suite's time is watched.
PYTEST_DURATIONS ?= 25
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	SECRET_KEY=test-only-secret-key FIELD_ENCRYPTION_KEYS=DvYDLpKLLhLv09Ed4NPzG2XacL4YXQyL5GAbYbiy-6c= \
	ALLOW_PRIVATE_DESTINATIONS=true CELERY_QUEUE=hookline-test PUBLIC_BASE_URL=http://testserver \
	DJANGO_ALLOW_ASYNC_UNSAFE=true

.PHONY: run test lint bench clean

$(VENV)/.installed-run: requirements/base.txt requirements/prod.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/prod.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run requirements/dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	touch $@

run: $(VENV)/.installed-run
	@$(PY) scripts/run_local.py --check-can-start
	env -u DATABASE_URL -u REDIS_URL $(PY) manage.py migrate --noinput
	env -u DATABASE_URL -u REDIS_URL $(PY) scripts/run_local.py

test: $(VENV)/.installed-dev
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) sh scripts/ensure_services.sh
	sh scripts/ensure_browser.sh
	env -u PYTHONDONTWRITEBYTECODE $(TEST_ENV) $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=$(PYTEST_DURATIONS) $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed-dev
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) sh scripts/ensure_services.sh
	$(PY) bench/ingest.py

# Starts `make run` over: its SQLite database, broker and cache are all under var/. Not while a
# `make run` holds var/'s run lock: it would go on with its database deleted under it.
clean:
	@env -u HOOKLINE_VAR_DIR $(PYTHON) scripts/run_local.py --refuse-if-running
	rm -rf var staticfiles .pytest_cache
