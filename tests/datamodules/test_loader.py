"""Exact mid-epoch resume of the training loader, directly and through Lightning checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import ArithmeticDataModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
    pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero"),
]


class Recorder(L.LightningModule):
    """A linear model that remembers every training batch it sees (as token id lists)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[list[int]]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["input_ids"].tolist())
        return self.layer(batch["input_ids"][:, :1].float()).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        assert "prompt_input_ids" in batch

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _data(tokenizer, num_workers: int = 0, group_by_length: bool = False, num_val: int = 0) -> ArithmeticDataModule:
    return ArithmeticDataModule(
        num_train=38, num_val=num_val, num_test=0, tokenizer=tokenizer, batch_size=4, seed=7,
        num_workers=num_workers, group_by_length=group_by_length,
    )  # fmt: skip  # 10 batches per epoch, the last one partial


def _fit(
    tmp: Path, tokenizer, max_steps: int, accumulate: int, every: int = 0, ckpt: Path | None = None, **kw
) -> list[list[list[int]]]:
    callbacks = []
    if every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp, every_n_train_steps=every, save_top_k=-1))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, max_epochs=-1, accumulate_grad_batches=accumulate,
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        enable_checkpointing=bool(every), num_sanity_val_steps=0, val_check_interval=3 if kw.get("num_val") else None,
    )  # fmt: skip
    model = Recorder()
    trainer.fit(model, datamodule=_data(tokenizer, **kw), ckpt_path=ckpt)
    return model.seen


@pytest.mark.parametrize(
    ("accumulate", "max_steps", "save_at", "kw"),
    [
        (1, 25, 13, {}),  # checkpoint in the middle of epoch 1
        (2, 12, 7, {}),  # 7 optimizer steps = 14 batches, also mid-epoch 1
        (1, 25, 10, {}),  # checkpoint on the last batch of epoch 0
        (1, 16, 4, {"num_workers": 2, "group_by_length": True}),  # worker prefetch does not shift the count
        (1, 16, 6, {"num_val": 8}),  # validation every 3 batches, checkpoint right after one
    ],
)
def test_lightning_resume_sees_exactly_the_remaining_batches(tmp_path, tiny_tokenizer, accumulate, max_steps, save_at, kw):
    full = _fit(tmp_path, tiny_tokenizer, max_steps, accumulate, every=save_at, **kw)
    assert len(full) == max_steps * accumulate
    (ckpt,) = tmp_path.glob(f"*step={save_at}.ckpt")
    resumed = _fit(tmp_path / "resumed", tiny_tokenizer, max_steps, accumulate, ckpt=ckpt, **kw)
    done = save_at * accumulate
    assert resumed == full[done:]
    epoch_start = done - done % 10
    assert resumed[0] != full[epoch_start] or done % 10 == 0  # not simply a restarted epoch


def test_loader_state_round_trip(tiny_tokenizer):
    data = _data(tiny_tokenizer)
    data.setup("fit")
    loader = data.train_dataloader()
    loader.sampler.set_epoch(3)
    batches = [b["input_ids"].tolist() for b in loader]
    iterator = iter(loader)
    for _ in range(4):
        next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_consumed": 4, "batch_size": 4, "num_replicas": 1, "num_samples": 38}

    fresh = _data(tiny_tokenizer).train_dataloader()
    fresh.load_state_dict(state)
    assert len(fresh) == 10  # keeps the full length; Lightning counts the consumed batches itself
    assert [b["input_ids"].tolist() for b in fresh] == batches[4:]
    assert fresh.state_dict()["batches_consumed"] == 10


def test_finished_epoch_resumes_at_the_next_one(tiny_tokenizer):
    loader = _data(tiny_tokenizer).train_dataloader()
    loader.load_state_dict({"epoch": 0, "batches_consumed": 10, "batch_size": 4, "num_replicas": 1, "num_samples": 38})
    assert loader.sampler.epoch == 1
    assert len(list(loader)) == 10


def test_changed_batch_size_warns(tiny_tokenizer):
    loader = _data(tiny_tokenizer).train_dataloader()
    with pytest.warns(UserWarning, match="different"):
        loader.load_state_dict({"epoch": 0, "batches_consumed": 2, "batch_size": 8, "num_replicas": 1, "num_samples": 38})
    assert len(list(loader)) == 8
