"""The launchers conf/hydra/launcher/{local,submitit_local,slurm}.yaml name (see nas/sweeps.py for why they exist).

Hydra instantiates a launcher only from a class defined in the `hydra_plugins` namespace, so these are thin
subclasses of the real ones in nas/sweeps.py and nas/sweeps_submitit.py.
"""
from __future__ import annotations

from nas import sweeps, sweeps_submitit


class LocalLauncher(sweeps.LocalLauncher):
    """The jobs one after another in this process; a failure does not stop the others."""


class SubmititLocalLauncher(sweeps_submitit.SubmititLocalLauncher):
    """The jobs as submitit subprocesses of this machine (a SLURM sweep tried without a cluster)."""


class SlurmLauncher(sweeps_submitit.SlurmLauncher):
    """The jobs as a SLURM job array through submitit; a failed job ends FAILED in SLURM."""
