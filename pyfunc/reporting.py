"""`cut` for gateway.upstream; the bounded-size rules live in pyfunc.contract."""

from pyfunc.contract import cut  # noqa: F401
