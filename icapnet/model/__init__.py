"""The captioner model (encoder, attention, decoder), its training glue and model directories."""

from icapnet.model.captioner import Captioner, masked_token_loss
from icapnet.model.layers import BahdanauAttention, CNNEncoder, Decoder, MeanAttention
from icapnet.model.store import load_model_dir, save_model_dir

__all__ = [
    "BahdanauAttention",
    "CNNEncoder",
    "Captioner",
    "Decoder",
    "MeanAttention",
    "load_model_dir",
    "masked_token_loss",
    "save_model_dir",
]
