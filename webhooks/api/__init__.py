"""The tenant REST API under /api/v1/, authenticated by organization API keys."""
