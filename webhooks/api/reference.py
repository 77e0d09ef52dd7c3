"""The API reference page's reading of the OpenAPI document (webhooks.api.schema_view.api_document).

The page at /docs/api/ is the same document as /api/v1/schema, put in words for a person: each
endpoint with its parameters, body fields and answers. Nothing here describes an endpoint itself,
so that the page cannot say anything the document does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Where each group of endpoints is listed, and under which heading (the document's tags).
GROUP_TITLES = {
    "events": "Events",
    "deliveries": "Deliveries",
    "bulk_retries": "Bulk retries",
    "sources": "Sources",
    "destinations": "Destinations",
}
METHOD_ORDER = ("get", "post", "patch", "put", "delete")
HTTP_METHODS = frozenset({*METHOD_ORDER, "head", "options", "trace"})
# A pattern longer than this (the event-type one spells out every Unicode space) is left to the document.
PATTERN_SHOWN_UP_TO = 80
# Objects in a body are listed field by field down to this depth (a destination's payload filter conditions).
NESTED_FIELDS_DEPTH = 2


class UnresolvedReference(ValueError):
    """A ``$ref`` in the document that names nothing in it (or only itself)."""


@dataclass
class Field:
    name: str
    type: str
    required: bool = False
    constraints: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class Answer:
    status: str
    description: str
    body: str = ""  # the shape of its JSON body, as a type
    headers: list[str] = field(default_factory=list)


@dataclass
class Endpoint:
    method: str
    path: str
    anchor: str
    summary: str
    description: str
    path_parameters: list[Field]
    query_parameters: list[Field]
    header_parameters: list[Field]
    body_fields: list[Field]
    body_required: bool
    answers: list[Answer]


@dataclass
class Group:
    name: str
    title: str
    endpoints: list[Endpoint]


@dataclass
class ApiReference:
    title: str
    version: str
    description: str
    server: str
    authentication: str
    groups: list[Group]

    @property
    def endpoints(self) -> list[Endpoint]:
        return [endpoint for group in self.groups for endpoint in group.endpoints]


def api_reference(document: dict) -> ApiReference:
    """Every operation of ``document``, grouped by its tag in GROUP_TITLES' order (others after)."""
    reader = _Reader(document)
    groups: dict[str, list[Endpoint]] = {}
    for path, item in document.get("paths", {}).items():
        item = reader.resolve(item)
        # A path item holds its operations beside keys that are none (parameters, summary, servers).
        methods = [name for name in item if name in HTTP_METHODS]
        for method in sorted(methods, key=lambda name: METHOD_ORDER.index(name) if name in METHOD_ORDER else 99):
            operation = item[method]
            tag = (operation.get("tags") or ["other"])[0]
            groups.setdefault(tag, []).append(reader.endpoint(path, method, operation, item.get("parameters", ())))
    order = [*GROUP_TITLES, *sorted(set(groups) - set(GROUP_TITLES))]
    schemes = document.get("components", {}).get("securitySchemes", {})
    info = document.get("info", {})
    servers = document.get("servers") or [{"url": ""}]
    return ApiReference(
        title=info.get("title", ""),
        version=str(info.get("version", "")),
        description=info.get("description", ""),
        server=servers[0]["url"],
        authentication=" ".join(scheme.get("description", "") for scheme in schemes.values()),
        groups=[
            Group(name=name, title=GROUP_TITLES.get(name, name.replace("_", " ").capitalize()), endpoints=groups[name])
            for name in order
            if name in groups
        ],
    )


