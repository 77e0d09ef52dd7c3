"""Shared shape of the operator commands: human output, or one JSON object with --json; and how
they take secrets without a command line."""

import argparse
import getpass
import json
import re
import sys

from django.apps import apps
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import models

from organizations.services import audit_system_actor, command_actor_label
from webhooks.selectors import parse_event_id
from webhooks.services.text import terminal_text


class OperatorCommand(BaseCommand):
    # Django's system checks are for a deploy: `check` and the release phase's `migrate` run them and
    # warn (hookline.W001: no EMAIL_URL). Repeated before each list_events, a warning only teaches
    # operators to skip warnings; these commands run after a release has run the checks.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        self.add_command_arguments(parser)

    def add_command_arguments(self, parser):
        pass

    def handle(self, *args, **options):
        try:
            # Audit entries written by the services name this command, not just "system".
            with audit_system_actor(command_actor_label(self.__module__.rsplit(".", 1)[-1])):
                result, text = self.run(**options)
        except ObjectDoesNotExist as exc:
            # A lookup not made with find_given (one inside a service): "no such delivery" at least.
            self._fail(options, f"no such {_model_name(exc)}")
        except ValidationError as exc:
            self._fail(options, "; ".join(exc.messages))
        except (ValueError, LookupError) as exc:
            self._fail(options, str(exc))
        if options["json"]:
            self.stdout.write(json.dumps(result, default=str))
        else:
            # Sender and receiver text (event types, bodies, answers) is part of it: printed escaped.
            self.stdout.write(terminal_text(text))

    def run(self, **options) -> tuple[dict, str]:
        raise NotImplementedError

    def secret_from_options(self, options, flag: str) -> str | None:
        """The secret of ``--<flag>`` or ``--<flag>-file`` (see add_secret_arguments), or None when
        neither is given. One line ending is removed from what a file holds; nothing else is."""
        given, path = options.get(flag.replace("-", "_")), options.get(f"{flag}_file".replace("-", "_"))
        if given is not None and path is not None:
            raise SecretInputError(f"give the secret with --{flag} or with --{flag}-file, not both")
        if path is not None:
            secret = remove_one_line_ending(read_secret_input(path, flag=f"--{flag}-file"))
            if not secret.strip():
                raise SecretInputError(f"--{flag}-file: {shown_path(path)} holds no secret (it is empty or blank)")
            return secret
        if given is None:
            return None
        self.warn_secret_on_command_line(f"--{flag}")
        if not given.strip():
            # A variable that was not set ("--secret $SECRET") should not become "no secret".
            raise SecretInputError(f"--{flag} is empty")
        return given

    def warn_secret_on_command_line(self, flag: str) -> None:
        # On stderr, also with --json: stdout stays one JSON object. Never the value itself.
        self.stderr.write(
            f"warning: {flag} on a command line can be read by other users of this machine (ps) and is kept in "
            f"shell history; prefer {flag}-file PATH, or {flag}-file - to read standard input",
            style_func=self.style.WARNING,
        )

    def _fail(self, options, message: str):
        # With --json a script still reads one JSON object, and the exit status says it failed.
        if options["json"]:
            self.stdout.write(json.dumps({"error": message}))
        raise CommandError(message)


# A secret given as an argument can be read by every user of the machine (ps, /proc/<pid>/cmdline)
# and stays in shell history. Each secret-bearing flag --X therefore has a --X-file PATH twin, with
# "-" for standard input, read here; the flag itself is kept for scripts that use it.
STDIN = "-"
# Far above any secret or set of custom headers; a wrong path such as /dev/zero ends quickly.
MAX_SECRET_INPUT_BYTES = 64 * 1024


class SecretInputError(ValueError):
    """A secret file or standard input that cannot be used (the message never holds what was read)."""


class GivenOnce(argparse.Action):
    """A flag that takes one value: given again, a usage error rather than argparse's silent "the last
    one wins", which for --header-file dropped the first file's headers (a receiver's credentials)."""

    takes = "it takes one value"

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} is given twice: {self.takes}")
        setattr(namespace, self.dest, values)


class FileGivenOnce(GivenOnce):
    takes = "it reads one file"


# Python's int() and float() read any script's digits ("٣", a fullwidth "３" as 3): `send_test_webhook
# --source ٣` posted to source 3. The API, the dashboard and the admin take ids in the digits 0-9 only
# (README, *Ids*); the commands take every number so, ids, counts and seconds alike. [0-9], not \d,
# which matches those other digits too. At most 18 digits: below 2**63, so an id never overflows its
# bigint column (a traceback), and int() never refuses one as too long.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,18}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})")


