"""Every activation a trial can choose, created by name from one registry (DESIGN.md §2).

    act = create_act("lslu", channels=64, n=3, base="silu")

Unknown names and unknown or bad arguments raise ``ValueError`` naming the valid choices,
so a sweep file with a typo fails before any cluster work starts.
"""
from trainables.activations.registry import create_act, is_registered_act, list_acts, register_act
from trainables.activations.lslu import LSLU
from trainables.activations import basic as _basic  # noqa: F401  (registers relu, silu, gelu)
from trainables.activations.introspect import learnable_act_state

__all__ = ["LSLU", "create_act", "is_registered_act", "learnable_act_state", "list_acts", "register_act"]
