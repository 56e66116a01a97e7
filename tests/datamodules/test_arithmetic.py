"""ArithmeticDataModule: splits, evaluation API, and generation length with the real tokenizer."""

from __future__ import annotations

from datamodules import ArithmeticDataModule


def test_splits_tasks_and_scoring(tiny_tokenizer):
    data = ArithmeticDataModule(num_train=50, num_val=10, num_test=20, tokenizer=tiny_tokenizer, seed=3)
    assert data.eval_tasks("validate") == data.eval_tasks("test") == ["arithmetic"]
    assert data.max_new_tokens == 48
    data.setup("fit")
    data.setup("test")
    assert [len(data._split(s)) for s in ("train", "validate", "test")] == [50, 10, 20]
    batch = next(iter(data.val_dataloader()))
    assert batch["tasks"] == ["arithmetic"] * 8
    problem = data.problems("val")[0]
    assert batch["answers"][0] == str(problem.answer)
    assert data.is_correct("arithmetic", problem.solution, batch["answers"][0])
    assert data.extract_answer("arithmetic", "so 3 + 4 = 7. The answer is 7.") == "7"
    assert not data.is_correct("arithmetic", "The answer is 1000.", batch["answers"][0])


def test_no_held_out_problems_means_no_eval_tasks(tiny_tokenizer):
    data = ArithmeticDataModule(num_train=5, num_val=0, num_test=0, tokenizer=tiny_tokenizer)
    assert data.eval_tasks("validate") == [] and data.eval_tasks("test") == []


def test_solutions_fit_the_generation_budget_with_smollm2(smollm2_tokenizer):
    for style in ("alpaca", "chat"):
        data = ArithmeticDataModule(num_train=300, num_val=50, num_test=50, tokenizer=smollm2_tokenizer,
                                    prompt_style=style)  # fmt: skip
        data.setup("fit")
        longest = max(len(e.response_ids) for e in data._split("train"))
        assert longest <= data.max_new_tokens  # response + EOS
        prompt = smollm2_tokenizer.decode(data._split("validate")[0].prompt_ids)
        assert prompt.endswith("### Response:\n" if style == "alpaca" else "<|im_start|>assistant\n")
