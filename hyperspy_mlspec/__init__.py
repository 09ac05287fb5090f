"""hyperspy_mlspec: machine learning for HyperSpy spectrum images.

Importing the package adds the ``mlspec`` namespace to every HyperSpy signal::

    import hyperspy.api as hs
    import hyperspy_mlspec
    s = hs.load("map.hspy")
    ae = s.mlspec.decomposition(n_components=4)

Public API (everything else is internal):
"""

from hyperspy_mlspec import (
    data,  # noqa: E402
    gui,  # noqa: E402  (panels; toolkits imported only when used)
)
from hyperspy_mlspec._version import __version__  # noqa: E402
from hyperspy_mlspec.accessor import MLSpecNamespace, register  # noqa: E402
from hyperspy_mlspec.estimators import (  # noqa: E402
    AutoencoderDecomposition,
    DenoisingAutoencoder,
    MaskedAutoencoder,
)
from hyperspy_mlspec.persistence import load_model  # noqa: E402
from hyperspy_mlspec.streaming import StreamingMonitor  # noqa: E402
from hyperspy_mlspec.workflows.anomaly import AnomalyResult  # noqa: E402
from hyperspy_mlspec.workflows.latent import ClusterResult, plot_embedding  # noqa: E402

register()

__all__ = [
    "AnomalyResult",
    "AutoencoderDecomposition",
    "ClusterResult",
    "DenoisingAutoencoder",
    "MLSpecNamespace",
    "MaskedAutoencoder",
    "StreamingMonitor",
    "__version__",
    "data",
    "gui",
    "load_model",
    "plot_embedding",
]
