"""Every shipped recipe builds the real objects it names (LightningCLI with run=False)."""

from pathlib import Path

import pytest

from locations import REASONING_DATA, REPO
from zoo.cli import build_cli

RECIPES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*/*.yaml")
                 if p.parent.name not in ("methods", "compare", "data", "studies"))  # fragments and tool configs
# (methods, compare, data: below; studies: tests/tools/test_study.py)
RECIPES = ["configs/quickstart.yaml", *[r for r in RECIPES if not r.startswith("configs/distributed")]]
METHODS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs" / "methods").glob("*.yaml"))


def build(tiny_llama_dir: Path, *configs: str, extra: tuple[str, ...] = ()):
    args = [arg for config in configs for arg in ("--config", str(REPO / config))]
    args += ["--model.model", str(tiny_llama_dir), *extra]
    if "ReasoningDataModule" in "".join((REPO / c).read_text() for c in configs):
        if not REASONING_DATA.is_dir():
            pytest.skip(f"reasoning data not found at {REASONING_DATA}")
        args += ["--data.init_args.data_dir", str(REASONING_DATA)]
    return build_cli(args, run=False)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds(recipe, tiny_llama_dir):
    cli = build(tiny_llama_dir, recipe)
    assert cli.model.method is not None
    assert cli.datamodule.tokenizer is cli.model.tokenizer  # linked on instantiation
    assert cli.trainer.max_steps > 0 or cli.trainer.max_epochs > 0


@pytest.mark.parametrize("method_config", METHODS)
def test_method_blocks_switch_the_method(method_config, tiny_llama_dir):
    cli = build(tiny_llama_dir, "configs/quickstart.yaml", method_config)
    expected = method_config.rsplit("/", 1)[-1].removesuffix(".yaml")
    from zoo.plugins import method_name

    assert method_name(cli.model.method) == expected


@pytest.mark.parametrize("method", ["full", "s2ft", "lora", "dora", "sparse"])
def test_quickstart_fits_with_every_builtin_method(method, tiny_llama_dir, tmp_path):
    """`lightning fit --config configs/quickstart.yaml --model.method <name>` (tiny model, 3 steps)."""
    cli = build_cli(
        ["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--model.model", str(tiny_llama_dir),
         "--model.method", method, "--data.init_args.num_train", "24", "--data.init_args.max_length", "256",
         "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false", "--model.adapter_dir", str(tmp_path / "adapter")]  # fmt: skip
    )
    from zoo.plugins import method_name

    assert method_name(cli.model.method) == method and cli.trainer.global_step == 3
    assert (tmp_path / "adapter" / "adapter.json").is_file()


COMPARISONS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs" / "compare").glob("*.yaml"))


@pytest.mark.parametrize("comparison", COMPARISONS)
def test_comparison_configs_parse_and_name_every_method(comparison):
    """`python -m tools.compare --config <file>`: the suite parses, its recipe exists, all five methods run."""
    from jsonargparse import ArgumentParser

    from tools.compare import compare

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(compare)
    config = parser.parse_path(str(REPO / comparison))
    assert (REPO / config.recipe).is_file()
    assert {c.method for c in config.contenders} == {"full", "s2ft", "lora", "dora", "sparse"}
    assert all(len(c.lrs) == 3 for c in config.contenders)


@pytest.mark.parametrize("data_config", sorted((REPO / "configs" / "data").glob("*.yaml")))
def test_test_set_configs_need_no_training_files(data_config, tmp_path):
    """The data blocks for tools/evaluate.py read test sets only (a data_dir without train/ folders),
    or generate them (the quickstart's problems)."""
    import shutil

    import yaml

    from datamodules import ReasoningDataModule
    from tiny_models import tiny_tokenizer

    spec = yaml.safe_load(data_config.read_text())
    if spec["class_path"] == "datamodules.ArithmeticDataModule":  # generated: no files at all
        from datamodules import ArithmeticDataModule

        data = ArithmeticDataModule(**spec["init_args"], tokenizer=tiny_tokenizer())
        assert len(data.examples("test")) == 200
        recipe = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())["data"]["init_args"]
        if data.shapes == recipe["shapes"]:  # the quickstart's own held-out problems, so its adapters are scored alike
            quickstart = ArithmeticDataModule(**recipe, tokenizer=tiny_tokenizer())
            assert data.problems("test") == quickstart.problems("test")
        return
    if not REASONING_DATA.is_dir():
        pytest.skip(f"reasoning data not found at {REASONING_DATA}")
    domain = spec["init_args"]["test_tasks"][0].split("/")[0]
    shutil.copytree(REASONING_DATA / domain / "test", tmp_path / domain / "test")
    args = {**spec["init_args"], "data_dir": str(tmp_path), "tokenizer": tiny_tokenizer(), "max_eval_records": 3,
            "max_length": 4096}  # the tiny tokenizer spends a token per byte
    data = ReasoningDataModule(**args)
    examples = data.examples("test")
    assert {e.task for e in examples} == {t.split("/")[1] for t in spec["init_args"]["test_tasks"]}
