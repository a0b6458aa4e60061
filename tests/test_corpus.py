"""Corpora: the built-in pydoc and stdlib corpora, file loading errors, the line-boundary split."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchlm.data.corpus import builtin_corpus, lines, load_corpus, split_corpus


def test_builtin_corpus_is_pydoc_topics_joined():
    from pydoc_data.topics import topics

    text = builtin_corpus()
    assert isinstance(text, str) and len(text) > 100_000
    assert "\r" not in text and text.endswith("\n") and not text.startswith("\n")
    assert builtin_corpus() is text                       # cached
    # the topics appear in sorted-key order, separated by blank lines
    keys = sorted(topics)
    first = topics[keys[0]].replace("\r\n", "\n").strip("\n")
    second = topics[keys[1]].replace("\r\n", "\n").strip("\n")
    assert text.startswith(first + "\n\n" + second)
    assert topics["if"].replace("\r\n", "\n").strip("\n") in text
    assert len(lines(text)) > 1000


def test_load_corpus_roundtrip(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("héllo wörld\r\nsecond line\rthird\n".encode("utf-8"))
    assert load_corpus(p) == "héllo wörld\nsecond line\nthird\n"
    assert load_corpus(str(p)) == load_corpus(p)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfabc\n")
    assert load_corpus(bom) == "abc\n"


def test_load_corpus_missing(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(missing)


def test_load_corpus_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory, not a regular corpus file"):
        load_corpus(tmp_path)


def test_load_corpus_refuses_non_regular_files_before_reading(tmp_path):
    import os
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a FIFO"):
        load_corpus(fifo)                                  # no open(): a FIFO would block forever
    with pytest.raises(ValueError, match="is a device"):
        load_corpus("/dev/zero")                           # would read forever
    link = tmp_path / "zero.txt"
    link.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="is a device"):
        load_corpus(link)


def test_load_corpus_size_limit(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("hello world\n" * 10)
    assert load_corpus(p, max_bytes=120) == "hello world\n" * 10
    with pytest.raises(ValueError, match="has 120 bytes, more than the 119 a corpus file may have"):
        load_corpus(p, max_bytes=119)


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  "])
def test_load_corpus_empty(tmp_path, content):
    p = tmp_path / "empty.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="empty"):
        load_corpus(p)


def test_load_corpus_binary(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc\x00\x01\x02" + bytes(range(256)))
    with pytest.raises(ValueError, match="looks binary.*offset 3"):
        load_corpus(p)


def test_load_corpus_latin1(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café au lait\n".encode("latin-1"))       # 'é' = 0xe9 at byte 3
    with pytest.raises(ValueError, match=r"not valid UTF-8.*0xe9.*byte offset 3"):
        load_corpus(p)
    p.write_bytes("ok line\nnaïve\n".encode("latin-1"))      # 'ï' = 0xef at byte 10
    with pytest.raises(ValueError, match="byte offset 10"):
        load_corpus(p)


def test_load_corpus_bad_path_type():
    with pytest.raises(TypeError, match="path"):
        load_corpus(123)
    with pytest.raises(TypeError, match="path"):
        load_corpus(b"file.txt")


def test_split_corpus_basic():
    text = "".join(f"line {i:02d}\n" for i in range(20))      # 20 lines of 8 chars
    train, val = split_corpus(text, 0.25)
    assert train + val == text
    assert train.endswith("\n")
    assert len(lines(train)) == 15 and len(lines(val)) == 5
    assert val.startswith("line 15")
    assert split_corpus(text, 0.25) == (train, val)           # deterministic


def test_split_corpus_picks_nearest_line_boundary():
    text = "a" * 50 + "\n" + "b" * 10 + "\n" + "c" * 40 + "\n"   # 103 chars; cuts at 51, 62
    assert split_corpus(text, 0.46)[0] == "a" * 50 + "\n"       # target 55.62 -> 51
    assert split_corpus(text, 0.44)[0] == "a" * 50 + "\n" + "b" * 10 + "\n"  # 57.68 -> 62
    # tiny fractions still leave a non-blank validation line, huge ones a training line
    assert lines(split_corpus(text, 1e-9)[1]) == ["c" * 40]
    assert lines(split_corpus(text, 1 - 1e-9)[0]) == ["a" * 50]


def test_split_corpus_builtin():
    text = builtin_corpus()
    train, val = split_corpus(text)
    assert train + val == text
    assert abs(len(val) / len(text) - 0.1) < 0.01


@pytest.mark.parametrize("frac", [0, 1, -0.1, 1.5, float("nan")])
def test_split_corpus_bad_fraction(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        split_corpus("a\nb\n", frac)


def test_split_corpus_errors():
    with pytest.raises(TypeError, match="val_fraction"):
        split_corpus("a\nb\n", "0.1")
    with pytest.raises(TypeError, match="val_fraction"):
        split_corpus("a\nb\n", True)
    with pytest.raises(TypeError, match="text"):
        split_corpus(b"a\nb\n")
    for short in ("only one line\n", "one\n\n\n", "", "  \n ", "\n\nx"):
        with pytest.raises(ValueError, match="two non-blank lines"):
            split_corpus(short, 0.5)


@given(st.lists(st.text(alphabet="ab \t", max_size=6), min_size=1, max_size=12),
       st.floats(0.01, 0.99))
def test_split_corpus_properties(line_list, frac):
    text = "\n".join(line_list) + "\n"
    if len(lines(text)) < 2:
        with pytest.raises(ValueError):
            split_corpus(text, frac)
        return
    train, val = split_corpus(text, frac)
    assert train + val == text
    assert train.endswith("\n")
    assert lines(train) and lines(val)
    assert lines(train) + lines(val) == lines(text)


def test_lines():
    assert lines("  a b \n\n\t\nc\r\nd  \r") == ["a b", "c", "d"]
    assert lines("") == []
    with pytest.raises(TypeError, match="text"):
        lines(["a"])


# ---- the two built-in corpora: "pydoc" (the default) and "stdlib" (standard-library docstrings
# and comments)

STDLIB_NAME = "built-in (stdlib docstrings and comments)"


def test_builtin_corpus_default_is_pydoc_and_cached_once():
    from scratchlm.data.corpus import read_corpus

    text = builtin_corpus()
    assert builtin_corpus("pydoc") is text and builtin_corpus(name="pydoc") is text
    assert read_corpus() == (text, "built-in (pydoc_data.topics)")       # unchanged name
    assert read_corpus(None, "pydoc") == (text, "built-in (pydoc_data.topics)")


def test_stdlib_corpus_size_and_shape():
    import os
    import sysconfig
    from scratchlm.data.corpus import read_corpus

    text = builtin_corpus("stdlib")
    assert builtin_corpus("stdlib") is text and builtin_corpus(name="stdlib") is text   # cached
    assert read_corpus(builtin="stdlib") == (text, STDLIB_NAME)
    assert text != builtin_corpus()
    # 2,825,712 bytes, 435,251 words and 19,820 paragraphs on CPython 3.11.7; the margin allows
    # other versions (3.12 and 3.13 drop distutils, lib2to3 and the "dead batteries") and
    # stripped distributions
    assert len(text.encode("utf-8")) > 2_000_000
    assert len(text.split()) > 300_000
    # '\n' line endings, a final newline, one paragraph per docstring: no blank or
    # whitespace-ended line inside a paragraph, no paragraph twice
    assert "\r" not in text and text.endswith("\n") and not text.endswith("\n\n")
    assert text.splitlines() == text.split("\n")[:-1]        # no other line breaks (\f, \u2028)
    paragraphs = text[:-1].split("\n\n")
    assert len(paragraphs) > 12_000 and len(set(paragraphs)) == len(paragraphs)
    assert all(p.strip() and p == p.strip("\n") for p in paragraphs)
    assert all(line == line.rstrip() and line for p in paragraphs for line in p.split("\n"))
    # a module docstring every version has, exactly as ast cleans it
    import ast
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "textwrap.py"), "rb") as f:
        doc = ast.get_docstring(ast.parse(f.read().decode("utf-8")), clean=True)
    assert doc.strip() and doc.strip() in paragraphs
    # and a comment block of textwrap.py (lines 12-14 since 2002) right after the module
    # docstring, in source order; the copyright block before them (lines 4-6) is left out
    assert ("\n\nText wrapping and filling.\n\nHardcode the recognized whitespace characters "
            "to the US-ASCII\nwhitespace characters.  The main reason for doing this is that\n"
            "some Unicode spaces (like \\u00a0) are non-breaking whitespaces.\n\n") in text
    assert "Copyright (C) 1999-2001 Gregory P. Ward." not in text


def test_stdlib_corpus_leaves_out_test_suites_and_site_packages():
    import ast
    import os
    import sysconfig
    from scratchlm.data.corpus import _paragraph

    text = builtin_corpus("stdlib")
    root = sysconfig.get_paths()
    # the regression-test package and a third-party package, where this machine has them
    # (the module docstrings of test/support and of numpy are long, specific and stable)
    import numpy
    for path in (os.path.join(root["stdlib"], "test", "support", "__init__.py"), numpy.__file__):
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            doc = ast.get_docstring(ast.parse(f.read().decode("utf-8")), clean=True)
        if doc and doc.strip():
            assert _paragraph(doc) not in text, path
    # comments that are not prose: the codecs' character tables ("'A'  # 0x41 -> LATIN CAPITAL
    # LETTER A"), shebangs, encoding declarations, tool directives
    assert "-> LATIN CAPITAL LETTER" not in text and "LATIN CAPITAL LETTER A\n" not in text
    text_lines = text.split("\n")
    assert not [line for line in text_lines
                if line.startswith(("!/usr/bin", "-*- coding", "noqa", "type: ignore",
                                    "pragma: no cover"))]


@pytest.mark.parametrize("relpath, kept", [
    ("os.py", True), ("unittest/case.py", True), ("doctest.py", True), ("json/tool.py", True),
    ("unittest/__init__.py", True), ("test.py", True), ("email/_test.py", True),
    ("test/test_os.py", False), ("test/support/__init__.py", False),
    ("unittest/test/test_case.py", False), ("ctypes/test/__init__.py", False),
    ("idlelib/idle_test/htest.py", False), ("lib2to3/tests/data/bom.py", False),
    ("distutils/tests/support.py", False), ("email/test_x.py", False), ("test_top.py", False),
    ("site-packages/numpy/__init__.py", False), ("dist-packages/six.py", False),
    ("config-3.11-x86_64-linux-gnu/python-config.py", False),
    ("_sysconfigdata__linux_x86_64-linux-gnu.py", False),
    ("__pycache__/os.cpython-311.py", False), ("os.pyc", False), ("README.txt", False),
])
def test_stdlib_source_filter(relpath, kept):
    from scratchlm.data.corpus import _is_stdlib_source
    assert _is_stdlib_source(relpath) is kept


def test_docstrings_in_source_order():
    from scratchlm.data.corpus import _docstrings

    source = '''"""Module."""
import x
class A:
    """Class A.

    body
        indented more
    """
    def f(self):
        """A.f."""
        def inner():
            """inner."""
    async def g(self):
        """A.g."""
    x = lambda: "not a docstring"
if x:
    def h():
        "h."
else:
    try:
        pass
    except E:
        class B:
            """B."""
    finally:
        def k():
            """k."""
match x:
    case 1:
        def m():
            """m."""
def last():
    return "not a docstring"
'''
    assert _docstrings(source) == ["Module.", "Class A.\n\nbody\n    indented more",
                                   "A.f.", "inner.", "A.g.", "h.", "B.", "k.", "m."]
    with pytest.raises(SyntaxError):
        _docstrings("def (:\n")


COMMENTED = (
    '#!/usr/bin/env python3\n'                      # 1  shebang: not taken
    '# -*- coding: latin-1 -*-\n'                   # 2  encoding declaration: not taken
    '"""Module."""\n'                               # 3
    '# First block, line one.   \n'                 # 4  a block: lines 4-9
    '#   indented line two\n'                       # 5
    '#\n'                                           # 6  no letter: dropped
    '# ----------------------\n'                    # 7  no letter: dropped
    '##  after a lone # and a rule\n'               # 8
    'x = "# not a comment"  # after code, joins the block\n'    # 9
    '\n'                                            # 10
    'def f(a,  # inside an expression\n'            # 11
    '      b):\n'                                   # 12
    '    # noqa: E501\n'                            # 13 tool directives only: a block
    '    # type: (int, int) -> None\n'              # 14 left empty, dropped
    '    pass  # pragma: no cover\n'                # 15
    '\n'                                            # 16
    '# Copyright 2024 Somebody.\n'                  # 17 a licence notice: dropped
    '# All rights reserved.\n'                      # 18
    's = """\n'                                     # 19
    '# inside a string\n'                           # 20
    '"""  # after a string ending on this line\n'   # 21
    '#\tform\x0cfeed\n'                             # 22 '\f' breaks a line, as in docstrings
    'y = 2  # 1 + 2 == 3\n'                         # 23 no letter: dropped
)


