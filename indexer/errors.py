"""What can go wrong with an index: a broken directory, an encoder that does not fit it, unusable shards."""
from __future__ import annotations


class IndexLoadError(ValueError):
    """A missing, corrupt or inconsistent index file; the message names the file."""


class ManifestMismatch(ValueError):
    """An encoder that did not build this index; the message lists every difference.

    ``differences`` holds ``(field, index_value, encoder_value)`` tuples for callers that want them.
    """

    def __init__(self, message: str, differences: list[tuple[str, object, object]] | None = None) -> None:
        super().__init__(message)
        self.differences = list(differences or [])


class ShardError(ValueError):
    """A shard or work directory that cannot be used as asked; the message names it."""
