from django.core.management.base import BaseCommand

from webhooks.services.provider_docs import DOCS_PATH, render_provider_docs


class Command(BaseCommand):
    help = "Write docs/providers.md from the provider registry."

    def handle(self, *args, **options):
        DOCS_PATH.parent.mkdir(exist_ok=True)
        DOCS_PATH.write_text(render_provider_docs())
        self.stdout.write(f"Wrote {DOCS_PATH}")
