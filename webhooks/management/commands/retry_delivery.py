from webhooks.models import Delivery
from webhooks.services.delivery import delivery_retry

from ._base import OperatorCommand


class Command(OperatorCommand):
    help = "Retry a failed or dead delivery now."

    def add_command_arguments(self, parser):
        parser.add_argument("--id", required=True, help="delivery id")

    def run(self, **options):
        delivery = Delivery.objects.select_related("destination").get(pk=options["id"])
        delivery = delivery_retry(delivery=delivery)
        destination = delivery.destination
        waiting_for, text = None, f"Delivery {delivery.pk} queued for another attempt."
        if not destination.is_active:
            waiting_for = "destination_inactive"
            text += " Its destination is inactive: it is sent once the destination is active again."
        elif destination.paused_at is not None:
            waiting_for = "destination_paused"
            text += " Its destination is paused: it is sent once the destination is resumed."
        return {"id": str(delivery.pk), "status": delivery.status, "waiting_for": waiting_for}, text
