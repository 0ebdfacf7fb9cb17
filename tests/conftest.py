import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def world():
    from lfm_ref.data import FactWorld

    return FactWorld(seed=0)


@pytest.fixture(scope="session")
def tiny_gpt():
    from lfm_ref import zoo

    return zoo.load("tiny-gpt", device="cpu")
