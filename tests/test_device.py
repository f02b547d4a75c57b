import pytest
import torch

from synctalk.device import resolve_device


def test_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else None
    auto = resolve_device("auto")
    if expected:
        assert auto.type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="tpu"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_an_error_not_a_silent_fallback():
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_device("cuda")


def test_no_direct_cuda_calls_in_the_code():
    from tests.conftest import REPO

    offenders = [
        str(p.relative_to(REPO))
        for folder in ("synctalk", "stages", "flows")
        for p in (REPO / folder).rglob("*.py")
        if ".cuda()" in p.read_text()
    ]
    assert offenders == []
