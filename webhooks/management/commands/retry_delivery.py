from webhooks.models import Delivery
from webhooks.services.delivery import delivery_retry
from webhooks.services.delivery_waits import DELIVERY_HOLDS, delivery_hold

from ._base import OperatorCommand, find_given


class Command(OperatorCommand):
    help = "Retry a failed or dead delivery now."

    def add_command_arguments(self, parser):
        parser.add_argument("--id", required=True, help="delivery id")

    def run(self, **options):
        delivery = find_given(Delivery.objects.select_related("destination__organization"), options["id"])
        delivery = delivery_retry(delivery=delivery)
        # delivery_retry refuses an inactive destination; a paused one, or a suspended organization's, waits.
        waiting_for = delivery_hold(destination=delivery.destination)
        text = f"Delivery {delivery.pk} queued for another attempt."
        if waiting_for:
            text += f" {DELIVERY_HOLDS[waiting_for]}."
        return {"id": str(delivery.pk), "status": delivery.status, "waiting_for": waiting_for}, text
