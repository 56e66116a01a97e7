"""tools/serve.py: a mixed-adapter batch answers every request as that adapter fused alone."""

from __future__ import annotations

import json

import pytest
import torch
from hf_generate import hf_greedy
from tiny_adapters import METHODS
from tiny_models import tiny_tokenizer

from tools.serve import Request, generate_mixed, serve
from zoo.adapter import AdapterError
from zoo.inference import MixedAdapterModel, encode_prompts, hooks_for

PROMPTS = ["hello", "the sea is", "a", "12 + 7 =", "once upon a time", "xyz", "Q:", "ok then"]
NEW_TOKENS = 5


def fused_answer(tiny, adapter, prompt):
    model = tiny.fresh()
    if adapter is not None:
        hooks_for(adapter).ftzoo_fuse_adapter(model=model, adapter=adapter, scale=1.0)
    tokenizer = tiny_tokenizer()
    tokens, logits = hf_greedy(
        model, tokenizer, encode_prompts(tokenizer, [prompt], False, "cpu"), NEW_TOKENS, True
    )
    return tokens[0].tolist(), logits[0]


def assert_as_fused(tiny, adapters, requests, answers):
    for request, answer in zip(requests, answers):
        tokens, logits = fused_answer(tiny, adapters.get(request.adapter), request.prompt)
        assert answer.tokens == tokens[: len(answer.tokens)], request
        torch.testing.assert_close(answer.logits, logits[: len(answer.tokens)], atol=2e-5, rtol=1e-4)


def server_with(tiny, adapters):
    server = MixedAdapterModel(tiny.fresh(), tiny.info)
    for name, adapter in adapters.items():
        server.add_adapter(name, adapter)
    return server


@pytest.mark.parametrize("method", METHODS)
def test_mixed_batch_equals_each_adapter_fused_alone(tiny, method):
    adapters = {f"{method}-{seed}": tiny.adapter(method, seed) for seed in range(3)}
    names = [*adapters, None]
    requests = [Request(p, names[i % len(names)]) for i, p in enumerate(PROMPTS)]
    server = server_with(tiny, adapters)
    answers = generate_mixed(server, tiny_tokenizer(), requests, batch_size=8, max_new_tokens=NEW_TOKENS, logits=True)
    assert_as_fused(tiny, adapters, requests, answers)


def test_one_batch_mixes_every_method(tiny):
    adapters = {m: tiny.adapter(m, 7) for m in METHODS}
    names = [*adapters, None]
    requests = [Request(PROMPTS[i % len(PROMPTS)], names[i % len(names)]) for i in range(2 * len(names))]
    answers = generate_mixed(server_with(tiny, adapters), tiny_tokenizer(), requests, 16, NEW_TOKENS, logits=True)
    assert_as_fused(tiny, adapters, requests, answers)


@pytest.mark.parametrize("rows_per_adapter", [1, 2, 3])
def test_column_deltas_are_batched_into_one_plan(tiny, rows_per_adapter):
    adapters = {f"m{seed}": tiny.adapter("merged", seed) for seed in range(4)}  # S²FT-shaped columns
    server = server_with(tiny, adapters)
    names = [n for n in adapters for _ in range(rows_per_adapter)][:-1] + [None]  # uneven rows, one base row
    requests = [Request(PROMPTS[i % len(PROMPTS)], n) for i, n in enumerate(names)]
    with server.assign(names):
        plan = server._plans["model.layers.0.mlp.down_proj"]
        plan.build()  # what the first decoding step does
        assert plan.columns is not None and not plan.rest.groups
    answers = generate_mixed(
        server, tiny_tokenizer(), requests, batch_size=len(names), max_new_tokens=NEW_TOKENS, logits=True
    )
    assert_as_fused(tiny, adapters, requests, answers)


