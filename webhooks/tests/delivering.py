"""One attempt of one delivery, made now by a test, claimed through the dispatcher's own claim.

Production sends only what dispatch_due_deliveries claims, within each destination's
max_concurrency and rate limit and its organization's cap. A test that wants one delivery
attempted now claims it the same way (not by a claim of its own that would skip those caps), so
that what it checks of sending and recording is what production does.
"""

from __future__ import annotations

from webhooks.models import Delivery
from webhooks.services import delivery as delivery_service

# More than a test ever has due at once: the claim must take every due delivery it may, to tell
# whether the one asked for was among them.
CLAIM_LIMIT = 50


def claim_now(delivery_id) -> Delivery | None:
    """Claim the delivery ``delivery_id`` as a dispatcher does, or None when that claim does not
    take it now (not due, claimed already, its destination paused or at its cap, its organization
    suspended or at its cap; one of a source being deleted is dead-lettered instead).

    The test must have no other delivery due: claimed along with this one, it would be left in
    flight, so that fails the test rather than leave it there unseen."""
    claimed = delivery_service.claim_due_deliveries(CLAIM_LIMIT)
    others = [str(delivery.pk) for delivery in claimed if str(delivery.pk) != str(delivery_id)]
    assert not others, f"deliveries claimed along with {delivery_id}, the test had them due too: {others}"
    return claimed[0] if claimed else None


def deliver_now(delivery_id) -> Delivery | None:
    """One attempt of the due delivery ``delivery_id``, sent and recorded as the dispatcher does
    (None when claim_now does not take it)."""
    delivery = claim_now(delivery_id)
    if delivery is None:
        return None
    return delivery_service.record_results([(delivery, delivery_service.send(delivery))])[0]


def deliver_all_due() -> list[Delivery]:
    """One attempt of every delivery due now, claimed in turns as the dispatcher claims them (a
    destination's and an organization's caps hold back the rest of a turn until the next)."""
    delivered = []
    while claimed := delivery_service.claim_due_deliveries(CLAIM_LIMIT):
        delivered += delivery_service.record_results(
            [(delivery, delivery_service.send(delivery)) for delivery in claimed]
        )
    return delivered
