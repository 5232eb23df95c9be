"""One exception type for every mistake a user can make, so pytest shows one clear line, not a stack trace."""


class SuiteError(Exception):
    """A problem with the suite's input (model, LoRA, recipe, profile, baseline): the message names the fix."""


class LoraIncompatibleError(SuiteError):
    """A LoRA that cannot be hot-swapped into the prepared pipeline; raised before the pipeline is touched."""


class BaselineError(SuiteError):
    """A stored baseline record that cannot be read or does not belong to this run."""


class CompileBudgetExceeded(SuiteError):
    """A first generation (where compilation happens) ran past the profile's compile budget."""
