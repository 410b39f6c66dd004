"""FFT conv layers of an exported plan as FFTW3 kernels (opt-in: ``znni export --fftw``).

The runtime's FFT path is pyfftw plus generated spectral kernels, bound to Python; the export
instead renders one self-contained C++ layer against libfftw3f (r2c/c2r transforms of the
image size rounded up to an FFT-friendly size, the same rounding as the runtime). It is opt-in
because the built library then needs FFTW's headers and library (``libfftw3-dev`` on
Debian/Ubuntu, ``fftw-devel`` on Fedora, ``brew install fftw``); without it FFT layers are
exported as direct convolution (same result, more FLOPs).
"""

from __future__ import annotations

import numpy as np

from .codegen.render import render
from .fft.sizes import fft_size
from .spec import Conv, Shape5


def fftw_conv_source(layer: Conv, shape_in: Shape5) -> str:
    """The FFTW layer's C++ for one input shape (any batch size), ABI as every kernel."""
    _, _, nz, ny, nx = shape_in
    return render("export_fftw_conv.cpp.j2", {
        "f_in": layer.in_channels, "f_out": layer.out_channels,
        "kz": layer.kernel[0], "ky": layer.kernel[1], "kx": layer.kernel[2],
        "dz": layer.dilation[0], "dy": layer.dilation[1], "dx": layer.dilation[2],
        "nz": nz, "ny": ny, "nx": nx,
        "tz": fft_size(nz), "ty": fft_size(ny), "tx": fft_size(nx),
        "activation": layer.activation})


def fftw_weights(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The layer's weights as the kernel reads them: PyTorch's (out, in, kz, ky, kx) order."""
    return np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32)
