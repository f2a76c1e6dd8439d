"""tfp_abml: amortized Bayesian neural networks for few-shot meta-learning.

The method of Kim & Heo, "Amortized Inference of Bayesian Neural Network
parameters for solving Meta-learning problems": an encoder embeds a task's
support set, an LSTM fed Gaussian noise turns that embedding into the
mean-field Gaussian posterior of a small Bayesian MLP, layer by layer, and a
few inner SGD steps on the support loss adapt that posterior before it
predicts the query set.

The package is laid out in the order of the method::

    data/            episodes from Omniglot (reader -> splits -> sampling -> pipeline)
    encoders         Conv-4 and EfficientNetB0 image embeddings
    task_encoding    support set -> initial LSTM state
    posterior        LSTM over layers -> (loc, scale) of every BNN weight
    flipout          functional Flipout dense layer and its KL to N(0, 1)
    bayesian_head    the Bayesian MLP built from those layers
    inner_loop       K SGD steps on the support loss, differentiable
    model            AmortizedBNN: the keras.Model with train_step / test_step
    classifier       FewShotClassifier: load a trained model, predict with uncertainty

Importing the package does not import TensorFlow; the submodules do (``FewShotClassifier``
imports it when it loads a model).
"""

from tfp_abml.classifier import FewShotClassifier, Prediction

__version__ = "0.1.0"
__all__ = ["FewShotClassifier", "Prediction"]
