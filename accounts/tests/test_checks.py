"""A server without EMAIL_URL is warned about at start-up: sign-in links would go to the log."""

from accounts.checks import CONSOLE_EMAIL, email_is_sent_in_server_mode


def test_a_server_writing_sign_in_mail_to_the_log_is_warned_about(settings):
    settings.EMBEDDED = False
    settings.EMAIL_BACKEND = CONSOLE_EMAIL
    assert [warning.id for warning in email_is_sent_in_server_mode(None)] == ["hookline.W001"]


def test_mail_that_is_sent_or_a_laptop_run_is_not_warned_about(settings):
    settings.EMBEDDED = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    assert email_is_sent_in_server_mode(None) == []
    settings.EMBEDDED = True
    settings.EMAIL_BACKEND = CONSOLE_EMAIL
    assert email_is_sent_in_server_mode(None) == []
