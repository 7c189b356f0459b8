"""Training and evaluation engine: distributed plumbing, optimiser and schedule, checkpoints, the loops.

Modules are imported explicitly (``from microact.engine.train import train``) so that importing the package
stays cheap; ``microact.engine.builders.build_model`` turns a config into the recognizer.
"""
