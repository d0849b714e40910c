"""The README's configuration reference is generated from the model; it must not drift. Comments
point only at documents inside the repository, and at sections that exist."""

import re
from pathlib import Path

from autoproc.script.reference import BEGIN, END, readme_block

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == readme_block(), "run: python -m autoproc.script.reference --update-readme"


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


# Documents outside the repository that comments once cited; a clone never has them.
OUTSIDE = re.compile(r"\bSPEC\b|LSST-MIDDLEWARE|DESIGN\.md|CLUSTER\.md|PRIOR-ART|\.\./shared|/work/shared")
DOC_LINK = re.compile(r"\bdocs/([A-Za-z0-9_-]+\.md)#([A-Za-z0-9_-]+)")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".ini", ".sh", ".service", ".toml", ".cfg"}


def _repo_texts() -> list[Path]:
    roots = [ROOT / d for d in ("src", "tests", "benchmarks", "docs", "statemachines", "hooks", "systemd")]
    files = [ROOT / f for f in ("README.md", "RELIABILITY.md", "Makefile", "pyproject.toml")]
    for root in roots:
        files += [p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and not any(part.endswith(".egg-info") or part == "__pycache__" for part in p.parts)]
    return sorted(set(files) - {Path(__file__).resolve()})


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", doc.read_text(), re.MULTILINE)}


def test_no_reference_to_documents_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
             for p in _repo_texts() for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if OUTSIDE.search(line)]
    assert found == [], "point at docs/ instead:\n" + "\n".join(found)


def test_every_docs_anchor_the_code_points_at_exists():
    links = [(p, n, m.group(1), m.group(2)) for p in _repo_texts()
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             for m in DOC_LINK.finditer(line)]
    assert len(links) > 30  # the comments do point here
    anchors = {doc.name: _anchors(doc) for doc in (ROOT / "docs").glob("*.md")}
    broken = [f"{p.relative_to(ROOT)}:{n}: docs/{doc}#{anchor}" for p, n, doc, anchor in links
              if anchor not in anchors.get(doc, set())]
    assert broken == [], "\n".join(broken)


def test_anchor_rule_and_outside_pattern():
    assert _anchor("DAGMaker rc") == "dagmaker-rc" and _anchor("bps submission") == "bps-submission"
    assert _anchor("Post-processing status") == "post-processing-status"
    assert OUTSIDE.search("see SPEC §A.3") and OUTSIDE.search("(LSST-MIDDLEWARE §6.2)")
    assert not OUTSIDE.search("SUSPECT_VALUE = 512") and not OUTSIDE.search("docs/DEEP.md#steps")
