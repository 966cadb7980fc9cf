"""Which torch device the transformer runs on: `cpu`, `cuda` or `auto` (cuda when one is visible, else cpu).

Chosen by ROUTING_DEVICE (default `auto`); `routing-engine train --device` overrides it for one run. A machine
without a GPU never needs CUDA packages: `auto` asks torch only whether a GPU is there.
"""

from __future__ import annotations

import os

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | None = None) -> str:
    """The concrete device ("cpu" or "cuda[:n]") for a requested one; `None` reads ROUTING_DEVICE."""
    want = (device or os.environ.get("ROUTING_DEVICE") or "auto").strip().lower()
    base = want.split(":", 1)[0]
    if base not in DEVICES:
        raise ValueError(f"unknown device {want!r}; expected one of {', '.join(DEVICES)} (ROUTING_DEVICE)")
    if base == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if base == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ValueError(f"device {want!r} asked for but torch sees no CUDA GPU here (torch {torch.__version__})")
    return want


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matrix work natively (AVX-512 BF16 or AMX); emulated bf16 is slower."""
    import torch

    probe = getattr(torch.backends, "cpu", None)
    isa = probe.get_cpu_capability() if probe and hasattr(probe, "get_cpu_capability") else ""
    return "AMX" in str(isa).upper() or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
