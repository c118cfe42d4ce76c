"""The tiny trainer with a real dependency: fails at once when numpy was not installed in the environment."""

import runpy
import sys

import numpy as np

# Where numpy came from is what the tests check: the project's own environment, not the image.
print(f"numpy {np.__version__} from {np.__file__}; checksum {int(np.arange(10).sum())}", flush=True)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
