"""Real-time monitoring of a spectrum image during its acquisition.

- :mod:`~hyperspy_mlspec.streaming.monitor`: :class:`StreamingMonitor`, the live HyperSpy
  maps (the only part that touches signals);
- :mod:`~hyperspy_mlspec.streaming.pca`: streaming PCA on arrays (covariance sums,
  background refreshes, projection);
- :mod:`~hyperspy_mlspec.streaming.inference`: one-pass model inference and thread
  settings;
- :mod:`~hyperspy_mlspec.streaming.finetune`: online fine-tuning of a copy of the model.
"""

from hyperspy_mlspec.streaming.monitor import StreamingMonitor
from hyperspy_mlspec.streaming.pca import _LANCZOS_MIN_CHANNELS, StreamingPCA
from hyperspy_mlspec.streaming.pca import top_eigenpairs as _top_eigenpairs

__all__ = ["StreamingMonitor", "StreamingPCA", "_LANCZOS_MIN_CHANNELS", "_top_eigenpairs"]
