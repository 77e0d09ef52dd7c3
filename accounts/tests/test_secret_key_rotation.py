"""Changing SECRET_KEY with the old one in SECRET_KEY_FALLBACKS keeps people signed in."""

import pytest
from django.core import mail

from .test_sign_in import CODE, TEAM, ask, code_in, link_path, signed_in_user_id

pytestmark = pytest.mark.django_db

OLD_KEY = "the-key-everyone-signed-in-under-" + "x" * 20
NEW_KEY = "the-key-rolled-out-today-" + "y" * 30


def test_a_session_survives_a_new_secret_key_while_the_old_one_is_a_fallback(client, owner, settings):
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = OLD_KEY, []
    ask(client, owner.email)
    client.get(link_path(mail.outbox[-1]))
    assert signed_in_user_id(client) == str(owner.pk)
    assert client.get(TEAM).status_code == 200

    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    assert client.get(TEAM).status_code == 200  # still signed in; the session moves to the new key
    settings.SECRET_KEY_FALLBACKS = []
    assert client.get(TEAM).status_code == 200  # used while the fallback was there: kept


def test_without_the_fallback_a_new_secret_key_signs_everyone_out(client, owner, settings):
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = OLD_KEY, []
    ask(client, owner.email)
    client.get(link_path(mail.outbox[-1]))
    assert client.get(TEAM).status_code == 200

    settings.SECRET_KEY = NEW_KEY
    response = client.get(TEAM)
    assert response.status_code == 302 and "/accounts/sign-in/" in response["Location"]


def test_a_code_emailed_under_the_old_key_still_signs_in_while_it_is_a_fallback(client, owner, settings):
    # The link in the same email does (its token is not keyed with SECRET_KEY): the code must too.
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = OLD_KEY, []
    ask(client, owner.email)
    code = code_in(mail.outbox[-1])

    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    response = client.post(CODE, {"code": code})

    assert response.status_code == 302 and response["Location"] == TEAM
    assert signed_in_user_id(client) == str(owner.pk)


def test_a_code_emailed_under_a_key_no_longer_configured_is_refused(client, owner, settings):
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = OLD_KEY, []
    ask(client, owner.email)
    code = code_in(mail.outbox[-1])

    settings.SECRET_KEY = NEW_KEY
    client.post(CODE, {"code": code})

    assert signed_in_user_id(client) is None
