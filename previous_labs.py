"""The course's names, as the chapters' code imports them, re-exported from the package.

    from previous_labs import GPTModel, generate, text_to_token_ids, token_ids_to_text
    from previous_labs import calc_loss_loader, train_model_simple, plot_losses
"""

from correcteur.batches import InstructionDataset, custom_collate_fn
from correcteur.generate import generate, text_to_token_ids, token_ids_to_text
from correcteur.model import BASE_CONFIG, GPTModel, model_configs
from correcteur.prompt import format_input
from correcteur.train import calc_loss_batch, calc_loss_loader, plot_losses, train_model_simple
from correcteur.weights import download_and_load_gpt2, load_weights_into_gpt

__all__ = [
    "BASE_CONFIG", "GPTModel", "InstructionDataset", "calc_loss_batch", "calc_loss_loader",
    "custom_collate_fn", "download_and_load_gpt2", "format_input", "generate",
    "load_weights_into_gpt", "model_configs", "plot_losses", "text_to_token_ids",
    "token_ids_to_text", "train_model_simple",
]
