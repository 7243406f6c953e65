"""``intgrads-batch``: a whole data set through the engine on a Ray cluster, each worker writing its answer files.

Modules: ``cli`` (the command line), ``plan`` (flags -> the model, the checked options and limits, the workers'
layout), ``job`` (the driver: the output directory and the Ray Data pipeline), ``worker`` (the actor that answers
and writes), ``cluster`` (a Ray head of the run's own, or a running cluster) and ``watchdog`` (the process that
stops that head when the driver is killed). See docs/architecture.md.
"""
