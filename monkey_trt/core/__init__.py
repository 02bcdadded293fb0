"""The vocabulary every layer shares: errors, the method's knobs, safe file output, optional extras.

Imports nothing of monkey_trt outside this package.
"""

__version__ = "0.1.0"
