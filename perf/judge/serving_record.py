"""The serving scenarios' figures as a record keeps them (``RunRecord.serving``, one entry per scenario): strict
frozen sections like the rest of the record (``perf.judge.schema``), validated when a record is read, with no torch,
so the verdict, the report and the README table read them without a GPU stack. ``perf.run.serving`` measures them;
each scenario fills its own figures section and leaves the others None."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from perf.judge.schema import Count, Fraction, GiB, Seconds, frozen_section
from perf.judge.tolerances import serving_tolerance

Scenario = Literal["scale", "resolutions", "resolutions_static", "resolutions_dynamic", "batches", "resident", "named",
                   "two"]


@frozen_section
class Request:
    """One kind of request, served twice: first (new to the compiled graphs: compile cost shows here) and once
    every kind was served (steady latency). Recompiles are graphs dynamo compiled during each call."""

    label: str  # "scale 0.8", "48x80", "batch 4", "hot-swap from memory", ...
    first_seconds: Seconds
    first_recompiles: Count
    steady_seconds: Seconds
    steady_recompiles: Count
    images: Count = 1  # images per call (num_images_per_prompt); 0: a switch of adapters, no image
    peak_gib: GiB | None = None  # peak memory of the steady call (GPU reserved, or CPU process RSS)
    first_decoder_graphs: Count = 0  # of first_recompiles, the compiled VAE decoder's (compile_vae rows)

    @property
    def images_per_minute(self) -> float | None:
        return 60 * self.images / self.steady_seconds if self.images and self.steady_seconds else None


@frozen_section
class ScaleFigures:
    """The LoRA scale per request: a scale never requested before, and the check's sensitivity to a scale served
    off by a fraction (scale -> fraction off -> error), from which the smallest error it catches at every scale."""

    adapter: str
    unseen_scale: float
    unseen_seconds: Seconds
    unseen_recompiles: Count
    sensitivity: dict[str, dict[str, Fraction]]
    gated_defect: Fraction  # the scale error the controls must catch (perf.run.serving.SCALE_DEFECT)
    smallest_defect_caught: Fraction | None  # smallest measured scale error over the tolerance at every scale


@frozen_section
class BatchFit:
    """The largest batch served within the memory budget, and the peak of each batch tried."""

    batch: Count | None  # None: not even one image fits
    peaks_gib: dict[str, GiB | Literal["out of memory"]]


@frozen_section
class BatchFigures:
    budget_gib: GiB | None
    largest_batch_that_fits: BatchFit | None = None  # GPU profiles with a budget


@frozen_section
class BareStateDict:
    """A->B->A->B with the state dicts ``lora_state_dict`` returns, through ``load_lora_weights(dict)``: the way
    that takes no adapter metadata and no network alphas."""

    error: Fraction | None  # the swap check on B after the four swaps; None: a swap was refused
    refused: str | None = None  # "<adapter>: <peft's message>" where peft refused one
    slot_deleted: bool = False  # the refusal took the hot-swap slot out of the compiled transformer
    alpha_outside_the_weights: bool = False  # B's alphas live in its metadata or network alphas: a dict loses them


@frozen_section
class ResidentFigures:
    adapters: tuple[str, ...]  # kept in RAM and hot-swapped, in turn
    refused: dict[str, str]  # adapter -> why peft refused to hot-swap it from memory (left out of the set)
    state_dict_mib_per_adapter: float
    hotswap_slot_mib: float  # the slot's LoRA weights, padded to the target rank
    bare_state_dict: BareStateDict


@frozen_section
class LimitHit:
    """A switch to a named adapter against dynamo's recompile limit: ``error`` None where it did not fail."""

    adapter: str
    graphs_held: Count
    error: str | None
    recompile_limit_set_to: Count | None = None  # the limit lowered to the graphs held (CPU), or None: as set


