"""GET /api/v1/schema: the OpenAPI document of /api/v1/ (webhooks.api.schema describes it).

Apart from webhooks.api.schema, which drf-spectacular's own views import (as DEFAULT_SCHEMA_CLASS)
while that module would still be loading.
"""

from __future__ import annotations

import functools

from django.http import HttpResponse
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer

from .authentication import api_exception_handler, options_answer


class ApiSchemaView(SpectacularAPIView):
    """GET /api/v1/schema: the document, JSON unless YAML is asked for (Accept: application/yaml or
    application/vnd.oai.openapi, or ?format=yaml). Without a key: it describes the API, no tenant's data."""

    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = ()
    renderer_classes = (OpenApiJsonRenderer2, OpenApiJsonRenderer, OpenApiYamlRenderer, OpenApiYamlRenderer2)

    @extend_schema(exclude=True)  # the document of the endpoints, not one of them
    def get(self, request, *args, **kwargs):
        # The same document for every request (no ?version= or ?lang= of drf-spectacular's view),
        # made and rendered once per process, since anyone may ask for it without a key: rendered
        # for each request it cost 8 ms of CPU as JSON and 30 ms as YAML (HEAD too), unthrottled.
        renderer = request.accepted_renderer
        # JSON's one variant a request chooses: Accept's indent=, which DRF bounds to 0-8.
        indent = renderer.get_indent(request.accepted_media_type, {}) if isinstance(renderer, JSONRenderer) else None
        body, content_type = rendered_api_document(type(renderer), indent)
        return HttpResponse(body, content_type=content_type)

    def get_exception_handler(self):
        return api_exception_handler  # errors in the API's shape, as under every other /api/ path

    def options(self, request, *args, **kwargs):
        return options_answer(self)


@functools.cache
def api_document() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


@functools.cache  # bounded: the view's four renderers, and JSON's indents 1-8 or none
def rendered_api_document(renderer_class: type[BaseRenderer], indent: int | None) -> tuple[bytes, str]:
    """The document's bytes and Content-Type as ``renderer_class`` renders it."""
    renderer = renderer_class()
    accepted = renderer.media_type if indent is None else f"{renderer.media_type}; indent={indent}"
    body = renderer.render(api_document(), accepted, {})
    content_type = f"{renderer.media_type}; charset={renderer.charset}" if renderer.charset else renderer.media_type
    return body, content_type
