"""The tenant dashboard: thin views over webhooks.selectors (reads) and webhooks.services (writes)."""
