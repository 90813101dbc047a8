"""What the app and the Slicer module must agree on: the two data contracts (see DESIGN.md), the pipeline
*result* and the reviewed *label*, and the constants both sides use (model names, classes, tolerances).

One validator each; anything malformed raises :class:`ContractError` naming the field, e.g.
``nodes[2].size[1]: must be > 0, got -3.0``. Converters between label boxes and voxel
boxes live in :mod:`lnnode.contracts.convert`.

Coordinates are world LPS millimetres; a box is ``center`` + ``size``, axis-aligned in world space.

``class`` is optional in a label node: a node without it is a detection-only ground truth (an
imported data set without pathology); when present it must be ``benign`` or ``metastatic``.

Pure Python (standard library only) and Python 3.9 syntax on purpose: the Slicer module carries a byte
copy of this file, made by ``python tools/copy_schema.py`` (a test keeps the two equal).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = [
    "RESULT_SCHEMA",
    "LABEL_SCHEMA",
    "NODE_CLASSES",
    "NODE_ORIGINS",
    "RULE_VALUES",
    "STAGE_HINTS",
    "DETECTION",
    "CLASSIFICATION",
    "PIPELINE",
    "DETECTION_2D",
    "CLASSIFICATION_2D",
    "PIPELINE_2D",
    "TRAINABLE",
    "POSITIVE_CLASS",
    "BOX_TOLERANCE_MM",
    "ContractError",
    "validate_label",
    "validate_result",
    "parse_label",
    "parse_result",
    "dumps",
    "make_label",
    "validate_query_nodes",
    "check_one_of",
]

RESULT_SCHEMA = "lnnode.result/1"
LABEL_SCHEMA = "lnnode.label/1"
NODE_CLASSES = ("benign", "metastatic")
NODE_ORIGINS = ("model", "added")
RULE_VALUES = ("suspicious", "not_suspicious", "indeterminate")
STAGE_HINTS = ("N0", "N1", "N2")

# the app's model names (server, CLI, training, benchmarks and the Slicer module use them)
DETECTION = "lymph_node_detection"
CLASSIFICATION = "lymph_node_classification"
PIPELINE = "lymph_node_pipeline"
# the same three for 2D images (ultrasound, key slices)
DETECTION_2D = DETECTION + "_2d"
CLASSIFICATION_2D = CLASSIFICATION + "_2d"
PIPELINE_2D = PIPELINE + "_2d"
TRAINABLE = (DETECTION, CLASSIFICATION, DETECTION_2D, CLASSIFICATION_2D)
# what a label's "metastatic" and a result's p_metastasis mean unless the result names another positive class
# (a model trained on malignant vs benign breast lesions says "malignant")
POSITIVE_CLASS = "metastatic"
# a box counts as moved or resized when a centre coordinate or a size changes by more than this (mm);
# rounding in a viewer's round trip (LPS <-> RAS, JSON) stays far below it
BOX_TOLERANCE_MM = 0.5


class ContractError(ValueError):
    """A document that breaks a contract; ``field`` names where (``""`` for the whole document)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


# -- field checkers -----------------------------------------------------------------------------------
Checker = Callable[[Any, str], None]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_object(
    x: Any, path: str, required: Mapping[str, Checker], optional: Mapping[str, Checker] | None = None
) -> None:
    optional = optional or {}
    if not isinstance(x, dict):
        raise ContractError(path, f"must be an object, got {_type_name(x)}")
    for key in x:
        if key not in required and key not in optional:
            allowed = ", ".join(sorted([*required, *optional]))
            raise ContractError(_join(path, str(key)), f"unknown field (allowed: {allowed})")
    for key, check in required.items():
        if key not in x:
            raise ContractError(_join(path, key), "missing required field")
        check(x[key], _join(path, key))
    for key, check in optional.items():
        if key in x:
            check(x[key], _join(path, key))


def _string(x: Any, path: str) -> None:
    if not isinstance(x, str) or not x.strip():
        raise ContractError(path, f"must be a non-empty string, got {_type_name(x)} {x!r}")


def _const(value: str) -> Checker:
    def check(x: Any, path: str) -> None:
        if x != value:
            raise ContractError(path, f"must be {value!r}, got {x!r}")

    return check


def check_one_of(x: Any, values: Sequence[str], path: str) -> None:
    """Raise ContractError unless ``x`` is one of ``values``."""
    if x not in values:
        raise ContractError(path, f"must be one of {', '.join(values)}; got {x!r}")


def _one_of(values: Sequence[str]) -> Checker:
    def check(x: Any, path: str) -> None:
        check_one_of(x, values, path)

    return check


def _boolean(x: Any, path: str) -> None:
    if not isinstance(x, bool):
        raise ContractError(path, f"must be true or false, got {_type_name(x)} {x!r}")