@pytest.mark.parametrize("rows_per_adapter", [1, 2])
def test_low_rank_deltas_of_lora_and_dora_are_batched_into_one_plan(tiny, rows_per_adapter):
    """LoRA and DoRA adapters of several ranks, one batch: their low-rank terms (and DoRA's rescaled
    base output) run as one pair of batched matmuls per module, and each answer is the fused model's."""
    from tiny_adapters import train_adapter

    from plugins.lora import DoRA, LoRA

    adapters = {"l0": tiny.adapter("lora", 0), "d0": tiny.adapter("dora", 0), "d1": tiny.adapter("dora", 1)}
    adapters["l4"] = train_adapter(LoRA(r=4, alpha=8, dropout=0.0), tiny.model, tiny.info, seed=4)  # other ranks
    adapters["d2"] = train_adapter(DoRA(r=2, alpha=4, dropout=0.0), tiny.model, tiny.info, seed=5)
    server = server_with(tiny, adapters)
    names = [n for n in adapters for _ in range(rows_per_adapter)][:-1] + [None]  # uneven rows, one base row
    with server.assign(names):
        plan = server._plans["model.layers.0.self_attn.v_proj"]
        plan.build()
        assert plan.low_rank is not None and not plan.rest.groups and plan.low_rank.stacked.rescale is not None
    requests = [Request(PROMPTS[i % len(PROMPTS)], n) for i, n in enumerate(names)]
    answers = generate_mixed(
        server, tiny_tokenizer(), requests, batch_size=len(names), max_new_tokens=NEW_TOKENS, logits=True
    )
    assert_as_fused(tiny, adapters, requests, answers)


@pytest.mark.parametrize("rows_per_adapter", [1, 3])
def test_sparse_deltas_are_batched_into_one_plan(tiny, rows_per_adapter):
    """Sparse-mask adapters beside LoRA and S²FT-shaped ones, rows uneven, some rows on the base:
    the sparse deltas of each module run as one block-diagonal product, and each answer is the
    fused model's (prefill and decoding both fit the batched product here)."""
    from tiny_adapters import train_adapter

    from plugins.sparse import SparseMask
    from zoo.inference.mixed import SparsePlan

    adapters = {f"s{seed}": tiny.adapter("sparse", seed) for seed in range(3)}
    adapters["dense"] = train_adapter(SparseMask(density=0.2, strategy="random"), tiny.model, tiny.info, seed=3)
    adapters |= {"l0": tiny.adapter("lora", 0), "m0": tiny.adapter("merged", 0)}
    server = server_with(tiny, adapters)
    names = [n for n in adapters for _ in range(rows_per_adapter)]
    names.remove("s1")  # s1 one row short (padded; with one row each: not in the batch)
    names = [None, *names, None]  # two base rows
    sparse = 4 if rows_per_adapter > 1 else 3
    with server.assign(names):
        plan = server._plans["model.layers.0.mlp.down_proj"]
        plan.build()
        assert isinstance(plan.sparse, SparsePlan) and plan.sparse.stacked.adapters == sparse
        assert len(plan.sparse.loop.groups) == sparse and not any(hasattr(d, "sparse") for _, d in plan.rest.groups)
    requests = [Request(PROMPTS[i % len(PROMPTS)], n) for i, n in enumerate(names)]
    answers = generate_mixed(
        server, tiny_tokenizer(), requests, batch_size=len(names), max_new_tokens=NEW_TOKENS, logits=True
    )
    assert_as_fused(tiny, adapters, requests, answers)


@pytest.mark.parametrize(
    ("tokens", "dtype"),
    [(1, torch.float32), (2, torch.float32), (40, torch.float32), (1, torch.bfloat16), (40, torch.bfloat16)],
)
def test_sparse_plan_equals_each_adapter_alone(tiny, tokens, dtype):
    """One module's plan against each sparse delta on its own rows (float32 rounding; a bf16 base
    to its rounding), batched for a few tokens and one adapter at a time past
    ``SPARSE_BATCH_WIDTH`` (40 tokens)."""
    from zoo.inference import mixed

    server = MixedAdapterModel(tiny.fresh().to(dtype), tiny.info)
    for seed in range(3):
        server.add_adapter(f"s{seed}", tiny.adapter("sparse", seed))
    names = ["s2", None, "s0", "s0", "s2", "s0"]  # s1 not in the batch, s0 three rows, s2 two
    module = "model.layers.1.self_attn.q_proj"
    with server.assign(names):
        plan = server._plans[module]
    plan.build()
    assert isinstance(plan.sparse, mixed.SparsePlan)
    base = server.model.get_submodule(module)
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(len(names), tokens, base.in_features, generator=g).to(dtype)
    y = torch.randn(len(names), tokens, base.out_features, generator=g).to(dtype)
    expected = y.to(torch.float32, copy=True)
    for i, name in enumerate(names):
        if name is not None:
            expected[i] += server.adapters[name][module](x[i]).float()
    calls = []
    loop = plan.sparse.loop
    plan.sparse.loop = lambda *args: calls.append(1) or loop(*args)
    got = plan(x, y.clone())
    assert got.dtype == dtype
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got.float(), expected, **tolerance)  # bf16: y + its rounded change
    assert bool(calls) == (3 * tokens > mixed.SPARSE_BATCH_WIDTH)


