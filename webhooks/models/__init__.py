from .bulk_retry import BulkRetry
from .delivery import Delivery
from .delivery_attempt import DeliveryAttempt
from .destination import Destination
from .event_hour import EventHour
from .process_mark import ProcessMark
from .purged_event_key import PurgedEventKey
from .signature_nonce import SignatureNonce
from .source import Source
from .subscription import Subscription
from .webhook_event import WebhookEvent

__all__ = [
    "BulkRetry",
    "Delivery",
    "DeliveryAttempt",
    "Destination",
    "EventHour",
    "ProcessMark",
    "PurgedEventKey",
    "SignatureNonce",
    "Source",
    "Subscription",
    "WebhookEvent",
]
