"""workshop_lib: the small library behind the fine-tuning workshop notebooks.

One module per job, in the order a participant meets them:
- data, chat: raw rows -> validated messages (or pairs, prompts); chat templates, masks, token views
- model, recipe, params, trainers, plan, preflight: the model, one recipe vocabulary (SFTConfig, DPOConfig,
  GRPOConfig and LoraConfig keys), a notebook's parameters cell, the trainer kinds, sizing, start checks
- build, callbacks, rewards, worker, launch, train, runfolder, control, watchdog, failures: TRL objects from a
  recipe, the training worker, its processes and nodes, the run folder, stop/resume, hangs and root causes
- progress, plots, widgets, runs, scoring, generate, export, modelcard, push: following and judging a run
- submit, jobscript, jobenv, lab, kernel, kernel_sockets, prefetch, doctor, demo, cli: Slurm jobs, JupyterLab on
  a node, the kit's kernels (spec; Unix sockets), the offline hub cache, environment checks, the demo pipeline,
  the command line
"""

import os

# The notebook process forks training workers (launch.py). Asking torch whether a GPU exists must not
# initialise the CUDA driver in that parent, or the forked workers cannot use it: NVML answers instead.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
# OpenMP threads (torch's, libgomp) spin 300000 times at each barrier before they sleep. Beside a busy core that
# spinning took notebook 03's training from 3.5 s to 177 s (40 steps, 2 cores); a thousand spins keep the idle
# speed and 7.9 s busy (benchmarks/busy_core.py). Read when torch loads: the kit's processes import this first.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
