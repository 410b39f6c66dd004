"""FFT-friendly transform sizes: FFTW is fastest on products of small primes."""

from __future__ import annotations

from functools import cache


@cache
def fft_size(n: int) -> int:
    """Smallest 2^a·3^b·5^c·7^d ≥ n."""
    if n < 1:
        raise ValueError(f"transform size must be positive, got {n}")
    m = n
    while True:
        rest = m
        for p in (2, 3, 5, 7):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1
