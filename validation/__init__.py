"""Validation of rcutune's model against real kernels (see validation/README.md)."""
