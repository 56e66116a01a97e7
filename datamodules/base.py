"""The shared LightningDataModule: tokenizer, template, masking, batching, loaders and evaluation API.

A concrete data module only says where its records come from and how its answers are scored, by
implementing four methods:

* ``_train_records()`` and ``_eval_records(stage)`` return :class:`~datamodules.records.Record` lists;
* ``eval_tasks(stage)`` names the evaluation tasks in a fixed order, without loading data;
* ``_extractor(task)`` returns the :class:`~datamodules.answers.AnswerExtractor` for a task.

Contract with the LightningModule (``zoo.FineTuneModule``): the batch keys are listed in
``datamodules/collate.py``; ``eval_tasks``, ``is_correct``, ``extract_answer`` and ``max_new_tokens``
are below. The tokenizer is normally linked from the model by the CLI after instantiation.
"""

from __future__ import annotations

import random
from typing import Any, Literal, Optional

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.answers import AnswerExtractor
from datamodules.choices import ChoiceItem, load_choice_items, parse_record
from datamodules.collate import Collator
from datamodules.encode import Example, encode_records
from datamodules.errors import DataError
from datamodules.loader import ResumableDataLoader
from datamodules.prompts import PromptStyle, PromptTemplate, get_template
from datamodules.records import OutputPolicy, PathLike, Record, load_files
from datamodules.sampler import ShardedSampler

EVAL_STAGES = {"fit": "validate", "validate": "validate", "sanity_check": "validate", "test": "test"}


def eval_stage(stage: str) -> str:
    """Normalizes a stage name to ``"validate"`` or ``"test"`` (``"fit"``/``"sanity_check"`` mean validate).

    Raises:
        ValueError: For other stages.
    """
    if stage not in EVAL_STAGES:
        raise ValueError(f"unknown evaluation stage {stage!r}; use 'validate' or 'test'")
    return EVAL_STAGES[stage]