def _number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Checker:
    def check(x: Any, path: str) -> None:
        if not _is_number(x):
            raise ContractError(path, f"must be a number, got {_type_name(x)} {x!r}")
        if not math.isfinite(x):
            raise ContractError(path, f"must be finite, got {x!r}")
        if lo is not None and (x <= lo if lo_open else x < lo):
            raise ContractError(path, f"must be {'>' if lo_open else '>='} {lo}, got {x!r}")
        if hi is not None and x > hi:
            raise ContractError(path, f"must be <= {hi}, got {x!r}")

    return check


def _count(x: Any, path: str) -> None:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ContractError(path, f"must be a non-negative integer, got {_type_name(x)} {x!r}")


def _vector3(positive: bool) -> Checker:
    def check(x: Any, path: str) -> None:
        if not isinstance(x, (list, tuple)) or len(x) != 3:
            n = len(x) if isinstance(x, (list, tuple)) else _type_name(x)
            raise ContractError(path, f"must be a list of 3 numbers [x, y, z], got {n}")
        for i, v in enumerate(x):
            _number(0.0 if positive else None, lo_open=positive)(v, f"{path}[{i}]")

    return check


def _list_of(item: Checker) -> Checker:
    def check(x: Any, path: str) -> None:
        if not isinstance(x, list):
            raise ContractError(path, f"must be a list, got {_type_name(x)}")
        for i, v in enumerate(x):
            item(v, f"{path}[{i}]")

    return check


def _iso8601(x: Any, path: str) -> None:
    _string(x, path)
    try:
        # Python < 3.11 does not read a trailing "Z"
        datetime.fromisoformat(x[:-1] + "+00:00" if x.endswith("Z") else x)
    except ValueError:
        raise ContractError(path, f"must be an ISO-8601 date-time, got {x!r}") from None


def _map_of(value: Checker) -> Checker:
    def check(x: Any, path: str) -> None:
        if not isinstance(x, dict):
            raise ContractError(path, f"must be an object, got {_type_name(x)}")
        for k, v in x.items():
            value(v, _join(path, str(k)))

    return check


_center = _vector3(positive=False)
_size = _vector3(positive=True)
_probability = _number(0.0, 1.0)


def _no_duplicate_boxes(nodes: list, path: str) -> None:
    seen: dict[tuple, int] = {}
    for i, n in enumerate(nodes):
        key = tuple(round(float(v), 2) for v in [*n["center"], *n["size"]])
        if key in seen:
            raise ContractError(f"{path}[{i}]", f"duplicates {path}[{seen[key]}] (same center and size)")
        seen[key] = i


# -- label --------------------------------------------------------------------------------------------
def _label_node(x: Any, path: str) -> None:
    _check_object(
        x,
        path,
        required={"center": _center, "size": _size},
        optional={
            "class": _one_of(NODE_CLASSES),
            "origin": _one_of(NODE_ORIGINS),
            "edited": _boolean,
            "from_node": _string,
        },
    )
    if x.get("origin") == "added" and "from_node" in x:
        raise ContractError(_join(path, "from_node"), "an added node cannot come from a model node")


def _rejected_node(x: Any, path: str) -> None:
    _check_object(x, path, required={"center": _center, "size": _size}, optional={"from_node": _string})


def validate_label(label: Any) -> dict:
    """Check a label document (``lnnode.label/1``); returns it unchanged or raises ContractError."""
    if isinstance(label, dict) and "schema" in label and label["schema"] != LABEL_SCHEMA:
        raise ContractError("schema", f"must be {LABEL_SCHEMA!r}, got {label['schema']!r}")
    _check_object(
        label,
        "",
        required={
            "schema": _const(LABEL_SCHEMA),
            "image": _string,
            "coordinate_system": _const("LPS"),
            "units": _const("mm"),
            "nodes": _list_of(_label_node),
        },
        optional={"rejected": _list_of(_rejected_node), "reviewer": _string, "reviewed_at": _iso8601},
    )
    _no_duplicate_boxes(label["nodes"], "nodes")
    from_nodes = [n["from_node"] for n in [*label["nodes"], *label.get("rejected", [])] if "from_node" in n]
    for name in from_nodes:
        if from_nodes.count(name) > 1:
            raise ContractError("from_node", f"model node {name!r} is used more than once")
    return label


# -- result -------------------------------------------------------------------------------------------
def _result_node(x: Any, path: str) -> None:
    _check_object(
        x,
        path,
        required={"id": _string, "center": _center, "size": _size},
        optional={
            "detection_score": _probability,
            "p_metastasis": _probability,
            "uncertainty": _number(0.0),
            "short_axis_mm": _number(0.0),
            "long_axis_mm": _number(0.0),
            # a 2D image without a pixel spacing (a PNG, JPEG) is measured in pixels
            "short_axis_px": _number(0.0),
            "long_axis_px": _number(0.0),
            "rules": _map_of(_one_of(RULE_VALUES)),
            "saliency": _string,
        },
    )
    for unit in ("mm", "px"):
        short, long = f"short_axis_{unit}", f"long_axis_{unit}"
        if short in x and long in x and x[short] > x[long] + 1e-6:
            raise ContractError(_join(path, short), f"must not exceed {long}")


