"""Type stubs of ferroclip._native (the Rust extension); see ferroclip/__init__.py."""

from collections.abc import Iterator, Sequence
from os import PathLike
from typing import Any, Literal

CLIP_MEAN: list[float]
CLIP_STD: list[float]

class DataError(ValueError): ...
class CurateError(ValueError): ...

class Array:
    """A batch's pixels or token ids without a copy: buffer protocol and DLPack."""

    @property
    def shape(self) -> list[int]: ...
    @property
    def dtype(self) -> Literal["float32", "uint8", "int64"]: ...
    @property
    def nbytes(self) -> int: ...
    def __len__(self) -> int: ...
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...

class Batch:
    @property
    def images(self) -> Array: ...
    @property
    def tokens(self) -> Array: ...
    @property
    def keys(self) -> list[str]: ...
    @property
    def labels(self) -> list[int | None]: ...
    @property
    def captions(self) -> list[list[str]]: ...
    @property
    def epoch(self) -> int: ...
    def __len__(self) -> int: ...

class Loader:
    def __init__(
        self,
        spec: str,
        *,
        batch_size: int,
        image_size: int = 224,
        train: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        stream: Literal["canonical", "per_rank"] = "canonical",
        partitions: int = 0,
        caption: str = "txt",
        context_length: int = 77,
        threads: int = 4,
        normalize: Literal["loader", "device"] = "loader",
        shuffle_buffer: int | None = None,
        drop_last: bool | None = None,
        resampled: bool = False,
        epoch_samples: int | None = None,
        weights: str | None = None,
        max_pixels: int | None = None,
    ) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def __next__(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    @property
    def skip_counts(self) -> dict[str, int]: ...
    @property
    def batches_yielded(self) -> int: ...
    @property
    def shards(self) -> list[str]: ...
    @property
    def partitions(self) -> int | None: ...

def tokenize(texts: str | Sequence[str], context_length: int = 77) -> Array: ...
def match_entries(
    texts: Sequence[str],
    metadata: str | Sequence[str] | None = None,
    wordnet_dir: str = ...,
) -> list[list[str]]: ...
def align_text_filter(
    texts: Sequence[str],
    *,
    min_unigrams: int | None = None,
    max_unigrams: int | None = None,
    rare_token_top_k: int | None = None,
    max_caption_bytes: int | None = None,
) -> list[str | None]: ...
def curate_samples(
    samples: list[dict[str, Any]],
    *,
    config: str | PathLike[str] | None = None,
    toml: str | None = None,
) -> list[dict[str, Any]]: ...
def curate_shards(
    input: str,
    output: str | PathLike[str],
    *,
    config: str | PathLike[str] | None = None,
    toml: str | None = None,
    threads: int = 0,
) -> dict[str, Any]: ...
