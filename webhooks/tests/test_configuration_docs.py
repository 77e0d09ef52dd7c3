"""Every setting read from the environment is documented, and .env.example can be used as a .env file."""

import re
from pathlib import Path

import environ

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_NAMES = sorted(
    set(re.findall(r'env(?:\.[a-z_]+)?\("([A-Z_]+)"', (ROOT / "config" / "settings.py").read_text()))
)


def test_every_environment_setting_is_in_the_readme_and_env_example():
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    assert len(SETTINGS_NAMES) > 30
    assert [name for name in SETTINGS_NAMES if name not in readme] == []
    assert [name for name in SETTINGS_NAMES if name not in example] == []


def test_env_example_values_read_back_without_comments_or_padding(tmp_path, monkeypatch):
    # django-environ keeps anything after "=" (an inline "# …" included), so comments stand on their own lines.
    values = {}
    monkeypatch.setattr(environ.Env, "ENVIRON", values)
    environ.Env.read_env(ROOT / ".env.example", overwrite=True)
    assert values, "nothing was read"
    for name, value in values.items():
        assert "#" not in value and value == value.strip(), f"{name}={value!r}"


def test_the_readme_names_every_provider_of_the_registry():
    from webhooks.providers.registry import PROVIDERS

    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Providers (`--provider`)") :].split("\n\n")[0]
    assert [kind for kind in PROVIDERS if f"`{kind}`" not in paragraph] == []
