"""Shared fixtures: fake /opt/ml trees with synthetic data (see tests/synthetic.py for the generator)."""

import os
from pathlib import Path

import pytest

from segmaker.data.labelmaps import LabelMap
from segmaker.environment import Paths
from tests.synthetic import write_opt_ml

# Quantizing at the end of every training test would add ~40 s to each: tests/test_quantize.py turns it on.
os.environ.setdefault("SEGMAKER_QUANTIZE", "off")


@pytest.fixture
def opt_ml(tmp_path: Path) -> Paths:
    """/opt/ml with train/train_annotation/validation/validation_annotation (8 + 4 samples, 3 classes)."""
    return write_opt_ml(tmp_path / "opt_ml", layout="channels")


@pytest.fixture
def opt_ml_folders(tmp_path: Path) -> Paths:
    """/opt/ml whose train and validation channels each hold images/ and masks/ (8 + 4 samples, 3 classes)."""
    return write_opt_ml(tmp_path / "opt_ml", layout="folders")


@pytest.fixture(params=["channels", "folders"])
def opt_ml_any_layout(request, tmp_path: Path) -> Paths:
    """Both layouts, one after the other."""
    return write_opt_ml(tmp_path / "opt_ml", layout=request.param)


@pytest.fixture
def identity_label_map() -> LabelMap:
    """The built-in's default {"scale": "1"} for 3 classes."""
    return LabelMap.from_scale(1, 3)
