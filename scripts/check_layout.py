#!/usr/bin/env python3
"""The shape of the code, checked (part of scripts/test.sh; docs/architecture.md §2).

- no non-test Rust source file over 800 lines (a module's tests may live in its
  `<module>/tests.rs`, which is a test file);
- no import cycle between the modules of a crate, parent and child included: a module
  may use its children, a child must not use what its parent *defines* (shared types
  go in a sibling module that the parent re-exports);
- `trainer::train::train` (the train loop's table of contents) at most 150 lines;
- nothing in the repository points to a design document outside it.

    scripts/check_layout.py              check the repository, exit 1 on a violation
    scripts/check_layout.py --self-test  check that each rule catches a planted violation
"""
import os
import re
import subprocess
import sys
import tempfile

MAX_LINES = 800
MAX_TRAIN_FN_LINES = 150
CRATES = ["dataloader/src", "trainer/src", "launcher/src", "curator/src", "protocol/src", "src"]
OUTSIDE_POINTERS = re.compile(r"\.\./shared|DESIGN\.md")


def rust_sources(root):
    """Tracked and untracked-but-not-ignored .rs files under root (git's view), else all."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.rs"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.split()
        return [f for f in out if os.path.exists(os.path.join(root, f))]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for d, _, files in os.walk(root):
            found += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".rs")]
        return found


def is_test_file(path):
    parts = path.split("/")
    return parts[-1] == "tests.rs" or "tests" in parts[:-1] or parts[0] == "fuzz"


def long_files(root):
    bad = []
    for path in rust_sources(root):
        if is_test_file(path):
            continue
        with open(os.path.join(root, path), encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            home = path[: -len("/mod.rs")] if path.endswith("/mod.rs") else path[:-3]
            bad.append(f"{path}: {n} lines (at most {MAX_LINES}; move its tests to {home}/tests.rs or split it by job)")
    return bad


# --- module cycles --------------------------------------------------------------------

def strip_comments_and_tests(text):
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*(\{|;)")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        if m.group(3) == ";":
            i = m.end()
            continue
        j, depth = m.end(), 1
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j


def inline_modules_as_self(text):
    """Inside an inline `mod x { ... }` (a cfg'd SIMD module, say) `super::` is the file's own
    module: rewritten to `self::`, it resolves to this file rather than to its parent."""
    out, i = [], 0
    for m in re.finditer(r"\bmod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        j, depth = m.end(), 1
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out.append(text[i:m.end()])
        out.append(re.sub(r"\bsuper::", "self::", text[m.end():j]))
        i = j
    out.append(text[i:])
    return "".join(out)


def crate_modules(src):
    """Module path (tuple) -> file, for every non-test module file of a crate."""
    mods = {}
    for d, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(d, f), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            if (rel and rel[-1] == "tests") or "bin" in rel:
                continue
            mods[tuple(rel)] = os.path.join(d, f)
    return mods


def defines(text, name):
    return re.search(r"\b(struct|enum|fn|trait|type|const|static|union|mod)\s+" + re.escape(name) + r"\b", text)


def resolve(mods, texts, path, depth=0):
    """The module that defines `path` (following `pub use` re-exports)."""
    for k in range(len(path), -1, -1):
        prefix = tuple(path[:k])
        if prefix not in mods:
            continue
        rest = path[k:]
        if rest and depth < 8 and not defines(texts[prefix], rest[0]):
            name = re.escape(rest[0])
            m = re.search(r"pub(\([^)]*\))?\s+use\s+([\w:]+)::\{[^}]*\b" + name + r"\b", texts[prefix]) or \
                re.search(r"pub(\([^)]*\))?\s+use\s+([\w:]+)::" + name + r"\b", texts[prefix])
            if m:
                target = absolute(list(prefix), m.group(2).split("::"), mods)
                if target is not None:
                    found = resolve(mods, texts, tuple(target) + (rest[0],), depth + 1)
                    if found is not None:
                        return found
        return prefix
    return None


def absolute(base, segments, mods):
    if segments[0] == "crate":
        return segments[1:]
    if segments[0] == "self":
        return base + segments[1:]
    if segments[0] == "super":
        full, i = list(base), 0
        while i < len(segments) and segments[i] == "super":
            full, i = full[:-1], i + 1
        return full + segments[i:]
    if tuple(base + segments[:1]) in mods:
        return base + segments
    return None


def expand_use(tree):
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree[:-3].split("::")] if tree.endswith("::*") else [tree.split("::")]
    prefix = m.group(1).rstrip(":")
    parts, depth, current = [], 0, ""
    for ch in m.group(2):
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        current += ch
    if current:
        parts.append(current)
    out = []
    for part in parts:
        part = part.split(" as ")[0]
        if part == "self":
            out.append(prefix.split("::"))
        else:
            out += expand_use(f"{prefix}::{part}" if prefix else part)
    return out


def module_edges(src):
    mods = crate_modules(src)
    texts = {}
    for m, path in mods.items():
        with open(path, encoding="utf-8") as f:
            texts[m] = inline_modules_as_self(strip_comments_and_tests(f.read()))
    edges = {m: set() for m in mods}
    for m, text in texts.items():
        paths = []
        for use in re.finditer(r"\buse\s+([^;]+);", text):
            paths += expand_use(re.sub(r"\s+", "", use.group(1)))
        paths += [p.group(1).split("::") for p in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text)]
        for p in paths:
            p = [x for x in p if x]
            if not p:
                continue
            full = absolute(list(m), p, mods)
            if full is None:
                continue
            target = resolve(mods, texts, tuple(full))
            if target is not None and target != m:
                edges[m].add(target)
    return edges


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return found


def module_cycles(root):
    bad = []
    for crate in CRATES:
        src = os.path.join(root, crate)
        if not os.path.isdir(src):
            continue
        edges = module_edges(src)
        for component in cycles(edges):
            names = lambda ms: ", ".join("::".join(m) or "(crate root)" for m in sorted(ms))
            arrows = [f"{'::'.join(a) or 'crate'} -> {'::'.join(b) or 'crate'}"
                      for a in sorted(component) for b in sorted(edges[a] & set(component))]
            bad.append(f"{crate}: import cycle between {names(component)} ({'; '.join(arrows)})")
    return bad


# --- the train loop and outside pointers ----------------------------------------------

def long_train_fn(root):
    path = os.path.join(root, "trainer/src/train/mod.rs")
    if not os.path.exists(path):
        return []
    lines = open(path, encoding="utf-8").read().split("\n")
    start = next((i for i, l in enumerate(lines) if l.startswith("pub fn train(")), None)
    if start is None:
        return ["trainer/src/train/mod.rs: no `pub fn train(`"]
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    n = end - start + 1
    return [f"trainer/src/train/mod.rs: train() is {n} lines (at most {MAX_TRAIN_FN_LINES})"] if n > MAX_TRAIN_FN_LINES else []


def outside_pointers(root):
    try:
        files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return []
    bad = []
    for f in files:
        if not f or f == "scripts/check_layout.py" or not os.path.isfile(os.path.join(root, f)):
            continue
        try:
            text = open(os.path.join(root, f), encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.split("\n"), 1):
            if OUTSIDE_POINTERS.search(line):
                bad.append(f"{f}:{n}: points outside the repository ({line.strip()[:80]}); point into docs/architecture.md")
    return bad


def check(root):
    return long_files(root) + module_cycles(root) + long_train_fn(root) + outside_pointers(root)


# --- self-test: every rule catches what it is for -------------------------------------

def self_test():
    with tempfile.TemporaryDirectory() as root:
        def write(path, text):
            os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
            with open(os.path.join(root, path), "w", encoding="utf-8") as f:
                f.write(text)
        write("trainer/src/lib.rs", "pub mod a;\npub mod b;\npub mod p;\n")
        write("trainer/src/a.rs", "use crate::b::B;\npub struct A;\n")
        write("trainer/src/b.rs", "use crate::a::A;\npub struct B;\n")
        write("trainer/src/p/mod.rs", "mod c;\npub use c::C;\npub struct Shared;\n")
        write("trainer/src/p/c.rs", "use super::Shared;\npub struct C;\n")
        write("dataloader/src/lib.rs", "pub mod ok;\npub mod x;\npub use x::X;\n")
        write("dataloader/src/ok/mod.rs", "mod inner;\nmod types;\npub use types::T;\n")
        write("dataloader/src/ok/types.rs", "pub struct T;\n")
        write("dataloader/src/ok/inner.rs", "use super::T;\n#[cfg(test)]\nmod tests { use crate::x::X; }\n")
        write("dataloader/src/x.rs", "use crate::ok::T;\npub struct X;\nfn y() {}\nmod simd { use super::y; }\n")
        write("curator/src/lib.rs", "\n" * (MAX_LINES + 1))
        write("curator/src/big/tests.rs", "\n" * (MAX_LINES + 5))
        write("trainer/src/train/mod.rs", "pub fn train() {\n" + "    let _ = 1;\n" * MAX_TRAIN_FN_LINES + "}\n")
        write("README.md", "see ../shared/DESIGN.md\n")
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        problems = check(root)
        text = "\n".join(problems)
        expected = {
            "a sibling cycle": "import cycle between a, b",
            "a child using its parent's own item": "import cycle between p, p::c",
            "a file over the limit": "curator/src/lib.rs: 801 lines",
            "a long train()": "train() is 152 lines",
            "a pointer outside": "README.md:1: points outside",
        }
        missed = [what for what, needle in expected.items() if needle not in text]
        false_alarms = [p for p in problems if "dataloader" in p or "big/tests.rs" in p]
        if missed or false_alarms:
            print("check_layout self-test FAILED", file=sys.stderr)
            for what in missed:
                print(f"  not caught: {what}", file=sys.stderr)
            for p in false_alarms:
                print(f"  false alarm: {p}", file=sys.stderr)
            print("  all problems found:\n    " + "\n    ".join(problems), file=sys.stderr)
            return 1
        print(f"check_layout self-test: {len(expected)} planted violations caught, no false alarm")
        return 0


def main():
    if "--self-test" in sys.argv[1:]:
        return self_test()
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    problems = check(root)
    for p in problems:
        print(f"layout: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"layout: ok (no source file over {MAX_LINES} lines, no module cycles, train() within "
          f"{MAX_TRAIN_FN_LINES} lines, no pointers outside the repository)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