def test_removing_adapters_unhooks_the_base(tiny):
    server = server_with(tiny, {"a": tiny.adapter("merged", 0)})
    assert server._hooks
    server.remove_adapter("a")
    assert not server._hooks
    assert not any(m._forward_hooks for m in server.model.modules())


def test_serve_tool_reads_and_writes_jsonl(tiny, tmp_path):
    paths = [f"a={tiny.saved('full', tmp_path / 'a', 0)}", f"b={tiny.saved('merged', tmp_path / 'b', 1)}"]
    lines = [
        {"prompt": "hello", "adapter": "a", "max_new_tokens": 3},
        {"prompt": "the sea", "adapter": None},
        {"prompt": "xyz", "adapter": "b", "max_new_tokens": 4},
    ]
    (tmp_path / "requests.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    rows = serve(
        paths, str(tmp_path / "requests.jsonl"), str(tmp_path / "answers.jsonl"), batch_size=2, max_new_tokens=2
    )
    written = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert written == rows and [r["adapter"] for r in written] == ["a", None, "b"]
    assert [len(r["tokens"]) <= n for r, n in zip(written, [3, 2, 4])] == [True] * 3
    tokens, _ = fused_answer(tiny, tiny.adapter("merged", 1), "xyz")
    assert written[2]["tokens"] == tokens[: len(written[2]["tokens"])]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "hi", "adapter": "nope"}', "adapter 'nope' is not loaded"),
        ('{"prompt": 3}', "string 'prompt'"),
        ('{"prompt": ""}', "prompt is empty"),
        ('{"prompt": "hi", "max_new_tokens": 0}', "positive integer"),
        ("not json", "not JSON"),
    ],
)
def test_serve_refuses_bad_requests_and_writes_nothing(tiny, tmp_path, line, message):
    adapter = f"a={tiny.saved('merged', tmp_path / 'a', 0)}"
    (tmp_path / "requests.jsonl").write_text('{"prompt": "fine", "adapter": "a"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        serve([adapter], str(tmp_path / "requests.jsonl"), str(tmp_path / "answers.jsonl"))
    assert not (tmp_path / "answers.jsonl").exists()


def test_serve_refuses_bad_adapters_and_writes_nothing(tiny, other_base, tmp_path):
    (tmp_path / "requests.jsonl").write_text('{"prompt": "fine"}\n')
    out = tmp_path / "answers.jsonl"
    good = f"a={tiny.saved('merged', tmp_path / 'a', 0)}"
    with pytest.raises(AdapterError, match="other weights"):
        serve([good, f"o={other_base.saved('merged', tmp_path / 'o', 0)}"], str(tmp_path / "requests.jsonl"), str(out))
    with pytest.raises(FileNotFoundError, match="no such requests file"):
        serve([good], str(tmp_path / "missing.jsonl"), str(out))
    with pytest.raises(AdapterError, match="no such adapter folder"):
        serve([f"m={tmp_path / 'missing'}"], str(tmp_path / "requests.jsonl"), str(out))
    assert not out.exists()


def test_a_batch_must_match_its_assignment(tiny):
    server = server_with(tiny, {"a": tiny.adapter("merged", 0)})
    batch = encode_prompts(tiny_tokenizer(), ["one", "two"], False, "cpu")
    with server.assign(["a"]), pytest.raises(RuntimeError, match="assignment has 1"):
        server.model(**batch)
    with pytest.raises(KeyError, match="nope"), server.assign(["nope"]):
        pass


def test_serve_answers_a_file_or_serves_http_not_both(tmp_path):
    with pytest.raises(ValueError, match="--requests and --output to answer a file, or --port"):
        serve(["a=x"], str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), port=8000)
    with pytest.raises(ValueError, match="--requests and --output to answer a file, or --port"):
        serve(["a=x"], str(tmp_path / "in.jsonl"))


