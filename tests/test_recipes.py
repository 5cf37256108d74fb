"""Recipes (codediff/recipes/*.toml): every shipped file parses and validates, `codediff recipes`
lists them, bad recipes are refused with one line, recipe values sit under typed options, chat
prompts come from the tokenizer's own template, and a recipe run of a tiny random Hugging Face
model goes through generate -> evaluate -> report with the published number beside ours."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest

from codediff import recipe as recipes
from codediff.cli import main
from codediff.errors import UserError

SHIPPED = sorted(recipes.available())
CHAT = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# ----------------------------------------------------------------------------- the files

def test_the_required_models_have_recipes():
    models = {recipes.load(n).model for n in SHIPPED}
    for m in ("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-1.5",
              "Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-v0-Instruct-7B",
              "apple/DiffuCoder-7B-Instruct", "fredzzp/open-dcoder-0.5B",
              "Qwen/Qwen2.5-Coder-7B-Instruct"):
        assert m in models
    assert "fast-dllm-llada-humaneval" in SHIPPED and "dream-coder-7b-instruct" in SHIPPED
    assert recipes.load("diffucoder-7b-instruct").generate["sampler"] == "entropy"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_parses_and_validates(name):
    r = recipes.load(name)
    assert r.name == name and r.tasks and r.settings_source
    for task, t in r.tasks.items():
        assert t.published and t.published["source"]  # where the number is (or would be)
        values = r.settings(task)
        # the references have no token healing: a recipe turns it off
        assert values.get("token_healing") is False
        if t.style == "chat":
            assert t.user
        if r.kind == "dlm" and values.get("sampler") not in ("threshold", "factor",
                                                              "entropy_bounded"):
            gen, block = values["gen_length"], values["block_length"]
            assert gen % block == 0 and values["steps"] % (gen // block) == 0
    # what the sidecar keeps is plain JSON
    json.dumps(r.record(next(iter(r.tasks))))


def test_recipes_command_lists_every_recipe_and_shows_one(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("`")]
    assert {ln.split()[0] for ln in lines} == set(SHIPPED)
    llada = next(ln for ln in lines if ln.startswith("llada-8b-instruct "))
    assert "GSAI-ML/LLaDA-8B-Instruct" in llada and "47" in llada and "EVAL.md" in llada
    assert main(["recipes", "llada-1.5"]) == 0
    assert 'model = "GSAI-ML/LLaDA-1.5"' in capsys.readouterr().out


def write(tmp_path: Path, body: str, name: str = "mine") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(textwrap.dedent(body))
    return p


GOOD = """\
    name = "mine"
    model = "tiny"
    kind = "ar"
    description = "a test recipe"
    settings_source = "this test"
    [generate]
    max_new_tokens = 8
    token_healing = false
    [tasks.humaneval]
    style = "chat"
    user = "Complete:\\n{prompt}"
    assistant_prefix = "```python\\n"
    stop = ["\\n```"]
    published = { metric = "pass@1", phase = "base", value = 50.0, source = "a made-up table" }
    """


@pytest.mark.parametrize("change,message", [
    (("kind = \"ar\"", "kind = \"both\""), "kind 'both'"),
    (("max_new_tokens = 8", "max_new_tokens = 0"), "max_new_tokens 0: must be at least 1"),
    (("max_new_tokens = 8", "gen_length = 8"), "applies to dlm models"),
    (("max_new_tokens = 8", "out = \"x\""), "not a generate option"),
    (("max_new_tokens = 8", "colour = 1"), "not a generate option"),
    (("{prompt}", "{docstring}"), "unknown field {docstring}"),
    (("[tasks.humaneval]", "[tasks.humaneval_x]"), "no such task"),
    (("phase = \"base\"", "phase = \"plus\""), "phase 'plus'"),
    (("value = 50.0", "value = 150"), "a percentage"),
    (("style = \"chat\"", "style = \"completion\""), "belong to chat recipes"),
    (("name = \"mine\"", "name = \"yours\""), "differs from the file name"),
    (("description", "colour = 1\ndescription"), "unknown key 'colour'"),
])
def test_bad_recipes_are_refused_in_one_line(tmp_path, change, message):
    p = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("{", r"\{")):
        recipes.load(str(p))
    recipes.load(str(write(tmp_path, GOOD)))  # and the unchanged file is fine


def test_generate_refuses_an_unknown_recipe_and_a_task_it_lacks(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["generate", "--model", str(tmp_path), "--task", "humaneval", "--out", str(out),
                 "--recipe", "no-such-recipe"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such recipe" in err and "llada-8b-base" in err
    assert main(["generate", "--model", str(tmp_path), "--task", "mbpp", "--out", str(out),
                 "--recipe", "llada-1.5"]) == 2
    assert "no settings for task 'mbpp'" in capsys.readouterr().err
    assert not out.exists()


def test_recipe_values_are_defaults_under_typed_options():
    import argparse

    from codediff import generate_cli

    parser = argparse.ArgumentParser()
    generate_cli.add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--task", "humaneval", "--out", "o.jsonl",
                              "--recipe", "llada-8b-instruct", "--block-length", "64",
                              "--temperature", "0.5"])
    cfg = generate_cli.config_from_args(args)
    assert (cfg.gen_length, cfg.steps, cfg.logits_eos_inf) == (512, 512, True)  # the recipe's
    assert (cfg.block_length, cfg.temperature) == (64, 0.5)  # typed: they win
    assert cfg.token_healing is False and cfg.trust_remote_code is True
    assert cfg.extra["recipe"].name == "llada-8b-instruct"


# ----------------------------------------------------------------------------- a real run

@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a byte-level BPE tokenizer that has a chat template."""
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator([inspect.getsource(textwrap), inspect.getsource(json.encoder)],
                          trainer)
    d = tmp_path_factory.mktemp("chat-llama")
    cfg = transformers.LlamaConfig(vocab_size=t.get_vocab_size(), hidden_size=32,
                                   intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=1024, eos_token_id=0, pad_token_id=1,
                                   bos_token_id=None)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    transformers.PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>",
                                         pad_token="<|pad|>", chat_template=CHAT
                                         ).save_pretrained(d)
    return d


