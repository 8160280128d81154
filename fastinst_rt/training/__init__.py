"""Training FastInst with the paper's recipe, as the official ``train_net.py`` and ``fastinst/modeling`` run it.

``matcher`` (Hungarian matching with the location cost, and the proposal-pixel matcher), ``criterion`` (proposal,
class, point-sampled mask and dice losses with deep supervision and the ground-truth mask-guided predictions),
``data`` (COCO-format datasets with the official augmentations), ``loop`` (``train(TrainConfig)``) and ``synth``
(a synthetic shapes dataset). Nothing is imported here, so ``import fastinst_rt`` stays free of scipy.
"""
