"""Reference fixtures for dataloader/tests/tokenizer_parity.rs (CLIP BPE tokenizer).

Tokenizes a few thousand strings with open_clip 3.3.0's own tokenizer
(`open_clip.get_tokenizer('ViT-B-32')`, a SimpleTokenizer with clean='lower') and
stores, per string, the full untruncated ids [SOT, .., EOT] and, for texts longer
than the context, the context-77 row with its zero padding removed.

Strings: emoji names, short names and tags from data/npm/node_modules
(emoji-datasource-google/emoji.json, emojibase-data/en/data.json), emoji characters,
punctuation, diacritics, CJK, numbers, HTML character references (named, numeric,
ftfy's upper-case forms, nested), mixed case, odd whitespace, control characters,
over-long texts, contractions. Seeded, so reruns give the same file.

Strings whose ids depend on ftfy's mojibake repair (`fix_encoding`), which the Rust
tokenizer does not implement, go to a separate "known differences" file together
with the ids open_clip gives when ftfy runs with fix_encoding=False; the Rust test
checks that it reproduces the latter and still differs from the former.

Run from the repository root (needs the reference env and `npm` data, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_tokenizer_fixture.py
Writes dataloader/tests/fixtures/tokenizer_parity.jsonl,
dataloader/tests/fixtures/tokenizer_known_differences.jsonl, and
dataloader/data/html5_entities.txt: the HTML5 named character references exactly as
Python's `html.entities.html5` has them (WHATWG's list; the tokenizer embeds it),
one per line: name (without '&', with ';' where the list has it), a tab, the
code points in hex separated by spaces.
"""
import html.entities
import json
import os
import random

import ftfy
import open_clip
from open_clip import tokenizer as oc_tokenizer

CONTEXT = 77
OUT_DIR = "dataloader/tests/fixtures"
NPM = "data/npm/node_modules"

tok = open_clip.get_tokenizer("ViT-B-32")
assert isinstance(tok, oc_tokenizer.SimpleTokenizer), type(tok)
assert tok.clean_fn is oc_tokenizer._clean_lower
rng = random.Random(20240607)


def full_ids(text):
    return [tok.sot_token_id] + tok.encode(text) + [tok.eot_token_id]


def ctx_ids(text):
    row = tok([text], context_length=CONTEXT)[0].tolist()
    while row and row[-1] == 0:
        row.pop()
    return row


def ids_without_mojibake_repair(text):
    """open_clip's ids when ftfy skips fix_encoding (what the Rust port implements)."""
    real = ftfy.fix_text
    oc_tokenizer.ftfy.fix_text = lambda t, **kw: real(t, fix_encoding=False, **kw)
    try:
        return full_ids(text)
    finally:
        oc_tokenizer.ftfy.fix_text = real


texts = []


def add(*items):
    texts.extend(items)


# --- known ids and trivial cases
add("a photo of a cat", "", " ", "   \t\n  ", "A", "a", "I", "0", ".", "!!!", "a.b,c")

# --- emoji data from npm packages
google = json.load(open(os.path.join(NPM, "emoji-datasource-google/emoji.json")))
emojibase = json.load(open(os.path.join(NPM, "emojibase-data/en/data.json")))
for entry in rng.sample(google, 260):
    add(entry["name"] or "", entry["short_name"])
    if entry.get("text"):
        add(entry["text"])
for entry in rng.sample(emojibase, 260):
    add(entry["label"], entry["emoji"])
    tags = entry.get("tags") or []
    if tags:
        add(" ".join(tags), ", ".join(tags))
    for skin in (entry.get("skins") or [])[:1]:
        add(skin["label"], skin["emoji"])
add("a photo of a " + " ".join(e["emoji"] for e in emojibase[:12]))
# England flag: tag characters (U+E0067..) that ftfy keeps
add("\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F flag")
add("👨‍👩‍👧‍👦 family", "👍🏽 thumbs", "🇯🇵🇺🇸", "☺️ smile", "❤\ufe0f", "1️⃣ keycap", "©®™")

# --- punctuation
add("Hello, world!", "what?!", "wait...", "end.", "(parenthesised) [bracketed] {braced}",
    "a--b", "a—b–c", "50% off!!!", "#hashtag @mention", "http://example.com/a?b=c&d=e",
    "e-mail: someone@example.org", "C++ and C#", "¯\\_(ツ)_/¯", "** bold ** __under__",
    "~tilde~ `code` |pipe| ^caret^", "$100.00 €50 £20 ¥1000", "«quoted» „German“",
    "…ellipsis…", "a/b\\c", "<html><b>bold</b></html>", "<start_of_text>", "<end_of_text>",
    "hi <start_of_text> there <end_of_text> you", "<START_OF_TEXT>", "<ſtart_of_text>",
    "\u2018single\u2019 \u201cdouble\u201d \u201a\u201b \u201e\u201f \u02bcokina")