def test_chat_prompt_is_the_tokenizers_template_then_the_response_prefix(chat_model):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(chat_model)
    t = recipes.load("dream-coder-7b-instruct").for_task("humaneval+")
    text = recipes.chat_prompt(tok, t, {"prompt": "def f(x):\n"}, "here")
    assert text.startswith("<|im_start|>user\nPlease provide a self-contained Python script")
    assert "```\ndef f(x):\n\n```\n<|im_end|>\n<|im_start|>assistant\n" in text
    assert text.endswith("passes corresponding tests:\n```python\n")
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    with pytest.raises(UserError, match="has none"):
        recipes.chat_prompt(plain, t, {"prompt": "x"}, "here")


def test_recipe_run_generate_evaluate_report_end_to_end(chat_model, tmp_path):
    recipe = write(tmp_path, GOOD)
    samples = tmp_path / "samples.jsonl"
    assert main(["generate", "--no-progress", "--model", str(chat_model), "--task", "humaneval",
                 "--limit", "2", "--n", "2", "--temperature", "0.8", "--dtype", "float32",
                 "--batch-size", "3", "--recipe", str(recipe), "--out", str(samples)]) == 0
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    meta = json.loads(samples.with_suffix(".meta.json").read_text())
    assert meta["settings"]["recipe"] == str(recipe) and meta["settings"]["token_healing"] is False
    assert meta["settings"]["max_new_tokens"] == 8 and meta["settings"]["temperature"] == 0.8
    assert meta["settings"]["prompt"]["style"] == "chat" and meta["stop_sequences"] == ["\n```"]
    assert meta["recipe"]["name"] == "mine" and meta["recipe"]["published"]["value"] == 50.0
    env = meta["environment"]
    assert env["torch"] and env["transformers"] and env["codediff"] and env["gpu"] is None
    assert meta["batch_size"] == 3
    # tokens/s counts answer tokens only: the chat prompt (far longer) is not in it
    assert all(r["tokens"] <= 8 < r["prompt_tokens"] for r in rows)
    assert meta["totals"]["tokens"] == sum(r["tokens"] for r in rows)
    assert meta["totals"]["tokens_per_second"] == pytest.approx(
        meta["totals"]["tokens"] / meta["totals"]["seconds"])
    # the same command again: complete; another recipe value typed: refused, nothing changed
    assert main(["generate", "--no-progress", "--model", str(chat_model), "--task", "humaneval",
                 "--limit", "2", "--n", "2", "--temperature", "0.8", "--dtype", "float32",
                 "--batch-size", "3", "--recipe", str(recipe), "--out", str(samples)]) == 0
    assert main(["generate", "--no-progress", "--model", str(chat_model), "--task", "humaneval",
                 "--limit", "2", "--n", "2", "--dtype", "float32", "--recipe", str(recipe),
                 "--out", str(samples)]) == 2

    res = tmp_path / "res"
    assert main(["evaluate", "--task", "humaneval", "--samples", str(samples), "--out", str(res),
                 "--k", "1", "--workers", "2", "--no-progress"]) == 0
    results = json.loads((res / "results.json").read_text())
    assert results["generation"]["recipe"]["name"] == "mine"
    assert results["generation"]["environment"]["transformers"]
    from codediff.reports.load import load_result
    from codediff.reports.rows import result_row

    row = result_row(load_result(res))
    ours = results["pass_at_k"]["base"]["pass@1"]
    assert row["published"]["value"] == 0.5 and row["published"]["ours"] == ours
    assert row["published"]["text"] == f"pass@1 base: published 50.0, ours {100 * ours:.1f}"
    assert row["env"]["batch_size"] == 3 and row["env"]["transformers"]

    html = tmp_path / "board.html"
    assert main(["report", "--leaderboard", "--results", str(res), "--out", str(html)]) == 0
    assert "published (recipe)" in html.read_text() and "published 50.0, ours" in \
        html.read_text()
    site = tmp_path / "site"
    assert main(["leaderboard", str(res), "--out", str(site)]) == 0
    rec = json.loads((site / "leaderboard.json").read_text())
    flat = rec["rows"] if isinstance(rec, dict) and "rows" in rec else rec
    assert any(r.get("recipe") == "mine" and r.get("published_value") == 0.5
               for r in (flat if isinstance(flat, list) else []))
