"""The analysis stack: loss curvature, loss landscapes and their topology, representations.

* :mod:`.curvature` - Hessian-vector products of any torch model (float, or Brevitas QAT
  through its straight-through quantizers), top eigenpairs (Lanczos, power iteration),
  traces (Hutchinson, Hutch++), spectral density (stochastic Lanczos quadrature), Fisher
  trace and gradient noise. ``fault_injection.hessian`` ranks fault sites with the same code.
* :mod:`.landscape` - 1-D/2-D loss slices with filter normalisation, along random or
  Hessian directions, for float, QAT and (through the exact golden model) integer
  designs; linear and Bezier mode connectivity.
* :mod:`.topology` - merge trees, persistence and basin sizes of 2-D slices (LBNL's
  ``landscaper``, or ``gudhi``).
* :mod:`.similarity` - linear and RBF CKA per layer, disagreement, ensemble gain.
* :mod:`.run` - ``edgeml analyze`` on a run folder or across a sweep, with the
  correlation of every metric against measured fault robustness.
"""
