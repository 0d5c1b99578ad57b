"""Fixtures for the LOINC normalisation tests: the shipped catalogue and demo mappings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loinc.catalogue import Catalogue, load_catalogue
from mappings.loader import MappingSet, load_mappings

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
ROOT = HERE.parent.parent
MAPPINGS = ROOT / "mappings"
CORPUS = Path(os.environ.get("PARCOURS_CORPUS", ROOT.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="session")
def mappings(catalogue: Catalogue) -> MappingSet:
    return load_mappings(MAPPINGS, catalogue=catalogue)
