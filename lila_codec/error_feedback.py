# SPDX-License-Identifier: AGPL-3.0-or-later
"""Error feedback: the sender keeps what the codec lost and sends it next round.

Round t encodes e_t = δ_t + r_{t−1} and keeps r_t = e_t − decode(payload_t). Summed over
k rounds, Σ decode(payload_t) + r_k = Σ δ_t exactly (up to float rounding): nothing
is lost over time, only delayed. The residual is computed from the real decoder, so
it is what every receiver sees.
"""

from __future__ import annotations

import torch

from lila_codec.base import Codec
from lila_codec.errors import CodecError


class ErrorFeedback:
    """Wrap a codec with a sender-side residual (float32, same shape as the updates)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._residual: torch.Tensor | None = None

    @property
    def residual(self) -> torch.Tensor | None:
        """The quantization error kept from the last round (None before the first)."""
        return self._residual

    def reset(self) -> None:
        """Drop the residual (e.g. after the model was re-synchronized from peers)."""
        self._residual = None

    def encode(self, delta: torch.Tensor, *, seed: int = 0) -> bytes:
        """Encode ``delta`` plus the kept residual; keep the new residual."""
        target = delta.detach().to(torch.float32)
        if self._residual is not None:
            if self._residual.shape != target.shape:
                raise CodecError(
                    f"error feedback residual has shape {tuple(self._residual.shape)} but this update has "
                    f"{tuple(target.shape)}; call reset() when the parameter layout changes"
                )
            target = target + self._residual.to(target.device)
        payload = self.codec.encode(target, seed=seed)
        decoded = self.codec.decode(payload).to(device=target.device, dtype=torch.float32)
        self._residual = target - decoded
        return payload
