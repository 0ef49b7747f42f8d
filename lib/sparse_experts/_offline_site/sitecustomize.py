# Installs the workbook's offline guard in every Python process started with this folder on PYTHONPATH
# and SPARSE_EXPERTS_OFFLINE=1 (see sparse_experts/offline.py). Site-packages (and so the editable install
# of sparse_experts) are set up before Python imports sitecustomize.
import os

if os.environ.get("SPARSE_EXPERTS_OFFLINE", "") not in ("", "0"):
    from sparse_experts import offline as _offline

    _offline.install()
