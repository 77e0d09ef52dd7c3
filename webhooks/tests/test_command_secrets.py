"""Operator commands take secrets from a file or standard input (--secret-file, --header-file), so
that they are neither on a command line, which every user of the machine can read with ps, nor in
shell history. The old flags still work and warn on stderr."""

import io
import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from webhooks.models import Destination, Source

from .processes import ROOT
from .signing import stripe_headers

pytestmark = pytest.mark.django_db

# Distinctive enough that finding one anywhere is a leak, not a coincidence.
SOURCE_SECRET = "whsec_fromAfile9Kq2mZ7Lw4Pn8Rt"
GATEWAY_TOKEN = "Bearer gw-Hf83KdLq0secretZ9y8"
API_KEY_VALUE = "key-Mm41QwErTyUiOpA5s6"


def create_source(*args, stderr=None) -> tuple[dict, str]:
    """Runs create_source for the organization "acme" with --json: its object, and its stderr."""
    out, err = io.StringIO(), stderr or io.StringIO()
    call_command(
        "create_source",
        "--org",
        "acme",
        "--provider",
        "stripe",
        "--name",
        "live",
        *args,
        "--json",
        stdout=out,
        stderr=err,
    )
    return json.loads(out.getvalue()), err.getvalue()


def create_destination(*args) -> tuple[dict, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "create_destination",
        "--org",
        "acme",
        "--name",
        "gw",
        "--url",
        "http://127.0.0.1:9/gw",
        *args,
        "--json",
        stdout=out,
        stderr=err,
    )
    return json.loads(out.getvalue()), err.getvalue()


def refusal(command: str, *args) -> tuple[str, dict]:
    """The CommandError's message, and the JSON object printed on stdout with --json."""
    out = io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command(command, "--org", "acme", *args, "--json", stdout=out, stderr=io.StringIO())
    return str(refused.value), json.loads(out.getvalue())


def stdin_holding(monkeypatch, data: bytes) -> None:
    # A binary buffer under a text stream, as a real process's standard input has.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def assert_verifies_signed_requests(client, source_id: int, secret: str) -> None:
    """The source verifies a request signed with ``secret`` by Stripe's own library, and no other."""
    source = Source.objects.get(pk=source_id)
    body = '{"id":"evt_from_file","object":"event","type":"invoice.paid"}'
    url = f"/in/{source.ingest_token}/"
    signed = client.generic("POST", url, body, content_type="application/json", **stripe_headers(body, secret))
    assert signed.status_code == 200, signed.content
    forged = body.replace("evt_from_file", "evt_forged")
    refused = client.generic(
        "POST", url, forged, content_type="application/json", **stripe_headers(forged, secret + "\n")
    )
    assert refused.status_code == 401


