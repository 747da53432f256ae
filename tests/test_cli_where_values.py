"""What `rgrid list --where` and `rgrid search --where` make of the VALUE typed.

With the node stopped the CLI reads the store itself; with it running the
filter travels to the bridge as text (client/calls.py list_query: the value
as JSON) and the bridge parses it again (node/bridge/app.py parse_value,
msgspec). A value one parser reads and the other does not answered two
ways: `n<Infinity` matched every record offline and none through the node.
So the CLI reads a value as the bridge does, and refuses the numbers the
bridge cannot read (Infinity, NaN, 1e999, integers past Python's digit
limit) before it asks anyone.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import registrygrid
from registrygrid.cli.values import parse_where
from registrygrid.errors import EX_DATAERR, ValidationError
from registrygrid.home import Home
from registrygrid.node.bridge.app import parse_value as bridge_parse_value
from tests.test_bridge_cli import _running_node

Run = Callable[..., subprocess.CompletedProcess[str]]

# Python refuses to turn a longer digit string into an int (sys.int_max_str_digits,
# 4300 by default); json.loads raised it as a ValueError nobody caught.
TOO_MANY_DIGITS = "1" * 5000
NON_FINITE = ["Infinity", "-Infinity", "NaN", "1e999", "-1e999"]


@pytest.fixture(scope="module")
def clusters_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with three clusters c0..c2 whose field n is 0, 1, 2."""
    path = tmp_path_factory.mktemp("where") / "home"
    Home(path).init(org_name="acme")
    with registrygrid.open(path) as grid:
        for i in range(3):
            grid.put("grid.clusters", "cluster", {"name": f"c{i}", "n": i}, id=f"c{i}")
    return path


def listed(rgrid: Run, home: Path, where: str) -> subprocess.CompletedProcess[str]:
    return rgrid("list", "grid.clusters", "--where", where, "--json", home=home)


def count(rgrid: Run, home: Path, where: str) -> int | str:
    """How many clusters the filter lists, or the error it was refused with."""
    proc = listed(rgrid, home, where)
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {proc.stderr.strip()}"
    return len(json.loads(proc.stdout)["items"])


def assert_refused_naming(proc: subprocess.CompletedProcess[str], shown: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == EX_DATAERR, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error[validation_failed]: --where"), proc.stderr
    assert shown in proc.stderr, proc.stderr


def test_a_where_integer_past_pythons_digit_limit_is_refused_as_invalid_input_not_a_traceback(
        clusters_home: Path, rgrid: Run) -> None:
    for args in (["list", "grid.clusters", "--where", f"n={TOO_MANY_DIGITS}"],
                 ["search", "--where", f"fields.n:eq:{TOO_MANY_DIGITS}"],
                 ["search", "--where", f"fields.n:in:1,{TOO_MANY_DIGITS}"]):
        refused = rgrid(*args, home=clusters_home)
        assert_refused_naming(refused, "5000 digits")


def test_a_set_integer_past_pythons_digit_limit_is_refused_as_invalid_input_and_nothing_is_written(
        clusters_home: Path, rgrid: Run) -> None:
    # --set reads its VALUE with the same json.loads, and crashed the same way.
    refused = rgrid("put", "grid.clusters", "cluster", "--id", "big", "--set", "name=big",
                    "--set", f"n={TOO_MANY_DIGITS}", home=clusters_home)
    assert "Traceback" not in refused.stderr, refused.stderr
    assert refused.returncode == EX_DATAERR and refused.stderr.startswith("error[validation_failed]: value"), \
        refused.stderr
    assert count(rgrid, clusters_home, "name=big") == 0


@pytest.mark.parametrize("value", NON_FINITE)
def test_a_non_finite_where_number_is_refused_naming_it_with_the_node_stopped(
        clusters_home: Path, rgrid: Run, value: str) -> None:
    # It listed every record: Python's json.loads reads Infinity, NaN and
    # 1e999 (inf), and every number is less than inf.
    assert_refused_naming(listed(rgrid, clusters_home, f"n<{value}"), value)
    assert_refused_naming(rgrid("search", "--where", f"fields.n:lt:{value}", home=clusters_home), value)


@pytest.mark.parametrize("value", [*NON_FINITE, TOO_MANY_DIGITS])
def test_a_json_option_holding_a_number_no_node_reads_is_refused_not_read_as_python_reads_it(
        clusters_home: Path, rgrid: Run, value: str) -> None:
    # --filter (and --query, --boost, --file) went through json.loads as it
    # is: Infinity and 1e999 were inf offline (every cluster listed), and a
    # 5000-digit integer was a traceback.
    refused = rgrid("search", "--filter", f'{{"field": "fields.n", "lt": {value}}}', home=clusters_home)
    assert "Traceback" not in refused.stderr, refused.stderr
    assert refused.returncode != 0 and refused.stderr.startswith("error["), refused.stderr
    assert "--filter" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_a_where_value_gets_the_same_answer_whether_or_not_the_node_runs(tmp_path: Path, rgrid: Run) -> None:
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    with registrygrid.open(home) as grid:
        for i in range(3):
            grid.put("grid.clusters", "cluster", {"name": f"c{i}", "n": i}, id=f"c{i}")
    wheres = [f"n<{v}" for v in NON_FINITE] + [f"n>{v}" for v in NON_FINITE] + [
        f"n={TOO_MANY_DIGITS}",
        "n>-99999999999999999999", "n<1e308", "n>=1e-999", 'n!="Infinity"', "name=c1", "n=1.0", "n<2"]
    stopped = {where: count(rgrid, home, where) for where in wheres}
    with _running_node(home):
        running = {where: count(rgrid, home, where) for where in wheres}
    assert running == stopped
    # ... and the answer is a refusal for the numbers a node cannot read.
    for where in wheres[:2 * len(NON_FINITE) + 1]:
        assert str(stopped[where]).startswith(f"exit {EX_DATAERR}: error[validation_failed]"), stopped[where]
    assert [stopped[w] for w in wheres[2 * len(NON_FINITE) + 1:]] == [3, 3, 3, 3, 1, 1, 2]


def _same(a: Any, b: Any) -> bool:
    """Equal and of one type all the way down (1 == 1.0 == True to Python; NaN != NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


_numbers = st.one_of(st.integers().map(str), st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
                     st.from_regex(r"-?[0-9]{1,400}(\.[0-9]{1,5})?([eE][-+]?[0-9]{1,4})?", fullmatch=True))
_values = st.one_of(_numbers, st.text(max_size=20), st.sampled_from(["true", "null", '"Infinity"', "[1,NaN]"]),
                    st.lists(_numbers, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"))


@given(_values)
@example("Infinity")
@example("NaN")
@example("1e999")
@example("-1e999")
@example(TOO_MANY_DIGITS)
@example('"\\ud800"')
@example("[" * 5000)
def test_every_where_value_the_cli_accepts_reaches_the_bridge_as_the_same_value(raw: str) -> None:
    # The CLI sends the value as JSON (client/calls.py list_query) and the
    # bridge parses that back: both must hold one value, or the node's answer
    # differs from the one the CLI gives when it reads the store itself.
    try:
        _, _, value = parse_where(f"n={raw}")
    except ValidationError:
        return  # refused before anyone is asked, node running or not
    assert not (isinstance(value, float) and not math.isfinite(value))
    assert _same(bridge_parse_value(json.dumps(value)), value), (raw, value)
    # ... and it is what the bridge makes of the value as typed (parse_where
    # drops the blanks around an operator, so compare what it read).
    if raw == raw.strip():
        assert _same(value, bridge_parse_value(raw)), (raw, value)
