"""Every activation a trial can choose, created by name from one registry (DESIGN.md §2).

    act = create_act("lslu", channels=64, n=3, base="silu")

Names: relu, silu, gelu, prelu, leaky_relu (``basic``), lslu (``lslu``), pwlu (``pwlu``),
la_silu, la_hardsilu (``layeract``), or an import path ``package.module:Class``. Unknown names and unknown or bad
arguments raise ``ValueError`` naming the valid choices, so a sweep file with a typo fails before any cluster work
starts.
"""

from trainables.activations.registry import (
    act_module_types,
    check_config,
    config_fields,
    config_kwargs,
    create_act,
    inserts,
    is_registered_act,
    list_acts,
    needs_spatial_map,
    register_act,
    trial_config,
)
from trainables.activations.basic import PReLU
from trainables.activations.layeract import LayerAct
from trainables.activations.lslu import LSLU
from trainables.activations.pwlu import PWLU, realign_pending
from trainables.activations.introspect import learnable_act_state, start_epoch
from trainables.activations.channels_last import ChannelsLast

__all__ = [
    "ChannelsLast",
    "LSLU",
    "LayerAct",
    "PReLU",
    "PWLU",
    "act_module_types",
    "check_config",
    "config_fields",
    "config_kwargs",
    "create_act",
    "inserts",
    "is_registered_act",
    "learnable_act_state",
    "list_acts",
    "needs_spatial_map",
    "realign_pending",
    "register_act",
    "start_epoch",
    "trial_config",
]
