"""Fault 12: tool options that would do all the work for nothing, refused before any work.

| case                                            | what the user sees                                        | kept on disk   |
| ----------------------------------------------- | --------------------------------------------------------- | -------------- |
| ``tools.merge --how ties --density 0`` (also    | ValueError before any adapter is read: "ties with density | no output      |
| dare, dare_ties, breadcrumbs)                   | 0 keeps none of any adapter's changes: the merge would be |                |
|                                                 | an empty adapter ...; give ... in (0, 1]"                 |                |
| ``tools.evaluate --output`` where a report is   | OutputPathError before the base model loads: "<dir>       | the earlier    |
| (``results.json``)                              | already exists; pass --overwrite true to replace it"      | report         |
| the same with ``--overwrite true``              | it evaluates and replaces the report                      | the new report |
| ``--output`` that cannot be written (``/proc``, | OutputPathError before the base model loads: "cannot      | nothing        |
| a read-only mount) or a file in the way         | write to /proc (...)" / "... is a file, not a folder"     |                |
| a folder of something else                      | "... holds no results.json; refusing to replace it"       | the folder     |
| ``tools.compare`` with a bad contender N (an    | ValueError before the first run: "contender 3 ('typo'):   | nothing        |
| unknown method, arguments it refuses, an empty  | method 'lorra' with config {}: no method named 'lorra' is |                |
| or non-positive learning-rate list), or no      | installed. Did you mean 'lora'? ..." / "... its           |                |
| contenders                                      | learning-rate list (lrs) is empty ..." / "give at least   |                |
|                                                 | one contender ..."                                        |                |
| ``tools.export`` / ``tools.merge`` ``--output`` | OutputPathError before any adapter is read: "cannot      | nothing        |
| that cannot be written (``/proc``, read-only)   | write to /proc (...); choose another output folder"       |                |
| ``tools.compare --output`` that cannot be       | OutputPathError before the first run: "cannot write to    | nothing        |
| written (``/proc``, a read-only mount, a file   | /proc (...); choose another output folder" / "cannot      |                |
| in the way)                                     | create <dir>: <file> is a file"                           |                |
"""

from __future__ import annotations

import pytest

from datamodules import ArithmeticDataModule
from tools import compare as compare_tool
from tools import evaluate as evaluate_tool
from tools import export as export_tool
from tools import merge as merge_tool
from tools.compare import Contender, compare
from tools.evaluate import evaluate
from tools.merge import merge
from zoo.outputs import OutputPathError


