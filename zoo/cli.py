"""``lightning``: LightningCLI for ftzoo (fit, validate, test, predict).

Method plugins are loaded before the parser is built, so a method can be given by class
path, by short class name, or by its registered name (``--model.method s2ft``).
"""

from __future__ import annotations

import logging
import sys
import warnings

from typing import Any

import yaml
from jsonargparse import set_loader
from jsonargparse._loaders_dumpers import yaml_load
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from zoo.module import FineTuneModule
from zoo.plugins import available_methods

METHOD_FLAG = "--model.method"


def resolve_method_names(args: list[str]) -> list[str]:
    """Replace a registered method name after ``--model.method`` by its class path."""
    methods = available_methods()
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == METHOD_FLAG and i + 1 < len(resolved) and resolved[i + 1] in methods:
            resolved[i + 1] = _class_path(methods[resolved[i + 1]].cls)
        elif arg.startswith(METHOD_FLAG + "=") and arg.split("=", 1)[1] in methods:
            resolved[i] = f"{METHOD_FLAG}={_class_path(methods[arg.split('=', 1)[1]].cls)}"
    return resolved


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def load_config_with_method_names(text: str) -> Any:
    """YAML loader for config files: ``method: s2ft`` or ``class_path: s2ft`` under
    ``model`` become the registered method's class path."""
    value = yaml_load(text)
    model = value.get("model") if isinstance(value, dict) else None
    method = model.get("method") if isinstance(model, dict) else None
    methods = available_methods()
    if isinstance(method, str) and method in methods:
        model["method"] = _class_path(methods[method].cls)
    elif isinstance(method, dict) and method.get("class_path") in methods:
        method["class_path"] = _class_path(methods[method["class_path"]].cls)
    return value


set_loader("ftzoo", load_config_with_method_names, exceptions=(yaml.YAMLError,))


class FtzooCLI(LightningCLI):
    """LightningCLI with the model's tokenizer linked into the data module."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.tokenizer", "data.init_args.tokenizer", apply_on="instantiate")

    def before_fit(self) -> None:
        """Tell the module which checkpoint it resumes from, so that it rebuilds the stored
        selection instead of selecting anew (and scoring calibration batches) first."""
        self.model.resume_from = self.config[self.subcommand].get("ckpt_path")


def build_cli(args: list[str] | None = None, run: bool = True) -> FtzooCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, for use from Python."""
    if args is None:  # LightningCLI reads sys.argv itself; resolve method names in place
        sys.argv[1:] = resolve_method_names(sys.argv[1:])
    else:
        args = resolve_method_names(args)
        # Called from Python (tools, tests): sys.argv belongs to the caller, not to this CLI.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return FtzooCLI(
        FineTuneModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the module builds its optimizer over the trainable parameters only
        parser_kwargs={"parser_mode": "ftzoo"},
    )


def main() -> None:
    """Entry point of the ``lightning`` console script."""
    logging.basicConfig(format="%(message)s")
    for name in ("zoo", "datamodules", "plugins"):  # data summaries and method reports
        logging.getLogger(name).setLevel(logging.INFO)
    build_cli()


if __name__ == "__main__":
    main()
