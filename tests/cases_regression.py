"""Conformance input factories of the robust regression losses (Welsch, Cauchy, Geman-McClure, Barron)."""

from __future__ import annotations

from test_conformance import Case, _pair

CASES: dict[str, Case] = {
    "welsch": Case(_pair, wrt=(0, 1)),
    "cauchy": Case(_pair, wrt=(0, 1)),
    "geman_mcclure": Case(_pair, wrt=(0, 1)),
    "general_robust": Case(
        _pair, wrt=(0, 1), module_kw={"alpha": 0.5, "scale": 0.7}, functional_kw={"alpha": 0.5, "scale": 0.7}
    ),
}