def test_comment_blocks():
    from scratchlm.data.corpus import _comment_blocks

    assert _comment_blocks(COMMENTED) == [
        (4, "First block, line one.\nindented line two\nafter a lone # and a rule\n"
            "after code, joins the block"),
        (11, "inside an expression"),
        (21, "after a string ending on this line\nform\nfeed")]
    # without the comments that follow code (as in encodings/): those join no block
    assert _comment_blocks(COMMENTED, trailing=False) == [
        (4, "First block, line one.\nindented line two\nafter a lone # and a rule"),
        (22, "form\nfeed")]
    # a shebang counts on line 1 only, an encoding declaration or file variables on lines 1-2
    assert _comment_blocks("x = 1\n#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n"
                           "# -*- Mode: Python -*-\n") == [
        (2, "!/usr/bin/env python\n-*- coding: utf-8 -*-\n-*- Mode: Python -*-")]
    assert _comment_blocks("# -*- Mode: Python -*-\n# vim: set fileencoding=utf-8 :\n"
                           "# Kept.\n") == [(3, "Kept.")]
    assert _comment_blocks('x = "no # outside a string: not tokenized"\n') == []
    assert _comment_blocks("# flake8: noqa\n# NoQA\n# Type: kept, tools write lowercase\n"
                           "# pragmatic: kept\n") == [
        (1, "Type: kept, tools write lowercase\npragmatic: kept")]


