"""The circular rational-quadratic spline of NCSF (Rezende et al. 2020), one element at a time.

The spline of :mod:`.spline`, run with its ``circular`` setting on: ``K``
unnormalized widths, ``K`` heights and ``K`` derivatives per element (``3K``),
the last derivative the slope shared by both ends, ``d_0 = d_K``. The ends
``-B`` and ``B`` stay fixed and the slopes there agree, so the map is a
diffeomorphism of the circle ``[-B, B)``. Outside ``[-B, B]`` a pass returns
NaN (the bijectors' NumPy passes raise a ``ValueError`` there). The scalar math
is the spline module's own functions; this module only names its spec and
sets the flag.

References: Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan and
Cranmer, "Normalizing Flows on Tori and Spheres", ICML 2020.
"""

from ..specs import CircularSplineSpec
from . import spline

SPEC = CircularSplineSpec

constants = spline.constants
settings = spline.settings
density = spline.density
sampling = spline.sampling
density_vjp = spline.density_vjp
