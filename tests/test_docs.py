"""The documentation: links resolve inside the repository, the loss is defined here, the README
stays short and names only what exists.

These read files of the checkout; from an installed package without the checkout they skip.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("**/*.md")) if (ROOT / "docs").is_dir() else []
README = ROOT / "README.md"
PAGES = [README, *DOCS, ROOT / "bench" / "RESULTS.md"]

pytestmark = pytest.mark.skipif(not README.is_file() or not DOCS, reason="needs the repository checkout")

# [text](target) and ![alt](target), not inside code spans; reference-style links are not used.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _links(page: Path) -> list[str]:
    return _LINK.findall(_CODE.sub("", page.read_text(encoding="utf-8")))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in _CODE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_resolves_inside_the_repository(page):
    bad = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            if page != ROOT / "bench" / "RESULTS.md":
                bad.append(f"{target} (a link outside the repository)")
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target} (outside the repository)")
        elif not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {_rel(dest)})")
    assert not bad, f"{_rel(page)}: " + "; ".join(bad)


def test_the_link_check_finds_broken_links(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("[a](missing.md) `[b](in-code.md)` ![c](img.png \"title\")\n```\n[d](block.md)\n```\n")
    assert _links(page) == ["missing.md", "img.png"]
    page.write_text("# The loss, exactly\n## 2. Degenerate pairs\n")
    assert _anchors(page) == {"the-loss-exactly", "2-degenerate-pairs"}


def test_no_reference_to_a_specification_outside_the_repository():
    files = [*PAGES, *(ROOT / "scc_fast").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
             *(ROOT / "bench").glob("*.py"), *(ROOT / "bench").glob("*.sh"), *(ROOT / "csrc").rglob("*.[ch]*")]
    word = re.compile(r"\bSPEC\b|shared/SPEC")
    here = Path(__file__).resolve()
    hits = [f"{_rel(f)}:{i}" for f in files if f.resolve() != here
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if word.search(line)]
    assert not hits, "the loss is defined in docs/loss.md; these still point elsewhere: " + ", ".join(hits)


def test_loss_page_has_every_section_the_code_refers_to():
    text = (ROOT / "docs" / "loss.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (\d+)\. ", text, re.M)
    assert headings == [str(i) for i in range(1, 9)], headings
    # Every "docs/loss.md section N" in the code names a section that exists.
    refs = set()
    for f in [*(ROOT / "scc_fast").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py"),
              *(ROOT / "csrc").rglob("*.cpp")]:
        for m in re.finditer(r"docs/loss\.md\s+sections?\s+(\d+)(?:\s+and\s+(\d+))?", f.read_text(encoding="utf-8")):
            refs.update(int(g) for g in m.groups() if g)
    assert refs and refs <= set(range(1, 9)), sorted(refs)


def test_readme_is_short_and_has_the_setup_and_test_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.split()) <= 1250, len(text.split())
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = [line for line in ci.splitlines() if line.startswith("python -m pytest")][-1]
    assert test_command in text, f"README must show CI's test command {test_command!r}"
    assert 'pip install --no-build-isolation -e ".[triton,test,bench]"' in text


def _env_names(text: str) -> set[str]:
    return set(re.findall(r"\bSCC_FAST_[A-Z0-9_]*[A-Z0-9]\b", text))


def test_docs_name_only_the_environment_variables_that_exist():
    code = [*(ROOT / "scc_fast").rglob("*.py"), ROOT / "setup.py", *(ROOT / "csrc").rglob("*.[ch]*")]
    read = set().union(*(_env_names(f.read_text(encoding="utf-8")) for f in code))
    assert len(read) <= 4, sorted(read)
    for page in [README, *DOCS]:
        named = _env_names(page.read_text(encoding="utf-8"))
        assert named <= read, f"{_rel(page)} names {sorted(named - read)}, which nothing reads"