@pytest.mark.parametrize("how", ["ties", "dare", "dare_ties", "breadcrumbs"])
def test_a_merge_that_keeps_nothing_is_refused_before_any_adapter_is_read(how, tiny, tmp_path, monkeypatch):
    sources = [str(tiny.saved("s2ft", tmp_path / "a")), str(tiny.saved("s2ft", tmp_path / "b", seed=1))]
    monkeypatch.setattr(merge_tool, "read_adapter", lambda *a: pytest.fail("an adapter was read"))
    with pytest.raises(ValueError, match=rf"^{how} with density 0 keeps none of any adapter's changes: the merge would "
                                         r"be an empty adapter .*in \(0, 1\]"):  # fmt: skip
        merge(sources, str(tmp_path / "merged"), how=how, density=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def eval_data() -> ArithmeticDataModule:
    return ArithmeticDataModule(num_train=0, num_val=0, num_test=4, prompt_style="chat", max_new_tokens=2)


@pytest.fixture
def no_work(monkeypatch):
    """Fail if evaluate starts its work (reads an adapter or loads the base)."""
    refuse = lambda *a, **k: pytest.fail("the evaluation started before the output was checked")
    monkeypatch.setattr(evaluate_tool, "read_adapter", refuse)
    monkeypatch.setattr(evaluate_tool, "load_base", refuse)


def test_evaluate_replaces_an_earlier_report_only_when_asked(tiny, tmp_path, monkeypatch):
    adapter = f"s2ft={tiny.saved('s2ft', tmp_path / 'adapter')}"
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    with monkeypatch.context() as patched:
        patched.setattr(evaluate_tool, "load_base", lambda *a, **k: pytest.fail("the base model was loaded"))
        with pytest.raises(OutputPathError, match=rf"{out} already exists; pass --overwrite true to replace it"):
            evaluate(eval_data(), adapters=[adapter], output=str(out))
    assert (out / "results.json").read_text() == '{"earlier": true}'
    results = evaluate(eval_data(), adapters=[adapter], output=str(out), overwrite=True, max_new_tokens=2)
    assert results["entries"] == ["base", "s2ft"] and "earlier" not in (out / "results.json").read_text()


@pytest.mark.parametrize(
    ("output", "message"),
    [("/proc/ftzoo-eval", r"cannot write to /proc \("), ("file", "is a file, not a folder"),
     ("other", "holds no results.json; refusing to replace it")],
    ids=["unwritable", "file", "other-folder"],
)  # fmt: skip
def test_evaluate_refuses_an_output_it_cannot_write_before_any_work(output, message, tmp_path, no_work):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    target = output if output.startswith("/") else str(tmp_path / output)
    with pytest.raises(OutputPathError, match=message):
        evaluate(eval_data(), adapters=["a=/nowhere"], output=target)
    assert (tmp_path / "file").read_text() == "mine" and [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("contenders", "message"),
    [
        ([Contender("lora-r2", "lora", {"r": 2}, lrs=[1e-3]), Contender("s2ft", "s2ft", {"o_heads": 0.5}),
          Contender("typo", "lorra")],
         (r"^contender 3 \('typo'\): method 'lorra' with config \{\}: no method named 'lorra' is installed\. "
          r"Did you mean 'lora'\?")),
        ([Contender("lora-r2", "lora", {"r": 2}), Contender("bad-args", "s2ft", {"o_heads": -0.1})],
         r"^contender 2 \('bad-args'\): method 's2ft' with config \{'o_heads': -0\.1\}: .*o_heads=-0\.1 is negative"),
        ([Contender("lora", "lora", {"rank": 2})], r"^contender 1 \('lora'\): .*unexpected keyword argument 'rank'"),
        ([Contender("no-rates", "lora", lrs=[])], r"^contender 1 \('no-rates'\): its learning-rate list \(lrs\) is empty"),
        ([Contender("negative", "lora", lrs=[1e-3, -1e-3])], r"learning rates must be positive numbers, got \[-0\.001\]"),
        ([], r"^give at least one contender"),
    ],
    ids=["unknown-method", "refused-argument", "unknown-argument", "no-rates", "negative-rate", "none"],
)  # fmt: skip
def test_compare_checks_every_contender_before_the_first_run(contenders, message, tmp_path, monkeypatch):
    monkeypatch.setattr(compare_tool, "train_one", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(ValueError, match=message):
        compare("recipe.yaml", contenders, eval_data(), str(tmp_path / "cmp"))
    assert not (tmp_path / "cmp").exists()


def test_compare_checks_its_output_before_the_first_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_tool, "train_one", lambda *a, **k: pytest.fail("a run started"))
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutputPathError, match=r"cannot write to /proc \("):
        compare("recipe.yaml", [Contender("lora", "lora")], eval_data(), "/proc/ftzoo-compare")
    with pytest.raises(OutputPathError, match=rf"cannot create {tmp_path}/file/cmp: {tmp_path}/file is a file"):
        compare("recipe.yaml", [Contender("lora", "lora")], eval_data(), str(tmp_path / "file" / "cmp"))
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("tool", ["export", "merge"])
def test_export_and_merge_check_their_output_before_any_work(tool, tiny, tmp_path, monkeypatch):
    sources = [str(tiny.saved("s2ft", tmp_path / "a")), str(tiny.saved("s2ft", tmp_path / "b", seed=1))]
    module = export_tool if tool == "export" else merge_tool
    monkeypatch.setattr(module, "read_adapter", lambda *a, **k: pytest.fail("an adapter was read"))
    with pytest.raises(OutputPathError, match=r"cannot write to /proc \(.*\); choose another output folder"):
        export_tool.export(sources[0], "/proc/ftzoo-model") if tool == "export" else merge(sources, "/proc/ftzoo-merged")
