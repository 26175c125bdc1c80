"""The encoder's configuration: a frozen dataclass saved as JSON beside every checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from common.choices import PASSAGE_FORMATS, POOLINGS, SIMILARITIES, PassageFormat, Pooling, Similarity, check_choice
from common.files import check_config_keys

# Cosine scores live in [-1, 1]; without a temperature the softmax is nearly flat and training
# barely moves. 0.05 is the usual value (SimCSE, sentence-transformers' scale of 20).
DEFAULT_COS_TEMPERATURE = 0.05


@dataclass(frozen=True)
class EncoderConfig:
    """How a dual encoder turns text into vectors and scores them.

    ``base_model`` is a hub name or a local directory (or ``minilm`` for the packaged offline model).
    ``temperature`` defaults to 0.05 for cosine and 1.0 for dot product.
    ``passage_format``: ``pair`` encodes a passage as the text pair ``title [SEP] text`` (second segment
    for the text); ``joined`` as the one string ``"title. text"`` (txtai-style tools). Pair is the default:
    65.09 vs 64.84 nDCG@10 on SciFact zero-shot. Configs saved before the field existed load as ``pair``,
    which is how they were encoded.
    """

    base_model: str
    pooling: Pooling = "mean"
    similarity: Similarity = "cos"
    temperature: float | None = None
    tie_encoders: bool = True
    query_max_length: int = 64
    passage_max_length: int = 256
    passage_format: PassageFormat = "pair"

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("similarity", self.similarity, SIMILARITIES)
        check_choice("passage_format", self.passage_format, PASSAGE_FORMATS)
        if self.temperature is None:
            default = DEFAULT_COS_TEMPERATURE if self.similarity == "cos" else 1.0
            object.__setattr__(self, "temperature", default)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("query_max_length", "passage_max_length"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be at least 8 tokens, got {getattr(self, name)}")

    @property
    def normalize(self) -> bool:
        """Cosine similarity is a dot product of L2-normalised vectors; the index relies on that."""
        return self.similarity == "cos"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        check_config_keys(cls, data, "encoder")
        return cls(**data)
