"""The names of the choices a run's settings offer, checkable without TensorFlow.

A leaf: it imports nothing, so both the settings (``tfp_abml.run_config``, the command line)
and the models (``tfp_abml.model``, ``tfp_abml.baselines``) can name the same choices without
either importing the other. ``tfp_abml.run_config`` re-exports them.
"""

JIT_MODES = ("auto", "on", "off")
TASK_LOOPS = ("auto", "unrolled", "map_fn", "sequential")  # maml/metasgd: how a meta-batch's tasks are adapted
METHODS = ("abml", "protonet", "maml", "metasgd", "matching")
MAML_METHODS = ("maml", "metasgd")  # adapt the whole network per task; --task-loop applies to them
INNER_LOOP_METHODS = ("abml", *MAML_METHODS)  # adapt by inner SGD steps: --eval-inner-steps applies to them
POSTERIORS = ("paper", "aligned")  # checked by RunConfig without importing TensorFlow; tfp_abml.model builds them
PRIORS = ("standard", "learned")  # abml's weight prior: N(0, I) or meta-learned (tfp_abml.prior)
TASK_ENCODINGS = ("concat", "pool")  # tfp_abml.task_encoding.TASK_ENCODINGS
LR_SCHEDULES = ("constant", "step", "cosine")
SPLIT_SCHEMES = ("vinyals", "lake", "lake-rotated")  # Omniglot class splits (tfp_abml.data.splits)
WEIGHT_CHOICES = ("best", "last")  # which weights of a run tfp_abml.runs.load_run loads
# Omniglot-C (tfp_abml.data.corruptions.SEVERITIES holds each one's parameters, in this order)
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "elastic", "stroke_thinning", "stroke_thickening", "rotation",
               "occlusion", "contrast")
