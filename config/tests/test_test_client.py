"""The suite's test client hears only its own thread (conftest.py's _test_client_hears_its_own_thread_only):
the live server thread, still answering an earlier browser test's page, renders and fails on its own."""

import threading
import urllib.request

import pytest
from django.core.signals import got_request_exception, request_started
from django.urls import reverse


@pytest.fixture
def during_each_client_request():
    """Calls the function given while the test client's request is under way, in the test's thread."""
    test_thread = threading.get_ident()
    receivers = []

    def call(function):
        def receiver(**kwargs):
            if threading.get_ident() == test_thread:
                function()

        receivers.append(receiver)
        request_started.connect(receiver)

    yield call
    for receiver in receivers:
        request_started.disconnect(receiver)


def test_templates_the_live_server_renders_meanwhile_are_not_the_clients(
    client, live_server, during_each_client_request
):
    # The live server answers another page (the admin's sign-in) while the client's request runs.
    during_each_client_request(lambda: urllib.request.urlopen(f"{live_server.url}/admin/login/", timeout=30).read())
    response = client.get(reverse("accounts:sign_in"))
    assert response.status_code == 200
    names = [template.name for template in response.templates]
    assert "accounts/sign_in.html" in names
    assert not any(name and name.startswith("admin/") for name in names)
    assert "site_header" not in response.context  # the admin's login page's context


def test_an_exception_raised_in_another_thread_is_not_the_clients(client, during_each_client_request):
    def fail_elsewhere():
        try:
            raise RuntimeError("a live server request failed")
        except RuntimeError:
            got_request_exception.send(sender=None, request=None)

    def in_another_thread():
        elsewhere = threading.Thread(target=fail_elsewhere)
        elsewhere.start()
        elsewhere.join()

    during_each_client_request(in_another_thread)
    assert client.get(reverse("accounts:sign_in")).status_code == 200
