"""``codesign report``: a network on accelerators versus this machine's CPU/GPU.

Measures the PyTorch model on the CPU (and a CUDA GPU when present), maps and simulates the network
on each accelerator, adds reference GPUs as labelled roofline estimates, and writes index.html,
report.md, data.json and PNG plots. Entry points: :func:`codesign.report.build.write_report` and
:func:`codesign.report.cli.add_report_parser`.
"""
from codesign.report.build import ReportOptions, build_data, write_report

__all__ = ["ReportOptions", "build_data", "write_report"]
