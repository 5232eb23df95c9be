"""What one generation is: the seed's settings at full size, a few-second version for the tiny model."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GenerationSettings:
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int
    seed: int = 0

    def pipeline_kwargs(self) -> dict:
        return {
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "max_sequence_length": self.max_sequence_length,
        }

    def to_dict(self) -> dict:
        return asdict(self)


# The seed: 1024x1024, 28 steps, guidance 3.5, max_sequence_length 512, seed 0.
SEED_SETTINGS = GenerationSettings(1024, 1024, 28, 3.5, 512)
TINY_SETTINGS = GenerationSettings(64, 64, 4, 3.5, 32)

SETTINGS_BY_SIZE = {"full": SEED_SETTINGS, "tiny": TINY_SETTINGS}
