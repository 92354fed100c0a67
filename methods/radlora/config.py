"""RAD-LoRA hyperparameters (METHODS.md section 6, "RAD-LoRA-r")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from methods._low_rank_config import TargetModules
from methods.base import MethodConfig


class RadLoraConfig(MethodConfig):
    r_max: int = Field(8, ge=1, le=64, description="largest rank; the router picks k in 1..r_max per block and input")
    alpha: float = Field(16.0, gt=0, description="fixed scale s = alpha / sqrt(r_max), independent of the chosen k")
    generator: Literal["static", "hyper"] = Field(
        "static",
        description="static: shared nested factors A, B per module; hyper: A and B plus a low-rank "
        "per-input correction generated from the pooled block input (see methods/radlora/layer.py)",
    )
    hyper_dim: int = Field(4, ge=1, le=64, description="c, the size of the per-input code of the hyper generator")
    router_hidden: int = Field(16, ge=1, le=1024, description="hidden width of the per-block router MLP")
    gate_bias_init: float = Field(3.0, description="initial gate logit bias (+3: p = 0.95, adapters start on)")
    gate_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="tau: at inference the block runs when p > tau")
    cost: Literal["fixed", "dual"] = Field(
        "dual",
        description="fixed: loss += lambda_c sum p + lambda_r sum E(k) (the seed); dual: loss += "
        "lambda (rho_hat - rho_t) + mu/2 (rho_hat - rho_t)^2, dual ascent on lambda, rho_t annealed to target_rho",
    )
    lambda_c: float = Field(0.1, ge=0.0, description="cost=fixed: weight of the summed gate probabilities")
    lambda_r: float = Field(0.05, ge=0.0, description="cost=fixed: weight of the summed expected ranks")
    target_rho: float = Field(0.25, gt=0.0, le=1.0, description="cost=dual: target fraction of full-rank adapter work")
    dual_lr: float = Field(
        0.5, ge=0.0, description="cost=dual: step eta of lambda <- max(0, lambda + eta (rho_hat - target))"
    )
    budget_mode: Literal["at_most", "track"] = Field(
        "at_most",
        description="cost=dual: at_most keeps lambda >= 0 (constraint rho <= target_rho); track lets lambda "
        "go negative, so an under-used budget is pushed back up to target_rho",
    )
    budget_anneal_until: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="cost=dual: fraction of steps by which the target descends (cubically) from the work "
        "fraction at the end of warmup to target_rho",
    )
    budget_penalty: float = Field(
        20.0,
        ge=0.0,
        description="cost=dual: mu of the augmented Lagrangian term mu/2 (rho_hat - target)^2 "
        "(one-sided, above the target, when budget_mode=at_most)",
    )
    dual_init: float = Field(0.0, ge=0.0, description="cost=dual: initial lambda")
    tau_start: float = Field(1.0, gt=0.0, description="Gumbel temperature after warmup")
    tau_end: float = Field(0.1, gt=0.0, description="Gumbel temperature at the end of training (geometric decay)")
    warmup_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="fraction of steps with every gate on at full rank"
    )
    expected_fraction: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="until this fraction of steps the rank uses the expected nested mask P(k >= j)",
    )
    target_modules: TargetModules = None

    @model_validator(mode="after")
    def _temperatures(self) -> RadLoraConfig:
        if self.tau_end > self.tau_start:
            raise ValueError("tau_end must not exceed tau_start (the temperature anneals downwards)")
        return self
