"""Tests for the shipped corpus, the tokenizers and ``modularforge.training.data``."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from modularforge.training import data

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
VOCAB_SIZES = (16384, 2048)
SAMPLE_CHARS = 20_000


@pytest.fixture
def tmp_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data directory with a corpus/ folder, installed as the active DATA_DIR."""
    (tmp_path / "corpus").mkdir()
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- corpus files


def test_corpus_has_three_domains_of_sensible_size() -> None:
    files = sorted((REPO_DATA / "corpus").glob("*.txt"))
    sizes = {path.stem: path.stat().st_size for path in files}
    assert len(sizes) >= 3, sizes
    for name, size in sizes.items():
        assert 300_000 <= size <= 1_200_000, (name, size)
    assert sum(sizes.values()) <= 15_000_000
    assert data.list_domains() == sorted(sizes)


def test_corpus_is_utf8_and_domains_differ() -> None:
    texts = {name: data.load_text(name) for name in data.list_domains()}
    assert "In the beginning God created the heaven and the earth." in texts["english"]
    assert "GNU GENERAL PUBLIC LICENSE" in texts["licenses"]
    assert "def " in texts["python"] and "import " in texts["python"]
    assert "def " not in texts["english"]


def test_sources_md_lists_every_file_with_matching_size_and_sha256() -> None:
    sources = (REPO_DATA / "SOURCES.md").read_text(encoding="utf-8")
    paths = (
        sorted((REPO_DATA / "corpus").glob("*.txt"))
        + sorted((REPO_DATA / "later").glob("*.txt"))
        + sorted(REPO_DATA.glob("tokenizer-*.json"))
    )
    assert len(paths) >= 6
    for path in paths:
        raw = path.read_bytes()
        row = re.search(rf"^\| `{re.escape(path.name)}` \|.*$", sources, flags=re.MULTILINE)
        assert row is not None, f"{path.name} missing from SOURCES.md"
        assert hashlib.sha256(raw).hexdigest() in row.group(0), f"sha256 of {path.name}"
        assert f"| {len(raw)} |" in row.group(0), f"size of {path.name}"


# --------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("vocab_size", VOCAB_SIZES)
def test_tokenizer_has_exact_vocab_and_round_trips(vocab_size: int) -> None:
    tokenizer = data.load_tokenizer(vocab_size)
    assert tokenizer.get_vocab_size() == vocab_size
    assert tokenizer.token_to_id(data.EOT_TOKEN) is not None
    for domain in data.list_domains():
        text = data.load_text(domain)
        middle = len(text) // 2
        sample = text[:SAMPLE_CHARS] + text[middle : middle + SAMPLE_CHARS]
        ids = data.encode(sample, tokenizer)
        assert ids.dtype == torch.int64 and ids.dim() == 1
        assert 0 < len(ids) < len(sample)  # BPE compresses: fewer tokens than characters
        assert int(ids.max()) < vocab_size
        assert data.decode(ids, tokenizer) == sample


def test_tokenizer_handles_bytes_outside_the_corpus() -> None:
    tokenizer = data.load_tokenizer(2048)
    text = "naïve café — 東京 🚀\ttabs\r\n"
    assert data.decode(data.encode(text, tokenizer), tokenizer) == text


def test_bigger_vocab_compresses_more() -> None:
    sample = data.load_text("english")[:SAMPLE_CHARS]
    small = data.encode(sample, data.load_tokenizer(2048))
    big = data.encode(sample, data.load_tokenizer(16384))
    assert len(big) < len(small)


# --------------------------------------------------------------------------- splits


def test_train_val_split_is_contiguous_disjoint_and_sized() -> None:
    tokens = torch.arange(1000)
    train, val = data.train_val_split(tokens, val_fraction=0.1)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), tokens)  # contiguous, nothing lost
    assert set(train.tolist()).isdisjoint(val.tolist())
    train2, val2 = data.train_val_split(tokens, val_fraction=0.1)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    _, val_quarter = data.train_val_split(tokens, val_fraction=0.25)
    assert len(val_quarter) == 250


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_train_val_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(torch.arange(100), val_fraction=fraction)


def test_load_domain_splits_real_tokens() -> None:
    domain = data.load_domain("licenses", 2048)
    full = data.domain_tokens("licenses", 2048)
    assert domain.name == "licenses"
    assert len(domain.val) == int(len(full) * 0.1)
    assert torch.equal(torch.cat([domain.train, domain.val]), full)
    assert data.domain_tokens("licenses", 2048) is full  # cached, not re-encoded


def test_load_mixed_joins_every_domain_with_separators() -> None:
    mixed = data.load_mixed(2048)
    parts = [data.load_domain(name, 2048) for name in data.list_domains()]
    eot = data.load_tokenizer(2048).token_to_id(data.EOT_TOKEN)
    n_sep = len(parts) - 1
    assert mixed.name == "mixed"
    assert len(mixed.train) == sum(len(p.train) for p in parts) + n_sep
    assert len(mixed.val) == sum(len(p.val) for p in parts) + n_sep
    assert int((mixed.val == eot).sum()) == n_sep
    assert torch.equal(mixed.val[: len(parts[0].val)], parts[0].val)