def raw_secret_column(source_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM webhooks_source WHERE id = %s", [source_id])
        return cursor.fetchone()[0]


# --- create_source -------------------------------------------------------------------------------


def test_create_source_reads_the_secret_from_a_file_with_a_crlf_line_ending(client, organization, tmp_path):
    path = tmp_path / "stripe-secret"
    path.write_bytes(SOURCE_SECRET.encode() + b"\r\n")  # as a Windows editor saves it

    created, warnings = create_source("--secret-file", str(path))

    assert set(created) == {
        "id",
        "token",
        "ingest_url",
        "allowed_networks",
    }  # the shape --secret gives; no secret shown
    assert warnings == ""
    stored = raw_secret_column(created["id"])
    assert stored.startswith("gAAAA") and SOURCE_SECRET not in stored  # encrypted at rest
    assert Source.objects.get(pk=created["id"]).secret == SOURCE_SECRET
    assert_verifies_signed_requests(client, created["id"], SOURCE_SECRET)


def test_create_source_reads_the_secret_from_standard_input(client, organization, monkeypatch):
    stdin_holding(monkeypatch, SOURCE_SECRET.encode() + b"\n")

    created, warnings = create_source("--secret-file", "-")

    assert warnings == ""
    assert Source.objects.get(pk=created["id"]).secret == SOURCE_SECRET
    assert_verifies_signed_requests(client, created["id"], SOURCE_SECRET)


def test_a_pem_key_keeps_its_lines(organization, tmp_path):
    # SendGrid's verification key may be given as PEM: a secret of several lines, read as it is.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "sendgrid.pem"
    path.write_bytes(pem)
    out = io.StringIO()
    call_command(
        "create_source",
        "--org",
        "acme",
        "--provider",
        "sendgrid",
        "--name",
        "mail",
        "--secret-file",
        str(path),
        "--json",
        stdout=out,
    )
    assert Source.objects.get(pk=json.loads(out.getvalue())["id"]).secret == pem.decode().strip()


def test_secret_and_secret_file_together_are_refused(organization, tmp_path):
    path = tmp_path / "secret"
    path.write_text(SOURCE_SECRET)

    message, printed = refusal(
        "create_source",
        "--provider",
        "stripe",
        "--name",
        "x",
        "--secret",
        "whsec_onTheCommandLine",
        "--secret-file",
        str(path),
    )

    assert message == "give the secret with --secret or with --secret-file, not both"
    assert printed == {"error": message}
    assert not Source.objects.exists()


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"   \n"])
def test_an_empty_secret_file_is_refused(organization, tmp_path, content):
    path = tmp_path / "secret"
    path.write_bytes(content)
    # github: a provider whose secret Hookline generates when none is given. An empty file must not
    # quietly become that (a tenant would verify with a secret the provider does not know).
    message, printed = refusal("create_source", "--provider", "github", "--name", "x", "--secret-file", str(path))
    assert message == f"--secret-file: {path} holds no secret (it is empty or blank)"
    assert printed == {"error": message}
    assert not Source.objects.exists()


def test_empty_or_closed_standard_input_and_an_empty_secret_flag_are_refused(organization, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))  # a text stream without a byte buffer
    message, _ = refusal("create_source", "--provider", "github", "--name", "x", "--secret-file", "-")
    assert message == "--secret-file: standard input holds no secret (it is empty or blank)"
    monkeypatch.setattr(sys, "stdin", None)  # started with standard input closed (<&-)
    message, _ = refusal("create_source", "--provider", "github", "--name", "x", "--secret-file", "-")
    assert message == "--secret-file: standard input is closed"
    # "--secret $UNSET_VARIABLE": an empty value, refused rather than replaced by a generated secret.
    message, _ = refusal("create_source", "--provider", "github", "--name", "x", "--secret", "")
    assert message == "--secret is empty"
    assert not Source.objects.exists()


def test_a_secret_file_that_cannot_be_read_is_named_without_its_content(organization, tmp_path):
    missing = tmp_path / "nowhere" / "secret"
    message, printed = refusal("create_source", "--provider", "stripe", "--name", "x", "--secret-file", str(missing))
    assert message == f"--secret-file: cannot read {missing}: No such file or directory"
    assert printed == {"error": message}

    message, _ = refusal("create_source", "--provider", "stripe", "--name", "x", "--secret-file", str(tmp_path))
    assert message == f"--secret-file: cannot read {tmp_path}: Is a directory"

    latin1 = tmp_path / "latin1"
    latin1.write_bytes("whsec_caf\xe9".encode("latin-1"))
    message, _ = refusal("create_source", "--provider", "stripe", "--name", "x", "--secret-file", str(latin1))
    assert message == f"--secret-file: {latin1} is not UTF-8 text"
    assert "caf" not in message

    huge = tmp_path / "huge"
    huge.write_bytes(b"whsec_" + b"x" * 70_000)
    message, _ = refusal("create_source", "--provider", "stripe", "--name", "x", "--secret-file", str(huge))
    assert message == f"--secret-file: {huge} is larger than 64 KiB"
    assert not Source.objects.exists()


