"""Measured quantities the judge trusts: FLOPs, parameters, memory, time."""
