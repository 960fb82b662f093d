"""workshop_lib: the small library behind the fine-tuning workshop notebooks.

One module per job: data (raw files -> validated messages), tiny_model (offline demo model),
chat (templates, masks, token views), recipe, train, launch, plots, plan, doctor, cli.
"""

__version__ = "0.1.0"
