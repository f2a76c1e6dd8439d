"""The settings of one training run, how to check them, and how to build its model and data.

``RunConfig`` is what ``training.fit`` writes to ``<output>/config.json`` and
what later tools (evaluation, export) read back to rebuild the same model.
Checking a config needs no TensorFlow, so bad flags fail fast.
"""

from __future__ import annotations

import dataclasses
import json

# The names of the choices live in tfp_abml.choices, which the models import as well; they are
# re-exported here for the command line.
from tfp_abml.choices import (JIT_MODES, LR_SCHEDULES, MAML_METHODS, METHODS, POSTERIORS, PRIORS, SPLIT_SCHEMES,
                              TASK_ENCODINGS, TASK_LOOPS)
from tfp_abml.errors import UserInputError

# --task-encoding, --learn-inner-lr and abml's --inner-steps when not given, per --posterior. Inner
# steps: the paper ran 1 and 5 and reports 5; the aligned posterior already fits the support set,
# and one step trained as well as five in 80-minute runs, at 0.97x the time per 5-way 1-shot
# episode (docs/benchmarks.md, "One inner step (the default)").
POSTERIOR_DEFAULTS = {"aligned": {"task_encoding": "pool", "learn_inner_lr": True, "inner_steps": 1},
                      "paper": {"task_encoding": "concat", "learn_inner_lr": False, "inner_steps": 5}}
# Settings a config.json written before they existed lacks, with the value those runs used.
LEGACY_VALUES = {"posterior": "paper", "task_encoding": "concat", "learn_inner_lr": False}
# ... and a config.json written before --residual-head existed: those runs had the plain head.
LEGACY_RESIDUAL_HEAD = False
# Outer Adam learning rate when --learning-rate is not given. The amortized posterior's large
# output heads destabilise at 1e-3 (see README); the baselines use their papers' 1e-3.
DEFAULT_LEARNING_RATE = {"abml": 3e-4, "protonet": 1e-3, "maml": 1e-3, "metasgd": 1e-3, "matching": 1e-3}

STEP_DECAY_FACTOR = 0.5  # --lr-schedule step: halved every --lr-decay-episodes (Snell et al., 2017)

# Inner loop and meta-batch per method when not given (None), as each method's paper trained on
# Omniglot. MAML (Finn et al., 2017, appendix A.1): 5-way, 1 inner step at 0.4, meta-batch 32 and
# 3 steps at test; 20-way, 5 steps at 0.1, meta-batch 16 (the same 5 at test). Meta-SGD (Li et al.,
# 2017): MAML's setting with one learned-rate step, at training and at test. abml: steps at 0.5,
# how many by posterior (POSTERIOR_DEFAULTS); ProtoNet and Matching Networks (no inner loop):
# the package's earlier defaults.
def method_defaults(method, train_ways, posterior="paper"):
    """``{"inner_steps", "inner_lr", "meta_batch", "eval_inner_steps"}`` for ``method`` trained ``train_ways``-way
    (``eval_inner_steps`` None: as in training); abml's steps follow its ``posterior``."""
    if method in MAML_METHODS:
        wide = train_ways > 5  # the 20-way setting
        steps = 5 if (wide and method == "maml") else 1
        eval_steps = steps if (wide or method == "metasgd") else 3
        return {"inner_steps": steps, "inner_lr": 0.1 if wide else 0.4, "meta_batch": 16 if wide else 32,
                "eval_inner_steps": eval_steps}
    steps = POSTERIOR_DEFAULTS.get(posterior, POSTERIOR_DEFAULTS["paper"])["inner_steps"] if method == "abml" else 5
    return {"inner_steps": steps, "inner_lr": 0.5, "meta_batch": 4, "eval_inner_steps": None}


# Validation tasks are drawn from seed + this offset (RunConfig.validation_sampler).
VALIDATION_SEED_OFFSET = 1_000_003
# Settings that may change when a run is resumed: how long to train, where the data lives, and
# MAML's task loop (it changes how the graph is built, not what it computes; tests/baselines).
RESUMABLE_CHANGES = ("epochs", "data_dir", "task_loop", "eval_inner_steps")


