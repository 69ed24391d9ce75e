"""What the device tests share: arguments for every operation, a float64 numpy reference, and
the per-operation tolerance check of ``repartir.devices.ops`` (``Op.rtol``, ``Op.atol``)."""

from __future__ import annotations

import numpy as np

from repartir.devices.ops import NAMES

PARAMS = {"scale": {"alpha": 1.5}, "clamp": {"lo": 0.7, "hi": 1.2}}


def call_args(name: str, rng: np.random.Generator, n: int = 10_007,
              m: tuple[int, int, int] = (37, 50, 23)) -> tuple[tuple, dict]:
    """Float32 arguments for operation ``name``: vectors of ``n`` elements in [0.5, 1.5) (signs
    mixed for the operations where a sign matters), matrices (m0, m1) @ (m1, m2)."""
    op = NAMES[name]
    if name == "matmul":
        args = (rng.standard_normal(m[:2], dtype=np.float32),
                rng.standard_normal(m[1:], dtype=np.float32))
    elif name == "matvec":
        args = (rng.standard_normal(m[:2], dtype=np.float32),
                rng.standard_normal(m[1], dtype=np.float32))
    elif name in ("transpose", "softmax", "log_softmax"):
        args = (rng.standard_normal(m[:2], dtype=np.float32) * 4,)
    elif name in ("abs", "relu", "min", "max", "argmin", "argmax", "tanh", "sigmoid", "gelu",
                  "clamp", "fma", "sub", "norm_l1"):
        args = tuple(rng.uniform(-2, 2, n).astype(np.float32) for _ in range(op.arity))
    else:
        args = tuple(rng.uniform(0.5, 1.5, n).astype(np.float32) for _ in range(op.arity))
    return args, dict(PARAMS.get(name, {}))


def reference(name: str, args: tuple, params: dict):
    """The operation in float64 numpy."""
    a = [x.astype(np.float64) for x in args]
    x = a[0]
    if name in ("softmax", "log_softmax"):
        z = x - x.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return np.exp(z - lse) if name == "softmax" else z - lse
    table = {
        "add": lambda: a[0] + a[1], "sub": lambda: a[0] - a[1], "mul": lambda: a[0] * a[1],
        "div": lambda: a[0] / a[1], "fma": lambda: a[0] * a[1] + a[2],
        "scale": lambda: x * params.get("alpha", 0), "abs": lambda: np.abs(x),
        "clamp": lambda: np.clip(x, params.get("lo"), params.get("hi")),
        "exp": lambda: np.exp(x), "log": lambda: np.log(x), "sqrt": lambda: np.sqrt(x),
        "sum": lambda: x.sum(), "dot": lambda: np.dot(a[0].ravel(), a[1].ravel()),
        "min": lambda: x.min(), "max": lambda: x.max(), "argmin": lambda: np.argmin(args[0]),
        "argmax": lambda: np.argmax(args[0]), "mean": lambda: x.mean(), "variance": lambda: x.var(),
        "norm_l1": lambda: np.abs(x).sum(), "norm_l2": lambda: np.sqrt((x * x).sum()),
        "relu": lambda: np.maximum(x, 0), "sigmoid": lambda: 1 / (1 + np.exp(-x)),
        "tanh": lambda: np.tanh(x),
        "gelu": lambda: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
        "matmul": lambda: a[0] @ a[1], "matvec": lambda: a[0] @ a[1], "transpose": lambda: x.T,
    }
    return table[name]()


def assert_close(name: str, got, want, args: tuple) -> None:
    """``got`` (a backend's float32 result) within the operation's stated tolerance of ``want``."""
    op = NAMES[name]
    if name in ("argmin", "argmax"):
        assert int(got) == int(want), f"{name}: {got} != {want}"
        return
    got64 = np.asarray(got, dtype=np.float64)
    want64 = np.asarray(want, dtype=np.float64)
    assert got64.shape == want64.shape, f"{name}: shape {got64.shape} != {want64.shape}"
    if op.kind == "reduction":
        atol = op.atol * float(sum(np.abs(x.astype(np.float64)).sum() for x in args))
    elif name in ("matmul", "matvec"):
        atol = op.atol * float(np.abs(args[0]).sum(axis=-1).max() * np.abs(args[1]).max())
    else:
        atol = op.atol
    bad = np.abs(got64 - want64) > atol + op.rtol * np.abs(want64) + 1e-30
    assert not bad.any(), (f"{name}: {int(bad.sum())} element(s) off beyond rtol={op.rtol}, "
                           f"atol={atol:.3g}; worst {np.max(np.abs(got64 - want64)):.3g}")
