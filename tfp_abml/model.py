"""AmortizedBNN: the paper's meta-learner as a ``keras.Model`` with its own ``train_step``.

For each task of a meta-batch (all tasks run batched, no Python loop over them):

1. embed support and query images with the encoder;
2. task encoding h0 of the support embeddings (class means, random order);
3. the LSTM posterior emits ``phi_0 = (loc, rho)`` of every BNN weight;
4. K inner SGD steps on the support cross-entropy, with Flipout samples,
   give ``phi_K`` (:func:`tfp_abml.inner_loop.sgd_adapt`);
5. the outer loss on the query set under ``phi_K``::

       L = E_tasks[ CE(query | phi_K) ] + kl_scale * E_tasks[ KL(q_{phi_K} || p) ]

   where ``p`` is the paper's N(0, I) or a meta-learned Gaussian (``prior="learned"``,
   :mod:`tfp_abml.prior`) and the KL is summed over all BNN weights and biases. Its gradient flows
   back through the inner loop (second order unless ``first_order``) into the
   posterior LSTM, the task encoding and the encoder.

   With ``train_samples = S > 1`` the query term is the NLL of the S-draw posterior
   predictive instead, ``-log (1/S) sum_s p(y | x, W_s)`` (Masegosa, 2020, "Learning under
   Model Misspecification: Applications to Variational and Ensemble Methods"; Morningstar et
   al., 2022, "PAC^m-Bayes"): one draw's expected log-likelihood rewards a posterior that
   sits on its mean, while the predictive's rewards draws that disagree where the query is
   ambiguous -- the objective of the prediction the model actually serves.

At evaluation (``test_step``, ``call``) the query prediction is the posterior
predictive ``mean_s softmax(f(x; W_s))`` over ``eval_samples`` Flipout draws
from the adapted posterior.

Two posterior variants (``posterior=``):

* ``"paper"``: the LSTM emits the means and scales of every layer, output layer
  included, from h0 (class means in a random order) -- as in the paper.
* ``"aligned"``: the LSTM emits the hidden layers as above, but the output layer
  class-symmetrically (zero means, shared scales); its means come from the
  labelled support set, as the linear form of a prototype classifier in the
  last hidden layer's features ``g`` (computed with the hidden posterior means)::

      p_n = mean_{x in class n} g(x),   kernel_loc[:, n] = 2 a p_n,   bias_loc[n] = -a |p_n|^2

  so that ``logit_n = -a |g(x) - p_n|^2`` up to a term shared by all classes
  (Snell et al., 2017; Triantafillou et al., 2020, "Proto-MAML"), with ``a`` learned.
  Output unit n is then class n from the start, which the random class order of
  h0 cannot give (the paper reports chance accuracy without inner steps).

With ``learn_inner_lr`` every posterior tensor (kernel/bias loc/rho of each layer)
gets its own learned inner step size, initialised at ``inner_lr`` (Meta-SGD's idea,
one rate per tensor rather than per weight).

Inputs are the dicts of :mod:`tfp_abml.data.pipeline`: ``support_images``
``[T, N*K, H, W, C]``, ``support_labels`` ``[T, N*K]`` (0..N-1),
``query_images`` ``[T, M, H, W, C]``; targets are ``query_labels`` ``[T, M]``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import dataclasses
import math

from tfp_abml.bayesian_head import BayesianMLP
from tfp_abml.choices import POSTERIORS, PRIORS
from tfp_abml.episodic import EpisodicModel, embed_tasks, mean_nll, split_support_query
from tfp_abml.flipout import DenseParams
from tfp_abml.inner_loop import sgd_adapt
from tfp_abml.posterior import AmortizedPosterior
from tfp_abml.prior import LearnedPrior, standard_normal_kl
from tfp_abml.task_encoding import ClassMeanConcat, ClassMeanPool, class_means


def _seed(seed, offset):
    return None if seed is None else int(seed) + offset


class AmortizedBNN(EpisodicModel):
    """Amortized Bayesian neural network meta-learner (Kim & Heo).

    Args:
      encoder: ``keras.Model`` from images ``[M, H, W, C]`` to embeddings ``[M, D]``
        (:func:`tfp_abml.encoders.build_encoder`).
      ways: N, the number of classes per task (fixes the LSTM width N * D).
      hidden_units: widths of the BNN's hidden layers; the BNN has
        ``len(hidden_units) + 1`` layers, one LSTM step each.
      noise_dim: size of the Gaussian noise fed to the LSTM at every step.
      inner_steps, inner_lr: K and the step size of inner SGD (paper: 1 at 1.0, or 5 at 0.5).
      eval_inner_steps: K in evaluation and prediction (None: ``inner_steps``).
      kl_scale: weight of ``KL(q || p)`` in the outer loss.
      prior: ``p``: ``"standard"``, the paper's N(0, I), or ``"learned"``, a meta-learned Gaussian
        (:class:`tfp_abml.prior.LearnedPrior`, class-symmetric in the output layer).
      first_order: drop second-order terms of the inner loop.
      eval_samples: Flipout draws averaged for evaluation and prediction.
      train_samples: Flipout draws of the training query loss: 1, the expected log-likelihood of
        one draw (the paper), or S > 1, the NLL of the S-draw posterior predictive (see above).
      initial_scale: posterior scale of every weight at initialisation.
      initial_embedding_scale: initial norm of the embeddings fed to the task encoding and BNN.
      transductive_batch_norm: normalise with the statistics of the episodes at hand in
        evaluation too, as in training (MAML's choice). With False, evaluation uses the moving
        averages, which lag the fast-changing encoder early in training.
      task_encoder: layer ``(embeddings [T, M, D], labels [T, M]) -> h0``, with an
        ``output_dim(D)`` method; default :class:`tfp_abml.task_encoding.ClassMeanConcat`
        (``task_encoding="concat"``) or :class:`~tfp_abml.task_encoding.ClassMeanPool` (``"pool"``).
      posterior: ``"paper"`` or ``"aligned"`` (output means from class prototypes; see above).
      learn_inner_lr: learn one inner step size per posterior tensor.
      residual_head: hidden layers add to their input (``a_l = a_{l-1} + relu(...)``, widths equal
        to the embedding size), so the prototypes see the whole embedding
        (:class:`tfp_abml.bayesian_head.BayesianMLP`).
      seed: int seed for the model's random streams (None: unseeded).
    """

    extra_metrics = ("kl",)

    def __init__(self, encoder, ways, hidden_units=(64,), noise_dim=32, inner_steps=5, inner_lr=0.5,
                 kl_scale=1e-6, first_order=False, eval_samples=10, train_samples=1, initial_scale=0.01,
                 initial_embedding_scale=4.0,
                 transductive_batch_norm=True, task_encoder=None, task_encoding="concat", posterior="paper",
                 learn_inner_lr=False, seed=None, eval_inner_steps=None, residual_head=False, prior="standard",
                 **kwargs):
        super().__init__(ways, **kwargs)
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        self.posterior_kind = posterior
        self.encoder = encoder
        self.inner_steps, self.inner_lr = int(inner_steps), float(inner_lr)
        self.eval_inner_steps = int(inner_steps if eval_inner_steps is None else eval_inner_steps)
        self.kl_scale, self.first_order = float(kl_scale), bool(first_order)
        self.eval_samples = int(eval_samples)
        self.train_samples = int(train_samples)
        if self.train_samples < 1:
            raise ValueError(f"train_samples must be >= 1, got {train_samples}")
        self.transductive_batch_norm = bool(transductive_batch_norm)
        embedding_dim = int(encoder.output_shape[-1])
        if task_encoder is None and task_encoding == "pool":
            task_encoder = ClassMeanPool(self.ways, name="task_encoder")
        self.task_encoder = task_encoder or ClassMeanConcat(self.ways, seed=_seed(seed, 1), name="task_encoder")
        self.head = BayesianMLP(embedding_dim, hidden_units, self.ways, residual=residual_head)
        self.posterior = AmortizedPosterior(self.head.layer_shapes, units=self.task_encoder.output_dim(embedding_dim),
                                            noise_dim=noise_dim, initial_scale=initial_scale,
                                            symmetric_output=posterior == "aligned",
                                            seed=_seed(seed, 2), name="posterior")
        self.prior = LearnedPrior(self.head.layer_shapes, name="prior") if prior == "learned" else None
        self.flipout_seed = keras.random.SeedGenerator(_seed(seed, 3), name="flipout_seed")
        # Raw Conv-4 embeddings are far from unit norm: inner SGD at the paper's step sizes (0.5, 1.0)
        # diverged on them. Unit-norm embeddings times a learned scale start stable and let the
        # outer loop choose how fast the inner loop moves.
        self.embedding_scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(initial_embedding_scale),
                                               name="embedding_scale")
        if posterior == "aligned":
            self.prototype_scale = self.add_weight(shape=(), initializer="ones", name="prototype_scale")
        # One attribute per rate, not a list: tf.train.Checkpoint does not see variables kept in a
        # Python list of a Keras 3 model, so listed rates were left out of every training checkpoint
        # (a resumed or evaluated run had its initial rates; tests/test_checkpoint_coverage.py).
        self.inner_lr_count = 4 * self.head.num_layers if learn_inner_lr else 0
        for i in range(self.inner_lr_count):
            setattr(self, f"inner_log_lr_{i}", self.add_weight(
                shape=(), name=f"inner_log_lr_{i}", initializer=keras.initializers.Constant(math.log(self.inner_lr))))

    @property
    def inner_log_lrs(self):
        """Learned log inner step sizes, one per posterior tensor; None without ``learn_inner_lr``."""
        if not self.inner_lr_count:
            return None
        return [getattr(self, f"inner_log_lr_{i}") for i in range(self.inner_lr_count)]

    # -- the method, step by step -------------------------------------------------------------

    def embed(self, images, training=False):
        """Embeddings ``[T, M, D]`` of images ``[T, M, H, W, C]``, L2-normalised times ``embedding_scale``."""
        embeddings = embed_tasks(self.encoder, images, training or self.transductive_batch_norm)
        return tf.math.l2_normalize(embeddings, axis=-1) * self.embedding_scale

    def support_loss(self, params, support_embeddings, support_labels):
        """Sum over tasks of the mean support cross-entropy (the inner objective)."""
        logits = self.head(support_embeddings, params, seed=self.flipout_seed)
        return tf.reduce_sum(tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=support_labels, logits=logits), axis=1))

    def aligned_output(self, params, support_embeddings, support_labels):
        """``params`` with the output layer's means set from the class prototypes (see module doc)."""
        features = self.head.features(support_embeddings, params[:-1], mean_only=True)
        prototypes = class_means(features, support_labels, self.ways)  # [T, N, F]
        output = dataclasses.replace(
            params[-1],
            kernel_loc=params[-1].kernel_loc + 2.0 * self.prototype_scale * tf.transpose(prototypes, (0, 2, 1)),
            bias_loc=params[-1].bias_loc - self.prototype_scale * tf.reduce_sum(tf.square(prototypes), axis=-1))
        return [*params[:-1], output]

    def initial_posterior(self, support_embeddings, support_labels):
        """Posterior before the inner loop: list of DenseParams, one per BNN layer."""
        params = self.posterior(self.task_encoder(support_embeddings, support_labels))
        if self.posterior_kind == "aligned":
            params = self.aligned_output(params, support_embeddings, support_labels)
        return params

    def inner_learning_rates(self):
        if self.inner_log_lrs is None:
            return self.inner_lr
        return [tf.exp(log_lr) for log_lr in self.inner_log_lrs]

    def adapted_posterior(self, support_embeddings, support_labels, steps=None):
        """Posterior after ``steps`` (default ``inner_steps``) inner SGD steps: list of DenseParams, one per layer."""
        initial = BayesianMLP.flatten(self.initial_posterior(support_embeddings, support_labels))
        adapted = sgd_adapt(initial, lambda flat: self.support_loss(BayesianMLP.unflatten(flat), support_embeddings,
                                                                    support_labels),
                            self.inner_steps if steps is None else steps, self.inner_learning_rates(),
                            self.first_order)
        return BayesianMLP.unflatten(adapted)

    def predictive(self, params, query_embeddings, samples):
        """Posterior-predictive probabilities ``[T, M, N]``: mean softmax over ``samples`` draws."""
        return tf.reduce_mean(self.draws(params, query_embeddings, samples), axis=0)

    def draws(self, params, query_embeddings, samples):
        """Query probabilities ``[S, T, M, N]`` under ``samples`` Flipout draws from the posterior.

        One batched head call, not a loop: the posterior and the queries are tiled ``S`` times along
        the task axis (``[S * T, ...]``), so every draw gets its own noise from one random call per
        layer and the graph holds one copy of the head whatever ``S`` is.
        """
        return tf.nn.softmax(self.draw_logits(params, query_embeddings, samples))

    def draw_logits(self, params, query_embeddings, samples):
        """Query logits ``[S, T, M, N]`` under ``samples`` Flipout draws (see :meth:`draws`)."""
        samples = max(int(samples), 1)
        tile = lambda x: tf.tile(x, [samples] + [1] * (x.shape.rank - 1))
        tiled = [DenseParams.from_tensors([tile(t) for t in layer.tensors()]) for layer in params]
        logits = self.head(tile(query_embeddings), tiled, seed=self.flipout_seed)  # [S * T, M, N]
        shape = tf.shape(logits)
        return tf.reshape(logits, tf.concat([[samples, shape[0] // samples], shape[1:]], 0))

    def predictive_draws(self, inputs, samples=None):
        """Query probabilities ``[S, T, M, N]``, one per posterior draw, after adapting to the support
        set: their mean is the posterior predictive; how they disagree is the epistemic uncertainty
        (mutual information, :func:`tfp_abml.metrics.mutual_information`)."""
        params, query_embeddings = self.adapt_and_embed_queries(inputs, training=False)
        return self.draws(params, query_embeddings, samples or self.eval_samples)

    def adapt_and_embed(self, inputs, training=False):
        """``(params, support_embeddings, support_labels, query_embeddings)`` of a batch of tasks: the
        adapted posterior (list of DenseParams, one per layer; inner steps as in training or as in
        evaluation), the embeddings ``[T, K, D]`` and int32 labels of the support set it was adapted
        to, and the query embeddings ``[T, M, D]``."""
        # One encoder call for support and query: one set of batch-norm statistics.
        embeddings = self.embed(tf.concat([inputs["support_images"], inputs["query_images"]], axis=1), training)
        support_embeddings, query_embeddings = split_support_query(embeddings, inputs)
        support_labels = tf.cast(inputs["support_labels"], tf.int32)
        params = self.adapted_posterior(support_embeddings, support_labels,
                                        self.inner_steps if training else self.eval_inner_steps)
        return params, support_embeddings, support_labels, query_embeddings

    def adapt_and_embed_queries(self, inputs, training=False):
        """The adapted posterior and the query embeddings ``[T, M, D]`` (:meth:`adapt_and_embed`)."""
        params, _, _, query_embeddings = self.adapt_and_embed(inputs, training)
        return params, query_embeddings

    def episode(self, inputs, query_labels, training):
        params, query_embeddings = self.adapt_and_embed_queries(inputs, training)
        kl = tf.reduce_mean(self.kl_divergence(params))
        query_labels = tf.cast(query_labels, tf.int32)
        if training and self.train_samples == 1:  # one draw: unbiased for the expected log-likelihood
            logits = self.head(query_embeddings, params, seed=self.flipout_seed)
            nll = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=query_labels, logits=logits))
            probabilities = tf.nn.softmax(logits)
        elif training:  # NLL of the S-draw predictive, in log space: log mean_s p_s(y)
            log_draws = tf.nn.log_softmax(self.draw_logits(params, query_embeddings, self.train_samples))
            true_class = tf.reduce_sum(log_draws * tf.one_hot(query_labels, tf.shape(log_draws)[-1]), -1)  # S, T, M
            nll = -tf.reduce_mean(tf.reduce_logsumexp(true_class, axis=0)) + math.log(self.train_samples)
            probabilities = tf.reduce_mean(tf.exp(log_draws), axis=0)
        else:
            probabilities = self.predictive(params, query_embeddings, self.eval_samples)
            nll = mean_nll(probabilities, query_labels)
        return {"loss": nll + self.kl_scale * kl, "nll": nll, "kl": kl, "probabilities": probabilities}

    def kl_divergence(self, params):
        """``KL(q || p)`` per task ``[T]``: to the learned prior, or to N(0, I)."""
        return standard_normal_kl(params) if self.prior is None else self.prior.kl(params)

    def predict_episode(self, inputs, training=False):
        """Posterior-predictive query probabilities ``[T, M, N]`` after adapting to the support set."""
        params, query_embeddings = self.adapt_and_embed_queries(inputs, training)
        return self.predictive(params, query_embeddings, self.eval_samples)

    served_prediction = "posterior_predictive"
    # What the weight uncertainty buys: the predictive is scored against the posterior means' prediction
    # on the same tasks (tfp_abml.evaluation: "nll_difference", with a paired interval).
    paired_predictions = {"posterior_predictive": "mean_weights"}

    @property
    def serves_any_ways(self):
        """The aligned posterior emits its output layer class-symmetrically, and the pooled task
        encoding has a fixed size: then no weight depends on N."""
        return self.posterior_kind == "aligned" and isinstance(self.task_encoder, ClassMeanPool)

    def _set_ways(self, ways):
        previous = super()._set_ways(ways)
        self.task_encoder.ways = ways
        for holder in (self.head, self.posterior):  # the output layer's fan-out is N
            fan_in, _ = holder.layer_shapes[-1]
            holder.layer_shapes = [*holder.layer_shapes[:-1], (fan_in, ways)]
        return previous

    def evaluation_predictions(self, inputs, samples=None, with_draws=False):
        """Posterior predictive over ``samples`` draws, and the prediction of the posterior means,
        from one adapted posterior (with ``with_draws``, also the draws of the predictive)."""
        params, query_embeddings = self.adapt_and_embed_queries(inputs, training=False)
        mean_logits = self.head(query_embeddings, params, mean_only=True)
        draws = self.draws(params, query_embeddings, samples or self.eval_samples)
        predictions = {"posterior_predictive": tf.reduce_mean(draws, axis=0), "mean_weights": tf.nn.softmax(mean_logits)}
        return (predictions, {"posterior_predictive": draws}) if with_draws else predictions
