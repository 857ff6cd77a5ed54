"""The processor a benchmark ran on, for its results: onnxruntime picks its INT8 kernels by the
CPU's features (AVX-512, VNNI, AMX), so an INT8 model's speed and even its outputs (which
samples flip top-1 after quantization) can differ between two machines with the same core
count. This VM's host has changed between sessions; the results say which one they came from."""

from __future__ import annotations

import platform

# the features onnxruntime's MLAS chooses its float and integer kernels by (x86)
KERNEL_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def cpu() -> str:
    """'AMD EPYC (avx2 fma)': the model name and the kernel features /proc/cpuinfo lists, or
    platform.processor() where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if not line.strip():
            break  # the first processor's block is enough
    flags = set(fields.get("flags", "").split())
    name = fields.get("model name") or platform.machine()
    return f"{name} ({' '.join(f for f in KERNEL_FEATURES if f in flags) or 'no AVX2'})"