def test_a_secret_on_the_command_line_still_works_and_warns_on_stderr_only(client, organization):
    created, warnings = create_source("--secret", SOURCE_SECRET)

    assert set(created) == {"id", "token", "ingest_url", "allowed_networks"}  # stdout is still one JSON object
    assert warnings.startswith("warning: --secret on a command line can be read by other users of this machine")
    assert "--secret-file -" in warnings and warnings.count("\n") == 1
    assert SOURCE_SECRET not in warnings
    assert_verifies_signed_requests(client, created["id"], SOURCE_SECRET)


def test_a_provider_that_issues_its_secret_points_to_the_file_flag(organization):
    message, _ = refusal("create_source", "--provider", "stripe", "--name", "x")
    assert message.endswith("pass it with --secret-file PATH (- for standard input)")


# --- create_destination --------------------------------------------------------------------------

HEADER_FILE = (
    "# gateway credentials for the acme receiver\r\n"
    "\r\n"
    f"Authorization: {GATEWAY_TOKEN}\r\n"
    "   # X-Commented-Out: not sent\r\n"
    f"X-Api-Key:{API_KEY_VALUE}\r\n"
)


def test_create_destination_reads_headers_from_a_file_skipping_comments_and_blank_lines(organization, tmp_path):
    path = tmp_path / "headers"
    path.write_text(HEADER_FILE, newline="")

    created, warnings = create_destination("--header-file", str(path))

    assert set(created) == {"id", "secret", "sources", "policy", "custom_headers", "payload_filters", "warning"}
    assert created["custom_headers"] == [
        {"name": "Authorization", "hint": "…" + GATEWAY_TOKEN[-4:]},
        {"name": "X-Api-Key", "hint": "…" + API_KEY_VALUE[-4:]},
    ]
    assert warnings == ""
    assert Destination.objects.get().custom_header_values() == {
        "Authorization": GATEWAY_TOKEN,
        "X-Api-Key": API_KEY_VALUE,
    }


def test_create_destination_reads_headers_from_standard_input_and_with_header_flags(organization, monkeypatch):
    stdin_holding(monkeypatch, f"Authorization: {GATEWAY_TOKEN}\n".encode())

    created, warnings = create_destination("--header", "X-Tenant: acme", "--header-file", "-")

    assert Destination.objects.get().custom_header_values() == {"X-Tenant": "acme", "Authorization": GATEWAY_TOKEN}
    assert warnings.startswith("warning: --header on a command line can be read by other users of this machine")
    assert GATEWAY_TOKEN not in warnings and "acme" not in warnings


@pytest.mark.parametrize(
    "content, reason",
    [
        # A line without a colon may be a pasted value: it is not quoted back.
        (f"# header\n{GATEWAY_TOKEN}\n", "line 2: it has no colon: write each header as Name: value"),
        ("X-Ok: fine-value-1234\nHost: example.com\n", "line 2: the header “Host” cannot be set"),
        ("webhook-signature: v1,x\n", "line 1: the header “webhook-signature” cannot be set"),
        ("X-Api-Key: a\nx-api-key: b\n", "line 2: the header “x-api-key” is given twice"),
        ("X-Api-Key:   \n", "line 1: the header “X-Api-Key” needs a value"),
        ("X-Api-Key: key-before\rkey-after\n", "line 1: the value of “X-Api-Key” holds a line break"),
        ("Bad Name: value-1234\n", "line 1: “Bad Name” is not a header name"),
    ],
)
def test_a_bad_header_file_line_is_refused_naming_the_file_and_the_line(organization, tmp_path, content, reason):
    path = tmp_path / "headers"
    path.write_text(content, newline="")

    message, printed = refusal(
        "create_destination", "--name", "gw", "--url", "http://127.0.0.1:9/", "--header-file", str(path)
    )

    assert message.startswith(f"--header-file: {path}, {reason}")
    assert printed == {"error": message}
    assert GATEWAY_TOKEN not in message and "key-before" not in message and "key-after" not in message
    assert not Destination.objects.exists()