@frozen_section
class NamedFigures:
    adapters: tuple[str, ...]  # the names the resident adapters were loaded under
    switched: tuple[str, ...]  # the ones switched to
    recompile_limit: Count  # torch._dynamo.config.recompile_limit, read at run time
    load_seconds: Seconds
    load_recompiles: Count
    mib_per_adapter: float
    graphs_held_before: Count  # graphs the transformer's fullest compiled forward held before the first switch
    recompiles_per_switch: tuple[Count, ...]
    first_step_seconds: dict[str, Seconds]  # a first switch's step, compiling included
    failure: LimitHit | None = None  # a switch that failed at the real limit
    limit_shown: LimitHit | None = None  # the switch past a limit lowered to the graphs held
    stopped_after: Count | None = None  # switches made (None: all, in records before 2026-11-30)
    # graphs held before the first switch per compiled forward, where a regional compile has several (each counted
    # against the limit apart); empty: one, the transformer's (full-graph rows, records before 2026-11-30)
    held_by_forward: dict[str, Count] = field(default_factory=dict)


@frozen_section
class WeightChange:
    weights: tuple[float, float]
    recompiles: Count


@frozen_section
class SetAdaptersFigures:
    """diffusers' ``set_adapters(slots, weights)`` on the two hot-swap slots."""

    per_weight_change: tuple[WeightChange, ...]
    error: Fraction  # the swap check on its weights after a hot-swap
    checked_weights: tuple[float, float]
    slot_alpha_over_r_stale: bool  # the slot keeps the first adapter's lora_alpha / r, not the hot-swapped one's


@frozen_section
class TwoFigures:
    slots: tuple[str, ...]
    set_adapters: SetAdaptersFigures


@frozen_section
class ServingResult:
    """One scenario on one recipe: its requests, the swap-check errors it measured (in units of the adapter's
    effect, ``perf.run.swap_probe``), the negative controls those checks must fail, and the finding where the
    libraries could not serve it without recompiling or failing (with the versions)."""

    scenario: Scenario
    requests: tuple[Request, ...]
    errors: dict[str, Fraction] = field(default_factory=dict)  # check -> error (must be within the tolerance)
    controls: dict[str, Fraction] = field(default_factory=dict)  # injected defect -> error (must exceed it)
    probe_recompiles: Count = 0  # graphs compiled while the checks and controls were measured (must be 0)
    expected_recompiles: Count = 0  # transformer graphs the first requests compile on this stack, as ``finding`` says
    finding: str | None = None  # what the libraries cannot do without recompiling or failing, with versions
    failure: str | None = None  # the error that ended the scenario ("RuntimeError: ..."): no figures then
    noise_floor: Fraction | None = None  # the checks' A/A control (``FLOOR_PERTURBATION``); None: no check
    scale: ScaleFigures | None = None
    resolutions: None = None  # the key of records before 2026-11-30 (the shape modes are scenarios now), always null
    batches: BatchFigures | None = None
    resident: ResidentFigures | None = None
    named: NamedFigures | None = None
    two: TwoFigures | None = None

    @property
    def warmup_recompiles(self) -> int:
        """Graphs compiled by the first request of each kind (a new shape, scale, batch, adapter)."""
        return sum(r.first_recompiles for r in self.requests)

    @property
    def decoder_recompiles(self) -> int:
        """Of those, the graphs the compiled VAE decoder compiled for new image shapes (``compile_vae`` rows)."""
        return sum(r.first_decoder_graphs for r in self.requests)

    @property
    def transformer_recompiles(self) -> int:
        """The first requests' graphs but the decoder's: what ``expected_recompiles`` documents."""
        return self.warmup_recompiles - self.decoder_recompiles

    @property
    def steady_recompiles(self) -> int:
        """Graphs compiled once every kind of request was warm: must be 0."""
        return sum(r.steady_recompiles for r in self.requests)

    @property
    def tolerance(self) -> float:
        """The largest error the scenario's swap checks pass, from this run's noise floor (``serving_tolerance``)."""
        return serving_tolerance(self.noise_floor)

    @property
    def worst_error(self) -> float | None:
        return max(self.errors.values(), default=None)
