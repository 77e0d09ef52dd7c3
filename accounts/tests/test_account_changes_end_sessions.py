"""Deactivating an account or changing its address ends its sessions for good, as signing out everywhere does."""

import pytest
from django.core import mail
from django.test import Client

from accounts.tests.test_sign_in import TEAM, ask, link_path, signed_in_user_id

pytestmark = pytest.mark.django_db


def signed_in(owner) -> Client:
    browser = Client()
    ask(browser, owner.email)
    browser.get(link_path(mail.outbox[-1]))
    assert browser.get(TEAM).status_code == 200
    return browser


def test_a_session_does_not_come_back_when_its_deactivated_account_is_reactivated(owner):
    # A session Django skipped while the account was inactive, but kept, opened the dashboard again
    # once the account was reactivated: a stolen laptop's session came back with its owner's account.
    thief = signed_in(owner)
    owner.is_active = False
    owner.save()
    assert thief.get(TEAM).status_code == 302

    owner.is_active = True
    owner.save()

    response = thief.get(TEAM)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/sign-in/")
    assert signed_in_user_id(thief) is None
    assert signed_in(owner).get(TEAM).status_code == 200  # the owner signs in again as usual


def test_a_link_sent_before_the_account_was_deactivated_no_longer_signs_in_after_it_is_reactivated(owner):
    browser = Client()
    ask(browser, owner.email)
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    owner.is_active = True
    owner.save(update_fields=["is_active"])

    browser.get(link_path(mail.outbox[-1]))

    assert signed_in_user_id(browser) is None


def test_changing_an_account_s_address_ends_the_sessions_of_whoever_held_the_old_one(owner):
    # Sign-in is by the mailbox: an account moved to another address (a successor's) must not stay
    # open to the previous holder's browsers.
    previous_holder = signed_in(owner)
    owner.email = "successor@acme.example"
    owner.save(update_fields=["email"])

    assert previous_holder.get(TEAM).status_code == 302
    assert signed_in_user_id(previous_holder) is None


def test_other_changes_and_signing_in_leave_the_sessions_alone(owner):
    browser = signed_in(owner)
    owner.full_name = "Owner"
    owner.save()
    owner.is_active = True  # already: not a deactivation
    owner.save(update_fields=["is_active"])
    signed_in(owner)  # another sign-in saves last_login

    assert browser.get(TEAM).status_code == 200
