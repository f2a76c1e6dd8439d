"""Searching the KL scale with Keras Tuner: the hypermodel, the tuners, and the best config.

The paper found the KL weight to matter a lot and set it by hand. Here Keras Tuner proposes
``kl_scale`` values on a log scale (optionally with the inner learning rate and the number of
inner steps); each trial is a short ``training.fit``: the model of the base ``RunConfig`` with the
trial's values, trained from the same seed on the same train-split episodes, then scored on the
same validation tasks, so that trials differ only in the hyperparameters. The best values,
merged into the base config, are a ``RunConfig`` that ``training.fit --config`` trains in full.

Keras Tuner brings the rest: random search and Bayesian optimisation (a Gaussian process, which
needs scipy and scikit-learn), resuming a stopped search from its project folder, and
distributed search, where a chief process holds the oracle and workers run trials
(``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import keras
import keras_tuner

from tfp_abml.checkpointing import load_initial_weights
from tfp_abml.errors import UserInputError
from tfp_abml.run_config import RunConfig

# --objective -> the Keras metric logged for the validation tasks, and which way is better.
OBJECTIVES = {"accuracy": ("val_accuracy", "max"), "nll": ("val_nll", "min")}
TUNERS = ("random", "bayesian")


@dataclasses.dataclass
class SearchSpace:
    """What the search varies. ``kl_scale`` always (log scale); the inner loop if ranges are given."""

    kl_min: float = 1e-8
    kl_max: float = 1e-2
    inner_lr: tuple | None = None  # (min, max), log scale
    inner_steps: tuple | None = None  # (min, max), integers

    def validate(self):
        """Raise UserInputError naming the flag to change; returns self."""
        if not self.kl_min > 0:
            raise UserInputError(f"--kl-min must be > 0 (kl_scale is searched on a log scale), got {self.kl_min}")
        if not self.kl_max > self.kl_min:
            raise UserInputError(f"--kl-max ({self.kl_max:g}) must be larger than --kl-min ({self.kl_min:g})")
        if self.inner_lr is not None:
            low, high = self.inner_lr
            if not low > 0:
                raise UserInputError(f"--inner-lr-min must be > 0 (searched on a log scale), got {low}")
            if not high > low:
                raise UserInputError(f"--inner-lr-max ({high:g}) must be larger than --inner-lr-min ({low:g})")
        if self.inner_steps is not None:
            low, high = self.inner_steps
            if low < 0:
                raise UserInputError(f"--inner-steps-min must be >= 0, got {low}")
            if not high > low:
                raise UserInputError(f"--inner-steps-max ({high}) must be larger than --inner-steps-min ({low})")
        return self

    def values(self, hp, base: RunConfig):
        """Declare the hyperparameters on ``hp`` (first call) and return this trial's values by field name."""
        clip = lambda value, low, high: min(max(value, low), high)
        values = {"kl_scale": hp.Float("kl_scale", self.kl_min, self.kl_max, sampling="log",
                                       default=clip(base.kl_scale, self.kl_min, self.kl_max))}
        if self.inner_lr is not None:
            values["inner_lr"] = hp.Float("inner_lr", *self.inner_lr, sampling="log",
                                          default=clip(base.inner_lr, *self.inner_lr))
        if self.inner_steps is not None:
            values["inner_steps"] = hp.Int("inner_steps", *self.inner_steps,
                                           default=clip(base.inner_steps, *self.inner_steps))
        return values


def tuner_id():
    """This process's name in a distributed search (Keras Tuner's ``KERASTUNER_TUNER_ID``)."""
    return os.environ.get("KERASTUNER_TUNER_ID", "tuner0")


