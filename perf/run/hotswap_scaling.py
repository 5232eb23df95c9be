"""Does the installed peft hot-swap an adapter with per-module ranks and alphas at the scaling its config gives each
module? Measured once per process on three small Linears, with peft alone (milliseconds): an adapter with a
``rank_pattern`` and an ``alpha_pattern`` is injected, then hot-swapped onto itself with peft's
``hotswap_adapter_from_state_dict`` (what diffusers' ``load_lora_weights(..., hotswap=True)`` calls); each module's
scaling after the swap must still be its own alpha over its own rank, as it is when the adapter is loaded fresh.

peft 0.21.2 looks the patterns up with the parameter's name (``lin1.lora_A.default.weight``), which no module
pattern matches, so every module gets the config's default ``lora_alpha / r`` (huggingface/peft#3738). Where the
probe finds that, every record names it (``perf.run.recording.lora_findings``), and the checks it breaks report
their measured error as an expected failure naming the finding (``perf.run.case.Case.known_cause``); where it does
not, those checks gate as before, so a fixed peft makes the suite gate again by itself.
"""

from __future__ import annotations

import functools
import math

import torch

from perf.judge.record import HOTSWAP_SCALING as SUBJECT
from perf.judge.record import LoraFinding

DEFAULT_RANK, DEFAULT_ALPHA = 4, 8.0
RANK_PATTERN = {"lin1": 2}  # lin1: another rank, the default alpha
ALPHA_PATTERN = {"lin2": 2.0}  # lin2: the default rank, another alpha; lin0: both defaults


def hotswapped_scalings() -> dict[str, tuple[float, float]]:
    """Module -> (its scaling after the adapter is hot-swapped onto itself, alpha / rank as its config gives it)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils.hotswap import hotswap_adapter_from_state_dict

    config = LoraConfig(r=DEFAULT_RANK, lora_alpha=DEFAULT_ALPHA, target_modules=["lin0", "lin1", "lin2"],
                        rank_pattern=RANK_PATTERN, alpha_pattern=ALPHA_PATTERN)
    with torch.device("meta"):  # no memory and no draw from the global RNG: only the scalings are read
        model = inject_adapter_in_model(config, torch.nn.ModuleDict({f"lin{i}": torch.nn.Linear(8, 8)
                                                                     for i in range(3)}))
    adapter = model.lin0.active_adapters[0]
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    hotswap_adapter_from_state_dict(model, state, adapter, config)
    return {
        name: (float(module.scaling[adapter]),
               ALPHA_PATTERN.get(name, DEFAULT_ALPHA) / RANK_PATTERN.get(name, DEFAULT_RANK))
        for name, module in model.items()
    }


def measure_hotswap_scaling() -> LoraFinding | None:
    """The finding when peft's hot-swap scales a module otherwise than its config says, else None."""
    from importlib.metadata import version

    wrong = {name: (got, meant) for name, (got, meant) in hotswapped_scalings().items()
             if not math.isclose(got, meant, rel_tol=1e-6)}
    if not wrong:
        return None
    shown = ", ".join(f"{name} {got:g} where its config gives {meant:g}" for name, (got, meant) in wrong.items())
    default = DEFAULT_ALPHA / DEFAULT_RANK
    why = (f"every one is the config's default lora_alpha / r = {default:g}: the patterns are ignored"
           if all(math.isclose(got, default) for got, _ in wrong.values()) else "")
    return LoraFinding(
        SUBJECT,
        f"after hotswap_adapter_from_state_dict the scalings are {shown}{'; ' + why if why else ''}. A "
        "hot-swapped adapter with per-module ranks or alphas acts at the wrong strength on those modules, silently "
        "(loaded fresh it is right); reported upstream as huggingface/peft#3738",
        {"peft": version("peft"), "torch": torch.__version__},
    )


hotswap_scaling_finding = functools.cache(measure_hotswap_scaling)
"""``measure_hotswap_scaling`` once per process: every record of the session carries the same answer."""
