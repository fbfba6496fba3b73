"""The hypothesis template used when a caller gives none.

Torch-free, so that the HTTP layer's schema and the CLI's flags can name it without loading the model code.
"""

DEFAULT_TEMPLATE = "This is a photo of {}."  # HF zero-shot pipeline and the SigLIP model cards