def _model_names(x: Any, path: str) -> None:
    def name_or_null(v: Any, p: str) -> None:
        if v is not None:
            _string(v, p)

    _check_object(x, path, required={}, optional={"detector": name_or_null, "classifier": name_or_null})


def _summary(x: Any, path: str) -> None:
    _check_object(
        x,
        path,
        required={"n_nodes": _count},
        optional={"n_suspicious": _count, "n_stage_hint": _one_of(STAGE_HINTS)},
    )


def validate_result(result: Any) -> dict:
    """Check a pipeline result document (``lnnode.result/1``); returns it or raises ContractError."""
    if isinstance(result, dict) and "schema" in result and result["schema"] != RESULT_SCHEMA:
        raise ContractError("schema", f"must be {RESULT_SCHEMA!r}, got {result['schema']!r}")
    _check_object(
        result,
        "",
        required={
            "schema": _const(RESULT_SCHEMA),
            "image": _string,
            "model": _model_names,
            "coordinate_system": _const("LPS"),
            "units": _const("mm"),
            "nodes": _list_of(_result_node),
            "summary": _summary,
        },
        optional={"latencies": _map_of(_number(0.0)), "warnings": _list_of(_string), "positive_class": _string},
    )
    ids = [n["id"] for n in result["nodes"]]
    for i, node_id in enumerate(ids):
        if ids.index(node_id) != i:
            raise ContractError(f"nodes[{i}].id", f"duplicate node id {node_id!r}")
    if result["summary"]["n_nodes"] != len(result["nodes"]):
        raise ContractError(
            "summary.n_nodes", f"is {result['summary']['n_nodes']} but there are {len(result['nodes'])} nodes"
        )
    return result


# -- boxes given to a model (classification requests) --------------------------------------------------
def validate_query_nodes(nodes: Any, path: str = "nodes") -> list:
    """Boxes a client asks a model about: a list of objects with ``center`` and ``size`` (world LPS mm)
    and an optional ``id``. Other fields (a result's or a label's) are ignored, so a client can send
    back the nodes it received. Returns the list or raises ContractError naming the field."""
    if not isinstance(nodes, list):
        raise ContractError(path, f"must be a list of boxes, got {_type_name(nodes)}")
    for i, node in enumerate(nodes):
        p = f"{path}[{i}]"
        if not isinstance(node, dict):
            raise ContractError(p, f"must be an object, got {_type_name(node)}")
        for key, check in (("center", _center), ("size", _size)):
            if key not in node:
                raise ContractError(_join(p, key), "missing required field")
            check(node[key], _join(p, key))
        if "id" in node:
            _string(node["id"], _join(p, "id"))
    ids = [n["id"] for n in nodes if "id" in n]
    if len(set(ids)) != len(ids):
        raise ContractError(path, "node ids must be unique")
    return nodes


# -- JSON ---------------------------------------------------------------------------------------------
def _loads(data: str | bytes) -> Any:
    def no_constants(name: str) -> None:
        raise ContractError("", f"not valid JSON: {name} is not a number")

    try:
        return json.loads(data, parse_constant=no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ContractError("", f"not valid JSON: {e}") from None


def parse_label(data: str | bytes) -> dict:
    """Parse and validate a label JSON document."""
    return validate_label(_loads(data))


def parse_result(data: str | bytes) -> dict:
    """Parse and validate a result JSON document."""
    return validate_result(_loads(data))


def dumps(doc: dict) -> str:
    """Serialise a contract document (strict JSON: NaN/Infinity are refused)."""
    return json.dumps(doc, indent=2, allow_nan=False)


# -- builder ---------------------------------------------------------------------------------------
def make_label(
    image: str,
    nodes: Sequence[dict] = (),
    rejected: Sequence[dict] = (),
    reviewer: str | None = None,
    reviewed_at: str | None = None,
) -> dict:
    """Assemble and validate a label document."""
    label: dict[str, Any] = {
        "schema": LABEL_SCHEMA,
        "image": image,
        "coordinate_system": "LPS",
        "units": "mm",
        "nodes": [dict(n) for n in nodes],
    }
    if rejected:
        label["rejected"] = [dict(n) for n in rejected]
    if reviewer:
        label["reviewer"] = reviewer
    if reviewed_at:
        label["reviewed_at"] = reviewed_at
    return validate_label(label)
