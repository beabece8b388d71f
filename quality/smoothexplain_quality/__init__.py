"""The explanation quality report (`make report` → docs/quality.md); not used by serving.

Modules: `metrics` (our metrics, pure functions), `sparseness` (Quantus's), `stats` (bootstrap
intervals), `grid` (methods × smoothings via `explain()`), `studies` (the measurements),
`randomize` (cascading randomisation), `resnet` + `zoo` (the compared models), `tables`,
`findings`, `figures`, `report` (rendering) and `run` (the command). Importing this package
imports none of them: Quantus and matplotlib load only when a module that needs them does.
"""

__all__: list[str] = []
