"""MEMIT (Meng et al. 2023) for every family of agents/architectures.py: many edits in one batch over the MLP
layers that causal tracing picks; shares ROME's key, value and covariance steps.
memit_main registers the "memit" editor."""
