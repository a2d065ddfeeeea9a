"""Hostile inputs to generation (issue 12, item 17) and the `generate` command.

Temperatures at and beyond the edges of floating point, token ids of the wrong
dtype, prompts that are not valid Unicode; and the command line built on top.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modularforge.cli.main import main
from modularforge.files.checkpoint import save_expert, save_shared
from modularforge.mixture.moe import MixtureOfExperts, save_router
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import encode, load_tokenizer
from modularforge.training.generate import generate, generate_text, scale_logits

CONFIG = ModelConfig.tiny()

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def make_model(index: int = 0) -> ModuleTrainerModel:
    torch.manual_seed(0)
    shared = SharedComponents(CONFIG).freeze()
    torch.manual_seed(1 + index)
    model = ModuleTrainerModel(shared, CONFIG, index)
    with torch.no_grad():
        for ffn in model.experts:
            ffn.fc2.weight.mul_(20.0)  # a peaked next-token distribution
    return model


@pytest.fixture(scope="module")
def model() -> ModuleTrainerModel:
    return make_model()


PROMPT = torch.tensor([5, 17, 99, 3])


# --------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("temperature", [1e-45, 5e-324, 1e-300, 1e-38, 1e-30, 1e-12])
def test_tiny_temperatures_sample_the_greedy_tokens(
    model: ModuleTrainerModel, temperature: float
) -> None:
    greedy = generate(model, PROMPT, 6, greedy=True)
    generator = torch.Generator().manual_seed(0)
    sampled = generate(model, PROMPT, 6, temperature=temperature, generator=generator)
    assert torch.equal(sampled, greedy)


@pytest.mark.parametrize("temperature", [1e6, 1e100, 1e308])
def test_huge_temperatures_sample_valid_tokens(
    model: ModuleTrainerModel, temperature: float
) -> None:
    generator = torch.Generator().manual_seed(0)
    out = generate(model, PROMPT, 20, temperature=temperature, generator=generator)
    assert out.shape == (24,) and int(out.min()) >= 0 and int(out.max()) < CONFIG.vocab_size
    assert len(set(out[4:].tolist())) > 10  # close to a uniform draw, not the greedy chain


@pytest.mark.parametrize("temperature", [1e-45, 1.0, 1e300])
def test_scaled_logits_are_finite_at_the_top_and_normalise(temperature: float) -> None:
    logits = torch.tensor([[3.0, 1.0, 3.0, -2.0]], dtype=torch.float32)
    scaled = scale_logits(logits, temperature)
    assert scaled.dtype == torch.float64 and float(scaled.max()) == 0.0
    probs = torch.softmax(scaled, dim=-1)
    assert not bool(probs.isnan().any()) and abs(float(probs.sum()) - 1.0) < 1e-12


def test_old_float32_division_overflowed_at_1e45() -> None:
    """Negative control: what generate used to do turns 1e-45 into NaN probabilities."""
    logits = torch.tensor([[3.0, 1.0, -2.0]], dtype=torch.float32)
    assert bool(torch.softmax(logits / 1e-45, dim=-1).isnan().any())


@pytest.mark.parametrize(
    "temperature",
    [0, 0.0, -0.0, -1e-45, -1.0, float("nan"), float("inf"), float("-inf"), "1", True, None, 1j],
    ids=repr,
)
def test_invalid_temperatures_are_refused(model: ModuleTrainerModel, temperature: object) -> None:
    with pytest.raises(ValueError, match="temperature must be a finite float > 0"):
        generate(model, PROMPT, 3, temperature=temperature)


# --------------------------------------------------------------------------- token ids


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.bool],
    ids=str,
)
def test_non_integer_token_ids_are_refused(model: ModuleTrainerModel, dtype: torch.dtype) -> None:
    ids = torch.tensor([1.7, 2.2, 0.0]).to(dtype)
    with pytest.raises(ValueError, match=f"integer token ids.*got {dtype}"):
        generate(model, ids, 2, greedy=True)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_integer_token_ids_of_any_width_work(model: ModuleTrainerModel, dtype: torch.dtype) -> None:
    out = generate(model, PROMPT.to(dtype), 2, greedy=True)
    assert torch.equal(out, generate(model, PROMPT, 2, greedy=True))


# --------------------------------------------------------------------------- prompts

SURROGATES = ["\ud800", "abc\udfff", "caf\udce9", "x\ud83d", "\udc80\udc80", "ok \ud83d!"]


@pytest.mark.parametrize("prompt", SURROGATES, ids=ascii)
def test_lone_surrogates_are_refused_by_name(model: ModuleTrainerModel, prompt: str) -> None:
    tokenizer = load_tokenizer(CONFIG.vocab_size)
    with pytest.raises(
        ValueError, match=r"lone surrogate .* \(U\+D[89A-F][0-9A-F]{2}\) at character"
    ):
        generate_text(model, tokenizer, prompt, 2, greedy=True)


@pytest.mark.parametrize("text", [b"bytes", 42, None, ["a"]], ids=repr)
def test_encode_refuses_non_strings(text: object) -> None:
    with pytest.raises(ValueError, match="must be a str"):
        encode(text, load_tokenizer(CONFIG.vocab_size))


def test_a_real_surrogate_pair_is_fine(model: ModuleTrainerModel) -> None:
    tokenizer = load_tokenizer(CONFIG.vocab_size)
    text = generate_text(model, tokenizer, "snake \U0001f40d", 2, greedy=True)
    assert text.startswith("snake \U0001f40d")


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    models = [make_model(i) for i in range(2)]
    shared = models[0].shared
    models[1] = ModuleTrainerModel(shared, CONFIG, 1, experts=models[1].experts)
    moe = MixtureOfExperts.from_trainer_models(models)
    return {
        "shared": save_shared(shared, root / "shared.safetensors"),
        "e0": save_expert(models[0], root / "e0.safetensors"),
        "e1": save_expert(models[1], root / "e1.safetensors"),
        "router": save_router(moe, root / "router.safetensors"),
    }


def test_generate_command_with_one_expert(files: dict[str, Path], capsys) -> None:
    argv = ["generate", "def main(", "--shared", str(files["shared"]), "--expert"]
    assert main([*argv, str(files["e0"]), "--greedy", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    model = make_model()
    expected = generate_text(model, load_tokenizer(CONFIG.vocab_size), "def main(", 5, greedy=True)
    assert out == expected + "\n"


def test_generate_command_with_a_mixture_and_sampling(files: dict[str, Path], capsys) -> None:
    argv = [
        "generate",
        "The licence",
        "--shared",
        str(files["shared"]),
        "--expert",
        str(files["e0"]),
        "--expert",
        str(files["e1"]),
        "--router",
        str(files["router"]),
        "--temperature",
        "1e-45",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--max-new-tokens",
        "4",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("The licence")


def test_generate_command_with_experts_in_the_wrong_order(files: dict[str, Path], capsys) -> None:
    argv = ["generate", "x", "--shared", str(files["shared"]), "--router", str(files["router"])]
    argv += ["--expert", str(files["e1"]), "--expert", str(files["e0"])]
    assert main(argv) == 2
    assert "(permuted)" in capsys.readouterr().err


BAD_COMMANDS = {
    "no-model": ([], "say which model to use"),
    "router-one-expert": (["--shared", "S", "--expert", "E0", "--router", "R"], "at least two"),
    "mixture-no-router": (["--shared", "S", "--expert", "E0", "--expert", "E1"], "--router"),
    "pipeline-and-files": (["--pipeline", "P", "--shared", "S"], "not both"),
    "zero-temperature": (["--shared", "S", "--expert", "E0", "--temperature", "0"], "temperature"),
    "nan-temperature": (["--shared", "S", "--expert", "E0", "--temperature", "nan"], "finite"),
    "bad-top-p": (["--shared", "S", "--expert", "E0", "--top-p", "1.5"], "top_p"),
    "bad-top-k": (["--shared", "S", "--expert", "E0", "--top-k", "0"], "top_k"),
    "negative-tokens": (["--shared", "S", "--expert", "E0", "--max-new-tokens", "-1"], ">= 0"),
    "bogus-device": (["--shared", "S", "--expert", "E0", "--device", "bogus"], "not a device"),
    "meta-device": (["--shared", "S", "--expert", "E0", "--device", "meta"], "cpu, cuda or mps"),
    "missing-expert": (["--shared", "S", "--expert", "NOPE"], "does not exist"),
    "expert-as-shared": (["--shared", "E0", "--expert", "E0"], "kind 'shared'"),
    "missing-pipeline": (["--pipeline", "NOPE"], ""),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_generate_command_refuses_with_one_line(
    files: dict[str, Path], tmp_path: Path, case: str, capsys
) -> None:
    options, fragment = BAD_COMMANDS[case]
    names = {
        "S": files["shared"],
        "E0": files["e0"],
        "E1": files["e1"],
        "R": files["router"],
        "P": tmp_path / "no-pipeline",
        "NOPE": tmp_path / "nope.safetensors",
    }
    argv = ["generate", "hello", *[str(names.get(o, o)) for o in options]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err


def test_generate_command_refuses_a_surrogate_prompt(files: dict[str, Path], capsys) -> None:
    argv = ["generate", "caf\udce9", "--shared", str(files["shared"]), "--expert"]
    assert main([*argv, str(files["e0"])]) == 2
    assert "lone surrogate" in capsys.readouterr().err
