"""The Slurm executor plugin's account guessing, kept off the console when the profile says
there is no account.

profiles/slurm sets `slurm-no-account: true` (clusters without accounting). Plugin 2.8 accepts
that flag but does not consult it: with no `slurm_account` resource it still asks sacct for
an account and warns on every run that it could not guess one. Under the flag those lines
report what the user chose, so they are dropped; an account it did guess (which it then
passes to sbatch as -A) is still reported.
"""

from __future__ import annotations

import logging
from typing import Any

SNAKEMAKE_LOGGER = "snakemake.logging"  # the logger Snakemake hands its executor plugins
GUESSING = ("No SLURM account given, trying to guess.",
            "No account was given, not able to get a SLURM account via sacct",
            "Unable to guess SLURM account.")


class AccountGuessFilter(logging.Filter):
    def __init__(self, workflow: Any) -> None:
        super().__init__()
        self.workflow = workflow

    def filter(self, record: logging.LogRecord) -> bool:
        # The executor settings exist once the run starts, after the Snakefile is read.
        if not getattr(self.workflow.executor_settings, "no_account", False):
            return True
        return not record.getMessage().startswith(GUESSING)


def quiet_account_guessing(workflow: Any) -> None:
    """Drop the guessing warnings of runs with --slurm-no-account (once per logger)."""
    logger = logging.getLogger(SNAKEMAKE_LOGGER)
    if not any(isinstance(f, AccountGuessFilter) for f in logger.filters):
        logger.addFilter(AccountGuessFilter(workflow))
