"""Request limits, checked before any work: counts, templates x labels, text lengths.

Every limit is a setting; the 400 names the item and the limit. A text is cut to the model's
64 tokens anyway, so a megabyte label is never useful (issue #13).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from siglip_serve.config import Settings
from siglip_serve.engine.inputs import Input
from siglip_serve.errors import EmptyInputError, TextTooLongError, TooManyInputsError


def check_count(items: Sequence[object], *, limit: int, param: str) -> None:
    if not items:
        raise EmptyInputError(f"{param} must not be empty", param=param)
    if len(items) > limit:
        raise TooManyInputsError(f"{len(items)} items, over the limit of {limit}", param=param)


def check_text_lengths(texts: Iterable[tuple[str, object]], settings: Settings) -> None:
    """(param, text) pairs; non-strings are left to the engine's own checks."""
    limit = settings.max_text_chars
    for param, text in texts:
        if isinstance(text, str) and len(text) > limit:
            raise TextTooLongError(f"text of {len(text)} characters, over the limit of {limit} "
                                   "(see --max-text-chars)", param=param)


def check_inputs(inputs: Sequence[Input], settings: Settings) -> None:
    check_text_lengths(((item.param, item.text) for item in inputs if item.text is not None), settings)


def check_classify(labels: Sequence[str], templates: str | Sequence[str] | None, settings: Settings,
                   *, labels_param: str = "labels") -> None:
    check_count(labels, limit=settings.max_labels, param=labels_param)
    template_list = [] if templates is None else [templates] if isinstance(templates, str) else list(templates)
    if len(template_list) > settings.max_templates:
        raise TooManyInputsError(f"{len(template_list)} templates, over the limit of {settings.max_templates}",
                                 param="hypothesis_template")
    prompts = len(labels) * max(1, len(template_list))
    if prompts > settings.max_prompts:
        raise TooManyInputsError(
            f"{len(template_list)} templates x {len(labels)} labels = {prompts} prompts, over the limit of "
            f"{settings.max_prompts} (see --max-prompts)", param="hypothesis_template")
    check_text_lengths(((f"{labels_param}[{i}]", label) for i, label in enumerate(labels)), settings)
    named = "hypothesis_template" if isinstance(templates, str) else None
    check_text_lengths(((named or f"hypothesis_template[{i}]", t) for i, t in enumerate(template_list)), settings)
