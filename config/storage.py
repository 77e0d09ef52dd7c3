"""Static files storage: WhiteNoise's hashed, compressed files, with a way out for files collected since."""

from __future__ import annotations

from django.contrib.staticfiles import finders
from whitenoise.storage import CompressedManifestStaticFilesStorage


class CollectedStaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Hashed names from the last collectstatic's manifest; a file it does not know keeps its plain name.

    In production every file is collected at build time. On a developer's machine a collectstatic
    run once leaves a manifest that later files are missing from: their pages must still render,
    with the file served from its app by WhiteNoise's finders, rather than answer 500. A name that
    no app has either (a typo) is still the manifest's error: the page must not ship without it.
    """

    def stored_name(self, name):
        try:
            return super().stored_name(name)
        except ValueError:
            if finders.find(name) is None:
                raise
            return name
