"""bf16 on a CPU without native bf16: measured, said before a run, switched by the quickstart, refused by a study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zoo import precision
from zoo.precision import bf16_slowdown, recipe_precision, slow_bf16_advice

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def slow_bf16(monkeypatch):
    """This CPU, as one whose bf16 matmuls are 40x slower than float32."""
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: 40.0)


@pytest.fixture
def fast_bf16(monkeypatch):
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: 0.4)


def test_the_slowdown_is_measured_on_this_cpu():
    assert bf16_slowdown() > 0 and bf16_slowdown() is bf16_slowdown()  # once per process


def test_the_advice_names_the_slowdown_and_the_fix_only_where_bf16_is_slow(slow_bf16):
    advice = slow_bf16_advice("bf16-mixed")
    assert "40x slower than float32" in advice and "--trainer.precision 32-true" in advice
    assert slow_bf16_advice("bfloat16") is not None  # a dtype name too
    assert slow_bf16_advice("32-true") is None and slow_bf16_advice("float32") is None and slow_bf16_advice(None) is None
    assert slow_bf16_advice("bf16-mixed", "cuda") is None  # the measurement is the CPU's


def test_fast_bf16_gets_no_advice(fast_bf16):
    assert slow_bf16_advice("bf16-mixed") is None


def test_the_precision_comes_from_the_arguments_or_the_recipe(tmp_path):
    assert recipe_precision(str(REPO / "configs/quickstart.yaml")) == "bf16-mixed"
    args = ["--trainer.precision", "16-mixed", "--trainer.max_steps", "3", "--trainer.precision", "32-true"]
    assert recipe_precision(str(REPO / "configs/quickstart.yaml"), args) == "32-true"  # the last one given
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  model: x\n")
    assert recipe_precision(str(bare)) is None


def test_a_study_in_bf16_is_refused_where_bf16_is_slow(slow_bf16):
    from tools.study import check_precision

    recipe = str(REPO / "configs/smollm2/commonsense.yaml")
    with pytest.raises(ValueError, match=r"training is in bf16-mixed, but bf16 matmuls run 40x slower.*before its first seed"):
        check_precision(recipe, ["--trainer.precision", "bf16-mixed"], ["float32"])
    with pytest.raises(ValueError, match="evaluation is in bfloat16"):
        check_precision(recipe, ["--trainer.precision", "32-true"], ["float32", "bfloat16"])
    check_precision(recipe, ["--trainer.precision", "32-true"], ["float32", None])  # float32 throughout: fine


def test_the_quickstart_runs_in_float32_where_bf16_is_slow(tiny_llama_dir, tmp_path, monkeypatch, slow_bf16, capsys):
    from tests.tools.test_quickstart import tiny_budget
    from tools.quickstart import quickstart

    monkeypatch.chdir(REPO)
    results = quickstart(run_dir=str(tmp_path / "run"), overrides=tiny_budget(tiny_llama_dir))
    assert results["precision"] == "32-true"
    assert "the quickstart runs in float32" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["precision"] == "32-true"


def test_a_fit_in_bf16_warns_where_bf16_is_slow(tiny_llama_dir, tmp_path, monkeypatch, slow_bf16):
    from tests.tools.test_quickstart import tiny_budget
    from zoo.cli import build_cli

    monkeypatch.chdir(REPO)
    args = ["fit", "--config", "configs/quickstart.yaml", *tiny_budget(tiny_llama_dir), "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
            "--model.adapter_dir", str(tmp_path / "adapter")]  # fmt: skip
    with pytest.warns(UserWarning, match="40x slower than float32"):
        build_cli(args)
