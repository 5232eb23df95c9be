"""The building blocks of the typed record's sections (``perf.judge.record``, ``perf.judge.serving_record``): strict
frozen dataclasses and the annotated number types they are made of. Its own module so a section kept in another
module (the serving scenarios') uses the same rules without importing the record it is part of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import ConfigDict, Field

NonNegative = Annotated[float, Field(ge=0)]
Seconds = NonNegative
GiB = NonNegative
Count = Annotated[int, Field(ge=0)]
Fraction = NonNegative  # an error in units of an adapter's effect (0: none); 1.0 is the whole effect

STRICT = ConfigDict(strict=True, extra="forbid")
"""Every section: a string is not a number, a number is not a bool, and a key the schema lacks is an error."""


def frozen_section(cls):
    """A frozen dataclass validated strictly wherever it is read back (pydantic reads ``__pydantic_config__``
    from a standard library dataclass)."""
    cls.__pydantic_config__ = STRICT
    return dataclass(frozen=True)(cls)
