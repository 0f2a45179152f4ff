"""correcteur: instruction-fine-tune GPT-2 (or a small Llama-family model) to correct French text."""

__version__ = "0.1.0"
