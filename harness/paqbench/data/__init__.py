"""Text datasets and calibration data."""
