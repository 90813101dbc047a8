"""Fuzzing the label contract and the infer request params: whatever arrives, the validators either accept a
well-formed document or raise ContractError naming a field; nothing else escapes (no TypeError,
KeyError... that the server would turn into a 500)."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.server.errors import RequestError
from lib.server.params import INFER_PARAMS, check_infer_params
from lnnode.contracts import ContractError, parse_label, validate_label, validate_query_nodes

VALID = {
    "schema": "lnnode.label/1", "image": "case_001", "coordinate_system": "LPS", "units": "mm",
    "nodes": [{"center": [1.0, 2.0, 3.0], "size": [5.0, 6.0, 7.0], "class": "benign", "origin": "model",
               "edited": False, "from_node": "n1"}],
    "rejected": [{"center": [10.0, 2.0, 3.0], "size": [5.0, 5.0, 5.0], "from_node": "n2"}],
    "reviewer": "dr", "reviewed_at": "2026-11-28T10:00:00Z",
}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)  # fmt: skip

PATHS = [
    ("schema",), ("image",), ("nodes",), ("nodes", 0), ("nodes", 0, "center"), ("nodes", 0, "center", 1),
    ("nodes", 0, "size"), ("nodes", 0, "class"), ("nodes", 0, "origin"), ("nodes", 0, "edited"),
    ("nodes", 0, "from_node"), ("rejected",), ("rejected", 0, "size", 2), ("reviewed_at",), ("units",),
]  # fmt: skip


def _set(doc, path, value):
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), json_values, st.booleans())
def test_mutated_labels_are_accepted_or_refused_with_the_field(path, value, delete):
    doc = copy.deepcopy(VALID)
    if delete:
        target = doc
        for key in path[:-1]:
            target = target[key]
        if isinstance(target, dict):
            target.pop(path[-1], None)
        else:
            target.pop(path[-1])
    else:
        _set(doc, path, value)
    try:
        validate_label(doc)
    except ContractError as e:
        assert e.field, "a refusal names the field"


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_document_is_a_label_or_a_contract_error(doc):
    try:
        parse_label(json.dumps(doc))
    except ContractError as e:
        assert e.field is not None
    except ValueError as e:  # NaN / Infinity literals are refused as not strict JSON
        assert "json" in str(e).lower() or "nan" in str(e).lower() or "infinity" in str(e).lower()


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_classification_request_nodes_are_checked(nodes):
    try:
        validate_query_nodes(nodes)
    except ContractError as e:
        assert e.field.startswith("nodes")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*INFER_PARAMS, "unknown"]), json_values, max_size=4))
def test_infer_params_are_accepted_or_refused_with_a_400_naming_them(params):
    try:
        check_infer_params(params)
    except RequestError as e:
        assert e.status_code == 400 and any(name in str(e) for name in params)
