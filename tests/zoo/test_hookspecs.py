"""Every hook declares, where it is declared, when it is called, whether the first result
wins, and who implements it (as pytest's hookspec.py does)."""

import inspect

import pytest

from zoo import hookspecs
from zoo.plugins import REQUIRED_HOOKS


@pytest.mark.parametrize("name", list(hookspecs.iter_hookspec_names()))
def test_each_hook_says_when_whether_first_result_and_who(name):
    doc = " ".join(inspect.getdoc(getattr(hookspecs, name)).split())
    assert "*When*" in doc, name
    first = getattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")["firstresult"]
    assert ("*First result wins." in doc) == first, name
    assert any(who in doc for who in ("Required", "Core default", "Optional")), name
    assert ("Required" in doc) == (name in REQUIRED_HOOKS), name
    assert f"``{name}``" in inspect.getdoc(hookspecs)  # in the module's table
