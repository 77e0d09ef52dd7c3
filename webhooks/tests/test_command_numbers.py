"""Operator commands take numbers in the digits 0-9 only, as the API, the dashboard and the admin take
ids: Python's int() read `send_test_webhook --source ٣` as source 3."""

import argparse
import io

import pytest
from django.core.management import CommandError, call_command, get_commands, load_command_class

from webhooks.management.commands._base import WHOLE_NUMBER, NumberArgument
from webhooks.models import Destination

from .factories import make_source

pytestmark = pytest.mark.django_db

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
DESTINATION = ("create_destination", "--org", "acme", "--name", "d", "--url", "http://127.0.0.1:9/d")


@pytest.mark.parametrize(
    "args, value, flag, kind",
    [
        (("send_test_webhook", "--source"), "SOURCE", "--source", "whole number"),
        (("show_event", "evt_1", "--org", "acme", "--source"), "SOURCE", "--source", "whole number"),
        ((*DESTINATION, "--source"), "SOURCE", "--source", "whole number"),
        ((*DESTINATION, "--max-attempts"), "3", "--max-attempts", "whole number"),
        ((*DESTINATION, "--max-retry-age-seconds"), "3600", "--max-retry-age-seconds", "whole number"),
        ((*DESTINATION, "--max-concurrency"), "5", "--max-concurrency", "whole number"),
        ((*DESTINATION, "--rate-limit-per-second"), "5", "--rate-limit-per-second", "whole number"),
        ((*DESTINATION, "--timeout"), "5.5", "--timeout/--timeout-seconds", "number"),
        (("list_events", "--org", "acme", "--limit"), "3", "--limit", "whole number from 1 to 1000"),
        (("rotate_encryption_keys", "--verify", "--limit"), "3", "--limit", "whole number"),
        (("rotate_encryption_keys", "--verify", "--batch-size"), "3", "--batch-size", "whole number"),
        (("purge_audit_log", "--dry-run", "--older-than-days"), "30", "--older-than-days", "whole number"),
        (("run_ingest_writer", "--socket", "/nonexistent/w.sock", "--parent-pid"), "1", "--parent-pid", "whole number"),
    ],
)
@pytest.mark.parametrize("digits", [ARABIC_INDIC, FULLWIDTH], ids=["arabic-indic", "fullwidth"])
def test_a_number_in_other_digits_is_a_usage_error_naming_the_flag(organization, args, value, flag, kind, digits):
    source = make_source(organization)
    written = (str(source.pk) if value == "SOURCE" else value).translate(digits)
    out = io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command(*args, written, stdout=out)
    assert str(refused.value) == f"Error: argument {flag}: must be a {kind} written in the digits 0-9, not '{written}'"
    assert out.getvalue() == ""  # refused before anything ran: nothing sent, listed or created
    assert not Destination.objects.exists()


def test_every_number_a_command_takes_is_read_by_the_shared_type():
    # A new flag declared with type=int or type=float would take "٣" again.
    for name, app in get_commands().items():
        if app not in ("webhooks", "organizations"):
            continue
        parser = load_command_class(app, name).create_parser("manage.py", name)
        for action in parser._actions:
            if "--verbosity" in action.option_strings:
                continue  # Django's own, a choice of 0 to 3
            assert action.type not in (int, float), f"{name} {action.option_strings}: type={action.type.__name__}"


def test_numbers_in_ascii_digits_are_read_as_before():
    assert WHOLE_NUMBER("42") == 42 and WHOLE_NUMBER("-1") == -1 and WHOLE_NUMBER(" 7 ") == 7
    assert NumberArgument(fraction=True)("2.5") == 2.5 and NumberArgument(fraction=True)("15") == 15.0
    assert NumberArgument(bounds=(1, 1000))("1000") == 1000
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a whole number, not 'many'$"):
        WHOLE_NUMBER("many")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a whole number, not '1_000'$"):
        WHOLE_NUMBER("1_000")
    # Longer than an id can be: refused here, not a traceback from the database's bigint.
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a whole number, not '9{19}'$"):
        WHOLE_NUMBER("9" * 19)
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a number, not 'nan'$"):
        NumberArgument(fraction=True)("nan")
