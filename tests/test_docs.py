"""The documentation runs: every ```python block of README.md and docs/*.md, and every relative link.

Convention (an HTML comment on the line right before the fence):

* ``<!-- continue -->``: the block continues the previous python block of the same page, in its
  namespace and working directory; a block without it starts a fresh namespace.
* ``<!-- slow -->``: the block runs only under ``-m slow``.
* ``<!-- needs torch -->``: the block is skipped when torch is not installed.

Markers combine (``<!-- continue slow -->``). A continuing block inherits the markers of the
blocks it continues. Each block is one test, ``docs/models.md:123`` (the fence's line). Blocks run
in a temporary working directory (what they write does not land in the repository). Tests of one
chain run in order and share one namespace; a block whose predecessor in the chain failed fails
at once, naming it, and a block whose predecessors did not run in this session (deselected, or
``-k`` picked it alone) first reruns them from the start of the chain. Shell (```bash) and
output (```) blocks are not executed.
"""

from __future__ import annotations

import linecache
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
MARKERS = {"continue", "slow", "needs torch"}

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_COMMENT = re.compile(r"^\s*<!--(.*?)-->\s*$")


@dataclass
class Block:
    page: str                 # relative to the repository root, e.g. "docs/models.md"
    line: int                 # 1-based line of the opening fence
    code: str
    markers: set = field(default_factory=set)
    chain: list = field(default_factory=list)   # the blocks from the chain's start up to this one

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def slow(self) -> bool:
        return any("slow" in b.markers for b in self.chain)

    @property
    def needs_torch(self) -> bool:
        return any("needs torch" in b.markers for b in self.chain)


def parse_markers(comment: str, where: str) -> set:
    """The markers of ``<!-- ... -->``; an empty set for an ordinary comment (no marker word in
    it). A comment that mixes marker words with anything else is a typo, and an error."""
    words = comment.split()
    found, unknown, i = set(), [], 0
    while i < len(words):
        if words[i] == "needs" and i + 1 < len(words):
            word, i = f"needs {words[i + 1]}", i + 2
        else:
            word, i = words[i], i + 1
        (found.add if word in MARKERS else unknown.append)(word)
    if found and unknown:
        raise ValueError(f"{where}: unknown doc-test marker(s) {unknown} in <!--{comment}-->; "
                         f"known: {sorted(MARKERS)}")
    return found


def python_blocks(path: Path) -> list:
    """Every ```python block of ``path`` with its markers and chain."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang in ("python", "py"):
            prev = lines[start - 1] if start > 0 else ""
            c = _COMMENT.match(prev)
            markers = parse_markers(c.group(1), f"{rel}:{start + 1}") if c else set()
            b = Block(rel, start + 1, "\n".join(lines[start + 1:j]) + "\n", markers)
            if "continue" in markers:
                if not blocks:
                    raise ValueError(f"{b.id}: <!-- continue --> on the first python block of the page")
                b.chain = blocks[-1].chain + [b]
            else:
                b.chain = [b]
            blocks.append(b)
        i = j + 1
    return blocks


BLOCKS = [b for page in PAGES for b in python_blocks(page)]


def _param(b: Block):
    marks = [pytest.mark.slow] if b.slow else []
    return pytest.param(b, id=b.id, marks=marks)


# chain start id -> {"done": index of the last block run, "ns": namespace, "cwd": folder,
#                    "failed": id of a block that failed}
_STATE: dict = {}


def _run(b: Block, ns: dict) -> None:
    filename = str(ROOT / b.page)
    linecache.checkcache(filename)
    code = compile("\n" * b.line + b.code, filename, "exec")     # tracebacks show the page's lines
    with warnings.catch_warnings():
        warnings.simplefilter("default")     # warnings show as they would for a reader
        exec(code, ns)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_doc_block(block, tmp_path_factory, monkeypatch):
    if block.needs_torch:
        pytest.importorskip("torch")
    head = block.chain[0].id
    state = _STATE.get(head)
    k = len(block.chain) - 1
    if state is not None and state.get("failed"):
        pytest.fail(f"{block.id} continues {state['failed']}, which failed", pytrace=False)
    if state is None or state["done"] != k - 1:
        # run (or rerun) the chain from its start: the earlier blocks were deselected or ran
        # out of order
        state = {"done": -1, "ns": {"__name__": "__docs__"},
                 "cwd": tmp_path_factory.mktemp("doc"), "failed": None}
        _STATE[head] = state
    monkeypatch.chdir(state["cwd"])
    for i in range(state["done"] + 1, k + 1):
        b = block.chain[i]
        try:
            _run(b, state["ns"])
        except BaseException:
            state["failed"] = b.id
            if b is not block:
                pytest.fail(f"{block.id} continues {b.id}, which failed (rerun here because it had "
                            f"not run in this session)", pytrace=False)
            raise
        state["done"] = i


def test_blocks_were_found():
    pages = {b.page for b in BLOCKS}
    assert "README.md" in pages and "docs/models.md" in pages, pages


# ------------------------------------------------------------------------------------------------
# links
# ------------------------------------------------------------------------------------------------
_LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(path: Path) -> set:
    out, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def _links(path: Path):
    in_code = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        line = re.sub(r"`[^`]*`", "", line)               # links inside inline code are text
        for m in _LINK.finditer(line):
            yield n, m.group(1) or m.group(2)


# Targets that are generated rather than written (none at present). Listed by name, so any other
# missing target still fails.
PENDING = set()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for n, target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if file and not dest.exists():
            if rel not in PENDING:
                broken.append(f"line {n}: {target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"line {n}: {target} (no heading #{anchor} in {rel})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
