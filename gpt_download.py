"""The course's `gpt_download` module, so that `from gpt_download import download_and_load_gpt2`
keeps working. The code lives in `correcteur.weights`; it reads the hub's safetensors files, so
TensorFlow is not needed."""

from correcteur.weights import download_and_load_gpt2

__all__ = ["download_and_load_gpt2"]
