"""workshop_lib: the small library behind the fine-tuning workshop notebooks.

One module per job: data (raw files -> validated messages), model (offline tiny model, any model),
chat (templates, masks, token views), recipe, train, launch, generate, plots, widgets, export,
plan, doctor, submit, cli.
"""

import os

# The notebook process forks training workers (launch.py). Asking torch whether a GPU exists must not
# initialise the CUDA driver in that parent, or the forked workers cannot use it: NVML answers instead.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

__version__ = "0.1.0"
