"""Per-feature noise scales (Gaussian or AdaptGrad) and seeded per-job generators."""

from __future__ import annotations

import math

import numpy as np
import torch

from .spec import Bounds, ExplainSpec, NoiseKind, NoiseSampling, NtType

__all__ = ["NoiseStream", "adaptive_sigma", "job_seed", "make_generator", "noise_scale"]

_GOLDEN = 0x9E3779B97F4A7C15
_MASK63 = 2**63 - 1


def job_seed(seed: int, index: int) -> int:
    """Seed of input `index` of a call seeded with `seed` (index 0 keeps the seed itself)."""
    return (seed + index * _GOLDEN) & _MASK63


# torch's CPU generator is an MT19937 whose `manual_seed` keeps only the low 32 bits of the
# seed (seeds 1 and 2**32 + 1 draw the same numbers). Its state (`get_state()`, 5056 bytes)
# is: the initial seed (u64), `left` and `seeded` (i32 each), `next` (u64), then the 624 state
# words, one u32 per u64 slot. We fill those words from numpy's SeedSequence, which hashes
# every bit of the seed; `_mt_layout_holds` checks the layout against numpy's MT19937 first.
_MT_WORDS = 624
_MT_OFFSET = 24  # bytes before the state words


def _mt_words(state: torch.Tensor) -> np.ndarray:
    raw = state.numpy()[_MT_OFFSET : _MT_OFFSET + 8 * _MT_WORDS]
    return np.frombuffer(raw.tobytes(), dtype="<u8")


def _mt_layout_holds() -> bool:
    probe = torch.Generator()
    probe.manual_seed(12345)
    state = probe.get_state()
    legacy = np.random.RandomState(12345).get_state(legacy=False)["state"]["key"]  # same seeding
    return state.numel() > _MT_OFFSET + 8 * _MT_WORDS and bool(
        np.array_equal(_mt_words(state), legacy.astype(np.uint64))
    )


_MT_LAYOUT_HOLDS = _mt_layout_holds()


def _seed_all_bits(generator: torch.Generator, seed: int) -> None:
    generator.manual_seed(seed)  # the header: initial seed, a fresh `left`/`next`
    if not _MT_LAYOUT_HOLDS:  # another torch build: fold the high bits in instead
        generator.manual_seed((seed ^ (seed >> 32)) & 0xFFFFFFFF)
        return
    words = np.random.SeedSequence(seed).generate_state(_MT_WORDS, np.uint32)
    state = generator.get_state().numpy().copy()
    state[_MT_OFFSET : _MT_OFFSET + 8 * _MT_WORDS] = np.frombuffer(
        words.astype("<u8").tobytes(), dtype=np.uint8
    )
    generator.set_state(torch.from_numpy(state))


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator whose stream depends on every bit of `seed` (0 <= seed < 2**64)."""
    generator = torch.Generator(device=device)
    if generator.device.type == "cpu":
        _seed_all_bits(generator, seed)
    else:
        generator.manual_seed(seed)  # CUDA's Philox generator keeps all 64 bits
    return generator


def adaptive_sigma(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, confidence: float
) -> torch.Tensor:
    """AdaptGrad: σᵢ = min(|xᵢ − low|, |xᵢ − high|) / (√2·erfinv(c)); 0 exactly at a bound."""
    quantile = math.sqrt(2.0) * torch.erfinv(torch.tensor(confidence, dtype=torch.float64)).item()
    distance = torch.minimum((x - low).abs(), (x - high).abs())
    return distance / quantile


def _range(x: torch.Tensor, bounds: Bounds | None) -> tuple[torch.Tensor, torch.Tensor]:
    if bounds is not None:
        return bounds.low.to(x.device, x.dtype), bounds.high.to(x.device, x.dtype)
    return x.min(), x.max()


def noise_scale(x: torch.Tensor, spec: ExplainSpec) -> torch.Tensor | None:
    """σ for one input (no batch dim), scalar or per feature; None when no noise is drawn."""
    if spec.nt_type is NtType.NONE:
        return None
    low, high = _range(x, spec.bounds)
    if spec.noise is NoiseKind.ADAPTIVE:
        return adaptive_sigma(x, low, high, spec.confidence).expand_as(x)
    if spec.stdevs is not None:
        return torch.tensor(spec.stdevs, dtype=x.dtype, device=x.device)
    return spec.sigma * (high - low)


_SOBOL_MAX_DIMENSION = 21201  # torch.quasirandom.SobolEngine's limit


class NoiseStream:
    """Standard-normal noise for one job, one sample at a time, in a fixed order.

    `iid`: independent draws from the job's generator (the stream every other option is
    compared with). `antithetic`: samples 2k and 2k+1 are ε and −ε, so odd gradient terms cancel
    in pairs. `qmc`: scrambled Sobol points mapped through the inverse normal CDF; inputs with
    more features than one Sobol engine supports use several independently scrambled engines.
    """

    def __init__(
        self,
        shape: torch.Size,
        scheme: NoiseSampling,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.shape, self.scheme, self.generator = shape, scheme, generator
        self.dtype, self.device = dtype, device
        self.index = 0
        self.previous: torch.Tensor | None = None
        self.engines: list[torch.quasirandom.SobolEngine] = []
        if scheme is NoiseSampling.QMC:
            features = math.prod(shape)
            for start in range(0, features, _SOBOL_MAX_DIMENSION):
                width = min(_SOBOL_MAX_DIMENSION, features - start)
                seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
                engine = torch.quasirandom.SobolEngine(width, scramble=True, seed=seed)  # type: ignore[no-untyped-call]
                self.engines.append(engine)

    def fill(self, out: torch.Tensor) -> torch.Tensor:
        """Write the next sample's N(0, 1) noise into `out` (shaped like one input)."""
        index, self.index = self.index, self.index + 1
        if self.scheme is NoiseSampling.ANTITHETIC and index % 2 == 1 and self.previous is not None:
            return torch.neg(self.previous, out=out)
        if self.scheme is NoiseSampling.QMC:
            points = torch.cat([engine.draw(1, dtype=torch.float64)[0] for engine in self.engines])
            # Sobol points can be exactly 0; keep Φ⁻¹ finite.
            normal = torch.special.ndtri(points.clamp(1e-12, 1 - 1e-12))
            out.copy_(normal.view(self.shape))
        else:
            torch.randn(
                self.shape, generator=self.generator, dtype=self.dtype, device=self.device, out=out
            )
        if self.scheme is NoiseSampling.ANTITHETIC:
            self.previous = out.clone()
        return out
