"""Hardware profiles: what a class of machine can do and how much memory a run may use.

The detected device picks a profile; ``--profile NAME`` runs a smaller profile on a bigger device
(emulation: memory capped, features turned off), and every record says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perf.errors import SuiteError


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    device_type: str  # "cpu" or "cuda"
    memory_budget_gib: float | None  # peak GPU memory a whole generation may use; None: not checked
    fp8: bool  # float8 matmuls (compute capability >= 8.9)
    fa3: bool  # FlashAttention-3-class kernels (Hopper, compute capability 9.0)
    model_size: str  # the embedded synthetic model this profile times: "tiny" or "full"
    dtype: torch.dtype
    description: str
    compile_budget_s: float | None = None  # longest a first (compiling) generation may take; None: unlimited
    batch_fit: bool = False  # the serving scenarios search the largest batch within the budget (a consumer card)


# Compile budgets (``--compile-budget`` overrides): GPUs ~2.5x the slowest first generation measured (H100:
# regional FP8, 354 s cold); CPU 20x the tiny model's ~15 s, CI machines being shared. A compile that hangs
# then fails with its elapsed time instead of holding a GPU job until the job's limit kills it, records and all.
PROFILES: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        HardwareProfile(
            "cpu", "cpu", None, fp8=False, fa3=False, model_size="tiny", dtype=torch.float32,
            description="any CPU; the tiny synthetic model; CI", compile_budget_s=300,
        ),
        HardwareProfile(
            "h100", "cuda", 80.0, fp8=True, fa3=True, model_size="full", dtype=torch.bfloat16,
            description="NVIDIA H100 80 GB (the seed's H100 table)", compile_budget_s=900,
        ),
        HardwareProfile(
            "h200", "cuda", 141.0, fp8=True, fa3=True, model_size="full", dtype=torch.bfloat16,
            description="NVIDIA H200 141 GB (H100 rows, more memory)", compile_budget_s=900,
        ),
        HardwareProfile(
            "rtx4090", "cuda", 24.0, fp8=True, fa3=False, model_size="full", dtype=torch.bfloat16,
            description="NVIDIA RTX 4090 24 GB (the seed's consumer table; no FA3 on Ada)", compile_budget_s=1200,
            batch_fit=True,
        ),
    )
}

HARDWARE_MARKERS = ("cpu", "gpu", *[name for name in PROFILES if name != "cpu"])


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    type: str  # "cpu" or "cuda"
    total_memory_gib: float | None
    capability: tuple[int, int] | None


@dataclass(frozen=True)
class ActiveProfile:
    """The profile a run uses on the device it found; ``emulated`` when the device is not that hardware."""

    profile: HardwareProfile
    device: DeviceInfo
    emulated: bool

    @property
    def name(self) -> str:
        return self.profile.name

    def describe(self) -> str:
        suffix = f" (emulated on {self.device.name})" if self.emulated else ""
        return f"{self.profile.name} on {self.device.name}{suffix}"


def detect_device() -> DeviceInfo:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo(props.name, "cuda", props.total_memory / 2**30, (props.major, props.minor))
    import platform

    return DeviceInfo(platform.processor() or platform.machine() or "cpu", "cpu", None, None)


def profile_for_device(device: DeviceInfo) -> HardwareProfile | None:
    """The profile whose hardware this is, or None for a GPU the suite has no profile for."""
    if device.type == "cpu":
        return PROFILES["cpu"]
    name = device.name.lower()
    for key in ("h100", "h200", "4090"):
        if key in name:
            return PROFILES["rtx4090" if key == "4090" else key]
    return None


def get_profile(name: str) -> HardwareProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise SuiteError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}") from None


def resolve_profile(requested: str | None, device: DeviceInfo | None = None) -> ActiveProfile | None:
    """The active profile: ``requested`` (emulated when the device differs) or the detected one.

    Returns None for an unknown GPU without ``--profile``: every hardware test then skips, saying so.
    """
    device = device or detect_device()
    native = profile_for_device(device)
    if requested is None:
        return ActiveProfile(native, device, emulated=False) if native else None
    profile = get_profile(requested)
    if profile.device_type != device.type:
        raise SuiteError(
            f"--profile {profile.name} needs a {profile.device_type.upper()} device, found {device.name} "
            f"({device.type}); choose one of the profiles this device can run, or drop --profile"
        )
    if native is not None and native.name == profile.name:
        return ActiveProfile(profile, device, emulated=False)
    if device.total_memory_gib is not None and profile.memory_budget_gib is not None:
        if profile.memory_budget_gib > device.total_memory_gib:
            raise SuiteError(
                f"--profile {profile.name} budgets {profile.memory_budget_gib:.0f} GiB but {device.name} has "
                f"{device.total_memory_gib:.1f} GiB: a profile can only be emulated on a bigger device"
            )
        if profile.fa3 and (device.capability or (0, 0)) < (9, 0):
            without = ", ".join(p.name for p in PROFILES.values() if p.device_type == device.type and not p.fa3)
            raise SuiteError(
                f"--profile {profile.name} needs FA3-class attention (Hopper); {device.name} has none: choose a "
                f"profile without FA3 ({without}) or run on a Hopper GPU"
            )
    return ActiveProfile(profile, device, emulated=True)


def apply_memory_cap(active: ActiveProfile) -> float | None:
    """Cap this process's GPU memory to the profile's budget when emulating; returns the fraction set."""
    budget = active.profile.memory_budget_gib
    if not active.emulated or active.device.type != "cuda" or budget is None:
        return None
    fraction = min(1.0, budget / active.device.total_memory_gib)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction
