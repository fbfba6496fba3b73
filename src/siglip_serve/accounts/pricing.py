"""Prices per model, from settings: USD per 1,000 images and per million text tokens.

The default of $0.235 per 1,000 images is an EXAMPLE (the estimate on the model pages this project
started from), not a price anyone charges; set --price-per-1k-images, --price-per-1m-text-tokens or
--model-price NAME=IMAGES:TEXT for real ones. The cost of a request is priced when it is answered and
stored with its usage, so later price changes do not rewrite history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from siglip_serve.config import default
from siglip_serve.errors import AccountsConfigError


def example_price() -> Price:
    return Price(default("price_per_1k_images"), default("price_per_1m_text_tokens"))


@dataclass(frozen=True)
class Price:
    per_1k_images: float
    per_1m_text_tokens: float

    def cost(self, *, images: int, text_tokens: int) -> float:
        return images * self.per_1k_images / 1_000 + text_tokens * self.per_1m_text_tokens / 1_000_000


@dataclass(frozen=True)
class Pricing:
    default: Price
    per_model: dict[str, Price]

    def of(self, model: str | None) -> Price:
        return self.per_model.get(model or "", self.default)

    def is_example(self, model: str | None) -> bool:
        """Whether `model` is priced at the built-in example prices (nobody set its price)."""
        return (model or "") not in self.per_model and self.default == example_price()

    def cost(self, model: str | None, *, images: int, text_tokens: int) -> float:
        return self.of(model).cost(images=images, text_tokens=text_tokens)

    @classmethod
    def parse(cls, *, per_1k_images: float, per_1m_text_tokens: float, model_prices: Sequence[str]) -> Pricing:
        """`model_prices` entries are NAME=IMAGES_PER_1K[:TEXT_PER_1M]; a missing text price is the default one."""
        default = Price(per_1k_images, per_1m_text_tokens)
        per_model = {}
        for entry in model_prices:
            name, sep, prices = entry.partition("=")
            images, _, text = prices.partition(":")
            try:
                price = Price(float(images), float(text) if text else per_1m_text_tokens)
            except ValueError:
                price = None
            if not sep or not name or price is None or price.per_1k_images < 0 or price.per_1m_text_tokens < 0:
                raise AccountsConfigError(f"--model-price {entry!r}: expected NAME=USD_PER_1K_IMAGES[:USD_PER_1M_"
                                          "TEXT_TOKENS], e.g. base=0.235:0.02")
            per_model[name] = price
        return cls(default=default, per_model=per_model)
