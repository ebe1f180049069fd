"""The charge optimiser (sans-I/O): an order and a stock in, tonnes per grade out.

* :mod:`models.charge.inputs`: :class:`Order`, :class:`Stock` and the bus request
  :class:`OptimizeRequest` (pydantic, from TOML files or JSON-able maps);
* :mod:`models.charge.optimizer`: :func:`optimize` (sequential linear programming on any
  heat model, HiGHS through scipy) and its answer :class:`ChargePlan`.

Numpy, scipy and pydantic only: it runs in the torch-free consumer install.
"""

from typing import Any

from alchimia.models.charge.inputs import (
    GradeStock,
    OptimizeRequest,
    Order,
    ProcessPlan,
    Stock,
    Window,
    load_order,
    load_stock,
    request_from,
)

# The optimiser pulls in scipy (~1 s): loaded on first use, so that reading an order or
# building a command line does not pay for it.
_OPTIMIZER = ("ChargePlan", "InfeasibleCalibration", "Options", "optimize", "optimize_request")


def __getattr__(name: str) -> Any:
    if name in _OPTIMIZER:
        from alchimia.models.charge import optimizer

        return getattr(optimizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ChargePlan",
    "GradeStock",
    "InfeasibleCalibration",
    "OptimizeRequest",
    "Options",
    "Order",
    "ProcessPlan",
    "Stock",
    "Window",
    "load_order",
    "load_stock",
    "optimize",
    "optimize_request",
    "request_from",
]
