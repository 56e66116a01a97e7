"""End to end: ``FineTuneModule`` fits a tiny model with S²FT through Lightning and writes an
adapter that, fused into a fresh base, computes what the trained model computes."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from plugins.s2ft import S2FT
from zoo import load_adapter
from zoo.loading import load_model
from zoo.module import FineTuneModule
from zoo.plugins import method_hooks

pytestmark = pytest.mark.slow  # trains through Lightning or runs a benchmark end to end


class TinyData(L.LightningDataModule):
    """A few fixed random sequences, repeated: easy to memorise, so the loss must fall."""

    def __init__(self, sequences: int = 4, length: int = 24) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(4, 260, (sequences, length), generator=g)

    def train_dataloader(self) -> DataLoader:
        rows = [
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()} for ids in self.ids
        ] * 8
        return DataLoader(rows, batch_size=2, shuffle=False)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("strategy", ["random", "gradient"])
def test_fit_writes_an_adapter_that_fuses_into_a_fresh_base(tiny_llama_dir, tmp_path, strategy):
    method = S2FT(o_heads=0.5, down_channels=0.25, v_heads=1, strategy=strategy)
    module = FineTuneModule(
        model=str(tiny_llama_dir),
        method=method,
        optimizer=lambda params: torch.optim.AdamW(params, lr=5e-2, weight_decay=0.01),
        lr_decay="constant",
        calibration_batches=2,
    )
    recorder = LossRecorder()
    trainer = L.Trainer(
        max_steps=12,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[recorder],
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
    )
    trainer.fit(module, datamodule=TinyData())
    first, last = sum(recorder.losses[:3]) / 3, sum(recorder.losses[-3:]) / 3
    assert last < first - 0.2, recorder.losses

    adapter = load_adapter(f"{trainer.log_dir}/adapter")
    assert adapter.method == "s2ft" and adapter.selection == module.selection
    fresh = load_model(str(tiny_llama_dir)).eval()
    method_hooks(S2FT(**adapter.config)).ftzoo_load_adapter(model=fresh, adapter=adapter)
    ids = TinyData().ids[:2]
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(input_ids=ids).logits, module.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )
