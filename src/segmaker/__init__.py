"""segmaker: train and serve GluonCV semantic segmentation on Amazon SageMaker."""

__version__ = "0.1.0"
