"""meterseg: find the reading region of a meter photo (Attention U-Net) and crop photos to it."""
__version__ = "0.1.0"
