"""The explanation quality report (`make report` → docs/quality.md); not used by serving.

Modules: `metrics` (our metrics, pure functions), `sparseness` (Quantus's), `stats` (bootstrap
intervals), `grid` (methods × smoothings via `explain()`), `studies` (the measurements),
`randomize` (cascading randomisation), `resnet` + `zoo` (the compared models), `tables`,
`findings`, `figures`, `report` (rendering) and `run` (the command). The pretrained-network
part: `networks` + `photos` (EfficientNet-Lite0/1/2, the shipped photographs), `faithfulness`
(deletion / insertion curves), `paper` (the AdaptGrad paper's Table 2), `real` (its
measurements), `real_findings` and `real_report`. Importing this package
imports none of them: Quantus and matplotlib load only when a module that needs them does.
"""

__all__: list[str] = []
