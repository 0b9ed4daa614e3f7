"""Data side of icapnet: dataset readers, vocabulary, synthetic scenes, features, pipelines.

Kept import-light on purpose (no TensorFlow here): ``icapnet.data.text`` and
``icapnet.data.datasets`` must be usable from tools that never build a model.
"""