def check_weights_file(path, flag="--encoder-weights"):
    """A weights file a user names must exist, be readable and be Keras's HDF5 (.h5, .weights.h5)."""
    import os

    if not str(path).endswith(".h5"):
        raise UserInputError(f"{flag} {path}: give 'imagenet' or a Keras weights file ending in .h5 "
                             "(e.g. efficientnetb0_notop.h5)")
    if not os.path.isfile(path):
        raise UserInputError(f"{flag} {path} does not exist (or is not a file): give 'imagenet' or the path "
                             "of a local .h5 weights file")
    if not os.access(path, os.R_OK):
        raise UserInputError(f"{flag} {path} cannot be read: check its permissions")


@dataclasses.dataclass
class RunConfig:
    method: str = "abml"
    dataset: str = "omniglot"
    split_scheme: str = "vinyals"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    # Training task shape when it differs from the evaluation one above (None: the same), e.g.
    # ProtoNet's 60-way training episodes for 5-way tests. Validation uses the training shape.
    train_ways: int | None = None
    train_shots: int | None = None
    train_queries: int | None = None
    encoder: str = "conv4"
    image_size: int | None = None  # None: miniimagenet 84, cifar_fs/fc100 32, else the encoder's (conv4 28, effnet 32)
    embedding_dim: int = 64
    encoder_weights: str | None = None
    hidden_units: tuple = (64,)
    # abml: hidden layers add to their input (widths = embedding_dim); None: on for the aligned
    # posterior when every hidden width equals embedding_dim (benchmarks/protocol.py --tag residual80)
    residual_head: bool | None = None
    posterior: str = "aligned"  # abml: "aligned" (output means from class prototypes) or "paper"
    prior: str = "standard"  # abml: the weight prior of the KL, N(0, I) or "learned" (tfp_abml.prior)
    learn_inner_lr: bool | None = None  # abml: one learned inner step size per posterior tensor
    task_encoding: str | None = None  # abml: "concat" (paper: class means in random order) or "pool"
    noise_dim: int = 32
    inner_steps: int | None = None  # None: abml 1 (aligned) or 5 (paper); maml 1 at 5-way, 5 at 20-way
    inner_lr: float | None = None  # None: method_defaults (abml 0.5; maml 0.4 at 5-way, 0.1 at 20-way)
    eval_inner_steps: int | None = None  # inner steps in evaluation and serving; None: as in training
    kl_scale: float = 1e-6
    first_order: bool = False
    task_loop: str = "auto"  # maml/metasgd: "unrolled", "map_fn", "sequential", or auto (resolved_task_loop)
    initial_scale: float = 0.01
    eval_samples: int = 10
    # abml: posterior draws of the training query loss; > 1 trains on the NLL of the S-draw
    # predictive (tfp_abml.model), 1 on one draw's log-likelihood as the paper
    train_samples: int = 1
    meta_batch: int | None = None  # None: method_defaults (4; maml/metasgd 32 at 5-way, 16 at 20-way)
    learning_rate: float | None = None  # None: DEFAULT_LEARNING_RATE[method]
    lr_schedule: str = "constant"  # LR_SCHEDULES, over optimizer steps (checkpointed, so a resume continues it)
    lr_decay_episodes: int = 2000  # step: halve every this many training episodes; cosine: decay to 0 over them
    # Train on the training and validation classes together (Snell et al., 2017: their final run,
    # once validation has chosen the length). Validation then sees trained classes: no best
    # weights are kept, and evaluation and export use the final ones.
    trainval: bool = False
    epochs: int = 20
    steps_per_epoch: int = 100
    val_tasks: int = 100
    seed: int = 0
    jit: str = "auto"
    data_dir: str | None = None
    # --dataset folder and tfds:NAME: the fractions of their classes for train, val, test (a folder
    # without split folders; None: tfp_abml.data.folder.DEFAULT_CLASS_SPLIT, "0.64,0.16,0.20", which
    # training.fit writes into config.json), and the channels of their images (1 grey, 3 colour),
    # which training.fit finds in the data and records, so that a run's model is built without it.
    class_split: str | None = None
    image_channels: int | None = None
    # Weights (a .weights.h5 file) a new run starts from instead of its seeded initial ones, e.g. a
    # trained run's best.weights.h5 to fine-tune it at another --kl-scale; a resumed run ignores it.
    init_weights: str | None = None

    def __post_init__(self):
        # Unset inner-loop settings and meta-batch follow the method's paper (method_defaults).
        train_ways = self.train_ways if isinstance(self.train_ways, int) else self.ways
        defaults = method_defaults(self.method, train_ways if isinstance(train_ways, int) else 5, self.posterior)
        # The paper's test-time steps go with its training steps; steps of one's own apply to both.
        if self.eval_inner_steps is None and self.inner_steps is None and \
                defaults["eval_inner_steps"] != defaults["inner_steps"]:
            self.eval_inner_steps = defaults["eval_inner_steps"]
        for name in ("inner_steps", "inner_lr", "meta_batch"):
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])
        # Unset abml options follow the posterior: "aligned" gets what the ablation kept (pooled task
        # encoding, learned inner step sizes; benchmarks/results/ablation_omniglot_5w1s.md), "paper"
        # gets the paper's method unchanged.
        if self.task_encoding is None:
            self.task_encoding = POSTERIOR_DEFAULTS.get(self.posterior, POSTERIOR_DEFAULTS["paper"])["task_encoding"]
        if self.learn_inner_lr is None:
            # Trained without inner steps there is no step size to learn (its variables would get no gradient).
            self.learn_inner_lr = self.inner_steps != 0 and \
                POSTERIOR_DEFAULTS.get(self.posterior, POSTERIOR_DEFAULTS["paper"])["learn_inner_lr"]
        if self.residual_head is None:
            self.residual_head = (self.method == "abml" and self.posterior == "aligned" and len(self.hidden_units) > 0
                                  and all(u == self.embedding_dim for u in self.hidden_units))

    # -- validation (no TensorFlow) -----------------------------------------------------------

    def validate(self):
        """Raise UserInputError naming the flag to change; returns self."""
        from tfp_abml.data.pipeline import EXAMPLES_PER_CLASS, check_dataset, dataset_kind
        from tfp_abml.encoders import DEFAULT_IMAGE_SIZE, ENCODERS, MIN_IMAGE_SIZE

        if self.method not in METHODS:
            raise UserInputError(f"unknown method {self.method!r}: use --method {' or '.join(METHODS)}")
        check_dataset(self.dataset)
        self._validate_folder()
        if self.encoder not in ENCODERS:
            raise UserInputError(f"unknown encoder {self.encoder!r}: use --encoder {' or '.join(ENCODERS)}")
        if self.posterior not in POSTERIORS:
            raise UserInputError(f"unknown --posterior {self.posterior!r}: use one of {', '.join(POSTERIORS)}")
        if self.prior not in PRIORS:
            raise UserInputError(f"unknown --prior {self.prior!r}: use one of {', '.join(PRIORS)}")
        if self.prior != "standard" and self.method != "abml":
            raise UserInputError(f"--prior is abml's weight prior; {self.method} has none: leave it out")
        if self.task_encoding not in TASK_ENCODINGS:
            raise UserInputError(f"unknown --task-encoding {self.task_encoding!r}: use one of "
                                 f"{', '.join(TASK_ENCODINGS)}")
        if self.task_encoding == "pool" and self.posterior == "paper":
            raise UserInputError("--task-encoding pool carries no class order, so the paper's posterior cannot "
                                 "tell its output units apart: use it with --posterior aligned")
        if self.task_loop not in TASK_LOOPS:
            raise UserInputError(f"unknown --task-loop {self.task_loop!r}: use one of {', '.join(TASK_LOOPS)}")
        if self.task_loop != "auto" and self.method not in MAML_METHODS:
            raise UserInputError(f"--task-loop applies only to --method maml or metasgd, not {self.method}: "
                                 "leave it out")
        if self.jit not in JIT_MODES:
            raise UserInputError(f"unknown --jit {self.jit!r}: use one of {', '.join(JIT_MODES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserInputError(f"unknown --lr-schedule {self.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
        for name, least in (("train_ways", 2), ("train_shots", 1), ("train_queries", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise UserInputError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {value!r}")
        if self.train_ways is not None and self.train_ways != self.ways and not self.ways_agnostic:
            raise UserInputError(f"--train-ways {self.train_ways} differs from --ways {self.ways}, but "
                                 f"{self.ways_agnostic_reason()}: train and evaluate {self.method} at one --ways")
        positive = {"ways": 2, "shots": 1, "queries": 1, "embedding_dim": 1, "noise_dim": 1, "inner_steps": 0,
                    "eval_samples": 1, "train_samples": 1, "meta_batch": 1, "epochs": 1, "steps_per_epoch": 1,
                    "val_tasks": 0, "lr_decay_episodes": 1}
        if self.eval_inner_steps is not None:
            positive["eval_inner_steps"] = 0
        for name, least in positive.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserInputError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {value!r}")
        if not isinstance(self.trainval, bool):
            raise UserInputError(f"trainval must be true or false (--trainval, or \"trainval\" in a --config file), "
                                 f"got {self.trainval!r}")
        if self.learn_inner_lr and self.inner_steps == 0:
            raise UserInputError("--learn-inner-lr learns the inner step size, which --inner-steps 0 never takes: "
                                 "drop --learn-inner-lr, or train with inner steps")
        for name in ("inner_lr", "learning_rate", "initial_scale"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise UserInputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not self.kl_scale >= 0:
            raise UserInputError(f"--kl-scale must be >= 0, got {self.kl_scale}")
        if any(int(u) < 1 for u in self.hidden_units):
            raise UserInputError(f"--hidden-units must be positive integers, got {list(self.hidden_units)}")
        if self.train_samples != 1 and self.method != "abml":
            raise UserInputError(f"--train-samples draws from abml's weight posterior; {self.method} has none: "
                                 "leave it out")
        if self.residual_head and self.method != "abml":
            raise UserInputError(f"--residual-head applies only to --method abml, not {self.method}: leave it out")
        if self.residual_head and any(int(u) != self.embedding_dim for u in self.hidden_units):
            raise UserInputError(f"--residual-head adds each hidden layer to its input, so every --hidden-units must "
                                 f"equal --embedding-dim {self.embedding_dim}, got {list(self.hidden_units)}")
        # A folder's classes (and a tfds:NAME dataset's) have no fixed size: training.fit counts them.
        examples = EXAMPLES_PER_CLASS[dataset_kind(self.dataset)]
        per_class = ("drawers per Omniglot character" if self.dataset == "omniglot"
                     else f"images per {self.dataset} class")
        for prefix, shots, queries in (("", self.shots, self.queries),
                                       ("train-", self.resolved_train_shots, self.resolved_train_queries)):
            if examples is not None and shots + queries > examples:
                raise UserInputError(f"--{prefix}shots {shots} + --{prefix}queries {queries} = {shots + queries} "
                                     f"is more than the {examples} {per_class}: lower --{prefix}shots or "
                                     f"--{prefix}queries")
        size = self.resolved_image_size
        if size < MIN_IMAGE_SIZE[self.encoder]:
            raise UserInputError(f"--image-size {size} is too small for {self.encoder}: "
                                 f"use at least {MIN_IMAGE_SIZE[self.encoder]} "
                                 f"(default {DEFAULT_IMAGE_SIZE[self.encoder]})")
        if self.encoder_weights is not None and self.encoder != "efficientnet_b0":
            raise UserInputError("--encoder-weights applies only to --encoder efficientnet_b0")
        return self

    def _validate_folder(self):
        """--class-split and image_channels: settings of a folder and of a tfds:NAME dataset."""
        from tfp_abml.data.folder import parse_class_split
        from tfp_abml.data.pipeline import TFDS, dataset_kind

        kind = dataset_kind(self.dataset)
        if kind not in ("folder", TFDS):
            published = (f": its classes follow the published split (tfp_abml/data/split_lists/{self.dataset}.json)"
                         if self.dataset in ("cifar_fs", "fc100") else "")
            if self.class_split is not None:
                raise UserInputError(f"--class-split applies only to --dataset folder (class folders without split "
                                     f"folders) and tfds:NAME, not {self.dataset}{published}: leave it out")
            if self.image_channels is not None:
                raise UserInputError(f"image_channels is a setting of --dataset folder and tfds:NAME (found in the "
                                     f"images), not {self.dataset}'s: leave it out of the config")
            return
        if kind == "folder" and self.data_dir in (None, ""):
            raise UserInputError("--dataset folder needs --data-dir ROOT, the folder of your images: "
                                 "ROOT/<class>/<image>, or ROOT/train/<class>/<image> with val/ and test/ beside it")
        if self.class_split is not None:
            if not isinstance(self.class_split, str):
                raise UserInputError(f"--class-split must be three fractions such as 0.64,0.16,0.20, "
                                     f"got {self.class_split!r}")
            parse_class_split(self.class_split)
        if self.image_channels not in (None, 1, 3) or isinstance(self.image_channels, bool):
            raise UserInputError(f"image_channels must be 1 (grey) or 3 (colour), got {self.image_channels!r}")

    @property
    def ways_agnostic(self):
        """Whether the trained weights serve any number of classes: protonet and matching compare
        with the support set, and abml with the aligned posterior and pooled task encoding emits its
        output layer class-symmetrically from a task encoding of fixed size. maml/metasgd have an
        N-way output layer, and the paper's posterior an LSTM of width N * D."""
        return self.method in ("protonet", "matching") or (
            self.method == "abml" and self.posterior == "aligned" and self.task_encoding == "pool")

    def ways_agnostic_reason(self):
        if self.method in MAML_METHODS:
            return f"{self.method} has an N-way output layer"
        return ("abml's posterior depends on N unless --posterior aligned with --task-encoding pool "
                f"(this run: --posterior {self.posterior}, --task-encoding {self.task_encoding})")

    @property
    def resolved_eval_inner_steps(self):
        """Inner steps in evaluation and serving: ``eval_inner_steps``, else the training ones."""
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    @property
    def resolved_train_ways(self):
        return self.ways if self.train_ways is None else self.train_ways

    @property
    def resolved_train_shots(self):
        return self.shots if self.train_shots is None else self.train_shots

    @property
    def resolved_train_queries(self):
        return self.queries if self.train_queries is None else self.train_queries

    def for_training(self):
        """This config with the training task shape as its ways, shots and queries: what
        ``training.fit`` builds, samples and validates with."""
        return dataclasses.replace(self, ways=self.resolved_train_ways, shots=self.resolved_train_shots,
                                   queries=self.resolved_train_queries, train_ways=None, train_shots=None,
                                   train_queries=None)

    def learning_rate_schedule(self):
        """The outer learning rate: a float, or a ``keras.optimizers.schedules`` schedule of the
        optimizer's step (``--lr-decay-episodes`` counted in episodes, ``meta_batch`` per step)."""
        import keras

        rate = self.resolved_learning_rate
        if self.lr_schedule == "constant":
            return rate
        steps = max(self.lr_decay_episodes / self.meta_batch, 1.0)
        if self.lr_schedule == "step":
            return keras.optimizers.schedules.ExponentialDecay(rate, decay_steps=steps,
                                                               decay_rate=STEP_DECAY_FACTOR, staircase=True)
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps, alpha=0.0)

    @property
    def resolved_learning_rate(self):
        return float(self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[self.method])

    @property
    def resolved_task_loop(self):
        """MAML's task loop: as asked, or for "auto" unrolled for Conv-4 (fastest per episode, small
        enough to hold) and "sequential" for EfficientNetB0, which holds one task's activations
        at a time (the only loop that fits 84 px 5-way 5-shot in 24 GiB), traces 4.5x faster than
        unrolled and runs 1.10x unrolled's time per episode (README, Speed and Memory)."""
        if self.task_loop != "auto":
            return self.task_loop
        return "unrolled" if self.encoder == "conv4" else "sequential"

    @property
    def resolved_image_size(self):
        from tfp_abml.data import pipeline
        from tfp_abml.encoders import DEFAULT_IMAGE_SIZE

        return int(self.image_size or pipeline.DEFAULT_IMAGE_SIZE.get(pipeline.dataset_kind(self.dataset))
                   or DEFAULT_IMAGE_SIZE[self.encoder])

    @property
    def channels(self):
        """Colour channels of the dataset's images (Omniglot 1, miniImageNet, CIFAR-FS and FC100 3, a
        folder's or a tfds:NAME dataset's as recorded, else as its images are): the encoder's input depth."""
        from tfp_abml.data.pipeline import CHANNELS, TFDS, dataset_kind

        if dataset_kind(self.dataset) in ("folder", TFDS):
            if self.image_channels is not None:
                return self.image_channels
            if self.dataset == "folder":
                from tfp_abml.data import folder

                return folder.image_channels(folder.find_classes(self.data_dir, self.class_split))
            from tfp_abml.data.tfds_datasets import channels_of

            return channels_of(self.dataset, self.data_dir)
        return CHANNELS[self.dataset]

    # -- (de)serialisation ---------------------------------------------------------------------

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["hidden_units"] = list(self.hidden_units)
        return data

    @classmethod
    def from_dict(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserInputError(f"unknown config keys {unknown}: known keys are {sorted(names)}")
        data = dict(data)
        if "hidden_units" in data:
            data["hidden_units"] = tuple(data["hidden_units"])
        return cls(**data)

    @classmethod
    def load(cls, path):
        try:
            data = json.loads(open(path).read())
            if isinstance(data, dict) and "posterior" not in data:  # a run from before --posterior
                data = {**LEGACY_VALUES, **data}
            if isinstance(data, dict) and "residual_head" not in data:  # a run from before --residual-head
                data = {**data, "residual_head": LEGACY_RESIDUAL_HEAD}
            return cls.from_dict(data)
        except (OSError, json.JSONDecodeError) as err:
            raise UserInputError(f"cannot read config {path}: {err}") from err

    def differences(self, other):
        """Names of settings that differ from ``other`` and would change the run if resumed."""
        return [f.name for f in dataclasses.fields(self)
                if f.name not in RESUMABLE_CHANGES and getattr(self, f.name) != getattr(other, f.name)]

    # -- builders (import TensorFlow) ------------------------------------------------------------

    def build_model(self):
        """The model this config describes (an EpisodicModel), not yet compiled."""
        from tfp_abml import baselines
        from tfp_abml.encoders import build_encoder
        from tfp_abml.model import AmortizedBNN

        encoder = build_encoder(self.encoder, self.resolved_image_size, channels=self.channels,
                                embedding_dim=self.embedding_dim, weights=self.encoder_weights)
        if self.method == "protonet":
            return baselines.PrototypicalNetwork(encoder, self.ways)
        if self.method == "matching":
            return baselines.MatchingNetwork(encoder, self.ways)
        if self.method in MAML_METHODS:
            cls = baselines.MAML if self.method == "maml" else baselines.MetaSGD
            return cls(encoder, self.ways, inner_steps=self.inner_steps, inner_lr=self.inner_lr,
                       first_order=self.first_order, task_loop=self.resolved_task_loop,
                       eval_inner_steps=self.resolved_eval_inner_steps)
        return AmortizedBNN(encoder, self.ways, hidden_units=self.hidden_units, noise_dim=self.noise_dim,
                            inner_steps=self.inner_steps, eval_inner_steps=self.resolved_eval_inner_steps,
                            inner_lr=self.inner_lr, kl_scale=self.kl_scale,
                            first_order=self.first_order, eval_samples=self.eval_samples,
                            train_samples=self.train_samples,
                            initial_scale=self.initial_scale, posterior=self.posterior,
                            learn_inner_lr=self.learn_inner_lr, task_encoding=self.task_encoding, seed=self.seed,
                            residual_head=self.residual_head, prior=self.prior)

    def example_inputs(self):
        """A one-task batch of zeros in the model's input layout: enough to create its variables."""
        import tensorflow as tf

        size = self.resolved_image_size
        return {"support_images": tf.zeros((1, self.ways * self.shots, size, size, self.channels)),
                "support_labels": tf.repeat(tf.range(self.ways, dtype=tf.int32), self.shots)[None],
                "query_images": tf.zeros((1, self.ways * self.queries, size, size, self.channels))}

    def validation_sampler(self):
        """The validation tasks of training: seeded apart from the training tasks, the same for every
        epoch, every tuning trial and every fine-tune of one seed."""
        return self.sampler("val", seed=self.seed + VALIDATION_SEED_OFFSET)

    def sampler(self, split, seed=None):
        """Tasks of ``split``; ``"train"`` of a --trainval run draws from the training and validation classes."""
        from tfp_abml.data import make_sampler
        from tfp_abml.data.pipeline import TRAINVAL

        split = TRAINVAL if split == "train" and self.trainval else split
        return make_sampler(self.dataset, split, self.ways, self.shots, self.queries,
                            self.seed if seed is None else seed, self.data_dir, self.resolved_image_size,
                            self.split_scheme, class_split=self.class_split, channels=self.image_channels)

    def compiled_model(self, measure_jit=False):
        """``build_model()`` compiled with the outer Adam optimizer and the ``--jit`` setting
        (``measure_jit``: let ``--jit auto`` time this device, as ``training.fit`` does)."""
        import keras

        model = self.build_model()
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate_schedule()),
                      jit_compile=self.keras_jit_compile(measure_jit))
        return model

    def keras_jit_compile(self, measure=False):
        """``--jit`` as Keras's ``jit_compile``. ``auto`` follows :func:`tfp_abml.jit_choice.resolve`:
        off unless measured (``measure`` and a run long enough), else the faster on this device."""
        from tfp_abml.jit_choice import resolve

        return resolve(self, measure=measure)
