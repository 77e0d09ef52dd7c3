"""Sending the product's emails: a plain-text body and a simple HTML alternative from templates/emails/."""

from __future__ import annotations

from typing import Any

from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string


def send_templated_email(*, to: str, subject: str, template: str, context: dict[str, Any]) -> None:
    """Render ``emails/<template>.txt`` and ``.html`` with ``context`` and send them to one address."""
    context = {"subject": subject, **context}
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string(f"emails/{template}.txt", context),
        to=[to],
    )
    message.attach_alternative(render_to_string(f"emails/{template}.html", context), "text/html")
    message.send()
