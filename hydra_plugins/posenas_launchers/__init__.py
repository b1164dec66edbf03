"""posenas's Hydra launchers (Hydra instantiates launchers only from the `hydra_plugins` namespace package).

The code lives in nas/sweeps.py and nas/sweeps_submitit.py; these names are what conf/hydra/launcher/*.yaml
point at. Kept free of heavy imports: Hydra imports every hydra_plugins module at start-up, in any Hydra app.
"""