def test_each_request_gets_its_adapters_template_and_system_prompt(tiny):
    from dataclasses import replace

    chat = replace(tiny.adapter("merged", 0), info={"prompt_style": "chat", "system_prompt": ""})
    server = server_with(
        tiny, {"chat": chat, "alpaca": replace(tiny.adapter("merged", 1), info={"prompt_style": "alpaca"})}
    )
    requests = [Request("hello", "chat"), Request("hello", "alpaca"), Request("hello", None)]
    answers = generate_mixed(
        server, tiny_tokenizer(), requests, max_new_tokens=NEW_TOKENS, template="adapter", logits=True
    )
    tokenizer = tiny_tokenizer()
    batch = encode_prompts(tokenizer, ["hello"] * 3, ["chat", "alpaca", "plain"], "cpu", ["", None, None])
    with server.assign(["chat", "alpaca", None]):
        _, logits = hf_greedy(server.model, tokenizer, batch, NEW_TOKENS, logits=True)
    for answer, expected in zip(answers, logits):
        torch.testing.assert_close(answer.logits, expected[: len(answer.tokens)])
    without = encode_prompts(tokenizer, ["hello"], "chat", "cpu")  # the template's default instead
    assert without["input_ids"].shape[1] != batch["attention_mask"][0].sum()


def test_stacked_blocks_are_kept_per_set_of_adapters_whatever_rows_they_hold(tiny):
    server = server_with(tiny, {f"m{seed}": tiny.adapter("merged", seed) for seed in range(3)})

    def stacks(names):
        with server.assign(names):
            for plan in server._plans.values():
                plan.build()
            return {m: plan.columns.weight for m, plan in server._plans.items() if plan.columns is not None}

    first = stacks(["m0", "m1", "m2"])
    again = stacks(["m2", None, "m0", "m1", "m1"])  # the same set in other rows: the same stacks
    assert first and again.keys() == first.keys() and all(again[m] is first[m] for m in first)
    assert len(server._stacks) == len(first)
    for subset in (["m0", "m1"], ["m1", "m2"], ["m0", "m2"]):  # other sets: new stacks, the oldest dropped
        assert all(weight is not first[m] for m, weight in stacks(subset).items())
        assert len(server._stacks) <= 2 * len(server._hooks)


def test_a_prefill_builds_no_stacks_and_keeps_the_decoding_batchs(tiny):
    """Decoding (one token per row) stacks its set's deltas once; a prefill of another set (several
    tokens per row) runs each adapter on its own rows instead of stacking, so the decoding batch's
    stacks stay kept, and a prefill of a set whose stacks are kept uses them."""
    adapters = {f"m{seed}": tiny.adapter("merged", seed) for seed in range(3)} | {"l0": tiny.adapter("lora", 0)}
    adapters["l1"] = tiny.adapter("lora", 1)
    server = server_with(tiny, adapters)
    decoding = ["m0", "m1", "m2", "l0", "l1"]
    with torch.no_grad(), server.assign(decoding):
        server.model(torch.tensor([[5]] * len(decoding)))
    kept = dict(server._stacks)
    assert kept and {kind for _, kind, _ in kept} == {"columns", "low_rank"}
    with torch.no_grad(), server.assign(["m0", "m2", "l1"]):
        server.model(torch.tensor([[5, 6, 7, 8]] * 3))
        assert all(plan.columns is None and plan.low_rank is None for plan in server._plans.values())
    assert server._stacks.keys() == kept.keys() and all(server._stacks[k] is kept[k] for k in kept)
    with torch.no_grad(), server.assign(["l1", "m2", "m0", "m1", "l0"]):  # the decoding set, other rows
        server.model(torch.tensor([[5, 6, 7, 8]] * 5))
        assert any(plan.columns is not None for plan in server._plans.values())


