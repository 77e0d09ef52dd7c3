import pytest


@pytest.mark.django_db(transaction=True)
def test_platform_admin_signs_in_with_a_password_in_a_real_browser(live_server, page, django_user_model):
    django_user_model.objects.create_superuser("root@hookline.example", "correct horse battery")
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "root@hookline.example")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert "Hookline" in page.inner_text("#site-name")
    assert page.locator("#content-main a[href='/admin/webhooks/webhookevent/']").count() >= 1
