"""GET /api/v1/schema: the OpenAPI document of /api/v1/ (webhooks.api.schema describes it).

Apart from webhooks.api.schema, which drf-spectacular's own views import (as DEFAULT_SCHEMA_CLASS)
while that module would still be loading.
"""

from __future__ import annotations

import functools

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
from rest_framework.response import Response

from .authentication import api_exception_handler


class ApiSchemaView(SpectacularAPIView):
    """GET /api/v1/schema: the document, JSON unless YAML is asked for (Accept: application/yaml or
    application/vnd.oai.openapi, or ?format=yaml). Without a key: it describes the API, no tenant's data."""

    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = ()
    renderer_classes = (OpenApiJsonRenderer2, OpenApiJsonRenderer, OpenApiYamlRenderer, OpenApiYamlRenderer2)

    @extend_schema(exclude=True)  # the document of the endpoints, not one of them
    def get(self, request, *args, **kwargs):
        # The same document for every request (no ?version= or ?lang= of drf-spectacular's view):
        # made once per process, since anyone may ask for it without a key.
        return Response(api_document())

    def get_exception_handler(self):
        return api_exception_handler  # errors in the API's shape, as under every other /api/ path


@functools.cache
def api_document() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)
