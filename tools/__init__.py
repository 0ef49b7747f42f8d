"""Development tools (not part of the ``sparse_experts`` package): the browser check of notebook 03
(``make browser-check``) and the environment-file sync (``make lock``). Run from the repository root."""