# --- apostrophes and contractions
add("it's", "don't", "you're", "we've", "I'm", "we'll", "he'd", "IT'S", "Don'T",
    "can't won't shouldn't", "rock'n'roll", "'s", "'", "''", "o'clock", "the dog's bone",
    "'sup", "it’s curly", "'ſ long s", "'ll'll've", "y'all'd've", "'d'", "ma'am")

# --- accents, diacritics, other scripts
add("café", "naïve résumé", "Crème Brûlée", "São Paulo", "Zürich", "Øresund", "Łódź",
    "Ελληνικά", "ΟΔΟΣ", "ΣΊΣΥΦΟΣ", "Ἀθῆναι", "русский текст", "Україна", "עברית",
    "العربية", "हिन्दी", "ภาษาไทย", "한국어 텍스트", "ｶﾀｶﾅ", "ﾊﾝｶｸ", "İstanbul", "ǅemal",
    "e\u0301", "A\u030a", "\u1100\u1161\u11a8", "Straße", "STRASSE", "ß", "ﬁne ﬂower ﬀ ﬃ ﬄ ﬆ ﬅ",
    "ĳsselmeer Ĳ", "ŉ", "Ǉubljana", "\u0345", "\u03b1\u0345", "x\u0345y", "Ⅻ roman ⅻ",
    "①②③", "ⓐⓑⓒ Ⓐ", "K kelvin", "Å angstrom", "ǰ", "ΐ", "ﬀ")
add("中文文本", "日本語のテキスト", "ひらがな カタカナ", "漢字", "猫の写真", "一只猫的照片",
    "東京タワー", "北京", "ＬＯＵＤ　ＮＯＩＳＥＳ", "ｆｕｌｌｗｉｄｔｈ １２３", "Ｕﾀｰﾝ", "　ideographic space")

# --- numbers
add("1", "12", "123", "2024-06-07", "3.14159", "1,000,000", "1e10", "0x1F600", "٣ arabic digit",
    "४२ devanagari", "²³ superscripts", "½ ¾", "v1.2.3", "100k", "7th 1st 2nd 3rd", "42")

# --- HTML character references
add("&amp;", "&amp", "&amp;amp;", "&amp;amp;amp;amp;", "&lt;tag&gt;", "&quot;q&quot;",
    "&#39;", "&#x27;", "&#65;&#66;&#67", "&#x41;&#X42;", "&#0;", "&#13;", "&#128;", "&#x80;",
    "&#150;", "&#x9d;", "&#1;", "&#11;", "&#x110000;", "&#xD800;", "&#99999999999999999999;",
    "&#65279;", "&#xFFFE;", "&#59;", "&#38;amp;", "&nbsp;x&nbsp;", "&copy; 2024", "&copy 2024",
    "&notit;", "&notin;", "this&not that", "&eacute;", "&EACUTE;", "P&EACUTE;REZ",
    "BUNDESSTRA&SZLIG;E", "&ntilde; &Ntilde; &NTILDE; &nTILDE;", "&AMP;", "&Amp;", "&LT;",
    "&Jscr;ohn &HilbertSpace;ancock", "&checkmark;", "&hellip;", "&mdash;&ndash;",
    "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!", "&macr;\\_(ツ)_/&macr;", "&", "& &",
    "&;", "&#;", "&#x;", "&#xZ;", "a & b", "AT&T", "Q&A", "R&D&amp;co", "&unknown;",
    "&ampersand", "&ltfoo", "&amp;lt;b&amp;gt;", "<b>&amp;</b>", "a<b &EACUTE;",
    "line1 &EACUTE;\nline2 <b> &EACUTE;\nline3 &EACUTE;", "&EACUTE;\n<b>\n&NTILDE;",
    "&" + "a" * 40 + ";", "&\tamp;", "&am\rp;", "&aacute&eacute", "&frac12;&frac34;",
    "&Aacute;&AACUTE;", "&szlig;", "&SZLIG;", "&fflig;", "&ThickSpace;x", "&NewLine;x",
    "&Tab;x", "&nbsp;&ensp;&emsp;&thinsp;", "&zwj;&zwnj;", "&lrm;&rlm;", "&NotEqualTilde;",
    "&bne;", "&acE;", "&#x1F600;", "&#128512;")
names = sorted(html.entities.html5)
for name in rng.sample(names, 240):
    add("x&" + name + "y")
for name in rng.sample([n for n in names if n.endswith(";") and n == n.lower()], 60):
    add("X&" + name.upper() + "Y")
for number in rng.sample(range(0, 0x2FFFF), 40) + list(range(0x7F, 0xA1)):
    add(f"&#{number};", f"&#x{number:x}")

