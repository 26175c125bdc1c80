"""DualEncoder: pooling ignores padding, passages are title [SEP] text (or "title. text"), save/load is exact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retriever import DualEncoder, EncoderConfig, Passage
from retriever.encoder import CONFIG_FILE, _chunks, joined_text, load_encoder

PASSAGES = [
    Passage("a", "Casablanca (film)", "Casablanca is a 1942 American romantic drama starring Ingrid Bergman."),
    Passage("b", "Luge", "Luge is a small one- or two-person sled."),
    Passage("c", "Athens", "The Plague of Athens struck the city in 430 BC during the war with Sparta, "
                           "killing perhaps a quarter of the population over several years."),
]
QUERIES = ["who starred in casablanca", "what is a luge sled used for in the winter olympic games"]


def _encoder(base: Path, **kw) -> DualEncoder:
    return DualEncoder.from_base(EncoderConfig(base_model=str(base), query_max_length=32,
                                               passage_max_length=64, **kw))


def test_mean_pool_ignores_padded_positions(tiny_encoder: DualEncoder) -> None:
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    noisy = hidden.clone()
    noisy[0, 3:] = 1e6                                   # garbage where the mask is 0
    pooled = tiny_encoder.pool(noisy, mask)
    assert torch.allclose(pooled[0], hidden[0, :3].mean(dim=0), atol=1e-6)
    assert torch.allclose(pooled[1], hidden[1].mean(dim=0), atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_embeddings(tiny_base: Path, pooling: str) -> None:
    enc = _encoder(tiny_base, pooling=pooling)
    alone = np.stack([enc.encode_queries([q], batch_size=1)[0] for q in QUERIES])
    together = enc.encode_queries(QUERIES, batch_size=8)           # the short query gets padded
    np.testing.assert_allclose(alone, together, atol=1e-5)
    p_alone = np.stack([enc.encode_passages([p], batch_size=1)[0] for p in PASSAGES])
    np.testing.assert_allclose(p_alone, enc.encode_passages(PASSAGES, batch_size=8), atol=1e-5)


def test_passages_are_title_sep_text(tiny_encoder: DualEncoder) -> None:
    ids = tiny_encoder.tokenize_passages(PASSAGES[:1], padding=False)["input_ids"][0]
    tok = tiny_encoder.tokenizer
    sep = ids.index(tok.sep_token_id)
    assert tok.decode(ids[1:sep]) == "casablanca ( film )"
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.sep_token_id) == 2


def test_passage_format_defaults_to_pair_and_old_configs_load_as_pair() -> None:
    assert EncoderConfig(base_model="x").passage_format == "pair"
    old = EncoderConfig(base_model="x").to_dict()
    del old["passage_format"]                                  # encoder_config.json from before the field
    assert EncoderConfig.from_dict(old).passage_format == "pair"
    with pytest.raises(ValueError, match=r"passage_format must be one of \('pair', 'joined'\), got 'concat'"):
        EncoderConfig(base_model="x", passage_format="concat")


def test_joined_passages_are_the_one_string_by_hand(tiny_base: Path) -> None:
    enc = _encoder(tiny_base, passage_format="joined")
    got = enc.tokenize_passages(PASSAGES, padding=False)
    by_hand = enc.tokenizer([f"{p.title}. {p.text}" for p in PASSAGES], truncation=True, max_length=64)
    assert got["input_ids"] == by_hand["input_ids"]
    assert all(ids.count(enc.tokenizer.sep_token_id) == 1 for ids in got["input_ids"])   # no second segment
    # Padded tensors too, and both formats really differ.
    padded = enc.tokenize_passages(PASSAGES)["input_ids"]
    assert padded[0, :len(by_hand["input_ids"][0])].tolist() == by_hand["input_ids"][0]
    assert _encoder(tiny_base).tokenize_passages(PASSAGES[:1], padding=False)["input_ids"] != got["input_ids"][:1]


def test_joined_title_ending_rule() -> None:
    assert joined_text(Passage("a", "Luge", "A sled.")) == "Luge. A sled."
    for title in ("Dr. No.", "Help!", "Why?"):
        assert joined_text(Passage("a", title, "Text.")) == f"{title} Text."          # no doubled period
    assert joined_text(Passage("a", "", "Just text.")) == "Just text."
    assert joined_text(Passage("a", "  ", "Just text.")) == "Just text."


def test_joined_round_trips_through_save_and_load(tiny_base: Path, tmp_path: Path) -> None:
    enc = _encoder(tiny_base, passage_format="joined")
    enc.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / CONFIG_FILE).read_text())
    assert saved["encoder"]["passage_format"] == "joined"
    loaded = load_encoder(tmp_path / "model")
    assert loaded.config.passage_format == "joined"
    np.testing.assert_array_equal(loaded.encode_passages(PASSAGES), enc.encode_passages(PASSAGES))



def test_token_cap_splits_long_batches_only() -> None:
    lengths = np.array([10, 200, 50, 200, 10, 10, 100])
    order = np.argsort(-lengths, kind="stable")                     # 200, 200, 100, 50, 10, 10, 10
    batches = [list(b) for b in _chunks(order, lengths, 4, 400)]
    assert [len(b) for b in batches] == [2, 4, 1]                   # 2x200 | 100,50,10,10 | 10
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:                                               # padded size within the cap
        assert len(b) * lengths[b[0]] <= 400
    assert [len(b) for b in _chunks(order, lengths, 4, 0)] == [4, 3]          # 0: no token cap
    assert [len(b) for b in _chunks(order, lengths, 4, 100)] == [1, 1, 1, 2, 2]  # a row over the cap: alone


def test_token_cap_does_not_change_embeddings(tiny_encoder: DualEncoder) -> None:
    capped = tiny_encoder.encode_passages(PASSAGES, batch_size=8, max_tokens=20)
    np.testing.assert_allclose(capped, tiny_encoder.encode_passages(PASSAGES, batch_size=8, max_tokens=0), atol=1e-5)


def test_cosine_embeddings_are_unit_length_and_dot_are_not(tiny_base: Path) -> None:
    cos = _encoder(tiny_base, similarity="cos").encode_passages(PASSAGES)
    np.testing.assert_allclose(np.linalg.norm(cos, axis=1), 1.0, atol=1e-5)
    dot = _encoder(tiny_base, similarity="dot", pooling="cls").encode_passages(PASSAGES)
    assert not np.allclose(np.linalg.norm(dot, axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("tied", [True, False])
def test_save_load_round_trip_is_exact(tiny_base: Path, tmp_path: Path, tied: bool) -> None:
    enc = _encoder(tiny_base, tie_encoders=tied, pooling="cls", similarity="dot", temperature=0.5)
    if not tied:
        with torch.no_grad():                            # make the towers differ, as after training
            for param in enc.passage_model.parameters():
                param.add_(0.01 * torch.randn_like(param))
    enc.save(tmp_path / "model")
    assert (tmp_path / "model" / CONFIG_FILE).exists()
    loaded = load_encoder(tmp_path / "model")
    assert loaded.config == enc.config and loaded.fingerprint() == enc.fingerprint()
    np.testing.assert_array_equal(loaded.encode_queries(QUERIES), enc.encode_queries(QUERIES))
    np.testing.assert_array_equal(loaded.encode_passages(PASSAGES), enc.encode_passages(PASSAGES))
    towers_differ = not np.allclose(loaded.encode_queries(QUERIES[:1]), loaded._encode(
        loaded.passage_tower, loaded.tokenize_queries(QUERIES[:1], padding=False), 8, False, "queries"))
    assert towers_differ == (not tied)


def test_save_leaves_no_temporary_files(tiny_encoder: DualEncoder, tmp_path: Path) -> None:
    tiny_encoder.save(tmp_path / "model")
    tiny_encoder.save(tmp_path / "model")                 # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
