"""Bad input gets a clear error: one parametrised test over every family's bad inputs.

Each case is ``(id, call, error type, pattern)``: ``call()`` must raise ``error type`` with a message
matching ``pattern`` that names what was expected and what came. The cases live beside their family in
``tests/bad_inputs_*.py`` (plain lists, no tests of their own) and are collected here, so one run shows
the whole book's input contract.
"""
import importlib
from pathlib import Path

import pytest

FAMILIES = sorted(p.stem for p in Path(__file__).parent.glob("bad_inputs_*.py"))
CASES = [case for family in FAMILIES for case in importlib.import_module(family).CASES]


def test_there_are_at_least_forty_bad_inputs_across_the_families():
    assert len(CASES) >= 40 and len({case[0] for case in CASES}) == len(CASES), "ids must be unique"
    assert len(FAMILIES) >= 5, FAMILIES


@pytest.mark.parametrize("call, error, pattern", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_raises_a_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
