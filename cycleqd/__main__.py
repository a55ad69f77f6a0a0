"""``python -m cycleqd``: the command line."""

import os
import sys

# `-m` puts the working directory first on the path; in a checkout of cycleqd that directory
# holds the top-level `kernels/` folder (installed as cycleqd.kernels), which would shadow the
# Hugging Face `kernels` package that transformers imports
if sys.path and os.path.realpath(sys.path[0] or ".") == os.path.realpath(os.getcwd()):
    sys.path.pop(0)

from cycleqd.cli import main  # noqa: E402

main()