# --------------------------------------------------------------------------- batches


def test_random_batch_shapes_and_shift() -> None:
    tokens = torch.arange(500, dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    inputs, targets = data.random_batch(tokens, batch_size=4, seq_len=16, generator=gen)
    assert inputs.shape == targets.shape == (4, 16)
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    assert torch.equal(targets, inputs + 1)  # with arange tokens, next token = id + 1


def test_random_batch_reaches_both_ends_of_the_stream() -> None:
    tokens = torch.arange(10)
    gen = torch.Generator().manual_seed(1)
    inputs, targets = data.random_batch(tokens, batch_size=200, seq_len=4, generator=gen)
    assert int(inputs.min()) == 0 and int(targets.max()) == 9


def test_same_seed_same_batches_different_seed_different() -> None:
    tokens = torch.arange(10_000)

    def draw(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return data.random_batch(tokens, 8, 32, gen)[0]

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_random_batch_rejects_short_corpus() -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"10 tokens.*seq_len=10.*11"):
        data.random_batch(torch.arange(10), batch_size=2, seq_len=10, generator=gen)
    data.random_batch(torch.arange(11), batch_size=2, seq_len=10, generator=gen)  # just fits


def test_eval_batches_are_fixed_and_non_overlapping() -> None:
    tokens = torch.arange(1001)
    batches = list(data.eval_batches(tokens, batch_size=4, seq_len=100))
    assert [b[0].shape for b in batches] == [(4, 100), (4, 100), (2, 100)]
    inputs = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    assert torch.equal(inputs.flatten(), tokens[:1000])  # every input scored once, in order
    assert torch.equal(targets, inputs + 1)
    again = list(data.eval_batches(tokens, batch_size=4, seq_len=100))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert len(list(data.eval_batches(tokens, 4, 100, max_batches=2))) == 2


def test_eval_batches_rejects_short_corpus() -> None:
    with pytest.raises(ValueError, match=r"5 tokens.*seq_len=8"):
        next(data.eval_batches(torch.arange(5), batch_size=1, seq_len=8))


def test_batch_stream_resumes_bit_identically() -> None:
    tokens = torch.arange(50_000)
    reference = data.BatchStream(tokens, batch_size=4, seq_len=64, seed=7)
    expected = [next(reference) for _ in range(6)]

    first = data.BatchStream(tokens, batch_size=4, seq_len=64, seed=7)
    for _ in range(3):
        next(first)
    state = first.state_dict()
    assert state["batches_drawn"] == 3
    more_of_first = [next(first) for _ in range(3)]  # drawing on must not alter the saved state

    resumed = data.BatchStream(tokens, batch_size=4, seq_len=64, seed=999)
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 3 and resumed.seed == 7
    for want, again, got in zip(
        expected[3:], more_of_first, (next(resumed) for _ in range(3)), strict=True
    ):
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        assert torch.equal(again[0], got[0])
    assert resumed.batches_drawn == 6


def test_batch_stream_refuses_state_with_another_shape() -> None:
    tokens = torch.arange(1000)
    state = data.BatchStream(tokens, batch_size=4, seq_len=16, seed=0).state_dict()
    other = data.BatchStream(tokens, batch_size=8, seq_len=16, seed=0)
    with pytest.raises(ValueError, match="batch_size=4.*batch_size=8"):
        other.load_state_dict(state)


# --------------------------------------------------------------------------- error cases


def test_unknown_domain_lists_available(tmp_data: Path) -> None:
    (tmp_data / "corpus" / "alpha.txt").write_text("a", encoding="utf-8")
    (tmp_data / "corpus" / "beta.txt").write_text("b", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'gamma'.*alpha, beta"):
        data.load_text("gamma")


def test_empty_file_is_named(tmp_data: Path) -> None:
    (tmp_data / "corpus" / "blank.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"blank\.txt is empty"):
        data.load_text("blank")


def test_non_utf8_file_reports_name_and_offset(tmp_data: Path) -> None:
    (tmp_data / "corpus" / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ValueError, match=r"latin1\.txt is not valid UTF-8.*byte offset 3"):
        data.load_text("latin1")


@pytest.mark.parametrize(
    "load",
    [
        data.list_domains,
        lambda: data.load_tokenizer(2048),
        lambda: data.load_domain("english", 2048),
    ],
    ids=["domains", "tokenizer", "domain"],
)
def test_missing_data_dir_says_how_to_fix(
    load: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a non-editable install (no data/ beside the package) meets first."""
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(
        FileNotFoundError, match=rf"nowhere does not exist.*-e .*{data.DATA_ENV_VAR}"
    ):
        load()  # type: ignore[operator]


def test_env_var_redirects_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "only.txt").write_text("hello", encoding="utf-8")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path))
    assert data.list_domains() == ["only"]
    assert data.load_text("only") == "hello"


def test_missing_tokenizer_names_file_and_script(tmp_data: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer-4096\.json.*build_tokenizer\.py"):
        data.load_tokenizer(4096)


def test_tokenizer_vocab_mismatch_gives_both_numbers(tmp_data: Path) -> None:
    # A 2048-token tokenizer saved under the name of a 4096 one.
    (tmp_data / "tokenizer-4096.json").write_bytes((REPO_DATA / "tokenizer-2048.json").read_bytes())
    with pytest.raises(ValueError, match=r"vocab size 2048.*4096 was requested"):
        data.load_tokenizer(4096)


def test_domain_tokens_cache_follows_data_dir(tmp_data: Path) -> None:
    (tmp_data / "tokenizer-2048.json").write_bytes((REPO_DATA / "tokenizer-2048.json").read_bytes())
    (tmp_data / "corpus" / "english.txt").write_text("short text", encoding="utf-8")
    tokens = data.domain_tokens("english", 2048)
    assert data.decode(tokens, data.load_tokenizer(2048)) == "short text"


# --------------------------------------------------------------------------- mixed validation


def _toy_mixture(lengths: dict[str, int]) -> data.DomainData:
    """A mixture whose validation token ids say which domain (hundreds) and offset they are."""
    parts = {
        name: torch.arange(n, dtype=torch.int64) + 10_000 * (i + 1)
        for i, (name, n) in enumerate(lengths.items())
    }
    val = torch.cat(list(parts.values()))
    return data.DomainData("mixed", train=val, val=val, val_parts=parts)


def _domain_of(window: torch.Tensor) -> int:
    return int(window[0]) // 10_000


def test_mixed_validation_draws_equal_windows_from_every_domain() -> None:
    mixed = _toy_mixture({"a": 401, "b": 161, "c": 1201})  # 50, 20 and 150 windows of 8
    batches = list(data.validation_batches(mixed, batch_size=4, seq_len=8))
    windows = torch.cat([inputs for inputs, _ in batches])
    counts = torch.bincount(torch.tensor([_domain_of(w) for w in windows]))[1:]
    assert counts.tolist() == [20, 20, 20]  # as many as the smallest domain holds
    # no window overlaps another, and no window crosses into another domain
    keys = {tuple(w.tolist()) for w in windows}
    assert len(keys) == len(windows)
    assert all(int(w[-1]) // 10_000 == _domain_of(w) for w in windows)
    # each domain's windows span its whole stream, not just its start
    last_a = max(int(w[0]) - 10_000 for w in windows if _domain_of(w) == 1)
    assert last_a >= 400 - 8 - 8


def test_mixed_validation_is_balanced_in_every_prefix_and_respects_max_batches() -> None:
    mixed = _toy_mixture({"a": 401, "b": 161, "c": 1201})
    batches = list(data.validation_batches(mixed, batch_size=3, seq_len=8, max_batches=2))
    assert len(batches) == 2
    first = [_domain_of(w) for w in batches[0][0]]
    assert first == [1, 2, 3]  # interleaved: a short evaluation still sees every domain
    targets_shift = batches[0][1][:, :-1] == batches[0][0][:, 1:]
    assert bool(targets_shift.all())


def test_mixed_validation_of_the_real_corpus_covers_every_domain() -> None:
    mixed = data.load_mixed(2048)
    assert set(mixed.val_parts) == set(data.list_domains())
    inputs = torch.cat([x for x, _ in data.validation_batches(mixed, 16, 64, max_batches=8)])
    per_domain = data.balanced_domain_batches(mixed, 16, 64, max_batches=8)
    assert len(inputs) == sum(sum(len(x) for x, _ in b) for b in per_domain.values())
    for name, batches in per_domain.items():
        stream = mixed.val_parts[name]
        for x, _ in batches:
            for window in x:  # every window is a slice of that domain's own validation text
                hits = (stream.unfold(0, 64, 1) == window).all(dim=1)
                assert bool(hits.any()), name
    # the old behaviour (windows from the start of the joined stream) was English only
    old = next(data.eval_batches(mixed.val, 128, 64))[0]
    english = mixed.val_parts["english"]
    assert bool((old[-1] == english[127 * 64 : 128 * 64]).all())


def test_single_domain_validation_is_unchanged() -> None:
    domain = data.load_domain("python", 2048)
    new = list(data.validation_batches(domain, 4, 32, max_batches=3))
    old = list(data.eval_batches(domain.val, 4, 32, max_batches=3))
    assert all(bool((a[0] == b[0]).all()) for a, b in zip(new, old, strict=True))


def test_balanced_windows_refuse_a_domain_too_short() -> None:
    mixed = _toy_mixture({"a": 401, "tiny": 5})
    with pytest.raises(ValueError, match="domain 'tiny'"):
        list(data.validation_batches(mixed, 4, 8))
    with pytest.raises(ValueError, match="max_batches"):
        list(data.validation_batches(_toy_mixture({"a": 401}), 4, 8, max_batches=0))
