"""Shared data module behaviour: tokenizer checks, batch contract, masking, sharding, grouping."""

from __future__ import annotations

import types

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from datamodules import ArithmeticDataModule, InstructionDataModule
from datamodules.base import eval_stage
from datamodules.prompts import AlpacaTemplate
from datamodules.sampler import ShardedSampler


def _module(files, tokenizer, **kw) -> InstructionDataModule:
    rows = [files.record(f"Add {i} and 1.", f"{i} + 1 = {i + 1}. The answer is {i + 1}.") for i in range(10)]
    rows[3]["input"] = "Show your work."
    train = files.json("train.json", rows)
    val = files.jsonl("val.jsonl", rows[2:5])
    kw = {"batch_size": 4, "val_files": [str(val)], "test_files": [str(val)], "answer_format": "number", **kw}
    return InstructionDataModule(train_files=[str(train)], tokenizer=tokenizer, **kw)


def test_setup_needs_a_tokenizer_with_eos(files, tiny_tokenizer):
    data = _module(files, None)
    with pytest.raises(ValueError, match="InstructionDataModule has no tokenizer: pass `tokenizer=` or link it"):
        data.setup("fit")
    no_eos = types.SimpleNamespace(eos_token_id=None)
    with pytest.raises(ValueError, match="has no EOS token"):
        _module(files, no_eos).setup("fit")


@pytest.mark.parametrize("style", ["alpaca", "chat"])
def test_train_batch_supervises_exactly_response_and_eos(files, tiny_tokenizer, style):
    data = _module(files, tiny_tokenizer, prompt_style=style)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == batch["labels"].shape
    eos = tiny_tokenizer.eos_token
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        real = mask.bool()
        supervised = labels != -100
        prompt = tiny_tokenizer.decode(ids[real & ~supervised])
        response = tiny_tokenizer.decode(ids[supervised])
        assert response.endswith(f"The answer is {int(response.split()[0]) + 1}.{eos}")
        assert prompt.endswith("### Response:\n" if style == "alpaca" else "<|assistant|>\n")
        assert torch.equal(labels[supervised], ids[supervised])
        assert not real[real.sum() :].any()  # right padding: real tokens first
        assert (labels[~real] == -100).all()


def test_eval_batch_contract(files, tiny_tokenizer_with_pad):
    tokenizer = tiny_tokenizer_with_pad
    data = _module(files, tokenizer, eval_batch_size=3)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    assert batch["answers"] == ["3", "4", "5"]  # stated by each output ("number" format)
    assert batch["tasks"] == ["val"] * 3
    prompts = batch["prompt_input_ids"]
    assert (prompts[:, -1] != tokenizer.pad_token_id).all()  # left padding: every prompt ends at the edge
    assert prompts[[0, 2], 0].tolist() == [tokenizer.pad_token_id] * 2  # shorter than the one with an input
    assert prompts[1, 0] != tokenizer.pad_token_id
    for row, mask in zip(prompts, batch["prompt_attention_mask"]):
        text = tokenizer.decode(row[mask.bool()])
        assert text.startswith("Below is an instruction") and text.endswith("### Response:\n")
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_predict_batches_from_test_sets_or_files(files, tiny_tokenizer):
    data = _module(files, tiny_tokenizer)
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    assert set(batch) == {"prompt_input_ids", "prompt_attention_mask", "tasks", "answers", "prompts"}
    assert batch["prompts"][0] == AlpacaTemplate().render("Add 2 and 1.", "")
    questions = files.jsonl("ask.jsonl", [{"instruction": "Add 5 and 5."}])
    data = _module(files, tiny_tokenizer, predict_files=[str(questions)])
    data.setup("predict")
    (batch,) = list(data.predict_dataloader())
    assert batch["tasks"] == ["ask"] and batch["answers"] == [""]


def test_eval_records_need_something_to_score(files, tiny_tokenizer):
    bad = files.json("bad.json", [{"instruction": "q", "output": ""}])
    data = _module(files, tiny_tokenizer, val_files=[str(bad)])
    with pytest.raises(ValueError, match=f"{bad}: record 0: no 'answer' and an empty 'output'"):
        data.setup("validate")


def test_eval_stage_names():
    assert [eval_stage(s) for s in ("fit", "validate", "sanity_check", "test")] == ["validate"] * 3 + ["test"]
    with pytest.raises(ValueError, match="unknown evaluation stage 'predict'"):
        eval_stage("predict")


@pytest.mark.parametrize("group_by_length", [False, True])
def test_two_simulated_ranks_split_the_training_set(tiny_tokenizer, group_by_length):
    seen = []
    for rank in (0, 1):
        data = ArithmeticDataModule(num_train=25, num_val=0, num_test=0, tokenizer=tiny_tokenizer, batch_size=4,
                                    group_by_length=group_by_length)  # fmt: skip
        data.trainer = types.SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        data.setup("fit")
        loader = data.train_dataloader()
        assert isinstance(loader.sampler, ShardedSampler) and loader.sampler.rank == rank
        assert len(loader) == 4  # 13 records per rank (one padded)
        seen.append([tuple(ids[m.bool()].tolist()) for b in loader for ids, m in zip(b["input_ids"], b["attention_mask"])])
    everything = {tuple(e.prompt_ids + e.response_ids) for e in data._split("train")}
    assert set(seen[0]) | set(seen[1]) == everything
    assert len(seen[0]) + len(seen[1]) == 26


