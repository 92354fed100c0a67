"""Measured quantities the judge trusts: FLOPs (``flops``), parameters (``parameters``)
and peak memory (``memory``), each measured on the trained model, not declared."""
