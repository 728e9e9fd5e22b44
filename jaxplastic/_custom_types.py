"""Type aliases shared across the package, in one axis vocabulary.

Axis names: ``pre`` (presynaptic neurons), ``post`` (postsynaptic neurons), ``cap`` (row
capacity, slots per presynaptic neuron), ``colcap`` (column capacity), ``colwords`` (32-bit
words of a packed column mask, ``ceil(colcap / 32)``), ``batch``, ``time``.
"""

from typing import TYPE_CHECKING, Literal, TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Shaped, UInt32

if TYPE_CHECKING:
    Impl: TypeAlias = Literal["auto", "xla", "pallas"]
    # Operations with a native CPU kernel: "auto" takes it where the program runs on a CPU
    # and the kernel was built, the XLA version elsewhere.
    NativeImpl: TypeAlias = Literal["auto", "native", "xla"]
else:
    Impl = str
    NativeImpl = str

SlotInt: TypeAlias = Int[Array, "pre cap"]
SlotBool: TypeAlias = Bool[Array, "pre cap"]
SlotArray: TypeAlias = Shaped[Array, "pre cap"]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Impl",
    "Int",
    "NativeImpl",
    "PRNGKeyArray",
    "Shaped",
    "SlotArray",
    "SlotBool",
    "SlotInt",
    "UInt32",
]
