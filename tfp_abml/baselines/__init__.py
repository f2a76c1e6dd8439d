"""The paper's baselines, on the same encoders, episodes and training loop as the method.

* :class:`PrototypicalNetwork` -- Snell et al. (2017)
* :class:`MatchingNetwork` -- Vinyals et al. (2016), cosine attention
* :class:`MAML` -- Finn et al. (2017), second or first order
* :class:`MetaSGD` -- Li et al. (2017), MAML with learned per-parameter inner learning rates
"""

from tfp_abml.baselines.maml import MAML, MetaSGD
from tfp_abml.baselines.matching import MatchingNetwork
from tfp_abml.baselines.protonet import PrototypicalNetwork

__all__ = ["MAML", "MatchingNetwork", "MetaSGD", "PrototypicalNetwork"]
