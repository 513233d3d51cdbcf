"""Image classifiers for fedsim clients: MobileNetV2 and MobileNetV3-Small.

Both builders take the input size and drop early strides for small images
(8 px digits, 28 px Fashion-MNIST), accept any norm factory (BatchNorm by
default, ``group_norm`` for non-IID or DP training, ``no_norm``), and split the
model into ``features`` and ``classifier`` for head-only fine-tuning.

Builders are imported from their modules (``fedsim.models.mobilenet_v2.mobilenet_v2``): this
package re-exports nothing, because a re-exported ``mobilenet_v2`` function would shadow the
``mobilenet_v2`` module and break Hydra's ``_target_`` lookup.
"""
