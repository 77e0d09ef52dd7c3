"""Accounts added in the admin: a tenant's needs no password, a platform admin's must not be weak."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from organizations.models import Membership

ADD = "admin:accounts_user_add"


@pytest.fixture
def operator(client, db):
    root = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(root)
    return client


def _add(client, email, **fields):
    return client.post(reverse(ADD), {"email": email, "memberships-TOTAL_FORMS": "0", **_management(), **fields})


def _management():
    return {"memberships-INITIAL_FORMS": "0", "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000"}


def _errors(response) -> dict:
    return response.context["adminform"].form.errors if response.status_code == 200 else {}


def test_a_tenants_owner_is_added_with_an_address_and_a_role_and_no_password(operator, organization):
    page = operator.get(reverse(ADD)).content.decode()
    assert 'name="usable_password" value="false"' in page
    assert 'value="false" class="radiolist inline" id="id_usable_password_1" checked' in page

    # What the page posts when the operator fills in only the address and the membership.
    response = _add(
        operator,
        "owner@tenant.example",
        usable_password="false",
        **{
            "memberships-TOTAL_FORMS": "1",
            "memberships-0-organization": organization.pk,
            "memberships-0-role": "owner",
        },
    )
    assert response.status_code == 302, _errors(response)
    created = get_user_model().objects.get(email="owner@tenant.example")
    assert not created.has_usable_password()
    assert not created.is_staff
    assert Membership.objects.get(user=created, organization=organization).role == "owner"


def test_an_address_typed_with_capitals_is_saved_as_sign_in_looks_it_up(operator, owner):
    # Saved as typed, the account was never found by its owner's sign-in (addresses are looked up
    # lower-cased), and an invitation to the same mailbox made a second account beside it.
    response = _add(operator, " New.Owner@Tenant.Example ", usable_password="false")
    assert response.status_code == 302, _errors(response)
    assert get_user_model().objects.filter(email="new.owner@tenant.example").exists()

    response = _add(operator, owner.email.upper(), usable_password="false")
    assert response.status_code == 200 and "email" in _errors(response)
    response = post_change_page(
        operator, get_user_model().objects.get(email="new.owner@tenant.example"), email=owner.email.title()
    )
    assert response.status_code == 200 and "email" in _errors(response)
    assert get_user_model().objects.filter(email__iexact=owner.email).count() == 1


@pytest.mark.parametrize("weak", ["short", "123456789012345", "password1234", "root@hookline.example1"])
def test_a_password_given_to_an_account_must_not_be_weak(operator, weak):
    response = _add(operator, "ops@hookline.example", usable_password="true", password1=weak, password2=weak)
    assert response.status_code == 200
    assert "password2" in _errors(response)
    assert not get_user_model().objects.filter(email="ops@hookline.example").exists()

    strong = "a long enough passphrase 42"
    response = _add(operator, "ops@hookline.example", usable_password="true", password1=strong, password2=strong)
    assert response.status_code == 302, _errors(response)
    assert get_user_model().objects.get(email="ops@hookline.example").check_password(strong)


def post_change_page(client, user, **changes):
    """Post the account's change page as it is shown, with ``changes``."""
    url = reverse("admin:accounts_user_change", args=[user.pk])
    page = client.get(url)
    data = {}
    forms = [page.context["adminform"].form]
    for inline in page.context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.initial_forms]
    for form in forms:
        for name, field in form.fields.items():
            value = form[name].value()
            if value is None or field.disabled:
                continue
            if isinstance(value, bool):
                if value:
                    data[form.add_prefix(name)] = "on"
            elif isinstance(value, list | tuple):
                data[form.add_prefix(name)] = [str(item) for item in value]
            else:
                data[form.add_prefix(name)] = str(value)
    for name in ("last_login", "date_joined"):  # split into date and time by the admin's widget
        moment = data.pop(name, None)
        if moment:
            data[f"{name}_0"], data[f"{name}_1"] = moment[:10], moment[11:19]
    data.update(changes)
    if changes.get("is_active") is False:
        data.pop("is_active")
    return client.post(url, data)


def test_an_operator_deactivating_an_account_ends_its_sessions_and_changing_their_own_address_keeps_theirs(
    operator, owner
):
    tenant = Client()
    tenant.force_login(owner)
    assert tenant.get("/o/acme/").status_code == 200

    response = post_change_page(operator, owner, is_active=False)
    assert response.status_code == 302, _errors(response)
    owner.refresh_from_db()
    owner.is_active = True
    owner.save()
    assert tenant.get("/o/acme/").status_code == 302  # reactivated: its old session did not come back

    root = get_user_model().objects.get(email="root@hookline.example")
    response = post_change_page(operator, root, email="ops@hookline.example")
    assert response.status_code == 302, _errors(response)
    assert operator.get(reverse("admin:index")).status_code == 200


def test_resaving_an_account_whose_address_was_stored_with_capitals_keeps_its_sessions(operator, owner):
    # clean() stores the address as sign-in looks it up; an operator saving such a legacy account
    # (nothing changed by them) re-spelled the same mailbox, and that ended its owner's sessions.
    get_user_model().objects.filter(pk=owner.pk).update(email=owner.email.title())
    owner.refresh_from_db()
    tenant = Client()
    tenant.force_login(owner)
    assert tenant.get("/o/acme/").status_code == 200

    response = post_change_page(operator, owner)
    assert response.status_code == 302, _errors(response)
    owner.refresh_from_db()
    assert owner.email == owner.email.lower()
    assert tenant.get("/o/acme/").status_code == 200