@pytest.mark.parametrize("group", [False, True])
def test_order_seed_reorders_the_same_records_and_nothing_else(tiny_tokenizer, group):
    def trained(order_seed: int) -> tuple[list[tuple], list[tuple]]:
        data = ArithmeticDataModule(num_train=60, num_val=0, num_test=0, tokenizer=tiny_tokenizer, batch_size=4,
                                    group_by_length=group, holdout=8, order_seed=order_seed)  # fmt: skip
        data.setup("fit")
        order = [tuple(ids[m.bool()].tolist()) for b in data.train_dataloader()
                 for ids, m in zip(b["input_ids"], b["attention_mask"])]  # fmt: skip
        held = [tuple(ids[m.bool()].tolist()) for b in data.holdout_dataloader()
                for ids, m in zip(b["input_ids"], b["attention_mask"])]  # fmt: skip
        return order, held

    plain, held = trained(0)
    assert ArithmeticDataModule(seed=42)._order_seed() == 42  # 0 keeps the order the data's own seed gives
    one, held_one = trained(1)
    two, _ = trained(2)
    assert sorted(one) == sorted(plain) == sorted(two)  # the same records (and holdout) ...
    assert held_one == held
    assert one != plain and two != plain and one != two  # ... in other orders
    assert trained(1)[0] == one  # and each order is reproducible


def test_group_by_length_wastes_less_padding(tiny_tokenizer):
    def padding(group: bool) -> int:
        data = ArithmeticDataModule(num_train=400, num_val=0, num_test=0, tokenizer=tiny_tokenizer, batch_size=8,
                                    group_by_length=group)  # fmt: skip
        return sum(int((b["attention_mask"] == 0).sum()) for b in data.train_dataloader())

    assert padding(True) < 0.3 * padding(False)


def test_lightning_cli_links_the_tokenizer_from_the_model(tiny_tokenizer, monkeypatch):
    """The CLI wiring the contract promises: `tokenizer` accepts the model's object after instantiation."""
    from lightning.pytorch.cli import LightningCLI

    from datamodules import FineTuneDataModule

    class TokenizerModel(LightningModule):
        def __init__(self, width: int = 1) -> None:
            super().__init__()
            self.tokenizer = tiny_tokenizer

    class CLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("model.tokenizer", "data.init_args.tokenizer", apply_on="instantiate")

    monkeypatch.setattr("sys.argv", ["ftzoo"])
    args = ["--data=ArithmeticDataModule", "--data.num_train=12", "--data.prompt_style=chat", "--trainer.logger=false"]
    cli = CLI(TokenizerModel, FineTuneDataModule, subclass_mode_data=True, run=False, args=args)
    assert isinstance(cli.datamodule, ArithmeticDataModule)
    assert cli.datamodule.tokenizer is tiny_tokenizer and cli.datamodule.num_train == 12
    cli.datamodule.setup("fit")
    assert len(cli.datamodule.train_dataloader()) == 2


class Scorer(LightningModule):
    """Uses the evaluation API the way zoo.FineTuneModule does, with a perfect fake generator."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.correct: list[bool] = []

    def _score(self, batch: dict) -> None:
        data = self.trainer.datamodule
        assert batch["prompt_input_ids"].shape[0] == len(batch["tasks"]) == len(batch["answers"])
        for task, answer in zip(batch["tasks"], batch["answers"]):
            assert task in data.eval_tasks("validate")
            self.correct.append(data.is_correct(task, f"so the answer is {answer}.", answer))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch)

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        return batch["prompts"]


def test_lightning_validate_test_and_predict(tiny_tokenizer):
    data = ArithmeticDataModule(num_train=4, num_val=5, num_test=7, eval_batch_size=2, tokenizer=tiny_tokenizer)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    model = Scorer()
    trainer.validate(model, datamodule=data)
    trainer.test(model, datamodule=data)
    assert model.correct == [True] * 12
    predictions = trainer.predict(model, datamodule=data)
    assert [p for batch in predictions for p in batch] == [e.prompt for e in data._split("predict")]


def test_predict_batches_exactly_as_test(tiny_tokenizer):
    """The same records in the same padded batches (grouped by length), so that a prediction is
    the answer that ``test`` scored; the PredictionWriter restores file order."""
    data = ArithmeticDataModule(num_train=8, num_val=0, num_test=40, tokenizer=tiny_tokenizer, eval_batch_size=8,
                                group_by_length=True)  # fmt: skip
    data.setup("test")
    test = list(data.test_dataloader())
    predict = list(data.predict_dataloader())
    assert len(test) == len(predict) == 5
    for a, b in zip(test, predict):
        assert torch.equal(a["prompt_input_ids"], b["prompt_input_ids"]) and a["answers"] == b["answers"]
    assert list(data.predict_dataloader().sampler) != list(range(40)), "grouping reorders: the check means something"