class NumberArgument:
    """The argparse ``type`` of every number a command takes: written in the digits 0-9, whole
    unless ``fraction``, and within ``bounds`` (lowest, highest) when given. Anything else is
    argparse's usage error (exit status 2) naming the flag: "argument --source: must be a whole
    number written in the digits 0-9, not '٣'"."""

    def __init__(self, *, fraction: bool = False, bounds: tuple[int, int] | None = None):
        self.fraction, self.bounds = fraction, bounds

    def __call__(self, text: str) -> int | float:
        spelled = text.strip()
        if (_NUMBER if self.fraction else _WHOLE_NUMBER).fullmatch(spelled):
            number = float(spelled) if self.fraction else int(spelled)
            if self.bounds is None or self.bounds[0] <= number <= self.bounds[1]:
                return number
        kind = "number" if self.fraction else "whole number"
        within = f" from {self.bounds[0]} to {self.bounds[1]}" if self.bounds else ""
        # Said only when it is the reason: "must be a whole number, not '٣'" would read as nonsense.
        digits = " written in the digits 0-9" if not text.isascii() else ""
        raise argparse.ArgumentTypeError(f"must be a {kind}{within}{digits}, not '{text}'")


# A whole number in ASCII digits: ids, counts, seconds.
WHOLE_NUMBER = NumberArgument()


def add_secret_arguments(parser, flag: str, *, help: str, file_help: str, **flag_options) -> None:
    """``--<flag> VALUE`` and ``--<flag>-file PATH``; read them with OperatorCommand.secret_from_options."""
    flag_options.setdefault("action", GivenOnce)
    parser.add_argument(
        f"--{flag}",
        help=f"{help}; other users of the machine can read it (ps) and it stays in shell history: prefer --{flag}-file",
        **flag_options,
    )
    parser.add_argument(
        f"--{flag}-file",
        action=FileGivenOnce,
        metavar="PATH",
        help=f"{file_help}; - reads standard input (at a terminal it asks, without echo)",
    )


def shown_path(path: str) -> str:
    return "standard input" if path == STDIN else path


def remove_one_line_ending(text: str) -> str:
    """What `echo` or an editor adds at the end (LF, or CRLF from a Windows editor), and only that."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def read_secret_input(path: str, *, flag: str, several_lines: bool = False) -> str:
    """The text of the file at ``path``, or of standard input for "-"; SecretInputError naming the
    flag and the path when it cannot be read. At a terminal, standard input is asked for without
    echo: one line, or with ``several_lines`` lines up to an empty one."""
    if path == STDIN:
        stream = sys.stdin
        if stream is None or stream.closed:
            raise SecretInputError(f"{flag}: standard input is closed")
        if stream.isatty():
            return _ask_without_echo(flag, several_lines=several_lines)
        raw = getattr(stream, "buffer", stream).read(MAX_SECRET_INPUT_BYTES + 1)
    else:
        try:
            with open(path, "rb") as file:
                raw = file.read(MAX_SECRET_INPUT_BYTES + 1)
        except OSError as exc:
            raise SecretInputError(f"{flag}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_SECRET_INPUT_BYTES:
        raise SecretInputError(f"{flag}: {shown_path(path)} is larger than {MAX_SECRET_INPUT_BYTES // 1024} KiB")
    if isinstance(raw, str):  # a text stream without a byte buffer
        return raw
    try:
        # utf-8-sig: the byte-order mark some Windows editors write first is not part of the secret.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SecretInputError(f"{flag}: {shown_path(path)} is not UTF-8 text") from None


def _ask_without_echo(flag: str, *, several_lines: bool) -> str:
    lines = []
    try:
        if not several_lines:
            return getpass.getpass(f"{flag} (not echoed): ")
        while line := getpass.getpass(f"{flag}, line {len(lines) + 1} (not echoed; an empty line ends): "):
            lines.append(line)
    except EOFError:  # Ctrl-D: what was typed so far
        pass
    return "\n".join(lines)


class NoSuchObject(LookupError):
    """A lookup argument (an organization's slug, a source's or a delivery's id) that names nothing."""


def find_given(queryset, given, *, field: str = "pk"):
    """The object of ``queryset`` whose ``field`` is ``given``, or NoSuchObject naming the value given
    (`no such organization "acme-typo"`): with several lookup arguments, the operator sees which one.
    A UUID field's value that is not a UUID in ASCII names nothing either."""
    model = queryset.model
    value = given
    if isinstance(model._meta.pk if field == "pk" else model._meta.get_field(field), models.UUIDField):
        # Read as the API and the admin read such an id (parse_event_id): `retry_delivery --id 123` said
        # Django's "“123” is not a valid UUID" where a well-formed unknown id says "no such delivery",
        # and uuid.UUID, through int(), took the id written in fullwidth digits as the delivery's own.
        value = parse_event_id(str(given))
    try:
        if value is None:
            raise model.DoesNotExist
        return queryset.get(**{field: value})
    except model.DoesNotExist:
        raise NoSuchObject(f'no such {model._meta.verbose_name} "{given}"') from None


def parse_options(pairs: list[str]) -> dict[str, str]:
    """k=v pairs from --option flags."""
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f'--option takes name=value, got "{pair}"')  # reported as JSON with --json
        parsed[name.strip()] = value
    return parsed


def _model_name(exc: ObjectDoesNotExist) -> str:
    for model in apps.get_models():
        if type(exc) is model.DoesNotExist:
            return str(model._meta.verbose_name)
    return "object"
