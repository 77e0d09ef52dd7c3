"""The suite's test clients list the static files once per settings (conftest.py's
_static_files_listed_once), as a server process does at its start: a later client serves the same files
the same way, and a test that points the static files elsewhere gets its own list."""

from django.test import Client
from whitenoise.middleware import WhiteNoiseMiddleware

STYLESHEET = "/static/css/hookline.css"


def _served(path: str):
    response = Client().get(path)
    body = b"".join(response.streaming_content) if response.status_code == 200 else b""
    return response.status_code, {name: value for name, value in response.items()}, body


def test_a_later_client_serves_the_static_files_as_the_first_did():
    first, second = _served(STYLESHEET), _served(STYLESHEET)
    assert first[0] == 200 and first[2]
    assert second == first


def test_a_client_made_after_the_static_files_moved_serves_the_new_ones(settings, tmp_path):
    assert _served(STYLESHEET)[0] == 200
    (tmp_path / "only-here.txt").write_text("moved")
    settings.STATICFILES_DIRS = [tmp_path]
    status, _, body = _served("/static/only-here.txt")
    assert (status, body) == (200, b"moved")
    assert _served(STYLESHEET)[0] == 404


def test_each_middleware_has_its_own_list_of_files():
    first, second = WhiteNoiseMiddleware(lambda request: None), WhiteNoiseMiddleware(lambda request: None)
    assert first.files == second.files and first.files is not second.files
