"""effdet: an open, reproducible EfficientDet workflow compatible with TAO's efficientdet_tf1."""

__version__ = "0.1.0"
