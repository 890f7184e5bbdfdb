"""Suite-wide setting: the public losses take their fused kernels at every size.

By default a kernel is used only where it runs compiled (large inputs); the suite's inputs are
small, so without this the kernels' dispatch, memory and precision tests would exercise the plain
code. ``test_kernels.py::test_default_dispatch_*`` checks the default rule itself.
"""

from losskit._kernels import set_fused_kernels

set_fused_kernels("always")

# input factories merged by test_conformance; importing them first (doctest collection) is circular
collect_ignore_glob = ["cases_*.py"]
