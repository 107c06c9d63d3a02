"""The bounded-size rules moved to `pyfunc.contract`; `cut` stays importable from here for
`gateway.upstream` until it imports the contract."""

from pyfunc.contract import cut

__all__ = ["cut"]
