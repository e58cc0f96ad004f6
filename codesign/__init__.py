"""codesign: algorithm-hardware co-design for DNN accelerators (pipeline and CLI)."""
__version__ = "0.1.0"
