"""Curation from Python: the stages of ``ferroclip curate`` (MetaCLIP matching and
balancing, ALIGN's filters, K-LITE glosses) with the same decisions.

- ``match_entries(texts, metadata=None)``: the MetaCLIP entries each text matches;
  ``metadata`` is ``"wordnet"`` (the default: numbers 0-99 plus WordNet synset names), a
  list of entries, or an entry file.
- ``align_text_filter(texts, min_unigrams=3, max_unigrams=20, rare_token_top_k=...)``:
  ALIGN's text rules over texts alone; per text ``None`` (kept) or the drop reason
  (``text_length``, ``rare_token``, ``caption_too_long``), as the ``align`` stage decides
  when the image passes.
- ``curate_samples(samples, config=PATH | toml=TEXT)``: a curate config's stages over
  webdataset-style dicts (``{"__key__": "0001", "txt": "a cat", "jpg": b"..."}``); one
  result dict per sample: ``key``, ``kept``, and ``sample`` or ``stage`` and ``reason``.
- ``curate_shards(input, output, config=PATH | toml=TEXT, threads=0)``: the pipeline over a
  shard spec into a new folder, as ``ferroclip curate`` runs it; returns report.json.

Stages that need a model (``dfn``, ``align`` with ``near_duplicate_checkpoint``) run in the
``ferroclip`` binary only.
"""

from ._native import CurateError, align_text_filter, curate_samples, curate_shards, match_entries

__all__ = ["CurateError", "align_text_filter", "curate_samples", "curate_shards", "match_entries"]
