"""XUNet MONAI bundle: the ``CrossBasicUNet`` network and the data tools its configs use."""

from .networks import CrossBasicUNet, UpCatAll

__version__ = "0.16.0"
__all__ = ["CrossBasicUNet", "UpCatAll", "__version__"]