def test_source_paragraphs_in_source_order():
    from scratchlm.data.corpus import _source_paragraphs

    source = ('"""Module doc."""\n'
              '# comment after the module docstring\n'
              'class A:\n'
              '    """Class doc."""  # after the docstring, on its line\n'
              '    def m(self):\n'
              '        """Method doc."""\n'
              '    # between methods\n'
              '\n'
              '    def n(self): "n doc."  # docstring first on a shared line\n'
              '#\n')
    assert _source_paragraphs(source) == [
        "Module doc.", "comment after the module docstring", "Class doc.",
        "after the docstring, on its line", "Method doc.", "between methods", "n doc.",
        "docstring first on a shared line"]
    # '\r\n' and a lone '\r' end lines for tokenize as they do for ast
    assert _source_paragraphs('# one\r# two\r"""Doc."""\r') == ["one\ntwo", "Doc."]
    assert _source_paragraphs('"""Doc."""\r\n# one\r\n# two\r\n') == ["Doc.", "one\ntwo"]
    with pytest.raises(SyntaxError):
        _source_paragraphs("# fine\ndef (:\n")


def test_stdlib_text_rules_on_a_made_up_tree(tmp_path):
    import os
    from scratchlm.data.corpus import _stdlib_sources, _stdlib_text

    def put(rel, data):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)

    put("Z.py", '#!/usr/bin/env python3\n"""Upper case sorts first."""\n'
                'import os  # B module.\n')                     # str order: 'Z' < 'a'
    put("a.py", '"""A module.\n\n   second paragraph   \n\t\n"""\n'
                '# -----------------------------------------\n'
                '#\n'
                '#   A comment block: rules and indentation go.   \n'
                '#\n'
                'class C:\n'
                '    """Shared text."""\n'
                '    def m(self):\n'
                '        """   \n   """\n'
                '        return "# not a comment"  # Last comment\n')
    put("b.py", '"""B module."""\ndef f():\n    """Shared text."""\n    # Shared text.\n'
                '\n# Copyright 2000 Nobody.\n# All rights reserved.\n')
    put("crlf.py", b'"""Windows\r\nline endings."""\r\n# CRLF\r\n# comment\r\n')
    put("cr.py", b'# Old Mac\r# line endings.\r"""After the comment."""\r')
    put("encodings/cp999.py", '"""Codec table."""\n### Codec APIs\ntable = (\n'
                              '    "A"  # 0x41 -> LATIN CAPITAL LETTER A\n'
                              '    "B"  # 0x42 -> LATIN CAPITAL LETTER B\n)\n')
    put("only_comments.py", '# -*- coding: utf-8 -*-\n# Only comments here.\nx = 1\n')
    put("pkg/__init__.py", '"""Package."""\n')
    put("pkg/test_mod.py", '"""A test module."""\n# A test comment.\n')
    put("pkg/tests/helper.py", '"""A test helper."""\n')
    put("test/support.py", '# Regression-test support.\n')
    put("site-packages/third.py", '"""Third party."""\n# Third-party comment.\n')
    put("latin1.py", '"""café"""\n'.encode("latin-1"))              # not UTF-8: skipped
    put("broken.py", '"""Broken."""\n# Broken.\ndef (:\n')          # does not parse: skipped
    put("notes.txt", '# Not Python.\n')
    os.mkfifo(tmp_path / "fifo.py")                                 # not read: it would block
    put("dir.py/inside.py", '"""Inside a directory named dir.py."""\n')
    assert _stdlib_sources(str(tmp_path)) == [
        "Z.py", "a.py", "b.py", "broken.py", "cr.py", "crlf.py", "dir.py/inside.py",
        "encodings/cp999.py", "fifo.py", "latin1.py", "only_comments.py", "pkg/__init__.py"]
    assert _stdlib_text(str(tmp_path)) == (
        "Upper case sorts first.\n\n"               # no shebang
        "B module.\n\n"                             # a comment after code
        "A module.\nsecond paragraph\n\n"           # blank lines dropped, trailing spaces too
        "A comment block: rules and indentation go.\n\n"
        "Shared text.\n\n"                          # the whitespace-only docstring is dropped
        "Last comment\n\n"
        # b.py gives nothing: its docstrings and its first comment repeat earlier paragraphs
        # (Z.py's comment "B module." among them), its second comment is a licence notice
        "Old Mac\nline endings.\n\n"                # the comment is on line 1, the docstring 3
        "After the comment.\n\n"
        "Windows\nline endings.\n\n"
        "CRLF\ncomment\n\n"
        "Inside a directory named dir.py.\n\n"
        "Codec table.\n\n"                          # encodings/: the comments after code are
        "Codec APIs\n\n"                            # not taken, one alone on its line is
        "Only comments here.\n\n"                   # no encoding declaration
        "Package.\n")


