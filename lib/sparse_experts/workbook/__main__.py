"""``python -m sparse_experts.workbook run|list``: the headless runner (:mod:`.runner`)."""

import sys

from sparse_experts.workbook.runner import main

if __name__ == "__main__":
    sys.exit(main())
