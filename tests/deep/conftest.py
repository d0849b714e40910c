"""Fixtures shared by the DEEP step tests (test_steps, test_warm)."""

from __future__ import annotations

import pytest


@pytest.fixture
def bias_repo(tmp_path):
    """A repository with 3 bias raws tagged for NIGHT and its bias chain: (butler, repo, pipeline)."""
    from steps_support import NIGHT, bias_pipeline, make_repo

    from autoproc.deep import collections as C

    b, repo, _ = make_repo(tmp_path, n_bias=3)
    C.tag_raws(b, NIGHT, "bias")
    C.ensure_chain(b, "bias", NIGHT)
    yield b, str(repo), bias_pipeline(tmp_path)
    b.close()
