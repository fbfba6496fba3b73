"""Domain errors: one type per failure a user can cause.

The library raises these; `siglip_serve.api.errors` maps each type to an HTTP
status in one place. Every error can name the offending item (``param``), for
example ``input[3]`` or ``labels``, so that a caller knows what to fix.
"""

from __future__ import annotations

MAX_SHOWN_CHARS = 64


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """`repr(value)` cut to `limit` characters: messages echo user input only that far."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class SiglipServeError(Exception):
    """Base class. ``param`` names the offending field or item, when there is one."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.message = f"{param}: {message}" if param else message
        self.param = param
        super().__init__(self.message)

    def at(self, param: str) -> SiglipServeError:
        """Return the same error re-labelled with the item it concerns (e.g. ``input[2]``)."""
        bare = self.message.removeprefix(f"{self.param}: ") if self.param else self.message
        return type(self)(bare, param=param)


# --- bad input ---------------------------------------------------------------


class InvalidImageError(SiglipServeError):
    """Bytes that are not a decodable image: corrupt, truncated or an unsupported format."""


class EmptyImageError(SiglipServeError):
    """An image with zero width or height."""


class ImageTooLargeError(SiglipServeError):
    """An image over the configured pixel limit (decompression-bomb guard)."""


class ImageFetchError(SiglipServeError):
    """An image URL that could not be fetched: timeout, HTTP error, size limit, refused address."""


class EmptyInputError(SiglipServeError):
    """An empty label list, an empty text or an empty list of inputs."""


class InvalidTextError(SiglipServeError):
    """A text that is not valid Unicode (e.g. a lone surrogate)."""


class InvalidTemplateError(SiglipServeError):
    """A hypothesis template without exactly one ``{}`` placeholder."""


class InvalidParameterError(SiglipServeError):
    """A request parameter this model cannot honour (e.g. `dimensions` other than its embedding size)."""


class TooManyInputsError(SiglipServeError):
    """More inputs, labels or documents than the configured limit."""


class TextTooLongError(SiglipServeError):
    """A label, template or text longer than the configured number of characters."""


class RequestTooLargeError(SiglipServeError):
    """A request body over the configured byte limit."""


class InvalidFormError(SiglipServeError):
    """A multipart/form-data body that cannot be parsed, or a form field of the wrong kind (a file where text
    belongs, metadata that is not JSON)."""


class AuthenticationError(SiglipServeError):
    """A missing or wrong API key."""


# --- checkpoints -------------------------------------------------------------


class CheckpointNotFoundError(SiglipServeError):
    """A spec that is neither a local directory nor a hub id that can be resolved."""


class InvalidCheckpointError(SiglipServeError):
    """A checkpoint directory with missing or inconsistent files."""


class UnsupportedModelError(SiglipServeError):
    """A checkpoint of a model type this server does not implement."""


# --- serving -----------------------------------------------------------------


class UnknownModelError(SiglipServeError):
    """A request for a model name that is not being served."""


class QueueFullError(SiglipServeError):
    """The engine's queue is full: the caller should retry later."""


class DeadlineExceededError(SiglipServeError):
    """A request waited longer than its deadline."""


class EngineUnavailableError(SiglipServeError):
    """The engine cannot serve (not started, stopping, or its batch loop died)."""


class InferenceError(SiglipServeError):
    """The model raised while running a batch."""


# --- collections -------------------------------------------------------------


class InvalidCollectionNameError(SiglipServeError):
    """A collection name that is not 1-128 letters, digits, '-', '_' or '.' starting with a letter or digit."""


class CollectionNotFoundError(SiglipServeError):
    """A collection that does not exist (or a table in the data directory that is not a collection)."""


class CollectionExistsError(SiglipServeError):
    """A collection created under a name that is taken."""


class ModelMismatchError(SiglipServeError):
    """A model other than the one a collection's vectors were made with (vectors of two models never mix)."""


# --- vision features ---------------------------------------------------------


class LayerOutOfRangeError(InvalidParameterError):
    """A vision layer index outside the tower's -(L+1)..L (L: its number of encoder layers)."""


class ResponseTooLargeError(SiglipServeError):
    """A response that would hold more floats than the configured limit (dense features of many images)."""


# --- keys, limits and usage ----------------------------------------------------
# OpenAI's error codes guide (platform.openai.com/docs/guides/error-codes): 429 with code
# `rate_limit_exceeded` when requests come too fast, 429 with code `insufficient_quota` when the
# credit is used up; the official clients raise RateLimitError for both and PermissionDeniedError on 403.


class PermissionDeniedError(SiglipServeError):
    """A valid key used outside what it allows: a route, a model, or the admin routes without an admin key."""


class RateLimitExceededError(SiglipServeError):
    """A key over its requests or images per minute; `retry_after_s` is when the request would pass."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class QuotaExceededError(SiglipServeError):
    """A key whose images for today or whose credit are used up."""

    code = "insufficient_quota"


class KeyNotFoundError(SiglipServeError):
    """An API key id or prefix that names no stored key."""


class KeyExistsError(SiglipServeError):
    """A new key whose prefix is taken (drawn again by the caller; 1 in 10^12)."""


class AccountsUnavailableError(SiglipServeError):
    """The key and usage database cannot be reached, or this server has none."""


class AccountsConfigError(SiglipServeError):
    """A key database or key secret that cannot be used as configured."""