def test_stdlib_text_without_sources(tmp_path):
    from scratchlm.data.corpus import _stdlib_text

    (tmp_path / "os.pyc").write_bytes(b"\x00" * 16)               # a .pyc-only installation
    with pytest.raises(ValueError, match=r"'stdlib' corpus.*\.pyc.*--corpus FILE"):
        _stdlib_text(str(tmp_path))
    with pytest.raises(ValueError, match="--corpus FILE"):
        _stdlib_text(str(tmp_path / "missing"))


def _sha256_in_fresh_process(code: str, cwd) -> str:
    """Run ``code`` (which prints a digest) in a fresh Python, in another working directory and
    with another hash seed: neither may change the text."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, PYTHONHASHSEED="12345")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True, timeout=120).stdout.strip()


def test_stdlib_text_is_the_same_in_a_fresh_process(tmp_path):
    # the rules on real files, fast: a few stdlib sources copied into a tree of their own
    import hashlib
    import os
    import shutil
    import sysconfig
    from scratchlm.data.corpus import _stdlib_text

    stdlib = sysconfig.get_paths()["stdlib"]
    tree = tmp_path / "tree"
    for rel in ("textwrap.py", "json/__init__.py", "json/decoder.py", "json/encoder.py",
                "encodings/cp1252.py", "tokenize.py", "locale.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.join(stdlib, rel), tree / rel)
    text = _stdlib_text(str(tree))
    assert text.count("\n\n") > 100                # docstrings and comments of 7 files
    code = (f"import hashlib; from scratchlm.data.corpus import _stdlib_text; "
            f"print(hashlib.sha256(_stdlib_text({str(tree)!r}).encode('utf-8')).hexdigest())")
    assert (_sha256_in_fresh_process(code, tmp_path)
            == hashlib.sha256(text.encode("utf-8")).hexdigest())


@pytest.mark.slow
def test_stdlib_corpus_is_the_same_in_a_fresh_process(tmp_path):
    # the whole corpus: about 6 s in the fresh process (building it takes 5 s)
    import hashlib

    code = ("import hashlib; from scratchlm.data.corpus import builtin_corpus; "
            "print(hashlib.sha256(builtin_corpus('stdlib').encode('utf-8')).hexdigest())")
    assert (_sha256_in_fresh_process(code, tmp_path)
            == hashlib.sha256(builtin_corpus("stdlib").encode("utf-8")).hexdigest())


@pytest.mark.parametrize("bad, exc", [
    (1, TypeError), (None, TypeError), (b"stdlib", TypeError), (["stdlib"], TypeError),
    ("Stdlib", ValueError), ("", ValueError), ("pydoc ", ValueError), ("docs", ValueError),
])
def test_builtin_corpus_bad_name(bad, exc):
    from scratchlm.data.corpus import read_corpus

    got = type(bad).__name__ if exc is TypeError else repr(bad)
    with pytest.raises(exc, match=r"name must be .*" + re.escape(got)) as info:
        builtin_corpus(bad)
    if exc is ValueError:
        assert "'pydoc', 'stdlib'" in str(info.value)
    with pytest.raises(exc, match=r"builtin must be .*" + re.escape(got)):
        read_corpus(builtin=bad)
    with pytest.raises(exc, match=r"builtin must be"):             # checked with a path too
        read_corpus("any.txt", bad)
