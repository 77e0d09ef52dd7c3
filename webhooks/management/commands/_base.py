"""Shared shape of the operator commands: human output, or one JSON object with --json."""

import json

from django.apps import apps
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.management.base import BaseCommand, CommandError


class OperatorCommand(BaseCommand):
    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        self.add_command_arguments(parser)

    def add_command_arguments(self, parser):
        pass

    def handle(self, *args, **options):
        try:
            result, text = self.run(**options)
        except ObjectDoesNotExist as exc:
            # "Delivery matching query does not exist." → "no such delivery"
            self._fail(options, f"no such {_model_name(exc)}")
        except ValidationError as exc:
            self._fail(options, "; ".join(exc.messages))
        except (ValueError, LookupError) as exc:
            self._fail(options, str(exc))
        if options["json"]:
            self.stdout.write(json.dumps(result, default=str))
        else:
            self.stdout.write(text)

    def run(self, **options) -> tuple[dict, str]:
        raise NotImplementedError

    def _fail(self, options, message: str):
        # With --json a script still reads one JSON object, and the exit status says it failed.
        if options["json"]:
            self.stdout.write(json.dumps({"error": message}))
        raise CommandError(message)


def parse_options(pairs: list[str]) -> dict[str, str]:
    """k=v pairs from --option flags."""
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--option takes name=value, got '{pair}'")  # reported as JSON with --json
        parsed[name.strip()] = value
    return parsed


def _model_name(exc: ObjectDoesNotExist) -> str:
    for model in apps.get_models():
        if type(exc) is model.DoesNotExist:
            return str(model._meta.verbose_name)
    return "object"
