"""The usage store's closed vocabularies match what the data plane produces.

Monitoring and storage may not import the data plane, so the path → API kind table lives
twice: `fastproxy.dataplane.request.API_PATHS` (which routes requests) and
`fastproxy.storage.usage_kinds.API_BY_PATH` (which names them in records). The outcomes
the data plane assigns must all be ones the `outcome` filter accepts. A path or an
outcome added on one side only fails here, not as records that no filter can select.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fastproxy.dataplane.request import API_PATHS
from fastproxy.storage.usage_kinds import API_BY_PATH, API_KINDS, OUTCOMES
from fastproxy.storage.usage_queries import FilterError, parse_filters

DATAPLANE = Path(__file__).resolve().parents[2] / "fastproxy" / "dataplane"


def test_the_two_path_tables_agree() -> None:
    routed = {path.decode("latin-1"): route.kind for path, route in API_PATHS.items()}
    assert routed == API_BY_PATH
    assert sorted(API_KINDS) == sorted(set(API_BY_PATH.values()))


def _assigned_outcomes() -> set[str]:
    """Every string literal in the value of an assignment to ``<something>.outcome``
    anywhere in the data plane (conditional expressions included)."""
    found: set[str] = set()
    for path in DATAPLANE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            if any(isinstance(t, ast.Attribute) and t.attr == "outcome" for t in targets):
                found |= {
                    c.value
                    for c in ast.walk(value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
    return found


def test_every_outcome_the_data_plane_assigns_is_filterable() -> None:
    assigned = _assigned_outcomes()
    assert {"ok", "client_aborted", "truncated"} <= assigned  # the scan finds them at all
    assert assigned <= set(OUTCOMES)
    for outcome in OUTCOMES:
        assert parse_filters({"outcome": [outcome]}).outcome == outcome
    with pytest.raises(FilterError) as err:
        parse_filters({"outcome": ["aborted"]})
    assert err.value.param == "outcome"
