"""Sparse Experts Workbook: sharded JAX ViTs, V-MoEs and routing primitives behind a row of notebooks.

Shape glossary used in every docstring and einsum string of this package:
B batch (images), P patches per image, N tokens (P or P+1), D width, H MLP/expert hidden width, L layers,
A attention heads, G routing groups, S tokens per group, E experts, K choices per token, C capacity (slots per
expert), M ensemble members or models in a zoo.
"""

__version__ = "0.1.0"
