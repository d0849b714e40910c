"""The README's configuration reference is generated from the model; it must not drift."""

from pathlib import Path

from autoproc.script.reference import BEGIN, END, readme_block

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == readme_block(), "run: python -m autoproc.script.reference --update-readme"


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