class FineTuneDataModule(LightningDataModule):
    """Base class of ftzoo's data modules (see the module docstring for what subclasses add).

    Args:
        tokenizer: A ``transformers`` tokenizer with an EOS token. Usually linked from the model by the CLI;
            must be set before ``setup``. Its pad token pads batches (EOS when it has none).
        prompt_style: ``"alpaca"`` (the LLM-Adapters template) or ``"chat"`` (the tokenizer's chat template).
        system_prompt: With ``"chat"``: a system turn before every prompt (``""``: an empty one, which keeps a
            template's default system prompt out); ``None`` lets the template decide. Recorded in the adapter,
            so serving uses the same prompt.
        max_length: Most tokens per example (prompt + response + EOS). Longer responses are cut; records
            whose prompt alone fills it are dropped; both are counted and logged per split.
        batch_size: Training batch size per device.
        eval_batch_size: Validation/test/predict batch size per device; defaults to ``batch_size``.
        num_workers: DataLoader worker processes.
        seed: Seed for shuffling (epoch ``e`` uses ``seed + e``) and for any seeded split or subset.
        order_seed: Varies the training order alone, leaving every split and subset as ``seed`` makes
            them: runs that differ only in it see the same records in different orders (a study's
            seeds; ``tools.compare`` passes its ``seed``). 0 keeps the order ``seed`` gives.
        group_by_length: Put records of similar length in the same batch (seeded and deterministic), to
            waste less padding in training and generation.
        max_new_tokens: Generation length for evaluation.
        predict_files: JSON/JSONL files for ``trainer.predict`` (``output`` optional); by default the test sets.
        empty_outputs: What a training record with an empty ``output`` does: ``"error"`` stops with a
            :class:`DataError`; ``"drop"`` leaves it out and logs the dropped record numbers. Evaluation
            records need only an ``answer`` (or an output stating one).
        holdout: Training records to hold out (a seeded sample, never trained on) for model selection,
            such as a learning-rate search: ``holdout_dataloader()`` serves them with labels.
    """

    def __init__(
        self,
        tokenizer: Optional[Any] = None,
        prompt_style: PromptStyle = "alpaca",
        system_prompt: Optional[str] = None,
        max_length: int = 512,
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 42,
        order_seed: int = 0,
        group_by_length: bool = False,
        max_new_tokens: int = 256,
        predict_files: Optional[list[str]] = None,
        empty_outputs: Literal["error", "drop"] = "error",
        holdout: int = 0,
    ) -> None:
        super().__init__()
        if prompt_style not in ("alpaca", "chat"):
            raise ValueError(f"unknown prompt_style {prompt_style!r}; choose 'alpaca' or 'chat'")
        if system_prompt is not None and prompt_style != "chat":
            raise ValueError("system_prompt needs prompt_style='chat'; the alpaca template has no system turn")
        if empty_outputs not in ("error", "drop"):
            raise ValueError(f"unknown empty_outputs {empty_outputs!r}; choose 'error' or 'drop'")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if holdout < 0:
            raise ValueError(f"holdout must be >= 0 records, got {holdout}")
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.order_seed = order_seed
        self.group_by_length = group_by_length
        self.max_new_tokens = max_new_tokens
        self.predict_files = list(predict_files or [])
        self.empty_outputs = empty_outputs
        self.holdout = holdout
        self._splits: dict[str, list[Example]] = {}
        self._train_split: Optional[tuple[list[Record], list[Record]]] = None

    # ----- for subclasses ---------------------------------------------------------------------------

    @property
    def train_output_policy(self) -> OutputPolicy:
        """How subclasses load training files (from ``empty_outputs``); evaluation files use "optional"."""
        return "drop_empty" if self.empty_outputs == "drop" else "required"

    def _train_records(self) -> list[Record]:
        raise NotImplementedError

    def _eval_records(self, stage: str) -> list[Record]:
        """Records of ``stage`` ("validate" or "test"), grouped in ``eval_tasks(stage)`` order."""
        raise NotImplementedError

    def eval_tasks(self, stage: str) -> list[str]:
        """Evaluation task names for ``stage`` ("validate" or "test"), in a fixed order."""
        raise NotImplementedError

    def _extractor(self, task: str) -> AnswerExtractor:
        raise NotImplementedError

    # ----- evaluation API ---------------------------------------------------------------------------

    def extract_answer(self, task: str, generation: str) -> Optional[str]:
        """The answer predicted by ``generation`` for ``task``, or None if it contains none."""
        return self._extractor(task).extract(generation)

    def is_correct(self, task: str, generation: str, answer: str) -> bool:
        """Whether ``generation`` answers ``task`` with the reference ``answer`` (LLM-Adapters rules)."""
        return self._extractor(task).is_correct(generation, answer)

    def reference_answer(self, record: Record) -> str:
        """The record's ``answer``, or, when absent, the answer its ``output`` states (else the output)."""
        if record.answer is not None:
            return record.answer
        if not record.output:
            return ""
        return self._extractor(record.task).extract(record.output) or record.output

    # ----- Lightning hooks --------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Tokenizes the splits ``stage`` needs (once; later calls reuse them).

        Raises:
            ValueError: If no tokenizer was given, or it has no EOS token.
            DataError: For bad data, or a training split left empty by the length limit.
        """
        self._check_tokenizer()
        splits = {"fit": ("train", "validate"), "validate": ("validate",), "test": ("test",)}
        for split in splits.get(stage, (stage,)):
            if split not in self._splits:
                self._splits[split] = self._encode(split)

    def train_dataloader(self) -> DataLoader:
        data = self._split("train")
        sampler = self._sampler(data, self.batch_size, shuffle=True, group=self.group_by_length)
        return ResumableDataLoader(
            data,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=Collator(self._pad_id(), "train"),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> Any:
        return self._eval_loader("validate", "eval")

    def test_dataloader(self) -> Any:
        return self._eval_loader("test", "eval")

    def predict_dataloader(self) -> Any:
        return self._eval_loader("predict", "predict")

    def holdout_dataloader(self) -> DataLoader:
        """The held-out training records (``holdout``), batched with labels like training, in order."""
        data = self._split("holdout")
        if not data:
            raise ValueError("no records are held out: set holdout to a number of training records")
        return DataLoader(data, batch_size=self.eval_batch_size, collate_fn=Collator(self._pad_id(), "train"))

    def choice_items(self, split: str = "test") -> list[ChoiceItem]:
        """The records of an evaluation split ("validate" or "test") as multiple-choice items, for
        log-likelihood scoring: the tasks of :meth:`eval_tasks`, each in file order.

        Items are read from the split's files (:func:`datamodules.choices.load_choice_items`:
        LLM-Adapters records, or records with ``choices`` and ``gold``) when the module names
        them (:meth:`_eval_files`), else parsed from its records.

        Raises:
            DataError: a record that is not multiple choice (its task and record are named).
        """
        split = eval_stage(split)
        files = self._eval_files(split)
        try:
            if files is not None:
                return [item for path, task in files for item in self._eval_subset(load_choice_items(path, task), task)]
            return [parse_record(record) for record in self._eval_records(split)]
        except DataError as err:
            raise DataError(
                f"{type(self).__name__} has a task that is not multiple choice, so it cannot be scored by "
                f"log-likelihood (score it by generation): {err}"
            ) from None

    def prompt_template(self) -> PromptTemplate:
        """The template prompts are rendered in (``prompt_style``, ``system_prompt``; needs the tokenizer)."""
        return get_template(self.prompt_style, self.tokenizer, self.system_prompt)

    def _eval_files(self, split: str) -> Optional[list[tuple[PathLike, str]]]:
        """``(file, task)`` of each evaluation file of ``split``, for subclasses whose evaluation
        records come from files (their extra fields, such as ``choices``, are read from there);
        ``None``: the records are made otherwise."""
        return None

    def _eval_subset(self, items: list[Any], task: str) -> list[Any]:
        """The part of a task's evaluation items the module evaluates (all; a subclass may subsample)."""
        return items

    def examples(self, split: str) -> list[Example]:
        """The tokenized examples of ``split`` ("train", "holdout", "validate", "test" or "predict"),
        in the fixed order the evaluation loaders use (before any length grouping)."""
        return self._split(split)

    # ----- internals --------------------------------------------------------------------------------

    def _check_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise ValueError(
                f"{type(self).__name__} has no tokenizer: pass `tokenizer=` or link it from the model "
                "(LightningCLI: link_arguments('model.tokenizer', 'data.tokenizer' or 'data.init_args.tokenizer', "
                "apply_on='instantiate'))"
            )
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {type(self.tokenizer).__name__} has no EOS token; set `eos_token` first")

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad


    def _records(self, split: str) -> list[Record]:
        if split in ("train", "holdout"):
            train, held_out = self._train_and_holdout()
            return train if split == "train" else held_out
        if split == "predict":
            if self.predict_files:
                return load_files(self.predict_files, output_policy="optional")
            return self._eval_records("test")
        return self._eval_records(split)

    def _train_and_holdout(self) -> tuple[list[Record], list[Record]]:
        """The training records split once into (trained on, held out), by a seeded sample."""
        if self._train_split is None:
            records = self._train_records()
            if self.holdout and self.holdout >= len(records):
                raise DataError(f"holdout={self.holdout} leaves nothing to train on: there are {len(records)} records")
            held = set(random.Random(f"{self.seed}:holdout").sample(range(len(records)), self.holdout))
            self._train_split = (
                [r for i, r in enumerate(records) if i not in held],
                [r for i, r in enumerate(records) if i in held],
            )
        return self._train_split

    def _encode(self, split: str) -> list[Example]:
        records = self._records(split)
        if not records:
            return []
        # training examples are never scored, so their answers are not needed
        answers = [self.reference_answer(r) if split != "train" else "" for r in records]
        if split in ("validate", "test"):
            for record, answer in zip(records, answers):
                if not answer.strip():
                    raise DataError(f"{record.source}: no 'answer' and an empty 'output': nothing to evaluate against")
        with_response = not (split == "predict" and self.predict_files)
        examples, stats = encode_records(
            records, answers, self.tokenizer, self.prompt_template(), self.max_length, split, with_response
        )
        if split == "train" and not examples:
            raise DataError(
                f"train: all {stats.records} records were dropped: no prompt fits max_length={self.max_length}"
            )
        return examples

    def _split(self, split: str) -> list[Example]:
        if split not in self._splits:
            self.setup({"train": "fit", "validate": "validate"}.get(split, split))
        return self._splits[split]

    def _shard_info(self) -> tuple[int, int]:
        """(num_replicas, rank) of this process, from the trainer's distributed sampler settings."""
        trainer = getattr(self, "trainer", None)
        kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
        if not kwargs:
            return 1, 0
        return kwargs["num_replicas"], kwargs["rank"]

    def _sampler(self, data: list[Example], batch_size: int, shuffle: bool, group: bool) -> ShardedSampler:
        num_replicas, rank = self._shard_info()
        lengths = [len(e) for e in data]
        return ShardedSampler(lengths, batch_size, num_replicas, rank, shuffle, self._order_seed(), group)

    def _order_seed(self) -> int:
        """The sampler's seed: ``seed``, or one drawn from (``seed``, ``order_seed``) when the latter is set."""
        if self.order_seed == 0:
            return self.seed
        return random.Random(f"{self.seed}:order:{self.order_seed}").getrandbits(31)

    def _eval_loader(self, split: str, mode: str) -> Any:
        """One loader over all tasks of the split ([] when there is none, which Lightning skips).

        Sharded like training (without shuffling), so under DDP up to ``world_size - 1`` records are
        evaluated twice (the wrap-around padding); every rank then runs the same number of steps.
        """
        data = self._split(split)
        if not data:
            return []
        # predict batches as test does: an answer depends on its prompt only, but in bf16 a batch
        # of other shapes can round a near-tie the other way, so the same batches give exactly
        # the answers test scored; the PredictionWriter puts its rows back in file order
        sampler = self._sampler(data, self.eval_batch_size, shuffle=False, group=self.group_by_length)
        return DataLoader(
            data,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            collate_fn=Collator(self._pad_id(), mode),
            num_workers=self.num_workers,
        )
