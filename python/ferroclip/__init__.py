"""ferroclip from Python: the shard loader, the CLIP tokenizer and data curation.

The work happens in Rust (``ferroclip._native``); nothing here needs torch or numpy.

- ``Loader(spec, batch_size=..., ...)``: batches from webdataset shards, decoded and
  transformed on Rust threads. Each ``Batch`` has ``images`` ``(B, 3, S, S)`` (float32,
  CLIP-normalised; uint8 levels with ``normalize="device"``) and ``tokens``
  ``(B, context_length)`` int64 as ``Array`` objects that ``numpy.asarray`` and
  ``torch.from_dlpack`` view without a copy, plus ``keys``, ``labels``, ``captions`` and
  ``epoch``. ``state_dict()`` / ``load_state_dict()`` (torchdata's StatefulDataLoader
  convention) resume at the exact batch; ``skip_counts`` tells what bad data was skipped.
- ``tokenize(texts, context_length=77)``: open_clip's token ids.
- ``curate``: MetaCLIP matching (``match_entries``), a curate config's stages over Python
  samples (``curate_samples``) or over shards (``curate_shards``).
"""

from ._native import (
    CLIP_MEAN,
    CLIP_STD,
    Array,
    Batch,
    CurateError,
    DataError,
    Loader,
    tokenize,
)
from . import curate

__all__ = [
    "Array",
    "Batch",
    "CLIP_MEAN",
    "CLIP_STD",
    "CurateError",
    "DataError",
    "Loader",
    "curate",
    "tokenize",
]