class _Reader:
    def __init__(self, document: dict):
        self.document = document

    def resolve(self, value: dict) -> dict:
        """What ``value`` is once its ``$ref`` (a schema's, a parameter's, a body's, an answer's) is followed.

        The page is built once per process and kept: a reference it could not follow raises
        UnresolvedReference, which the tests of the document meet rather than every request for the page.
        """
        seen = []
        while isinstance(value, dict) and "$ref" in value:
            reference = value["$ref"]
            if reference in seen:
                raise UnresolvedReference(f"the OpenAPI document's {reference} refers to itself")
            seen.append(reference)
            value = self.target(reference)
        return value

    def target(self, reference: str) -> dict:
        if not isinstance(reference, str) or not reference.startswith("#/"):
            raise UnresolvedReference(f"the OpenAPI document refers outside itself: {reference!r}")
        found = self.document
        # A JSON pointer: "/" in a name is written "~1", "~" is "~0".
        for token in reference[2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(found, list) and token.isdecimal() and int(token) < len(found):
                found = found[int(token)]
            elif isinstance(found, dict) and token in found:
                found = found[token]
            else:
                raise UnresolvedReference(f"the OpenAPI document has nothing at {reference}")
        if not isinstance(found, dict):
            raise UnresolvedReference(f"the OpenAPI document's {reference} is no object")
        return found

    def endpoint(self, path: str, method: str, operation: dict, shared_parameters=()) -> Endpoint:
        parameters = {"path": [], "query": [], "header": []}
        # The path item's parameters apply to each of its operations, unless one names its own.
        own = [self.resolve(parameter) for parameter in operation.get("parameters", ())]
        named = {(parameter["name"], parameter["in"]) for parameter in own}
        shared = [self.resolve(parameter) for parameter in shared_parameters]
        for parameter in [*(p for p in shared if (p["name"], p["in"]) not in named), *own]:
            if parameter["in"] in parameters:
                parameters[parameter["in"]].append(self.parameter(parameter))
        body = self.resolve(operation.get("requestBody", {}))
        body_schema = body.get("content", {}).get("application/json", {}).get("schema")
        return Endpoint(
            method=method.upper(),
            path=path,
            anchor=re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-"),
            summary=operation.get("summary", ""),
            description=operation.get("description", ""),
            path_parameters=parameters["path"],
            query_parameters=parameters["query"],
            header_parameters=parameters["header"],
            body_fields=self.fields(body_schema) if body_schema else [],
            body_required=bool(body.get("required")),
            answers=[
                self.answer(status, self.resolve(answer)) for status, answer in operation.get("responses", {}).items()
            ],
        )

    def parameter(self, parameter: dict) -> Field:
        schema = parameter.get("schema", {})
        return Field(
            name=parameter["name"],
            type=self.type_words(schema),
            required=bool(parameter.get("required")),
            constraints=self.constraints(schema),
            description=parameter.get("description") or self.resolve(schema).get("description", ""),
        )

    def fields(self, schema: dict, prefix: str = "", depth: int = 0) -> list[Field]:
        """The properties of an object schema, with those of the objects in them (``a.b``, ``a[].b``)."""
        schema = self.resolve(schema)
        required = set(schema.get("required", ()))
        listed = []
        for name, value in schema.get("properties", {}).items():
            if value.get("readOnly"):
                continue
            resolved = self.resolve(value)
            listed.append(
                Field(
                    name=f"{prefix}{name}",
                    type=self.type_words(value),
                    required=name in required,
                    constraints=self.constraints(value),
                    description=value.get("description") or resolved.get("description", ""),
                )
            )
            if depth + 1 < NESTED_FIELDS_DEPTH:
                items = self.resolve(resolved.get("items", {})) if resolved.get("type") == "array" else None
                if items and items.get("properties"):
                    listed += self.fields(items, f"{prefix}{name}[].", depth + 1)
                elif resolved.get("properties"):
                    listed += self.fields(resolved, f"{prefix}{name}.", depth + 1)
        return listed

    def answer(self, status: str, answer: dict) -> Answer:
        schema = answer.get("content", {}).get("application/json", {}).get("schema")
        return Answer(
            status=status,
            description=answer.get("description", ""),
            body=self.type_words(schema) if schema else "",
            headers=sorted(answer.get("headers", {})),
        )

    def type_words(self, schema: dict) -> str:
        """A schema's type as a reader says it: ``integer``, ``string (uuid)``, ``array of Source``, ``X or null``."""
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            target = self.resolve(schema)
            if "enum" in target:
                return self.type_words(target)
            return name
        for combined in ("oneOf", "anyOf", "allOf"):
            if combined in schema:
                return " or ".join(self.type_words(part) for part in schema[combined])
        if "enum" in schema:
            values = [value for value in schema["enum"] if value is not None]
            words = "one of " + ", ".join(str(value) for value in values) if values else "null"
            return f"{words} or null" if None in schema["enum"] and values else words
        kind = schema.get("type", "any")
        if kind == "array":
            kind = f"array of {self.type_words(schema.get('items', {}))}"
        elif schema.get("format") and schema["format"] not in ("int64", "int32", "double"):
            kind = f"{kind} ({schema['format']})"
        elif kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
            kind = f"object of {self.type_words(schema['additionalProperties'])}"
        return f"{kind} or null" if schema.get("nullable") else kind

    def constraints(self, schema: dict) -> list[str]:
        """A schema's bounds in words, the items' of an array too."""
        schema = self.resolve(schema)
        words = []
        bounds = (
            ("minLength", "at least {} characters"),
            ("maxLength", "at most {} characters"),
            ("minimum", "≥ {}"),
            ("maximum", "≤ {}"),
            ("minItems", "at least {} items"),
            ("maxItems", "at most {} items"),
        )
        for key, text in bounds:
            # int64's own maximum bounds nothing a reader needs told.
            if key in schema and not (key == "maximum" and schema[key] >= 2**63 - 1):
                words.append(text.format(_number(schema[key])))
        if "pattern" in schema:
            pattern = schema["pattern"]
            words.append(f"pattern {pattern}" if len(pattern) <= PATTERN_SHOWN_UP_TO else "pattern in the JSON schema")
        if "default" in schema:
            words.append(f"default {_literal(schema['default'])}")
        if schema.get("type") == "array" and "items" in schema:
            words += [f"each {word}" for word in self.constraints(self.resolve(schema["items"]))]
        return words


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _literal(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
