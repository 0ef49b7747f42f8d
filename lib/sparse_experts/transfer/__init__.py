"""Transfer: does upstream pre-training help downstream? A linear probe on frozen features.

:func:`features` runs a frozen :class:`sparse_experts.models.ViT` over a dataset split and keeps its
pre-logit pooled features; :func:`linear_probe` fits a multinomial logistic regression on the features of
a train split and scores it on a test split. Comparing the probe on a pre-trained model with the probe on a
randomly initialised twin says whether the pre-training transferred (``benchmarks/transfer_probe.py``).
Submodules: :mod:`.ranking` (kNN accuracy, LogME, LEEP, NCE, H-score), :mod:`.finetune` (a fresh head and a
vmapped sweep), :mod:`.ensemble` (greedy ensembles and their metrics) for notebook 05; :mod:`.proxies`
(domain prediction and routing signatures that pick an expert model) for notebook 06.

Shape glossary: B batch, N examples (of a split; N_test of a test split), D features (the model's width),
Y classes.

Layer 5 (like ``analysis``): imports ``datasets``, ``models``, ``routing`` and below, never ``workbook``.
"""

from sparse_experts.transfer.features import encode_images, features, outputs
from sparse_experts.transfer.probe import ProbeResult, linear_probe
