"""FFT building blocks on FFTW (through cffi): friendly sizes, pruned 3D transforms, wisdom."""

from .pruned import SpectralShape, forward, forward_unpruned, inverse_cropped
from .sizes import fft_size

__all__ = ["SpectralShape", "fft_size", "forward", "forward_unpruned", "inverse_cropped"]
