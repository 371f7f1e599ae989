"""The search space: one spec per flat trial key, turned into Optuna distributions.

A spec is `{type: float|log_float|int|categorical|fixed, ...}`; a bare value in YAML means
`fixed`. Every bound and choice is checked against the trial config's own field rules, so
`weight_decay: {type: float, low: -1, high: 1}` fails on `space.weight_decay.low` before Ray starts.
"""

from __future__ import annotations

from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainables.config import TrialConfig, flat_key_owner

SpecType = Literal["float", "log_float", "int", "categorical", "fixed"]


class ParamSpec(BaseModel):
    """How one flat trial key varies across trials."""

    model_config = ConfigDict(extra="forbid")

    type: SpecType
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False  # for int
    values: list[Any] = Field(default_factory=list)
    value: Any = None

    @model_validator(mode="before")
    @classmethod
    def _bare_value_is_fixed(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return {"type": "fixed", "value": data}
        return data

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.type in ("float", "log_float", "int"):
            if self.low is None or self.high is None:
                raise ValueError(f"a {self.type} range needs both low and high")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
            if self.type == "log_float" and self.low <= 0:
                raise ValueError(f"a log_float range needs low > 0 (got {self.low})")
        if self.type == "categorical" and not self.values:
            raise ValueError("a categorical spec needs a non-empty list of values")
        if self.type == "fixed" and self.value is None:
            raise ValueError("a fixed spec needs a value")
        return self

    def candidates(self) -> list[Any]:
        """Values to check against the trial config: the bounds, the choices or the value."""
        if self.type == "categorical":
            return list(self.values)
        if self.type == "fixed":
            return [self.value]
        if self.type == "int":
            return [int(self.low or 0), int(self.high or 0)]
        return [self.low, self.high]

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution this spec searches."""
        lo, hi = self.low, self.high
        if self.type == "float":
            return optuna.distributions.FloatDistribution(lo, hi, step=self.step)  # type: ignore[arg-type]
        if self.type == "log_float":
            return optuna.distributions.FloatDistribution(lo, hi, log=True)  # type: ignore[arg-type]
        if self.type == "int":
            step = int(self.step or 1)
            return optuna.distributions.IntDistribution(int(lo), int(hi), log=self.log, step=step)  # type: ignore[arg-type]
        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(self.values)
        raise ValueError("a fixed spec has no distribution")


def check_space(space: dict[str, ParamSpec], base: dict[str, Any], sampler: str) -> None:
    """Each key must be a trial field and every candidate value valid for that field."""
    owner = flat_key_owner()
    for key, spec in space.items():
        if key not in owner:
            raise ValueError(
                f"space.{key}: not a trial parameter; searchable keys: {', '.join(sorted(owner))}"
            )
        for value in spec.candidates():
            try:
                TrialConfig.from_flat({**base, key: value})
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                raise ValueError(f"space.{key}: {value!r} is not allowed: {msg}") from None
        if sampler == "grid" and spec.type not in ("categorical", "fixed"):
            raise ValueError(
                f"space.{key}: the grid sampler needs categorical values (got a {spec.type} "
                "range); list the grid points under `values`"
            )
    if not any(spec.type != "fixed" for spec in space.values()):
        raise ValueError("space: nothing is searched; give at least one non-fixed parameter")


def optuna_space(space: dict[str, ParamSpec]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions of the searched keys (fixed specs are not searched)."""
    return {k: spec.distribution() for k, spec in space.items() if spec.type != "fixed"}


def fixed_values(space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Values of the fixed specs, which every trial receives as constants."""
    return {k: spec.value for k, spec in space.items() if spec.type == "fixed"}