def is_chief():
    """True in the process that holds the oracle of a distributed search (and runs no trials)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")


def is_worker():
    return "KERASTUNER_ORACLE_IP" in os.environ and not is_chief()


class FewShotHyperModel(keras_tuner.HyperModel):
    """The base config's abml model with the trial's values; ``fit`` is a short meta-training run.

    ``build`` calls the model once on example inputs so its variables (and the optimizer's)
    exist: Keras Tuner's ``get_best_models`` rebuilds a trial's model and loads its saved weights
    into it, which a subclassed model without variables cannot take. The samplers (the decoded images) are made
    on the first ``fit`` and reused, so a distributed chief, which builds but never fits, does
    not load the data.
    """

    def __init__(self, base: RunConfig, space: SearchSpace, trial_steps=100, trial_epochs=1, log=print):
        super().__init__(name="abml")
        if base.method != "abml":
            raise UserInputError(f"the search tunes the abml model's KL scale; the base config has method "
                                 f"{base.method!r}: use --method abml in it")
        if base.val_tasks < 1:
            raise UserInputError("trials are scored on validation tasks: --val-tasks must be >= 1")
        self.base, self.space = base, space.validate()
        self.trial_steps, self.trial_epochs = int(trial_steps), int(trial_epochs)
        self.log = log
        self.trials_run = 0
        self._samplers = None

    def trial_config(self, hp) -> RunConfig:
        return dataclasses.replace(self.base, **self.space.values(hp, self.base), epochs=self.trial_epochs,
                                   steps_per_epoch=self.trial_steps).validate()

    def build(self, hp):
        config = self.trial_config(hp)
        keras.utils.set_random_seed(config.seed)  # the same initial weights in every trial
        model = config.compiled_model()
        model(config.example_inputs())
        model.optimizer.build(model.trainable_variables)  # so a trial's saved optimizer state loads too
        if config.init_weights:  # every trial fine-tunes the same trained weights
            load_initial_weights(model, config.init_weights)
        return model

    def _datasets(self, config):
        from tfp_abml.data import episode_dataset

        if self._samplers is None:
            self._samplers = (config.sampler("train"), config.validation_sampler())
        train, val = self._samplers
        val_episodes = max(config.val_tasks // config.meta_batch, 1) * config.meta_batch
        return (episode_dataset(train, config.meta_batch),
                episode_dataset(val, config.meta_batch, episodes=val_episodes))

    def fit(self, hp, model, callbacks=(), verbose=1):
        """Train ``trial_epochs`` x ``trial_steps`` outer updates, validating after each epoch."""
        config = self.trial_config(hp)
        train, val = self._datasets(config)
        start = time.perf_counter()
        history = model.fit(train, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                            validation_data=val, verbose=verbose, shuffle=False,
                            callbacks=[*callbacks, keras.callbacks.TerminateOnNaN()])
        self.trials_run += 1
        values = ", ".join(f"{name}={value:.3g}" for name, value in hp.values.items())
        last = {key: series[-1] for key, series in history.history.items()}
        if not all(math.isfinite(last.get(key, math.nan)) for key in ("loss", "val_accuracy", "val_nll")):
            self.log(f"[{tuner_id()}] trial {values}: the loss became {last.get('loss')}; trial marked failed")
            raise keras_tuner.errors.FailedTrialError(
                f"non-finite loss with {values}: lower --kl-max, --inner-lr-max or the learning rate")
        self.log(f"[{tuner_id()}] trial {values}: val_accuracy {last['val_accuracy']:.4f}, "
                 f"val_nll {last['val_nll']:.4f} ({time.perf_counter() - start:.0f} s)")
        return history


def make_tuner(kind, hypermodel, objective="accuracy", max_trials=10, directory="runs/tune", seed=0,
               overwrite=False, random_trials=None):
    """A Keras Tuner ``RandomSearch`` or ``BayesianOptimization`` over ``hypermodel``.

    The project folder ``directory/search`` keeps every trial; an existing one is resumed unless
    ``overwrite``. ``random_trials`` (Bayesian only) is how many random trials come before the
    Gaussian process proposes; Keras Tuner's default is 3 per tuned hyperparameter.
    """
    if kind not in TUNERS:
        raise UserInputError(f"unknown tuner {kind!r}: use {' or '.join(TUNERS)}")
    if objective not in OBJECTIVES:
        raise UserInputError(f"unknown objective {objective!r}: use {' or '.join(OBJECTIVES)}")
    common = dict(hypermodel=hypermodel, objective=keras_tuner.Objective(*OBJECTIVES[objective]),
                  max_trials=max_trials, seed=seed, directory=str(directory), project_name="search",
                  overwrite=overwrite, max_retries_per_trial=0, max_consecutive_failed_trials=3)
    if kind == "random":
        return keras_tuner.RandomSearch(**common)
    return keras_tuner.BayesianOptimization(num_initial_points=random_trials, **common)


def ranked_trials(oracle):
    """``[(trial_id, values, score)]`` of the completed trials, best first."""
    return [(trial.trial_id, dict(trial.hyperparameters.values), trial.score)
            for trial in oracle.get_best_trials(num_trials=max(len(oracle.trials), 1))]


def failed_trials(oracle):
    """``[(trial_id, values, last line of its error)]`` of the trials that failed."""
    last_line = lambda message: ((message or "").strip().splitlines() or [""])[-1]
    return [(trial.trial_id, dict(trial.hyperparameters.values), last_line(trial.message))
            for trial in oracle.trials.values() if trial.status == "FAILED"]


def best_config(oracle, base: RunConfig) -> RunConfig:
    """``base`` with the best trial's values: what ``training.fit --config`` should train."""
    best = oracle.get_best_trials(num_trials=1)
    if not best:
        raise UserInputError("no trial completed, so there is no best value: see the trial messages above; "
                             "narrow --kl-max / --inner-lr-max or raise --trial-steps")
    return dataclasses.replace(base, **best[0].hyperparameters.values).validate()
