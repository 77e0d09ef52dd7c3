"""What each audit action means, in a tenant's words: one mapping for the audit log's rows and for
its Action filter, so that the filter offers the words the rows show (the code stays beside them
in a row, for reference and for the API)."""

from __future__ import annotations

AUDIT_ACTION_LABELS = {
    "organization.created": "created the organization",
    "user.signed_in": "signed in",
    "user.signed_out": "signed out",
    "user.signed_out_everywhere": "signed out on every device",
    "invitation.created": "invited",
    "invitation.revoked": "withdrew the invitation of",
    "invitation.accepted": "accepted the invitation",
    "member.added": "joined as a member",
    "member.removed": "removed from the team",
    "member.role_changed": "changed the role of",
    "source.created": "created the source",
    "source.updated": "changed the settings of the source",
    "source.changed": "changed the source",
    "source.deletion_requested": "started deleting the source",
    "source.deleted": "deleted the source",
    "source.paused": "stopped receiving on",
    "source.resumed": "started receiving again on",
    "source.secret_rotated": "set a new signing secret on the source",
    "source.test_sent": "sent a test event to",
    "destination.created": "created the destination",
    "destination.updated": "changed the destination",
    "destination.deletion_requested": "started deleting the destination",
    "destination.deleted": "deleted the destination",
    "destination.paused": "paused the destination",
    "destination.resumed": "resumed the destination",
    "destination.waiting_sent_now": "sent the waiting retries now of",
    "destination.held_deliveries_given_up": "marked dead the deliveries held too long of the paused destination",
    "destination.secret_rotated": "set a new signing secret on the destination",
    "subscription.created": "linked a source to the destination",
    "delivery.retried": "retried the delivery",
    "deliveries.bulk_retry_requested": "retried the failed deliveries of",
    "event.replayed": "replayed the event",
    "retention.purged": "deleted events past the retention period",
    "api_key.created": "created the API key",
    "api_key.revoked": "revoked the API key",
    "organization.deletion_requested": "started deleting the organization",
    "organization.suspended": "suspended the organization",
    "organization.reactivated": "made the organization active again",
    # The target (the organization) follows the words, in its own column: "… of the suspended organization Acme".
    "organization.held_deliveries_given_up": "marked dead the deliveries held too long of the suspended organization",
    "admin.accounts.user.email_changed": "changed the sign-in email of",
}


def audit_action_label(action: str) -> str:
    """An action code in words; a code without words of its own still reads as words."""
    if action in AUDIT_ACTION_LABELS:
        return AUDIT_ACTION_LABELS[action]
    if action.startswith("admin."):
        return "changed by the platform operator"
    return action.replace("_", " ").replace(".", ": ")
