"""`sslkit doctor`: what this machine can run, and what to install for the rest."""
from __future__ import annotations

import importlib
import json
import platform
import sys
from typing import Any

from sslkit.dependencies import DOMAINS, doctor_modules, install_hint

# Known system-library gaps and their Debian fixes.
APT_HINTS = {"libusb-1.0": "apt-get install libusb-1.0-0", "libgomp": "apt-get install libgomp1",
             "libGL": "apt-get install libgl1"}


def _check(module: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # any import failure is a finding to report, not a crash
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        for lib, fix in APT_HINTS.items():
            if lib in msg:
                return False, f"{msg} (fix: {fix})"
        return False, msg
    return True, str(getattr(mod, "__version__", "ok"))


def precision_plan(device: Any) -> list[dict[str, str]]:
    """What `train.precision: auto` trains each shipped (domain, method) in on `device`, and why; a recipe that sets
    its own precision (the `tiny` test recipes, medical3d's fp32 ones) keeps it."""
    import yaml

    from sslkit.core.precision import decide
    from sslkit.core.recipes import shipped_recipes

    methods: dict[tuple[str, str], list[str]] = {}
    for domain, name, path in shipped_recipes():
        if domain not in DOMAINS:
            continue
        raw = yaml.safe_load(path.read_text()) or {}
        if (raw.get("train") or {}).get("precision", "auto") == "auto":
            methods.setdefault((domain, str(raw.get("method", ""))), []).append(name)
    rows = []
    for (domain, method), names in sorted(methods.items()):
        choice = decide("auto", device, domain, method)
        rows.append({"domain": domain, "method": method, "recipes": ", ".join(names), "device": device.type,
                     "precision": choice.precision, "why": choice.why})
    return rows


def scan_kernel_status() -> str:
    """Whether SSAMBA's CPU scan runs in its C kernel here (built on first use: ~1 s) or in plain PyTorch, and why."""
    from sslkit.domains.audio import scan_kernel

    return "C kernel" if scan_kernel.load() is not None else f"PyTorch ({getattr(scan_kernel.load, 'reason', '?')})"


def collect() -> dict[str, Any]:
    import torch

    from sslkit import __version__
    from sslkit.core.precision import bf16_supported

    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    info: dict[str, Any] = {
        "sslkit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpus": devices,
        "bf16_cuda": bool(cuda and torch.cuda.is_bf16_supported()),
        "bf16_cpu": bf16_supported(torch.device("cpu")),
        "cpu_threads": torch.get_num_threads(),
        "precision": precision_plan(torch.device("cuda" if cuda else "cpu")),
        "audio_scan_kernel": scan_kernel_status(),
        "domains": {},
    }
    for domain in DOMAINS:
        results = {m: _check(m) for m in doctor_modules(domain)}
        missing = [m for m, (ok, _) in results.items() if not ok]
        info["domains"][domain] = {
            "ok": not missing,
            "modules": {m: v for m, (_, v) in results.items()},
            "install": install_hint(domain) if missing else "",
        }
    return info


def report(as_json: bool = False) -> None:
    from sslkit.core.console import console, print_table

    info = collect()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    console.print(f"sslkit {info['sslkit']}  python {info['python']}  torch {info['torch']}  ({info['platform']})")
    gpus = ", ".join(info["gpus"]) or "none"
    console.print(f"CUDA: {'yes ' + str(info['cuda_version']) if info['cuda_available'] else 'no'}  GPUs: {gpus}  "
                  f"bf16: cuda={info['bf16_cuda']} cpu={info['bf16_cpu']}  CPU threads: {info['cpu_threads']}")
    console.print(f"SSAMBA's CPU scan: {info['audio_scan_kernel']}")
    rows = []
    for domain, d in info["domains"].items():
        detail = "; ".join(f"{m} {v}" for m, v in d["modules"].items())
        rows.append([domain, "ok" if d["ok"] else "missing", detail if d["ok"] else f"{detail} — {d['install']}"])
    print_table("domain extras", ["domain", "status", "details"], rows)
    plan = info["precision"]
    print_table(f"train.precision: auto on this machine ({plan[0]['device'] if plan else 'cpu'})",
                ["domain", "method", "recipes", "precision", "why"],
                [[p["domain"], p["method"], p["recipes"], p["precision"], p["why"]] for p in plan])
    sys.stdout.flush()
