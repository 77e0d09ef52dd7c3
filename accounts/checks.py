"""Start-up checks for what sign-in depends on."""

from django.conf import settings
from django.core.checks import Warning, register

CONSOLE_EMAIL = "django.core.mail.backends.console.EmailBackend"


@register()
def email_is_sent_in_server_mode(app_configs, **kwargs):
    """Without EMAIL_URL, sign-in links and codes go to the process's output, where anyone who
    reads the logs could sign in with them: fine on a laptop, not on a server."""
    if settings.EMBEDDED or settings.EMAIL_BACKEND != CONSOLE_EMAIL:
        return []
    return [
        Warning(
            "EMAIL_URL is not set: sign-in links, codes and invitations are written to the log "
            "instead of being mailed, and anyone who reads the log can use them.",
            hint="Set EMAIL_URL (for example smtp+tls://user:password@smtp.example.com:587).",
            id="hookline.W001",
        )
    ]
