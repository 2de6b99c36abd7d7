"""One error hierarchy for metallm: every error a user can cause or fix is a MetalLMError."""


class MetalLMError(Exception):
    """Base of every error metallm raises on purpose."""


class ConfigError(MetalLMError, ValueError):
    """A setting is missing or out of range; the message names the field and the value."""


class UnknownArmError(ConfigError, KeyError):
    """An arm name that the catalogue does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(MetalLMError, FileNotFoundError):
    """The recorded data sets are not where they were looked for."""


class DatasetError(MetalLMError, ValueError):
    """A data set file is there but does not have the expected form."""


class EmbedderError(MetalLMError, RuntimeError):
    """The sentence embedding model cannot be loaded or used."""


class PolicyError(MetalLMError, ValueError):
    """The policy was asked something it cannot do (bad input, incompatible snapshot)."""


class EstimatorError(MetalLMError, ValueError):
    """A logged decision or a saved state the off-policy estimators cannot use."""
