"""Run the host's ingest writer process (started by config/gunicorn.conf.py; see services/ingest_writer_process)."""

from django.core.management.base import BaseCommand

from webhooks.services.ingest_writer_process import run_writer_process

from ._base import WHOLE_NUMBER


class Command(BaseCommand):
    help = "Commit the ingest rows of this host's web workers together, serving them on a Unix socket."

    def add_arguments(self, parser):
        parser.add_argument("--socket", required=True, help="path of the Unix socket to listen on")
        parser.add_argument(
            "--parent-pid", type=WHOLE_NUMBER, default=None, help="exit when this process (gunicorn's master) has ended"
        )

    def handle(self, *args, **options):
        run_writer_process(options["socket"], options["parent_pid"])
