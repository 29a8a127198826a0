"""Research diagnostics: gradient flow over time, step-Jacobian spectra and per-step records.

See `rnnjax/_src/diagnostics.py`, `rnnjax/_src/recording.py` and docs/diagnostics.md.
"""

from rnnjax._src.diagnostics import GradientNorms as GradientNorms
from rnnjax._src.diagnostics import JacobianSpectrum as JacobianSpectrum
from rnnjax._src.diagnostics import gradient_norms as gradient_norms
from rnnjax._src.diagnostics import jacobian_spectrum as jacobian_spectrum
from rnnjax._src.diagnostics import summary as summary
from rnnjax._src.recording import Record as Record
from rnnjax._src.recording import record as record

__all__ = ("GradientNorms", "JacobianSpectrum", "Record", "gradient_norms",
           "jacobian_spectrum", "record", "summary")