def test_header_file_refusals_for_the_whole_set(organization, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    message, _ = refusal(
        "create_destination", "--name", "gw", "--url", "http://127.0.0.1:9/", "--header-file", str(empty)
    )
    assert message == f"--header-file: {empty} holds no header"

    message, _ = refusal(
        "create_destination", "--name", "gw", "--url", "http://127.0.0.1:9/", "--header-file", str(tmp_path / "missing")
    )
    assert message == f"--header-file: cannot read {tmp_path / 'missing'}: No such file or directory"

    stdin_holding(monkeypatch, b"authorization: Bearer other-token-5678\n")
    message, _ = refusal(
        "create_destination",
        "--name",
        "gw",
        "--url",
        "http://127.0.0.1:9/",
        "--header",
        f"Authorization: {GATEWAY_TOKEN}",
        "--header-file",
        "-",
    )
    assert message == (
        "the header “authorization” is given by --header and by --header-file: names are case-insensitive"
    )

    eleven = tmp_path / "eleven"
    eleven.write_text("".join(f"X-Header-{n}: value-{n:04}\n" for n in range(11)))
    message, _ = refusal(
        "create_destination", "--name", "gw", "--url", "http://127.0.0.1:9/", "--header-file", str(eleven)
    )
    assert message == "--header-file: a destination has at most 10 custom headers"
    assert not Destination.objects.exists()


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        (
            "create_destination",
            ["--name", "gw", "--url", "http://127.0.0.1:9/", "--header-file", "{first}", "--header-file", "{second}"],
            "--header-file is given twice: it reads one file",
        ),
        (
            "create_source",
            ["--provider", "stripe", "--name", "x", "--secret-file", "{first}", "--secret-file", "{second}"],
            "--secret-file is given twice: it reads one file",
        ),
        (
            "create_source",
            ["--provider", "stripe", "--name", "x", "--secret", SOURCE_SECRET, "--secret", SOURCE_SECRET + "2"],
            "--secret is given twice: it takes one value",
        ),
    ],
    ids=["header-file", "secret-file", "secret"],
)
def test_a_secret_flag_given_twice_is_a_usage_error_not_the_last_one_silently(
    organization, tmp_path, command, args, message
):
    # argparse keeps the last of a repeated flag: a first --header-file (a gateway's token, say) was
    # dropped without a word, and the destination created without it.
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text(f"Authorization: {GATEWAY_TOKEN}\n")
    second.write_text(f"X-Api-Key: {API_KEY_VALUE}\n")
    if command == "create_source":
        first.write_text(SOURCE_SECRET)
        second.write_text(SOURCE_SECRET + "2")
    given = [arg.format(first=first, second=second) for arg in args]
    with pytest.raises(CommandError) as refused:
        call_command(command, "--org", "acme", *given, stdout=io.StringIO(), stderr=io.StringIO())
    assert message in str(refused.value)
    assert SOURCE_SECRET not in str(refused.value) and GATEWAY_TOKEN not in str(refused.value)
    assert not Destination.objects.exists() and not Source.objects.exists()


# --- real processes ------------------------------------------------------------------------------


