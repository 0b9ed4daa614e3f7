"""icapnet: image captioning with VGG16 region features, Bahdanau attention and a GRU decoder."""

__version__ = "0.1.0"
