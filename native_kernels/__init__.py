"""Native CPU kernels for jaxplastic, as XLA FFI custom calls (C++ compiled at install time).

One op family per module (`structural`: removing and adding synapses, building the column
view), each a C++ source beside its Python binding. The references are jaxplastic's XLA
implementations, which are used wherever the library was not built. This package never
imports `jaxplastic`.
"""