def manage_env() -> dict[str, str]:
    """The environment of a manage.py process on the test database."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url}


CREATE_SOURCE = [sys.executable, "manage.py", "create_source", "--org", "acme", "--provider", "stripe"]


def test_a_process_reads_the_secret_piped_to_it(client, transactional_db, organization):
    # What `printf '%s' "$SECRET" | python manage.py create_source … --secret-file -` does: the
    # secret is in no process's arguments.
    command = [*CREATE_SOURCE, "--name", "piped", "--secret-file", "-", "--json"]
    ran = subprocess.run(
        command, cwd=ROOT, env=manage_env(), input=SOURCE_SECRET, capture_output=True, text=True, timeout=120
    )

    assert ran.returncode == 0, ran.stderr
    created = json.loads(ran.stdout)
    assert set(created) == {"id", "token", "ingest_url", "allowed_networks"}
    assert SOURCE_SECRET not in ran.stdout + ran.stderr and "warning" not in ran.stderr
    assert Source.objects.get(pk=created["id"]).secret == SOURCE_SECRET
    assert_verifies_signed_requests(client, created["id"], SOURCE_SECRET)

    # The old flag: a warning on stderr, and stdout still one JSON object.
    command = [*CREATE_SOURCE, "--name", "flag", "--secret", SOURCE_SECRET + "x", "--json"]
    ran = subprocess.run(command, cwd=ROOT, env=manage_env(), capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert set(json.loads(ran.stdout)) == {"id", "token", "ingest_url", "allowed_networks"}
    assert "warning: --secret on a command line can be read by other users" in ran.stderr
    assert SOURCE_SECRET not in ran.stderr


def type_at_terminal(command: list[str], lines: list[str]) -> tuple[int, bytes, bytes, bytes]:
    """Runs ``command`` with a terminal as its standard input and types ``lines`` at its prompts, each
    once the prompt is shown (echo is off by then: typed earlier, the terminal would echo it whatever
    the program does next). Returns the exit status, stdout, stderr, and what the terminal echoed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=manage_env(),
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no controlling terminal but this one: nothing reaches the runner's
    )
    os.close(terminal)
    prompts = b""
    try:
        deadline = time.monotonic() + 120
        for typed, line in enumerate(lines):
            while prompts.count(b"(not echoed") <= typed and time.monotonic() < deadline:
                if select.select([process.stderr], [], [], 1)[0]:
                    chunk = os.read(process.stderr.fileno(), 1024)
                    if not chunk:
                        break
                    prompts += chunk
            assert prompts.count(b"(not echoed") > typed, prompts
            os.write(controller, line.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=120)
        echoed = b""
        while select.select([controller], [], [], 0)[0]:
            try:
                chunk = os.read(controller, 1024)
            except OSError:  # the process is gone and the terminal with it
                break
            if not chunk:
                break
            echoed += chunk
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(controller)
    return process.returncode, stdout, prompts + stderr, echoed


def test_a_process_at_a_terminal_asks_for_the_secret_without_echoing_it(client, transactional_db, organization):
    # Standard input is a terminal (an operator typing, or `heroku run` attached to one): the
    # secret is asked for, and what is typed is not echoed to the screen.
    command = [*CREATE_SOURCE, "--name", "typed", "--secret-file", "-", "--json"]
    status, stdout, stderr, echoed = type_at_terminal(command, [SOURCE_SECRET])

    assert status == 0, stderr
    assert b"--secret-file (not echoed): " in stderr
    assert SOURCE_SECRET.encode() not in echoed + stdout + stderr
    created = json.loads(stdout)
    assert Source.objects.get(pk=created["id"]).secret == SOURCE_SECRET
    assert_verifies_signed_requests(client, created["id"], SOURCE_SECRET)


def test_a_process_at_a_terminal_asks_for_headers_line_by_line_without_echoing_them(transactional_db, organization):
    command = [sys.executable, "manage.py", "create_destination", "--org", "acme", "--name", "gw", "--url"]
    command += ["http://127.0.0.1:9/gw", "--header-file", "-", "--json"]
    typed = [f"Authorization: {GATEWAY_TOKEN}", f"X-Api-Key: {API_KEY_VALUE}", ""]
    status, stdout, stderr, echoed = type_at_terminal(command, typed)

    assert status == 0, stderr
    assert b"--header-file, line 3 (not echoed; an empty line ends): " in stderr
    for value in (GATEWAY_TOKEN, API_KEY_VALUE):
        assert value.encode() not in echoed + stdout + stderr
    assert [header["name"] for header in json.loads(stdout)["custom_headers"]] == ["Authorization", "X-Api-Key"]
    assert Destination.objects.get().custom_header_values() == {
        "Authorization": GATEWAY_TOKEN,
        "X-Api-Key": API_KEY_VALUE,
    }