# --- case and whitespace
add("A Photo Of A CAT", "ALL CAPS TEXT", "camelCaseWord", "PascalCase", "snake_case_name",
    "kebab-case-name", "MiXeD cAsE", "iPhone", "McDonald's", "a\tphoto\tof", "a\nphoto\nof",
    "  leading", "trailing  ", "multiple    spaces", "\r\nwindows\r\nlines\r\n", "old\rmac",
    "nbsp\u00a0space", "em\u2003space", "zero\u200bwidth", "line\u2028sep\u2029para",
    "next\u0085line", "vt\x0bff\x0c", "fs\x1cgs\x1drs\x1eus\x1f", "nul\x00char", "bell\x07",
    "esc\x1b[31mred\x1b[0m", "\x1b[1;32mbold green\x1b[m", "del\x7fete", "bom\ufeffx",
    "\ufeffleading bom", "c1 \x80\x81\x8d\x8f\x90\x9d\x9f", "soft\u00adhyphen",
    "\u206atext\u206f", "obj\ufffcrepl\ufffd", "\u200e\u200f\u202a\u202e", "tab\t\t\ttab",
    "\u3000ideographic\u3000", "\u180emongolian", "\u2060word joiner")

# --- every full/half-width form and ligature; characters whose Unicode properties
# differ between Python 3.11 (Unicode 14) / regex (Unicode 17) and the Rust tables
add(" ".join(chr(i) for i in range(0xFF01, 0xFF80)), " ".join(chr(i) for i in range(0xFF80, 0xFFF0)),
    "Ĳĳŉ ǱǲǳǄǅǆǇǈǉǊǋǌ ﬀﬁﬂﬃﬄﬅﬆ", "\u0558\u0a5c\U0003d010 new letters", "\U00012560\U00016ff4 new numbers",
    "\u1c89\ua7cb\U00010d55\U00016ea5 new capitals", "\u03a3\u1ad0 A\u1ad0\u03a3 A\u03a3\u0897B",
    "x\u0308\u1ad0\u0301", "\U00016d67\U00016d67 \U000105d2\u0307", "\x1b[\U00016d74mX \x1b[\u0663mY",
    "ΟΔΟΣ ΟΔΟΣ. Σ ΑΣ ΣΑ", "ὈΔΥΣΣΕΎΣ")

# --- longer and over-long texts
words = [e["label"] for e in emojibase]
for n in (10, 30, 60, 75, 76, 80, 120, 300):
    add(" ".join(rng.choice(words) for _ in range(n)))
add("a " * 74 + "cat", "a " * 75 + "cat", "a " * 76 + "cat", "a " * 200,
    "supercalifragilisticexpialidocious " * 20, "🐱" * 100, "&amp;" * 100, "x" * 500,
    "pneumonoultramicroscopicsilicovolcanoconiosis", "A" * 1000, "lorem ipsum dolor sit amet, " * 15)

# --- mixtures of everything, seeded
pieces = ["cat", "Dog", "&amp;", "'s", "é", "中", "🐶", "  ", "\t", "123", "...", "ﬁ", "“q”",
          "&EACUTE;", "ＡＢ", "\u00a0", "-", "_", "İ", "Σ", "ΣΑΣ", "ς"]
for _ in range(150):
    add("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))

# --- mojibake (ftfy's fix_encoding; expected to be a known difference)
mojibake = ["âœ” No problems", "sÃ³", "voilÃ le travail", "cafÃ©", "Ã¼ber", "donâ€™t",
            "â€œquotedâ€\x9d", "The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t have eyebrows.",
            "&macr;\\_(ã\x83\x84)_/&macr;", "Ã\xa0 la mode", "ÐŸÑ€Ð¸Ð²ÐµÑ‚"]

seen = set()
parity, known = [], []
for text in texts + mojibake:
    if text in seen:
        continue
    seen.add(text)
    ids = full_ids(text)
    reference = ids_without_mojibake_repair(text)
    if ids != reference:
        known.append({"text": text, "ids": ids, "ids_without_mojibake_repair": reference,
                      "reason": "ftfy fix_encoding (mojibake repair) is not implemented"})
        continue
    row = {"text": text, "ids": ids}
    if len(ids) > CONTEXT:
        row["ids_ctx77"] = ctx_ids(text)
    parity.append(row)
assert parity[0]["ids"] == [49406, 320, 1125, 539, 320, 2368, 49407], parity[0]
assert {"text": "", "ids": [49406, 49407]} in parity

os.makedirs(OUT_DIR, exist_ok=True)
for name, rows in (("tokenizer_parity.jsonl", parity), ("tokenizer_known_differences.jsonl", known)):
    with open(os.path.join(OUT_DIR, name), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")
    print(f"{name}: {len(rows)} strings")

with open("dataloader/data/html5_entities.txt", "w", encoding="ascii") as f:
    for name, value in sorted(html.entities.html5.items()):
        f.write(name + "\t" + " ".join(f"{ord(c):X}" for c in value) + "\n")
print(f"html5_entities.txt: {len(html.entities.html5)} entities")
