"""The dashboard's API keys page: admins and owners only; a key is shown once; revoking is final."""

from conftest import UserFactory
from organizations.api_keys import api_key_authenticate, api_key_create, api_key_revoke
from organizations.models import ApiKey, AuditLog, Membership

from .api_helpers import api_get


def _page(slug="acme"):
    return f"/o/{slug}/api-keys/"


def test_owner_creates_a_key_sees_it_once_and_it_works(client, organization, owner):
    client.force_login(owner)
    response = client.post(_page(), {"name": "deploy", "access": "read_write"})
    assert response.status_code == 302 and "/secret/" in response["Location"]
    shown = client.get(response["Location"])
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    api_key = ApiKey.objects.get()
    key = next(word for word in shown.content.decode().split('"') if word.startswith(f"hl_{api_key.prefix}_"))
    assert api_key_authenticate(key=key) == api_key and api_key.can_write and api_key.created_by == owner
    assert api_get(client, key, "/api/v1/events").status_code == 200
    again = client.get(response["Location"])  # once only
    assert again.status_code == 302 and key not in client.get(_page()).content.decode()
    entry = AuditLog.objects.get(action="api_key.created")
    assert entry.actor_user == owner
    listed = client.get(_page()).content.decode()
    assert f"hl_{api_key.prefix}_…" in listed and "deploy" in listed


def test_the_page_says_all_that_a_read_and_write_key_may_do(client, organization, owner):
    """Whoever picks the access must know that such a key can delete sources and destinations too."""
    client.force_login(owner)
    page = " ".join(client.get(_page()).content.decode().split())
    assert page.count("create, change, rotate the secrets of and delete sources and destinations") == 2


def test_the_access_choice_is_a_group_named_by_its_legend_not_a_label_for_nothing(client, organization, owner):
    # A label must point at one control; the two radio buttons are a group, which a legend names.
    client.force_login(owner)
    page = " ".join(client.get(_page()).content.decode().split())
    assert 'for=""' not in page
    assert '<fieldset aria-describedby="id_access_helptext"><legend>Access</legend><div id="id_access">' in page


def test_a_bad_name_is_shown_on_the_form(client, organization, owner):
    client.force_login(owner)
    response = client.post(_page(), {"name": "two\nlines", "access": "read_only"})
    assert response.status_code == 400 and "control characters" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_revoking_asks_first_on_its_own_page(client, organization, owner):
    """One click on the list must not revoke: a script's key cannot be given back."""
    api_key, key = api_key_create(organization=organization, name="nightly")
    client.force_login(owner)
    listed = client.get(_page()).content.decode()
    confirm_url = f"{_page()}{api_key.pk}/revoke/"
    assert f'href="{confirm_url}"' in listed and f'action="{confirm_url}"' not in listed
    asked = client.get(confirm_url)
    page = " ".join(asked.content.decode().split())
    assert asked.status_code == 200 and "Revoke nightly?" in page and f"hl_{api_key.prefix}_…" in page
    assert "This cannot be undone" in page and '<form method="post">' in page
    assert f'href="{_page()}">Keep it</a>' in page
    api_key.refresh_from_db()
    assert api_key.revoked_at is None and api_get(client, key, "/api/v1/events").status_code == 200
    assert not AuditLog.objects.filter(action="api_key.revoked").exists()


def test_a_revoked_keys_confirmation_goes_back_to_the_list(client, organization, owner):
    api_key, _ = api_key_create(organization=organization, name="old")
    api_key_revoke(api_key=api_key, actor=owner)
    client.force_login(owner)
    response = client.get(f"{_page()}{api_key.pk}/revoke/")
    assert response.status_code == 302 and response["Location"] == _page()


def test_admin_revokes_a_key(client, organization, owner):
    api_key, key = api_key_create(organization=organization, name="old")
    client.force_login(owner)
    response = client.post(f"{_page()}{api_key.pk}/revoke/")
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert AuditLog.objects.get(action="api_key.revoked").actor_user == owner
    assert api_get(client, key, "/api/v1/events").status_code == 401
    assert "Revoked" in client.get(_page()).content.decode()


def test_members_cannot_see_make_or_revoke_keys(client, organization, member):
    api_key, _ = api_key_create(organization=organization, name="ci")
    client.force_login(member)
    assert client.get(_page()).status_code == 403
    assert client.post(_page(), {"name": "mine", "access": "read_write"}).status_code == 403
    assert client.get(f"{_page()}{api_key.pk}/revoke/").status_code == 403
    assert client.post(f"{_page()}{api_key.pk}/revoke/").status_code == 403
    assert ApiKey.objects.count() == 1 and ApiKey.objects.get().revoked_at is None
    assert "api-keys" not in client.get("/o/acme/").content.decode()


def test_the_navigation_links_admins_to_the_page(client, organization, owner):
    client.force_login(owner)
    assert 'href="/o/acme/api-keys/"' in client.get("/o/acme/").content.decode()


def test_another_organizations_keys_stay_out_of_reach(client, organization, other_organization, outsider):
    theirs, _ = api_key_create(organization=other_organization, name="theirs")
    ours, _ = api_key_create(organization=organization, name="ours")
    client.force_login(outsider)
    assert client.get(_page()).status_code == 404  # not a member of acme
    assert client.post(f"{_page()}{ours.pk}/revoke/").status_code == 404
    assert client.get(f"{_page('globex')}{ours.pk}/revoke/").status_code == 404
    assert "ours" not in client.get(_page("globex")).content.decode()
    assert client.post(f"{_page('globex')}{ours.pk}/revoke/").status_code == 404
    ours.refresh_from_db()
    assert ours.revoked_at is None


def test_admins_have_the_page_too(client, organization):
    user = UserFactory(email="admin@acme.example")
    Membership.objects.create(user=user, organization=organization, role=Membership.Role.ADMIN)
    client.force_login(user)
    assert client.get(_page()).status_code == 200


def test_anonymous_visitors_are_sent_to_sign_in(client, organization):
    response = client.get(_page())
    assert response.status_code == 302 and "/accounts/" in response["Location"]
