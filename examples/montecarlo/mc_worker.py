"""Monte Carlo workers for the ensemble example (numpy only).

Each worker takes its member's seed first and draws every random number from
``numpy.random.default_rng(seed)``: nothing else is random, so a member's value
depends only on its seed and arguments, never on where or when it runs.

This module must be importable by name (``mc_worker``) in the processes that run
the calls; ``run_ensemble.py`` puts its folder on ``sys.path``, and tether sends
the submitter's ``sys.path`` to its workers.
"""

from __future__ import annotations

import numpy as np

#: Window lengths (in samples) of the significance test's statistic.
WINDOWS = (64, 96, 128, 192, 256)


def worker(seed, x):
    """pycwt-mod's example worker: one normal draw, shifted by ``x``."""
    rng = np.random.default_rng(seed)
    return rng.normal() + x


def make_signals(n=2048, amplitude=0.4, seed=1):
    """Two noisy series that share a weak oscillation over their middle third."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    common = amplitude * np.sin(2 * np.pi * t / 32) * ((t > n // 3) & (t < 2 * n // 3))
    signal1 = common + rng.normal(size=n)
    signal2 = common + rng.normal(size=n)
    return signal1, signal2


def phase_randomize(signal, rng):
    """A surrogate with the same power spectrum and random Fourier phases."""
    spectrum = np.fft.rfft(signal)
    phases = rng.uniform(0.0, 2 * np.pi, spectrum.size)
    phases[0] = 0.0  # keep the mean
    if signal.size % 2 == 0:
        phases[-1] = 0.0  # the Nyquist term stays real
    return np.fft.irfft(np.abs(spectrum) * np.exp(1j * phases), n=signal.size)


def max_local_correlation(signal1, signal2, windows=WINDOWS):
    """The largest absolute correlation of the two series over any stretch of time
    and any window length in ``windows``.

    A cheap stand-in for the maximum of a wavelet coherence map (window lengths play
    the part of scales): large when the series move together somewhere, even if
    only for a while.
    """
    best = 0.0
    for window in windows:
        kernel = np.full(window, 1.0 / window)

        def moving_mean(values, kernel=kernel):
            return np.convolve(values, kernel, mode="valid")

        mean1, mean2 = moving_mean(signal1), moving_mean(signal2)
        cov = moving_mean(signal1 * signal2) - mean1 * mean2
        var1 = moving_mean(signal1 * signal1) - mean1**2
        var2 = moving_mean(signal2 * signal2) - mean2**2
        best = max(best, float(np.max(np.abs(cov) / np.sqrt(var1 * var2))))
    return best


def significance_worker(seed, signal1, signal2, windows=WINDOWS):
    """One surrogate of the significance test: phase-randomise both series, return
    the statistic. Under the null hypothesis the series share only their spectra."""
    rng = np.random.default_rng(seed)
    surrogate1 = phase_randomize(signal1, rng)
    surrogate2 = phase_randomize(signal2, rng)
    return max_local_correlation(surrogate1, surrogate2, windows)
