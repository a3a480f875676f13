#!/usr/bin/env python3
"""Build the demo's JSONL manifests (input of `ferroclip shard`) from the emoji npm packages.

Usage (Python 3.11 standard library only; scripts/setup.sh installs the packages):

    python3 scripts/data/emoji_manifests.py --npm data/npm/node_modules --out data/emoji

Reads emoji-datasource-google@16.0.0 and emoji-datasource-twitter@16.0.0 (names,
short names, categories, 64x64 PNGs) and emojibase-data@16.0.3 (en tags), and writes:

  train.jsonl           every Google 64 px image, skin-tone variations included, one
                        caption each built from the real names and tags (the template
                        is chosen per emoji by a seeded RNG, so the output is stable)
  eval_retrieval.jsonl  Twitter 64 px images of the base emojis (no skin variations),
                        "captions": [name, short-name caption]
  eval_zeroshot.jsonl   the same Twitter images with "cls" = category index
  classnames.txt        one category per line, in index order, as lowercase text
  templates.txt         zero-shot prompt templates with {c}

Image paths are written relative to the manifest's folder. A listed image that is
missing on disk is skipped and counted. The "Component" category (bare skin-tone
swatches, hair components) is kept in train but left out of both evaluation sets,
so the retrieval and zero-shot sets hold the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path

PACKAGES = {
    "google": "emoji-datasource-google",
    "twitter": "emoji-datasource-twitter",
    "emojibase": "emojibase-data",
}

# Unicode names of the Fitzpatrick modifiers (the words emojibase's labels use).
SKIN_TONE_WORDS = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}

SKIPPED_CATEGORY = "Component"
MAX_TAGS = 4  # the tiny model's text context is 32 tokens: keep captions short
MAX_SHORT_NAMES = 2

ZERO_SHOT_TEMPLATES = [
    "an emoji of {c}.",
    "a {c} emoji.",
    "an icon from the {c} category.",
    "an emoji in the {c} group.",
    "a small picture of {c}.",
]


class SetupError(Exception):
    """The input packages are missing or unreadable."""


def load_json(path: Path):
    if not path.is_file():
        raise SetupError(f"{path} not found: run scripts/setup.sh to install the npm packages")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise SetupError(f"{path} is unreadable ({err}): rerun scripts/setup.sh") from err


def normalize_hexcode(hexcode: str) -> str:
    """Join key: upper case without FE0F (emoji-datasource and emojibase qualify differently)."""
    return "-".join(part for part in hexcode.upper().split("-") if part and part != "FE0F")


def build_emojibase_index(entries: list) -> dict:
    """Normalized hexcode -> emojibase entry; skin variations point back to their base's tags."""
    index = {}
    for entry in entries:
        index[normalize_hexcode(entry["hexcode"])] = entry
        for skin in entry.get("skins", []):
            index[normalize_hexcode(skin["hexcode"])] = {**skin, "tags": entry.get("tags", [])}
    return index


def category_text(category: str) -> str:
    return category.replace("&", "and").lower()


def spaced(short_name: str) -> str:
    return short_name.replace("_", " ")


def article_for(text: str) -> str:
    return "an" if text[:1] in "aeiou" else "a"


def tone_words(variation_key: str) -> str:
    """'1F3FD' -> 'medium skin tone'; '1F3FB-1F3FE' -> 'light skin tone, medium-dark skin tone'."""
    tones = []
    for part in variation_key.upper().split("-"):
        word = SKIN_TONE_WORDS.get(part)
        if word is not None and word not in tones:
            tones.append(word)
    return ", ".join(tones)


def train_caption(
    rng: random.Random, name: str, short_names: list, tags: list, label: str | None, category: str
) -> str:
    """One caption from real names, tags and category, in a form drawn from a few natural templates.

    Half of the forms name the emoji's category (emoji.json's `category`), so the
    category words that zero-shot evaluation prompts with occur in training text.

    `label` is emojibase's own label of this exact emoji (skin tone included); it is
    offered as a form of its own when it reads differently from `name`.
    """
    shorts = [spaced(s) for s in short_names[:MAX_SHORT_NAMES]]
    chosen_tags = [t for t in tags if t.lower() != name]
    if len(chosen_tags) > MAX_TAGS:
        kept = set(rng.sample(range(len(chosen_tags)), MAX_TAGS))
        chosen_tags = [t for i, t in enumerate(chosen_tags) if i in kept]
    forms = [
        name,
        f"{name} emoji",
        f"an emoji of {article_for(name)} {name}",
    ]
    if shorts:
        forms.append(f"{name} emoji ({', '.join(shorts)})")
    if chosen_tags:
        forms.append(f"an emoji of {article_for(name)} {name}: {', '.join(chosen_tags)}")
        forms.append(f"{name}, {', '.join(chosen_tags)}")
    if label and label.lower() != name:
        forms.append(label.lower())
    with_category = [
        f"{name}, an emoji of {category}",
        f"{article_for(category)} {category} emoji: {name}",
        f"{name} emoji from the {category} category",
    ]
    if chosen_tags:
        with_category.append(f"{category}: {name}, {', '.join(chosen_tags[:2])}")
    return rng.choice(with_category if rng.random() < 0.5 else forms)


def retrieval_short_caption(name: str, short_names: list) -> str:
    """The first short name that reads differently from the name; else the short name as an emoji."""
    for short in short_names:
        if spaced(short) != name:
            return spaced(short)
    return f"{spaced(short_names[0])} emoji" if short_names else f"{name} emoji"


def relative_image(image: Path, out_dir: Path) -> str:
    return os.path.relpath(image.resolve(), out_dir.resolve())


