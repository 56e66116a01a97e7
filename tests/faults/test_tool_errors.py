"""Fault 15: a wrong input to a tool's command line (``python -m tools.<tool>``).

| case                                             | what the user sees                                         |
| ------------------------------------------------ | ---------------------------------------------------------- |
| ``tools.export --adapter /nowhere``              | one line, exit status 1: "error: /nowhere: no such adapter |
|                                                  | folder" (no traceback)                                     |
| ``tools.merge --how ties --density 0``           | "error: ties with density 0 keeps none of ..."             |
| ``tools.evaluate --output`` holding a report     | "error: <dir> already exists; pass --overwrite true ..."   |
| ``tools.paired`` with one prediction file        | "error: give at least two prediction files to compare"     |
| ``tools.switch`` / ``tools.serve`` with a        | "error: /nowhere: no such adapter folder"                  |
| missing adapter                                  |                                                            |
| ``tools.compare`` / ``tools.study`` with no      | "error: give at least one contender (--contenders): there  |
| contenders                                       | is nothing to compare"                                     |
| ``tools.quickstart --overrides                   | "error: no method named 'lorra' is installed. Did you mean |
| '[--model.method, lorra]'``                      | 'lora'? Installed methods: ..."                            |
| ``tools.plot_metrics --run_dir /nowhere``        | "error: /nowhere: no metrics.csv below it (log with        |
|                                                  | CSVLogger)"                                                |
| any of these with ``FTZOO_DEBUG=1``              | the exception with its traceback                           |
"""

from __future__ import annotations

import pytest
from locations import REPO

from tools import compare, evaluate, export, merge, paired, plot_metrics, quickstart, serve, study, switch
from zoo.adapter import AdapterError


@pytest.fixture
def report(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text("{}")
    return tmp_path / "eval"


def cases(tmp_path, report):
    eval_data = ["--eval_data", "datamodules.ArithmeticDataModule", "--eval_data.num_test", "2"]
    recipe = str(REPO / "configs" / "quickstart.yaml")
    return {
        "export": (export.main, ["--adapter", "/nowhere", "--output", str(tmp_path / "model")],
                   "error: /nowhere: no such adapter folder"),
        "merge": (merge.main, ["--adapters", "[/a, /b]", "--output", str(tmp_path / "m"), "--how", "ties",
                               "--density", "0"], "error: ties with density 0 keeps none of any adapter's changes"),
        "evaluate": (evaluate.main, ["--data", "datamodules.ArithmeticDataModule", "--data.num_test", "2",
                                     "--output", str(report)], f"error: {report} already exists; pass --overwrite true"),
        "paired": (paired.main, ["--predictions", f"[{tmp_path / 'a.jsonl'}]"],
                   "error: give at least two prediction files to compare"),
        "switch": (switch.main, ["--adapters", "[/nowhere]"], "error: /nowhere: no such adapter folder"),
        "serve": (serve.main, ["--adapters", "[x=/nowhere]", "--requests", str(tmp_path / "r.jsonl"),
                               "--output", str(tmp_path / "o.jsonl")], "error: /nowhere: no such adapter folder"),
        "compare": (compare.main, ["--recipe", recipe, "--contenders", "[]", *eval_data,
                                   "--output", str(tmp_path / "cmp")], "error: give at least one contender"),
        "study": (study.main, ["study", "--recipe", recipe, "--contenders", "[]", *eval_data,
                               "--output", str(tmp_path / "study")], "error: give at least one contender"),
        "quickstart": (quickstart.main, ["--recipe", recipe, "--run_dir", str(tmp_path / "qs"), "--overrides", "[--model.method, lorra]"],
                       "error: no method named 'lorra' is installed. Did you mean 'lora'?"),
        "plot_metrics": (plot_metrics.main, ["--run_dir", "/nowhere"], "error: /nowhere: no metrics.csv below it"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "tool",
    ["export", "merge", "evaluate", "paired", "switch", "serve", "compare", "study", "quickstart", "plot_metrics"],
)
def test_a_user_error_is_one_line(tool, tmp_path, report, monkeypatch):
    main, args, line = cases(tmp_path, report)[tool]
    monkeypatch.setattr("sys.argv", [f"tools.{tool}", *args])
    monkeypatch.delenv("FTZOO_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(args) if tool in ("export", "merge", "switch", "serve") else main()
    message = str(exit_.value.code)
    assert message.startswith(line) and "\n" not in message, message


def test_ftzoo_debug_shows_the_exception(tmp_path, report, monkeypatch):
    main, args, _ = cases(tmp_path, report)["export"]
    monkeypatch.setenv("FTZOO_DEBUG", "1")
    with pytest.raises(AdapterError, match="/nowhere: no such adapter folder"):
        main(args)
