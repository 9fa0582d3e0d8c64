"""Check a Kubernetes manifest against the OpenAPI models that ship offline with the ``kserve`` package
(``kserve.models``: KServe's CRDs) and its ``kubernetes`` client (``kubernetes.client.models``: pods,
containers, probes...): every field must exist in its type's schema (an unknown or misspelt field is
named), every value must have the schema's type, and the models' own checks (required fields,
enumerations) must pass. KServe's models are OpenAPI-generated classes (``openapi_types``, walked
here); the kubernetes client's are pydantic models that forbid unknown fields (validated by pydantic).

    python -m tests.openapi_check FILE.yaml   # one problem per line, exit status 1 when there is any

Run with a Python that has ``kserve`` (``.venv-kserve``); the tests call it as a subprocess.
"""

from __future__ import annotations

import re
import sys
from typing import Any, List

import kserve.models as kserve_models
import kubernetes.client.models as kubernetes_models
import yaml
from pydantic import BaseModel, ValidationError

KINDS = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str}


def model_class(name: str) -> type:
    for module in (kserve_models, kubernetes_models):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no OpenAPI model {name}")


def problems(value: Any, type_name: str, path: str = "") -> List[str]:
    """Every way ``value`` does not fit the OpenAPI type ``type_name``."""
    if type_name in PRIMITIVES:
        wrong = (isinstance(value, bool) and type_name in ("int", "float")) or not isinstance(value,
                                                                                               PRIMITIVES[type_name])
        return [f"{path}: expected {type_name}, got {type(value).__name__}"] if wrong else []
    match = re.fullmatch(r"list\[(.+)\]", type_name)
    if match:
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, item in enumerate(value) for p in problems(item, match.group(1), f"{path}[{i}]")]
    match = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if match:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        return [p for key, item in value.items() for p in problems(item, match.group(1), f"{path}.{key}")]
    cls = model_class(type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping"]
    if issubclass(cls, BaseModel):  # the kubernetes client's models are pydantic, unknown fields forbidden
        try:
            cls.model_validate(value)
            return []
        except ValidationError as error:
            return [f"{path}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    fields = {json_key: attribute for attribute, json_key in cls.attribute_map.items()}
    found = [f"{path}.{key}: no such field in {type_name}" for key in value if key not in fields]
    for key, item in value.items():
        if key in fields:
            found += problems(item, cls.openapi_types[fields[key]], f"{path}.{key}")
    try:
        cls(**{fields[key]: item for key, item in value.items() if key in fields})
    except ValueError as error:  # the model's own checks: required fields, enumerations
        found.append(f"{path or type_name}: {error}")
    return found


def check_document(document: Any) -> List[str]:
    kind = (document.get("apiVersion"), document.get("kind")) if isinstance(document, dict) else None
    if kind not in KINDS:
        return [f"no offline schema for {kind}"]
    return problems(document, KINDS[kind], document["kind"])


if __name__ == "__main__":
    documents = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    found = [p for document in documents for p in check_document(document)]
    print("\n".join(found) if found else f"{len(documents)} document(s) fit the schema")
    sys.exit(1 if found else 0)
