"""Pallas GPU kernels for jaxplastic, each beside its pure-jnp reference.

One op per module (`propagate`, ...). Every module holds `<op>_reference` (pure jnp, the
test oracle and CPU fallback), the Pallas body `_<op>_kernel` and the jitted wrapper
`<op>`. This package never imports `jaxplastic`.
"""
