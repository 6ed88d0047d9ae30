"""RTL simulation: the cocotb protocol bench and its runner (``edgeml.rtl_sim``).

* :mod:`edgeml.rtl_sim.wrapper` writes the reset/valid wrapper around da4ml's pipelined top;
* :mod:`edgeml.rtl_sim.tb_pipeline` is the cocotb test module (loaded by the simulator);
* :mod:`edgeml.rtl_sim.runner` builds and runs it: :func:`~edgeml.rtl_sim.runner.run_cocotb`.

The volume (batch) harness is :meth:`edgeml.rtl.RtlDesign.predict_int`. Kept
import-light on purpose: cocotb imports this package inside the simulator.
"""