def write_lines(path: Path, lines: list) -> None:
    """Write through a temporary file so an interrupted run never leaves half a manifest."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def to_jsonl(records: list) -> list:
    return [json.dumps(r, ensure_ascii=False) for r in records]


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npm", type=Path, default=Path("data/npm/node_modules"),
                        help="node_modules folder holding the emoji packages")
    parser.add_argument("--out", type=Path, default=Path("data/emoji"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the caption-template choice")
    args = parser.parse_args(argv)

    try:
        for package in PACKAGES.values():
            if not (args.npm / package).is_dir():
                raise SetupError(f"{args.npm / package} not found: run scripts/setup.sh "
                                 f"to install the npm packages")
        google_emojis = load_json(args.npm / PACKAGES["google"] / "emoji.json")
        twitter_emojis = load_json(args.npm / PACKAGES["twitter"] / "emoji.json")
        emojibase = load_json(args.npm / PACKAGES["emojibase"] / "en" / "data.json")
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    google_dir = args.npm / PACKAGES["google"] / "img" / "google" / "64"
    twitter_dir = args.npm / PACKAGES["twitter"] / "img" / "twitter" / "64"
    args.out.mkdir(parents=True, exist_ok=True)
    base_index = build_emojibase_index(emojibase)
    twitter_by_unified = {e["unified"]: e for e in twitter_emojis}

    missing = Counter()
    joined = Counter()
    train = []
    evaluation = []  # (emoji, twitter image path)
    for emoji in sorted(google_emojis, key=lambda e: (e.get("sort_order", 0), e["unified"])):
        name = emoji["name"].lower()
        short_names = emoji.get("short_names") or []
        base_entry = base_index.get(normalize_hexcode(emoji["unified"]))
        joined["base_total"] += 1
        joined["base_hit"] += base_entry is not None
        tags = base_entry.get("tags", []) if base_entry else []
        label = base_entry.get("label") if base_entry else None

        # One seeded RNG per emoji: adding or removing an emoji changes no other caption.
        variants = [(None, emoji)] + sorted((emoji.get("skin_variations") or {}).items())
        for variation_key, variant in variants:
            if not variant.get("has_img_google", False):
                continue
            image = google_dir / variant["image"]
            if not image.is_file():
                missing["google"] += 1
                continue
            rng = random.Random(f"{args.seed}:{variant['unified']}")
            if variation_key is None:
                caption = train_caption(rng, name, short_names, tags, label, category_text(emoji["category"]))
                extra = {}
            else:
                tone = tone_words(variation_key)
                variant_entry = base_index.get(normalize_hexcode(variant["unified"]))
                joined["skin_total"] += 1
                joined["skin_hit"] += variant_entry is not None
                variant_label = variant_entry.get("label") if variant_entry else None
                caption = train_caption(rng, f"{name}, {tone}", short_names, tags, variant_label, category_text(emoji["category"]))
                extra = {"skin_tone": tone}
            train.append({
                "image": relative_image(image, args.out),
                "caption": caption,
                "key": Path(variant["image"]).stem,
                "unified": variant["unified"],
                "category": emoji["category"],
                **extra,
            })

        twitter = twitter_by_unified.get(emoji["unified"])
        if emoji["category"] == SKIPPED_CATEGORY or twitter is None:
            continue
        if not (emoji.get("has_img_google") and twitter.get("has_img_twitter")):
            continue
        twitter_image = twitter_dir / twitter["image"]
        if not twitter_image.is_file():
            missing["twitter"] += 1
            continue
        evaluation.append((emoji, twitter_image))

    categories = sorted({e["category"] for e in google_emojis if e["category"] != SKIPPED_CATEGORY},
                        key=category_text)
    class_index = {c: i for i, c in enumerate(categories)}
    retrieval, zeroshot = [], []
    for emoji, image in evaluation:
        name = emoji["name"].lower()
        common = {"image": relative_image(image, args.out), "key": Path(image).stem}
        retrieval.append({**common, "captions": [name, retrieval_short_caption(name, emoji.get("short_names") or [])]})
        zeroshot.append({**common, "cls": class_index[emoji["category"]], "category": category_text(emoji["category"])})

    write_lines(args.out / "train.jsonl", to_jsonl(train))
    write_lines(args.out / "eval_retrieval.jsonl", to_jsonl(retrieval))
    write_lines(args.out / "eval_zeroshot.jsonl", to_jsonl(zeroshot))
    write_lines(args.out / "classnames.txt", [category_text(c) for c in categories])
    write_lines(args.out / "templates.txt", ZERO_SHOT_TEMPLATES)

    class_counts = Counter(r["cls"] for r in zeroshot)
    print(f"wrote {args.out}/")
    print(f"  train.jsonl           {len(train):5d} samples "
          f"({sum('skin_tone' in r for r in train)} skin-tone variations)")
    print(f"  eval_retrieval.jsonl  {len(retrieval):5d} images x 2 captions")
    print(f"  eval_zeroshot.jsonl   {len(zeroshot):5d} images, {len(categories)} classes")
    print(f"  emojibase join: base {joined['base_hit']}/{joined['base_total']} "
          f"({100.0 * joined['base_hit'] / max(joined['base_total'], 1):.1f}%), skin variations "
          f"{joined['skin_hit']}/{joined['skin_total']} "
          f"({100.0 * joined['skin_hit'] / max(joined['skin_total'], 1):.1f}%)")
    print(f"  missing image files skipped: google {missing['google']}, twitter {missing['twitter']}")
    for index, category in enumerate(categories):
        print(f"  class {index} {category_text(category):20s} {class_counts[index]:4d}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # summary piped into `head`: the files are already written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
