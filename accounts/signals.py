"""Signals accounts sends for things Django's auth signals do not cover.

accounts never imports organizations (see docs); organizations connects receivers that audit these.
"""

from django.dispatch import Signal

# A user ended all of their sessions. Arguments: user, request.
sessions_revoked = Signal()

# An account was deactivated (User.save: its sessions end there). Arguments: user.
account_deactivated = Signal()
