from django.core.management.base import CommandError

from webhooks.models import Source
from webhooks.services.sample_sender import send_test_webhook

from ._base import WHOLE_NUMBER, OperatorCommand, find_given


class Command(OperatorCommand):
    help = "Sign a sample payload as the source's provider would and post it to the source's ingest URL."

    def add_command_arguments(self, parser):
        parser.add_argument("--source", required=True, type=WHOLE_NUMBER, help="source id")
        parser.add_argument("--fixture", help="sample payload name (default: the provider's first)")
        parser.add_argument("--url", help="post here instead of PUBLIC_BASE_URL/in/<token>/")
        parser.add_argument(
            "--fresh-id", action="store_true", help="give the sample a new event id so it is not a duplicate"
        )

    def run(self, **options):
        source = find_given(Source.objects.all(), options["source"])
        response = send_test_webhook(
            source=source, fixture=options.get("fixture"), url=options.get("url"), fresh_id=options["fresh_id"]
        )
        self.accepted = response.status is not None and 200 <= response.status < 300
        result = {"status": response.status, "body": response.body, "error": response.error}
        text = f"HTTP {response.status}: {response.body}" if response.status else f"Failed: {response.error}"
        return result, text

    def handle(self, *args, **options):
        super().handle(*args, **options)
        if not self.accepted:
            # The answer is printed above; the exit status tells a script that it was not a 2xx.
            raise CommandError("the test webhook was not accepted", returncode=1)
