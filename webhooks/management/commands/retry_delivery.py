from webhooks.models import Delivery
from webhooks.services.delivery import delivery_retry

from ._base import OperatorCommand


class Command(OperatorCommand):
    help = "Retry a failed or dead delivery now."

    def add_command_arguments(self, parser):
        parser.add_argument("--id", required=True, help="delivery id")

    def run(self, **options):
        delivery = Delivery.objects.get(pk=options["id"])
        delivery = delivery_retry(delivery=delivery)
        return {
            "id": str(delivery.pk),
            "status": delivery.status,
        }, f"Delivery {delivery.pk} queued for another attempt."
