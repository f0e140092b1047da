"""mgpu's stand-in for PyInstaller's loader module pyimod03_ctypes (build-config/mgpu.spec).

PyInstaller's own imports ctypes on every start of the program (about 2.5 ms of a 20 ms
`mgpu queue`) to make ctypes.CDLL look for a library in the unpacked program first. mgpu loads
no library of its own through ctypes: launcher.py and bundle.py load the C library
(`CDLL(None)`), pynvml loads the driver's libnvidia-ml.so.1, which is never bundled. So there
is nothing to redirect, and ctypes is imported only by the code that uses it.
"""


def install():
    """Nothing to install (see the module docstring)."""
