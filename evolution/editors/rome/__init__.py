"""ROME (Meng et al. 2022) with the r-ROME fix, for every family of agents/architectures.py; one file per step
as in kmeng01/rome: compute_u (key), compute_v (value), layer_stats (key covariance),
rome_main (rank-one insertion, registers the "rome" editor), hparams.
(Nothing is imported here, so evolution.locate can use the steps without a cycle.)"""
