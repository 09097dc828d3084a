"""The embedded Runge–Kutta pairs of the adaptive solvers, with exact coefficients.

Each pair is written with exact rationals (and, for dopri8's dense output, exact decimals) and
rounded once to float64 by :meth:`~ddim_ode.solvers.tableau.ButcherTableau.exact`, which also
verifies its order conditions. They are the pairs torchdiffeq integrates with under the same
names, to the last bit (Heun–Euler's error weights up to their sign, which the error norm ignores;
``tests/test_solvers.py`` compares them), so both engines of
:class:`~ddim_ode.solvers.adaptive.AdaptiveSolver` take the same steps. The last row of ``a`` of a
pair whose last stage is at the new solution ("first same as last") is its weights ``b``.
"""

from __future__ import annotations

from fractions import Fraction

from .tableau import ButcherTableau

__all__ = ["DOPRI5", "BOSH3", "ADAPTIVE_HEUN", "DOPRI8", "EMBEDDED"]


def _q(text: str) -> tuple[Fraction, ...]:
    """Exact numbers written as ``p/q`` or as decimals, separated by spaces."""
    return tuple(Fraction(v) for v in text.split())


# Dormand & Prince 1980, RK5(4)7M: 5th-order solution, FSAL. The 4th-order embedded solution is
# Shampine's (1986), as in torchdiffeq (Dormand and Prince's own is 5179/57600, 0, 7571/16695,
# 393/640, −92097/339200, 187/2100, 1/40: on the mixtures it took 5–13 % more NFE for the same
# error), and so are the midpoint weights of the 4th-order dense output.
_DOPRI5_B = _q("35/384 0 500/1113 125/192 -2187/6784 11/84 0")
DOPRI5 = ButcherTableau.exact(
    c=_q("0 1/5 3/10 4/5 8/9 1 1"),
    a=(
        (),
        _q("1/5"),
        _q("3/40 9/40"),
        _q("44/45 -56/15 32/9"),
        _q("19372/6561 -25360/2187 64448/6561 -212/729"),
        _q("9017/3168 -355/33 46732/5247 49/176 -5103/18656"),
        _DOPRI5_B[:-1],
    ),
    b=_DOPRI5_B,
    b_hat=_q("1951/21600 0 22642/50085 451/720 -12231/42400 649/6300 1/60"),
    order=5,
    fsal=True,
    mid=_q(
        "6025192743/60171106304 0 51252292925/130801643196 -2691868925/90256659456 "
        "187940372067/3189068634112 -1776094331/39487288512 11237099/470086768"
    ),
)

# Bogacki & Shampine 1989: 3rd-order solution, 2nd-order embedded, FSAL
_BOSH3_B = _q("2/9 1/3 4/9 0")
BOSH3 = ButcherTableau.exact(
    c=_q("0 1/2 3/4 1"),
    a=((), _q("1/2"), _q("0 3/4"), _BOSH3_B[:-1]),
    b=_BOSH3_B,
    b_hat=_q("7/24 1/4 1/3 1/8"),
    order=3,
    fsal=True,
)

# Heun (trapezoidal, 2nd order) with Euler embedded; the next step starts from the ε at the Euler
# predictor (as torchdiffeq's adaptive_heun): 1 NFE per step
ADAPTIVE_HEUN = ButcherTableau.exact(c=_q("0 1"), a=((), _q("1")), b=_q("1/2 1/2"), b_hat=_q("1 0"), order=2, fsal=True)

# Prince & Dormand 1981, RK8(7)13M: 8th-order solution, 7th-order embedded, 13 stages plus the
# FSAL stage (its coefficients are their published rational approximations). The midpoint weights
# of the dense output are decimal polynomials in θ evaluated exactly at θ = ½.
_DOPRI8_B = _q(
    "14005451/335480064 0 0 0 0 -59238493/1068277825 181606767/758867731 561292985/797845732 "
    "-1041891430/1371343529 760417239/1151165299 118820643/751138087 -528747749/2220607170 1/4 0"
)
DOPRI8 = ButcherTableau.exact(
    c=_q("0 1/18 1/12 1/8 5/16 3/8 59/400 93/200 5490023248/9719169821 13/20 1201146811/1299019798 1 1 1"),
    a=(
        (),
        _q("1/18"),
        _q("1/48 1/16"),
        _q("1/32 0 3/32"),
        _q("5/16 0 -75/64 75/64"),
        _q("3/80 0 0 3/16 3/20"),
        _q("29443841/614563906 0 0 77736538/692538347 -28693883/1125000000 23124283/1800000000"),
        _q("16016141/946692911 0 0 61564180/158732637 22789713/633445777 545815736/2771057229 -180193667/1043307555"),
        _q(
            "39632708/573591083 0 0 -433636366/683701615 -421739975/2616292301 100302831/723423059 "
            "790204164/839813087 800635310/3783071287"
        ),
        _q(
            "246121993/1340847787 0 0 -37695042795/15268766246 -309121744/1061227803 -12992083/490766935 "
            "6005943493/2108947869 393006217/1396673457 123872331/1001029789"
        ),
        _q(
            "-1028468189/846180014 0 0 8478235783/508512852 1311729495/1432422823 -10304129995/1701304382 "
            "-48777925059/3047939560 15336726248/1032824649 -45442868181/3398467696 3065993473/597172653"
        ),
        _q(
            "185892177/718116043 0 0 -3185094517/667107341 -477755414/1098053517 -703635378/230739211 "
            "5731566787/1027545527 5232866602/850066563 -4093664535/808688257 3962137247/1805957418 "
            "65686358/487910083"
        ),
        _q(
            "403863854/491063109 0 0 -5068492393/434740067 -411421997/543043805 652783627/914296604 "
            "11173962825/925320556 -13158990841/6184727034 3936647629/1978049680 -160528059/685178525 "
            "248638103/1413531060 0"
        ),
        _DOPRI8_B[:-1],
    ),
    b=_DOPRI8_B,
    b_hat=_q(
        "13451932/455176623 0 0 0 0 -808719846/976000145 1757004468/5645159321 656045339/265891186 "
        "-3867574721/1518517206 465885868/322736535 53011238/667516719 2/45 0 0"
    ),
    order=8,
    fsal=True,
    mid=_q(
        "0.041031303607394012375 0 0 0 0 0.0510056280199134456875 0.2388930677412199966125 "
        "0.3096870143996102922671875 -0.217232547175535029009375 0.07833405679331924616875 "
        "-0.001861436971558026034375 0.0070728442026784521390625 0.0069084737320050937390625 "
        "-0.0138384043490474839609375"
    ),
)

#: the pairs by torchdiffeq method name
EMBEDDED: dict[str, ButcherTableau] = {
    "dopri5": DOPRI5,
    "bosh3": BOSH3,
    "dopri8": DOPRI8,
    "adaptive_heun": ADAPTIVE_HEUN,
}
