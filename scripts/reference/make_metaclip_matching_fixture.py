"""Fixture for ferroclip's MetaCLIP matching parity test.

Run (stdlib Python 3 only, no MetaCLIP install needed):
    python3 scripts/reference/make_metaclip_matching_fixture.py \
        > curator/tests/fixtures/metaclip_matching.json

It writes hand-picked metadata entries (overlapping, multiword, case variants, entries
holding punctuation), the word list captions are drawn from, and captions generated from a
fixed seed, each with the entries MetaCLIP's substring rule matches. The oracle below
restates that rule plainly: pad the text with spaces, put spaces around , . ; : ? ! and the
backtick, turn tab/newline/carriage return into spaces, and an entry matches when
" entry " is a substring (case-sensitive). curator/src/metaclip/matcher.rs must give the
same sets (its token trie, and the Aho-Corasick matcher kept beside it for comparison).
"""
import json
import random
import sys

ENTRIES = [
    "cat", "Cat", "cats", "dog", "hot dog", "hot", "New York", "York", "New York City",
    "city", "ice cream", "ice", "cream", "St. Louis", "a.m.", "C++", "rock 'n' roll",
    "e-mail", "mail", "café", "naïve", "über", "10", "99", "1", "x", "a", "the cat",
    "black cat", "black", "sea lion", "lion", "sea", "Sea", "well-being", "being",
    "it's", "U.S.", "Paris", "paris", "smiley face", "face", "grinning face",
    "face with tears of joy", "tears", "joy", "red heart", "heart", "thumbs up", "up",
    "(cat)", "cat)", "\"dog\"", "dog,", "dog ,", ", dog",
]

WORDS = ENTRIES + [
    "on", "the", "with", "and", "in", "of", "photo", "picture", "an", "NEW", "YORK",
    "Hot", "DOG", "ICE", "lions", "seas", "concatenate", "dogma", "catalog", "100",
    "1000", "cafe", "naive", "faces", "hearts", "upside", "down", "emoji", "😀", "🐱",
]

SEPARATORS = [" ", " ", " ", " ", "  ", ",", ", ", ".", ". ", ";", ":", "?", "!", "`",
              "\t", "\n", "\r\n", "-", "'", "\"", "(", ")", "/", ""]


def spaced(text):
    out = " " + text + " "
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        out = out.replace(p, " " + p + " ")
    for c in ["\t", "\n", "\r"]:
        out = out.replace(c, " ")
    return out


def matched_ids(text):
    s = spaced(text)
    return [i for i, e in enumerate(ENTRIES) if " " + e + " " in s]


def caption(rng):
    n = rng.randint(1, 9)
    parts = []
    for _ in range(n):
        parts.append(rng.choice(WORDS))
        parts.append(rng.choice(SEPARATORS))
    text = "".join(parts)
    if rng.random() < 0.2:
        text = rng.choice(SEPARATORS) + text
    return text


def main():
    assert len(set(ENTRIES)) == len(ENTRIES)
    rng = random.Random(20240607)
    cases = []
    for _ in range(1500):
        text = caption(rng)
        cases.append({"text": text, "matched": matched_ids(text)})
    json.dump({"entries": ENTRIES, "words": WORDS, "separators": SEPARATORS, "cases": cases},
              sys.stdout, ensure_ascii=False, indent=0)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
