"""monkey-trt: an inference engine for MONKEY (masked IP-Adapter personalization on SD1.5/LCM)."""

__version__ = "0.1.0"