def test_the_prefix_cache_takes_its_share_of_the_kv_budget(tiny):
    """``kv_cache_gb`` is shared: the prefix cache's tokens and the batch's add up to it, and 0 turns the cache off."""
    from zoo.inference.kv_cache import bytes_per_token
    from zoo.server import ServerConfig

    total = int(0.5 * 2**30) // bytes_per_token(tiny.model.config, torch.float32)
    shared = ServerConfig(kv_cache_gb=0.5, prefix_cache=0.25)
    assert shared.prefix_cache_tokens(tiny.model.config) == int(0.25 * total)
    assert shared.kv_budget(tiny.model.config) + shared.prefix_cache_tokens(tiny.model.config) == total
    off = ServerConfig(kv_cache_gb=0.5, prefix_cache=0)
    assert (off.prefix_cache_tokens(tiny.model.config), off.kv_budget(tiny.model.config)) == (0, total)
    with pytest.raises(ValueError, match="prefix_cache must be at least 0 and below 1"):
        ServerConfig(prefix_cache=1.0)


def test_the_command_line_takes_every_server_option_with_its_one_default(tmp_path):
    """The flags are ServerConfig's fields (defaults included) beside serve's own; the README's spellings
    parse, and ``--print_config`` prints a config that parses back to the same."""
    from dataclasses import fields

    from jsonargparse import capture_parser

    from tools.serve import main
    from zoo.server import ServerConfig

    parser = capture_parser(main)
    defaults = parser.get_defaults()
    for field in fields(ServerConfig):
        if field.name != "adapters":  # serve's own --adapters '[name=path, ...]' fills it
            assert defaults[field.name] == getattr(ServerConfig(), field.name), field.name
    flags = ["--adapters", "[math=runs/math, cs=runs/cs]", "--port", "8000", "--batch_size", "8", "--api_key", "k"]
    flags += ["--host", "0.0.0.0", "--prompt_style", "chat", "--max_tokens_limit", "100", "--kv_cache_gb", "0.5"]
    flags += ["--request_timeout", "5", "--body_timeout", "1", "--max_body_bytes", "999", "--threads", "1"]
    flags += ["--shutdown_timeout", "0.5", "--log_level", "info", "--base_model", "smollm2-135m", "--chat", "true"]
    parsed = parser.parse_args(flags)
    assert (
        parsed.adapters == ["math=runs/math", "cs=runs/cs"]
        and parsed.batch_size == 8
        and parsed.shutdown_timeout == 0.5
    )
    printed = parser.dump(parsed)
    (tmp_path / "serve.yaml").write_text(printed)
    assert parser.dump(parser.parse_args(["--config", str(tmp_path / "serve.yaml")])) == printed


def test_serve_builds_the_server_config_from_its_options(monkeypatch):
    from zoo.server import ServerConfig

    seen = {}
    monkeypatch.setattr("tools.serve.run_server", lambda config, host, port, log_level: seen.update(config=config))
    monkeypatch.setenv("FTZOO_API_KEY", "from-env")
    serve(["a=x"], port=8000, batch_size=4, chat=True, shutdown_timeout=0.5)
    expected = ServerConfig(
        adapters={"a": "x"}, batch_size=4, prompt_style="chat", shutdown_timeout=0.5, api_key="from-env"
    )
    assert seen["config"] == expected
    serve(["a=x"], port=8000, api_key="given")
    assert seen["config"].api_key == "given"
    with pytest.raises(TypeError, match="nope"):
        serve(["a=x"], port=8000, nope=1)


def test_serving_http_reads_no_adapter_tensors_before_the_server_starts(tiny, tmp_path, monkeypatch):
    """The tool hands the adapters to the server unread: its front end reads their ``adapter.json``,
    its decoding loop their tensors, once."""
    folder = tiny.saved("lora", tmp_path / "lora")
    seen = {}
    monkeypatch.setattr("tools.serve.read_adapter", lambda path: pytest.fail(f"the tool read {path}'s tensors"))
    monkeypatch.setattr("tools.serve.run_server", lambda config, host, port, log_level: seen.update(config=config))
    serve([f"a={folder}"], port=8000)
    assert seen["config"].adapters == {"a": str(folder)}
