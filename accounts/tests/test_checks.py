"""A server without EMAIL_URL is warned about where a deploy is looked at (`check`, and `migrate` in
the release phase): sign-in links would go to the log. Operator commands do not repeat it."""

import io
import re
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

from accounts.checks import CONSOLE_EMAIL, email_is_sent_in_server_mode

README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_server_writing_sign_in_mail_to_the_log_is_warned_about(settings):
    settings.EMBEDDED = False
    settings.EMAIL_BACKEND = CONSOLE_EMAIL
    assert [warning.id for warning in email_is_sent_in_server_mode(None)] == ["hookline.W001"]


def test_mail_that_is_sent_or_a_laptop_run_is_not_warned_about(settings):
    settings.EMBEDDED = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    assert email_is_sent_in_server_mode(None) == []
    settings.EMBEDDED = True
    settings.EMAIL_BACKEND = CONSOLE_EMAIL
    assert email_is_sent_in_server_mode(None) == []


def _output(name: str, *args: str) -> str:
    """What ``manage.py <name> <args>`` prints. As run_from_argv does, without closing the test's
    connection (call_command would skip the system checks)."""
    command = load_command_class(get_commands()[name], name)
    options = vars(command.create_parser("manage.py", name).parse_args(args))
    out, err = io.StringIO(), io.StringIO()
    command.execute(*options.pop("args", ()), **options, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


@pytest.fixture
def server_without_email(settings):
    settings.EMBEDDED = False
    settings.EMAIL_BACKEND = CONSOLE_EMAIL


@pytest.mark.django_db
def test_check_and_migrate_warn(server_without_email):
    assert "hookline.W001" in _output("check")
    assert "hookline.W001" in _output("migrate", "--verbosity", "0")


@pytest.mark.django_db
def test_operator_commands_do_not_repeat_the_warning(server_without_email, organization):
    assert "hookline.W001" not in _output("list_events", "--org", organization.slug)
    assert "hookline.W001" not in _output("verify_audit_log")
    assert "hookline.W001" not in _output("install_periodic_tasks")


def test_every_operator_command_in_the_readme_skips_the_system_checks():
    section = README.read_text().split("## Operator commands", 1)[1].split("\n#", 1)[0]
    names = re.findall(r"^\| `(\w+)", section, flags=re.MULTILINE)
    assert len(names) >= 14
    apps = get_commands()
    for name in names:
        assert load_command_class(apps[name], name).requires_system_checks == [], name
