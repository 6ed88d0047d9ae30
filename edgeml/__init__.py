"""edgeml: hardware co-design toolkit for scientific edge ML."""

__version__ = "0.1.0"
