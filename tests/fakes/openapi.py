"""GitHub's REST description (@octokit/openapi): routes requests to operations and validates them strictly."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import referencing
import referencing.jsonschema
from openapi_schema_validator import OAS30Validator

VENDOR_DIR = Path(__file__).resolve().parents[1] / "vendor" / "node_modules"
SPEC_PATH = VENDOR_DIR / "@octokit" / "openapi" / "generated" / "api.github.com.json"
SPEC_URI = "urn:github-rest"
HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")

# A parameter in the last segment with one of these names may hold raw slashes
# (file paths, refs and branch names), as GitHub accepts them unencoded there.
SLASHY_PARAMETERS = frozenset({"ref", "path", "branch"})

_PARAM = re.compile(r"\{([^}]+)\}")

MSG_NO_OPERATION = "no operation in GitHub's REST description matches {method} {path}"
MSG_BODY_REQUIRED = "request body required"
MSG_BODY_NOT_JSON = "request body is not JSON"
MSG_UNDECLARED_KEY = "undeclared body key {key!r} (not in the schema's properties)"
MSG_UNDECLARED_QUERY = "undeclared query parameter {name!r}"
MSG_UNEXPECTED_BODY = "operation takes no request body, but one was sent"


class RouteNotFound(LookupError):
    """No operation in the description matches the method and path."""


@dataclass(frozen=True)
class Operation:
    """One operation of the description, with what routing and validation need."""

    operation_id: str
    method: str
    template: str
    regex: re.Pattern[str]
    parameters: tuple[dict[str, Any], ...]
    body_pointer: str | None
    body_required: bool
    rank: tuple[int, ...] = field(compare=False)

    @property
    def query_names(self) -> frozenset[str]:
        return frozenset(p["name"] for p in self.parameters if p.get("in") == "query")


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _compile_template(template: str) -> tuple[re.Pattern[str], tuple[int, ...]]:
    """Turn a path template into a regex and a literal-first rank key."""
    segments = template.strip("/").split("/")
    parts: list[str] = []
    rank: list[int] = []
    for index, segment in enumerate(segments):
        names = _PARAM.findall(segment)
        last = index == len(segments) - 1
        pattern = ""
        pos = 0
        slashy = False
        for match in _PARAM.finditer(segment):
            pattern += re.escape(segment[pos : match.start()])
            name = match.group(1)
            at_end = match.end() == len(segment)
            if last and at_end and name in SLASHY_PARAMETERS:
                pattern += f"(?P<{_group(name)}>.+)"
                slashy = True
            elif at_end:
                pattern += f"(?P<{_group(name)}>[^/]+)"
            else:
                pattern += f"(?P<{_group(name)}>[^/]+?)"
            pos = match.end()
        pattern += re.escape(segment[pos:])
        parts.append(pattern)
        if not names:
            rank.append(0)
        elif slashy:
            rank.append(3)
        elif segment == "{" + names[0] + "}":
            rank.append(2)
        else:
            rank.append(1)
    return re.compile("^/" + "/".join(parts) + "$"), tuple(rank)


def _group(name: str) -> str:
    return "p_" + re.sub(r"\W", "_", name)


class Spec:
    """The loaded REST description: a router over its operations and a request validator."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = referencing.Resource.from_contents(
            document, default_specification=referencing.jsonschema.DRAFT4
        )
        self.registry: referencing.Registry = referencing.Registry().with_resource(SPEC_URI, resource)
        self._validators: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.operations: dict[str, Operation] = {}
        self._routes: dict[str, list[Operation]] = {m.upper(): [] for m in HTTP_METHODS}
        for template, item in document["paths"].items():
            regex, rank = _compile_template(template)
            shared = item.get("parameters", [])
            for method in HTTP_METHODS:
                op = item.get(method)
                if op is None:
                    continue
                params = tuple(self.resolve(p) for p in [*shared, *op.get("parameters", [])])
                body = op.get("requestBody")
                pointer = None
                required = False
                if body is not None:
                    body = self.resolve(body)
                    if "application/json" in body.get("content", {}):
                        pointer = (
                            f"{SPEC_URI}#/paths/{_escape_pointer(template)}/{method}"
                            "/requestBody/content/application~1json/schema"
                        )
                        if "$ref" in op["requestBody"]:
                            pointer = SPEC_URI + op["requestBody"]["$ref"] + "/content/application~1json/schema"
                    required = bool(body.get("required"))
                operation = Operation(
                    operation_id=op["operationId"],
                    method=method.upper(),
                    template=template,
                    regex=regex,
                    parameters=params,
                    body_pointer=pointer,
                    body_required=required,
                    rank=rank,
                )
                self.operations[operation.operation_id] = operation
                self._routes[method.upper()].append(operation)
        for routes in self._routes.values():
            routes.sort(key=lambda o: (o.rank, o.template))

    def resolve(self, node: Any) -> Any:
        """Follow local `$ref`s until a concrete node."""
        while isinstance(node, dict) and "$ref" in node:
            node = self.pointer(node["$ref"])
        return node

    def pointer(self, ref: str) -> Any:
        node: Any = self.document
        for token in ref.lstrip("#").strip("/").split("/"):
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return node

    def route(self, method: str, raw_path: str) -> tuple[Operation, dict[str, str]]:
        """Find the operation for a still-percent-encoded path; decode its parameters afterwards."""
        path = raw_path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        for operation in self._routes.get(method.upper(), ()):
            match = operation.regex.match(path)
            if match is None:
                continue
            params = {}
            for name in _PARAM.findall(operation.template):
                params[name] = unquote(match.group(_group(name)))
            return operation, params
        raise RouteNotFound(MSG_NO_OPERATION.format(method=method.upper(), path=raw_path))

    def _validator(self, pointer: str) -> Any:
        with self._lock:
            validator = self._validators.get(pointer)
            if validator is None:
                validator = OAS30Validator({"$ref": pointer}, registry=self.registry)
                self._validators[pointer] = validator
            return validator

    def body_properties(self, operation: Operation) -> set[str] | None:
        """The keys a JSON object body may have, or None when the schema is not an object schema."""
        if operation.body_pointer is None:
            return None
        ref = operation.body_pointer[len(SPEC_URI) :]
        return self._top_level_properties(self.resolve(self.pointer(ref)))

    def _top_level_properties(self, schema: Any) -> set[str] | None:
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return None
        keys: set[str] | None = None
        if "properties" in schema:
            keys = set(schema["properties"])
        for combinator in ("oneOf", "anyOf", "allOf"):
            for branch in schema.get(combinator, ()):
                branch_keys = self._top_level_properties(branch)
                if branch_keys is not None:
                    keys = (keys or set()) | branch_keys
        if schema.get("additionalProperties") not in (None, False):
            return None
        return keys

    def validate_request(
        self, operation: Operation, query: dict[str, Any] | None, body: bytes | None
    ) -> tuple[list[str], Any]:
        """Return (errors, parsed JSON body) for a request to `operation`."""
        errors: list[str] = []
        for name in query or {}:
            if name not in operation.query_names:
                errors.append(MSG_UNDECLARED_QUERY.format(name=name))
        data: Any = None
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                errors.append(MSG_BODY_NOT_JSON)
                return errors, None
        if operation.body_pointer is None:
            # Clients send "" or {} or null for bodiless calls; anything else is a mistake.
            if data not in (None, {}, ""):
                errors.append(MSG_UNEXPECTED_BODY)
            return errors, data
        if data is None:
            if operation.body_required:
                errors.append(MSG_BODY_REQUIRED)
            return errors, data
        for error in sorted(self._validator(operation.body_pointer).iter_errors(data), key=str):
            errors.append(f"{error.json_path}: {error.message}")
        allowed = self.body_properties(operation)
        if allowed is not None and isinstance(data, dict):
            for key in data:
                if key not in allowed:
                    errors.append(MSG_UNDECLARED_KEY.format(key=key))
        return errors, data


_cache: Spec | None = None
_cache_lock = threading.Lock()


def load_spec() -> Spec:
    """Load and index the description once per process."""
    global _cache
    with _cache_lock:
        if _cache is None:
            with SPEC_PATH.open(encoding="utf-8") as handle:
                _cache = Spec(json.load(handle))
        return _cache
