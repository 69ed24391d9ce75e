"""The cost model, table-style: decisions from rates, no device, no measurement."""

from __future__ import annotations

import pytest

from repartir.devices.select import PCIE_FACTOR, Rates, decide, load_rates, save_rates

# A PCIe 4 GPU: 20 GB/s each way, 20 TFLOP/s, 2 TB/s; a host of 1 TFLOP/s and 20 GB/s.
GPU = Rates("test-gpu", 20e9, 20e9, 20e12, 2e12, 1e12, 20e9, gpu_overhead_s=50e-6,
            cpu_overhead_s=3e-6)
SLOW_GPU = Rates("slow-gpu", 20e9, 20e9, 0.5e12, 0.1e12, 1e12, 20e9)


@pytest.mark.parametrize("op,shapes,rates,kw,backend,why", [
    ("add", [(1 << 20,), (1 << 20,)], GPU, {}, "cpu", "below 5x"),
    ("add", [(1 << 28,), (1 << 28,)], GPU, {}, "cpu", "below 5x"),     # streaming: never pays
    ("matmul", [(64, 64), (64, 64)], GPU, {}, "cpu", "below 5x"),
    ("matmul", [(4096, 4096), (4096, 4096)], GPU, {}, "gpu", "at least 5x"),
    ("matmul", [(4096, 4096), (4096, 4096)], SLOW_GPU, {}, "cpu", "would not beat"),
    ("matmul", [(4096, 4096), (4096, 4096)], None, {}, "cpu", "no device"),
    # data already on the device and the result staying there: no transfer at all
    ("sum", [(1 << 26,)], GPU, {"resident": [True], "result_stays": True}, "gpu", "at least"),
])
def test_decisions(op, shapes, rates, kw, backend, why):
    d = decide(op, shapes, rates, **kw)
    assert d.backend == backend, str(d)
    assert why in d.reason
    text = str(d)
    assert op in text and "transfer" in text and "host compute" in text


def test_the_factor_moves_the_threshold():
    shapes = [(2048, 2048), (2048, 2048)]
    d5 = decide("matmul", shapes, GPU)
    # 2048^3 on these rates: host 17.2 ms, transfer of 48 MiB 2.52 ms: a ratio of 6.8
    assert d5.cpu_s / d5.transfer_s == pytest.approx(6.83, rel=0.01)
    assert d5.backend == "gpu"
    assert decide("matmul", shapes, GPU, factor=10).backend == "cpu"
    assert PCIE_FACTOR == 5.0


def test_bad_input():
    with pytest.raises(ValueError, match="unknown"):
        decide("cosh", [(3,)], GPU)
    with pytest.raises(ValueError, match="inner"):
        decide("matmul", [(3, 2), (3, 2)], GPU)


def test_rates_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("REPARTIR_DEVICE_CACHE", str(tmp_path))
    assert load_rates("test-gpu") is None
    save_rates(GPU)
    save_rates(SLOW_GPU)
    assert load_rates("test-gpu") == GPU
    assert load_rates("slow-gpu") == SLOW_GPU
